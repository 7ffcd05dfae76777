//! Where an event sits in the log ([`At`]) and every threshold of the rules ([`Rules`]): what each aggregate
//! is handed besides the event.

use super::cleaning::Hampel;
use super::container::WeighingRules;

/// Where an event sits in the log: what the rules may know of "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub seq: u64,
    /// When the log recorded the event (UTC ns).
    pub recorded_at_ns: i64,
}

impl At {
    /// At `seq`, recorded at the epoch (for tests that do not look at clock skew).
    pub fn seq(seq: u64) -> At {
        At {
            seq,
            recorded_at_ns: 0,
        }
    }
}

/// Every threshold of the rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rules {
    pub weighing: WeighingRules,
    /// `weight_fluctuation` of a continuous load cell, in percent.
    pub load_cell_pct: u32,
    /// `manifest_weight_mismatch`, in percent of the dispatched weight.
    pub manifest_mismatch_pct: u32,
    /// `storage_overdue`: the longest stay in storage, in seconds.
    pub storage_limit_s: i64,
    /// `terminal_silent`: silent after this many registered report intervals without a reading.
    pub silence_intervals: u32,
    pub hampel: Hampel,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            weighing: WeighingRules::default(),
            load_cell_pct: 20,
            manifest_mismatch_pct: 20,
            storage_limit_s: 365 * 86_400,
            silence_intervals: 3,
            hampel: Hampel::default(),
        }
    }
}

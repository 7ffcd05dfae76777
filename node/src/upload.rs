//! An upload's protocol, as terminals, edges and the platform share it: the signature header and the
//! answer, one result per reading.

use serde::{Deserialize, Serialize};

/// The header carrying the terminal's signature: base64 of the DER SM2 signature (SM3, user id
/// 1234567812345678) over the exact request body.
pub const SIGNATURE_HEADER: &str = "x-custodian-signature";

/// The answer to an upload: one result per reading, in the order sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadResponse {
    pub terminal_id: String,
    pub results: Vec<ReadingResult>,
}

/// What became of one reading.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReadingResult {
    /// Stored now, durable, as event `event_seq`.
    Accepted { seq: u64, event_seq: u64 },
    /// Stored before, as event `event_seq`.
    Duplicate { seq: u64, event_seq: u64 },
    /// Not stored. `seq` is absent when the reading was too malformed to have one. For `seq_conflict`,
    /// `event_seq` names the original event and `evidence_event_seq` where this attempt is kept.
    Rejected {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        code: String,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        event_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        evidence_event_seq: Option<u64>,
    },
}

impl ReadingResult {
    pub(crate) fn rejected(seq: Option<u64>, code: &str, message: String) -> Self {
        ReadingResult::Rejected {
            seq,
            code: code.to_owned(),
            message,
            event_seq: None,
            evidence_event_seq: None,
        }
    }
}

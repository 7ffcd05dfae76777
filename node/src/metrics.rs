//! Prometheus metrics, in base units. Labels only ever take values from small fixed sets (rejection codes,
//! outcomes), never ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the append-latency histogram, in seconds.
const APPEND_BUCKETS_S: [f64; 14] = [
    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    pub readings_accepted: AtomicU64,
    pub readings_duplicate: AtomicU64,
    /// By rejection code (a fixed set of `&'static str`).
    readings_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// By HTTP status code.
    uploads: Mutex<BTreeMap<u16, u64>>,
    append_buckets: [AtomicU64; APPEND_BUCKETS_S.len()],
    append_count: AtomicU64,
    append_sum_ns: AtomicU64,
    pub query_cache_hits: AtomicU64,
    pub query_cache_misses: AtomicU64,
    /// Reads refused for a missing or bad token.
    pub query_unauthorized: AtomicU64,
    /// Of those, the ones whose audit record was dropped because the queue was full.
    pub audit_refusals_dropped: AtomicU64,
    /// Readings that arrived in batches forwarded by edge nodes (each also counted as accepted or
    /// duplicate or rejected).
    pub edge_readings_received: AtomicU64,
}

impl Metrics {
    pub fn rejected(&self, code: &'static str) {
        *self
            .readings_rejected
            .lock()
            .expect("metrics lock")
            .entry(code)
            .or_default() += 1;
    }

    pub fn upload(&self, status: u16) {
        *self
            .uploads
            .lock()
            .expect("metrics lock")
            .entry(status)
            .or_default() += 1;
    }

    pub fn rejected_total(&self) -> u64 {
        self.readings_rejected
            .lock()
            .expect("metrics lock")
            .values()
            .sum()
    }

    pub fn observe_append(&self, took: Duration) {
        let s = took.as_secs_f64();
        if let Some(i) = APPEND_BUCKETS_S.iter().position(|b| s <= *b) {
            self.append_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.append_count.fetch_add(1, Ordering::Relaxed);
        self.append_sum_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric, with the log's gauges passed in.
    pub fn render(&self, log_last_seq: u64, log_size_bytes: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "custodian_readings_accepted_total",
            "Readings stored for the first time.",
            self.readings_accepted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "custodian_edge_readings_received_total",
            "Readings that arrived in batches forwarded by edge nodes.",
            self.edge_readings_received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "custodian_query_cache_hits_total",
            "Regulators' reads answered from the cache.",
            self.query_cache_hits.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "custodian_query_cache_misses_total",
            "Regulators' reads that went to the read models.",
            self.query_cache_misses.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "custodian_query_unauthorized_total",
            "Reads refused with 401 for a missing, forged, expired or revoked token.",
            self.query_unauthorized.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "custodian_audit_refusals_dropped_total",
            "Records of 401-refused reads dropped because the audit queue was full (answered reads are never dropped).",
            self.audit_refusals_dropped.load(Ordering::Relaxed),
        );
        {
            let (h, m) = (
                self.query_cache_hits.load(Ordering::Relaxed),
                self.query_cache_misses.load(Ordering::Relaxed),
            );
            let ratio = if h + m == 0 {
                0.0
            } else {
                h as f64 / (h + m) as f64
            };
            let _ = writeln!(
                out,
                "# HELP custodian_query_cache_hit_ratio Hits over all cacheable reads since start.\n# TYPE custodian_query_cache_hit_ratio gauge\ncustodian_query_cache_hit_ratio {ratio}"
            );
        }
        counter(
            &mut out,
            "custodian_readings_duplicate_total",
            "Resent readings recognised as already stored.",
            self.readings_duplicate.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP custodian_readings_rejected_total Readings refused, by code.\n# TYPE custodian_readings_rejected_total counter"
        );
        let rejected = self.readings_rejected.lock().expect("metrics lock").clone();
        if rejected.is_empty() {
            let _ = writeln!(out, "custodian_readings_rejected_total{{code=\"none\"}} 0");
        }
        for (code, n) in rejected {
            let _ = writeln!(
                out,
                "custodian_readings_rejected_total{{code=\"{code}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP custodian_uploads_total Upload requests answered, by HTTP status.\n# TYPE custodian_uploads_total counter"
        );
        for (status, n) in self.uploads.lock().expect("metrics lock").clone() {
            let _ = writeln!(out, "custodian_uploads_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP custodian_log_append_seconds Time from handing a batch to the log until it is durable.\n# TYPE custodian_log_append_seconds histogram"
        );
        let mut cumulative = 0;
        for (bound, n) in APPEND_BUCKETS_S.iter().zip(&self.append_buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "custodian_log_append_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.append_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "custodian_log_append_seconds_bucket{{le=\"+Inf\"}} {count}\ncustodian_log_append_seconds_sum {}\ncustodian_log_append_seconds_count {count}",
            self.append_sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "# HELP custodian_log_last_seq The last durable event sequence.\n# TYPE custodian_log_last_seq gauge\ncustodian_log_last_seq {log_last_seq}"
        );
        if let Some(size) = log_size_bytes {
            let _ = writeln!(
                out,
                "# HELP custodian_log_size_bytes Bytes the event log occupies on disk.\n# TYPE custodian_log_size_bytes gauge\ncustodian_log_size_bytes {size}"
            );
        }
        out
    }
}

/// Reads one sample (`name` or `name{labels}`) from a Prometheus text exposition, summing over labels
/// when `name` has none. For the CLI's summaries and for tests.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let matches = key == name || (!name.contains('{') && key.starts_with(&format!("{name}{{")));
        if matches && let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The read models' figures: checkpoint, lag (events and the last batch's age), throughput counters, and
/// whether each is failing or rebuilding.
pub fn render_projections(
    out: &mut String,
    list: &[custodian_projections::runner::ProjectionStatus],
) {
    type Get = fn(&custodian_projections::runner::ProjectionStatus) -> f64;
    let families: [(&str, &str, &str, Get); 7] = [
        (
            "custodian_projection_checkpoint",
            "gauge",
            "The last log sequence the read model holds.",
            |p| p.checkpoint as f64,
        ),
        (
            "custodian_projection_lag_events",
            "gauge",
            "Log events the read model has yet to apply.",
            |p| p.lag_events as f64,
        ),
        (
            "custodian_projection_lag_seconds",
            "gauge",
            "Age of the oldest event of the last batch when it was committed.",
            |p| p.last_batch_lag_ms.unwrap_or(0) as f64 / 1000.0,
        ),
        (
            "custodian_projection_applied_events_total",
            "counter",
            "Events applied to the live read model (rate = throughput).",
            |p| p.applied_events_total as f64,
        ),
        (
            "custodian_projection_batches_total",
            "counter",
            "Batches committed to the live read model.",
            |p| p.batches_total as f64,
        ),
        (
            "custodian_projection_failures_total",
            "counter",
            "Failed attempts (each retried with backoff).",
            |p| p.failures_total as f64,
        ),
        (
            "custodian_projection_failing",
            "gauge",
            "1 while the read model's backend fails.",
            |p| f64::from(u8::from(p.state == "failing")),
        ),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for p in list {
            let _ = writeln!(out, "{name}{{projection=\"{}\"}} {}", p.name, get(p));
        }
    }
    let _ = writeln!(
        out,
        "# HELP custodian_projection_rebuild_checkpoint Where a running rebuild has got to.\n# TYPE custodian_projection_rebuild_checkpoint gauge"
    );
    for p in list {
        if let Some(r) = &p.rebuild {
            let _ = writeln!(
                out,
                "custodian_projection_rebuild_checkpoint{{projection=\"{}\",generation=\"{}\"}} {}",
                p.name, r.generation, r.checkpoint
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_carries_counts_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.readings_accepted.fetch_add(3, Ordering::Relaxed);
        m.rejected("unknown_unit");
        m.rejected("unknown_unit");
        m.rejected("invalid_seq");
        m.observe_append(Duration::from_micros(700));
        m.observe_append(Duration::from_millis(30));
        let text = m.render(42, Some(1000));
        assert_eq!(
            sample(&text, "custodian_readings_accepted_total"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "custodian_readings_rejected_total"),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "custodian_readings_rejected_total{code=\"unknown_unit\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "custodian_log_append_seconds_bucket{le=\"0.001\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "custodian_log_append_seconds_bucket{le=\"0.05\"}"),
            Some(2.0)
        );
        assert_eq!(sample(&text, "custodian_log_last_seq"), Some(42.0));
    }
}

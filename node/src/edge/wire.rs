//! What an edge and the platform say to each other (`POST /v1/edge/batches`, `POST /v1/edge/registrations`).
//! Requests travel inside the SM2/SM4 digital envelope (`custodian_events::digital_envelope`), sealed to the
//! platform's key and signed by the edge's; the registrations come back sealed to the edge's key.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::upload::ReadingResult;

/// The header naming the edge that sealed a request.
pub const EDGE_HEADER: &str = "x-custodian-edge";

/// The largest sealed batch the platform reads, in bytes.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;

/// How far the time in a registrations request may lie from the platform's clock.
pub const REQUEST_SKEW_S_MAX: i64 = 300;

/// A batch of forwarded uploads, and the anomalies the edge detected, which travel first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardBatch {
    pub edge_id: String,
    pub anomalies: Vec<ForwardAnomaly>,
    pub uploads: Vec<ForwardUpload>,
}

/// A terminal's upload exactly as the terminal signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardUpload {
    /// The edge's name for it (the log sequence of its evidence at the edge), echoed in the answer.
    pub id: u64,
    pub body_b64: String,
    /// Base64 of the DER SM2 signature, as in `X-Custodian-Signature`.
    pub signature: String,
}

/// An anomaly the edge derived, in the event encoding (rkyv, base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAnomaly {
    pub id: u64,
    pub anomaly_b64: String,
}

/// The platform's answer: one outcome per upload and per anomaly, in the order sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ForwardAnswer {
    pub uploads: Vec<UploadOutcome>,
    pub anomalies: Vec<AnomalyOutcome>,
}

/// What became of one forwarded upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UploadOutcome {
    /// Ingested: a result per reading, as `POST /v1/uploads` answers.
    Done {
        id: u64,
        results: Vec<ReadingResult>,
    },
    /// Refused as a whole, for good (unknown terminal, bad signature, another enterprise's terminal).
    Rejected {
        id: u64,
        code: String,
        message: String,
    },
    /// Not processed now (the platform is busy, or an earlier upload of the batch was); send it again.
    Retry {
        id: u64,
        code: String,
        message: String,
    },
}

/// What became of one reported anomaly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AnomalyOutcome {
    Recorded {
        id: u64,
    },
    Duplicate {
        id: u64,
    },
    Rejected {
        id: u64,
        code: String,
        message: String,
    },
    Retry {
        id: u64,
        code: String,
        message: String,
    },
}

/// The edge asks for the registrations of its enterprises.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationsRequest {
    pub edge_id: String,
    /// The edge's clock, UTC ns; a request more than `REQUEST_SKEW_S_MAX` away is refused (no replays).
    pub at_ns: i64,
}

/// Enterprise and terminal registrations and key changes, as events in the log's encoding (rkyv, base64),
/// in the order the edge appends them. Also the format of `--seed-registrations`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Registrations {
    pub events_b64: Vec<String>,
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))
}

/// An event in the log's own encoding (rkyv), as the edge and the platform exchange registrations.
pub fn encode_event(event: &custodian_events::Event) -> String {
    b64(&rkyv::to_bytes::<rkyv::rancor::Error>(event).expect("an event always encodes"))
}

pub fn decode_event(text: &str) -> Result<custodian_events::Event, String> {
    let bytes = unb64(text)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    rkyv::from_bytes::<custodian_events::Event, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("not an event: {e}"))
}

pub fn encode_anomaly(a: &custodian_events::domain::AnomalyDetected) -> String {
    b64(&rkyv::to_bytes::<rkyv::rancor::Error>(a).expect("an anomaly always encodes"))
}

pub fn decode_anomaly(text: &str) -> Result<custodian_events::domain::AnomalyDetected, String> {
    let bytes = unb64(text)?;
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes);
    rkyv::from_bytes::<custodian_events::domain::AnomalyDetected, rkyv::rancor::Error>(&aligned)
        .map_err(|e| format!("not an anomaly: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custodian_events::Event;
    use custodian_events::event::ClockTicked;

    #[test]
    fn events_round_trip_and_garbage_is_refused() {
        let e = Event::ClockTicked(ClockTicked { at_ns: 42 });
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
        assert!(decode_event("AAAA").is_err());
        assert!(decode_event("not base64!").is_err());
    }
}

//! `POST /v1/uploads`: verify, validate, dedupe, fingerprint, make durable, then acknowledge.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_events::log::{AppendOutcome, Proposed};
use custodian_events::{Event, RawReading, Reading, ReadingCheck, TerminalId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{ApiError, AppState, read_json};

/// An upload as sent. Readings are parsed one by one, so that one malformed reading is rejected alone and
/// the good ones beside it are still accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    terminal_id: String,
    readings: Vec<Box<RawValue>>,
}

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
    fn rejected(seq: Option<u64>, code: &str, message: String) -> Self {
        ReadingResult::Rejected {
            seq,
            code: code.to_owned(),
            message,
            event_seq: None,
            evidence_event_seq: None,
        }
    }
}

pub async fn upload(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let result = handle(&st, &headers, body).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    st.metrics.upload(status.as_u16());
    match result {
        Ok(r) => (StatusCode::OK, axum::Json(r)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<UploadResponse, ApiError> {
    let limits = &st.config.ingest;
    let upload: RawUpload = read_json(headers, body, limits.body_bytes_max).await?;
    if upload.readings.len() > limits.batch_readings_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "{} readings in one upload; at most {} are accepted, split the batch",
                upload.readings.len(),
                limits.batch_readings_max
            ),
        ));
    }
    if upload.readings.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_batch",
            "the upload carries no readings",
        ));
    }
    let terminal_id = TerminalId::parse(&upload.terminal_id).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            format!("terminal_id {:?}: {e}", upload.terminal_id),
        )
    })?;
    if st
        .registry
        .terminal(st.log.as_ref(), &terminal_id)?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_terminal",
            format!(
                "terminal {terminal_id} is not registered; an administrator registers it with POST /v1/terminals"
            ),
        ));
    }

    let check = ReadingCheck {
        now_ns: st.clock.now_ns(),
        future_skew_ns_max: (limits.future_skew_s_max as i64).saturating_mul(1_000_000_000),
    };
    let mut results: Vec<Option<ReadingResult>> = Vec::with_capacity(upload.readings.len());
    let mut proposed = Vec::with_capacity(upload.readings.len());
    let mut proposed_at = Vec::with_capacity(upload.readings.len());
    for (i, raw) in upload.readings.iter().enumerate() {
        match serde_json::from_str::<RawReading>(raw.get()) {
            Err(e) => {
                st.metrics.rejected("invalid_reading");
                results.push(Some(ReadingResult::rejected(
                    seq_hint(raw),
                    "invalid_reading",
                    format!("reading {i}: {e}"),
                )));
            }
            Ok(raw) => match Reading::normalize(&terminal_id, &raw, check) {
                Err(r) => {
                    st.metrics.rejected(r.code);
                    results.push(Some(ReadingResult::rejected(
                        Some(raw.seq),
                        r.code,
                        r.message,
                    )));
                }
                Ok(reading) => {
                    results.push(None);
                    proposed_at.push(i);
                    proposed.push(Proposed::new(Event::ReadingRecorded(reading)));
                }
            },
        }
    }

    if !proposed.is_empty() {
        let seqs: Vec<u64> = proposed
            .iter()
            .map(|p| match &p.event {
                Event::ReadingRecorded(r) => r.seq,
                _ => unreachable!("only readings are proposed here"),
            })
            .collect();
        let started = Instant::now();
        let outcomes = st.log.append(proposed).await?;
        st.metrics.observe_append(started.elapsed());
        for ((i, seq), outcome) in proposed_at.into_iter().zip(seqs).zip(outcomes) {
            results[i] = Some(match outcome {
                AppendOutcome::Appended { seq: event_seq } => {
                    st.metrics.readings_accepted.fetch_add(1, Ordering::Relaxed);
                    ReadingResult::Accepted { seq, event_seq }
                }
                AppendOutcome::Duplicate { seq: event_seq } => {
                    st.metrics
                        .readings_duplicate
                        .fetch_add(1, Ordering::Relaxed);
                    ReadingResult::Duplicate { seq, event_seq }
                }
                AppendOutcome::Conflict {
                    original_seq,
                    evidence_seq,
                } => {
                    st.metrics.rejected("seq_conflict");
                    ReadingResult::Rejected {
                        seq: Some(seq),
                        code: "seq_conflict".into(),
                        message: format!(
                            "seq {seq} of terminal {terminal_id} was recorded as event {original_seq} with other content; this reading is kept as evidence, not counted"
                        ),
                        event_seq: Some(original_seq),
                        evidence_event_seq: evidence_seq,
                    }
                }
            });
        }
    }
    Ok(UploadResponse {
        terminal_id: terminal_id.to_string(),
        results: results
            .into_iter()
            .map(|r| r.expect("every reading has a result"))
            .collect(),
    })
}

/// The `seq` of a reading that failed to parse, if it has a usable one, so the terminal can tell which
/// reading was refused.
fn seq_hint(raw: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: Option<u64>,
    }
    serde_json::from_str::<SeqOnly>(raw.get())
        .ok()
        .and_then(|s| s.seq)
}

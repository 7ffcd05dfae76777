//! `POST /v1/uploads`: verify, validate, dedupe, fingerprint, make durable, then acknowledge.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_events::event::UploadSigned;
use custodian_events::{Event, RawReading, Reading, ReadingCheck, TerminalId};
use custodian_log::{AppendOutcome, Proposed};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::body::parse_json;
use crate::api::body::read_body;
use crate::api::error::ApiError;
use crate::sealing;
use crate::state::Ingest;
use crate::terminals::TerminalEntry;
use crate::upload::{ReadingResult, SIGNATURE_HEADER, UploadResponse};

/// A verified signature: which key made it, and the signature itself (kept as evidence).
struct Signed {
    key_fingerprint: [u8; 32],
    signature: Vec<u8>,
}

fn unauthorized(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// Checks `X-Custodian-Signature` against the terminal's usable keys (newest first). `None` means an
/// unsigned upload that the configuration allows.
fn verify_signature(
    st: &Ingest,
    header: Option<&str>,
    terminal: &TerminalEntry,
    body: &[u8],
) -> Result<Option<Signed>, ApiError> {
    use base64::Engine as _;
    let id = &terminal.registration.id;
    if terminal.keys.is_empty() {
        if st.limits.require_signature || header.is_some() {
            return Err(unauthorized(
                "terminal_key_missing",
                format!(
                    "terminal {id} was registered without a public key, so its uploads cannot be verified; rotate a key in with POST /v1/terminals/{id}/keys"
                ),
            ));
        }
        return Ok(None);
    }
    let Some(header) = header else {
        if st.limits.require_signature {
            return Err(unauthorized(
                "signature_missing",
                format!(
                    "uploads must carry {SIGNATURE_HEADER}: base64 of the DER SM2 signature over the body"
                ),
            ));
        }
        return Ok(None);
    };
    let signature = Some(header)
        .and_then(|h| {
            base64::engine::general_purpose::STANDARD
                .decode(h.trim())
                .ok()
        })
        .ok_or_else(|| {
            unauthorized(
                "signature_malformed",
                format!("{SIGNATURE_HEADER} is not base64"),
            )
        })?;
    if terminal.verifiers.is_empty() {
        return Err(unauthorized(
            "terminal_key_revoked",
            format!("every key of terminal {id} is revoked; rotate a new key in"),
        ));
    }
    let mut malformed = false;
    for (fp, key) in &terminal.verifiers {
        match key.verify(body, &signature) {
            Ok(()) => {
                return Ok(Some(Signed {
                    key_fingerprint: *fp,
                    signature,
                }));
            }
            Err(custodian_events::crypto::CryptoError::MalformedSignature) => malformed = true,
            Err(_) => {}
        }
    }
    Err(if malformed {
        unauthorized(
            "signature_malformed",
            format!("{SIGNATURE_HEADER} is not a DER SM2 signature (SEQUENCE {{ r, s }})"),
        )
    } else {
        unauthorized(
            "signature_invalid",
            format!(
                "the signature does not verify with any current key of terminal {id} (SM3, user id 1234567812345678, over the exact body)"
            ),
        )
    })
}

/// 503 `backpressure` while the domain core lags too far behind the log.
fn backpressure(st: &Ingest) -> Result<(), ApiError> {
    if !st.derive_enabled {
        return Ok(());
    }
    let derived = st.derived_seq.load(std::sync::atomic::Ordering::Acquire);
    let lag = st.log.last_seq().saturating_sub(derived);
    if lag > st.lag_events_max {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backpressure",
            format!(
                "anomaly detection is {lag} events behind the log (at most {} allowed); nothing of this request was stored, retry shortly",
                st.lag_events_max
            ),
        ));
    }
    Ok(())
}

/// A key replaced by a rotation still vouches for readings measured before the rotation, not after.
fn key_covers(
    signed: &Option<Signed>,
    terminal: &TerminalEntry,
    reading: &Reading,
) -> Result<(), custodian_events::Rejection> {
    let Some(signed) = signed else { return Ok(()) };
    let key = terminal
        .keys
        .usable()
        .find(|k| k.fingerprint == signed.key_fingerprint)
        .expect("the signing key is one of the usable keys");
    if key.covers(reading.measured_at_ns) {
        return Ok(());
    }
    Err(custodian_events::Rejection::new(
        "key_superseded",
        format!(
            "signed with key {} which was replaced before this reading was measured; sign with the current key",
            hex::encode(signed.key_fingerprint)
        ),
    ))
}

/// An upload as sent. Readings are parsed one by one, so that one malformed reading is rejected alone and
/// the good ones beside it are still accepted.
///
/// The body's bytes are what `X-Custodian-Signature` signs, so the terminal and its key must be known and
/// the signature verify (401) before any reading is looked at; each reading's outcome is in the answer.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawUpload {
    #[schema(schema_with = custodian_events::openapi::id)]
    terminal_id: String,
    /// 1 ..= `ingest.batch_readings_max` readings (default 1,000; more answer 413 `batch_too_large`).
    #[schema(value_type = Vec<custodian_events::reading::RawReading>, min_items = 1, max_items = 1000)]
    readings: Vec<Box<RawValue>>,
}

#[utoipa::path(
    post,
    path = "/v1/uploads",
    operation_id = "upload",
    tag = "ingest",
    summary = "Upload a terminal's readings (SM2-signed body in X-Custodian-Signature)",
    security(()),
    params(crate::api::schema::UploadHeaders),
    request_body = RawUpload,
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn upload(State(st): State<Ingest>, headers: HeaderMap, body: Body) -> Response {
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

async fn handle(st: &Ingest, headers: &HeaderMap, body: Body) -> Result<UploadResponse, ApiError> {
    if let Some(edge) = st.edge.get() {
        edge.admit()?;
    }
    let body_bytes = read_body(headers, body, st.limits.body_bytes_max).await?;
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(h) => Some(h.to_str().map_err(|_| {
            unauthorized(
                "signature_malformed",
                format!("{SIGNATURE_HEADER} is not base64"),
            )
        })?),
    };
    ingest_signed(st, &body_bytes, signature, None).await
}

/// Ingests one upload body with its signature (base64 DER, as in `X-Custodian-Signature`): the path of
/// `POST /v1/uploads`, of MQTT uploads at an edge, and of each upload an edge forwards. `enterprises`,
/// when given, are the only enterprises whose terminals may upload this way (an edge's own).
pub async fn ingest_signed(
    st: &Ingest,
    body_bytes: &[u8],
    signature: Option<&str>,
    enterprises: Option<&[custodian_events::EnterpriseId]>,
) -> Result<UploadResponse, ApiError> {
    let limits = &st.limits;
    if body_bytes.len() > limits.body_bytes_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the upload body of {} bytes is over the limit of {} bytes",
                body_bytes.len(),
                limits.body_bytes_max
            ),
        ));
    }
    let upload: RawUpload = parse_json(body_bytes)?;
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
    let mut found = st.registry.terminal(st.log.as_ref(), &terminal_id)?;
    if found.is_none() {
        // In cluster mode another node may have registered it a moment ago.
        st.log.barrier().await?;
        found = st.registry.terminal(st.log.as_ref(), &terminal_id)?;
    }
    let Some(terminal) = found else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_terminal",
            format!(
                "terminal {terminal_id} is not registered; an administrator registers it with POST /v1/terminals"
            ),
        ));
    };
    if let Some(allowed) = enterprises
        && !allowed.contains(&terminal.registration.enterprise_id)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "terminal_out_of_scope",
            format!(
                "terminal {terminal_id} belongs to enterprise {}, which this edge is not registered for",
                terminal.registration.enterprise_id
            ),
        ));
    }
    let signed = verify_signature(st, signature, &terminal, body_bytes)?;

    backpressure(st)?;
    let check = ReadingCheck {
        now_ns: st.clock.now_ns(),
        future_skew_ns_max: (limits.future_skew_s_max as i64).saturating_mul(1_000_000_000),
    };
    let mut results: Vec<Option<ReadingResult>> = Vec::with_capacity(upload.readings.len());
    let mut proposed = Vec::with_capacity(upload.readings.len());
    let mut proposed_at = Vec::with_capacity(upload.readings.len());
    for (i, raw) in upload.readings.iter().enumerate() {
        let as_object = if raw.get().trim_start().starts_with('{') {
            serde_json::from_str::<RawReading>(raw.get())
        } else {
            Err(serde::de::Error::custom("a reading must be a JSON object"))
        };
        match as_object {
            Err(e) => {
                st.metrics.rejected("invalid_reading");
                results.push(Some(ReadingResult::rejected(
                    seq_hint(raw),
                    "invalid_reading",
                    format!("reading {i}: {e}"),
                )));
            }
            Ok(raw) => match Reading::normalize(&terminal_id, &raw, check).and_then(|r| {
                key_covers(&signed, &terminal, &r)?;
                within_capacity(&terminal.registration, &r)?;
                Ok(r)
            }) {
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
        // The signed body goes first, in the same atomic append: evidence for every reading it carried.
        let evidence = signed.as_ref().map(|s| {
            Proposed::new(Event::UploadSigned(UploadSigned {
                terminal_id: terminal_id.clone(),
                key_fingerprint: s.key_fingerprint,
                body: body_bytes.to_vec(),
                signature: s.signature.clone(),
            }))
        });
        let seqs: Vec<u64> = proposed
            .iter()
            .map(|p| match &p.event {
                Event::ReadingRecorded(r) => r.seq,
                _ => unreachable!("only readings are proposed here"),
            })
            .collect();
        let with_evidence = evidence.is_some();
        let batch: Vec<Proposed> = evidence.into_iter().chain(proposed).collect();
        let scope = terminal.registration.enterprise_id.to_string();
        let batch = sealing::seal_all(&st.sealer, &scope, batch).await?;
        let started = Instant::now();
        let mut outcomes = st.log.append(batch).await?;
        st.metrics.observe_append(started.elapsed());
        if with_evidence {
            outcomes.remove(0);
        }
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
/// A weight above what the terminal is registered to weigh is physically impossible for it.
fn within_capacity(
    t: &custodian_events::event::TerminalRegistered,
    r: &Reading,
) -> Result<(), custodian_events::Rejection> {
    if r.kind == custodian_events::ReadingKind::Weight && r.value > t.capacity_mg {
        return Err(custodian_events::Rejection::new(
            "value_over_capacity",
            format!(
                "seq {}: {} kg is above the {} kg terminal {} is registered to weigh",
                r.seq,
                r.value as f64 / 1e6,
                t.capacity_mg as f64 / 1e6,
                t.id
            ),
        ));
    }
    Ok(())
}

fn seq_hint(raw: &RawValue) -> Option<u64> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: Option<u64>,
    }
    serde_json::from_str::<SeqOnly>(raw.get())
        .ok()
        .and_then(|s| s.seq)
}

//! `GET /v1/events`: the log as an auditor sees it. Each item carries the canonical payload, so its
//! SHA-256 can be recomputed and compared with `fingerprint` by anyone with an RFC 8785 implementation.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use custodian_events::Envelope;
use custodian_events::reading::format_utc_ns;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, require_admin};

/// The most events one page returns.
pub const EVENTS_PAGE_MAX: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    from_seq: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn list(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin(&st, &headers)?;
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            e.body_text(),
        )
    })?;
    let from = q.from_seq.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(100).clamp(1, EVENTS_PAGE_MAX);
    let log = st.log.clone();
    let events = tokio::task::spawn_blocking(move || log.read(from, limit))
        .await
        .expect("reading the log does not panic")?;
    let next = match events.last() {
        Some(e) if e.seq < st.log.last_seq() => Some(e.seq + 1),
        _ => None,
    };
    Ok(axum::Json(json!({
        "items": events.iter().map(event_json).collect::<Vec<_>>(),
        "next_from_seq": next,
    })))
}

pub fn event_json(e: &Envelope) -> Value {
    json!({
        "seq": e.seq,
        "stream": e.stream,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": format_utc_ns(e.recorded_at_ns),
        "fingerprint": e.fingerprint_hex(),
        "key_id": e.key_id,
        "payload": e.event.canonical().to_value(),
    })
}

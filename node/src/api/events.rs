//! `GET /v1/events?from_seq=N&types=A,B&follow=true&limit=L` (admin): the log as an auditor sees it,
//! streamed as NDJSON — one JSON object per line, in log order:
//!
//! `{"event_seq", "type", "stream", "schema_version", "recorded_at", "fingerprint", "key_id", "payload"}`
//!
//! `payload` is the canonical payload, so its SHA-256 can be recomputed and compared with `fingerprint`
//! by anyone with an RFC 8785 implementation. Without `follow` the response ends at the head of the log
//! as it was when the request arrived; with `follow=true` it stays open and carries new events as they
//! become durable. `limit` caps the number of lines.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_events::reading::format_utc_ns;
use custodian_events::{Envelope, Event};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::auth::require_admin;
use crate::api::error::ApiError;
use crate::state::Feed;

/// Events read from the log per step of the stream.
const STEP_EVENTS: usize = 500;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// The first sequence to send (default 1).
    #[serde(default)]
    #[param(minimum = 0)]
    from_seq: Option<i64>,
    /// Only these event types, separated by commas.
    #[serde(default)]
    #[param(value_type = Option<crate::api::schema::EventTypes>, inline)]
    types: Option<String>,
    /// Keep the stream open and send new events as they become durable.
    #[serde(default)]
    follow: Option<bool>,
    /// At most this many events.
    #[serde(default)]
    #[param(minimum = 0)]
    limit: Option<i64>,
}

/// A count or sequence of the query: 0 ..= i64::MAX, as the document states (int64).
fn non_negative(name: &str, v: Option<i64>) -> Result<Option<u64>, ApiError> {
    v.map(|n| {
        u64::try_from(n).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("{name} must not be negative"),
            )
        })
    })
    .transpose()
}

struct Cursor {
    st: Feed,
    from: u64,
    /// Where a non-following stream ends.
    end: Option<u64>,
    left: u64,
    types: Option<Arc<BTreeSet<String>>>,
    durable: tokio::sync::watch::Receiver<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "stream",
    tag = "audit",
    summary = "The log as NDJSON (follow=true keeps it open)",
    params(EventsQuery),
    responses(
        (status = 200, description = "OK", body = String, content_type = "application/x-ndjson"),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403,
        (status = 500, description = "The node failed (`internal`)", body = crate::api::schema::ErrorBody),
        crate::api::schema::E503,
    ),
)]
pub async fn stream(
    State(st): State<Feed>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&st.access, &headers)?;
    let Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let types = match &q.types {
        None => None,
        Some(list) => {
            let mut set = BTreeSet::new();
            for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if !Event::TYPES.contains(&t) {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unknown_event_type",
                        format!(
                            "types names {t:?}; known types: {}",
                            Event::TYPES.join(", ")
                        ),
                    ));
                }
                set.insert(t.to_owned());
            }
            Some(Arc::new(set))
        }
    };
    let cursor = Cursor {
        from: non_negative("from_seq", q.from_seq)?.unwrap_or(1).max(1),
        end: (!q.follow.unwrap_or(false)).then(|| st.log.last_seq()),
        left: non_negative("limit", q.limit)?.unwrap_or(u64::MAX),
        types,
        durable: st.log.subscribe(),
        st,
    };
    let body = futures_util::stream::unfold(cursor, next_chunk);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The next lines of the stream, or its end.
async fn next_chunk(mut c: Cursor) -> Option<(Result<Vec<u8>, std::io::Error>, Cursor)> {
    loop {
        if c.left == 0 || c.end.is_some_and(|end| c.from > end) {
            return None;
        }
        if c.from > c.st.log.last_seq() {
            // Only a following stream gets here: wait for the log to move.
            c.durable.changed().await.ok()?;
            continue;
        }
        let log = c.st.log.clone();
        let (from, types) = (c.from, c.types.clone());
        let step = c.left.min(STEP_EVENTS as u64) as usize;
        // With a type filter, scan further per step (skipped records are not opened).
        let scan = if types.is_some() { step * 20 } else { step };
        let read = tokio::task::spawn_blocking(move || {
            let want = |t: &str| types.as_ref().is_none_or(|set| set.contains(t));
            log.read_where(from, scan, &want)
        })
        .await;
        let (events, last) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %e, seq = from, "event stream stopped: the log cannot be read");
                return Some((Err(std::io::Error::other(e.to_string())), c));
            }
            Err(e) => return Some((Err(std::io::Error::other(e.to_string())), c)),
        };
        if last == 0 {
            return None;
        }
        c.from = last + 1;
        let mut out = Vec::new();
        for e in events {
            if c.left == 0 || c.end.is_some_and(|end| e.seq > end) {
                c.left = 0;
                break;
            }
            serde_json::to_writer(&mut out, &event_json(&e)).expect("JSON to memory");
            out.push(b'\n');
            c.left -= 1;
        }
        if !out.is_empty() {
            return Some((Ok(out), c));
        }
    }
}

pub fn event_json(e: &Envelope) -> Value {
    json!({
        "event_seq": e.seq,
        "type": e.event_type,
        "stream": e.stream,
        "schema_version": e.schema_version,
        "recorded_at": format_utc_ns(e.recorded_at_ns),
        "fingerprint": e.fingerprint_hex(),
        "key_id": e.key_id,
        "caused_by": e.caused_by,
        "payload": e.event.canonical().to_value(),
    })
}

/// Records per step of an export.
const EXPORT_STEP_RECORDS: usize = 2_000;

struct ExportCursor {
    st: Feed,
    next: u64,
    last: u64,
    exporter: Option<custodian_log::export::Exporter>,
}

/// `GET /v1/admin/log/export` (admin): the whole log up to its last durable event when the request came,
/// as a log export file (`docs/log-export.md`): records as stored, sealed payloads still sealed, with a
/// SHA-256 trailer. `custodian log export` saves it; `custodian log import` restores it.
#[utoipa::path(
    get,
    path = "/v1/admin/log/export",
    operation_id = "export",
    tag = "audit",
    summary = "The whole log as a log export file (records as stored, sealed payloads sealed, SHA-256 trailer; docs/log-export.md)",
    responses(
        (status = 200, description = "OK", body = Vec<u8>, content_type = "application/octet-stream"),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E503,
    ),
)]
pub async fn export(State(st): State<Feed>, headers: HeaderMap) -> Result<Response, ApiError> {
    use custodian_log::export::{ExportHeader, Exporter};
    use futures_util::StreamExt as _;
    require_admin(&st.access, &headers)?;
    let last = st.log.last_seq();
    let genesis = st.log.read(1, 1)?.first().map(|e| e.fingerprint_hex());
    let header = ExportHeader::new(
        last,
        genesis,
        custodian_events::reading::format_utc_ns(st.clock.now_ns()),
    );
    let (exporter, head) = Exporter::start(&header);
    let cursor = ExportCursor {
        st,
        next: 1,
        last,
        exporter: Some(exporter),
    };
    let rest = futures_util::stream::unfold(cursor, next_export_chunk);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(rest);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"custodian-log.export\"",
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

async fn next_export_chunk(
    mut c: ExportCursor,
) -> Option<(Result<Vec<u8>, std::io::Error>, ExportCursor)> {
    let mut exporter = c.exporter.take()?;
    if c.next > c.last {
        return Some((Ok(exporter.finish()), c));
    }
    let log = c.st.log.clone();
    let (from, max) = (
        c.next,
        ((c.last - c.next + 1) as usize).min(EXPORT_STEP_RECORDS),
    );
    let read = tokio::task::spawn_blocking(move || log.read_raw(from, max)).await;
    let records = match read {
        Ok(Ok(r)) if !r.is_empty() => r,
        Ok(Ok(_)) => {
            return Some((
                Err(std::io::Error::other(format!(
                    "the log ends before record {from}"
                ))),
                c,
            ));
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, seq = from, "log export stopped: the log cannot be read");
            return Some((Err(std::io::Error::other(e.to_string())), c));
        }
        Err(e) => return Some((Err(std::io::Error::other(e.to_string())), c)),
    };
    let mut out = Vec::with_capacity(records.iter().map(|r| r.1.len() + 12).sum());
    for (seq, record) in &records {
        exporter.record(*seq, record, &mut out);
    }
    c.next = records.last().map_or(c.next, |r| r.0 + 1);
    c.exporter = Some(exporter);
    Some((Ok(out), c))
}

//! The edge's own endpoints (admin token): `GET /v1/edge/outbox`, `GET /v1/edge/dead-letters`,
//! `POST /v1/edge/dead-letters/retry`, `POST /v1/edge/dead-letters/discard`; and its local anomalies, which `GET /v1/anomalies` answers from on an
//! edge. On a platform node they answer 404 `not_an_edge`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::EdgeRuntime;
use crate::api::auth::require_admin;
use crate::api::error::ApiError;
use crate::state::Reads;

fn edge(st: &Reads) -> Result<&Arc<EdgeRuntime>, ApiError> {
    st.edge.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_an_edge",
            "this node is not an edge (start one with `custodian edge`)",
        )
    })
}

fn storage(e: sled::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "outbox_unavailable",
        format!("the outbox cannot be read: {e}"),
    )
}

/// `GET /v1/edge/outbox`: what waits, the limit, and how forwarding goes.
#[utoipa::path(
    get,
    path = "/v1/edge/outbox",
    operation_id = "outbox",
    tag = "edge",
    summary = "At an edge: what waits in the outbox, its limit, and how forwarding goes (admin)",
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn outbox(State(st): State<Reads>, headers: HeaderMap) -> Result<Response, ApiError> {
    require_admin(&st.access, &headers)?;
    let e = edge(&st)?;
    let s = &e.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(axum::Json(serde_json::json!({
        "edge_id": e.id,
        "outbox": e.outbox.counts(),
        "outbox_size_on_disk": e.outbox.size_on_disk(),
        "log_last_seq": st.log.last_seq(),
        "forwarding": {
            "upstream_up": s.upstream_ok.load(Ordering::Relaxed),
            "attempts": n(&s.attempts),
            "failures": n(&s.failures),
            "uploads_forwarded": n(&s.uploads_forwarded),
            "readings_forwarded": n(&s.readings_forwarded),
            "anomalies_forwarded": n(&s.anomalies_forwarded),
            "dead_lettered": n(&s.dead_lettered),
            "backoff_ms": n(&s.backoff_ms),
            "recent_attempts_ms": s.recent_attempts_ms.lock().expect("stats lock").iter().collect::<Vec<_>>(),
            "last_error": s.last_error.lock().expect("stats lock").clone(),
        },
        "local_anomalies": n(&s.local_anomalies),
        "registrations_synced": n(&s.registrations_synced),
        "uploads_refused_full": n(&s.refused_full),
    }))
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// At most this many (default 100; more than 1,000 is 1,000).
    limit: Option<usize>,
}

/// `GET /v1/edge/dead-letters?limit=N`: uploads the platform refused, oldest first, with the reason.
#[utoipa::path(
    get,
    path = "/v1/edge/dead-letters",
    operation_id = "dead_letters",
    tag = "edge",
    summary = "At an edge: uploads the platform refused, with the reason (admin)",
    params(LimitQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn dead_letters(
    State(st): State<Reads>,
    headers: HeaderMap,
    q: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&st.access, &headers)?;
    let e = edge(&st)?;
    let limit = q
        .map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", r.body_text()))?
        .limit
        .unwrap_or(100)
        .min(1_000);
    let letters = e.outbox.dead_letters(limit).map_err(storage)?;
    Ok(axum::Json(serde_json::json!({
        "items": letters.iter().map(|l| serde_json::json!({
            "log_seq": l.log_seq,
            "terminal_id": l.entry.terminal_id,
            "seqs": l.entry.seqs,
            "code": l.code,
            "message": l.message,
            "at": custodian_events::reading::format_utc_ns(l.at_ns),
            "body": String::from_utf8_lossy(&l.entry.body),
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `POST /v1/edge/dead-letters/retry`: every dead letter back into its terminal's queue (after an operator
/// fixed the cause: registered the terminal, rotated its key in).
#[utoipa::path(
    post,
    path = "/v1/edge/dead-letters/retry",
    operation_id = "retry_dead_letters",
    tag = "edge",
    summary = "At an edge: put every dead letter back in its terminal's queue (admin)",
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn retry_dead_letters(
    State(st): State<Reads>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&st.access, &headers)?;
    let e = edge(&st)?;
    let moved = e.outbox.retry_dead_letters().map_err(storage)?;
    Ok(axum::Json(serde_json::json!({ "requeued": moved })).into_response())
}

/// Most dead letters one discard names.
pub const DISCARD_SEQS_MAX: usize = 10_000;

/// Either `log_seqs` (1 ..= 10,000 of them) or `all: true`, not both.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardBody {
    #[schema(min_items = 1, max_items = 10000)]
    #[serde(
        default,
        deserialize_with = "custodian_events::json_int::option_vec_u64"
    )]
    log_seqs: Option<Vec<u64>>,
    all: Option<bool>,
}

/// `POST /v1/edge/dead-letters/discard` with `{"log_seqs": [..]}` (as `GET /v1/edge/dead-letters` lists
/// them) or `{"all": true}`: drops those dead letters for good, for refusals nobody can fix (a terminal
/// that was never this edge's, a decommissioned one). Dead letters count against the outbox's limit, so
/// without this they would fill it in the end and the edge would refuse every upload. The readings stay
/// in the edge's event log. Answers the sequences dropped; one that is not a dead letter is `not_found`
/// and changes nothing, so asking twice is harmless.
#[utoipa::path(
    post,
    path = "/v1/edge/dead-letters/discard",
    operation_id = "discard_dead_letters",
    tag = "edge",
    summary = "At an edge: drop dead letters for good, by log_seqs or all (admin); their readings stay in the edge's log",
    request_body = DiscardBody,
    responses(
        (status = 200, description = "The dead letters dropped, and the sequences that were none", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn discard_dead_letters(
    State(st): State<Reads>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let who = crate::api::auth::require_admin_caller(&st.access, &headers)?;
    let e = edge(&st)?;
    let b: DiscardBody = crate::api::body::read_json(&headers, body, 256 * 1024).await?;
    let invalid = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", m);
    let seqs = match (b.log_seqs, b.all) {
        (Some(seqs), None | Some(false)) if !seqs.is_empty() && seqs.len() <= DISCARD_SEQS_MAX => {
            Some(seqs)
        }
        (Some(seqs), None | Some(false)) => {
            return Err(invalid(format!(
                "log_seqs has {} entries; name 1 ..= {DISCARD_SEQS_MAX} dead letters, or send {{\"all\": true}}",
                seqs.len()
            )));
        }
        (None, Some(true)) => None,
        _ => {
            return Err(invalid(
                "name the dead letters to discard, {\"log_seqs\": [..]} as GET /v1/edge/dead-letters lists them, or send {\"all\": true}; not both"
                    .into(),
            ));
        }
    };
    let dropped = e
        .outbox
        .discard_dead_letters(seqs.as_deref())
        .map_err(storage)?;
    let not_found: Vec<u64> = seqs
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !dropped.contains(s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !dropped.is_empty() {
        tracing::warn!(by = %who.token_id, count = dropped.len(), ?dropped, "edge: dead letters discarded");
    }
    Ok(axum::Json(serde_json::json!({
        "discarded": dropped.len(),
        "log_seqs": dropped,
        "not_found": not_found,
    }))
    .into_response())
}

/// The edge's answer to `GET /v1/anomalies`: the anomalies it detected itself, newest first, in the
/// caller's scope.
pub fn local_anomalies(
    directory: &custodian_projections::directory::SharedDirectory,
    e: &EdgeRuntime,
    scope: &crate::tokens::Scope,
    limit: usize,
    before: Option<u64>,
) -> Result<serde_json::Value, ApiError> {
    let (province, enterprise) = scope.binds();
    let dir = directory.read().expect("directory lock");
    let items: Vec<_> = e
        .outbox
        .local_anomalies(10_000, before)
        .map_err(storage)?
        .into_iter()
        .filter(|a| {
            let ent = a.enterprise_id.clone().or_else(|| {
                a.terminal_id
                    .as_deref()
                    .and_then(|t| dir.enterprise_of(t))
                    .map(str::to_owned)
            });
            enterprise
                .as_ref()
                .is_none_or(|want| ent.as_ref() == Some(want))
                && province.as_ref().is_none_or(|want| {
                    ent.as_deref().and_then(|x| dir.province_of(x)) == Some(want.as_str())
                })
        })
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    let shown = &items[..items.len().min(limit)];
    Ok(serde_json::json!({
        "items": shown.iter().map(|a| serde_json::json!({
            "anomaly_id": a.anomaly_id,
            "event_seq": a.event_seq,
            "kind": a.kind,
            "severity": a.severity,
            "subject": a.subject,
            "terminal_id": a.terminal_id,
            "enterprise_id": a.enterprise_id,
            "container_id": a.container_id,
            "description": a.description,
            "detected_at": custodian_events::reading::format_utc_ns(a.detected_at_ns),
            "state": "open",
            "source": "edge",
        })).collect::<Vec<_>>(),
        "next_cursor": if more { shown.last().map(|a| a.event_seq.to_string()) } else { None },
    }))
}

//! The platform's side of edge nodes: `POST /v1/edges` (register an edge), `GET /v1/edge/public-key` (the
//! key edges seal to), `POST /v1/edge/registrations` (an edge fetches its terminals), `POST /v1/edge/batches`
//! (an edge forwards what its terminals uploaded). See `docs/edge.md`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_events::crypto::Sm2PublicKey;
use custodian_events::event::{
    AnomalyReported, EDGE_ENTERPRISES_MAX, EdgeRegistered, dedupe_key_edge, dedupe_key_enterprise,
    dedupe_key_terminal, dedupe_key_terminal_keys,
};
use custodian_events::{EnterpriseId, Event, TerminalId};
use custodian_log::AppendOutcome;
use serde::Deserialize;

use crate::api::auth::require_admin_caller;
use crate::api::body::read_json;
use crate::api::error::ApiError;
use crate::edge::wire::{
    AnomalyOutcome, BATCH_BYTES_MAX, EDGE_HEADER, ForwardAnswer, ForwardBatch, REQUEST_SKEW_S_MAX,
    Registrations, RegistrationsRequest, UploadOutcome, encode_event, unb64,
};
use crate::sealing;
use crate::state::Edges;
use crate::terminals::{TERMINAL_KEY_CHANGES_MAX, read_event};

/// Each enterprise must be registered (`unknown_enterprise`), which no schema can say.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    #[schema(schema_with = custodian_events::openapi::id)]
    id: String,
    #[schema(schema_with = custodian_events::openapi::public_key_pem)]
    public_key_pem: String,
    /// The enterprises the edge serves: 1 ..= 1,000 ids.
    #[schema(schema_with = edge_enterprises)]
    enterprise_ids: Vec<String>,
}

fn edge_enterprises() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(custodian_events::openapi::id())
        .min_items(Some(1))
        .max_items(Some(EDGE_ENTERPRISES_MAX))
        .build()
}

fn unprocessable(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// `POST /v1/edges` (admin): 201 registered, 200 the same registration again, 409 `edge_exists` when the id
/// is taken with other content.
#[utoipa::path(
    post,
    path = "/v1/edges",
    operation_id = "register_edge",
    tag = "edge",
    summary = "Register an edge node (admin)",
    request_body = RawEdge,
    responses(
        (status = 200, description = "Already registered with the same content: unchanged, nothing stored", body = serde_json::Value),
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn register_edge(
    State(st): State<Edges>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: RawEdge = read_json(&headers, body, 64 * 1024).await?;
    EnterpriseId::parse(&raw.id)
        .map_err(|e| unprocessable("invalid_id", format!("id {:?}: {e}", raw.id)))?;
    let public_key_der = custodian_events::crypto::sm2_public_key_der_from_pem(&raw.public_key_pem)
        .map_err(ApiError::unprocessable)?;
    if raw.enterprise_ids.is_empty() || raw.enterprise_ids.len() > EDGE_ENTERPRISES_MAX {
        return Err(unprocessable(
            "value_out_of_range",
            format!("an edge serves 1 to {EDGE_ENTERPRISES_MAX} enterprises"),
        ));
    }
    let mut enterprise_ids = Vec::with_capacity(raw.enterprise_ids.len());
    for e in &raw.enterprise_ids {
        let id = EnterpriseId::parse(e)
            .map_err(|err| unprocessable("invalid_id", format!("enterprise id {e:?}: {err}")))?;
        if read_event(st.log.as_ref(), &dedupe_key_enterprise(&id))?.is_none() {
            return Err(unprocessable(
                "unknown_enterprise",
                format!(
                    "enterprise {id} is not registered; register it with POST /v1/enterprises first"
                ),
            ));
        }
        enterprise_ids.push(id);
    }
    enterprise_ids.sort();
    enterprise_ids.dedup();
    let event = Event::EdgeRegistered(EdgeRegistered {
        id: raw.id.clone(),
        public_key_der,
        enterprise_ids,
    });
    let proposed = sealing::sealed(
        &st.sealer,
        custodian_events::keyring::PLATFORM_SCOPE,
        event,
        Some(&caller.token_id),
    )
    .await?;
    let outcome = st.log.append(vec![proposed]).await?.remove(0);
    let (status, seq) = match outcome {
        AppendOutcome::Appended { seq } => (StatusCode::CREATED, seq),
        AppendOutcome::Duplicate { seq } => (StatusCode::OK, seq),
        AppendOutcome::Conflict { original_seq, .. } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "edge_exists",
                format!(
                    "edge {} is registered (event {original_seq}) with another key or other enterprises",
                    raw.id
                ),
            ));
        }
    };
    Ok((
        status,
        axum::Json(serde_json::json!({"id": raw.id, "event_seq": seq})),
    )
        .into_response())
}

/// `GET /v1/edge/public-key`: the platform's SM2 public key, which edges seal their batches to (and pin).
#[utoipa::path(
    get,
    path = "/v1/edge/public-key",
    operation_id = "public_key",
    tag = "edge",
    summary = "The platform's SM2 public key, which edges seal to and pin",
    security(()),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400,
    ),
)]
pub async fn public_key(State(st): State<Edges>) -> Response {
    axum::Json(serde_json::json!({
        "public_key_pem": st.access.tokens.key().public_key_pem(),
        "fingerprint": hex::encode(custodian_events::crypto::key_fingerprint(&st.access.tokens.key().public_key_der())),
    }))
    .into_response()
}

/// A registered edge.
struct EdgeEntry {
    registration: EdgeRegistered,
    key: Sm2PublicKey,
}

fn edge_entry(st: &Edges, id: &str) -> Result<EdgeEntry, ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "edge_unknown",
            format!(
                "edge {id:?} is not registered here; an administrator registers it with POST /v1/edges"
            ),
        )
    };
    let Some(Event::EdgeRegistered(registration)) =
        read_event(st.log.as_ref(), &dedupe_key_edge(id))?
    else {
        return Err(unknown());
    };
    let key = Sm2PublicKey::from_der(&registration.public_key_der).map_err(|_| unknown())?;
    Ok(EdgeEntry { registration, key })
}

/// Reads a sealed request: the edge named in `X-Custodian-Edge`, its envelope opened and checked.
async fn open_request(
    st: &Edges,
    headers: &HeaderMap,
    body: Body,
) -> Result<(EdgeEntry, Vec<u8>), ApiError> {
    let id = headers
        .get(EDGE_HEADER)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "edge_unknown",
                format!("edge requests name their edge in {EDGE_HEADER}"),
            )
        })?
        .to_owned();
    let edge = edge_entry(st, &id)?;
    let sealed = axum::body::to_bytes(body, BATCH_BYTES_MAX)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "a sealed edge request is at most {BATCH_BYTES_MAX} bytes; send smaller batches"
                ),
            )
        })?;
    let plain =
        custodian_events::digital_envelope::open(&sealed, st.access.tokens.key(), &edge.key)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "envelope_invalid",
                    format!("the request is not an envelope from edge {id} to this platform: {e}"),
                )
            })?;
    Ok((edge, plain))
}

/// `POST /v1/edge/batches`: the uploads in order, each through the same path as `POST /v1/uploads` (the
/// terminal's own signature checked again), then the answer per upload and per reading. Each terminal's
/// uploads go in order, terminals side by side; after a terminal's first upload the platform cannot take
/// now (503), that terminal's later uploads answer `retry`, so that its readings never overtake each other.
#[utoipa::path(
    post,
    path = "/v1/edge/batches",
    operation_id = "batches",
    tag = "edge",
    summary = "Forwarded uploads and anomalies from an edge (SM2/SM4 digital envelope, X-Custodian-Edge names the edge); one outcome per upload and reading",
    security(()),
    params(crate::api::schema::EdgeHeaders),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the sealed JSON {edge_id, anomalies:[{id,anomaly_b64}], uploads:[{id,body_b64,signature}]}"),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E413, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn batches(
    State(st): State<Edges>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (edge, plain) = open_request(&st, &headers, body).await?;
    let batch: ForwardBatch = crate::api::body::parse_json(&plain)?;
    let id = &edge.registration.id;
    if &batch.edge_id != id {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "envelope_invalid",
            format!(
                "the batch names edge {:?} but was sealed by edge {id}",
                batch.edge_id
            ),
        ));
    }
    let allowed = &edge.registration.enterprise_ids;
    let mut busy: Option<ApiError> = None;
    let mut anomalies = Vec::with_capacity(batch.anomalies.len());
    for a in &batch.anomalies {
        if let Some(b) = &busy {
            anomalies.push(AnomalyOutcome::Retry {
                id: a.id,
                code: b.code.into(),
                message: b.message.clone(),
            });
            continue;
        }
        match report_anomaly(&st, id, allowed, &a.anomaly_b64).await {
            Ok(true) => anomalies.push(AnomalyOutcome::Recorded { id: a.id }),
            Ok(false) => anomalies.push(AnomalyOutcome::Duplicate { id: a.id }),
            Err(e) if e.status.is_server_error() => {
                anomalies.push(AnomalyOutcome::Retry {
                    id: a.id,
                    code: e.code.into(),
                    message: e.message.clone(),
                });
                busy = Some(e);
            }
            Err(e) => anomalies.push(AnomalyOutcome::Rejected {
                id: a.id,
                code: e.code.into(),
                message: e.message,
            }),
        }
    }
    // Each terminal's uploads in order; different terminals at once, so that they share the log's group
    // commits (one fsync for many uploads).
    let mut lanes: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, u) in batch.uploads.iter().enumerate() {
        lanes
            .entry(terminal_of(&u.body_b64).unwrap_or_else(|| format!("#{i}")))
            .or_default()
            .push(i);
    }
    let mut outcomes: Vec<Option<UploadOutcome>> = vec![None; batch.uploads.len()];
    let st_ref = &st;
    let busy_ref = &busy;
    let lane_results = futures_util::future::join_all(lanes.into_values().map(|lane| {
        let uploads = &batch.uploads;
        async move {
            let mut out = Vec::with_capacity(lane.len());
            let mut busy = busy_ref.clone();
            for i in lane {
                out.push((
                    i,
                    forward_one(st_ref, allowed, &uploads[i], &mut busy).await,
                ));
            }
            out
        }
    }))
    .await;
    for (i, o) in lane_results.into_iter().flatten() {
        outcomes[i] = Some(o);
    }
    let uploads = outcomes
        .into_iter()
        .map(|o| o.expect("every upload has an outcome"))
        .collect();
    Ok(axum::Json(ForwardAnswer { uploads, anomalies }).into_response())
}

/// The terminal an upload is for, read cheaply to keep each terminal's uploads in order.
fn terminal_of(body_b64: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct TerminalOnly {
        terminal_id: String,
    }
    let body = unb64(body_b64).ok()?;
    serde_json::from_slice::<TerminalOnly>(&body)
        .ok()
        .map(|t| t.terminal_id)
}

/// One forwarded upload through the ingest path. After the first upload of a terminal the platform cannot
/// take now (`busy`), that terminal's later ones answer `retry`, so they cannot overtake it.
async fn forward_one(
    st: &Edges,
    allowed: &[EnterpriseId],
    u: &crate::edge::wire::ForwardUpload,
    busy: &mut Option<ApiError>,
) -> UploadOutcome {
    if let Some(b) = busy {
        return UploadOutcome::Retry {
            id: u.id,
            code: b.code.into(),
            message: b.message.clone(),
        };
    }
    let body = match unb64(&u.body_b64) {
        Ok(b) => b,
        Err(e) => {
            return UploadOutcome::Rejected {
                id: u.id,
                code: "invalid_body".into(),
                message: format!("body_b64 {e}"),
            };
        }
    };
    match super::ingest::ingest_signed(&st.ingest, &body, Some(&u.signature), Some(allowed)).await {
        Ok(r) => {
            st.metrics
                .edge_readings_received
                .fetch_add(r.results.len() as u64, std::sync::atomic::Ordering::Relaxed);
            UploadOutcome::Done {
                id: u.id,
                results: r.results,
            }
        }
        Err(e) if e.status.is_server_error() => {
            let o = UploadOutcome::Retry {
                id: u.id,
                code: e.code.into(),
                message: e.message.clone(),
            };
            *busy = Some(e);
            o
        }
        Err(e) => UploadOutcome::Rejected {
            id: u.id,
            code: e.code.into(),
            message: e.message,
        },
    }
}

/// Records an anomaly an edge reports; false when it was reported before.
async fn report_anomaly(
    st: &Edges,
    edge_id: &str,
    allowed: &[EnterpriseId],
    text: &str,
) -> Result<bool, ApiError> {
    let anomaly =
        crate::edge::wire::decode_anomaly(text).map_err(|e| unprocessable("invalid_anomaly", e))?;
    let expected = custodian_events::domain::AnomalyDetected::identity(
        anomaly.kind,
        &anomaly.subject,
        &anomaly.causes,
    );
    if expected != anomaly.anomaly_id {
        return Err(unprocessable(
            "invalid_anomaly",
            "the anomaly's id is not the identity of its kind, subject and causes".into(),
        ));
    }
    let enterprise = match (&anomaly.enterprise_id, &anomaly.terminal_id) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(t)) => st
            .registry
            .terminal(st.log.as_ref(), t)?
            .map(|t| t.registration.enterprise_id.clone()),
        (None, None) => None,
    };
    let Some(enterprise) = enterprise.filter(|e| allowed.contains(e)) else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "anomaly_out_of_scope",
            format!("the anomaly is not about one of edge {edge_id}'s enterprises"),
        ));
    };
    let event = Event::AnomalyReported(AnomalyReported {
        edge_id: edge_id.to_owned(),
        anomaly,
    });
    let proposed = sealing::sealed(&st.sealer, enterprise.as_str(), event, None).await?;
    Ok(matches!(
        st.log.append(vec![proposed]).await?.remove(0),
        AppendOutcome::Appended { .. }
    ))
}

/// The registrations an edge keeps for offline work: its enterprises, their terminals, the terminals' key
/// changes, in that order.
fn registrations_of(st: &Edges, edge: &EdgeRegistered) -> Result<Registrations, ApiError> {
    let log = st.log.as_ref();
    let mut events = Vec::new();
    for e in &edge.enterprise_ids {
        if let Some(ev) = read_event(log, &dedupe_key_enterprise(e))? {
            events.push(encode_event(&ev));
        }
        let terminals = st
            .directory
            .read()
            .expect("directory lock")
            .terminals_of(e.as_str());
        for t in terminals {
            let Ok(t) = TerminalId::parse(&t) else {
                continue;
            };
            if let Some(ev) = read_event(log, &dedupe_key_terminal(&t))? {
                events.push(encode_event(&ev));
            }
            for change in 1..=TERMINAL_KEY_CHANGES_MAX {
                match read_event(log, &dedupe_key_terminal_keys(&t, change))? {
                    Some(ev) => events.push(encode_event(&ev)),
                    None => break,
                }
            }
        }
    }
    Ok(Registrations { events_b64: events })
}

/// `POST /v1/edge/registrations`: a sealed `{edge_id, at_ns}` from the edge; the answer is sealed to the
/// edge's key.
#[utoipa::path(
    post,
    path = "/v1/edge/registrations",
    operation_id = "registrations",
    tag = "edge",
    summary = "An edge fetches its enterprises' registrations (sealed request {edge_id, at_ns}; the answer is sealed to the edge)",
    security(()),
    params(crate::api::schema::EdgeHeaders),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the sealed JSON {edge_id, at_ns}"),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E413, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn registrations(
    State(st): State<Edges>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (edge, plain) = open_request(&st, &headers, body).await?;
    let req: RegistrationsRequest = crate::api::body::parse_json(&plain)?;
    // `abs_diff`: an `at_ns` as far off as an i64 goes must not overflow (it is refused like any other).
    let skew_s = st.clock.now_ns().abs_diff(req.at_ns) / 1_000_000_000;
    if req.edge_id != edge.registration.id || skew_s > REQUEST_SKEW_S_MAX.unsigned_abs() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "envelope_invalid",
            format!(
                "the request names another edge or is {skew_s} s away from this platform's clock (at most {REQUEST_SKEW_S_MAX} s)"
            ),
        ));
    }
    let regs = registrations_of(&st, &edge.registration)?;
    let payload = serde_json::to_vec(&regs).expect("registrations serialise");
    let sealed = custodian_events::digital_envelope::seal(
        &payload,
        &edge.key,
        st.access.tokens.key(),
        st.entropy.as_ref(),
    )
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "envelope_failed",
            e.to_string(),
        )
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        sealed,
    )
        .into_response())
}

/// `GET /v1/admin/edges/{id}/registrations` (admin): the same registrations in the clear, the file an edge
/// that has never reached the platform is seeded from (`custodian edge --seed-registrations FILE`).
#[utoipa::path(
    get,
    path = "/v1/admin/edges/{id}/registrations",
    operation_id = "registrations_file",
    tag = "edge",
    summary = "An edge's registrations in the clear: the seed file of an edge that has never reached the platform (admin)",
    params(crate::api::schema::EdgePath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn registrations_file(
    State(st): State<Edges>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_admin_caller(&st.access, &headers)?;
    let edge = edge_entry(&st, &id).map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no edge {id:?} is registered"),
        )
    })?;
    Ok(axum::Json(registrations_of(&st, &edge.registration)?).into_response())
}

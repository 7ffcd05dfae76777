//! The HTTP API: ingest, registration, the event feed, health and metrics.

mod drain;
pub mod edge;
mod error;
mod events;
pub mod ingest;
pub mod openapi;
pub mod query;
pub mod registry;
mod url_check;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use custodian_events::Clock;
use custodian_events::crypto::Entropy;
use custodian_events::keyring::Keyring;
use custodian_events::log::EventLog;
use serde::de::DeserializeOwned;

pub use error::{ApiError, RETRY_AFTER_S};
pub use ingest::{ReadingResult, SIGNATURE_HEADER, UploadResponse};
pub use registry::Registry;

use crate::config::Config;
use crate::metrics::Metrics;

/// What every handler shares.
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    /// Data keys sealing events at rest (the log holds the same keyring to open them).
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub admin_token: String,
    /// The last log sequence the domain core has processed (the deriver's checkpoint).
    pub derived_seq: Arc<std::sync::atomic::AtomicU64>,
    /// The deriver's counters, once it runs.
    pub deriver_stats: std::sync::OnceLock<Arc<custodian_actors::DeriverStats>>,
    /// The read models' runners, once started.
    pub projections: std::sync::OnceLock<Vec<custodian_projections::runner::RunnerHandle>>,
    /// Regulators' and administrators' bearer tokens.
    pub tokens: crate::tokens::Tokens,
    /// Answers of the regulators' reads, keyed by scope and URI, kept `query.cache_ttl_ms`.
    pub query_cache: moka::sync::Cache<String, (bytes::Bytes, i64)>,
    /// The audit trail of regulators' reads (absent when the PostgreSQL model is off).
    pub audit: Option<crate::audit::Audit>,
    /// Terminal → enterprise → province, from the registrations in the log.
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The outbox and forwarder when this node runs as an edge (`custodian edge`).
    pub edge: std::sync::OnceLock<Arc<crate::edge::EdgeRuntime>>,
    /// This node's part in a cluster, in cluster mode.
    pub cluster: std::sync::OnceLock<Arc<custodian_cluster::node::ClusterNode>>,
}

/// What a node's state is made of; the rest (metrics, the terminal registry, the query cache) starts
/// empty.
pub struct StateParts {
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub tokens: crate::tokens::Tokens,
    pub admin_token: String,
    pub audit: Option<crate::audit::Audit>,
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The deriver's checkpoint, shared with it.
    pub derived_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        AppState {
            derived_seq: p.derived_seq,
            deriver_stats: std::sync::OnceLock::new(),
            edge: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            projections: std::sync::OnceLock::new(),
            tokens: p.tokens,
            audit: p.audit,
            directory: p.directory,
            query_cache: moka::sync::Cache::builder()
                .max_capacity(p.config.query.cache_bytes_max)
                .weigher(|k: &String, v: &(bytes::Bytes, i64)| {
                    u32::try_from(k.len() + v.0.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(std::time::Duration::from_millis(
                    p.config.query.cache_ttl_ms.max(1),
                ))
                .build(),
            log: p.log,
            registry: Registry::new(p.config.ingest.terminal_cache_entries_max),
            clock: p.clock,
            keyring: p.keyring,
            entropy: p.entropy,
            metrics: Metrics::default(),
            admin_token: p.admin_token,
            config: p.config,
        }
    }

    /// What `get` makes of the live generation of read model `name` (`postgres`, `influx`, `search`), as
    /// its concrete type; None when the model is disabled or still starting.
    pub fn live_model<T: 'static, R>(
        &self,
        name: &str,
        get: impl FnOnce(&T) -> Option<R>,
    ) -> Option<R> {
        let live = self
            .projections
            .get()?
            .iter()
            .find(|p| p.name() == name)?
            .live()?;
        get(live.as_any().downcast_ref::<T>()?)
    }

    /// Why the read model `name` cannot be read now (`what` names it for people): disabled, still starting,
    /// or built from another event log (which is never served).
    pub fn model_unavailable(&self, name: &str, what: &str, code: &'static str) -> ApiError {
        let status = self
            .projections
            .get()
            .into_iter()
            .flatten()
            .find(|p| p.name() == name)
            .map(|p| p.status());
        let message = match status {
            None => format!("the {what} is disabled on this node"),
            Some(s) if s.state == custodian_projections::runner::FOREIGN_LOG => format!(
                "the {what} is not served: {}",
                s.last_error
                    .as_deref()
                    .unwrap_or("it was built from another event log")
            ),
            Some(s) => format!(
                "the {what} is not ready ({}); see GET /v1/admin/projections",
                s.last_error
                    .map(|e| format!("{}: {e}", s.state))
                    .unwrap_or(s.state)
            ),
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/v1/enterprises",
            post(registry::register_enterprise).get(query::enterprises),
        )
        .route("/v1/terminals", post(registry::register_terminal))
        .route("/v1/manifests", post(registry::open_manifest))
        .route("/v1/manifests/{id}", get(query::manifest))
        .route("/v1/notes", post(registry::file_note))
        .route(
            "/v1/terminals/{id}/keys",
            post(registry::rotate_terminal_key),
        )
        .route(
            "/v1/terminals/{id}/keys/{fingerprint}/revoke",
            post(registry::revoke_terminal_key),
        )
        .route("/v1/admin/data-keys/{scope}/rotate", post(rotate_data_key))
        .route("/v1/admin/projections", get(projections_status))
        .route("/v1/admin/search", get(search))
        .route("/v1/admin/tokens", post(query::issue_token))
        .route("/v1/admin/tokens/{id}/revoke", post(query::revoke_token))
        .route("/v1/enterprises/{id}", get(query::enterprise))
        .route("/v1/enterprises/{id}/kpis", get(query::enterprise_kpis))
        .route("/v1/anomalies", get(query::anomalies))
        .route("/v1/anomalies/stream", get(query::anomaly_stream))
        .route(
            "/v1/anomalies/{id}/acknowledge",
            post(query::acknowledge_anomaly),
        )
        .route("/v1/anomalies/{id}/resolve", post(query::resolve_anomaly))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/containers/{id}", get(query::container))
        .route("/v1/search", get(query::search))
        .route("/v1/overview", get(query::overview))
        .route("/v1/terminals/{id}/readings", get(query::terminal_readings))
        .route(
            "/v1/admin/projections/{name}/rebuild",
            post(rebuild_projection),
        )
        .route("/v1/uploads", post(ingest::upload))
        .route("/v1/edges", post(edge::register_edge))
        .route("/v1/edge/public-key", get(edge::public_key))
        .route("/v1/edge/batches", post(edge::batches))
        .route("/v1/edge/registrations", post(edge::registrations))
        .route(
            "/v1/admin/edges/{id}/registrations",
            get(edge::registrations_file),
        )
        .route("/v1/edge/outbox", get(crate::edge::api::outbox))
        .route("/v1/edge/dead-letters", get(crate::edge::api::dead_letters))
        .route(
            "/v1/edge/dead-letters/retry",
            post(crate::edge::api::retry_dead_letters),
        )
        .route(
            "/v1/edge/dead-letters/discard",
            post(crate::edge::api::discard_dead_letters),
        )
        .route("/v1/events", get(events::stream))
        .route("/v1/admin/log/export", get(events::export))
        .merge(crate::dashboard::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            query::cache,
        ))
        .layer(axum::middleware::from_fn(url_check::refuse_nul))
        .layer(axum::middleware::from_fn(drain::drain_unread_body))
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness and log/deriver figures",
    security(()),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn healthz(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "last_seq": st.log.last_seq(),
        "derived_seq": st.derived_seq.load(std::sync::atomic::Ordering::Acquire),
        "deriver": st.deriver_stats.get().map(|d| {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({
                "live_actors": n(&d.live_actors),
                "passivations": n(&d.passivations),
                "actor_failures": n(&d.supervisor.failures),
                "recoveries": n(&d.recoveries),
                "quarantined": n(&d.quarantined),
                "snapshots": n(&d.snapshots),
                "snapshot_seq": n(&d.snapshot_seq),
            })
        }),
        "cluster": st.cluster.get().map(|c| c.status()),
    }))
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics (ingest, log, projections, query cache)",
    security(()),
    responses(
        (status = 200, description = "OK", body = String, content_type = "text/plain"),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let size = st.log.size_on_disk().ok();
    let mut text = st.metrics.render(st.log.last_seq(), size);
    if let Some(edge) = st.edge.get() {
        text.push_str(&edge.render_metrics());
    }
    let projections: Vec<_> = st
        .projections
        .get()
        .into_iter()
        .flatten()
        .map(|p| p.status())
        .collect();
    crate::metrics::render_projections(&mut text, &projections);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `POST /v1/admin/data-keys/{scope}/rotate`: new events of `scope` are sealed with a new data key.
#[utoipa::path(
    post,
    path = "/v1/admin/data-keys/{scope}/rotate",
    operation_id = "rotate_data_key",
    tag = "admin",
    summary = "Rotate a data key",
    params(crate::api::openapi::DataKeyPath),
    responses(
        (status = 201, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "No token, or one that is invalid or expired (`unauthorized`)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The token may not do this (`forbidden`)", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "The body or a path value breaks a rule (its `code` names which)", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "A backend this operation needs is down or behind; retry later", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn rotate_data_key(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(scope): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let caller = require_admin_caller(&st, &headers)?;
    custodian_events::ids::check_id(&scope).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            format!("scope {scope:?}: {e}"),
        )
    })?;
    let key = crate::sealing::rotate(&st, &scope, Some(&caller.token_id)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            serde_json::json!({ "scope": scope, "key_id": key.id, "generation": key.generation }),
        ),
    ))
}

/// `GET /v1/admin/projections`: checkpoint, lag, state and any rebuild of each read model.
#[utoipa::path(
    get,
    path = "/v1/admin/projections",
    operation_id = "projections_status",
    tag = "admin",
    summary = "Status of each read model",
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "No token, or one that is invalid or expired (`unauthorized`)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The token may not do this (`forbidden`)", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "A backend this operation needs is down or behind; retry later", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn projections_status(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st, &headers)?;
    let list: Vec<_> = st
        .projections
        .get()
        .into_iter()
        .flatten()
        .map(|p| p.status())
        .collect();
    Ok(axum::Json(serde_json::json!({
        "last_seq": st.log.last_seq(),
        "projections": list,
    })))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Words to find (Chinese too).
    #[param(value_type = crate::api::openapi::SearchText, inline)]
    q: String,
    /// Only documents of this enterprise.
    #[serde(default)]
    #[param(value_type = Option<custodian_events::openapi::Id>, inline)]
    enterprise_id: Option<String>,
    /// Only documents of this province.
    #[serde(default)]
    #[param(value_type = Option<custodian_events::openapi::ProvinceCode>, inline)]
    province_code: Option<String>,
    /// Only documents of this kind.
    #[serde(default)]
    #[param(value_type = Option<crate::api::openapi::SearchKind>, inline)]
    kind: Option<String>,
    /// Hits to answer.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200, default = 20)]
    limit: Option<usize>,
}

/// Search words: at least one character that is not white space, and no NUL (which no URL may carry).
pub(crate) fn search_text() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"))
        .build()
}

/// The kinds of documents the search index holds.
pub(crate) fn search_kind() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(custodian_projections::search::DOC_KINDS))
        .build()
}

/// The most hits one search answers.
const SEARCH_LIMIT_MAX: usize = 200;

/// `GET /v1/admin/search?q=…&enterprise_id=…&province_code=…&kind=…&limit=…` (admin): full-text search of
/// anomaly descriptions, manifest notes and inspection notes, Chinese words included. Regulators' scoped
/// search is part of the query API.
#[utoipa::path(
    get,
    path = "/v1/admin/search",
    operation_id = "admin_search",
    tag = "admin",
    summary = "Full-text search over everything",
    params(SearchQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "No token, or one that is invalid or expired (`unauthorized`)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The token may not do this (`forbidden`)", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "A backend this operation needs is down or behind; retry later", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn search(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st, &headers)?;
    let axum::extract::Query(q) = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    if let Some(e) = &q.enterprise_id {
        custodian_events::ids::check_id(e).map_err(|err| bad(format!("enterprise_id: {err}")))?;
    }
    if let Some(p) = &q.province_code
        && !custodian_events::event::is_province_code(p)
    {
        return Err(bad(format!(
            "province_code {p:?} is not a province's 6-digit code ending in 0000"
        )));
    }
    run_search(
        &st,
        q.q,
        custodian_projections::search::SearchFilter {
            enterprise_ids: q.enterprise_id.map(|e| vec![e]),
            province_code: q.province_code,
            kind: q.kind,
        },
        q.limit,
    )
    .await
}

/// Runs a search on the live index; `filter` carries the caller's scope.
pub(crate) async fn run_search(
    st: &AppState,
    text: String,
    filter: custodian_projections::search::SearchFilter,
    limit: Option<usize>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "q must hold at least one word",
        ));
    }
    if let Some(k) = &filter.kind
        && !custodian_projections::search::DOC_KINDS.contains(&k.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "kind {k:?} is not one of {}",
                custodian_projections::search::DOC_KINDS.join(", ")
            ),
        ));
    }
    let limit = limit.unwrap_or(20);
    if !(1..=SEARCH_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must lie in 1 ..= {SEARCH_LIMIT_MAX}"),
        ));
    }
    let index = st
        .live_model("search", custodian_projections::text::TextProjection::index)
        .ok_or_else(|| st.model_unavailable("search", "search index", "search_unavailable"))?;
    let hits = tokio::task::spawn_blocking(move || index.search(&text, &filter, limit))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e:#}")))?;
    Ok(axum::Json(serde_json::json!({ "hits": hits })))
}

/// `POST /v1/admin/projections/{name}/rebuild`: 202 with the new generation; it fills a shadow copy from
/// sequence 0 and replaces the live model once caught up. 404 for an unknown or disabled model, 409 while a
/// rebuild of it runs.
#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    operation_id = "rebuild_projection",
    tag = "admin",
    summary = "Rebuild a read model into a shadow copy, then swap",
    params(crate::api::openapi::ProjectionPath),
    responses(
        (status = 202, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "No token, or one that is invalid or expired (`unauthorized`)", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The token may not do this (`forbidden`)", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "Unknown, or outside the caller's scope (`not_found`)", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "Conflicts with what is recorded", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "A backend this operation needs is down or behind; retry later", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn rebuild_projection(
    State(st): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st, &headers)?;
    let all = st.projections.get().map(Vec::as_slice).unwrap_or(&[]);
    let Some(p) = all.iter().find(|p| p.name() == name) else {
        let names: Vec<String> = all.iter().map(|p| p.name()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_projection",
            format!(
                "no running projection is called {name:?}; this node runs {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    let generation = p
        .rebuild()
        .await
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "rebuild_running", m))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "projection": name, "generation": generation })),
    ))
}

/// `GET /v1/openapi.json` (no token needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This document",
    security(()),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::DOCUMENT.as_str(),
    )
}

/// `GET /`: a browser pointed at the node's address lands on the dashboard.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "root",
    summary = "Redirects a browser to the dashboard at /ui.",
    security(()),
    responses(
        (status = 303, description = "See Other: Location /ui"),
        (status = 400, description = "The URL or query is malformed (`invalid_url`, `invalid_query`, …)", body = crate::api::openapi::ErrorBody),
    ),
)]
async fn root() -> axum::response::Redirect {
    axum::response::Redirect::to("/ui")
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// Checks `Authorization: Bearer <admin token>`, in constant time.
pub fn require_admin(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin_caller(st, headers).map(|_| ())
}

/// The caller, who must hold the `admin` role: the node's bootstrap admin token or an admin token issued
/// with it. A regulator's token gets 403 `admin_only`.
pub fn require_admin_caller(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<crate::tokens::Caller, ApiError> {
    let c = caller(st, headers)?;
    if !c.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this endpoint needs the admin role; regulators' tokens only read",
        ));
    }
    Ok(c)
}

/// Who is asking: the bootstrap admin token, or a token the platform issued (checked: signature, expiry,
/// revocation).
pub fn caller(st: &AppState, headers: &HeaderMap) -> Result<crate::tokens::Caller, ApiError> {
    use crate::tokens::{Caller, Scope, Tier};
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <token>`",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), st.admin_token.as_bytes()) {
        return Ok(Caller {
            token_id: "bootstrap".into(),
            tier: Tier::Admin,
            scope: Scope::All,
        });
    }
    let now_s = st.clock.now_ns().div_euclid(1_000_000_000);
    let claims = st.tokens.verify(given, now_s).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("the bearer token is not valid here: {e}"),
        )
    })?;
    let scope = crate::tokens::check_scope(claims.tier, claims.scope.as_deref())
        .map_err(|m| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", m))?;
    Ok(Caller {
        token_id: claims.id.clone(),
        tier: claims.tier,
        scope,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a JSON body of at most `limit` bytes and parses it: 413 `body_too_large`, 415
/// `unsupported_media_type`, 400 `malformed_json` (not JSON at all) or 422 `invalid_body` (JSON of the
/// wrong shape: a missing or unknown field, a wrong type).
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, limit).await?;
    parse_json(&bytes)
}

/// Reads a body of at most `limit` bytes (413 `body_too_large`), after checking its Content-Type (415).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {ct:?} is not application/json"),
            ));
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {limit} bytes; send fewer readings per request"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Parses JSON: 400 `malformed_json` (not JSON at all) or 422 `invalid_body` (the wrong shape).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde's derived structs also take an array of their fields in order; every body here is an object.
    if let Some(&first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
        && first != b'{'
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        ),
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        ),
    })
}

#[cfg(test)]
mod openapi_tests {
    use std::collections::BTreeSet;

    /// (method, path) of every operation in the OpenAPI document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = super::openapi::document();
        let mut out = BTreeSet::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                out.insert((method.clone(), path.clone()));
            }
        }
        out
    }

    /// (method, path) of every route `router()` declares, read from this file's source.
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let start = src.find("pub fn router(").expect("router()");
        let body = &src[start..start + src[start..].find("\n}\n").expect("end of router()")];
        let mut out = BTreeSet::new();
        for chunk in body.split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a path literal");
            let until = chunk.find(".route(").unwrap_or(chunk.len());
            let chunk = &chunk[..until];
            for method in ["get", "post", "put", "delete", "patch"] {
                if chunk.contains(&format!("{method}(")) {
                    out.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
        out
    }

    /// Every `{name}` in a path is declared as a path parameter of each of its operations (openapi-spec-
    /// validator refuses the document otherwise, and Schemathesis then skips most of its phases).
    #[test]
    fn every_path_parameter_is_declared() {
        let doc = super::openapi::document();
        let mut missing = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            let templated: BTreeSet<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split('}').next())
                .collect();
            for (method, op) in ops.as_object().expect("operations") {
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(ops["parameters"].as_array().into_iter().flatten())
                    .filter(|p| p["in"] == "path" && p["required"] == true)
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                if templated != declared {
                    missing.push(format!("{method} {path}: {templated:?} vs {declared:?}"));
                }
            }
        }
        assert!(missing.is_empty(), "path parameters: {missing:?}");
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let (doc, routes) = (documented(), routed());
        assert!(
            routes.len() > 20,
            "the source parse found the routes: {routes:?}"
        );
        let undocumented: Vec<_> = routes.difference(&doc).collect();
        let unrouted: Vec<_> = doc.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "openapi.json documents routes that do not exist: {unrouted:?}"
        );
    }
}

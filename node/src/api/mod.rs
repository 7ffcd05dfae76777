//! The HTTP API: the router. Each handler lives with its kind (`registry`, `ingest`, `query`, `events`,
//! `edge`, `admin`, `ops`), takes the node's state from `crate::state`, its caller from `auth`, its body
//! from `body` and answers errors as `error::ApiError`; `openapi` gathers their documentation.

pub mod admin;
pub mod auth;
pub mod body;
mod drain;
pub mod edge;
pub mod error;
mod events;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod query;
pub mod registry;
pub mod schema;
pub mod search;
mod url_check;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

pub use crate::upload::{ReadingResult, SIGNATURE_HEADER, UploadResponse};
pub use error::{ApiError, RETRY_AFTER_S};

use crate::state::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(ops::root))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
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
        .route(
            "/v1/admin/data-keys/{scope}/rotate",
            post(admin::rotate_data_key),
        )
        .route("/v1/admin/projections", get(admin::projections_status))
        .route("/v1/admin/search", get(admin::search))
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
        .route("/v1/openapi.json", get(openapi::openapi))
        .route("/v1/containers/{id}", get(query::container))
        .route("/v1/search", get(query::search))
        .route("/v1/overview", get(query::overview))
        .route("/v1/terminals/{id}/readings", get(query::terminal_readings))
        .route(
            "/v1/admin/projections/{name}/rebuild",
            post(admin::rebuild_projection),
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

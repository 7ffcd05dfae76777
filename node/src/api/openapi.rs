//! The OpenAPI 3.1 document of the HTTP API, generated (utoipa) from the handlers' `#[utoipa::path]`
//! attributes and from the very types that parse and validate requests: the `Raw*` bodies and `*Query`
//! parameter structs derive `ToSchema` / `IntoParams`, and their constraints come from
//! `custodian_events::openapi` and `api::schema`, built from the validators' own constants.
//!
//! `scripts/api-contract` checks the served document with openapi-spec-validator and runs Schemathesis
//! against a live node, so that a limit the code keeps and the document does not state (or the reverse)
//! fails the test suite.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::ServerBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        crate::api::schema::E400,
    ),
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The bearer scheme every operation needs unless it says otherwise.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut http = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        http.description =
            Some("The node's admin token, or a token from POST /v1/admin/tokens (cst1.…)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
        doc.servers = Some(vec![
            ServerBuilder::new().url("http://127.0.0.1:8080").build(),
        ]);
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custodian",
        description = "Hazardous-waste and environmental IoT supervision. Writing endpoints need the admin role; regulators' tokens (national, province, enterprise) read within their scope. Errors are {code, message}; see docs/api/errors.md."
    ),
    security(("bearer" = [])),
    components(schemas(crate::api::schema::ErrorBody)),
    modifiers(&Security),
    paths(
        super::ops::root,
        super::ops::healthz,
        super::ops::metrics,
        openapi,
        super::registry::register_enterprise,
        super::query::enterprises,
        super::query::enterprise,
        super::query::enterprise_kpis,
        super::registry::register_terminal,
        super::registry::rotate_terminal_key,
        super::registry::revoke_terminal_key,
        super::query::terminal_readings,
        super::registry::open_manifest,
        super::query::manifest,
        super::registry::file_note,
        super::ingest::upload,
        super::events::stream,
        super::query::anomalies,
        super::query::anomaly_stream,
        super::query::acknowledge_anomaly,
        super::query::resolve_anomaly,
        super::query::container,
        super::query::search,
        super::query::overview,
        super::admin::rotate_data_key,
        super::admin::projections_status,
        super::admin::rebuild_projection,
        super::admin::search,
        super::query::issue_token,
        super::query::revoke_token,
        super::events::export,
        super::edge::register_edge,
        super::edge::public_key,
        super::edge::batches,
        super::edge::registrations,
        super::edge::registrations_file,
        crate::edge::api::outbox,
        crate::edge::api::dead_letters,
        crate::edge::api::retry_dead_letters,
        crate::edge::api::discard_dead_letters,
    )
)]
struct ApiDoc;

/// The document, built once.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
});

/// The document as a value (tests).
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    #[test]
    #[ignore = "prints the document: cargo test -p custodian-node --lib print_the_document -- --ignored"]
    fn print_the_document() {
        println!("{}", super::DOCUMENT.as_str());
    }
}

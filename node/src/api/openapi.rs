//! The OpenAPI 3.1 document of the HTTP API, generated (utoipa) from the handlers' `#[utoipa::path]`
//! attributes and from the very types that parse and validate requests: the `Raw*` bodies and `*Query`
//! parameter structs derive `ToSchema` / `IntoParams`, and their constraints come from
//! `custodian_events::openapi`, built from the validators' own constants. The path and header parameters
//! below exist for the document only: handlers take them as `Path<String>` and `HeaderMap`.
//!
//! `scripts/api-contract` checks the served document with openapi-spec-validator and runs Schemathesis
//! against a live node, so that a limit the code keeps and the document does not state (or the reverse)
//! fails the test suite.

use std::sync::LazyLock;

use custodian_events::openapi as schema;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ServerBuilder, schema::ObjectBuilder, schema::Type};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

/// Every error's body.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "described, never built: errors are written by ApiError"
)]
pub struct ErrorBody {
    /// What went wrong, for programs (`invalid_query`, `not_found`, …; docs/api/errors.md).
    code: String,
    /// What went wrong and what to do about it, for people.
    message: String,
}

macro_rules! path_params {
    ($($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $with:ty),+ $(,)? })+) => {$(
        $(#[$doc])*
        #[derive(IntoParams)]
        #[into_params(parameter_in = Path)]
        #[allow(dead_code, reason = "described, never built: handlers take Path<String>")]
        pub struct $name {
            $($(#[$fdoc])* #[param(value_type = $with, inline)] $field: String,)+
        }
    )+};
}

path_params! {
    EnterprisePath {
        /// The enterprise's id.
        id: schema::Id,
    }
    TerminalPath {
        /// The terminal's id.
        id: schema::Id,
    }
    TerminalKeyPath {
        /// The terminal's id.
        id: schema::Id,
        /// The key's fingerprint (`custodian keys fingerprint`).
        fingerprint: schema::Fingerprint,
    }
    ManifestPath {
        /// The manifest's id.
        id: schema::Id,
    }
    AnomalyPath {
        /// The anomaly's id (as `/v1/anomalies` lists it).
        id: schema::Id,
    }
    ContainerPath {
        /// The container's id.
        id: schema::Id,
    }
    DataKeyPath {
        /// The key's scope: an enterprise's id, or `platform` for the platform's own events.
        scope: schema::Id,
    }
    ProjectionPath {
        /// The read model: `postgres`, `influx` or `search` (404 for one this node does not run).
        name: schema::Id,
    }
    TokenPath {
        /// The token's id (`tok-…`, as issued).
        id: schema::Id,
    }
    EdgePath {
        /// The edge's id, as registered with POST /v1/edges.
        id: schema::Id,
    }
}

/// One event of the anomaly feed (`text/event-stream`).
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "described, never built: the feed writes axum's sse::Event"
)]
pub struct AnomalyFeedEvent {
    /// Always `anomaly`.
    #[schema(pattern = "^anomaly$")]
    event: String,
    /// The anomaly event's sequence: send it back as `Last-Event-ID` to resume after it.
    #[schema(pattern = "^[0-9]{1,19}$")]
    id: String,
    /// JSON: `{event_seq, recorded_at, enterprise_id, province_code, description, anomaly}`.
    data: String,
}

/// `X-Custodian-Signature` of an upload.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(
    dead_code,
    reason = "described, never built: the handler reads HeaderMap"
)]
pub struct UploadHeaders {
    /// The terminal's SM2 signature of the exact body bytes, DER, base64 (`custodian terminal` signs).
    #[param(rename = "X-Custodian-Signature", value_type = Signature, inline)]
    signature: String,
}

/// `X-Custodian-Edge` of an edge's sealed request.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(
    dead_code,
    reason = "described, never built: the handler reads HeaderMap"
)]
pub struct EdgeHeaders {
    /// The edge's id, as registered with POST /v1/edges.
    #[param(rename = "X-Custodian-Edge", value_type = schema::Id, inline)]
    edge: String,
}

/// `Last-Event-ID` of the anomaly feed.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(
    dead_code,
    reason = "described, never built: the handler reads HeaderMap"
)]
pub struct StreamHeaders {
    /// The last event's id this client saw (an event sequence): the feed resumes after it.
    #[param(rename = "Last-Event-ID", value_type = SequenceHeader, required = false, inline)]
    last_event_id: Option<String>,
}

custodian_events::openapi_schema_type! {
    /// Search words.
    SearchText => super::search_text;
    /// A kind of search document.
    SearchKind => super::search_kind;
    /// A day or an instant.
    Day => super::query::day_schema;
    /// An anomaly kind.
    AnomalyKindName => super::query::anomaly_kind;
    /// An anomaly state.
    AnomalyStateName => super::query::anomaly_state;
    /// A page cursor of the anomalies.
    AnomalyCursor => super::query::cursor_schema;
    /// An aggregation interval.
    Every => super::query::every_schema;
    /// An aggregate.
    Aggregate => super::query::agg_schema;
    /// Event types.
    EventTypes => super::events::types_schema;
    /// An event sequence in a header.
    SequenceHeader => sequence_header;
    /// A base64 signature.
    Signature => signature;
}

/// A base64 signature: its shape; whether it verifies is the upload's answer (401 `invalid_signature`).
fn signature() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[A-Za-z0-9+/]+={0,2}$"))
        .max_length(Some(256))
        .build()
}

/// `^[0-9]{1,19}$`: an event sequence in a header, what `sequence_header_value` takes.
pub const SEQUENCE_HEADER_PATTERN: &str = "^[0-9]{1,19}$";

fn sequence_header() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(SEQUENCE_HEADER_PATTERN))
        .build()
}

/// An event sequence as a header holds it: 1 ..= 19 decimal digits (always within u64, so one more fits).
pub fn sequence_header_value(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
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
    modifiers(&Security),
    paths(
        super::root,
        super::healthz,
        super::metrics,
        super::openapi,
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
        super::rotate_data_key,
        super::projections_status,
        super::rebuild_projection,
        super::search,
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

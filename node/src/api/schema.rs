//! The parts of the OpenAPI document that are not request types of their own: the error body, the path and
//! header parameters (handlers take them as `Path<String>` and `HeaderMap`, so these exist for the document
//! only), and the schemas of query values, each built from the constants its validator uses.

use custodian_events::openapi as schema;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};

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
    SearchText => search_text;
    /// A kind of search document.
    SearchKind => search_kind;
    /// A day or an instant.
    Day => day_schema;
    /// An anomaly kind.
    AnomalyKindName => anomaly_kind;
    /// An anomaly state.
    AnomalyStateName => anomaly_state;
    /// A page cursor of the anomalies.
    AnomalyCursor => cursor_schema;
    /// An aggregation interval.
    Every => every_schema;
    /// An aggregate.
    Aggregate => agg_schema;
    /// Event types.
    EventTypes => types_schema;
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
    decimal(s, 19)
}

/// 1 ..= `digits_max` ASCII decimal digits (no sign, no space), as the patterns `^[0-9]{1,N}$` take them.
pub fn decimal(s: &str, digits_max: usize) -> Option<u64> {
    if s.is_empty() || s.len() > digits_max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Search words: at least one character that is not white space, and no NUL (which no URL may carry).
pub(crate) fn search_text() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(SEARCH_TEXT_PATTERN))
        .build()
}

/// A search text holds at least one character that is neither NUL nor white space as the search's check
/// reads it (Rust's `char::is_whitespace`, Unicode's White_Space: it holds U+0085, which ECMAScript's `\s`
/// does not, and not U+FEFF, which `\s` does), so the class is written out.
pub(crate) const SEARCH_TEXT_PATTERN: &str = "^[^\\u0000]*[^\\u0000\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000][^\\u0000]*$";

/// The kinds of documents the search index holds.
pub(crate) fn search_kind() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(custodian_projections::search::DOC_KINDS))
        .build()
}

pub const ANOMALY_STATES: [&str; 3] = ["open", "acknowledged", "resolved"];

pub(crate) fn anomaly_kind() -> utoipa::openapi::schema::Object {
    use custodian_events::anomaly::AnomalyKind;
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(AnomalyKind::ALL.map(AnomalyKind::name)))
        .build()
}

pub(crate) fn anomaly_state() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(ANOMALY_STATES))
        .build()
}

/// A page cursor of the anomalies: an event sequence, 1 ..= 18 digits.
pub const CURSOR_PATTERN: &str = "^[0-9]{1,18}$";

pub(crate) fn cursor_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(CURSOR_PATTERN))
        .build()
}

pub const EVERY: [&str; 3] = ["1m", "1h", "1d"];

pub const AGGREGATES: [&str; 5] = ["mean", "min", "max", "sum", "count"];

pub(crate) fn every_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(EVERY))
        .build()
}

pub(crate) fn agg_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(AGGREGATES))
        .build()
}

/// A day as `day` takes it.
pub(crate) fn day_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date))),
        )
        .item(schema::instant())
        .build()
        .into()
}

/// `types` as the handler reads it: names of `Event::TYPES` separated by commas, white space around each
/// and empty entries ignored.
pub(crate) fn types_schema() -> utoipa::openapi::schema::Object {
    let one = format!("({})", custodian_events::Event::TYPES.join("|"));
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(format!("^\\s*{one}?\\s*(,\\s*{one}?\\s*)*$")))
        .build()
}

/// One error status of an operation, as `responses(…)` lists it: `E404` is "404, `{code, message}`". Every
/// operation names the ones it can answer; the description says what each means in general, the `code`
/// in the body which case it is (docs/api/errors.md).
macro_rules! error_responses {
    ($($name:ident $status:literal $description:literal;)+) => {$(
        #[doc = concat!("`", $status, "`: ", $description)]
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                let content = utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build();
                let response = utoipa::openapi::ResponseBuilder::new()
                    .description($description)
                    .content("application/json", content)
                    .build();
                [($status.to_owned(), response.into())].into()
            }
        }
    )+};
}

error_responses! {
    E400 "400" "The URL or query is malformed (`invalid_url`, `invalid_query`, …)";
    E401 "401" "No token, or one that is invalid or expired (`unauthorized`)";
    E403 "403" "The token may not do this (`forbidden`)";
    E404 "404" "Unknown, or outside the caller's scope (`not_found`)";
    E409 "409" "Conflicts with what is recorded";
    E413 "413" "The body is larger than this operation takes (`body_too_large`)";
    E415 "415" "The body is not `application/json` (`unsupported_media_type`)";
    E422 "422" "The body or a path value breaks a rule (its `code` names which)";
    E503 "503" "A backend this operation needs is down or behind; retry later";
}

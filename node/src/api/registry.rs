//! Registration of enterprises and terminals, terminal key rotation and revocation (all events in the
//! log), and the terminal lookup of the upload path.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_events::envelope::Fingerprint;
use custodian_events::event::{
    EnterpriseRegistered, RawEnterprise, RawTerminal, TerminalRegistered, dedupe_key_enterprise,
};
use custodian_events::{EnterpriseId, Event, Rejection, TerminalId};
use custodian_log::AppendOutcome;
use serde::Deserialize;

use crate::api::auth::require_admin_caller;
use crate::api::body::read_json;
use crate::api::error::ApiError;
use crate::sealing;
use crate::state::Registrar;
use crate::terminals::TerminalEntry;

/// Registration bodies are small; this bound is independent of the upload limit.
const REGISTRATION_BODY_BYTES_MAX: usize = 16 * 1024;
/// A manifest lists up to 1,000 containers.
const MANIFEST_BODY_BYTES_MAX: usize = 256 * 1024;

#[utoipa::path(
    post,
    path = "/v1/enterprises",
    operation_id = "register_enterprise",
    tag = "registration",
    summary = "Register an enterprise",
    request_body = custodian_events::event::RawEnterprise,
    responses(
        (status = 200, description = "Already registered with the same content: unchanged, nothing stored", body = serde_json::Value),
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn register_enterprise(
    State(st): State<Registrar>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: RawEnterprise = read_json(&headers, body, REGISTRATION_BODY_BYTES_MAX).await?;
    let e = EnterpriseRegistered::from_raw(&raw).map_err(ApiError::unprocessable)?;
    let id = e.id.to_string();
    let event = Event::EnterpriseRegistered(e);
    register(&st, &caller.token_id, &id, event, "enterprise", &id).await
}

#[utoipa::path(
    post,
    path = "/v1/terminals",
    operation_id = "register_terminal",
    tag = "registration",
    summary = "Register a terminal",
    request_body = custodian_events::event::RawTerminal,
    responses(
        (status = 200, description = "Already registered with the same content: unchanged, nothing stored", body = serde_json::Value),
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn register_terminal(
    State(st): State<Registrar>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: RawTerminal = read_json(&headers, body, REGISTRATION_BODY_BYTES_MAX).await?;
    let t = TerminalRegistered::from_raw(&raw).map_err(ApiError::unprocessable)?;
    if st
        .log
        .lookup(&dedupe_key_enterprise(&t.enterprise_id))?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_enterprise",
            format!(
                "enterprise {} is not registered; register it with POST /v1/enterprises first",
                t.enterprise_id
            ),
        ));
    }
    let id = t.id.to_string();
    let scope = t.enterprise_id.to_string();
    let event = Event::TerminalRegistered(t);
    register(&st, &caller.token_id, &scope, event, "terminal", &id).await
}

/// `POST /v1/manifests` (admin): opens a transfer order. 201 when opened, 200 for the same request
/// again, 409 `already_registered` when the id is taken by a different manifest, 422 when a party is
/// not a registered enterprise.
#[utoipa::path(
    post,
    path = "/v1/manifests",
    operation_id = "open_manifest",
    tag = "registration",
    summary = "Open a transfer manifest",
    request_body = custodian_events::domain::manifest::RawManifest,
    responses(
        (status = 200, description = "Already registered with the same content: unchanged, nothing stored", body = serde_json::Value),
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn open_manifest(
    State(st): State<Registrar>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: custodian_events::domain::RawManifest =
        read_json(&headers, body, MANIFEST_BODY_BYTES_MAX).await?;
    let m =
        custodian_events::event::ManifestOpened::from_raw(&raw).map_err(ApiError::unprocessable)?;
    require_enterprise(&st, "generator_id", &m.generator_id)?;
    require_enterprise(&st, "receiver_id", &m.receiver_id)?;
    let id = m.id.to_string();
    let scope = m.generator_id.to_string();
    let event = Event::ManifestOpened(m);
    register(&st, &caller.token_id, &scope, event, "manifest", &id).await
}

/// 422 `unknown_enterprise` unless enterprise `e`, the request's `field`, is registered.
fn require_enterprise(st: &Registrar, field: &str, e: &EnterpriseId) -> Result<(), ApiError> {
    if st.log.lookup(&dedupe_key_enterprise(e))?.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_enterprise",
            format!(
                "{field} {e} is not a registered enterprise; register it with POST /v1/enterprises first"
            ),
        ));
    }
    Ok(())
}

/// The enterprise must be registered (`unknown_enterprise`), which no schema can say.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNote {
    #[schema(schema_with = custodian_events::openapi::id)]
    enterprise_id: String,
    #[serde(default)]
    #[schema(schema_with = custodian_events::openapi::optional_id)]
    container_id: Option<String>,
    /// Who filed it: one line, 1 ..= 200 characters.
    #[schema(schema_with = author)]
    author: String,
    /// 1 ..= 4,000 characters.
    #[schema(schema_with = custodian_events::openapi::note)]
    text: String,
}

fn author() -> utoipa::openapi::schema::Object {
    custodian_events::openapi::text(custodian_events::event::AUTHOR_CHARS_MAX, true)
}

/// `POST /v1/notes` (admin): files an inspection note about an enterprise (and optionally one of its
/// containers). 201 with the note's `event_seq`; every call files a new note.
#[utoipa::path(
    post,
    path = "/v1/notes",
    operation_id = "file_note",
    tag = "registration",
    summary = "File an inspection note",
    request_body = RawNote,
    responses(
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn file_note(
    State(st): State<Registrar>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use custodian_events::event::{AUTHOR_CHARS_MAX, NOTE_CHARS_MAX, NoteFiled, check_text};
    use custodian_events::ids::ContainerId;
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: RawNote = read_json(&headers, body, NOTE_BODY_BYTES_MAX).await?;
    let bad = |code: &'static str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    };
    let enterprise_id = EnterpriseId::parse(&raw.enterprise_id).map_err(|e| {
        bad(
            "invalid_id",
            format!("enterprise_id {:?}: {e}", raw.enterprise_id),
        )
    })?;
    let container_id = match &raw.container_id {
        None => None,
        Some(c) => Some(
            ContainerId::parse(c)
                .map_err(|e| bad("invalid_container_id", format!("container_id {c:?}: {e}")))?,
        ),
    };
    let author = raw.author.trim();
    let text = raw.text.trim();
    if let Err(e) = check_text(author, AUTHOR_CHARS_MAX, true) {
        return Err(bad("value_out_of_range", format!("author {e}")));
    }
    if let Err(e) = check_text(text, NOTE_CHARS_MAX, false) {
        return Err(bad("value_out_of_range", format!("text {e}")));
    }
    require_enterprise(&st, "enterprise_id", &enterprise_id)?;
    let scope = enterprise_id.to_string();
    let event = Event::NoteFiled(NoteFiled {
        enterprise_id,
        container_id,
        author: author.to_owned(),
        text: text.to_owned(),
        filed_at_ns: st.clock.now_ns(),
    });
    let proposed = sealing::sealed(&st.sealer, &scope, event, Some(&caller.token_id)).await?;
    let outcome = st.log.append(vec![proposed]).await?;
    let event_seq = match outcome.first() {
        Some(AppendOutcome::Appended { seq } | AppendOutcome::Duplicate { seq }) => *seq,
        Some(AppendOutcome::Conflict { original_seq, .. }) => *original_seq,
        None => unreachable!("the log answers one outcome per proposed event"),
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "status": "filed", "event_seq": event_seq })),
    )
        .into_response())
}

/// The largest `POST /v1/notes` body: a note of `NOTE_CHARS_MAX` characters of up to 4 UTF-8 bytes, with room.
const NOTE_BODY_BYTES_MAX: usize = 32 * 1024;

/// Seals a registration under `scope`'s data key and appends it, caused by token `caused_by`: 201 when
/// new, 200 when the same registration is already recorded, 409 `already_registered` when the id is taken
/// by a different one.
async fn register(
    st: &Registrar,
    caused_by: &str,
    scope: &str,
    event: Event,
    what: &str,
    id: &str,
) -> Result<Response, ApiError> {
    let proposed = sealing::sealed(&st.sealer, scope, event, Some(caused_by)).await?;
    // The directory (terminal → enterprise → province) learns it now, not only when a read model
    // catches up: an edge asks which terminals an enterprise has.
    let event = proposed.event.clone();
    let outcome = st.log.append(vec![proposed]).await?;
    if matches!(
        outcome.first(),
        Some(AppendOutcome::Appended { .. } | AppendOutcome::Duplicate { .. })
    ) {
        st.directory.write().expect("directory lock").learn(&event);
    }
    let (status, event_seq, state) = match outcome.first() {
        Some(AppendOutcome::Appended { seq }) => (StatusCode::CREATED, *seq, "registered"),
        Some(AppendOutcome::Duplicate { seq }) => (StatusCode::OK, *seq, "unchanged"),
        Some(AppendOutcome::Conflict { original_seq, .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_registered",
                format!(
                    "{what} {id} is already registered (event {original_seq}) with different details"
                ),
            ));
        }
        None => unreachable!("the log answers one outcome per proposed event"),
    };
    Ok((
        status,
        axum::Json(serde_json::json!({ "id": id, "status": state, "event_seq": event_seq })),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawKeyRotation {
    #[schema(schema_with = custodian_events::openapi::public_key_pem)]
    public_key_pem: String,
}

/// `POST /v1/terminals/{id}/keys`: rotate to a new key. 201 when rotated, 200 when it already is the
/// current key.
#[utoipa::path(
    post,
    path = "/v1/terminals/{id}/keys",
    operation_id = "rotate_terminal_key",
    tag = "registration",
    summary = "Rotate a terminal's SM2 key",
    params(crate::api::schema::TerminalPath),
    request_body = RawKeyRotation,
    responses(
        (status = 200, description = "Already registered with the same content: unchanged, nothing stored", body = serde_json::Value),
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn rotate_terminal_key(
    State(st): State<Registrar>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let raw: RawKeyRotation = read_json(&headers, body, REGISTRATION_BODY_BYTES_MAX).await?;
    let public_key = custodian_events::crypto::sm2_public_key_der_from_pem(&raw.public_key_pem)
        .map_err(ApiError::unprocessable)?;
    let rotate = |entry: &TerminalEntry, now_ns| {
        entry
            .keys
            .decide_rotation(&entry.registration, public_key, now_ns)
    };
    let done = (StatusCode::CREATED, "rotated");
    key_change(
        &st,
        &id,
        &caller.token_id,
        rotate,
        StatusCode::CONFLICT,
        done,
    )
    .await
}

/// `POST /v1/terminals/{id}/keys/{fingerprint}/revoke`: the key verifies nothing from now on.
#[utoipa::path(
    post,
    path = "/v1/terminals/{id}/keys/{fingerprint}/revoke",
    operation_id = "revoke_terminal_key",
    tag = "registration",
    summary = "Revoke a terminal key",
    params(crate::api::schema::TerminalKeyPath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E409, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn revoke_terminal_key(
    State(st): State<Registrar>,
    Path((id, fingerprint)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = require_admin_caller(&st.access, &headers)?;
    let fp: Fingerprint = hex::decode(&fingerprint)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_fingerprint",
                "a key fingerprint is 64 hex digits (SHA-256 of the SubjectPublicKeyInfo DER; `custodian keys fingerprint`)",
            )
        })?;
    let revoke = |entry: &TerminalEntry, now_ns| {
        entry
            .keys
            .decide_revocation(&entry.registration, fp, now_ns)
    };
    let done = (StatusCode::OK, "revoked");
    key_change(
        &st,
        &id,
        &caller.token_id,
        revoke,
        StatusCode::NOT_FOUND,
        done,
    )
    .await
}

fn terminal_or_404(st: &Registrar, id: &str) -> Result<(TerminalId, Arc<TerminalEntry>), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_terminal",
            format!("terminal {id} is not registered"),
        )
    };
    let id = TerminalId::parse(id).map_err(|_| not_found())?;
    let entry = st
        .registry
        .terminal(st.log.as_ref(), &id)?
        .ok_or_else(not_found)?;
    Ok((id, entry))
}

/// A change of terminal `id`'s keys, as `decide` chooses it for the terminal at the node's clock (`refused`
/// with the rule's code when it may not be made): 200 `unchanged` when there is nothing to change, `done`
/// when the change is recorded, 409 `concurrent_key_change` when another change took its place first.
async fn key_change(
    st: &Registrar,
    id: &str,
    caused_by: &str,
    decide: impl FnOnce(&TerminalEntry, i64) -> Result<Option<Event>, Rejection>,
    refused: StatusCode,
    (done_status, done): (StatusCode, &str),
) -> Result<Response, ApiError> {
    let (terminal, entry) = terminal_or_404(st, id)?;
    let decision =
        decide(&entry, st.clock.now_ns()).map_err(|r| ApiError::new(refused, r.code, r.message))?;
    let Some(event) = decision else {
        return Ok((
            StatusCode::OK,
            axum::Json(
                serde_json::json!({ "terminal_id": terminal.as_str(), "status": "unchanged" }),
            ),
        )
            .into_response());
    };
    let scope = entry.registration.enterprise_id.to_string();
    let proposed = sealing::sealed(&st.sealer, &scope, event, Some(caused_by)).await?;
    let outcome = st.log.append(vec![proposed]).await?;
    st.registry.invalidate(&terminal);
    match outcome[0] {
        AppendOutcome::Appended { seq } => Ok((
            done_status,
            axum::Json(
                serde_json::json!({ "terminal_id": terminal.as_str(), "status": done, "event_seq": seq }),
            ),
        )
            .into_response()),
        // Another change took this change number first; the caller should look again and retry.
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "concurrent_key_change",
            format!(
                "another change to terminal {terminal}'s keys was recorded at the same time; retry"
            ),
        )),
    }
}

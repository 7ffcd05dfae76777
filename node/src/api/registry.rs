//! Registration of enterprises and terminals (events in the log) and the terminal lookup of the upload
//! path.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use custodian_events::event::{
    EnterpriseRegistered, RawEnterprise, RawTerminal, TerminalRegistered, dedupe_key_enterprise,
    dedupe_key_terminal,
};
use custodian_events::log::{AppendOutcome, EventLog, EventLogError, Proposed};
use custodian_events::{Event, TerminalId};

use super::{ApiError, AppState, read_json, require_admin};

/// Registration bodies are small; this bound is independent of the upload limit.
const REGISTRATION_BODY_BYTES_MAX: usize = 16 * 1024;

/// Terminal registrations for the upload path, read from the log on first use and kept in a bounded cache
/// (a registration never changes once recorded, so entries never go stale).
pub struct Registry {
    terminals: moka::sync::Cache<TerminalId, Arc<TerminalRegistered>>,
}

impl Registry {
    pub fn new(entries_max: u64) -> Self {
        Registry {
            terminals: moka::sync::Cache::new(entries_max),
        }
    }

    /// The registration of `id`, if the log holds one.
    pub fn terminal(
        &self,
        log: &dyn EventLog,
        id: &TerminalId,
    ) -> Result<Option<Arc<TerminalRegistered>>, EventLogError> {
        if let Some(t) = self.terminals.get(id) {
            return Ok(Some(t));
        }
        let Some(entry) = log.lookup(&dedupe_key_terminal(id))? else {
            return Ok(None);
        };
        // The index may run ahead of durability by one group commit; until then the terminal is unknown.
        let Some(env) = log.read(entry.seq, 1)?.into_iter().next() else {
            return Ok(None);
        };
        match env.event {
            Event::TerminalRegistered(t) if env.seq == entry.seq => {
                let t = Arc::new(t);
                self.terminals.insert(id.clone(), t.clone());
                Ok(Some(t))
            }
            _ => Ok(None),
        }
    }
}

pub async fn register_enterprise(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&st, &headers)?;
    let raw: RawEnterprise = read_json(&headers, body, REGISTRATION_BODY_BYTES_MAX).await?;
    let e = EnterpriseRegistered::from_raw(&raw).map_err(ApiError::unprocessable)?;
    let id = e.id.to_string();
    register(&st, Event::EnterpriseRegistered(e), "enterprise", &id).await
}

pub async fn register_terminal(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&st, &headers)?;
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
    register(&st, Event::TerminalRegistered(t), "terminal", &id).await
}

/// Appends a registration: 201 when new, 200 when the same registration is already recorded, 409
/// `already_registered` when the id is taken by a different one.
async fn register(st: &AppState, event: Event, what: &str, id: &str) -> Result<Response, ApiError> {
    let outcome = st.log.append(vec![Proposed::new(event)]).await?;
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

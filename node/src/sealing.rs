//! Sealing events at rest with their enterprise's data key (SM4-GCM), issuing a scope's first key on
//! demand. Sealing runs here, on the request's thread, so the log's single writer only stores bytes.

use std::sync::Arc;

use axum::http::StatusCode;
use custodian_events::event::Event;
use custodian_events::keyring::DataKey;
use custodian_log::{AppendOutcome, Proposed};

use crate::api::error::ApiError;
use crate::state::{AppState, Sealer};

/// Issuing a key can lose a race to another request issuing the same generation; then the winner's key is
/// used. More losses than this in a row mean something else is wrong.
const ISSUE_ATTEMPTS_MAX: usize = 3;

/// The current data key of `scope`, issuing the first one if the scope has none.
pub async fn data_key(st: &Sealer, scope: &str) -> Result<Arc<DataKey>, ApiError> {
    for _ in 0..ISSUE_ATTEMPTS_MAX {
        if let Some(key) = st.keyring.current(scope) {
            return Ok(key);
        }
        issue(st, scope, None).await?;
    }
    Err(issue_failed(scope))
}

/// Issues the next generation of `scope`'s data key; new events are sealed with it, old ones keep opening
/// with theirs.
/// `caused_by` is the token of the administrator who asked.
pub async fn rotate(
    st: &Sealer,
    scope: &str,
    caused_by: Option<&str>,
) -> Result<Arc<DataKey>, ApiError> {
    let before = st.keyring.current(scope).map(|k| k.generation);
    for _ in 0..ISSUE_ATTEMPTS_MAX {
        // Appended or lost to a concurrent rotation: either way a newer key is installed now.
        issue(st, scope, caused_by).await?;
        if let Some(key) = st.keyring.current(scope)
            && Some(key.generation) != before
        {
            return Ok(key);
        }
    }
    Err(issue_failed(scope))
}

async fn issue(
    st: &Sealer,
    scope: &str,
    caused_by: Option<&str>,
) -> Result<AppendOutcome, ApiError> {
    let issued = st.keyring.issue(scope, st.keyring.next_generation(scope));
    let proposed = Proposed::data_key(issued, &st.keyring, caused_by);
    let out = st.log.append(vec![proposed]).await?;
    Ok(out[0])
}

fn issue_failed(scope: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "data_key_unavailable",
        format!("could not issue a data key for {scope}; retry"),
    )
}

/// Seals every proposal with `scope`'s data key.
pub async fn seal_all(
    st: &Sealer,
    scope: &str,
    proposals: Vec<Proposed>,
) -> Result<Vec<Proposed>, ApiError> {
    let key = data_key(st, scope).await?;
    Ok(proposals
        .into_iter()
        .map(|p| p.sealed_with(&st.keyring, &key))
        .collect())
}

/// Seals one event with `scope`'s data key, recording the token whose request caused it, if any.
pub async fn sealed(
    st: &Sealer,
    scope: &str,
    event: Event,
    caused_by: Option<&str>,
) -> Result<Proposed, ApiError> {
    let proposed = match caused_by {
        Some(token_id) => Proposed::new(event).caused_by(token_id),
        None => Proposed::new(event),
    };
    Ok(seal_all(st, scope, vec![proposed]).await?.remove(0))
}

/// Appends what the domain core derives, sealed with the enterprise key of the terminal it concerns.
pub struct NodeSink(pub std::sync::Weak<AppState>);

impl custodian_actors::DerivedSink for NodeSink {
    fn append(&self, events: Vec<Event>) -> custodian_log::BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let st = self.0.upgrade().ok_or("the node is shutting down")?;
            let mut batch = Vec::with_capacity(events.len());
            for event in events {
                let scope = scope_of(&st.sealer, &event).map_err(|e| e.message)?;
                batch.push(
                    sealed(&st.sealer, &scope, event, None)
                        .await
                        .map_err(|e| e.message)?,
                );
            }
            st.log.append(batch).await.map_err(|e| e.to_string())?;
            Ok(())
        })
    }
}

/// The enterprise whose key seals a derived event: the one it names, else the one of the terminal it
/// names, else the platform's.
fn scope_of(st: &Sealer, event: &Event) -> Result<String, ApiError> {
    let (enterprise, terminal) = match event {
        Event::AnomalyDetected(a) => (a.enterprise_id.clone(), a.terminal_id.clone()),
        Event::ReadingSuspect(r) => (None, Some(r.terminal_id.clone())),
        _ => (None, None),
    };
    if let Some(e) = enterprise {
        return Ok(e.to_string());
    }
    Ok(match terminal {
        Some(t) => match st.registry.terminal(st.log.as_ref(), &t)? {
            Some(entry) => entry.registration.enterprise_id.to_string(),
            None => custodian_events::keyring::PLATFORM_SCOPE.to_owned(),
        },
        None => custodian_events::keyring::PLATFORM_SCOPE.to_owned(),
    })
}

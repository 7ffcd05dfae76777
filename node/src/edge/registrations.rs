//! The registrations an edge works from: its enterprises, their terminals and the terminals' keys, fetched
//! from the platform (`POST /v1/edge/registrations`, sealed both ways) while connected and appended to the
//! edge's own log, where the ingest path and the domain rules find them, offline too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use custodian_events::Event;
use custodian_log::AppendOutcome;

use super::EdgeRuntime;
use super::backoff::Backoff;
use super::wire::{Registrations, RegistrationsRequest, decode_event};
use crate::state::AppState;

/// Appends the registrations the edge does not hold yet (the log deduplicates the rest); returns how many
/// were new.
pub async fn apply(st: &AppState, regs: &Registrations) -> anyhow::Result<usize> {
    let mut appended = 0;
    for (i, text) in regs.events_b64.iter().enumerate() {
        let event = decode_event(text).map_err(|e| anyhow::anyhow!("registration {i}: {e}"))?;
        let scope = match &event {
            Event::EnterpriseRegistered(e) => e.id.to_string(),
            Event::TerminalRegistered(t) => t.enterprise_id.to_string(),
            Event::TerminalKeyRotated(k) => enterprise_of(st, &k.terminal_id)?,
            Event::TerminalKeyRevoked(k) => enterprise_of(st, &k.terminal_id)?,
            other => anyhow::bail!(
                "registration {i} is a {}, not a registration or key change",
                other.event_type()
            ),
        };
        let terminal = match &event {
            Event::TerminalKeyRotated(k) => Some(k.terminal_id.clone()),
            Event::TerminalKeyRevoked(k) => Some(k.terminal_id.clone()),
            _ => None,
        };
        let proposed = crate::sealing::sealed(&st.sealer, &scope, event.clone(), None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot seal registration {i}: {}", e.message))?;
        let outcome = st.log.append(vec![proposed]).await?.remove(0);
        if matches!(outcome, AppendOutcome::Appended { .. }) {
            appended += 1;
            st.directory.write().expect("directory lock").learn(&event);
            if let Some(t) = terminal {
                st.registry.invalidate(&t);
            }
        }
    }
    Ok(appended)
}

fn enterprise_of(st: &AppState, t: &custodian_events::TerminalId) -> anyhow::Result<String> {
    Ok(st
        .registry
        .terminal(st.log.as_ref(), t)?
        .ok_or_else(|| {
            anyhow::anyhow!("a key change of terminal {t}, which is not registered here")
        })?
        .registration
        .enterprise_id
        .to_string())
}

/// Fetches the registrations now.
async fn sync(st: &AppState, rt: &EdgeRuntime) -> Result<usize, String> {
    let req = RegistrationsRequest {
        edge_id: rt.id.clone(),
        at_ns: st.clock.now_ns(),
    };
    let sealed = rt
        .post_sealed(
            "/v1/edge/registrations",
            &serde_json::to_vec(&req).expect("serialises"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let upstream = rt.upstream_key().await?;
    let plain = custodian_events::digital_envelope::open(&sealed, &rt.key, &upstream)
        .map_err(|e| format!("the platform's registrations do not open: {e}"))?;
    let regs: Registrations = serde_json::from_slice(&plain)
        .map_err(|e| format!("the platform's registrations do not parse: {e}"))?;
    apply(st, &regs).await.map_err(|e| e.to_string())
}

/// Fetches the registrations at start and every `edge.registrations_every_s`, retrying with backoff while
/// the platform is away.
pub async fn run(state: std::sync::Weak<AppState>, rt: Arc<EdgeRuntime>) {
    let mut backoff = Backoff::new(
        Duration::from_millis(rt.config.retry_base_ms),
        Duration::from_millis(rt.config.retry_cap_ms),
        std::process::id() as u64,
    );
    loop {
        let Some(st) = state.upgrade() else { return };
        let wait = match sync(&st, &rt).await {
            Ok(n) => {
                backoff.reset();
                rt.stats
                    .registrations_synced
                    .fetch_add(1, Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(appended = n, "fetched registrations from the platform");
                }
                Duration::from_secs(rt.config.registrations_every_s.max(1))
            }
            Err(e) => {
                if backoff.failures() == 0 {
                    tracing::warn!(error = %e, "cannot fetch registrations; working from the ones held, retrying");
                }
                backoff.next_delay()
            }
        };
        drop(st);
        tokio::time::sleep(wait).await;
    }
}

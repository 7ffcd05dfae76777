//! Starting an edge on a node: its outbox, the feeder from the node's log, the forwarder, the registrations
//! sync and the MQTT subscriber. Apart from `EdgeRuntime`, so that the runtime itself does not reach back
//! into the node's state.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use custodian_events::crypto::Sm2PublicKey;

use super::outbox::{self, Outbox};
use super::{EdgeRuntime, EdgeStats, HttpUpstream, Upstream, forward, mqtt, registrations, wire};
use crate::state::AppState;

impl EdgeRuntime {
    /// Opens the outbox in `data_dir`, loads or fetches what it can, and starts the feeder, the forwarder,
    /// the registrations sync and (if configured) the MQTT subscriber. The node keeps serving uploads
    /// whatever the platform's state.
    pub async fn start(
        state: &Arc<AppState>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Arc<EdgeRuntime>> {
        let config = state.config.edge.clone();
        let id = config.id.clone().context(
            "an edge needs its id: --edge-id (as registered at the platform with POST /v1/edges)",
        )?;
        let upstream = config
            .upstream
            .clone()
            .context("an edge needs the platform's URL: --upstream http://HOST:PORT")?;
        anyhow::ensure!(
            upstream.starts_with("http://") || upstream.starts_with("https://"),
            "--upstream {upstream:?} must be an http:// or https:// URL"
        );
        let outbox_dir = data_dir.join("outbox");
        let bytes_max = config.outbox_bytes_max;
        let keys =
            outbox::OutboxKeys::new(&state.keyring.derive("edge outbox"), state.entropy.clone());
        let outbox =
            tokio::task::spawn_blocking(move || Outbox::open(&outbox_dir, bytes_max, keys))
                .await?
                .with_context(|| {
                    format!(
                        "cannot open the outbox in {}",
                        data_dir.join("outbox").display()
                    )
                })?;
        let pinned_key_file = data_dir.join("upstream_public_key.pem");
        let upstream_key = match &config.upstream_public_key_file {
            Some(f) => Some(read_public_key(f)?),
            None if pinned_key_file.exists() => Some(read_public_key(&pinned_key_file)?),
            None => None,
        };
        let link = Arc::new(HttpUpstream::new(&upstream)?);
        let rt = EdgeRuntime::attach(
            state,
            id,
            Arc::new(outbox),
            link,
            upstream_key,
            pinned_key_file,
        );
        if let Some(file) = &rt.config.seed_registrations_file {
            let text = std::fs::read_to_string(file).with_context(|| {
                format!("cannot read the seed registrations {}", file.display())
            })?;
            let regs: wire::Registrations = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a registrations file (the JSON of GET /v1/admin/edges/{{id}}/registrations)",
                    file.display()
                )
            })?;
            let n = registrations::apply(state, &regs).await?;
            tracing::info!(file = %file.display(), appended = n, "seeded registrations");
        }
        let mut tasks = vec![
            tokio::spawn(feed(Arc::downgrade(state), rt.clone())),
            tokio::spawn(forward::run(rt.clone())),
            tokio::spawn(registrations::run(Arc::downgrade(state), rt.clone())),
        ];
        if let Some(url) = &rt.config.mqtt_url {
            tasks.push(mqtt::spawn(state.clone(), url)?);
        }
        *rt.tasks.lock().expect("tasks lock") = tasks;
        tracing::info!(edge = %rt.id, %upstream, outbox_bytes_max = rt.config.outbox_bytes_max, "edge started");
        Ok(rt)
    }

    /// The edge of `state` over `outbox`, reaching the platform through `link`, with no background tasks:
    /// the feeder, the forwarder and the registrations sync are the caller's ([`feed_once`],
    /// [`forward_once`]), as in the simulator. [`EdgeRuntime::start`] attaches one and starts them.
    pub fn attach(
        state: &Arc<AppState>,
        id: String,
        outbox: Arc<Outbox>,
        link: Arc<dyn Upstream>,
        upstream_key: Option<Sm2PublicKey>,
        pinned_key_file: std::path::PathBuf,
    ) -> Arc<EdgeRuntime> {
        let rt = Arc::new(EdgeRuntime {
            id,
            key: state.access.tokens.key().clone(),
            upstream_key: Mutex::new(upstream_key),
            pinned_key_file,
            outbox,
            stats: EdgeStats::default(),
            upstream_link: link,
            entropy: state.entropy.clone(),
            tasks: Mutex::new(Vec::new()),
            config: state.config.edge.clone(),
        });
        let _ = state.edge.set(rt.clone());
        rt
    }
}

fn read_public_key(file: &std::path::Path) -> anyhow::Result<Sm2PublicKey> {
    let pem = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the platform's public key {}", file.display()))?;
    Sm2PublicKey::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an SM2 public key (PEM): {e}", file.display()))
}

/// Log events read per feeder step.
const FEED_EVENTS_MAX: usize = 2_000;

/// Moves what the edge's log holds beyond the outbox's checkpoint into the outbox (at most
/// `FEED_EVENTS_MAX` events); returns how many events it read. Blocking (sled).
pub fn feed_once(st: &AppState, rt: &EdgeRuntime) -> Result<usize, String> {
    let from = rt.outbox.checkpoint_seq() + 1;
    let events = st
        .log
        .read(from, FEED_EVENTS_MAX)
        .map_err(|e| e.to_string())?;
    if events.is_empty() {
        return Ok(0);
    }
    let complete = events.len() < FEED_EVENTS_MAX;
    let (items, checkpoint) = outbox::collect(&events, complete);
    for item in &items {
        if let outbox::Fed::Anomaly { anomaly, .. } = item {
            rt.stats.local_anomalies.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                anomaly_id = %hex::encode(anomaly.anomaly_id),
                kind = anomaly.kind.name(),
                subject = %anomaly.subject,
                description = %custodian_projections::describe::anomaly_description(anomaly),
                "local anomaly"
            );
        }
    }
    match checkpoint {
        Some(c) if c >= from => {
            rt.outbox.feed(&items, c).map_err(|e| e.to_string())?;
            Ok(events.len())
        }
        _ => Ok(0),
    }
}

/// Tails the edge's log into the outbox, from the outbox's checkpoint.
async fn feed(state: std::sync::Weak<AppState>, rt: Arc<EdgeRuntime>) {
    let Some(st) = state.upgrade() else { return };
    let mut changes = st.log.subscribe();
    drop(st);
    let mut failing = false;
    loop {
        let Some(st) = state.upgrade() else { return };
        let step = tokio::task::spawn_blocking({
            let st = st.clone();
            let rt = rt.clone();
            move || feed_once(&st, &rt)
        })
        .await;
        drop(st);
        match step {
            Ok(Ok(n)) if n > 0 => {
                failing = false;
                continue;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                if !failing {
                    tracing::error!(error = %e, "cannot move the log into the outbox; retrying every second");
                }
                failing = true;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "the outbox feeder panicked; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        // Caught up: wait for the log to grow (or look again in a second).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed()).await;
    }
}

//! Starting and stopping a node: data dir, event log, HTTP API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use custodian_events::Clock;
use custodian_events::crypto::{Entropy, OsEntropy};
use custodian_events::keyring::{Keyring, MASTER_KEY_LEN, parse_master_key};
use custodian_log::{EventLog, SledLog, SledLogConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api;
use crate::config::Config;
use crate::datadir::DataDir;
use crate::state::AppState;

/// The wall clock, read only here at the edge of the system.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the system clock is after 1970")
            .as_nanos() as i64
    }
}

/// A running node.
pub struct Node {
    /// Where the API actually listens (useful with port 0).
    pub addr: SocketAddr,
    pub admin_token: String,
    pub state: Arc<AppState>,
    deriver: Option<custodian_actors::Deriver>,
    ticker: Option<JoinHandle<()>>,
    follower: Option<JoinHandle<()>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
    _data_dir: DataDir,
}

impl Node {
    /// Opens the data dir and the log, binds the listener and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Node::start_inner(config, false).await
    }

    async fn start_inner(config: Config, edge: bool) -> anyhow::Result<Node> {
        let data_dir = DataDir::acquire(&config.data_dir)?;
        let admin_token = match &config.admin_token {
            Some(t) => t.clone(),
            None => {
                let t = data_dir.admin_token().with_context(|| {
                    format!(
                        "cannot read or create the admin token in {}",
                        data_dir.path().display()
                    )
                })?;
                tracing::info!(
                    file = %data_dir.path().join("admin_token").display(),
                    "no admin_token configured; using the one kept in the data dir"
                );
                t
            }
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);
        let master = resolve_master_key(&config, &data_dir)?;
        let keyring = Arc::new(Keyring::new(master, entropy.clone()));
        let derive_dir = data_dir.path().join("derive");
        let log_config = SledLogConfig {
            queue_requests_max: config.log.queue_requests_max,
            group_events_max: config.log.group_events_max,
            // A full upload plus the signed body kept as its evidence.
            batch_events_max: config.ingest.batch_readings_max + 1,
            cache_capacity_bytes: config.log.cache_capacity_bytes,
            ..SledLogConfig::new(data_dir.log_path())
        };
        let platform_key = config
            .platform_key_file
            .clone()
            .unwrap_or_else(|| data_dir.path().join("platform_signing.key"));
        let tokens =
            crate::tokens::Tokens::open(&platform_key, entropy.as_ref()).with_context(|| {
                format!(
                    "cannot read or make the platform's token signing key {}",
                    platform_key.display()
                )
            })?;
        let secrets = crate::secrets::SecretChecks::of(&keyring, &tokens, &admin_token);
        let (log, cluster): (Arc<dyn EventLog>, _) = match cluster_settings(&config, &secrets)? {
            Some(settings) => {
                let node = custodian_cluster::node::ClusterNode::join(
                    &settings,
                    log_config,
                    clock.clone(),
                    Some(keyring.clone()),
                )
                .await
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("cannot join the cluster at {}", settings.urls))?;
                tracing::info!(node_id = %settings.node_id, urls = %settings.urls, "joined the cluster");
                let node = Arc::new(node);
                (node.log.clone() as Arc<dyn EventLog>, Some(node))
            }
            None => {
                let log = tokio::task::spawn_blocking({
                    let clock = clock.clone();
                    let keyring = keyring.clone();
                    move || SledLog::open(log_config, clock, Some(keyring))
                })
                .await?
                .with_context(|| {
                    format!(
                        "cannot open the event log in {}",
                        data_dir.log_path().display()
                    )
                })?;
                (Arc::new(log) as Arc<dyn EventLog>, None)
            }
        };
        tracing::info!(last_seq = log.last_seq(), "event log open");
        // The log opened with these keys (its data keys unwrapped): from now on they are the data dir's,
        // and a later start with others is refused.
        secrets.check_data_dir(&data_dir)?;
        tokens
            .load_revoked(log.as_ref())
            .context("cannot read the token revocations from the event log")?;
        let audit = if config.projections.postgres_enabled {
            Some(
                crate::audit::Audit::start(&config.projections.postgres_url)
                    .context("projections.postgres_url is not a PostgreSQL URL")?,
            )
        } else {
            None
        };
        let directory = tokio::task::spawn_blocking({
            let log = log.clone();
            move || custodian_projections::directory::Directory::load(log.as_ref())
        })
        .await?
        .context("cannot read the registrations from the event log")?;
        let directory = Arc::new(std::sync::RwLock::new(directory));
        let derived_seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let state = Arc::new(AppState::new(crate::state::StateParts {
            log,
            config,
            clock,
            keyring,
            entropy,
            tokens,
            admin_token: admin_token.clone(),
            audit,
            directory,
            derived_seq: derived_seq.clone(),
        }));
        let deriver = if state.config.derive.enabled {
            let store = tokio::task::spawn_blocking({
                let entropy = state.entropy.clone();
                let last = state.log.last_seq();
                move || crate::snapshots::SledSnapshots::open(&derive_dir, &master, entropy, last)
            })
            .await??;
            let d = &state.config.derive;
            Some(custodian_actors::Deriver::start_with(
                state.log.clone(),
                Arc::new(crate::sealing::NodeSink(Arc::downgrade(&state))),
                custodian_actors::DeriverConfig {
                    rules: d.rules(),
                    snapshot_every_events: d.snapshot_every_events.max(1),
                    passivate_after_events: d.passivate_after_events,
                    ..Default::default()
                },
                Arc::new(store),
                derived_seq,
            ))
        } else {
            None
        };
        if let Some(d) = &deriver {
            let _ = state.deriver_stats.set(d.stats.clone());
        }
        let follower = cluster.as_ref().map(|c| {
            let _ = state.cluster.set(c.clone());
            tokio::spawn(follow_registrations(
                Arc::downgrade(&state),
                state.log.last_seq() + 1,
            ))
        });
        let _ = state
            .models
            .runners
            .set(start_projections(&state, data_dir.path()).await?);
        if edge {
            // Before the listener: an edge never answers without its outbox in place.
            crate::edge::EdgeRuntime::start(&state, data_dir.path()).await?;
        }
        let ticker = (state.config.derive.enabled && state.config.derive.tick_interval_s > 0)
            .then(|| tokio::spawn(tick(Arc::downgrade(&state))));
        let listener = tokio::net::TcpListener::bind(state.config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another node or program using it? pick another with --listen",
                    state.config.listen
                )
            })?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let app = api::router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%addr, "custodian node listening");
        Ok(Node {
            addr,
            admin_token,
            state,
            deriver,
            ticker,
            follower,
            shutdown: Some(tx),
            server,
            _data_dir: data_dir,
        })
    }

    /// Starts an edge node (`custodian edge`): a node without read models, whose uploads must be signed
    /// (the platform checks the terminals' signatures again), with the outbox and the forwarder.
    pub async fn start_edge(mut config: Config) -> anyhow::Result<Node> {
        config.projections.postgres_enabled = false;
        config.projections.influx_enabled = false;
        config.projections.search_enabled = false;
        config.ingest.require_signature = true;
        Node::start_inner(config, true).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests, lets the ones in flight finish, and closes the log.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.server).await??;
        if let Some(c) = self.state.cluster.get() {
            match c.leave(std::time::Duration::from_secs(5)).await {
                Ok(took) => tracing::info!(?took, "handed every shard off"),
                Err(e) => tracing::warn!(error = %e, "hand-off incomplete"),
            }
        }
        if let Some(f) = self.follower.take() {
            f.abort();
        }
        if let Some(e) = self.state.edge.get() {
            e.stop().await;
        }
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        if let Some(d) = self.deriver.take() {
            d.stop().await;
        }
        for p in self.state.models.runners.get().into_iter().flatten() {
            p.stop().await;
        }
        if let Some(a) = &self.state.reads.audit {
            a.stop();
        }
        Ok(())
    }

    /// Runs until the server stops on its own (it does not, short of an error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.server).await??;
        Ok(())
    }
}

/// The cluster this node joins, if `cluster.urls` is set.
fn cluster_settings(
    config: &Config,
    secrets: &crate::secrets::SecretChecks,
) -> anyhow::Result<Option<custodian_cluster::node::ClusterSettings>> {
    let Some(urls) = &config.cluster.urls else {
        return Ok(None);
    };
    let node_id = config.cluster.node_id.clone().context(
        "cluster mode needs a node id: --node-id ID (or cluster.node_id), unique in the cluster and the same across restarts",
    )?;
    Ok(Some(custodian_cluster::node::ClusterSettings {
        urls: urls.clone(),
        node_id,
        name: config.cluster.name.clone(),
        replicas: config.cluster.replicas.max(1),
        secrets: secrets.for_cluster(),
    }))
}

/// In cluster mode, other nodes register terminals, rotate their keys and revoke tokens: learn it from
/// this node's copy of the log as it arrives (the directory, the terminal cache, the revoked tokens).
async fn follow_registrations(state: std::sync::Weak<AppState>, mut from: u64) {
    let want = |t: &str| {
        matches!(
            t,
            "EnterpriseRegistered"
                | "TerminalRegistered"
                | "TerminalKeyRotated"
                | "TerminalKeyRevoked"
                | "TokenRevoked"
        )
    };
    let Some(mut moved) = state.upgrade().map(|st| st.log.subscribe()) else {
        return;
    };
    loop {
        let Some(st) = state.upgrade() else { return };
        match st.log.read_where(from, 10_000, &want) {
            Ok((events, last)) => {
                for e in &events {
                    use custodian_events::Event;
                    match &e.event {
                        Event::EnterpriseRegistered(_) | Event::TerminalRegistered(_) => {
                            st.directory
                                .write()
                                .expect("directory lock")
                                .learn(&e.event);
                        }
                        Event::TerminalKeyRotated(k) => st.registry.invalidate(&k.terminal_id),
                        Event::TerminalKeyRevoked(k) => st.registry.invalidate(&k.terminal_id),
                        Event::TokenRevoked(r) => st.access.tokens.revoke(&r.id),
                        _ => {}
                    }
                }
                if last != 0 {
                    from = last + 1;
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, from, "cannot read registrations from the log; retrying");
                drop(st);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        drop(st);
        if moved.changed().await.is_err() {
            return;
        }
    }
}

/// Starts the read models that are enabled, each tailing the log from its own checkpoint. A backend that
/// is down does not stop the node: its projection waits and retries, and the log keeps everything.
async fn start_projections(
    state: &Arc<AppState>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Vec<custodian_projections::runner::RunnerHandle>> {
    use custodian_projections::runner::{Family, RunnerConfig};
    let c = &state.config.projections;
    if !(c.postgres_enabled || c.influx_enabled || c.search_enabled) {
        return Ok(Vec::new());
    }
    let directory = state.directory.clone();
    let state_dir = data_dir.join("projections");
    let mut families: Vec<Arc<dyn Family>> = Vec::new();
    if c.postgres_enabled {
        families.push(Arc::new(
            custodian_projections::postgres::PgFamily::new(
                &c.postgres_url,
                &c.postgres_schema,
                directory.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ));
    }
    if c.influx_enabled {
        let client =
            custodian_projections::influx::InfluxClient::new(&c.influx_url, c.influx.clone());
        families.push(Arc::new(
            custodian_projections::readings::InfluxFamily::new(
                client,
                &state_dir,
                state.log.clone(),
                directory.clone(),
            ),
        ));
    }
    if c.search_enabled {
        // The index rests sealed: it holds enterprise ids, note texts and weights.
        let secret = state.keyring.derive("search index");
        let key = custodian_projections::sealed_dir::SealKey::new(
            secret[..16].try_into().expect("16 bytes"),
            state.entropy.clone(),
        );
        families.push(Arc::new(custodian_projections::text::SearchFamily::new(
            data_dir.join("search"),
            &state_dir,
            directory.clone(),
            key,
        )));
    }
    let config = RunnerConfig {
        batch_events_max: c.batch_events_max,
        backoff_max: std::time::Duration::from_millis(c.backoff_max_ms.max(200)),
        rebuild_foreign: c.on_foreign_log == crate::config::OnForeignLog::Rebuild,
        ..Default::default()
    };
    Ok(families
        .into_iter()
        .map(|f| {
            let mut config = config.clone();
            // In cluster mode the shared read models (PostgreSQL, InfluxDB) run under a lease: the node
            // owning the projection's lease shard runs it, the others stand by. The search index is this
            // node's own and always runs.
            if let Some(cluster) = state.cluster.get()
                && f.name() != "search"
            {
                let shard = if f.name() == "postgres" { 0 } else { 1 };
                config.lease = Some(lease(cluster.clone(), shard));
            }
            custodian_projections::runner::spawn(state.log.clone(), f, directory.clone(), config)
        })
        .collect())
}

/// Whether this node owns `shard`, followed every 200 ms: a projection's lease. The shard's ownership
/// comes with membership, failover and fencing; the projection's own checkpoint (committed with its rows,
/// or idempotent writes) keeps its effect exactly-once if two holders overlap for a moment.
fn lease(
    cluster: Arc<custodian_cluster::node::ClusterNode>,
    shard: u16,
) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let held = cluster
                .coordinator
                .held
                .lock()
                .expect("held lock")
                .owned
                .contains_key(&shard);
            tx.send_if_modified(|v| std::mem::replace(v, held) != held);
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    rx
}

/// Appends `ClockTicked` every `derive.tick_interval_s`, at multiples of the interval (so ticks of two
/// nodes coincide and deduplicate). The time-driven rules decide only on these.
async fn tick(state: std::sync::Weak<AppState>) {
    loop {
        let Some(st) = state.upgrade() else { return };
        let interval_ns = (st.config.derive.tick_interval_s as i64).saturating_mul(1_000_000_000);
        let now = st.clock.now_ns();
        let next = now - now.rem_euclid(interval_ns) + interval_ns;
        drop(st);
        tokio::time::sleep(std::time::Duration::from_nanos((next - now) as u64)).await;
        let Some(st) = state.upgrade() else { return };
        if let Err(e) = append_tick(&st, next).await {
            tracing::warn!(error = %e, "cannot append a clock tick; the time-driven rules wait for the next one");
        }
    }
}

/// Appends the clock tick of `at_ns` (sealed with the platform's data key), as the node's ticker does.
pub async fn append_tick(
    st: &AppState,
    at_ns: i64,
) -> Result<Vec<custodian_log::AppendOutcome>, String> {
    let event =
        custodian_events::Event::ClockTicked(custodian_events::event::ClockTicked { at_ns });
    let proposed = crate::sealing::sealed(
        &st.sealer,
        custodian_events::keyring::PLATFORM_SCOPE,
        event,
        None,
    )
    .await
    .map_err(|e| e.message)?;
    st.log
        .append(vec![proposed])
        .await
        .map_err(|e| e.to_string())
}

/// Finds the master key: `master_key` (hex, e.g. from `CUSTODIAN_MASTER_KEY`), else `master_key_file`,
/// else `DATA_DIR/master.key`, which is made only for a log that holds no data keys yet. A log with data
/// keys and no master key is a start-up error, never a node that serves garbage.
pub fn resolve_master_key(
    config: &Config,
    data_dir: &DataDir,
) -> anyhow::Result<[u8; MASTER_KEY_LEN]> {
    if let Some(hex) = &config.master_key {
        return parse_master_key(hex).context(
            "master_key (CUSTODIAN_MASTER_KEY) must be 32 hex digits; make one with `custodian keys master`",
        );
    }
    let (file, is_default) = match &config.master_key_file {
        Some(f) => (f.clone(), false),
        None => (data_dir.path().join("master.key"), true),
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => parse_master_key(&text)
            .with_context(|| format!("master key file {} must hold 32 hex digits", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_default => {
            let holds_keys = data_dir.log_path().exists()
                && SledLog::holds_data_keys(&data_dir.log_path()).with_context(|| {
                    format!(
                        "cannot open the event log in {}",
                        data_dir.log_path().display()
                    )
                })?;
            anyhow::ensure!(
                !holds_keys,
                "master_key_missing: the log in {} holds sealed events, but {} is gone and neither \
                 CUSTODIAN_MASTER_KEY nor master_key_file is set; restore the master key",
                data_dir.log_path().display(),
                file.display()
            );
            let mut key = [0u8; MASTER_KEY_LEN];
            OsEntropy.fill(&mut key);
            data_dir
                .write_secret("master.key", &hex::encode(key))
                .with_context(|| format!("cannot write {}", file.display()))?;
            tracing::warn!(
                file = %file.display(),
                "made a new master key for this empty log; keep a copy outside the data dir"
            );
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!(
            "master_key_missing: cannot read the master key file {}: {e}; restore it or set CUSTODIAN_MASTER_KEY",
            file.display()
        )),
    }
}

/// A fresh master key as 32 hex digits (for throwaway nodes: the demo, the benchmark).
pub fn fresh_master_key_hex() -> String {
    let mut key = [0u8; MASTER_KEY_LEN];
    OsEntropy.fill(&mut key);
    hex::encode(key)
}

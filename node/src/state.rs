//! What the handlers share, made once at start (`server.rs`): the services a handler asks for by type
//! (axum's `FromRef`: `State<Ingest>`, `State<Access>`, `State<Sealer>`) and, for the rest,
//! the node's shared parts in [`AppState`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use axum::extract::FromRef;
use axum::http::StatusCode;
use custodian_events::Clock;
use custodian_events::crypto::Entropy;
use custodian_events::keyring::Keyring;
use custodian_log::EventLog;

use crate::api::error::ApiError;
use crate::config::{Config, IngestConfig};
use crate::edge::EdgeRuntime;
use crate::metrics::Metrics;
use crate::terminals::Registry;
use crate::tokens::Tokens;

/// Who is asking (`api/auth.rs`): the node's bootstrap admin token, the tokens it issued, and the clock
/// their expiry is read on. A handle: cloning it clones three `Arc`s.
#[derive(Clone)]
pub struct Access {
    pub admin_token: Arc<str>,
    /// Regulators' and administrators' bearer tokens.
    pub tokens: Arc<Tokens>,
    pub clock: Arc<dyn Clock>,
}

/// What seals events at rest (`sealing.rs`): the data keys, the log a scope's first key is appended to,
/// and the registrations that name a terminal's enterprise. A handle (three `Arc`s).
#[derive(Clone)]
pub struct Sealer {
    /// Data keys sealing events at rest (the log holds the same keyring to open them).
    pub keyring: Arc<Keyring>,
    pub log: Arc<dyn EventLog>,
    pub registry: Arc<Registry>,
}

/// The upload path (`api/ingest.rs`, and the edge's MQTT uploads and forwarded batches through it): the
/// limits, the terminals and their keys, sealing, the log, and how far the domain core lags. A handle
/// (`Arc`s and a few numbers).
#[derive(Clone)]
pub struct Ingest {
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
    pub limits: IngestConfig,
    /// Whether the domain core runs here (`derive.enabled`); only then does its lag hold uploads back.
    pub derive_enabled: bool,
    /// `derive.lag_events_max`: how far the domain core may lag before uploads get 503 `backpressure`.
    pub lag_events_max: u64,
    /// The last log sequence the domain core has processed (the deriver's checkpoint).
    pub derived_seq: Arc<AtomicU64>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub sealer: Sealer,
    /// The outbox's admission when this node runs as an edge.
    pub edge: Arc<OnceLock<Arc<EdgeRuntime>>>,
}

/// The node's shared parts, and its services.
pub struct AppState {
    pub access: Access,
    pub sealer: Sealer,
    pub ingest: Ingest,
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    /// Data keys sealing events at rest (the log holds the same keyring to open them).
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
    /// The last log sequence the domain core has processed (the deriver's checkpoint).
    pub derived_seq: Arc<AtomicU64>,
    /// The deriver's counters, once it runs.
    pub deriver_stats: OnceLock<Arc<custodian_actors::DeriverStats>>,
    /// The read models' runners, once started.
    pub projections: OnceLock<Vec<custodian_projections::runner::RunnerHandle>>,
    /// Answers of the regulators' reads, keyed by scope and URI, kept `query.cache_ttl_ms`.
    pub query_cache: moka::sync::Cache<String, (bytes::Bytes, i64)>,
    /// The audit trail of regulators' reads (absent when the PostgreSQL model is off).
    pub audit: Option<crate::audit::Audit>,
    /// Terminal → enterprise → province, from the registrations in the log.
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The outbox and forwarder when this node runs as an edge (`custodian edge`); shared with [`Ingest`].
    pub edge: Arc<OnceLock<Arc<EdgeRuntime>>>,
    /// This node's part in a cluster, in cluster mode.
    pub cluster: OnceLock<Arc<custodian_cluster::node::ClusterNode>>,
}

impl FromRef<Arc<AppState>> for Ingest {
    fn from_ref(st: &Arc<AppState>) -> Ingest {
        st.ingest.clone()
    }
}

impl FromRef<Arc<AppState>> for Access {
    fn from_ref(st: &Arc<AppState>) -> Access {
        st.access.clone()
    }
}

impl FromRef<Arc<AppState>> for Sealer {
    fn from_ref(st: &Arc<AppState>) -> Sealer {
        st.sealer.clone()
    }
}

/// What a node's state is made of; the rest (metrics, the terminal registry, the query cache) starts
/// empty.
pub struct StateParts {
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub tokens: Tokens,
    pub admin_token: String,
    pub audit: Option<crate::audit::Audit>,
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The deriver's checkpoint, shared with it.
    pub derived_seq: Arc<AtomicU64>,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(p.config.ingest.terminal_cache_entries_max));
        let edge = Arc::new(OnceLock::new());
        let sealer = Sealer {
            keyring: p.keyring.clone(),
            log: p.log.clone(),
            registry: registry.clone(),
        };
        AppState {
            access: Access {
                admin_token: p.admin_token.into(),
                tokens: Arc::new(p.tokens),
                clock: p.clock.clone(),
            },
            ingest: Ingest {
                log: p.log.clone(),
                clock: p.clock.clone(),
                limits: p.config.ingest.clone(),
                derive_enabled: p.config.derive.enabled,
                lag_events_max: p.config.derive.lag_events_max,
                derived_seq: p.derived_seq.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                sealer: sealer.clone(),
                edge: edge.clone(),
            },
            sealer,
            derived_seq: p.derived_seq,
            deriver_stats: OnceLock::new(),
            edge,
            cluster: OnceLock::new(),
            projections: OnceLock::new(),
            audit: p.audit,
            directory: p.directory,
            query_cache: moka::sync::Cache::builder()
                .max_capacity(p.config.query.cache_bytes_max)
                .weigher(|k: &String, v: &(bytes::Bytes, i64)| {
                    u32::try_from(k.len() + v.0.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(std::time::Duration::from_millis(
                    p.config.query.cache_ttl_ms.max(1),
                ))
                .build(),
            log: p.log,
            registry,
            clock: p.clock,
            keyring: p.keyring,
            entropy: p.entropy,
            metrics,
            config: p.config,
        }
    }

    /// What `get` makes of the live generation of read model `name` (`postgres`, `influx`, `search`), as
    /// its concrete type; None when the model is disabled or still starting.
    pub fn live_model<T: 'static, R>(
        &self,
        name: &str,
        get: impl FnOnce(&T) -> Option<R>,
    ) -> Option<R> {
        let live = self
            .projections
            .get()?
            .iter()
            .find(|p| p.name() == name)?
            .live()?;
        get(live.as_any().downcast_ref::<T>()?)
    }

    /// Each running read model's status (checkpoint, lag, state, rebuild), for `/metrics` and the admin API.
    pub fn projection_statuses(&self) -> Vec<custodian_projections::runner::ProjectionStatus> {
        self.projections
            .get()
            .into_iter()
            .flatten()
            .map(|p| p.status())
            .collect()
    }

    /// Why the read model `name` cannot be read now (`what` names it for people): disabled, still starting,
    /// or built from another event log (which is never served).
    pub fn model_unavailable(&self, name: &str, what: &str, code: &'static str) -> ApiError {
        let status = self
            .projections
            .get()
            .into_iter()
            .flatten()
            .find(|p| p.name() == name)
            .map(|p| p.status());
        let message = match status {
            None => format!("the {what} is disabled on this node"),
            Some(s) if s.state == custodian_projections::runner::FOREIGN_LOG => format!(
                "the {what} is not served: {}",
                s.last_error
                    .as_deref()
                    .unwrap_or("it was built from another event log")
            ),
            Some(s) => format!(
                "the {what} is not ready ({}); see GET /v1/admin/projections",
                s.last_error
                    .map(|e| format!("{}: {e}", s.state))
                    .unwrap_or(s.state)
            ),
        };
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
}

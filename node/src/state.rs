//! What the handlers share, made once at start (`server.rs`): the services a handler asks for by type
//! (axum's `FromRef`: `State<Ingest>`, `State<Reads>`, `State<Feed>`, `State<Edges>`, `State<Registrar>`, `State<Access>`, `State<Sealer>`) and, for the rest,
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
/// (one `Arc`): every upload takes it, so taking it costs one reference count.
#[derive(Clone)]
pub struct Ingest(Arc<IngestParts>);

impl std::ops::Deref for Ingest {
    type Target = IngestParts;
    fn deref(&self) -> &IngestParts {
        &self.0
    }
}

/// What [`Ingest`] holds.
pub struct IngestParts {
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

/// The log's own feed and export for administrators (`api/events.rs`): who asks, the log, the clock. A
/// handle.
#[derive(Clone)]
pub struct Feed {
    pub access: Access,
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
}

impl FromRef<Arc<AppState>> for Feed {
    fn from_ref(st: &Arc<AppState>) -> Feed {
        Feed {
            access: st.access.clone(),
            log: st.log.clone(),
            clock: st.clock.clone(),
        }
    }
}

/// The platform's side of its edges (`api/edge.rs`): registering an edge, opening its sealed requests
/// with the platform's key, taking its forwarded uploads through [`Ingest`] and its early anomalies, and
/// answering its registrations. A handle.
#[derive(Clone)]
pub struct Edges {
    pub access: Access,
    pub sealer: Sealer,
    pub ingest: Ingest,
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
    pub entropy: Arc<dyn Entropy>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// The enterprises an edge's terminals belong to.
    pub directory: custodian_projections::directory::SharedDirectory,
}

impl FromRef<Arc<AppState>> for Edges {
    fn from_ref(st: &Arc<AppState>) -> Edges {
        Edges {
            access: st.access.clone(),
            sealer: st.sealer.clone(),
            ingest: st.ingest.clone(),
            log: st.log.clone(),
            clock: st.clock.clone(),
            entropy: st.entropy.clone(),
            registry: st.registry.clone(),
            metrics: st.metrics.clone(),
            directory: st.directory.clone(),
        }
    }
}

/// Registrations and key changes (`api/registry.rs`): who asks, sealing, the log they are appended to,
/// the terminals' cache a key change invalidates, and the directory a registration teaches. A handle.
#[derive(Clone)]
pub struct Registrar {
    pub access: Access,
    pub sealer: Sealer,
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
    pub registry: Arc<Registry>,
    pub directory: custodian_projections::directory::SharedDirectory,
}

impl FromRef<Arc<AppState>> for Registrar {
    fn from_ref(st: &Arc<AppState>) -> Registrar {
        Registrar {
            access: st.access.clone(),
            sealer: st.sealer.clone(),
            log: st.log.clone(),
            clock: st.clock.clone(),
            registry: st.registry.clone(),
            directory: st.directory.clone(),
        }
    }
}

/// The read models' runners, once started (`server.rs` fills it): what is live, each model's status,
/// and why one cannot be read now. A handle (one `Arc`).
#[derive(Clone, Default)]
pub struct Models {
    pub runners: Arc<OnceLock<Vec<custodian_projections::runner::RunnerHandle>>>,
}

/// The regulators' reads (`api/query.rs`, `api/search.rs`, `query/`, the dashboard): who asks, the read
/// models, the directory that scopes them, the answer cache and the audit trail, and the log for the
/// live feeds and the events a regulator's handling appends. A handle (one `Arc`).
#[derive(Clone)]
pub struct Reads(Arc<ReadParts>);

/// What [`Reads`] holds.
pub struct ReadParts {
    pub access: Access,
    pub sealer: Sealer,
    pub log: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
    /// Token ids.
    pub entropy: Arc<dyn Entropy>,
    pub models: Models,
    /// Terminal → enterprise → province, from the registrations in the log.
    pub directory: custodian_projections::directory::SharedDirectory,
    /// `query.*` (the cache) and `dashboard.*` (cookies).
    pub config: Config,
    /// Answers of the regulators' reads, keyed by scope and URI, kept `query.cache_ttl_ms`.
    pub query_cache: moka::sync::Cache<String, (bytes::Bytes, i64)>,
    /// The audit trail of regulators' reads (absent when the PostgreSQL model is off).
    pub audit: Option<crate::audit::Audit>,
    pub metrics: Arc<Metrics>,
    /// The edge's runtime when this node runs as one (its reads answer from its own log).
    pub edge: Arc<OnceLock<Arc<EdgeRuntime>>>,
}

impl std::ops::Deref for Reads {
    type Target = ReadParts;
    fn deref(&self) -> &ReadParts {
        &self.0
    }
}

/// The node's shared parts, and its services.
pub struct AppState {
    pub access: Access,
    pub sealer: Sealer,
    pub ingest: Ingest,
    pub reads: Reads,
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
    pub models: Models,
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

impl FromRef<Arc<AppState>> for Reads {
    fn from_ref(st: &Arc<AppState>) -> Reads {
        st.reads.clone()
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
        let access = Access {
            admin_token: p.admin_token.into(),
            tokens: Arc::new(p.tokens),
            clock: p.clock.clone(),
        };
        let models = Models::default();
        let reads = Reads(Arc::new(ReadParts {
            access: access.clone(),
            sealer: sealer.clone(),
            log: p.log.clone(),
            clock: p.clock.clone(),
            entropy: p.entropy.clone(),
            models: models.clone(),
            directory: p.directory.clone(),
            config: p.config.clone(),
            query_cache: moka::sync::Cache::builder()
                .max_capacity(p.config.query.cache_bytes_max)
                .weigher(|k: &String, v: &(bytes::Bytes, i64)| {
                    u32::try_from(k.len() + v.0.len()).unwrap_or(u32::MAX)
                })
                .time_to_live(std::time::Duration::from_millis(
                    p.config.query.cache_ttl_ms.max(1),
                ))
                .build(),
            audit: p.audit,
            metrics: metrics.clone(),
            edge: edge.clone(),
        }));
        AppState {
            access,
            ingest: Ingest(Arc::new(IngestParts {
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
            })),
            reads,
            sealer,
            derived_seq: p.derived_seq,
            deriver_stats: OnceLock::new(),
            edge,
            cluster: OnceLock::new(),
            models,
            directory: p.directory,
            log: p.log,
            registry,
            clock: p.clock,
            keyring: p.keyring,
            entropy: p.entropy,
            metrics,
            config: p.config,
        }
    }
}

impl Models {
    /// What `get` makes of the live generation of read model `name` (`postgres`, `influx`, `search`), as
    /// its concrete type; None when the model is disabled or still starting.
    pub fn live_model<T: 'static, R>(
        &self,
        name: &str,
        get: impl FnOnce(&T) -> Option<R>,
    ) -> Option<R> {
        let live = self
            .runners
            .get()?
            .iter()
            .find(|p| p.name() == name)?
            .live()?;
        get(live.as_any().downcast_ref::<T>()?)
    }

    /// Each running read model's status (checkpoint, lag, state, rebuild), for `/metrics` and the admin API.
    pub fn statuses(&self) -> Vec<custodian_projections::runner::ProjectionStatus> {
        self.runners
            .get()
            .into_iter()
            .flatten()
            .map(|p| p.status())
            .collect()
    }

    /// Why the read model `name` cannot be read now (`what` names it for people): disabled, still starting,
    /// or built from another event log (which is never served).
    pub fn unavailable(&self, name: &str, what: &str, code: &'static str) -> ApiError {
        let status = self
            .runners
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

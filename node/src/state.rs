//! What every handler shares: the node's state, made once at start (`server.rs`).

use std::sync::Arc;

use axum::http::StatusCode;
use custodian_events::Clock;
use custodian_events::crypto::Entropy;
use custodian_events::keyring::Keyring;
use custodian_log::EventLog;

use crate::api::error::ApiError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::terminals::Registry;

/// What every handler shares.
pub struct AppState {
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    /// Data keys sealing events at rest (the log holds the same keyring to open them).
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub metrics: Metrics,
    pub registry: Registry,
    pub admin_token: String,
    /// The last log sequence the domain core has processed (the deriver's checkpoint).
    pub derived_seq: Arc<std::sync::atomic::AtomicU64>,
    /// The deriver's counters, once it runs.
    pub deriver_stats: std::sync::OnceLock<Arc<custodian_actors::DeriverStats>>,
    /// The read models' runners, once started.
    pub projections: std::sync::OnceLock<Vec<custodian_projections::runner::RunnerHandle>>,
    /// Regulators' and administrators' bearer tokens.
    pub tokens: crate::tokens::Tokens,
    /// Answers of the regulators' reads, keyed by scope and URI, kept `query.cache_ttl_ms`.
    pub query_cache: moka::sync::Cache<String, (bytes::Bytes, i64)>,
    /// The audit trail of regulators' reads (absent when the PostgreSQL model is off).
    pub audit: Option<crate::audit::Audit>,
    /// Terminal → enterprise → province, from the registrations in the log.
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The outbox and forwarder when this node runs as an edge (`custodian edge`).
    pub edge: std::sync::OnceLock<Arc<crate::edge::EdgeRuntime>>,
    /// This node's part in a cluster, in cluster mode.
    pub cluster: std::sync::OnceLock<Arc<custodian_cluster::node::ClusterNode>>,
}

/// What a node's state is made of; the rest (metrics, the terminal registry, the query cache) starts
/// empty.
pub struct StateParts {
    pub log: Arc<dyn EventLog>,
    pub config: Config,
    pub clock: Arc<dyn Clock>,
    pub keyring: Arc<Keyring>,
    pub entropy: Arc<dyn Entropy>,
    pub tokens: crate::tokens::Tokens,
    pub admin_token: String,
    pub audit: Option<crate::audit::Audit>,
    pub directory: custodian_projections::directory::SharedDirectory,
    /// The deriver's checkpoint, shared with it.
    pub derived_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl AppState {
    pub fn new(p: StateParts) -> AppState {
        AppState {
            derived_seq: p.derived_seq,
            deriver_stats: std::sync::OnceLock::new(),
            edge: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            projections: std::sync::OnceLock::new(),
            tokens: p.tokens,
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
            registry: Registry::new(p.config.ingest.terminal_cache_entries_max),
            clock: p.clock,
            keyring: p.keyring,
            entropy: p.entropy,
            metrics: Metrics::default(),
            admin_token: p.admin_token,
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

//! Node configuration: defaults, then a TOML file, then `CUSTODIAN_*` environment variables (`__` separates
//! sections: `CUSTODIAN_INGEST__BATCH_READINGS_MAX=500`), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Bytes one buffered reading costs in the outbox (keys and values as counted against the limit) when each
/// upload carries one reading, the worst case: 314 measured by `custodian bench edge`
/// (bench/results/edge-20261127-024724.md), rounded up. sled's files take about 2.6 times that on disk.
pub const OUTBOX_BYTES_PER_READING: u64 = 320;

/// 72 hours of 1,000 terminals reporting every 10 s: 25,920,000 readings at `OUTBOX_BYTES_PER_READING`,
/// rounded up to whole GiB.
pub const OUTBOX_BYTES_DEFAULT: u64 = {
    let readings = 72 * 3600 / 10 * 1_000;
    let bytes = readings * OUTBOX_BYTES_PER_READING;
    bytes.div_ceil(1 << 30) * (1 << 30)
};

/// Everything a node can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// Where the event log and the node's own files live. One running node holds it at a time.
    pub data_dir: PathBuf,
    /// The bootstrap admin secret. When unset, the node makes one on first start and keeps it in
    /// `DATA_DIR/admin_token` (readable by its owner only).
    pub admin_token: Option<String>,
    /// The master key that wraps the data keys sealing events at rest: 32 hex digits. Usually given as
    /// `CUSTODIAN_MASTER_KEY`; takes precedence over `master_key_file`.
    pub master_key: Option<String>,
    /// A file holding the master key (32 hex digits). When neither this nor `master_key` is set, the node
    /// uses `DATA_DIR/master.key`, making it on first start of an empty log. Keep a copy elsewhere: a log
    /// is unreadable without it.
    pub master_key_file: Option<PathBuf>,
    /// The platform's SM2 key signing regulators' tokens (PKCS#8 PEM), made on first start when missing.
    /// Unset: `DATA_DIR/platform_signing.key`. The nodes of a cluster share one (and one master key, and
    /// one admin token), so that a token any node issued is good on every node.
    pub platform_key_file: Option<PathBuf>,
    pub ingest: IngestConfig,
    pub log: LogConfig,
    pub derive: DeriveConfig,
    pub projections: ProjectionsConfig,
    pub query: QueryConfig,
    pub edge: EdgeConfig,
    pub cluster: ClusterConfig,
    pub dashboard: DashboardConfig,
}

/// Cluster mode (`custodian serve --cluster URLS --node-id ID`); without `urls` the node runs alone on
/// its embedded log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers with JetStream, comma-separated (`nats://127.0.0.1:4301,nats://127.0.0.1:4302`).
    pub urls: Option<String>,
    /// This node's id: unique in the cluster, the same across its restarts.
    pub node_id: Option<String>,
    /// The cluster's name, the root of the NATS names it uses (`docs/cluster.md`).
    pub name: String,
    /// Replicas of the log stream and the owner records (3: a NATS server may die).
    pub replicas: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            urls: None,
            node_id: None,
            name: "custodian".into(),
            replicas: 3,
        }
    }
}

/// An edge node's store-and-forward (`custodian edge`); ignored by `custodian serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id, as registered at the platform with `POST /v1/edges`.
    pub id: Option<String>,
    /// The platform's base URL (`http://cloud:8080`).
    pub upstream: Option<String>,
    /// The platform's SM2 public key (PEM). When unset, it is fetched once from
    /// `GET /v1/edge/public-key` and pinned in `DATA_DIR/upstream_public_key.pem`.
    pub upstream_public_key_file: Option<PathBuf>,
    /// Registrations to start from before the platform was ever reached (the JSON of
    /// `GET /v1/admin/edges/{id}/registrations`).
    pub seed_registrations_file: Option<PathBuf>,
    /// Bytes the outbox may hold (uploads waiting, anomalies waiting, dead letters). When full, uploads
    /// get 503 `outbox_full`; nothing already held is dropped. The default holds 72 hours of 1,000
    /// terminals reporting every 10 s (docs/edge.md).
    pub outbox_bytes_max: u64,
    /// Most uploads in one forwarded batch.
    pub batch_uploads_max: usize,
    /// Most bytes of upload bodies in one forwarded batch.
    pub batch_bytes_max: usize,
    /// Most uploads of one terminal in one batch: terminals are served round-robin, so that one
    /// terminal's backlog does not hold back the live readings of the others.
    pub per_terminal_uploads_max: usize,
    /// First retry wait after a failed forward, in ms; it doubles up to `retry_cap_ms`, jittered.
    pub retry_base_ms: u64,
    /// The longest retry wait, in ms (at most 30,000).
    pub retry_cap_ms: u64,
    /// How often the registrations of the edge's terminals are fetched again, in seconds.
    pub registrations_every_s: u64,
    /// The MQTT broker terminals publish to (`mqtt://127.0.0.1:1883`); unset: HTTP only.
    pub mqtt_url: Option<String>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            id: None,
            upstream: None,
            upstream_public_key_file: None,
            seed_registrations_file: None,
            outbox_bytes_max: OUTBOX_BYTES_DEFAULT,
            batch_uploads_max: 500,
            batch_bytes_max: 4 * 1024 * 1024,
            per_terminal_uploads_max: 16,
            retry_base_ms: 200,
            retry_cap_ms: 30_000,
            registrations_every_s: 60,
            mqtt_url: None,
        }
    }
}

/// The regulators' dashboard in the browser (`/ui`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    /// Marks the dashboard's cookies `Secure`, so that a browser sends them over HTTPS only. Set it when
    /// the node is reached through TLS (a terminating proxy): the node itself serves plain HTTP, where a
    /// browser would not send a `Secure` cookie back and nobody could stay signed in.
    /// `CUSTODIAN_DASHBOARD__SECURE_COOKIES=true`.
    pub secure_cookies: bool,
}

/// The regulators' read endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// How long an answer is served from the cache: the bound on how stale a cached answer may be, in ms
    /// (0: no cache).
    pub cache_ttl_ms: u64,
    /// Bytes of answers the cache may hold; beyond, the least used are evicted.
    pub cache_bytes_max: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            cache_ttl_ms: 1_000,
            cache_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// The read models built from the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectionsConfig {
    /// The business model in PostgreSQL.
    pub postgres_enabled: bool,
    /// The database (made when missing) holding the model's schemas.
    pub postgres_url: String,
    /// The schemas' common name: generation N lives in `<it>_gN`.
    pub postgres_schema: String,
    /// The readings in InfluxDB.
    pub influx_enabled: bool,
    pub influx_url: String,
    /// `{ dialect = "v1", database = "custodian" }` (InfluxDB 1.x, or 2.x/3.x's v1 API), or
    /// `{ dialect = "v2", org = "…", bucket = "…", token = "…" }` (unverified against a real 2.x server).
    pub influx: custodian_projections::influx::Dialect,
    /// The full-text index of anomalies, manifest notes and inspection notes (in `DATA_DIR/search`).
    pub search_enabled: bool,
    /// Most log records a projection takes per batch.
    pub batch_events_max: usize,
    /// The longest wait between retries of a failing backend, in ms (the wait doubles from 200 ms).
    pub backoff_max_ms: u64,
    /// What a node does with a read model that was built from another event log (a database shared with
    /// another node, or left from an earlier log): never serve it (queries answer 503
    /// `read_model_unavailable`). `refuse` (the default) leaves it to the operator; `rebuild` builds this
    /// log's own model in a generation of its own beside it, never touching the other log's.
    pub on_foreign_log: OnForeignLog,
}

/// See [`ProjectionsConfig::on_foreign_log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnForeignLog {
    #[default]
    Refuse,
    Rebuild,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        ProjectionsConfig {
            postgres_enabled: true,
            postgres_url: "postgres://postgres@127.0.0.1:5432/custodian".into(),
            postgres_schema: "custodian".into(),
            influx_enabled: true,
            influx_url: "http://127.0.0.1:8086".into(),
            influx: custodian_projections::influx::Dialect::v1("custodian"),
            search_enabled: true,
            batch_events_max: 5_000,
            backoff_max_ms: 10_000,
            on_foreign_log: OnForeignLog::Refuse,
        }
    }
}

/// The domain core running over the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeriveConfig {
    /// Whether this node runs the domain core (anomaly detection) over its log. Off only for measuring
    /// ingest alone, or on a node whose log another node derives from.
    pub enabled: bool,
    /// How far (in events) the actors may fall behind the log before ingest answers 503 `backpressure`
    /// with Retry-After: the log absorbs peaks, but alarms must not drift minutes behind.
    pub lag_events_max: u64,
    /// The weight-fluctuation threshold in percent of the previous weighing.
    pub weight_fluctuation_pct: u32,
    /// Thresholds per waste code (`HW08 = 10`), overriding `weight_fluctuation_pct`.
    pub weight_fluctuation_pct_by_waste_code: std::collections::BTreeMap<String, u32>,
    /// `weight_fluctuation` of a continuous load cell, in percent.
    pub load_cell_pct: u32,
    /// `manifest_weight_mismatch`: received versus dispatched, in percent (US RCRA uses 10).
    pub manifest_mismatch_pct: u32,
    /// `storage_overdue`: the longest stay in storage, in days.
    pub storage_limit_days: u32,
    /// `terminal_silent`: after this many registered report intervals without a reading.
    pub silence_intervals: u32,
    /// How often the node appends `ClockTicked` (the time-driven rules decide only on ticks); 0: never.
    pub tick_interval_s: u64,
    /// Commit the actors' snapshots after this many log events.
    pub snapshot_every_events: u64,
    /// Passivate an aggregate no event has reached for this many log events.
    pub passivate_after_events: u64,
}

impl Default for DeriveConfig {
    fn default() -> Self {
        DeriveConfig {
            enabled: true,
            lag_events_max: 200_000,
            weight_fluctuation_pct: 20,
            weight_fluctuation_pct_by_waste_code: Default::default(),
            load_cell_pct: 20,
            manifest_mismatch_pct: 20,
            storage_limit_days: 365,
            silence_intervals: 3,
            tick_interval_s: 10,
            snapshot_every_events: 50_000,
            passivate_after_events: 200_000,
        }
    }
}

impl DeriveConfig {
    /// The domain core's rules as configured.
    pub fn rules(&self) -> custodian_events::domain::Rules {
        custodian_events::domain::Rules {
            weighing: custodian_events::domain::WeighingRules {
                threshold_pct_default: self.weight_fluctuation_pct,
                threshold_pct_by_waste_code: self.weight_fluctuation_pct_by_waste_code.clone(),
            },
            load_cell_pct: self.load_cell_pct,
            manifest_mismatch_pct: self.manifest_mismatch_pct,
            storage_limit_s: i64::from(self.storage_limit_days) * 86_400,
            silence_intervals: self.silence_intervals,
            ..Default::default()
        }
    }
}

/// Limits of the ingest path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest request body, in bytes. Bigger bodies get 413 `body_too_large` before they are read whole.
    pub body_bytes_max: usize,
    /// Most readings in one upload. More get 413 `batch_too_large`; nothing of the batch is stored.
    pub batch_readings_max: usize,
    /// How far a reading's `measured_at` may lie ahead of the node's clock, in seconds.
    pub future_skew_s_max: u64,
    /// Terminal registrations kept in memory for the upload path; beyond this the least used are evicted
    /// and read again from the log when needed.
    pub terminal_cache_entries_max: u64,
    /// Whether every upload must carry `X-Custodian-Signature` (SM2 over the body). Turn off only for
    /// terminals that cannot sign; a signature that is present is always checked.
    pub require_signature: bool,
}

/// Limits of the embedded event log (see `SledLogConfig` for what each costs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Append requests waiting for the writer; when full, uploads get 503 `overloaded` with Retry-After.
    pub queue_requests_max: usize,
    /// Events per group commit (one fsync).
    pub group_events_max: usize,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            data_dir: PathBuf::from(".custodian"),
            admin_token: None,
            master_key: None,
            master_key_file: None,
            platform_key_file: None,
            ingest: IngestConfig::default(),
            log: LogConfig::default(),
            derive: DeriveConfig::default(),
            projections: ProjectionsConfig::default(),
            query: QueryConfig::default(),
            edge: EdgeConfig::default(),
            cluster: ClusterConfig::default(),
            dashboard: DashboardConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            body_bytes_max: 1024 * 1024,
            batch_readings_max: 1000,
            future_skew_s_max: 300,
            terminal_cache_entries_max: 100_000,
            require_signature: true,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            queue_requests_max: 1024,
            group_events_max: 16_384,
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The top-level keys a `CUSTODIAN_*` environment variable may set. Other `CUSTODIAN_*` variables belong
/// to other tools (`CUSTODIAN_NODE` to the CLI, `CUSTODIAN_PYTHON` to the tests, ...) and are ignored; a
/// typo inside a section (`CUSTODIAN_INGEST__BATCH_READINGS`) is still refused.
const CONFIG_KEYS: [&str; 14] = [
    "listen",
    "data_dir",
    "admin_token",
    "master_key",
    "master_key_file",
    "platform_key_file",
    "cluster",
    "ingest",
    "log",
    "derive",
    "projections",
    "query",
    "edge",
    "dashboard",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist; pass an existing TOML file to --config",
                file.display()
            );
            fig = fig.merge(Toml::file(file));
        }
        fig = fig.merge(Env::prefixed("CUSTODIAN_").split("__").filter(|k| {
            let top = k.as_str().split('.').next().unwrap_or("");
            CONFIG_KEYS.iter().any(|c| top.eq_ignore_ascii_case(c))
        }));
        let config: Config = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.check()?;
        Ok(config)
    }

    /// Refuses limits that would make the node useless.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ingest.body_bytes_max >= 1024,
            "ingest.body_bytes_max must be at least 1024"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.ingest.batch_readings_max),
            "ingest.batch_readings_max must lie in 1 ..= 10000"
        );
        anyhow::ensure!(
            self.log.queue_requests_max >= 1,
            "log.queue_requests_max must be at least 1"
        );
        anyhow::ensure!(
            self.log.group_events_max >= 1,
            "log.group_events_max must be at least 1"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.projections.batch_events_max),
            "projections.batch_events_max must lie in 1 ..= 100000"
        );
        anyhow::ensure!(
            (1..=30_000).contains(&self.edge.retry_cap_ms)
                && self.edge.retry_base_ms >= 1
                && self.edge.retry_base_ms <= self.edge.retry_cap_ms,
            "edge.retry_cap_ms must lie in 1 ..= 30000 and edge.retry_base_ms in 1 ..= edge.retry_cap_ms"
        );
        anyhow::ensure!(
            self.edge.batch_uploads_max >= 1 && self.edge.per_terminal_uploads_max >= 1,
            "edge.batch_uploads_max and edge.per_terminal_uploads_max must be at least 1"
        );
        anyhow::ensure!(
            self.edge.batch_bytes_max >= self.ingest.body_bytes_max
                && self.edge.batch_bytes_max <= 8 * 1024 * 1024,
            "edge.batch_bytes_max must lie between ingest.body_bytes_max and 8 MiB (the platform reads sealed batches of up to 16 MiB)"
        );
        if let Some(t) = &self.admin_token {
            anyhow::ensure!(
                t.len() >= 16,
                "admin_token must be at least 16 characters long"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment's own large error
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "listen = \"127.0.0.1:9000\"\n[ingest]\nbatch_readings_max = 200\nbody_bytes_max = 4096\n",
            )?;
            jail.set_env("CUSTODIAN_INGEST__BATCH_READINGS_MAX", "500");
            jail.set_env("CUSTODIAN_NODE", "http://127.0.0.1:1");
            jail.set_env("CUSTODIAN_PYTHON", "/usr/bin/python3");
            jail.set_env("CUSTODIAN_MASTER_KEY", "00112233445566778899aabbccddeeff");
            let c = Config::load(Some(Path::new("node.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.ingest.batch_readings_max, 500);
            assert_eq!(c.ingest.body_bytes_max, 4096);
            assert_eq!(c.ingest.future_skew_s_max, 300);
            assert_eq!(
                c.master_key.as_deref(),
                Some("00112233445566778899aabbccddeeff")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[ingest]\nbatch_readings = 5\n")?;
            assert!(Config::load(Some(Path::new("a.toml"))).is_err());
            jail.create_file("b.toml", "[ingest]\nbatch_readings_max = 0\n")?;
            assert!(Config::load(Some(Path::new("b.toml"))).is_err());
            jail.set_env("CUSTODIAN_INGEST__BATCH_READINGS", "5");
            assert!(
                Config::load(None).is_err(),
                "a typo inside a section is refused"
            );
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }
}

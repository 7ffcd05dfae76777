//! The PostgreSQL read model: enterprises, terminals, containers with their custody chain, manifests,
//! anomalies, notes and daily KPIs, built from the log.
//!
//! Every generation lives in its own schema (`<schema>_g1`, `<schema>_g2`, …) with its own migrations
//! table; `custodian_meta.active` names the live one, so a rebuild fills a new schema and one `UPDATE`
//! swaps it in. A batch is folded in memory into one multi-row statement per table (arrays through
//! `UNNEST`), and its rows commit in the same transaction as the checkpoint: a batch is applied exactly
//! once, however often it is handed over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use custodian_events::event::{ManifestStatus, TerminalKind};
use custodian_events::reading::{ReadingKind, Stage};
use custodian_events::{Envelope, Event, TerminalId};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _};

use crate::columns::bind_rows;
use crate::describe::anomaly_description;
use crate::directory::{Directory, SharedDirectory};
use crate::runner::{BoxFuture, Family, Prepared, Projection, ProjectionError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// China Standard Time, the offset of the days KPIs are kept by.
pub const DAY_OFFSET_S: i64 = 8 * 3600;

/// A text as PostgreSQL's `text` can hold it: NUL, which it cannot, as U+FFFD. The API refuses control
/// characters in text (`check_text`), but a log written before it did may hold one; the read model must
/// not stall on it.
fn pg_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// The CST day (days since 1970-01-01) of an instant.
pub fn day_of(ns: i64) -> i32 {
    (ns.div_euclid(1_000_000_000) + DAY_OFFSET_S).div_euclid(86_400) as i32
}

fn pg_error(doing: &str, e: sqlx::Error) -> ProjectionError {
    let unavailable = matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
    ) || e.as_database_error().is_some_and(|d| {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        matches!(
            d.code().as_deref(),
            Some("57P01" | "57P02" | "57P03" | "53300")
        )
    });
    let message = format!("PostgreSQL: {doing}: {e}");
    if unavailable {
        ProjectionError::Unavailable(message)
    } else {
        ProjectionError::Failed(message)
    }
}

/// Drops database `name` on the server at `server_url` (a URL naming no database), ending its sessions:
/// for throwaway models (tests, benchmarks, the demo).
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut c = sqlx::PgConnection::connect(&format!("{server_url}/postgres")).await?;
    c.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    )))
    .await?;
    c.close().await
}

/// Where the PostgreSQL model lives.
#[derive(Clone)]
pub struct PgFamily {
    options: PgConnectOptions,
    url: String,
    schema_prefix: String,
    directory: SharedDirectory,
}

impl PgFamily {
    /// `url` names the database (made if missing); `schema_prefix` the schemas' common name.
    pub fn new(
        url: &str,
        schema_prefix: &str,
        directory: SharedDirectory,
    ) -> Result<PgFamily, String> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| format!("postgres_url {url:?} is not a PostgreSQL URL: {e}"))?;
        if schema_prefix.is_empty()
            || !schema_prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "postgres_schema {schema_prefix:?} must be lowercase letters, digits and _"
            ));
        }
        Ok(PgFamily {
            options: options.log_statements(tracing::log::LevelFilter::Off),
            url: url.to_owned(),
            schema_prefix: schema_prefix.to_owned(),
            directory,
        })
    }

    pub fn schema(&self, generation: u32) -> String {
        format!("{}_g{generation}", self.schema_prefix)
    }

    /// A pool whose connections see `schema` first.
    pub fn pool(&self, schema: Option<&str>, max: u32) -> PgPool {
        let mut options = self.options.clone();
        if let Some(s) = schema {
            options = options.options([("search_path", s)]);
        }
        PgPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options)
    }

    /// Creates the database named in the URL if it does not exist.
    async fn ensure_database(&self) -> Result<(), ProjectionError> {
        match self.options.connect().await {
            Ok(c) => {
                let _ = c.close().await;
                Ok(())
            }
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("3D000") => {
                let name = self.options.get_database().unwrap_or("postgres").to_owned();
                let mut admin = self
                    .options
                    .clone()
                    .database("postgres")
                    .connect()
                    .await
                    .map_err(|e| pg_error("connecting to database postgres", e))?;
                let made = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "CREATE DATABASE \"{}\"",
                        name.replace('"', "\"\"")
                    )))
                    .await;
                let _ = admin.close().await;
                match made {
                    Ok(_) => {
                        tracing::info!(database = %name, "made the PostgreSQL database for the read model");
                        Ok(())
                    }
                    // Someone else made it in between.
                    Err(e)
                        if e.as_database_error().and_then(|d| d.code()).as_deref()
                            == Some("42P04") =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(pg_error(&format!("creating database {name}"), e)),
                }
            }
            Err(e) => Err(pg_error(&format!("connecting to {}", redact(&self.url)), e)),
        }
    }

    async fn meta(&self) -> Result<PgPool, ProjectionError> {
        self.ensure_database().await?;
        let pool = self.pool(None, 1);
        pool.execute(
            "CREATE SCHEMA IF NOT EXISTS custodian_meta; \
             CREATE TABLE IF NOT EXISTS custodian_meta.active ( \
                 projection text PRIMARY KEY, generation integer NOT NULL, \
                 swapped_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| pg_error("creating custodian_meta", e))?;
        Ok(pool)
    }

    /// The key of this model in `custodian_meta.active`: per log once its genesis is known (so that the
    /// models of two logs in one database each have their own live generation), else the shared default
    /// row every model had before.
    fn meta_key(&self, genesis: Option<&str>) -> String {
        match genesis {
            Some(g) => format!("postgres:{}@{g}", self.schema_prefix),
            None => format!("postgres:{}", self.schema_prefix),
        }
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Family for PgFamily {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn active_generation(
        &self,
        genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<u32, ProjectionError>> {
        let genesis = genesis.map(str::to_owned);
        Box::pin(async move {
            let pool = self.meta().await?;
            let own = match &genesis {
                Some(_) => sqlx::query_scalar::<_, i32>(
                    "SELECT generation FROM custodian_meta.active WHERE projection = $1",
                )
                .bind(self.meta_key(genesis.as_deref()))
                .fetch_optional(&pool)
                .await
                .map_err(|e| pg_error("reading custodian_meta.active", e))?,
                None => None,
            };
            let generation = match own {
                Some(g) => g,
                None => sqlx::query_scalar::<_, i32>(
                    "WITH ins AS (INSERT INTO custodian_meta.active (projection, generation) VALUES ($1, 1) \
                     ON CONFLICT (projection) DO NOTHING RETURNING generation) \
                     SELECT generation FROM ins UNION ALL \
                     SELECT generation FROM custodian_meta.active WHERE projection = $1",
                )
                .bind(self.meta_key(None))
                .fetch_one(&pool)
                .await
                .map_err(|e| pg_error("reading custodian_meta.active", e))?,
            };
            pool.close().await;
            Ok(generation as u32)
        })
    }

    fn open(&self, generation: u32) -> Arc<dyn Projection> {
        let schema = self.schema(generation);
        Arc::new(PgProjection {
            pool: self.pool(Some(&schema), 2),
            genesis: std::sync::Mutex::new(None),
            family: self.clone(),
            generation,
            schema,
        })
    }

    fn promote(
        &self,
        generation: u32,
        genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<(), ProjectionError>> {
        let key = self.meta_key(genesis);
        Box::pin(async move {
            let pool = self.meta().await?;
            sqlx::query(
                "INSERT INTO custodian_meta.active (projection, generation) VALUES ($1, $2) \
                 ON CONFLICT (projection) DO UPDATE SET generation = $2, swapped_at = now()",
            )
            .bind(key)
            .bind(generation as i32)
            .execute(&pool)
            .await
            .map_err(|e| pg_error("switching custodian_meta.active", e))?;
            pool.close().await;
            Ok(())
        })
    }

    fn discard(&self, generation: u32) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(async move {
            self.ensure_database().await?;
            let pool = self.pool(None, 1);
            pool.execute(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema(generation)
            )))
            .await
            .map_err(|e| pg_error("dropping a schema", e))?;
            pool.close().await;
            Ok(())
        })
    }
}

/// One generation of the PostgreSQL model.
pub struct PgProjection {
    family: PgFamily,
    genesis: std::sync::Mutex<Option<String>>,
    generation: u32,
    schema: String,
    pool: PgPool,
}

impl PgProjection {
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Projection for PgProjection {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn generation(&self) -> u32 {
        self.generation
    }

    fn target(&self) -> String {
        self.schema.clone()
    }

    fn wants(&self, event_type: &str) -> bool {
        !matches!(
            event_type,
            "UploadSigned"
                | "DataKeyIssued"
                | "ClockTicked"
                | "TokenIssued"
                | "TokenRevoked"
                | "EdgeRegistered"
        )
    }

    fn set_log_genesis(&self, genesis: &str) {
        *self.genesis.lock().expect("genesis lock") = Some(genesis.to_owned());
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Prepared, ProjectionError>> {
        Box::pin(async move {
            self.family.ensure_database().await?;
            self.pool
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    self.schema
                )))
                .await
                .map_err(|e| pg_error("creating the schema", e))?;
            MIGRATOR.run(&self.pool).await.map_err(|e| {
                let m = format!("PostgreSQL: migrating schema {}: {e}", self.schema);
                match e {
                    sqlx::migrate::MigrateError::Execute(e) => pg_error(&m, e),
                    _ => ProjectionError::Failed(m),
                }
            })?;
            let (seq, log_genesis): (i64, Option<String>) = sqlx::query_as(
                "SELECT seq, log_genesis FROM checkpoints WHERE projection = 'postgres'",
            )
            .fetch_one(&self.pool)
            .await
            .map_err(|e| pg_error("reading the checkpoint", e))?;
            Ok(Prepared {
                checkpoint: seq as u64,
                log_genesis,
            })
        })
    }

    fn apply<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| pg_error("beginning a transaction", e))?;
            // The model is derived data: a crash may take the last commits back, but only whole (rows and
            // checkpoint together), and the runner applies them again. So no fsync wait per batch.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await
                .map_err(|e| pg_error("setting up the transaction", e))?;
            let (checkpoint, stored_genesis): (i64, Option<String>) = sqlx::query_as(
                "SELECT seq, log_genesis FROM checkpoints WHERE projection = 'postgres' FOR UPDATE",
            )
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| pg_error("locking the checkpoint", e))?;
            let genesis = self.genesis.lock().expect("genesis lock").clone();
            // The runner checked whose model this is before it fed it; checked again under the lock, so
            // that another log's node that took the same (then empty) generation meanwhile is never
            // written over.
            if let (Some(stored), Some(mine)) = (&stored_genesis, &genesis)
                && stored != mine
            {
                return Err(ProjectionError::Failed(format!(
                    "{} now holds the model of another event log (first event {stored}, this log's {mine}); \
                     nothing written",
                    self.schema
                )));
            }
            let checkpoint = checkpoint as u64;
            if checkpoint >= upto {
                return Ok(());
            }
            let fresh: Vec<&Envelope> = events.iter().filter(|e| e.seq > checkpoint).collect();
            let rows = {
                let dir = self.family.directory.read().expect("directory lock");
                Rows::fold(fresh.iter().copied(), &dir)
            };
            rows.write(&mut tx)
                .await
                .map_err(|e| pg_error("writing rows", e))?;
            sqlx::query(
                "UPDATE checkpoints SET seq = $1, log_genesis = COALESCE($2, log_genesis), updated_at = now() \
                 WHERE projection = 'postgres'",
            )
            .bind(upto as i64)
            .bind(genesis)
            .execute(&mut *tx)
            .await
            .map_err(|e| pg_error("moving the checkpoint", e))?;
            tx.commit()
                .await
                .map_err(|e| pg_error("committing a batch", e))?;
            Ok(())
        })
    }
}

/// The newest of a set of weighings or readings: by measured time, then by log sequence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Newest {
    measured_at_ns: i64,
    event_seq: u64,
}

#[derive(Debug, Default)]
struct TerminalDelta {
    readings: i64,
    suspects: i64,
    conflicts: i64,
    key_change: Option<(u64, bool)>,
    newest: Option<(Newest, u64, i64)>,
}

#[derive(Debug)]
struct ContainerDelta {
    enterprise_id: String,
    weighings: i64,
    newest: Newest,
    weight_mg: i64,
    terminal_id: String,
    waste_code: Option<String>,
    staged: Option<(Newest, &'static str)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KpiDelta {
    pub readings: i64,
    pub weighings: i64,
    pub weighed_mg: i64,
    pub storage_in_mg: i64,
    pub storage_out_mg: i64,
    pub transfer_out_mg: i64,
    pub transfer_in_mg: i64,
    pub suspect_readings: i64,
    pub anomalies: i64,
    pub manifests_opened: i64,
    pub manifests_received: i64,
    pub notes: i64,
}

/// A batch folded into rows, one statement per table. (Rows are tuples in the order of the columns they
/// fill, and become one array per column.)
#[allow(clippy::type_complexity)]
#[derive(Debug, Default)]
pub struct Rows {
    enterprises: Vec<(String, String, String, String, i64, i64, i64)>,
    terminals: Vec<(String, String, &'static str, i64, i32, bool, i64)>,
    terminal_deltas: BTreeMap<String, TerminalDelta>,
    containers: BTreeMap<String, ContainerDelta>,
    custody: Vec<(
        String,
        i64,
        &'static str,
        String,
        String,
        i64,
        i64,
        Option<String>,
    )>,
    manifests: Vec<ManifestRow>,
    progress: Vec<(String, ManifestStatus, i64, Option<i64>, i64)>,
    anomalies: Vec<AnomalyRow>,
    notes: Vec<(i64, String, Option<String>, String, String, i64)>,
    kpis: BTreeMap<(String, i32), KpiDelta>,
    /// (anomaly, state, note, by, at): in log order.
    handled: Vec<(String, &'static str, String, String, i64)>,
}

#[derive(Debug)]
struct ManifestRow {
    id: String,
    generator_id: String,
    receiver_id: String,
    waste_code: String,
    container_ids: String,
    declared_mg: i64,
    notes: Option<String>,
    seq: i64,
    at_ns: i64,
}

#[derive(Debug)]
struct AnomalyRow {
    id: String,
    seq: i64,
    kind: &'static str,
    severity: &'static str,
    subject: String,
    enterprise_id: Option<String>,
    province_code: Option<String>,
    terminal_id: Option<String>,
    container_id: Option<String>,
    manifest_id: Option<String>,
    previous_value: Option<i64>,
    current_value: Option<i64>,
    change_ratio_ppm: Option<i64>,
    limit_value: Option<i64>,
    cause_seq: i64,
    at_ns: i64,
    description: String,
}

impl AnomalyRow {
    fn of(
        a: &custodian_events::domain::AnomalyDetected,
        seq: i64,
        at_ns: i64,
        enterprise_id: Option<String>,
        province_code: Option<String>,
    ) -> AnomalyRow {
        AnomalyRow {
            id: hex::encode(a.anomaly_id),
            seq,
            kind: a.kind.name(),
            severity: a.severity.name(),
            subject: a.subject.clone(),
            enterprise_id,
            province_code,
            terminal_id: a.terminal_id.as_ref().map(ToString::to_string),
            container_id: a.container_id.as_ref().map(ToString::to_string),
            manifest_id: a.manifest_id.as_ref().map(ToString::to_string),
            previous_value: a.previous_value,
            current_value: a.current_value,
            change_ratio_ppm: a.change_ratio_ppm,
            limit_value: a.limit_value,
            cause_seq: a.cause_seq as i64,
            at_ns,
            description: anomaly_description(a),
        }
    }
}

fn kind_name(k: TerminalKind) -> &'static str {
    k.name()
}

fn stage_name(s: Stage) -> &'static str {
    s.name()
}

impl Rows {
    fn kpi(&mut self, enterprise: &str, day: i32) -> &mut KpiDelta {
        self.kpis.entry((enterprise.to_owned(), day)).or_default()
    }

    /// The `change`-th change of a terminal's keys, a revocation or a rotation: the latest change wins.
    fn key_change(&mut self, terminal: &TerminalId, change: u64, revoked: bool) {
        let d = self
            .terminal_deltas
            .entry(terminal.to_string())
            .or_default();
        if d.key_change.is_none_or(|(c, _)| change > c) {
            d.key_change = Some((change, revoked));
        }
    }

    /// Folds events (in log order) into rows.
    pub fn fold<'a>(events: impl Iterator<Item = &'a Envelope>, dir: &Directory) -> Rows {
        let mut rows = Rows::default();
        for env in events {
            let seq = env.seq as i64;
            let at = env.recorded_at_ns;
            match &env.event {
                Event::EnterpriseRegistered(e) => rows.enterprises.push((
                    e.id.to_string(),
                    pg_text(&e.name),
                    e.province_code.clone(),
                    e.city_code.clone(),
                    e.storage_capacity_mg,
                    seq,
                    at,
                )),
                Event::TerminalRegistered(t) => rows.terminals.push((
                    t.id.to_string(),
                    t.enterprise_id.to_string(),
                    kind_name(t.kind),
                    t.capacity_mg,
                    t.report_interval_s as i32,
                    t.public_key.is_some(),
                    seq,
                )),
                Event::TerminalKeyRotated(k) => rows.key_change(&k.terminal_id, k.change, false),
                Event::TerminalKeyRevoked(k) => rows.key_change(&k.terminal_id, k.change, true),
                Event::ReadingRecorded(r) => {
                    let terminal = r.terminal_id.to_string();
                    let newest = Newest {
                        measured_at_ns: r.measured_at_ns,
                        event_seq: env.seq,
                    };
                    let d = rows.terminal_deltas.entry(terminal.clone()).or_default();
                    d.readings += 1;
                    let skew_ms = (at - r.measured_at_ns).div_euclid(1_000_000);
                    if d.newest.as_ref().is_none_or(|(n, _, _)| newest > *n) {
                        d.newest = Some((newest.clone(), r.seq, skew_ms));
                    }
                    let Some(enterprise) = dir.enterprise_of(&terminal).map(str::to_owned) else {
                        tracing::warn!(terminal = %terminal, seq, "a reading of an unregistered terminal; left out of the KPIs");
                        continue;
                    };
                    let day = day_of(r.measured_at_ns);
                    let k = rows.kpi(&enterprise, day);
                    k.readings += 1;
                    if r.kind == ReadingKind::Weight {
                        k.weighings += 1;
                        k.weighed_mg += r.value;
                        match r.stage {
                            Some(Stage::StorageIn) => k.storage_in_mg += r.value,
                            Some(Stage::StorageOut) => k.storage_out_mg += r.value,
                            Some(Stage::TransferOut) => k.transfer_out_mg += r.value,
                            Some(Stage::TransferIn) => k.transfer_in_mg += r.value,
                            _ => {}
                        }
                        if let Some(c) = &r.container_id {
                            let c = c.to_string();
                            if let Some(stage) = r.stage {
                                rows.custody.push((
                                    c.clone(),
                                    seq,
                                    stage_name(stage),
                                    enterprise.clone(),
                                    terminal.clone(),
                                    r.value,
                                    r.measured_at_ns,
                                    r.manifest_id.as_ref().map(ToString::to_string),
                                ));
                            }
                            let staged = r.stage.map(|s| (newest.clone(), stage_name(s)));
                            match rows.containers.get_mut(&c) {
                                None => {
                                    rows.containers.insert(
                                        c,
                                        ContainerDelta {
                                            enterprise_id: enterprise,
                                            weighings: 1,
                                            newest,
                                            weight_mg: r.value,
                                            terminal_id: terminal,
                                            waste_code: r.waste_code.clone(),
                                            staged,
                                        },
                                    );
                                }
                                Some(cd) => {
                                    cd.weighings += 1;
                                    if newest > cd.newest {
                                        cd.newest = newest;
                                        cd.weight_mg = r.value;
                                        cd.terminal_id = terminal;
                                        cd.enterprise_id = enterprise;
                                        if r.waste_code.is_some() {
                                            cd.waste_code = r.waste_code.clone();
                                        }
                                    } else if cd.waste_code.is_none() {
                                        cd.waste_code = r.waste_code.clone();
                                    }
                                    if let Some(s) = staged
                                        && cd.staged.as_ref().is_none_or(|(n, _)| s.0 > *n)
                                    {
                                        cd.staged = Some(s);
                                    }
                                }
                            }
                        }
                    }
                }
                Event::ReadingConflicted(c) => {
                    rows.terminal_deltas
                        .entry(c.reading.terminal_id.to_string())
                        .or_default()
                        .conflicts += 1;
                }
                Event::ReadingSuspect(s) => {
                    let terminal = s.terminal_id.to_string();
                    rows.terminal_deltas
                        .entry(terminal.clone())
                        .or_default()
                        .suspects += 1;
                    if let Some(e) = dir.enterprise_of(&terminal).map(str::to_owned) {
                        rows.kpi(&e, day_of(at)).suspect_readings += 1;
                    }
                }
                // Reported by an edge ahead of its backlog: shown at once; the anomaly the platform derives
                // later has the same id and finds the row there. Counted in the KPIs when derived.
                Event::AnomalyReported(r) => {
                    let (enterprise, province) = dir.scope_of_anomaly(&r.anomaly);
                    rows.anomalies.push(AnomalyRow {
                        cause_seq: 0,
                        description: format!(
                            "{} (reported by edge {})",
                            anomaly_description(&r.anomaly),
                            r.edge_id
                        ),
                        ..AnomalyRow::of(&r.anomaly, seq, at, enterprise, province)
                    });
                }
                Event::AnomalyDetected(a) => {
                    let (enterprise, province) = dir.scope_of_anomaly(a);
                    if let Some(e) = &enterprise {
                        rows.kpi(e, day_of(at)).anomalies += 1;
                    }
                    rows.anomalies
                        .push(AnomalyRow::of(a, seq, at, enterprise, province));
                }
                Event::ManifestOpened(m) => {
                    rows.kpi(m.generator_id.as_str(), day_of(at))
                        .manifests_opened += 1;
                    rows.manifests.push(ManifestRow {
                        id: m.id.to_string(),
                        generator_id: m.generator_id.to_string(),
                        receiver_id: m.receiver_id.to_string(),
                        waste_code: m.waste_code.clone(),
                        container_ids: m
                            .container_ids
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        declared_mg: m.declared_mg,
                        notes: m.notes.as_deref().map(pg_text),
                        seq,
                        at_ns: at,
                    });
                }
                Event::ManifestProgressed(p) => {
                    rows.progress.push((
                        p.manifest_id.to_string(),
                        p.status,
                        p.dispatched_mg,
                        p.received_mg,
                        at,
                    ));
                }
                Event::NoteFiled(n) => {
                    rows.kpi(n.enterprise_id.as_str(), day_of(at)).notes += 1;
                    rows.notes.push((
                        seq,
                        n.enterprise_id.to_string(),
                        n.container_id.as_ref().map(ToString::to_string),
                        pg_text(&n.author),
                        pg_text(&n.text),
                        n.filed_at_ns,
                    ));
                }
                Event::UploadSigned(_)
                | Event::DataKeyIssued(_)
                | Event::ClockTicked(_)
                | Event::TokenIssued(_)
                | Event::TokenRevoked(_)
                | Event::EdgeRegistered(_) => {}
                Event::AnomalyHandled(h) => rows.handled.push((
                    h.anomaly_id.clone(),
                    h.state.name(),
                    pg_text(&h.note),
                    h.by.clone(),
                    h.at_ns,
                )),
            }
        }
        rows
    }

    /// Writes the rows: one multi-row statement per table (one per manifest, anomaly and note).
    pub async fn write(mut self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        if !self.enterprises.is_empty() {
            let q = sqlx::query(
                "INSERT INTO enterprises (id, name, province_code, city_code, storage_capacity_mg, \
                 registered_seq, registered_at) \
                 SELECT a, b, c, d, e, f, ns_to_ts(g) FROM UNNEST($1::text[], $2::text[], $3::text[], \
                 $4::text[], $5::int8[], $6::int8[], $7::int8[]) AS t(a, b, c, d, e, f, g) \
                 ON CONFLICT (id) DO NOTHING",
            );
            bind_rows(q, std::mem::take(&mut self.enterprises))
                .execute(&mut *tx)
                .await?;
        }
        if !self.terminals.is_empty() {
            let q = sqlx::query(
                "INSERT INTO terminals (id, enterprise_id, kind, capacity_mg, report_interval_s, \
                 signs_uploads, registered_seq) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[], \
                 $6::bool[], $7::int8[]) ON CONFLICT (id) DO NOTHING",
            );
            bind_rows(q, std::mem::take(&mut self.terminals))
                .execute(&mut *tx)
                .await?;
        }
        if !self.terminal_deltas.is_empty() {
            let rows: Vec<_> = std::mem::take(&mut self.terminal_deltas)
                .into_iter()
                .map(|(id, d)| {
                    let newest = d.newest.as_ref();
                    (
                        id,
                        d.readings,
                        d.suspects,
                        d.conflicts,
                        d.key_change.map(|(c, _)| c as i64),
                        d.key_change.map(|(_, r)| r),
                        newest.map(|(nw, _, _)| nw.event_seq as i64),
                        newest.map(|(_, reading_seq, _)| *reading_seq as i64),
                        newest.map(|(nw, _, _)| nw.measured_at_ns),
                        newest.map(|(_, _, skew)| *skew),
                    )
                })
                .collect();
            let q = sqlx::query(
                "UPDATE terminals t SET \
                   readings = t.readings + u.n, suspect_readings = t.suspect_readings + u.s, \
                   conflicts = t.conflicts + u.cf, \
                   key_changes = CASE WHEN u.kc > t.key_changes THEN u.kc ELSE t.key_changes END, \
                   key_revoked = CASE WHEN u.kc > t.key_changes THEN u.kr ELSE t.key_revoked END, \
                   last_event_seq = CASE WHEN u.m IS NOT NULL AND (t.last_measured_at IS NULL OR \
                     (ns_to_ts(u.m), u.es) > (t.last_measured_at, t.last_event_seq)) THEN u.es ELSE t.last_event_seq END, \
                   last_reading_seq = CASE WHEN u.m IS NOT NULL AND (t.last_measured_at IS NULL OR \
                     (ns_to_ts(u.m), u.es) > (t.last_measured_at, t.last_event_seq)) THEN u.rs ELSE t.last_reading_seq END, \
                   last_clock_skew_ms = CASE WHEN u.m IS NOT NULL AND (t.last_measured_at IS NULL OR \
                     (ns_to_ts(u.m), u.es) > (t.last_measured_at, t.last_event_seq)) THEN u.sk ELSE t.last_clock_skew_ms END, \
                   last_measured_at = CASE WHEN u.m IS NOT NULL AND (t.last_measured_at IS NULL OR \
                     (ns_to_ts(u.m), u.es) > (t.last_measured_at, t.last_event_seq)) THEN ns_to_ts(u.m) ELSE t.last_measured_at END \
                 FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::bool[], \
                   $7::int8[], $8::int8[], $9::int8[], $10::int8[]) AS u(id, n, s, cf, kc, kr, es, rs, m, sk) \
                 WHERE t.id = u.id",
            );
            bind_rows(q, rows).execute(&mut *tx).await?;
        }
        if !self.containers.is_empty() {
            let rows: Vec<_> = std::mem::take(&mut self.containers)
                .into_iter()
                .map(|(id, c)| {
                    let staged = c.staged.as_ref();
                    (
                        id,
                        c.enterprise_id,
                        c.waste_code,
                        staged.map(|(_, stage)| *stage),
                        staged.map(|(nw, _)| nw.measured_at_ns),
                        staged.map(|(nw, _)| nw.event_seq as i64),
                        c.weight_mg,
                        c.newest.measured_at_ns,
                        c.newest.event_seq as i64,
                        c.terminal_id,
                        c.weighings,
                    )
                })
                .collect();
            let q = sqlx::query(
                "INSERT INTO containers AS c (id, enterprise_id, waste_code, stage, stage_measured_at, \
                   stage_event_seq, last_weight_mg, last_measured_at, last_event_seq, last_terminal_id, weighings) \
                 SELECT id, ent, wc, st, ns_to_ts(sm), ses, w, ns_to_ts(m), es, term, n FROM UNNEST( \
                   $1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], \
                   $8::int8[], $9::int8[], $10::text[], $11::int8[]) \
                   AS u(id, ent, wc, st, sm, ses, w, m, es, term, n) \
                 ON CONFLICT (id) DO UPDATE SET \
                   weighings = c.weighings + EXCLUDED.weighings, \
                   waste_code = CASE WHEN (EXCLUDED.last_measured_at, EXCLUDED.last_event_seq) > \
                     (c.last_measured_at, c.last_event_seq) THEN COALESCE(EXCLUDED.waste_code, c.waste_code) \
                     ELSE COALESCE(c.waste_code, EXCLUDED.waste_code) END, \
                   enterprise_id = CASE WHEN (EXCLUDED.last_measured_at, EXCLUDED.last_event_seq) > \
                     (c.last_measured_at, c.last_event_seq) THEN EXCLUDED.enterprise_id ELSE c.enterprise_id END, \
                   last_weight_mg = CASE WHEN (EXCLUDED.last_measured_at, EXCLUDED.last_event_seq) > \
                     (c.last_measured_at, c.last_event_seq) THEN EXCLUDED.last_weight_mg ELSE c.last_weight_mg END, \
                   last_terminal_id = CASE WHEN (EXCLUDED.last_measured_at, EXCLUDED.last_event_seq) > \
                     (c.last_measured_at, c.last_event_seq) THEN EXCLUDED.last_terminal_id ELSE c.last_terminal_id END, \
                   last_event_seq = CASE WHEN (EXCLUDED.last_measured_at, EXCLUDED.last_event_seq) > \
                     (c.last_measured_at, c.last_event_seq) THEN EXCLUDED.last_event_seq ELSE c.last_event_seq END, \
                   last_measured_at = GREATEST(EXCLUDED.last_measured_at, c.last_measured_at), \
                   stage = CASE WHEN EXCLUDED.stage IS NOT NULL AND (c.stage IS NULL OR \
                     (EXCLUDED.stage_measured_at, EXCLUDED.stage_event_seq) > (c.stage_measured_at, c.stage_event_seq)) \
                     THEN EXCLUDED.stage ELSE c.stage END, \
                   stage_event_seq = CASE WHEN EXCLUDED.stage IS NOT NULL AND (c.stage IS NULL OR \
                     (EXCLUDED.stage_measured_at, EXCLUDED.stage_event_seq) > (c.stage_measured_at, c.stage_event_seq)) \
                     THEN EXCLUDED.stage_event_seq ELSE c.stage_event_seq END, \
                   stage_measured_at = CASE WHEN EXCLUDED.stage IS NOT NULL AND (c.stage IS NULL OR \
                     (EXCLUDED.stage_measured_at, EXCLUDED.stage_event_seq) > (c.stage_measured_at, c.stage_event_seq)) \
                     THEN EXCLUDED.stage_measured_at ELSE c.stage_measured_at END",
            );
            bind_rows(q, rows).execute(&mut *tx).await?;
        }
        if !self.custody.is_empty() {
            let q = sqlx::query(
                "INSERT INTO custody (container_id, event_seq, stage, enterprise_id, terminal_id, weight_mg, \
                   measured_at, manifest_id) \
                 SELECT a, b, c, d, e, f, ns_to_ts(g), h FROM UNNEST($1::text[], $2::int8[], $3::text[], \
                   $4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[]) AS u(a, b, c, d, e, f, g, h) \
                 ON CONFLICT DO NOTHING",
            );
            bind_rows(q, std::mem::take(&mut self.custody))
                .execute(&mut *tx)
                .await?;
        }
        for m in std::mem::take(&mut self.manifests) {
            sqlx::query(
                "INSERT INTO manifests (id, generator_id, receiver_id, waste_code, container_ids, declared_mg, \
                   notes, status, opened_seq, opened_at) \
                 VALUES ($1, $2, $3, $4, string_to_array($5, ','), $6, $7, 'opened', $8, ns_to_ts($9)) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(m.id)
            .bind(m.generator_id)
            .bind(m.receiver_id)
            .bind(m.waste_code)
            .bind(m.container_ids)
            .bind(m.declared_mg)
            .bind(m.notes)
            .bind(m.seq)
            .bind(m.at_ns)
            .execute(&mut *tx)
            .await?;
        }
        for (id, status, dispatched_mg, received_mg, at) in std::mem::take(&mut self.progress) {
            match status {
                ManifestStatus::Dispatched => {
                    sqlx::query(
                        "UPDATE manifests SET dispatched_mg = $2, dispatched_at = ns_to_ts($3), \
                           status = CASE WHEN status = 'opened' THEN 'dispatched' ELSE status END \
                         WHERE id = $1",
                    )
                    .bind(id)
                    .bind(dispatched_mg)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                ManifestStatus::Received => {
                    // A received manifest counts for its receiver on the day it was received.
                    let receiver: Option<String> = sqlx::query_scalar(
                        "UPDATE manifests SET dispatched_mg = $2, received_mg = $3, received_at = ns_to_ts($4), \
                           status = 'received' WHERE id = $1 RETURNING receiver_id",
                    )
                    .bind(id)
                    .bind(dispatched_mg)
                    .bind(received_mg)
                    .bind(at)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(r) = receiver {
                        self.kpi(&r, day_of(at)).manifests_received += 1;
                    }
                }
            }
        }
        {
            for a in std::mem::take(&mut self.anomalies) {
                sqlx::query(
                    "INSERT INTO anomalies (anomaly_id, event_seq, kind, severity, subject, enterprise_id, \
                       province_code, terminal_id, container_id, manifest_id, previous_value, current_value, \
                       change_ratio_ppm, limit_value, cause_seq, detected_at, description) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, ns_to_ts($16), $17) \
                     ON CONFLICT (anomaly_id) DO NOTHING",
                )
                .bind(a.id)
                .bind(a.seq)
                .bind(a.kind)
                .bind(a.severity)
                .bind(a.subject)
                .bind(a.enterprise_id)
                .bind(a.province_code)
                .bind(a.terminal_id)
                .bind(a.container_id)
                .bind(a.manifest_id)
                .bind(a.previous_value)
                .bind(a.current_value)
                .bind(a.change_ratio_ppm)
                .bind(a.limit_value)
                .bind(a.cause_seq)
                .bind(a.at_ns)
                .bind(a.description)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (seq, enterprise, container, author, text, at) in std::mem::take(&mut self.notes) {
            sqlx::query(
                "INSERT INTO notes (event_seq, enterprise_id, container_id, author, text, filed_at) \
                 VALUES ($1, $2, $3, $4, $5, ns_to_ts($6)) ON CONFLICT DO NOTHING",
            )
            .bind(seq)
            .bind(enterprise)
            .bind(container)
            .bind(author)
            .bind(text)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        // A resolution is final; an acknowledgement moves an open anomaly only.
        for (id, state, note, by, at) in std::mem::take(&mut self.handled) {
            sqlx::query(
                "UPDATE anomalies SET state = $2, state_note = $3, state_by = $4, state_at = ns_to_ts($5) \
                 WHERE anomaly_id = $1 AND (state = 'open' OR $2 = 'resolved') AND state <> 'resolved'",
            )
            .bind(id)
            .bind(state)
            .bind(note)
            .bind(by)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        let mut kpis = std::mem::take(&mut self.kpis);
        if !kpis.is_empty() {
            let mut cols: Vec<Vec<i64>> = vec![Vec::new(); 12];
            let (mut ents, mut days) = (Vec::new(), Vec::new());
            for ((e, d), k) in std::mem::take(&mut kpis) {
                ents.push(e);
                days.push(d);
                for (i, v) in [
                    k.readings,
                    k.weighings,
                    k.weighed_mg,
                    k.storage_in_mg,
                    k.storage_out_mg,
                    k.transfer_out_mg,
                    k.transfer_in_mg,
                    k.suspect_readings,
                    k.anomalies,
                    k.manifests_opened,
                    k.manifests_received,
                    k.notes,
                ]
                .into_iter()
                .enumerate()
                {
                    cols[i].push(v);
                }
            }
            let mut q = sqlx::query(
                "INSERT INTO daily_kpis AS k (enterprise_id, day, readings, weighings, weighed_mg, storage_in_mg, \
                   storage_out_mg, transfer_out_mg, transfer_in_mg, suspect_readings, anomalies, \
                   manifests_opened, manifests_received, notes) \
                 SELECT e, DATE '1970-01-01' + d, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12 FROM UNNEST( \
                   $1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], \
                   $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[]) \
                   AS u(e, d, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12) \
                 ON CONFLICT (enterprise_id, day) DO UPDATE SET \
                   readings = k.readings + EXCLUDED.readings, weighings = k.weighings + EXCLUDED.weighings, \
                   weighed_mg = k.weighed_mg + EXCLUDED.weighed_mg, \
                   storage_in_mg = k.storage_in_mg + EXCLUDED.storage_in_mg, \
                   storage_out_mg = k.storage_out_mg + EXCLUDED.storage_out_mg, \
                   transfer_out_mg = k.transfer_out_mg + EXCLUDED.transfer_out_mg, \
                   transfer_in_mg = k.transfer_in_mg + EXCLUDED.transfer_in_mg, \
                   suspect_readings = k.suspect_readings + EXCLUDED.suspect_readings, \
                   anomalies = k.anomalies + EXCLUDED.anomalies, \
                   manifests_opened = k.manifests_opened + EXCLUDED.manifests_opened, \
                   manifests_received = k.manifests_received + EXCLUDED.manifests_received, \
                   notes = k.notes + EXCLUDED.notes",
            )
            .bind(ents)
            .bind(days);
            for c in cols {
                q = q.bind(c);
            }
            q.execute(&mut *tx).await?;
        }
        Ok(())
    }
}

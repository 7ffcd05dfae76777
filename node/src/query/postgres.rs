//! The SQL reads of the PostgreSQL read model (its tables are written by
//! `custodian_projections::postgres`). Each takes the pool and, where a row of another scope could be
//! read, the caller's scope, which is bound into the query (`Scope::binds`: `$1` a province, `$2` an
//! enterprise, either `NULL`): a row out of scope is never read. Masses are milligrams, as stored; the
//! callers convert. Instants come as PostgreSQL writes them (`…::text`, the API's) and, where a page
//! shows them, as China Standard Time wall-clock text (`…_cst`, `YYYY-MM-DD HH24:MI:SS`).

use crate::state::Reads;
use crate::tokens::Scope;

type Pool = sqlx::PgPool;
type Result<T> = std::result::Result<T, sqlx::Error>;

/// The live PostgreSQL model's pool, if it is running.
pub fn pool(st: &Reads) -> Option<Pool> {
    st.models.live_model(
        "postgres",
        |p: &custodian_projections::postgres::PgProjection| Some(p.pool().clone()),
    )
}

/// `$1`/`$2` (the scope) on a table aliased `e` that is `enterprises`.
const IN_SCOPE_E: &str =
    "($1::text IS NULL OR e.province_code = $1) AND ($2::text IS NULL OR e.id = $2)";

/// `$1`/`$2` (the scope) on `anomalies`.
const IN_SCOPE_ANOMALY: &str =
    "($1::text IS NULL OR province_code = $1) AND ($2::text IS NULL OR enterprise_id = $2)";

/// An instant as the pages show it: China Standard Time, `YYYY-MM-DD HH24:MI:SS`.
fn cst(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS')")
}

/// Days since 1970-01-01, as the KPI query binds a day.
fn epoch_days(d: time::Date) -> i32 {
    (d - time::macros::date!(1970 - 01 - 01)).whole_days() as i32
}

const ENTERPRISE_COLUMNS: &str =
    "id, name, province_code, city_code, storage_capacity_mg, registered_seq";

/// A registered enterprise.
#[derive(sqlx::FromRow)]
pub struct Enterprise {
    pub id: String,
    pub name: String,
    pub province_code: String,
    pub city_code: String,
    pub storage_capacity_mg: i64,
    pub registered_seq: i64,
}

/// What a list of enterprises is narrowed to, besides the scope.
#[derive(Default)]
pub struct EnterpriseFilter<'a> {
    pub province_code: Option<&'a str>,
    pub city_code: Option<&'a str>,
    /// Only ids after this one (a page's cursor).
    pub after: Option<&'a str>,
}

/// The enterprises in `scope` that `f` keeps, by id, at most `limit`.
pub async fn enterprises(
    pool: &Pool,
    scope: &Scope,
    f: &EnterpriseFilter<'_>,
    limit: i64,
) -> Result<Vec<Enterprise>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTERPRISE_COLUMNS} FROM enterprises \
         WHERE ($1::text IS NULL OR province_code = $1) AND ($2::text IS NULL OR id = $2) \
           AND ($3::text IS NULL OR province_code = $3) AND ($4::text IS NULL OR city_code = $4) \
           AND ($5::text IS NULL OR id > $5) \
         ORDER BY id LIMIT $6"
    )))
    .bind(sp)
    .bind(se)
    .bind(f.province_code)
    .bind(f.city_code)
    .bind(f.after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Enterprise `id`, if it is registered and in `scope`: the one check before per-enterprise reads.
pub async fn enterprise(pool: &Pool, scope: &Scope, id: &str) -> Result<Option<Enterprise>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTERPRISE_COLUMNS} FROM enterprises WHERE id = $3 \
         AND ($1::text IS NULL OR province_code = $1) AND ($2::text IS NULL OR id = $2)"
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// An enterprise with what is in its storage and how many of its anomalies are not resolved.
#[derive(sqlx::FromRow)]
pub struct EnterpriseFigures {
    #[sqlx(flatten)]
    pub enterprise: Enterprise,
    pub in_storage_mg: i64,
    pub open: i64,
}

/// Enterprise `id` and its figures, if it is registered and in `scope`.
pub async fn enterprise_figures(
    pool: &Pool,
    scope: &Scope,
    id: &str,
) -> Result<Option<EnterpriseFigures>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ENTERPRISE_COLUMNS}, \
           (SELECT coalesce(sum(last_weight_mg), 0)::int8 FROM containers c \
              WHERE c.enterprise_id = e.id AND c.stage = 'storage_in') AS in_storage_mg, \
           (SELECT count(*) FROM anomalies a WHERE a.enterprise_id = e.id AND a.state <> 'resolved') AS open \
         FROM enterprises e WHERE id = $3 \
           AND ($1::text IS NULL OR province_code = $1) AND ($2::text IS NULL OR id = $2)"
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// An enterprise of a province's list, with how many of its anomalies are not resolved.
#[derive(sqlx::FromRow)]
pub struct ProvinceEnterprise {
    pub id: String,
    pub name: String,
    pub city_code: Option<String>,
    pub open: i64,
}

/// The enterprises of province `code` in `scope`, by id.
pub async fn province_enterprises(
    pool: &Pool,
    scope: &Scope,
    code: &str,
) -> Result<Vec<ProvinceEnterprise>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT e.id, e.name, e.city_code, \
           (SELECT count(*) FROM anomalies a WHERE a.enterprise_id = e.id AND a.state <> 'resolved') AS open \
         FROM enterprises e WHERE e.province_code = $3 AND {IN_SCOPE_E} ORDER BY e.id"
    )))
    .bind(sp)
    .bind(se)
    .bind(code)
    .fetch_all(pool)
    .await
}

/// A day's KPIs of an enterprise (a China Standard Time day, `YYYY-MM-DD`).
#[derive(sqlx::FromRow)]
pub struct DailyKpis {
    pub day: String,
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

/// The daily KPIs of `enterprise` (one a scoped read returned) from `from` to `to`, both included, oldest
/// first (at most 3,660 days).
pub async fn daily_kpis(
    pool: &Pool,
    enterprise: &str,
    from: Option<time::Date>,
    to: Option<time::Date>,
) -> Result<Vec<DailyKpis>> {
    sqlx::query_as(
        "SELECT day::text AS day, readings, weighings, weighed_mg, storage_in_mg, storage_out_mg, \
           transfer_out_mg, transfer_in_mg, suspect_readings, anomalies, manifests_opened, \
           manifests_received, notes FROM daily_kpis \
         WHERE enterprise_id = $1 AND ($2::int4 IS NULL OR day >= DATE '1970-01-01' + $2) \
           AND ($3::int4 IS NULL OR day <= DATE '1970-01-01' + $3) ORDER BY day LIMIT 3660",
    )
    .bind(enterprise)
    .bind(from.map(epoch_days))
    .bind(to.map(epoch_days))
    .fetch_all(pool)
    .await
}

/// An anomaly as the read model keeps it.
#[derive(sqlx::FromRow)]
pub struct Anomaly {
    pub anomaly_id: String,
    pub event_seq: i64,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub enterprise_id: Option<String>,
    pub province_code: Option<String>,
    pub terminal_id: Option<String>,
    pub container_id: Option<String>,
    pub manifest_id: Option<String>,
    pub previous_value: Option<i64>,
    pub current_value: Option<i64>,
    pub change_ratio_ppm: Option<i64>,
    pub limit_value: Option<i64>,
    pub cause_seq: i64,
    pub detected_at: String,
    pub detected_cst: Option<String>,
    pub description: String,
    pub state: String,
    pub state_note: Option<String>,
    pub state_by: Option<String>,
    pub state_at: Option<String>,
    pub state_at_cst: Option<String>,
}

fn anomaly_columns() -> String {
    format!(
        "anomaly_id, event_seq, kind, severity, subject, enterprise_id, province_code, terminal_id, \
         container_id, manifest_id, previous_value, current_value, change_ratio_ppm, limit_value, \
         cause_seq, detected_at::text AS detected_at, {} AS detected_cst, description, state, \
         state_note, state_by, state_at::text AS state_at, {} AS state_at_cst",
        cst("detected_at"),
        cst("state_at"),
    )
}

/// What a list of anomalies is narrowed to, besides the scope.
#[derive(Default)]
pub struct AnomalyFilter<'a> {
    pub kind: Option<&'a str>,
    pub state: Option<&'a str>,
    pub province_code: Option<&'a str>,
    pub enterprise_id: Option<&'a str>,
    /// Detected at or after (Unix ns).
    pub from_ns: Option<i64>,
    /// Detected before (Unix ns).
    pub to_ns: Option<i64>,
    /// Only event sequences below this one (a page's cursor).
    pub before_seq: Option<i64>,
}

/// The anomalies in `scope` that `f` keeps, newest (highest sequence) first, at most `limit`.
pub async fn anomalies(
    pool: &Pool,
    scope: &Scope,
    f: &AnomalyFilter<'_>,
    limit: i64,
) -> Result<Vec<Anomaly>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM anomalies \
         WHERE {IN_SCOPE_ANOMALY} \
           AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR province_code = $4) \
           AND ($5::text IS NULL OR enterprise_id = $5) \
           AND ($6::int8 IS NULL OR detected_at >= ns_to_ts($6)) \
           AND ($7::int8 IS NULL OR detected_at < ns_to_ts($7)) \
           AND ($8::int8 IS NULL OR event_seq < $8) AND ($10::text IS NULL OR state = $10) \
         ORDER BY event_seq DESC LIMIT $9",
        anomaly_columns()
    )))
    .bind(sp)
    .bind(se)
    .bind(f.kind)
    .bind(f.province_code)
    .bind(f.enterprise_id)
    .bind(f.from_ns)
    .bind(f.to_ns)
    .bind(f.before_seq)
    .bind(limit)
    .bind(f.state)
    .fetch_all(pool)
    .await
}

/// The alarms list: the anomalies in `scope` (only those not resolved unless `all`), the latest detected
/// first, at most 500.
pub async fn alarms(pool: &Pool, scope: &Scope, all: bool) -> Result<Vec<Anomaly>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM anomalies WHERE {IN_SCOPE_ANOMALY} AND ($3 OR state <> 'resolved') \
         ORDER BY detected_at DESC, anomaly_id LIMIT 500",
        anomaly_columns()
    )))
    .bind(sp)
    .bind(se)
    .bind(all)
    .fetch_all(pool)
    .await
}

/// Anomaly `id`, if it is in `scope`.
pub async fn anomaly(pool: &Pool, scope: &Scope, id: &str) -> Result<Option<Anomaly>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM anomalies WHERE anomaly_id = $3 AND {IN_SCOPE_ANOMALY}",
        anomaly_columns()
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A container as the read model keeps it.
#[derive(sqlx::FromRow)]
pub struct Container {
    pub id: String,
    pub enterprise_id: String,
    pub waste_code: Option<String>,
    pub stage: Option<String>,
    pub last_weight_mg: i64,
    pub last_measured_at: String,
    pub weighings: i64,
}

/// Container `id`, if its enterprise is in `scope`.
pub async fn container(pool: &Pool, scope: &Scope, id: &str) -> Result<Option<Container>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT c.id, c.enterprise_id, c.waste_code, c.stage, c.last_weight_mg, \
           c.last_measured_at::text AS last_measured_at, c.weighings FROM containers c \
           JOIN enterprises e ON e.id = c.enterprise_id \
         WHERE c.id = $3 AND {IN_SCOPE_E}"
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// One step of a container's custody chain.
#[derive(sqlx::FromRow)]
pub struct CustodyStep {
    pub event_seq: i64,
    pub stage: String,
    pub terminal_id: String,
    pub weight_mg: i64,
    pub measured_at: String,
    pub measured_cst: Option<String>,
    pub manifest_id: Option<String>,
}

/// The custody chain of container `c` (one a scoped read returned) at its enterprise, in time order, at
/// most `limit` steps.
pub async fn custody(pool: &Pool, c: &Container, limit: i64) -> Result<Vec<CustodyStep>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT event_seq, stage, terminal_id, weight_mg, measured_at::text AS measured_at, \
           {} AS measured_cst, manifest_id FROM custody WHERE container_id = $1 AND enterprise_id = $2 \
         ORDER BY measured_at, event_seq LIMIT $3",
        cst("measured_at")
    )))
    .bind(&c.id)
    .bind(&c.enterprise_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A terminal, with its newest reading's instant (China Standard Time).
#[derive(sqlx::FromRow)]
pub struct Terminal {
    pub id: String,
    pub enterprise_id: String,
    pub last_cst: Option<String>,
}

/// Terminal `id`, if its enterprise is in `scope`.
pub async fn terminal(pool: &Pool, scope: &Scope, id: &str) -> Result<Option<Terminal>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t.id, t.enterprise_id, {} AS last_cst \
         FROM terminals t JOIN enterprises e ON e.id = t.enterprise_id \
         WHERE t.id = $3 AND {IN_SCOPE_E}",
        cst("t.last_measured_at")
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A terminal of an enterprise's list.
#[derive(sqlx::FromRow)]
pub struct TerminalStatus {
    pub id: String,
    pub kind: String,
    pub readings: i64,
    pub last_cst: Option<String>,
    /// It reported within three of its intervals (by `now_ns`).
    pub online: bool,
}

/// The terminals of `enterprise` (one a scoped read returned), by id, at most 1,000.
pub async fn enterprise_terminals(
    pool: &Pool,
    enterprise: &str,
    now_ns: i64,
) -> Result<Vec<TerminalStatus>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, kind, readings, {} AS last_cst, \
           coalesce(last_measured_at >= ns_to_ts($2) - 3 * report_interval_s * INTERVAL '1 second', false) AS online \
         FROM terminals WHERE enterprise_id = $1 ORDER BY id LIMIT 1000",
        cst("last_measured_at")
    )))
    .bind(enterprise)
    .bind(now_ns)
    .fetch_all(pool)
    .await
}

/// A container in an enterprise's storage.
#[derive(sqlx::FromRow)]
pub struct StoredContainer {
    pub id: String,
    pub waste_code: Option<String>,
    pub stage: Option<String>,
    pub last_weight_mg: i64,
    pub last_cst: Option<String>,
}

/// The containers in the storage of `enterprise` (one a scoped read returned), by id, at most 1,000.
pub async fn stored_containers(pool: &Pool, enterprise: &str) -> Result<Vec<StoredContainer>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, waste_code, stage, last_weight_mg, {} AS last_cst \
         FROM containers WHERE enterprise_id = $1 AND stage = 'storage_in' ORDER BY id LIMIT 1000",
        cst("last_measured_at")
    )))
    .bind(enterprise)
    .fetch_all(pool)
    .await
}

/// A transfer order, and which of its parties the reader's scope holds.
#[derive(sqlx::FromRow)]
pub struct Manifest {
    pub id: String,
    pub generator_id: String,
    pub receiver_id: String,
    pub waste_code: String,
    pub container_ids: Vec<String>,
    pub declared_mg: i64,
    pub notes: Option<String>,
    pub status: String,
    pub dispatched_mg: Option<i64>,
    pub received_mg: Option<i64>,
    pub opened_at: String,
    pub dispatched_at: Option<String>,
    pub received_at: Option<String>,
    pub opened_cst: Option<String>,
    pub dispatched_cst: Option<String>,
    pub received_cst: Option<String>,
    pub generator_visible: bool,
    pub receiver_visible: bool,
}

/// Manifest `id`, if its generator or its receiver is in `scope`.
pub async fn manifest(pool: &Pool, scope: &Scope, id: &str) -> Result<Option<Manifest>> {
    let (sp, se) = scope.binds();
    let visible = |party: &str| {
        format!("EXISTS (SELECT 1 FROM enterprises e WHERE e.id = {party} AND {IN_SCOPE_E})")
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM (SELECT m.id, m.generator_id, m.receiver_id, m.waste_code, m.container_ids, \
           m.declared_mg, m.notes, m.status, m.dispatched_mg, m.received_mg, \
           m.opened_at::text AS opened_at, m.dispatched_at::text AS dispatched_at, \
           m.received_at::text AS received_at, {} AS opened_cst, {} AS dispatched_cst, \
           {} AS received_cst, {} AS generator_visible, {} AS receiver_visible \
         FROM manifests m WHERE m.id = $3) m WHERE generator_visible OR receiver_visible",
        cst("m.opened_at"),
        cst("m.dispatched_at"),
        cst("m.received_at"),
        visible("m.generator_id"),
        visible("m.receiver_id"),
    )))
    .bind(sp)
    .bind(se)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The landing figures of a scope (`GET /v1/overview` and the dashboard's overview).
pub struct OverviewCounts {
    pub enterprises: i64,
    pub terminals: i64,
    /// Terminals that reported within three of their intervals.
    pub online: i64,
    pub in_storage_mg: i64,
    /// Open (unresolved) anomalies per kind, by kind.
    pub open_by_kind: Vec<(String, i64)>,
}

#[derive(sqlx::FromRow)]
struct Counts {
    enterprises: i64,
    terminals: i64,
    online: i64,
    in_storage_mg: i64,
}

/// The landing figures of `scope` by `now_ns`.
pub async fn overview_counts(pool: &Pool, scope: &Scope, now_ns: i64) -> Result<OverviewCounts> {
    let (sp, se) = scope.binds();
    let scoped = IN_SCOPE_E;
    let counts: Counts = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT \
           (SELECT count(*) FROM enterprises e WHERE {scoped}) AS enterprises, \
           (SELECT count(*) FROM terminals t JOIN enterprises e ON e.id = t.enterprise_id WHERE {scoped}) AS terminals, \
           (SELECT count(*) FROM terminals t JOIN enterprises e ON e.id = t.enterprise_id WHERE {scoped} \
              AND t.last_measured_at >= ns_to_ts($3) - 3 * t.report_interval_s * INTERVAL '1 second') AS online, \
           (SELECT coalesce(sum(c.last_weight_mg), 0)::int8 FROM containers c JOIN enterprises e ON e.id = c.enterprise_id \
              WHERE {scoped} AND c.stage = 'storage_in') AS in_storage_mg"
    )))
    .bind(&sp)
    .bind(&se)
    .bind(now_ns)
    .fetch_one(pool)
    .await?;
    let open_by_kind = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT kind, count(*) AS n FROM anomalies WHERE {IN_SCOPE_ANOMALY} AND state <> 'resolved' \
         GROUP BY kind ORDER BY kind"
    )))
    .bind(&sp)
    .bind(&se)
    .fetch_all(pool)
    .await?;
    Ok(OverviewCounts {
        enterprises: counts.enterprises,
        terminals: counts.terminals,
        online: counts.online,
        in_storage_mg: counts.in_storage_mg,
        open_by_kind,
    })
}

/// A province's figures in a scope.
#[derive(sqlx::FromRow)]
pub struct ProvinceFigures {
    pub code: String,
    /// Its enterprises in the scope.
    pub enterprises: i64,
    /// Its anomalies in the scope that are not resolved.
    pub open: i64,
}

/// The figures of every province that has enterprises, in `scope`.
pub async fn province_figures(pool: &Pool, scope: &Scope) -> Result<Vec<ProvinceFigures>> {
    let (sp, se) = scope.binds();
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT p.code, \
           (SELECT count(*) FROM enterprises e WHERE e.province_code = p.code AND {IN_SCOPE_E}) AS enterprises, \
           (SELECT count(*) FROM anomalies WHERE province_code = p.code AND {IN_SCOPE_ANOMALY} \
              AND state <> 'resolved') AS open \
         FROM (SELECT DISTINCT province_code AS code FROM enterprises) p"
    )))
    .bind(&sp)
    .bind(&se)
    .fetch_all(pool)
    .await
}

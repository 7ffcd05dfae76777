//! Property: handing a read model the same events again — a whole batch twice, or overlapping batches, as
//! after a failure between writing and acknowledging — leaves it exactly as applying every event once.
//! Checked against the real PostgreSQL (127.0.0.1:5432) and InfluxDB (127.0.0.1:8086) that
//! `scripts/services up` starts. PROPTEST_CASES overrides the number of cases.

use std::sync::{Arc, RwLock};

use custodian_events::domain::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use custodian_events::event::{EnterpriseRegistered, NoteFiled, TerminalKind, TerminalRegistered};
use custodian_events::ids::{ContainerId, EnterpriseId, TerminalId};
use custodian_events::reading::{Reading, ReadingKind, Stage};
use custodian_events::{Clock, Envelope, Event};
use custodian_log::{SledLog, SledLogConfig};
use custodian_projections::directory::Directory;
use custodian_projections::influx::{Dialect, InfluxClient};
use custodian_projections::postgres::PgFamily;
use custodian_projections::readings::InfluxFamily;
use custodian_projections::runner::{Family, Projection};
use proptest::prelude::*;

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const INFLUX: &str = "http://127.0.0.1:8086";
const T0: i64 = 1_763_625_600_000_000_000; // 2025-11-20T08:00:00Z

#[derive(Debug, Clone)]
struct Spec {
    terminal: u8,
    container: Option<u8>,
    stage: Option<u8>,
    minutes: u16,
    kg: u16,
    kind: u8,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..3,
        prop::option::of(0u8..4),
        prop::option::of(0u8..5),
        0u16..3000,
        1u16..2000,
        0u8..4,
    )
        .prop_map(|(terminal, container, stage, minutes, kg, kind)| Spec {
            terminal,
            container,
            stage,
            minutes,
            kg,
            kind,
        })
}

fn envelope(seq: u64, event: Event) -> Envelope {
    Envelope::plain(seq, T0 + seq as i64 * 1_000_000_000, event)
}

/// Registrations, then the readings (with an anomaly and a note now and then).
fn log_of(specs: &[Spec]) -> Vec<Envelope> {
    let mut events = Vec::new();
    for e in 0..2 {
        events.push(Event::EnterpriseRegistered(EnterpriseRegistered {
            id: EnterpriseId::parse(&format!("E-{e}")).unwrap(),
            name: format!("企业 {e}"),
            province_code: format!("{}0000", 44 + e),
            city_code: format!("{}0100", 44 + e),
            storage_capacity_mg: 1_000_000_000_000,
        }));
    }
    for t in 0..3 {
        events.push(Event::TerminalRegistered(TerminalRegistered {
            id: TerminalId::parse(&format!("T-{t}")).unwrap(),
            enterprise_id: EnterpriseId::parse(&format!("E-{}", t % 2)).unwrap(),
            kind: TerminalKind::Scale,
            capacity_mg: 3_000_000_000,
            report_interval_s: 10,
            public_key: None,
        }));
    }
    let mut seqs = [0u64; 3];
    for (i, s) in specs.iter().enumerate() {
        let t = s.terminal as usize;
        seqs[t] += 1;
        let terminal_id = TerminalId::parse(&format!("T-{t}")).unwrap();
        let kind = ReadingKind::ALL[s.kind as usize];
        let weight = kind == ReadingKind::Weight;
        events.push(Event::ReadingRecorded(Reading {
            terminal_id: terminal_id.clone(),
            seq: seqs[t],
            measured_at_ns: T0 + i64::from(s.minutes) * 60_000_000_000 + i as i64 * 1_000,
            kind,
            value: i64::from(s.kg) * 1_000_000,
            container_id: s
                .container
                .filter(|_| weight)
                .map(|c| ContainerId::parse(&format!("C-{t}-{c}")).unwrap()),
            stage: s.stage.filter(|_| weight).map(|x| {
                [
                    Stage::Generation,
                    Stage::StorageIn,
                    Stage::StorageOut,
                    Stage::TransferOut,
                    Stage::TransferIn,
                ][x as usize]
            }),
            waste_code: Some("HW08".into()),
            manifest_id: None,
        }));
        if i % 7 == 3 {
            let mut a = AnomalyDetected::new(
                AnomalyKind::WeightFluctuation,
                Severity::Medium,
                format!("terminal:T-{t}"),
                vec![ReadingRef {
                    terminal_id: terminal_id.clone(),
                    seq: seqs[t],
                }],
                events.len() as u64,
                vec![events.len() as u64],
            );
            a.terminal_id = Some(terminal_id.clone());
            a.previous_value = Some(100_000_000);
            a.current_value = Some(i64::from(s.kg) * 1_000_000);
            events.push(Event::AnomalyDetected(a));
        }
        if i % 11 == 5 {
            events.push(Event::NoteFiled(NoteFiled {
                enterprise_id: EnterpriseId::parse("E-0").unwrap(),
                container_id: None,
                author: "检查员".into(),
                text: format!("第 {i} 次检查"),
                filed_at_ns: T0 + i as i64,
            }));
        }
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| envelope(i as u64 + 1, e))
        .collect()
}

async fn dump_schema(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "enterprises",
        "terminals",
        "containers",
        "custody",
        "manifests",
        "anomalies",
        "notes",
        "daily_kpis",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {schema}.{table} t ORDER BY 1"
        )))
        .fetch_all(pool)
        .await
        .unwrap();
        out.push(format!("{table}: {}", rows.join("\n")));
    }
    let seq: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT seq FROM {schema}.checkpoints"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    out.push(format!("checkpoint {seq}"));
    out
}

/// Deliveries of `log` as a flaky runner would make them: batches cut at `cuts`, each batch starting
/// `back` events before the previous one ended (a re-delivery), and every `dup`-th batch delivered twice.
fn deliveries(len: usize, cuts: &[usize], back: usize, dup: usize) -> Vec<(usize, usize)> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % len + 1).collect();
    ends.push(len);
    ends.sort();
    ends.dedup();
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, end) in ends.into_iter().enumerate() {
        let from = start.saturating_sub(back);
        out.push((from, end));
        if dup > 0 && i % dup == 0 {
            out.push((from, end));
        }
        start = end;
    }
    out
}

struct Setup {
    rt: tokio::runtime::Runtime,
    database: String,
    pool: sqlx::PgPool,
}

fn setup() -> &'static Setup {
    static SETUP: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    SETUP.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        // One database for every run, its schemas dropped after each case: nothing piles up on the server.
        let database = "custodian_prop_tests".to_owned();
        let pool = rt.block_on(async {
            let mut admin =
                <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{PG_SERVER}/postgres"))
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432 (run scripts/services up)");
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&database)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
            if !exists {
                // Another test process may make it at the same moment (42P04): fine.
                let _ = sqlx::Executor::execute(
                    &mut admin,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")),
                )
                .await;
            }
            sqlx::PgPool::connect(&format!("{PG_SERVER}/{database}"))
                .await
                .unwrap()
        });
        Setup { rt, database, pool }
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10)
}

/// A log's specs (1 ..= 119) and the `cuts`, `back` and `dup` of its second delivery ([`deliveries`]).
fn runs() -> impl Strategy<Value = (Vec<Spec>, Vec<usize>, usize, usize)> {
    (
        prop::collection::vec(spec(), 1..120),
        prop::collection::vec(0usize..1000, 0..8),
        0usize..30,
        0usize..3,
    )
}

/// The log of `specs`, and a directory that has learnt its registrations.
fn logged(specs: &[Spec]) -> (Vec<Envelope>, Arc<RwLock<Directory>>) {
    let log = log_of(specs);
    let dir = Arc::new(RwLock::new(Directory::default()));
    dir.write().unwrap().learn_all(&log);
    (log, dir)
}

/// Prepares both models, then hands `once` the whole log in one batch and `twice` the `deliveries` of it,
/// each batch as `batch` makes it for the model.
async fn apply_both(
    once: &dyn Projection,
    twice: &dyn Projection,
    log: &[Envelope],
    deliveries: Vec<(usize, usize)>,
    batch: impl Fn(&[Envelope], &dyn Projection) -> Vec<Envelope>,
) {
    once.prepare()
        .await
        .expect("the model's server on 127.0.0.1 (run scripts/services up)");
    twice.prepare().await.unwrap();
    once.apply(&batch(log, once), log.len() as u64)
        .await
        .unwrap();
    for (from, to) in deliveries {
        twice
            .apply(&batch(&log[from..to], twice), to as u64)
            .await
            .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn postgres_batches_applied_again_change_nothing((specs, cuts, back, dup) in runs()) {
        let s = setup();
        let (log, dir) = logged(&specs);
        let case = rand::random::<u32>();
        let url = format!("{PG_SERVER}/{}", s.database);
        let (once, twice) = s.rt.block_on(async {
            let once = PgFamily::new(&url, &format!("once_{case:08x}"), dir.clone()).unwrap().open(1);
            let twice = PgFamily::new(&url, &format!("twice_{case:08x}"), dir.clone()).unwrap().open(1);
            let batches = deliveries(log.len(), &cuts, back, dup);
            let all = |events: &[Envelope], _: &dyn Projection| events.to_vec();
            apply_both(once.as_ref(), twice.as_ref(), &log, batches, all).await;
            let dumps = (
                dump_schema(&s.pool, &once.target()).await,
                dump_schema(&s.pool, &twice.target()).await,
            );
            for schema in [once.target(), twice.target()] {
                sqlx::Executor::execute(
                    &s.pool,
                    sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")),
                )
                .await
                .unwrap();
            }
            dumps
        });
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn influx_batches_applied_again_change_nothing((specs, cuts, back, dup) in runs()) {
        let s = setup();
        let (log, dir) = logged(&specs);
        let tmp = tempfile::tempdir().unwrap();
        let sled = Arc::new(
            SledLog::open(SledLogConfig::new(tmp.path().join("log")), Arc::new(FixedClock), None).unwrap(),
        );
        let base = format!("custodian_prop_{:08x}", rand::random::<u32>());
        let family = |db: String| {
            InfluxFamily::new(
                InfluxClient::new(INFLUX, Dialect::v1(db)),
                tmp.path(),
                sled.clone(),
                dir.clone(),
            )
        };
        let (once_f, twice_f) = (family(format!("{base}_once")), family(format!("{base}_twice")));
        let (once, twice) = s.rt.block_on(async {
            let once = once_f.open(1);
            let twice = twice_f.open(1);
            let batches = deliveries(log.len(), &cuts, back, dup);
            apply_both(once.as_ref(), twice.as_ref(), &log, batches, filter).await;
            let q = "SELECT * FROM \"readings\" GROUP BY *";
            let a = InfluxClient::new(INFLUX, Dialect::v1(once.target()));
            let b = InfluxClient::new(INFLUX, Dialect::v1(twice.target()));
            let r = (a.query(q).await.unwrap(), b.query(q).await.unwrap());
            a.drop_target().await.unwrap();
            b.drop_target().await.unwrap();
            r
        });
        prop_assert_eq!(once, twice);
    }
}

fn filter(events: &[Envelope], p: &dyn Projection) -> Vec<Envelope> {
    events
        .iter()
        .filter(|e| p.wants(&e.event_type))
        .cloned()
        .collect()
}

struct FixedClock;

impl Clock for FixedClock {
    fn now_ns(&self) -> i64 {
        T0
    }
}

//! The dashboard's end-to-end fixture (`e2e/`, run by `scripts/e2e`): a node with PostgreSQL and InfluxDB
//! read models (databases of its own on the shared servers), three enterprises in two provinces, two
//! signing terminals whose weighings raised a `weight_fluctuation` each, a manifest M-1 from E-A to E-C,
//! and national, provincial
//! (440000) and enterprise (E-C) tokens. It writes `{url, trigger, tokens, clock}` as JSON to the path
//! given, then serves `POST {trigger}/alarm/{terminal}`: a new signed weighing pair through the ingest
//! API, which raises a new alarm (how the browser test causes one). It stops, dropping its databases,
//! when its standard input closes or it is sent SIGTERM.
//!
//! **Its clock.** The node's pages read the wall clock (the node has no other), so the fixture places
//! its readings relative to it rather than on a fixed date: the terminals' weighings are measured at
//! 16:00:01 and 16:00:02 China Standard Time, [`LAST_READING_DAYS_AGO`] days before the day the fixture
//! starts (in CST) — a terminal whose last reading is well outside the pages' default 7 days, as in
//! issue 22. `clock` in the JSON says which days those are (`today`, `last_reading_day`, `YYYY-MM-DD`
//! in CST), so the browser tests never compute them from their own clock. A run that crosses midnight
//! CST sees the pages' "today" move on by one day.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use custodian_tests::scopes::{issue_token, open_cross_province_manifest, register_enterprises};
use custodian_tests::{ReadModels, TerminalKeys, start_node, wait_projected};
use serde_json::{Value, json};

/// How many China Standard Time days before the fixture's start its terminals were last read.
const LAST_READING_DAYS_AGO: i64 = 17;

const DAY_S: i64 = 86_400;
/// China Standard Time's offset from UTC.
const CST_S: i64 = 8 * 3_600;

/// The fixture's days, from the wall clock at its start.
struct Clock {
    /// The CST day the fixture started, as days since 1970-01-01.
    today: i64,
    /// 16:00:00 CST on the day of the last readings, in UTC ns: reading `seq` is `seq` s after it.
    readings_base_ns: i64,
}

impl Clock {
    fn from_wall_clock() -> Clock {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the system clock is after 1970")
            .as_secs() as i64;
        let today = (now_s + CST_S).div_euclid(DAY_S);
        let last = today - LAST_READING_DAYS_AGO;
        Clock {
            today,
            readings_base_ns: (last * DAY_S + 16 * 3_600 - CST_S) * 1_000_000_000,
        }
    }

    /// A CST day (days since 1970-01-01) as `YYYY-MM-DD`.
    fn day(day: i64) -> String {
        custodian_events::reading::format_utc_ns(day * DAY_S * 1_000_000_000)[..10].to_owned()
    }

    /// The upload of `terminal`'s readings `first` and `first + 1` into `container`: 100 kg, then 60 kg
    /// (a drop of 40 %: `weight_fluctuation`), `first` and `first + 1` seconds after 16:00 CST on the
    /// day of the last readings — as `custodian_tests::scopes::weighings`, on this fixture's day.
    fn weighings(&self, terminal: &str, container: &str, first: u64) -> Vec<u8> {
        let readings: Vec<Value> = [(first, 100.0), (first + 1, 60.0)]
            .iter()
            .map(|(seq, kg)| {
                let at = self.readings_base_ns + *seq as i64 * 1_000_000_000;
                json!({"seq": seq, "measured_at": custodian_events::reading::format_utc_ns(at),
                       "kind": "weight", "value": kg, "unit": "kg", "container_id": container,
                       "stage": "storage_in", "waste_code": "HW08"})
            })
            .collect();
        serde_json::to_vec(&json!({"terminal_id": terminal, "readings": readings})).unwrap()
    }
}

/// Registers `terminal` of `enterprise` with its SM2 key (seed 7), keeps the key in `keys` and uploads its
/// first weighings (readings 1 and 2, container `{terminal}-C0`, on the fixture's day), which raise an
/// alarm — `custodian_tests::scopes::signing_terminal` with the fixture's clock.
async fn signing_terminal(
    admin: &custodian_tools::client::NodeClient,
    keys: &mut TerminalKeys,
    clock: &Clock,
    terminal: &str,
    enterprise: &str,
) {
    custodian_tests::scopes::register_signing_terminal(admin, keys, terminal, enterprise).await;
    keys.upload(
        admin,
        terminal,
        clock.weighings(terminal, &format!("{terminal}-C0"), 1),
    )
    .await
    .unwrap_or_else(|e| panic!("uploading {terminal}'s weighings: {e}"));
}

struct Trigger {
    admin: custodian_tools::client::NodeClient,
    keys: TerminalKeys,
    clock: Clock,
    next: AtomicU64,
}

async fn alarm(
    State(t): State<Arc<Trigger>>,
    Path(terminal): Path<String>,
) -> (axum::http::StatusCode, String) {
    if !t.keys.0.contains_key(&terminal) {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("no terminal {terminal}"),
        );
    }
    let first = t.next.fetch_add(2, Ordering::Relaxed);
    let body = t
        .clock
        .weighings(&terminal, &format!("{terminal}-C0"), first);
    match t.keys.upload(&t.admin, &terminal, body).await {
        Ok(_) => (axum::http::StatusCode::OK, "uploaded".into()),
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: dashboard-fixture OUT.json");
    let dir = tempfile::tempdir().expect("a temp dir");
    let models = ReadModels::new("e2e");
    let (node, admin) = start_node(dir.path(), |c| models.enable(c)).await;
    register_enterprises(&admin).await;
    let clock = Clock::from_wall_clock();
    let mut keys = TerminalKeys::default();
    for (t, e) in [("T-A", "E-A"), ("T-C", "E-C")] {
        signing_terminal(&admin, &mut keys, &clock, t, e).await;
    }
    open_cross_province_manifest(&admin).await;
    wait_projected(&admin, Duration::from_secs(60)).await;
    let mut tokens = serde_json::Map::new();
    for (tier, scope) in [
        ("national", None),
        ("province", Some("440000")),
        ("enterprise", Some("E-C")),
    ] {
        let (token, _) = issue_token(&admin, tier, scope).await;
        tokens.insert(tier.into(), token.into());
    }
    let clock_json = json!({
        "today": Clock::day(clock.today),
        "last_reading_day": Clock::day(clock.today - LAST_READING_DAYS_AGO),
        "last_reading_days_ago": LAST_READING_DAYS_AGO,
    });
    let trigger = Arc::new(Trigger {
        admin: admin.clone(),
        keys,
        clock,
        next: AtomicU64::new(3),
    });
    let app = axum::Router::new()
        .route("/alarm/{terminal}", post(alarm))
        .with_state(trigger);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a trigger port");
    let trigger_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let fixture = json!({"url": node.url(), "trigger": trigger_url, "tokens": tokens,
                         "clock": clock_json});
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&fixture).unwrap())
        .expect("writing the fixture");
    std::fs::rename(&tmp, &out).expect("writing the fixture");
    eprintln!("dashboard fixture ready at {}", node.url());
    // Until stdin closes or SIGTERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    drop(node);
    models.drop_all().await;
    let _ = std::fs::remove_file(&out);
}

//! `custodian demo`: a node, simulated terminals uploading with resends and some bad readings for a short
//! while, then a summary of what the platform saw and a check that every acknowledged reading is stored
//! exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use tokio::sync::Mutex;

use crate::client::NodeClient;
use crate::terminal_sim::{self, SimTerminal};
use custodian_node::config::Config;
use custodian_node::metrics::sample;
use custodian_node::server::Node;
use custodian_node::upload::ReadingResult;

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub terminals: usize,
    pub duration_s: u64,
    /// Share of batches sent again (some at once, concurrently, some later), in percent.
    pub resend_percent: u32,
    pub seed: u64,
    /// Use this running node instead of starting one.
    pub node: Option<String>,
    pub admin_token: Option<String>,
}

#[derive(Default)]
struct Tally {
    batches: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    retried_503: AtomicU64,
}

/// What the demo saw; `stored_once` is the check that matters.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    pub events_checked: u64,
    pub stored_once: bool,
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<DemoSummary> {
    println!("custodian demo — seed {}", opts.seed);
    let (node, client, _tmp) = match &opts.node {
        Some(url) => {
            let token = opts
                .admin_token
                .clone()
                .context("--node needs the node's admin token in CUSTODIAN_ADMIN_TOKEN")?;
            (None, NodeClient::new(url.clone(), Some(token)), None)
        }
        None => {
            let tmp = tempfile::tempdir()?;
            let mut config = crate::local::own_node(tmp.path().join("node"), Config::default());
            demo_read_models(&mut config).await;
            let node = Node::start(config).await?;
            println!(
                "started a node at {} (data dir {})",
                node.url(),
                tmp.path().join("node").display()
            );
            let client = NodeClient::new(node.url(), Some(node.admin_token.clone()));
            (Some(node), client, Some(tmp))
        }
    };
    client.wait_ready(Duration::from_secs(10)).await?;

    let enterprises = opts
        .terminals
        .div_ceil(4)
        .clamp(1, terminal_sim::SITES.len() * 2);
    for e in 0..enterprises {
        client
            .register("/v1/enterprises", &terminal_sim::enterprise_body(e))
            .await?;
    }
    let mut terminals = Vec::with_capacity(opts.terminals);
    for t in 0..opts.terminals {
        let term = SimTerminal::new(format!("T-{t}"), opts.seed.wrapping_add(t as u64));
        client
            .register("/v1/terminals", &term.registration(t % enterprises))
            .await?;
        terminals.push(term);
    }
    println!(
        "registered {enterprises} enterprises and {} terminals; uploading for {} s with {}% of batches resent\n\
         (each upload signed with its terminal's SM2 key; events sealed at rest with SM4-GCM)",
        opts.terminals, opts.duration_s, opts.resend_percent
    );

    let tally = Arc::new(Tally::default());
    let codes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    // Every acknowledged (terminal, seq) and the event it was stored as.
    let acked: Arc<Mutex<BTreeMap<(String, u64), u64>>> = Arc::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(opts.duration_s);
    let mut tasks = Vec::new();
    for mut term in terminals {
        let client = client.clone();
        let (tally, codes, acked) = (tally.clone(), codes.clone(), acked.clone());
        let resend_percent = opts.resend_percent;
        tasks.push(tokio::spawn(async move {
            let mut resend_later: Vec<(Vec<u8>, String)> = Vec::new();
            while tokio::time::Instant::now() < deadline {
                let now = terminal_sim::now_rfc3339();
                let (mut body, _) = term.next_body(10, &now);
                let roll = term.rng().random_range(0..100u32);
                if roll < 3 {
                    // A terminal with a fault: one reading it should not have sent.
                    let bad = term.rng().random_range(0..3);
                    let seq = term.next_seq;
                    term.next_seq += 1;
                    let reading = match bad {
                        0 => format!(r#"{{"seq":{seq},"measured_at":"{now}","kind":"weight","value":-4.2,"unit":"kg"}}"#),
                        1 => format!(r#"{{"seq":{seq},"measured_at":"{now}","kind":"weight","value":12,"unit":"stone"}}"#),
                        _ => format!(r#"{{"seq":{seq},"measured_at":"2099-01-01T00:00:00Z","kind":"weight","value":12,"unit":"kg"}}"#),
                    };
                    body = splice_reading(&body, &reading);
                } else if roll < 4 && term.next_seq > 20 {
                    // A terminal rewriting its history: an old seq with another value.
                    let seq = term.rng().random_range(1..10);
                    let forged = term.reading_json(seq, "2026-01-01T00:00:00Z");
                    body = splice_reading(&body, &forged);
                }
                let sig = term.sign(&body);
                let concurrent = term.rng().random_range(0..100u32) < resend_percent / 2;
                let later = term.rng().random_range(0..100u32) < resend_percent;
                if later {
                    resend_later.push((body.clone(), sig.clone()));
                }
                let sends = if concurrent { 2 } else { 1 };
                let results = send_times(&client, &body, &sig, sends, &tally).await;
                for r in results.into_iter().flatten() {
                    record(&tally, &codes, &acked, &term.id, r).await;
                }
                if resend_later.len() >= 3 || (!resend_later.is_empty() && tokio::time::Instant::now() >= deadline) {
                    // Resend out of order, as a terminal draining its retry queue might.
                    resend_later.reverse();
                    for (b, sig) in resend_later.drain(..) {
                        if let Some(r) = send(&client, &b, &sig, &tally).await {
                            record(&tally, &codes, &acked, &term.id, r).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let progress = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut elapsed = 0;
            loop {
                tick.tick().await;
                elapsed += 1;
                println!(
                    "  {elapsed:>3} s  batches {:>6}  accepted {:>7}  duplicates {:>6}  rejected {:>4}",
                    tally.batches.load(Ordering::Relaxed),
                    tally.accepted.load(Ordering::Relaxed),
                    tally.duplicates.load(Ordering::Relaxed),
                    tally.rejected.load(Ordering::Relaxed),
                );
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    progress.abort();

    // Let the domain core catch up with the log, so the summary shows what it flagged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = client.healthz().await?;
        if h["derived_seq"] == h["last_seq"] || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Check the log: one ReadingRecorded per acknowledged (terminal, seq), at the acknowledged sequence.
    let events = client.all_events(1).await?;
    let mut stored: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut twice = BTreeSet::new();
    for e in events.iter().filter(|e| e["type"] == "ReadingRecorded") {
        let key = (
            e["payload"]["terminal_id"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            e["payload"]["seq"].as_u64().unwrap_or(0),
        );
        if stored
            .insert(key.clone(), e["event_seq"].as_u64().unwrap_or(0))
            .is_some()
        {
            twice.insert(key);
        }
    }
    let acked = acked.lock().await;
    let missing = acked
        .iter()
        .filter(|(k, seq)| stored.get(*k) != Some(*seq))
        .count();
    let stored_once = twice.is_empty() && missing == 0;
    let metrics = client.metrics().await?;
    let rejected_by_code = codes.lock().await.clone();

    println!("\nsummary");
    println!(
        "  batches sent            {}",
        tally.batches.load(Ordering::Relaxed)
    );
    println!(
        "  readings accepted       {}",
        tally.accepted.load(Ordering::Relaxed)
    );
    println!(
        "  duplicates caught       {}",
        tally.duplicates.load(Ordering::Relaxed)
    );
    println!(
        "  readings rejected       {}",
        tally.rejected.load(Ordering::Relaxed)
    );
    for (code, n) in &rejected_by_code {
        println!("    {code:<22}{n}");
    }
    println!(
        "  node counters           accepted {} / duplicate {} / rejected {}",
        sample(&metrics, "custodian_readings_accepted_total").unwrap_or(0.0),
        sample(&metrics, "custodian_readings_duplicate_total").unwrap_or(0.0),
        sample(&metrics, "custodian_readings_rejected_total").unwrap_or(0.0),
    );
    println!(
        "  events in the log       {} (every one passed its fingerprint check)",
        events.len()
    );
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == "AnomalyDetected") {
        *by_kind
            .entry(e["payload"]["kind"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    println!(
        "  anomalies flagged       {} ({})",
        by_kind.values().sum::<usize>(),
        by_kind
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  stored exactly once     {} ({} acknowledged readings checked{})",
        if stored_once { "yes" } else { "NO" },
        acked.len(),
        if stored_once {
            String::new()
        } else {
            format!(", {missing} missing, {} stored twice", twice.len())
        }
    );
    read_models_summary(&client, node.is_some()).await;
    if let Some(node) = node {
        node.stop().await?;
    }
    Ok(DemoSummary {
        accepted: tally.accepted.load(Ordering::Relaxed),
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        rejected_by_code,
        events_checked: events.len() as u64,
        stored_once,
    })
}

/// Puts one more reading at the end of an upload body.
fn splice_reading(body: &[u8], reading: &str) -> Vec<u8> {
    let mut b = body[..body.len() - 2].to_vec();
    b.push(b',');
    b.extend_from_slice(reading.as_bytes());
    b.extend_from_slice(b"]}");
    b
}

/// Sends `body` once, or twice concurrently (a terminal whose first attempt timed out on its side).
async fn send_times(
    client: &NodeClient,
    body: &[u8],
    signature: &str,
    sends: usize,
    tally: &Tally,
) -> Vec<Option<custodian_node::upload::UploadResponse>> {
    if sends == 2 {
        let (a, b) = tokio::join!(
            send(client, body, signature, tally),
            send(client, body, signature, tally)
        );
        vec![a, b]
    } else {
        vec![send(client, body, signature, tally).await]
    }
}

/// Sends until the node answers 200, backing off on 503 as a terminal should.
async fn send(
    client: &NodeClient,
    body: &[u8],
    signature: &str,
    tally: &Tally,
) -> Option<custodian_node::upload::UploadResponse> {
    for _ in 0..20 {
        match client.upload(body.to_vec(), Some(signature)).await {
            Ok(r) => return Some(r),
            Err(crate::client::ClientError::Status { status: 503, .. }) => {
                tally.retried_503.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                eprintln!("upload failed: {e}");
                return None;
            }
        }
    }
    None
}

async fn record(
    tally: &Tally,
    codes: &Mutex<BTreeMap<String, u64>>,
    acked: &Mutex<BTreeMap<(String, u64), u64>>,
    terminal: &str,
    resp: custodian_node::upload::UploadResponse,
) {
    tally.batches.fetch_add(1, Ordering::Relaxed);
    for r in resp.results {
        match r {
            ReadingResult::Accepted { seq, event_seq } => {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                acked
                    .lock()
                    .await
                    .insert((terminal.to_owned(), seq), event_seq);
            }
            ReadingResult::Duplicate { seq, event_seq } => {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                acked
                    .lock()
                    .await
                    .insert((terminal.to_owned(), seq), event_seq);
            }
            ReadingResult::Rejected { code, .. } => {
                tally.rejected.fetch_add(1, Ordering::Relaxed);
                *codes.lock().await.entry(code).or_default() += 1;
            }
        }
    }
}

/// The demo's read models: PostgreSQL database and InfluxDB database `custodian_demo` on the local servers,
/// replaced on every run (a model belongs to one log, and every demo starts a new one).
const DEMO_DATABASE: &str = "custodian_demo";

async fn demo_read_models(config: &mut Config) {
    let server = "postgres://postgres@127.0.0.1:5432";
    config.projections.postgres_url = format!("{server}/{DEMO_DATABASE}");
    config.projections.influx = custodian_projections::influx::Dialect::v1(DEMO_DATABASE);
    if let Err(e) = custodian_projections::postgres::drop_database(server, DEMO_DATABASE).await {
        println!(
            "cannot clear database {DEMO_DATABASE} on PostgreSQL at {server} ({e}); the demo runs without that read model's figures \
             (start it with scripts/services up)"
        );
    }
    let influx = custodian_projections::influx::InfluxClient::new(
        &config.projections.influx_url,
        config.projections.influx.clone(),
    );
    if let Err(e) = influx.drop_target().await {
        println!(
            "{e}; the demo runs without that read model's figures (start it with scripts/services up)"
        );
    }
}

/// Waits (with progress) for the node's read models to hold the whole log, then shows what they hold.
async fn read_models_summary(client: &NodeClient, own_node: bool) {
    let Ok(status) = client
        .wait_read_models(Some(Duration::from_secs(60)), true)
        .await
    else {
        return;
    };
    if status.is_empty() {
        return;
    }
    println!("  read models");
    for p in &status {
        let name = p["name"].as_str().unwrap_or("?");
        if p["state"] == "failing" {
            println!(
                "    {name:<9} FAILING: {} (ingest is unaffected; it catches up once the backend answers)",
                p["last_error"].as_str().unwrap_or("?")
            );
            continue;
        }
        let what = match name {
            "postgres" if own_node => postgres_figures(p["target"].as_str().unwrap_or("")).await,
            "influx" if own_node => influx_figures().await,
            "search" => search_figures(client).await,
            _ => String::new(),
        };
        println!(
            "    {name:<9} checkpoint {} ({}) {what}",
            p["checkpoint"],
            p["target"].as_str().unwrap_or("")
        );
    }
}

async fn postgres_figures(schema: &str) -> String {
    use sqlx::Connection as _;
    let url = format!("postgres://postgres@127.0.0.1:5432/{DEMO_DATABASE}");
    let Ok(mut c) = sqlx::PgConnection::connect(&url).await else {
        return String::new();
    };
    let q = format!(
        "SELECT (SELECT sum(readings)::int8 FROM {schema}.terminals), \
                (SELECT count(*) FROM {schema}.containers), \
                (SELECT count(*) FROM {schema}.anomalies), \
                (SELECT count(*) FROM {schema}.daily_kpis), \
                (SELECT max(abs(last_clock_skew_ms)) FROM {schema}.terminals)"
    );
    match sqlx::query_as::<_, (Option<i64>, i64, i64, i64, Option<i64>)>(sqlx::AssertSqlSafe(q))
        .fetch_one(&mut c)
        .await
    {
        Ok((readings, containers, anomalies, kpis, skew)) => format!(
            "— {} readings, {containers} containers, {anomalies} anomalies, {kpis} daily KPI rows, \
             largest clock skew {} ms",
            readings.unwrap_or(0),
            skew.unwrap_or(0)
        ),
        Err(e) => format!("— cannot read it: {e}"),
    }
}

async fn influx_figures() -> String {
    let client = custodian_projections::influx::InfluxClient::new(
        "http://127.0.0.1:8086",
        custodian_projections::influx::Dialect::v1(DEMO_DATABASE),
    );
    match client
        .query("SELECT count(\"value\") FROM \"readings\"")
        .await
    {
        Ok(v) => format!(
            "— {} points in measurement readings",
            v.pointer("/results/0/series/0/values/0/1")
                .cloned()
                .unwrap_or_default()
        ),
        Err(e) => format!("— cannot read it: {e}"),
    }
}

async fn search_figures(client: &NodeClient) -> String {
    let q = "重量异常波动";
    match client
        .get_admin(&format!("/v1/admin/search?q={q}&limit=200"))
        .await
    {
        Ok(v) => format!(
            "— {} anomaly descriptions found searching {q:?}",
            v["hits"].as_array().map_or(0, Vec::len)
        ),
        Err(e) => format!("— cannot search: {e}"),
    }
}

//! `custodian bench dataset`: a seeded dataset shaped like the TSBS "iot" use case, loaded through the real
//! ingest path into a node whose data dir is kept between runs.
//!
//! - `enterprises` enterprises spread over six provinces, `terminals` scales spread over the enterprises;
//! - each scale reports one weighing a minute for `days` days from 2026-11-01 00:00 China Standard Time
//!   (`readings` caps the total), weighing 20 drums in turn;
//! - about 1 % of the minutes are missing, every 7th upload arrives in reverse order, and every 50th upload
//!   is sent twice (duplicates the log must recognise);
//! - every reading is a pure function of (seed, terminal, seq), so an interrupted load resumes where it
//!   stopped (`DATA_DIR/dataset.json` records finished rounds) and a repeated upload is a duplicate, never a
//!   conflict.
//!
//! At the end it waits for the read models and reports the disk each store takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::client::NodeClient;
use crate::terminal_sim::{signature_header, terminal_key, upload_body};
use custodian_node::config::Config;
use custodian_node::server::Node;

#[derive(Debug, Clone)]
pub struct DatasetOptions {
    pub data_dir: PathBuf,
    pub enterprises: usize,
    pub terminals: usize,
    pub days: u64,
    pub readings: Option<u64>,
    pub seed: u64,
    /// The PostgreSQL and InfluxDB database of the dataset's read models.
    pub database: String,
    pub postgres_server: String,
    pub influx_url: String,
}

/// Readings per upload.
const UPLOAD: u64 = 500;
/// Uploads in flight.
const CONCURRENCY: usize = 16;

pub const PROVINCES: [(&str, &str, &str); 6] = [
    ("440000", "440100", "广州"),
    ("320000", "320500", "苏州"),
    ("330000", "330100", "杭州"),
    ("110000", "110100", "北京"),
    ("510000", "510100", "成都"),
    ("370000", "370200", "青岛"),
];

/// 2026-11-01T00:00:00+08:00.
const START_NS: i64 = 1_793_462_400_000_000_000;

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn h(seed: u64, t: u64, x: u64) -> u64 {
    mix(seed ^ mix(t.wrapping_mul(0x1000_0000_01b3) ^ mix(x)))
}

/// Whether minute `seq` of terminal `t` is missing (about 1 %).
fn missing(seed: u64, t: u64, seq: u64) -> bool {
    h(seed, t, seq).is_multiple_of(100)
}

/// The reading of terminal `t` at minute `seq` (1-based), as JSON text.
fn reading(seed: u64, t: u64, seq: u64) -> String {
    let drum = seq % 20;
    let base = 50.0 + (h(seed, t, 1_000_000 + drum) % 35_000) as f64 / 100.0;
    let jitter = ((h(seed, t, seq) % 401) as f64 - 200.0) / 10_000.0;
    // Now and then (0.1 %) a drum is found 40 % light.
    let kg = if h(seed ^ 7, t, seq).is_multiple_of(1000) {
        base * 0.6
    } else {
        base * (1.0 + jitter)
    };
    let at = custodian_events::reading::format_utc_ns(START_NS + (seq as i64 - 1) * 60_000_000_000);
    let stages = ["storage_in", "storage_out", "transfer_out", "generation"];
    format!(
        r#"{{"seq":{seq},"measured_at":"{at}","kind":"weight","value":{kg:.2},"unit":"kg","container_id":"D-{t}-C{drum}","stage":"{}","waste_code":"HW08"}}"#,
        stages[(seq / 20 % 4) as usize]
    )
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Progress {
    seed: u64,
    terminals: usize,
    per_terminal: u64,
    rounds_done: u64,
}

fn du(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.is_file() {
        return Some(meta.len());
    }
    let mut total = 0;
    for e in std::fs::read_dir(path).ok()? {
        total += du(&e.ok()?.path()).unwrap_or(0);
    }
    Some(total)
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| {
        format!("{:.1} MiB", b as f64 / 1_048_576.0)
    })
}

pub async fn dataset(opts: DatasetOptions) -> anyhow::Result<String> {
    anyhow::ensure!(
        opts.enterprises >= 1 && opts.terminals >= 1 && opts.days >= 1,
        "enterprises, terminals and days must be at least 1"
    );
    let per_terminal = opts.readings.map_or(opts.days * 1440, |n| {
        (n / opts.terminals as u64).clamp(1, opts.days * 1440)
    });
    std::fs::create_dir_all(&opts.data_dir)?;
    let progress_file = opts.data_dir.join("dataset.json");
    let mut progress: Progress = match std::fs::read_to_string(&progress_file) {
        Ok(s) => {
            serde_json::from_str(&s).context("dataset.json is damaged; delete the data dir")?
        }
        Err(_) => Progress::default(),
    };
    // The node's log lives in DATA_DIR/node/log (see `config.data_dir` below).
    let fresh = !opts.data_dir.join("node").join("log").exists();
    if !fresh {
        anyhow::ensure!(
            progress.seed == opts.seed
                && progress.terminals == opts.terminals
                && progress.per_terminal == per_terminal,
            "{} holds a dataset of seed {}, {} terminals, {} readings each; use the same options or another --data-dir",
            opts.data_dir.display(),
            progress.seed,
            progress.terminals,
            progress.per_terminal
        );
    }
    progress.seed = opts.seed;
    progress.terminals = opts.terminals;
    progress.per_terminal = per_terminal;

    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: opts.data_dir.join("node"),
        ..Config::default()
    };
    config.derive.tick_interval_s = 0;
    config.projections.postgres_url = format!("{}/{}", opts.postgres_server, opts.database);
    config.projections.influx_url = opts.influx_url.clone();
    config.projections.influx = custodian_projections::influx::Dialect::v1(opts.database.clone());
    if fresh {
        // A new log: read models left from an earlier dataset belong to another log.
        drop_databases(&opts).await;
    }
    let node = Node::start(config).await?;
    let client = NodeClient::new(node.url(), Some(node.admin_token.clone()));
    let total = per_terminal * opts.terminals as u64;
    println!(
        "bench dataset: {} enterprises, {} terminals, {per_terminal} readings each ({total} in all), seed {}; data dir {}",
        opts.enterprises,
        opts.terminals,
        opts.seed,
        opts.data_dir.display()
    );
    for e in 0..opts.enterprises {
        let (province, city, name) = PROVINCES[e % PROVINCES.len()];
        client
            .register(
                "/v1/enterprises",
                &json!({"id": format!("E-{e}"), "name": format!("{name}危废企业 {e}"),
                        "province_code": province, "city_code": city, "storage_capacity_kg": 1.0e6}),
            )
            .await?;
    }
    let keys: Vec<_> = (0..opts.terminals)
        .map(|t| Arc::new(terminal_key(&format!("D-{t}"), opts.seed)))
        .collect();
    for (t, key) in keys.iter().enumerate() {
        client
            .register(
                "/v1/terminals",
                &json!({"id": format!("D-{t}"), "enterprise_id": format!("E-{}", t % opts.enterprises),
                        "kind": "scale", "capacity_kg": 3000.0, "report_interval_s": 60,
                        "public_key_pem": key.public_key_pem()}),
            )
            .await?;
    }
    let rounds = per_terminal.div_ceil(UPLOAD);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let resumed_at = progress.rounds_done;
    for round in progress.rounds_done..rounds {
        let from = round * UPLOAD + 1;
        let to = ((round + 1) * UPLOAD).min(per_terminal);
        let mut tasks = tokio::task::JoinSet::new();
        for (t, key) in keys.iter().enumerate() {
            while tasks.len() >= CONCURRENCY {
                tasks.join_next().await.expect("a task")??;
            }
            let (client, key, sent, duplicates) = (
                client.clone(),
                key.clone(),
                sent.clone(),
                duplicates.clone(),
            );
            let seed = opts.seed;
            tasks.spawn(async move {
                let t = t as u64;
                let mut readings: Vec<String> = (from..=to)
                    .filter(|s| !missing(seed, t, *s))
                    .map(|s| reading(seed, t, s))
                    .collect();
                let upload_no = round * 1_000_003 + t;
                if upload_no.is_multiple_of(7) {
                    readings.reverse();
                }
                let body = upload_body(&format!("D-{t}"), &readings);
                let sig = signature_header(&key, &body);
                let times = if upload_no.is_multiple_of(50) { 2 } else { 1 };
                for _ in 0..times {
                    loop {
                        match client.upload(body.clone(), Some(&sig)).await {
                            Err(crate::client::ClientError::Status { status: 503, .. }) => {
                                tokio::time::sleep(Duration::from_millis(100)).await
                            }
                            Err(e) => return Err(anyhow::Error::from(e)),
                            Ok(r) => {
                                let mut dup = 0;
                                for x in &r.results {
                                    match x {
                                        custodian_node::upload::ReadingResult::Duplicate { .. } => dup += 1,
                                        custodian_node::upload::ReadingResult::Rejected { code, message, .. } => {
                                            return Err(anyhow::anyhow!(
                                                "the node rejected a dataset reading: {code}: {message}"
                                            ));
                                        }
                                        custodian_node::upload::ReadingResult::Accepted { .. } => {}
                                    }
                                }
                                duplicates.fetch_add(dup, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
                sent.fetch_add(readings.len() as u64, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        progress.rounds_done = round + 1;
        std::fs::write(&progress_file, serde_json::to_string(&progress)?)?;
        let done = sent.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let left = (rounds - round - 1) as f64 * (done as f64 / (round + 1 - resumed_at) as f64)
            / rate.max(1.0);
        eprint!(
            "\r  round {}/{rounds}: {done} readings sent this run, {rate:.0}/s, ~{left:.0} s left   ",
            round + 1
        );
    }
    eprintln!();
    client.wait_read_models(None, true).await?;
    let metrics = client.metrics().await?;
    let accepted = custodian_node::metrics::sample(&metrics, "custodian_readings_accepted_total")
        .unwrap_or(0.0);
    let log_bytes = du(&opts.data_dir.join("node").join("log"));
    let search_bytes = du(&opts.data_dir.join("node").join("search"));
    let pg_bytes = pg_size(&opts).await;
    let influx_bytes =
        du(&Path::new("/var/lib/custodian-services/influxdb/data").join(&opts.database));
    node.stop().await?;
    let report = format!(
        "dataset {}: {total} readings planned ({} missing by design), {} sent this run, {duplicates} duplicates recognised, {accepted} accepted by this run's node\n\
         disk: event log {}, PostgreSQL database {} {}, InfluxDB database {} {}, search index {}",
        opts.data_dir.display(),
        (0..opts.terminals as u64)
            .map(|t| (1..=per_terminal)
                .filter(|s| missing(opts.seed, t, *s))
                .count())
            .sum::<usize>(),
        sent.load(Ordering::Relaxed),
        mib(log_bytes),
        opts.database,
        mib(pg_bytes),
        opts.database,
        mib(influx_bytes),
        mib(search_bytes),
        duplicates = duplicates.load(Ordering::Relaxed),
    );
    println!("{report}");
    Ok(report)
}

async fn pg_size(opts: &DatasetOptions) -> Option<u64> {
    use sqlx::Connection as _;
    let mut c = sqlx::PgConnection::connect(&format!("{}/postgres", opts.postgres_server))
        .await
        .ok()?;
    sqlx::query_scalar::<_, i64>("SELECT pg_database_size($1)")
        .bind(&opts.database)
        .fetch_one(&mut c)
        .await
        .ok()
        .map(|b| b as u64)
}

async fn drop_databases(opts: &DatasetOptions) {
    let _ =
        custodian_projections::postgres::drop_database(&opts.postgres_server, &opts.database).await;
    let influx = custodian_projections::influx::InfluxClient::new(
        &opts.influx_url,
        custodian_projections::influx::Dialect::v1(opts.database.clone()),
    );
    let _ = influx.drop_target().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_a_pure_function_of_seed_terminal_and_seq() {
        assert_eq!(reading(1, 2, 3), reading(1, 2, 3));
        assert_ne!(reading(1, 2, 3), reading(2, 2, 3));
        let missing_share = (1..=100_000).filter(|s| missing(1, 0, *s)).count();
        assert!(
            (500..1500).contains(&missing_share),
            "about 1 % missing: {missing_share}"
        );
        assert!(
            reading(1, 0, 1).contains("2026-10-31T16:00:00"),
            "{}",
            reading(1, 0, 1)
        );
    }
}

//! `custodian bench projections`: the read models' throughput beside the raw rate of writing the same rows
//! and points straight to each database, in one run; and their lag at a steady paced load.
//!
//! 1. Fill: a node (domain core on, read models off) takes `readings` signed weighings over HTTP.
//! 2. Throughput, one database at a time:
//!    - projection: a fresh model tails that log from 0 through the runner (log read, SM4-GCM open,
//!      fold, write, checkpoint), until it holds the whole log;
//!    - raw: the same batches, read and folded before the clock starts, written straight: PostgreSQL gets
//!      the same rows with the same multi-row statements (one transaction per batch, no checkpoint),
//!      InfluxDB the same line-protocol points in the same gzip requests of ≤ 5,000 lines.
//! 3. Lag: a second node with all three models on takes `rate` readings/s for `duration_s`; each model
//!    records, per committed batch, the age of the batch's oldest event. p50/p99/max per model.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use custodian_events::Envelope;
use custodian_log::EventLog;
use custodian_projections::directory::Directory;
use custodian_projections::influx::{Dialect, InfluxClient};
use custodian_projections::postgres::{PgFamily, Rows};
use custodian_projections::readings::{InfluxFamily, reading_line};
use custodian_projections::runner::{self, Family, RunnerConfig, RunnerHandle};
use serde_json::json;

use crate::bench::stamp;
use crate::client::NodeClient;
use crate::terminal_sim::{self, SimTerminal};
use custodian_node::config::Config;
use custodian_node::server::Node;

#[derive(Debug, Clone)]
pub struct ProjectionsBenchOptions {
    pub readings: u64,
    pub rate: u64,
    pub duration_s: u64,
    pub warmup_s: u64,
    pub terminals: usize,
    pub postgres_server: String,
    pub influx_url: String,
    pub report_dir: Option<PathBuf>,
}

const BATCH: usize = 5_000;

fn weighing(t: usize, seq: u64, at: &str) -> String {
    let stages = ["storage_in", "storage_out", "transfer_out", "generation"];
    json!({"seq": seq, "measured_at": at, "kind": "weight",
           "value": 100.0 + ((seq * 7919) % 200) as f64 / 100.0, "unit": "kg",
           "container_id": format!("C-{t}-{}", seq % 50), "stage": stages[(seq % 4) as usize],
           "waste_code": "HW08"})
    .to_string()
}

fn base_config(dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = crate::local::own_node(dir.to_owned(), Config::default());
    config.derive.tick_interval_s = 0;
    Ok(config)
}

async fn register(client: &NodeClient, terminals: usize) -> anyhow::Result<Vec<SimTerminal>> {
    client
        .register("/v1/enterprises", &terminal_sim::enterprise_body(0))
        .await?;
    let mut out = Vec::new();
    for t in 0..terminals {
        let s = SimTerminal::new(format!("P-{t}"), t as u64);
        client.register("/v1/terminals", &s.registration(0)).await?;
        out.push(s);
    }
    Ok(out)
}

/// Uploads `per_terminal` readings from each terminal, as fast as the node takes them.
async fn fill(
    client: &NodeClient,
    scales: Vec<SimTerminal>,
    per_terminal: u64,
) -> anyhow::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let total = per_terminal * scales.len() as u64;
    let mut tasks = Vec::new();
    for (t, key) in scales.into_iter().enumerate() {
        let (client, id, done) = (client.clone(), key.id.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while seq < per_terminal {
                let at = terminal_sim::now_rfc3339();
                let n = 100.min(per_terminal - seq);
                let readings: Vec<String> = (1..=n).map(|i| weighing(t, seq + i, &at)).collect();
                seq += n;
                let body = terminal_sim::upload_body(&id, &readings);
                let sig = key.sign(&body);
                loop {
                    match client.upload(body.clone(), Some(&sig)).await {
                        Err(crate::client::ClientError::Status { status: 503, .. }) => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        other => {
                            other?;
                            break;
                        }
                    }
                }
                done.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let d = done.load(Ordering::Relaxed);
                eprint!("\r  filling the log: {d}/{total} readings");
                if d >= total {
                    eprintln!();
                    return;
                }
            }
        })
    };
    for t in tasks {
        t.await??;
    }
    progress.await?;
    Ok(())
}

/// Runs `family`'s live generation over the log from 0; answers the seconds it took.
async fn project(
    log: Arc<dyn EventLog>,
    family: Arc<dyn Family>,
    directory: custodian_projections::directory::SharedDirectory,
) -> anyhow::Result<f64> {
    let head = log.last_seq();
    let started = Instant::now();
    let handle: RunnerHandle = runner::spawn(log, family, directory, RunnerConfig::default());
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = handle.status();
        if s.checkpoint >= head {
            break;
        }
        anyhow::ensure!(
            s.state != "failing",
            "the projection fails: {}",
            s.last_error.unwrap_or_default()
        );
    }
    let took = started.elapsed().as_secs_f64();
    handle.stop().await;
    Ok(took)
}

/// The log in the batches a projection reads, keeping the events `want` selects.
fn batches(
    log: &dyn EventLog,
    want: &(dyn Fn(&str) -> bool + Sync),
) -> anyhow::Result<Vec<Vec<Envelope>>> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (events, last) = log.read_where(from, BATCH, want)?;
        if last == 0 {
            return Ok(out);
        }
        out.push(events);
        from = last + 1;
    }
}

struct Ratio {
    projection_s: f64,
    raw_s: f64,
}

pub async fn projections(opts: ProjectionsBenchOptions) -> anyhow::Result<String> {
    let run = stamp().replace('-', "_");
    let tmp = tempfile::tempdir()?;
    let per_terminal = opts.readings.div_ceil(opts.terminals as u64);
    let readings = per_terminal * opts.terminals as u64;
    println!(
        "bench projections: {readings} readings from {} scales; then {} readings/s for {} s",
        opts.terminals, opts.rate, opts.duration_s
    );
    let mut config = base_config(&tmp.path().join("fill"))?;
    config.projections.postgres_enabled = false;
    config.projections.influx_enabled = false;
    config.projections.search_enabled = false;
    let node = Node::start(config).await?;
    let client = NodeClient::new(node.url(), Some(node.admin_token.clone()));
    let scales = register(&client, opts.terminals).await?;
    fill(&client, scales, per_terminal).await?;
    while node.state.derived_seq.load(Ordering::Acquire) < node.state.log.last_seq() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = node.state.log.clone();
    let events = log.last_seq();
    let dir = Arc::new(std::sync::RwLock::new(Directory::load(log.as_ref())?));
    println!("  log: {events} events ({readings} readings)");

    // PostgreSQL.
    let database = format!("custodian_bench_{run}");
    let url = format!("{}/{database}", opts.postgres_server);
    let family = PgFamily::new(&url, "proj", dir.clone()).map_err(anyhow::Error::msg)?;
    let projection_s = project(log.clone(), Arc::new(family.clone()), dir.clone()).await?;
    println!(
        "  postgres projection: {:.0} readings/s",
        readings as f64 / projection_s
    );
    let raw_family = PgFamily::new(&url, "raw", dir.clone()).map_err(anyhow::Error::msg)?;
    let raw_model = raw_family.open(1);
    raw_model
        .prepare()
        .await
        .map_err(|e| anyhow::anyhow!("preparing the raw schema: {e}"))?;
    // The same events the projection reads.
    let pg_want = |t: &str| raw_model.wants(t);
    let folded: Vec<Rows> = {
        let d = dir.read().expect("directory lock");
        batches(log.as_ref(), &pg_want)?
            .iter()
            .map(|b| Rows::fold(b.iter(), &d))
            .collect()
    };
    let pool = raw_family.pool(Some("raw_g1"), 2);
    let started = Instant::now();
    for rows in folded {
        let mut tx = pool.begin().await?;
        // As the projection does (see `PgProjection::apply`).
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        rows.write(&mut tx).await?;
        tx.commit().await?;
    }
    let pg = Ratio {
        projection_s,
        raw_s: started.elapsed().as_secs_f64(),
    };
    println!(
        "  postgres raw: {:.0} readings/s",
        readings as f64 / pg.raw_s
    );
    pool.close().await;

    // InfluxDB.
    let client_for = |db: &str| InfluxClient::new(&opts.influx_url, Dialect::v1(db));
    let proj_db = format!("custodian_bench_{run}_proj");
    let raw_db = format!("custodian_bench_{run}_raw");
    let influx_family = InfluxFamily::new(
        client_for(&proj_db),
        &tmp.path().join("pointers"),
        log.clone(),
        dir.clone(),
    );
    let projection_s = project(log.clone(), Arc::new(influx_family), dir.clone()).await?;
    println!(
        "  influx projection: {:.0} readings/s",
        readings as f64 / projection_s
    );
    let raw = client_for(&raw_db);
    raw.ensure_target().await?;
    let read_started = Instant::now();
    let read = batches(log.as_ref(), &|t: &str| t == "ReadingRecorded")?;
    let read_s = read_started.elapsed().as_secs_f64();
    let build_started = Instant::now();
    let lines: Vec<Vec<String>> = {
        let d = dir.read().expect("directory lock");
        read.iter()
            .map(|b| {
                b.iter()
                    .filter_map(|e| match &e.event {
                        custodian_events::Event::ReadingRecorded(r) => {
                            Some(reading_line(r, e.seq, false, &d))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    };
    let build_s = build_started.elapsed().as_secs_f64();
    println!(
        "  reading and opening the log alone: {:.0} readings/s; building lines alone: {:.0} readings/s",
        readings as f64 / read_s,
        readings as f64 / build_s
    );
    let started = Instant::now();
    for l in &lines {
        raw.write_lines(l).await?;
    }
    let influx = Ratio {
        projection_s,
        raw_s: started.elapsed().as_secs_f64(),
    };
    println!(
        "  influx raw: {:.0} readings/s",
        readings as f64 / influx.raw_s
    );
    node.stop().await?;
    for db in [&proj_db, &raw_db] {
        let _ = client_for(db).drop_target().await;
    }

    // Lag at a steady rate, all three models live.
    let live_db = format!("custodian_bench_{run}_live");
    let mut config = base_config(&tmp.path().join("live"))?;
    config.projections.postgres_url = url.clone();
    config.projections.postgres_schema = "live".into();
    config.projections.influx_url = opts.influx_url.clone();
    config.projections.influx = Dialect::v1(live_db.clone());
    let node = Node::start(config).await?;
    let client = NodeClient::new(node.url(), Some(node.admin_token.clone()));
    let scales = register(&client, opts.terminals).await?;
    let (achieved, late) = paced(&node, &client, scales, &opts).await?;
    let mut lag_rows = String::new();
    for p in node.state.models.runners.get().into_iter().flatten() {
        let h = p.stats.lag_histogram();
        let s = p.status();
        println!(
            "  {} lag: p50 {} ms, p99 {} ms, max {} ms over {} batches",
            s.name,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
        lag_rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            s.name,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            s.lag_events
        ));
    }
    node.stop().await?;
    let _ = client_for(&live_db).drop_target().await;
    let _ = custodian_projections::postgres::drop_database(&opts.postgres_server, &database).await;

    let rate = |r: f64| readings as f64 / r;
    let markdown = format!(
        "# bench projections — {}\n\n\
         Release build, 2 cores shared by the node, the load generator and both databases (PostgreSQL 15,\n\
         InfluxDB 1.6.7, local). The log: {readings} SM2-signed weighings from {} scales in uploads of 100,\n\
         {events} events in all (readings, their signed bodies, registrations, data keys), every one sealed\n\
         with SM4-GCM. Batches of up to {BATCH} log records.\n\n\
         ## Throughput, side by side\n\n\
         *Projection*: a fresh model tails the log from 0 through the runner: read, open (SM4-GCM), fold,\n\
         write, commit with its checkpoint. *Raw*: the same batches, read and folded before the clock starts,\n\
         written straight to the database: PostgreSQL the same rows with the same multi-row statements in one\n\
         transaction per batch; InfluxDB the same points in the same gzip requests of ≤ 5,000 lines.\n\n\
         | database | projection readings/s | raw readings/s | ratio (target ≥ 0.7) |\n|---|---|---|---|\n\
         | PostgreSQL | {:.0} | {:.0} | {:.2} |\n\
         | InfluxDB | {:.0} | {:.0} | {:.2} |\n\n\
         ## Lag at a steady {} readings/s\n\n\
         A node with all three models live; {} scales paced to {} readings/s in uploads of 10 for {} s\n\
         (achieved {achieved:.0}/s, {late} late pacing ticks); lag histograms reset after {} s of warm-up.\n\
         Lag of a batch = the age of its oldest event when the batch committed.\n\n\
         | model | batches | p50 ms | p99 ms (target < 2,000) | max ms | lag at the end (events) |\n|---|---|---|---|---|---|\n\
         {lag_rows}",
        stamp(),
        opts.terminals,
        rate(pg.projection_s),
        rate(pg.raw_s),
        pg.raw_s / pg.projection_s,
        rate(influx.projection_s),
        rate(influx.raw_s),
        influx.raw_s / influx.projection_s,
        opts.rate,
        opts.terminals,
        opts.rate,
        opts.duration_s,
        opts.warmup_s,
    );
    println!(
        "  ratio projection/raw: postgres {:.2}, influx {:.2}",
        pg.raw_s / pg.projection_s,
        influx.raw_s / influx.projection_s
    );
    if let Some(dir) = &opts.report_dir {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("projections-{}.md", stamp()));
        std::fs::write(&path, &markdown)?;
        println!("  report: {}", path.display());
    }
    Ok(markdown)
}

/// `opts.rate` readings/s from the scales in uploads of 10, for warm-up plus `duration_s`.
async fn paced(
    node: &Node,
    client: &NodeClient,
    scales: Vec<SimTerminal>,
    opts: &ProjectionsBenchOptions,
) -> anyhow::Result<(f64, u64)> {
    const UPLOAD: usize = 10;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(opts.warmup_s);
    let stop_at = measure_from + Duration::from_secs(opts.duration_s);
    let per_terminal = opts.rate as f64 / scales.len() as f64;
    let period = Duration::from_secs_f64(UPLOAD as f64 / per_terminal);
    let sent = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let n = scales.len();
    let mut tasks = Vec::new();
    for (t, scale) in scales.into_iter().enumerate() {
        let (client, sent, late) = (client.clone(), sent.clone(), late.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(period.mul_f64(t as f64 / n as f64)).await;
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut seq = 0u64;
            while Instant::now() < stop_at {
                let tick = ticker.tick().await;
                if tick.elapsed() > period {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                let at = terminal_sim::now_rfc3339();
                let readings: Vec<String> = (0..UPLOAD)
                    .map(|_| {
                        seq += 1;
                        weighing(t, seq, &at)
                    })
                    .collect();
                let body = terminal_sim::upload_body(&scale.id, &readings);
                let sig = scale.sign(&body);
                client.upload(body, Some(&sig)).await?;
                let now = Instant::now();
                if now >= measure_from && now < stop_at {
                    sent.fetch_add(UPLOAD as u64, Ordering::Relaxed);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    for p in node.state.models.runners.get().into_iter().flatten() {
        p.stats.reset_lag_histogram();
    }
    for t in tasks {
        t.await??;
    }
    Ok((
        sent.load(Ordering::Relaxed) as f64 / opts.duration_s as f64,
        late.load(Ordering::Relaxed),
    ))
}

//! `custodian bench edge`: an edge and the platform in one process on loopback. The platform is down while
//! `terminals` terminals upload `backlog_per_terminal` readings each to the edge (one reading per upload,
//! the outbox's worst case); then the platform comes back while every terminal keeps reporting live every
//! `interval_s`. Reported: the outbox's bytes per buffered reading (and the edge log's), the size 72 hours
//! of 1,000 terminals every 10 s needs, and the backlog's drain rate beside the rate the terminals produce
//! in real time.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::client::{ClientError, NodeClient};
use crate::terminal_sim::{
    enterprise_body, signature_header, terminal_body, terminal_key, upload_body,
};
use custodian_node::config::Config;
use custodian_node::server::Node;

#[derive(Debug, Clone)]
pub struct EdgeBenchOptions {
    pub terminals: usize,
    pub backlog_per_terminal: u64,
    pub interval_s: u64,
    pub report_dir: Option<PathBuf>,
}

const ADMIN: &str = "bench-edge-admin-token-0000";

fn node_config(dir: &std::path::Path, listen: &str, master: &str) -> Config {
    let mut c = Config {
        listen: listen.parse().expect("an address"),
        data_dir: dir.to_owned(),
        admin_token: Some(ADMIN.into()),
        master_key: Some(master.to_owned()),
        ..Config::default()
    };
    c.projections.postgres_enabled = false;
    c.projections.influx_enabled = false;
    c.projections.search_enabled = false;
    c.derive.tick_interval_s = 0;
    c
}

fn reading(t: &str, seq: u64, at_s: i64) -> Vec<u8> {
    let at = time::OffsetDateTime::from_unix_timestamp(at_s)
        .expect("a time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    upload_body(
        t,
        &[format!(
            r#"{{"seq":{seq},"measured_at":"{at}","kind":"weight","value":{:.1},"unit":"kg","container_id":"{t}-C1","stage":"storage_in","waste_code":"HW08"}}"#,
            100.0 + (seq % 5) as f64 * 0.1
        )],
    )
}

/// Uploads one body until the edge takes it (it answers 503 while busy).
async fn upload(
    client: &NodeClient,
    body: Vec<u8>,
    sig: &str,
    refusals: &AtomicU64,
) -> anyhow::Result<()> {
    loop {
        match client.upload(body.clone(), Some(sig)).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Status { status: 503, .. }) => {
                refusals.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("an upload to the edge failed: {e}")),
        }
    }
}

pub async fn edge(opts: EdgeBenchOptions) -> anyhow::Result<String> {
    let n = opts.terminals;
    let backlog = opts.backlog_per_terminal;
    let dir = tempfile::tempdir()?;
    let (cloud_dir, edge_dir) = (dir.path().join("cloud"), dir.path().join("edge"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cloud_listen = format!("127.0.0.1:{port}");
    let master = custodian_node::server::fresh_master_key_hex();
    let cloud = Node::start(node_config(&cloud_dir, &cloud_listen, &master)).await?;
    let c = NodeClient::new(cloud.url(), Some(ADMIN.into()));
    eprintln!("registering {n} terminals and the edge at the platform");
    c.register("/v1/enterprises", &enterprise_body(0)).await?;
    let ids: Vec<String> = (0..n).map(|i| format!("B-{i}")).collect();
    let mut keys = Vec::with_capacity(n);
    for id in &ids {
        let key = terminal_key(id, 1);
        c.register(
            "/v1/terminals",
            &terminal_body(id, 0, Some(&key.public_key_pem())),
        )
        .await?;
        keys.push(Arc::new(key));
    }
    std::fs::create_dir_all(&edge_dir)?;
    let edge_key = custodian_node::tokens::Tokens::open(
        &edge_dir.join("platform_signing.key"),
        &custodian_events::crypto::OsEntropy,
    )?;
    let (status, v) = c
        .post_admin("/v1/edges", &json!({"id": "EDGE-B", "public_key_pem": edge_key.key().public_key_pem(), "enterprise_ids": ["E-0"]}))
        .await?;
    anyhow::ensure!(status == 201, "registering the edge: {status} {v}");
    let seed = dir.path().join("registrations.json");
    std::fs::write(
        &seed,
        c.get_admin("/v1/admin/edges/EDGE-B/registrations")
            .await?
            .to_string(),
    )?;
    let platform_key = dir.path().join("platform.pem");
    std::fs::write(
        &platform_key,
        c.get_admin("/v1/edge/public-key").await?["public_key_pem"]
            .as_str()
            .unwrap_or_default(),
    )?;
    cloud.stop().await?;

    let mut ec = node_config(&edge_dir, "127.0.0.1:0", &master);
    ec.edge.id = Some("EDGE-B".into());
    ec.edge.upstream = Some(format!("http://{cloud_listen}"));
    ec.edge.seed_registrations_file = Some(seed);
    ec.edge.upstream_public_key_file = Some(platform_key);
    let edge = Node::start_edge(ec).await?;
    let e = NodeClient::new(edge.url(), Some(ADMIN.into()));
    let rt = edge.state.edge.get().context("the edge runtime")?.clone();

    // The backlog, while the platform is down.
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    let start_s = now_s - (backlog as i64) * opts.interval_s as i64;
    let refusals = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let total = backlog * n as u64;
    eprintln!(
        "platform down: {n} terminals upload {backlog} readings each to the edge ({total} readings)"
    );
    let t0 = Instant::now();
    let workers = 32usize.min(n);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (e, ids, keys, refusals, done) = (
            e.clone(),
            ids.clone(),
            keys.clone(),
            refusals.clone(),
            done.clone(),
        );
        let interval = opts.interval_s as i64;
        tasks.push(tokio::spawn(async move {
            for seq in 1..=backlog {
                for i in (w..ids.len()).step_by(workers) {
                    let body = reading(&ids[i], seq, start_s + (seq as i64 - 1) * interval);
                    let sig = signature_header(&keys[i], &body);
                    upload(&e, body, &sig, &refusals).await?;
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if d % 20_000 == 0 {
                        eprintln!("  {d}/{total} readings at the edge");
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ingest_s = t0.elapsed().as_secs_f64();
    while rt.outbox.checkpoint_seq() < edge.state.log.last_seq() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = rt.outbox.counts();
    let per_reading = counts.bytes as f64 / total as f64;
    let log_per_reading = edge.state.log.size_on_disk().unwrap_or(0) as f64 / total as f64;
    let outbox_disk_per_reading = rt.outbox.size_on_disk() as f64 / total as f64;
    let readings_72h = 72 * 3600 / 10 * 1000u64;

    // The platform is back; live readings go on at real time while the backlog drains.
    eprintln!(
        "platform back: draining while every terminal reports every {} s",
        opts.interval_s
    );
    let cloud = Node::start(node_config(&cloud_dir, &cloud_listen, &master)).await?;
    let t1 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicU64::new(0));
    let live_task = {
        let (e, ids, keys, refusals, stop, live) = (
            e.clone(),
            ids.clone(),
            keys.clone(),
            refusals.clone(),
            stop.clone(),
            live.clone(),
        );
        let interval = opts.interval_s;
        tokio::spawn(async move {
            let mut seq = backlog;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let round = Instant::now();
                let at = time::OffsetDateTime::now_utc().unix_timestamp();
                for (i, id) in ids.iter().enumerate() {
                    let body = reading(id, seq, at);
                    let sig = signature_header(&keys[i], &body);
                    upload(&e, body, &sig, &refusals).await?;
                    live.fetch_add(1, Ordering::Relaxed);
                    // Spread the round over the interval, as real terminals would.
                    let due =
                        Duration::from_secs(interval).mul_f64((i + 1) as f64 / ids.len() as f64);
                    if let Some(wait) = due.checked_sub(round.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let cloud_accepted = || {
        cloud
            .state
            .metrics
            .readings_accepted
            .load(Ordering::Relaxed)
    };
    let mut last_print = Instant::now();
    let mut first_ack: Option<Instant> = None;
    while cloud_accepted() < total {
        if first_ack.is_none() && cloud_accepted() > 0 {
            first_ack = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {}/{total} backlog readings at the platform",
                cloud_accepted().min(total)
            );
            last_print = Instant::now();
        }
        anyhow::ensure!(
            t1.elapsed() < Duration::from_secs(3_600),
            "the drain took over an hour"
        );
    }
    let drain_s = t1.elapsed().as_secs_f64();
    // The forwarder's backoff had grown to its cap while the platform was away: up to 30 s pass before
    // it tries again. The rate from the first acknowledgement is what the link then carries.
    let waited_s = first_ack.map(|f| (f - t1).as_secs_f64()).unwrap_or(0.0);
    let flowing_rate = total as f64 / (drain_s - waited_s).max(0.001);
    stop.store(true, Ordering::Relaxed);
    live_task.await??;
    let live_sent = live.load(Ordering::Relaxed);
    // Everything sent, live included, reaches the platform.
    let everything = total + live_sent;
    let t2 = Instant::now();
    while cloud_accepted() < everything {
        anyhow::ensure!(
            t2.elapsed() < Duration::from_secs(120),
            "live readings did not all arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_rate = total as f64 / drain_s;
    let real_time_rate = n as f64 / opts.interval_s as f64;
    let backlog_span_s = backlog as f64 * opts.interval_s as f64;
    let markdown = format!(
        "# Edge store-and-forward benchmark ({stamp})\n\n\
         `custodian bench edge --terminals {n} --backlog-per-terminal {backlog} --interval-s {interval}`: an edge and the platform in one process on loopback, release build, 2 shared cores shared by both nodes and the simulated terminals. One reading per upload (the outbox's worst case).\n\n\
         ## Outbox size\n\n\
         | | bytes per buffered reading |\n|---|---|\n\
         | outbox, counted (keys + values) | {per_reading:.0} |\n\
         | outbox, sled files on disk | {outbox_disk_per_reading:.0} |\n\
         | edge event log, on disk (kept for dedupe and the domain rules) | {log_per_reading:.0} |\n\n\
         72 hours of 1,000 terminals every 10 s is {readings_72h} readings: **{gib_72h:.1} GiB** of outbox at the counted size (the default `edge.outbox_bytes_max` is {default_gib:.0} GiB, from `OUTBOX_BYTES_PER_READING` = {per_reading_const}), and {log_gib_72h:.1} GiB of edge log.\n\n\
         ## Drain while live traffic continues\n\n\
         | | value |\n|---|---|\n\
         | backlog | {total} readings ({n} terminals × {backlog}; {span_h:.2} h of real time) |\n\
         | edge ingest while the platform was down | {ingest_rate:.0} readings/s |\n\
         | drain, platform back to the last backlog reading stored | {drain_s:.1} s |\n\
         | drain rate | {drain_rate:.0} readings/s |\n\
         | terminals' real-time rate | {real_time_rate:.0} readings/s |\n\
         | **drain ÷ real time** | **{ratio:.1}×** (target ≥ 20×) |\n\
         | of which waiting for the next retry (backoff capped at 30 s) | {waited_s:.1} s |\n\
         | drain rate from the platform's first acknowledgement | {flowing_rate:.0} readings/s = **{flowing_ratio:.1}×** real time |\n\
         | live readings taken during the drain | {live_sent} (all delivered) |\n\
         | 503 answers the terminals backed off on | {refusals} |\n",
        stamp = crate::bench::stamp(),
        interval = opts.interval_s,
        gib_72h = readings_72h as f64 * per_reading / (1u64 << 30) as f64,
        default_gib = custodian_node::edge::OUTBOX_BYTES_DEFAULT as f64 / (1u64 << 30) as f64,
        per_reading_const = custodian_node::edge::OUTBOX_BYTES_PER_READING,
        log_gib_72h = readings_72h as f64 * log_per_reading / (1u64 << 30) as f64,
        span_h = backlog_span_s / 3600.0,
        ingest_rate = total as f64 / ingest_s,
        ratio = drain_rate / real_time_rate,
        flowing_ratio = flowing_rate / real_time_rate,
        refusals = refusals.load(Ordering::Relaxed),
    );
    println!("{markdown}");
    edge.stop().await?;
    cloud.stop().await?;
    if let Some(d) = opts.report_dir {
        std::fs::create_dir_all(&d)?;
        let file = d.join(format!("edge-{}.md", crate::bench::stamp()));
        std::fs::write(&file, &markdown)?;
        println!("report written to {}", file.display());
    }
    Ok(markdown)
}

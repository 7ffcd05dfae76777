//! `custodian bench ingest`: readings/s and acknowledgement latency over HTTP against a local node, and in
//! the same run the ceiling — the same pre-encoded batches appended straight to a sled log at the same
//! concurrency and flush policy. The report goes to stdout and to a Markdown file under `bench/results/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use custodian_events::crypto::{Entropy, OsEntropy};
use custodian_events::keyring::Keyring;
use custodian_events::{Event, RawReading, Reading, ReadingCheck, TerminalId};
use custodian_log::{EventLog, Proposed, SledLog, SledLogConfig};
use hdrhistogram::Histogram;

use crate::client::NodeClient;
use crate::terminal_sim::{self, SimTerminal};
use custodian_node::config::Config;
use custodian_node::server::{Node, SystemClock};
use custodian_node::upload::ReadingResult;

#[derive(Debug, Clone)]
pub struct IngestBenchOptions {
    /// Concurrent simulated terminals, each with one request in flight.
    pub terminals: usize,
    /// Readings per upload.
    pub batch: usize,
    /// Measured seconds per phase.
    pub duration_s: u64,
    /// Unmeasured seconds before the HTTP phase.
    pub warmup_s: u64,
    /// Where the Markdown report goes; none when `None`.
    pub report_dir: Option<PathBuf>,
    /// Stop after the signed HTTP phase (for profiling it).
    pub signed_only: bool,
}

/// The figures of one phase.
#[derive(Debug, Clone)]
pub struct PhaseResult {
    pub readings: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub commits: u64,
    /// 503 answers (backpressure from anomaly detection, or a full log queue) the terminals backed off on.
    pub refusals: u64,
    /// How far anomaly detection was behind the log when the phase ended, in events.
    pub detection_lag_events: Option<u64>,
}

impl PhaseResult {
    pub fn rate(&self) -> f64 {
        self.readings as f64 / self.seconds
    }
}

#[derive(Debug, Clone)]
pub struct IngestBenchReport {
    /// Every upload signed (SM2) and verified, as in production.
    pub http: PhaseResult,
    /// Signed, with anomaly detection off (`derive.enabled = false`): the ingest path alone.
    pub ingest_only: PhaseResult,
    /// Unsigned (`ingest.require_signature = false`), detection off.
    pub unsigned: PhaseResult,
    pub ceiling: PhaseResult,
    pub markdown: String,
}

pub async fn ingest(opts: IngestBenchOptions) -> anyhow::Result<IngestBenchReport> {
    anyhow::ensure!(
        opts.terminals >= 1 && opts.batch >= 1,
        "terminals and batch must be at least 1"
    );
    println!(
        "bench ingest: {} terminals, batches of {}, {} s warm-up, {} s per phase",
        opts.terminals, opts.batch, opts.warmup_s, opts.duration_s
    );
    let config = Config::default();
    let http = http_phase(&opts, &config, true, true).await?;
    println!(
        "  signed   {:>10.0} readings/s  p50 {} µs  p99 {} µs",
        http.rate(),
        http.p50_us,
        http.p99_us
    );
    if opts.signed_only {
        return Ok(IngestBenchReport {
            ingest_only: http.clone(),
            unsigned: http.clone(),
            ceiling: http.clone(),
            markdown: String::new(),
            http,
        });
    }
    let ingest_only = http_phase(&opts, &config, true, false).await?;
    println!(
        "  signed, detection off {:>10.0} readings/s  p50 {} µs  p99 {} µs",
        ingest_only.rate(),
        ingest_only.p50_us,
        ingest_only.p99_us
    );
    let unsigned = http_phase(&opts, &config, false, false).await?;
    println!(
        "  unsigned, detection off {:>10.0} readings/s  p50 {} µs  p99 {} µs",
        unsigned.rate(),
        unsigned.p50_us,
        unsigned.p99_us
    );
    let ceiling = ceiling_phase(&opts, &config, http.readings).await?;
    println!(
        "  ceiling  {:>10.0} readings/s  p50 {} µs  p99 {} µs",
        ceiling.rate(),
        ceiling.p50_us,
        ceiling.p99_us
    );
    let markdown = render(&opts, &config, &http, &ingest_only, &unsigned, &ceiling);
    println!("\n{markdown}");
    if let Some(dir) = &opts.report_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create report dir {}", dir.display()))?;
        let file = dir.join(format!("ingest-{}.md", stamp()));
        std::fs::write(&file, &markdown)
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!("report written to {}", file.display());
    }
    Ok(IngestBenchReport {
        http,
        ingest_only,
        unsigned,
        ceiling,
        markdown,
    })
}

async fn http_phase(
    opts: &IngestBenchOptions,
    base: &Config,
    signed: bool,
    detect: bool,
) -> anyhow::Result<PhaseResult> {
    let tmp = tempfile::tempdir()?;
    let mut config = crate::local::own_node(tmp.path().join("node"), base.clone());
    config.ingest.require_signature = signed;
    config.derive.enabled = detect;
    // Ingest alone (and with detection).
    crate::local::without_read_models(&mut config);
    let node = Node::start(config).await?;
    let client = NodeClient::new(node.url(), Some(node.admin_token.clone()));
    client
        .register("/v1/enterprises", &terminal_sim::enterprise_body(0))
        .await?;
    let mut terminals = Vec::with_capacity(opts.terminals);
    for t in 0..opts.terminals {
        let term = SimTerminal::new(format!("B-{t}"), t as u64);
        let registration = if signed {
            term.registration(0)
        } else {
            terminal_sim::terminal_body(&term.id, 0, None)
        };
        client.register("/v1/terminals", &registration).await?;
        terminals.push(term);
    }
    let commits_before = Arc::new(AtomicU64::new(0));
    let refusals = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(opts.warmup_s);
    let stop_at = measure_from + Duration::from_secs(opts.duration_s);
    let mut tasks = Vec::new();
    for mut term in terminals {
        let client = client.clone();
        let batch = opts.batch;
        let refusals = refusals.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("a valid histogram");
            let mut readings = 0u64;
            loop {
                let now = Instant::now();
                if now >= stop_at {
                    break;
                }
                let (body, _) = term.next_body(batch, &terminal_sim::now_rfc3339());
                // Terminals sign before they send; that is their cost, not the node's.
                let signature = signed.then(|| term.sign(&body));
                let sent = Instant::now();
                // Back off on 503 (backpressure, a full queue) and send again, as a terminal does; the
                // latency counts from the first attempt.
                let resp = loop {
                    match client.upload(body.clone(), signature.as_deref()).await {
                        Err(crate::client::ClientError::Status { status: 503, .. }) => {
                            refusals.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => break other?,
                    }
                };
                let took = sent.elapsed();
                anyhow::ensure!(
                    resp.results
                        .iter()
                        .all(|r| matches!(r, ReadingResult::Accepted { .. })),
                    "the benchmark's readings should all be accepted: {:?}",
                    resp.results
                        .iter()
                        .find(|r| !matches!(r, ReadingResult::Accepted { .. }))
                );
                if sent >= measure_from && sent + took <= stop_at {
                    hist.record(took.as_micros() as u64)?;
                    readings += batch as u64;
                }
            }
            Ok::<_, anyhow::Error>((hist, readings))
        }));
    }
    // Count group commits over the measured window only.
    tokio::time::sleep_until(measure_from.into()).await;
    commits_before.store(node.state.log.commits_total(), Ordering::Relaxed);
    tokio::time::sleep_until(stop_at.into()).await;
    let commits = node.state.log.commits_total() - commits_before.load(Ordering::Relaxed);
    let (hist, readings) = merge(tasks).await?;
    let lag = node.state.log.last_seq().saturating_sub(
        node.state
            .derived_seq
            .load(std::sync::atomic::Ordering::Acquire),
    );
    node.stop().await?;
    let mut result = phase(hist, readings, opts.duration_s as f64, commits);
    result.refusals = refusals.load(Ordering::Relaxed);
    result.detection_lag_events = detect.then_some(lag);
    Ok(result)
}

async fn ceiling_phase(
    opts: &IngestBenchOptions,
    base: &Config,
    http_readings: u64,
) -> anyhow::Result<PhaseResult> {
    // Pre-encode three times what HTTP managed, at most 3 million readings: the ceiling phase ends when
    // the time is up or the batches run out, whichever comes first.
    let total = (http_readings * 3).clamp(opts.batch as u64 * opts.terminals as u64, 3_000_000);
    let per_task = (total / opts.terminals as u64).div_ceil(opts.batch as u64) as usize;
    println!(
        "  pre-encoding {} readings for the ceiling phase…",
        per_task * opts.batch * opts.terminals
    );
    let check = ReadingCheck {
        now_ns: i64::MAX / 2,
        future_skew_ns_max: 0,
    };
    let now = terminal_sim::now_rfc3339();
    let keyring = Arc::new(Keyring::new(
        {
            let mut k = [0u8; 16];
            OsEntropy.fill(&mut k);
            k
        },
        Arc::new(OsEntropy),
    ));
    let data_key = keyring.install(&keyring.issue("E-0", 1))?;
    let mut prepared: Vec<Vec<Vec<Proposed>>> = Vec::with_capacity(opts.terminals);
    for t in 0..opts.terminals {
        let id = format!("B-{t}");
        let terminal = TerminalId::parse(&id)?;
        let mut term = SimTerminal::new(id, t as u64);
        let mut batches = Vec::with_capacity(per_task);
        for _ in 0..per_task {
            let mut batch = Vec::with_capacity(opts.batch);
            for _ in 0..opts.batch {
                let seq = term.next_seq;
                term.next_seq += 1;
                let raw: RawReading = serde_json::from_str(&term.reading_json(seq, &now))?;
                let reading = Reading::normalize(&terminal, &raw, check)
                    .map_err(|r| anyhow::anyhow!("simulated reading rejected: {r}"))?;
                batch.push(
                    Proposed::new(Event::ReadingRecorded(reading)).sealed_with(&keyring, &data_key),
                );
            }
            batches.push(batch);
        }
        prepared.push(batches);
    }
    let tmp = tempfile::tempdir()?;
    let log_config = SledLogConfig {
        queue_requests_max: base.log.queue_requests_max,
        group_events_max: base.log.group_events_max,
        batch_events_max: base.ingest.batch_readings_max,
        cache_capacity_bytes: base.log.cache_capacity_bytes,
        ..SledLogConfig::new(tmp.path().join("log"))
    };
    let log = Arc::new(SledLog::open(
        log_config,
        Arc::new(SystemClock),
        Some(keyring),
    )?);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(opts.duration_s);
    let mut tasks = Vec::new();
    for batches in prepared {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("a valid histogram");
            let mut readings = 0u64;
            for batch in batches {
                if Instant::now() >= stop_at {
                    break;
                }
                let n = batch.len() as u64;
                let sent = Instant::now();
                log.append(batch).await?;
                hist.record(sent.elapsed().as_micros() as u64)?;
                readings += n;
            }
            Ok::<_, anyhow::Error>((hist, readings))
        }));
    }
    let (hist, readings) = merge(tasks).await?;
    let seconds = start.elapsed().as_secs_f64().min(opts.duration_s as f64);
    let commits = log.commits_total();
    Ok(phase(hist, readings, seconds, commits))
}

type TaskResult = anyhow::Result<(Histogram<u64>, u64)>;

async fn merge(
    tasks: Vec<tokio::task::JoinHandle<TaskResult>>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new(3).expect("a valid histogram");
    let mut readings = 0;
    for t in tasks {
        let (h, n) = t.await??;
        hist.add(h)?;
        readings += n;
    }
    Ok((hist, readings))
}

fn phase(hist: Histogram<u64>, readings: u64, seconds: f64, commits: u64) -> PhaseResult {
    PhaseResult {
        readings,
        seconds,
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        commits,
        refusals: 0,
        detection_lag_events: None,
    }
}

fn render(
    opts: &IngestBenchOptions,
    config: &Config,
    http: &PhaseResult,
    ingest_only: &PhaseResult,
    unsigned: &PhaseResult,
    ceiling: &PhaseResult,
) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ratio = ingest_only.rate() / ceiling.rate();
    let signed_ratio = ingest_only.rate() / unsigned.rate();
    let detection_ratio = http.rate() / ingest_only.rate();
    let row = |name: &str, p: &PhaseResult| {
        format!(
            "| {name} | {:.0} | {:.1} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
            p.rate(),
            p.seconds,
            p.p50_us,
            p.p99_us,
            p.p999_us,
            p.max_us,
            p.commits,
            if p.commits > 0 {
                p.readings as f64 / p.commits as f64
            } else {
                0.0
            },
            p.refusals,
            p.detection_lag_events
                .map_or_else(|| "off".to_owned(), |l| l.to_string()),
        )
    };
    format!(
        "# Ingest benchmark\n\n\
         - when: {}\n\
         - build: {}\n\
         - machine: {cores} cores; load generator in the same process\n\
         - terminals (concurrent requests): {}; readings per upload: {}; warm-up {} s; measured {} s per phase\n\
         - flush policy: fsync (sled `flush`) before every acknowledgement, group commit of up to {} events\n\n\
         | phase | readings/s | seconds | p50 µs | p99 µs | p99.9 µs | max µs | fsyncs | readings per fsync | 503s backed off | detection lag at end (events) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n\
         {}\n\
         {}\n\
         {}\n\
         {}\n\n\
         **ratio signed ingest / ceiling: {ratio:.2}**; signed / unsigned: {signed_ratio:.2}; with anomaly\n\
         detection running / without: {detection_ratio:.2} (ingest target: at least 50,000 readings/s, signed).\n\n\
         The HTTP phases are the whole ingest path: JSON parse, SM2 signature check (signed phase; the\n\
         terminals sign in the load generator), validation and normalisation, SHA-256 fingerprint of the\n\
         canonical form, SM4-GCM sealing at rest, the signed body kept as evidence (signed phase), dedupe,\n\
         rkyv encoding, group commit with fsync, JSON answer — while the domain core tails the log and\n\
         decides weight fluctuations (ingest pushes back with 503 when it lags more than\n\
         `derive.lag_events_max` events). The ceiling appends the same kind of batches,\n\
         already parsed, fingerprinted and sealed, straight to the log with the same concurrency and flush\n\
         policy; the latency there is per append call.\n",
        crate::terminal_sim::now_rfc3339(),
        if cfg!(debug_assertions) {
            "debug (numbers are not representative; use --release)"
        } else {
            "release"
        },
        opts.terminals,
        opts.batch,
        opts.warmup_s,
        opts.duration_s,
        config.log.group_events_max,
        row(
            "signed uploads, anomaly detection running (the whole node)",
            http
        ),
        row("signed uploads, detection off (ingest alone)", ingest_only),
        row("unsigned uploads, detection off", unsigned),
        row("ceiling: sled log direct", ceiling),
    )
}

/// `custodian bench crypto`: SM2 and SM4-GCM on one core, as a Markdown report.
pub fn crypto(report_dir: Option<PathBuf>) -> anyhow::Result<String> {
    use custodian_events::crypto::{Sm2KeyPair, Sm2PublicKey, sm4_gcm_open, sm4_gcm_seal};
    let key = Sm2KeyPair::generate(&OsEntropy);
    let public = Sm2PublicKey::from_der(&key.public_key_der())?;
    let body = vec![b'x'; 30_000]; // about one upload of 100 readings
    let timed = |n: u32, f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        n as f64 / start.elapsed().as_secs_f64()
    };
    println!("bench crypto: one thread");
    let sig = key.sign(&body);
    let verify_per_s = timed(2000, &mut || public.verify(&body, &sig).expect("verifies"));
    let sign_per_s = timed(2000, &mut || {
        std::hint::black_box(key.sign(&body));
    });
    let k = [7u8; 16];
    let nonce = [9u8; 12];
    let mut rows = Vec::new();
    for size in [330usize, 64 * 1024] {
        let pt = vec![0u8; size];
        let n = (64 * 1024 * 1024 / size) as u32;
        let sealed = sm4_gcm_seal(&k, &nonce, b"aad", &pt);
        let seal_per_s = timed(n, &mut || {
            std::hint::black_box(sm4_gcm_seal(&k, &nonce, b"aad", &pt));
        });
        let open_per_s = timed(n, &mut || {
            std::hint::black_box(sm4_gcm_open(&k, &nonce, b"aad", &sealed).expect("opens"));
        });
        rows.push(format!(
            "| SM4-GCM, {size} B buffers | seal {:.1} MB/s ({:.0}/s) | open {:.1} MB/s ({:.0}/s) |",
            seal_per_s * size as f64 / 1e6,
            seal_per_s,
            open_per_s * size as f64 / 1e6,
            open_per_s
        ));
    }
    let markdown = format!(
        "# Crypto benchmark\n\n\
         - when: {}\n- build: {}\n- one thread; RustCrypto `sm2` 0.14, `sm4` 0.6 + `aes-gcm` 0.11 (software SM4)\n\n\
         | operation | rate | |\n|---|---|---|\n\
         | SM2 verify (SM3, 30 KB body ≈ one upload of 100 readings) | {verify_per_s:.0}/s per core | = {:.0} readings/s per core at 100 per signature |\n\
         | SM2 sign (same body) | {sign_per_s:.0}/s | |\n\
         {}\n",
        terminal_sim::now_rfc3339(),
        if cfg!(debug_assertions) {
            "debug (not representative; use --release)"
        } else {
            "release"
        },
        verify_per_s * 100.0,
        rows.join("\n"),
    );
    println!("\n{markdown}");
    if let Some(dir) = report_dir {
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("crypto-{}.md", stamp()));
        std::fs::write(&file, &markdown)?;
        println!("report written to {}", file.display());
    }
    Ok(markdown)
}

/// The UTC time as `YYYYMMDD-HHMMSS`, naming report files.
pub fn stamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .expect("formatting a timestamp")
}

//! `custodian log export|import` and `custodian replay`: copying a log out of a running node, restoring it
//! into a data dir, and replaying a recorded log through the current domain core.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use custodian_events::crypto::OsEntropy;
use custodian_events::envelope::Envelope;
use custodian_events::keyring::{Keyring, MASTER_KEY_LEN, parse_master_key};
use custodian_events::replay::{Replay, ReplayReport};
use custodian_log::export::ExportReader;
use custodian_log::{EventLog, SledLog, SledLogConfig};

use custodian_node::config::Config;
use custodian_node::datadir::DataDir;
use custodian_node::server::SystemClock;

/// The master key of a log being copied or replayed elsewhere: `CUSTODIAN_MASTER_KEY` / `master_key`, else
/// `master_key_file`, else `DIR/master.key` when a data dir is given. Never made up: a fresh key could not
/// open the source's sealed events.
fn source_master_key(
    config: &Config,
    data_dir: Option<&Path>,
) -> anyhow::Result<[u8; MASTER_KEY_LEN]> {
    if let Some(hex) = &config.master_key {
        return parse_master_key(hex)
            .context("master_key (CUSTODIAN_MASTER_KEY) must be 32 hex digits");
    }
    let file = match (&config.master_key_file, data_dir) {
        (Some(f), _) => f.clone(),
        (None, Some(d)) => d.join("master.key"),
        (None, None) => anyhow::bail!(
            "master_key_missing: the log's payloads are sealed; set CUSTODIAN_MASTER_KEY (or master_key_file \
             in --config) to the source node's master key"
        ),
    };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "master_key_missing: cannot read {}; copy the source node's master.key there or set \
             CUSTODIAN_MASTER_KEY to it",
            file.display()
        )
    })?;
    parse_master_key(&text)
        .with_context(|| format!("master key file {} must hold 32 hex digits", file.display()))
}

/// A `Read` over the chunks another thread hands it.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// `custodian log export --node URL > FILE`: streams the node's log to stdout, checking every frame and the
/// trailer as it goes; a failure is an error exit (and the partial file has no trailer, so no import takes it).
pub async fn export(node: &str, admin_token: Option<String>) -> anyhow::Result<()> {
    let token = admin_token.context(
        "the export needs the node's admin token: --admin-token or CUSTODIAN_ADMIN_TOKEN",
    )?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/admin/log/export", node.trim_end_matches('/'));
    let mut resp = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is the node running?"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {body}");
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(64);
    let checker = std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
        let mut reader = ExportReader::open(ChannelReader {
            rx,
            buf: Vec::new(),
            at: 0,
        })?;
        let last = reader.header().last_seq;
        let started = Instant::now();
        let mut n = 0u64;
        for r in &mut reader {
            let (seq, _) = r?;
            n += 1;
            if seq.is_multiple_of(100_000) {
                eprint!(
                    "\rexporting: {seq}/{last} records, {:.0}/s",
                    seq as f64 / started.elapsed().as_secs_f64().max(1e-3)
                );
            }
        }
        Ok((n, last))
    });
    let mut stdout = std::io::stdout().lock();
    let mut bytes = 0u64;
    let fed: anyhow::Result<()> = async {
        while let Some(chunk) = resp.chunk().await.context("the export stream broke off")? {
            stdout
                .write_all(&chunk)
                .context("cannot write the export to stdout")?;
            bytes += chunk.len() as u64;
            if tx.send(chunk.to_vec()).is_err() {
                break; // the checker stopped: its error says why
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    stdout.flush()?;
    let checked = checker
        .join()
        .map_err(|_| anyhow::anyhow!("the export checker panicked"))?;
    fed?;
    let (records, last) = checked.context("the export did not check out; do not keep this file")?;
    eprintln!("\rexported {records} records (last seq {last}), {bytes} bytes, checked");
    Ok(())
}

/// `custodian log import FILE --data-dir DIR`: restores an export into an empty data dir, checking every
/// record with the source's master key, which it also leaves in `DIR/master.key` for the node.
pub fn import(file: &Path, data_dir: &Path, config: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let master = source_master_key(&config, Some(data_dir)).or_else(|e| {
        // A master.key next to the export file is the usual backup layout.
        let beside = file.with_file_name("master.key");
        match std::fs::read_to_string(&beside) {
            Ok(text) => parse_master_key(&text)
                .with_context(|| format!("{} must hold 32 hex digits", beside.display())),
            Err(_) => Err(e),
        }
    })?;
    let dir = DataDir::acquire(data_dir)?;
    anyhow::ensure!(
        !dir.log_path().exists(),
        "{} already holds a log; import only into a new data dir",
        dir.log_path().display()
    );
    if !dir.path().join("master.key").exists() {
        dir.write_secret("master.key", &hex::encode(master))
            .context("cannot write the master key into the data dir")?;
    }
    let input = std::fs::File::open(file)
        .with_context(|| format!("cannot open the export {}", file.display()))?;
    let mut reader = ExportReader::open(std::io::BufReader::with_capacity(1 << 20, input))
        .with_context(|| format!("{} is not a log export", file.display()))?;
    let last = reader.header().last_seq;
    let started = Instant::now();
    let log = SledLog::import(
        SledLogConfig::new(dir.log_path()),
        Arc::new(SystemClock),
        Some(Arc::new(Keyring::new(master, Arc::new(OsEntropy)))),
        &mut reader,
        &mut |seq| {
            eprint!(
                "\rimporting: {seq}/{last} records, {:.0}/s",
                seq as f64 / started.elapsed().as_secs_f64().max(1e-3)
            )
        },
    )
    .with_context(|| {
        format!(
            "the import of {} stopped; {} is left half-filled: delete it before trying again",
            file.display(),
            dir.log_path().display()
        )
    })?;
    eprintln!();
    println!(
        "imported {} records into {} in {:.1} s; every record checked",
        log.last_seq(),
        dir.path().display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Where `custodian replay` reads from.
pub enum ReplaySource {
    DataDir(PathBuf),
    File(PathBuf),
}

/// What `custodian replay` was asked.
pub struct ReplayOptions {
    pub source: ReplaySource,
    pub until: Option<u64>,
    pub compare: bool,
    pub config: Option<PathBuf>,
    /// Print at most this many differences (all are counted).
    pub differences_max: usize,
}

/// `custodian replay`: the log through the current domain core, with the node's configured rules.
pub fn replay(opts: ReplayOptions) -> anyhow::Result<ReplayReport> {
    let config = Config::load(opts.config.as_deref())?;
    let until = opts.until.unwrap_or(u64::MAX);
    let mut replay = Replay::new(config.derive.rules(), opts.compare);
    let started = Instant::now();
    let progress = |seq: u64, last: u64| {
        if seq.is_multiple_of(50_000) || seq == last {
            let rate = seq as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let eta = (last.saturating_sub(seq)) as f64 / rate.max(1.0);
            eprint!("\rreplaying: {seq}/{last} events, {rate:.0}/s, ~{eta:.0} s left   ");
        }
    };
    match &opts.source {
        ReplaySource::DataDir(path) => {
            let dir = DataDir::acquire(path)?;
            let master = source_master_key(&config, Some(path))?;
            let log = SledLog::open(
                SledLogConfig::new(dir.log_path()),
                Arc::new(SystemClock),
                Some(Arc::new(Keyring::new(master, Arc::new(OsEntropy)))),
            )
            .with_context(|| format!("cannot open the log in {}", dir.log_path().display()))?;
            let last = log.last_seq().min(until);
            let mut from = 1;
            while from <= last {
                let chunk = log.read(from, 4_096.min((last - from + 1) as usize))?;
                let Some(end) = chunk.last().map(|e| e.seq) else {
                    break;
                };
                for env in &chunk {
                    replay.step(env);
                    progress(env.seq, last);
                }
                from = end + 1;
            }
        }
        ReplaySource::File(file) => {
            let master = source_master_key(&config, file.parent())?;
            let keyring = Keyring::new(master, Arc::new(OsEntropy));
            let input = std::fs::File::open(file)
                .with_context(|| format!("cannot open the export {}", file.display()))?;
            let reader = ExportReader::open(std::io::BufReader::with_capacity(1 << 20, input))
                .with_context(|| format!("{} is not a log export", file.display()))?;
            let last = reader.header().last_seq.min(until);
            for r in reader {
                let (seq, record) = r?;
                if seq > until {
                    break;
                }
                let env = Envelope::decode(seq, &record, Some(&keyring))?;
                if let custodian_events::Event::DataKeyIssued(k) = &env.event {
                    keyring.install(k)?;
                }
                replay.step(&env);
                progress(seq, last);
            }
        }
    }
    eprintln!();
    let report = replay.finish();
    println!(
        "replayed {} events (last seq {}) in {:.1} s",
        report.events,
        report.last_seq,
        started.elapsed().as_secs_f64()
    );
    for (t, n) in &report.by_type {
        println!("  {t:<22} {n}");
    }
    println!("anomalies the current code derives, by kind:");
    if report.anomalies_by_kind.is_empty() {
        println!("  (none)");
    }
    for (k, n) in &report.anomalies_by_kind {
        println!("  {k:<26} {n}");
    }
    println!("aggregates {}", report.aggregates);
    if opts.compare {
        println!(
            "compare: {} derived event(s) decided differently, {} derived identity(ies) twice in the log",
            report.differences.len(),
            report.derived_twice_in_log.len()
        );
        for d in report.differences.iter().take(opts.differences_max) {
            println!("  {}", d.describe());
        }
        if report.differences.len() > opts.differences_max {
            println!(
                "  … and {} more (--differences-max)",
                report.differences.len() - opts.differences_max
            );
        }
        for seq in &report.derived_twice_in_log {
            println!("  derived twice: event {seq}");
        }
    }
    println!("state hash {}", report.state_hash_hex());
    Ok(report)
}

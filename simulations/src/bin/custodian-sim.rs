//! `custodian-sim`: seeded, deterministic simulations of a node with faults, checked against an oracle.
//!
//! `custodian-sim run --seed N --terminals T --days D [--faults none|default] [--ingest ...] [--seeds K]`
//! runs seeds `N .. N+K`. For each it prints `seed N` first, progress, the checks, then `log hash …` and
//! the final `state hash …` last. A failed check prints the command that reproduces it, and the exit status is 1.
//!
//! `custodian-sim speed` measures simulated time over real time for many terminals reporting often, with
//! signature checks on and off side by side, and writes the report under `bench/results/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use custodian_simulations::cluster::{ClusterSimConfig, DEFAULT_FOLLOW_SKIPS, FaultKind};
use custodian_simulations::http::Signatures;
use custodian_simulations::net::NetConfig;
use custodian_simulations::sim::{self, Ingest, SimConfig, SimOutcome};
use custodian_simulations::workload::{Faults, REPORT_INTERVAL_S};

#[derive(Parser)]
#[command(
    name = "custodian-sim",
    about = "Deterministic simulation of a Custodian node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultsArg {
    None,
    Default,
}

impl From<FaultsArg> for Faults {
    fn from(f: FaultsArg) -> Faults {
        match f {
            FaultsArg::None => Faults::None,
            FaultsArg::Default => Faults::Default,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum IngestArg {
    /// Straight into the log (the log, the domain core and the deriver alone).
    Direct,
    /// Through the node's HTTP API, terminals signing their uploads (SM2) and the node checking them.
    Http,
    /// Through the node's HTTP API with `ingest.require_signature = false` and unsigned uploads.
    HttpUnsigned,
    /// Terminals upload (signed) to an edge node, which forwards to a platform node over a link with
    /// outages, lost requests and lost answers.
    Edge,
}

impl From<IngestArg> for Ingest {
    fn from(i: IngestArg) -> Ingest {
        match i {
            IngestArg::Direct => Ingest::Direct,
            IngestArg::Http => Ingest::Http(Signatures::On),
            IngestArg::HttpUnsigned => Ingest::Http(Signatures::Off),
            IngestArg::Edge => Ingest::Edge,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Kill,
    Pause,
    Partition,
    Stall,
}

impl From<KindArg> for FaultKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Kill => FaultKind::Kill,
            KindArg::Pause => FaultKind::Pause,
            KindArg::Partition => FaultKind::Partition,
            KindArg::Stall => FaultKind::Stall,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Runs seeds `seed .. seed + seeds`.
    Run {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many consecutive seeds to run.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[arg(long, default_value_t = 20)]
        terminals: usize,
        #[arg(long, default_value_t = 2)]
        days: u32,
        /// Simulated hours instead of days (at least 2).
        #[arg(long)]
        hours: Option<u32>,
        /// Seconds between two heartbeats of a terminal.
        #[arg(long, default_value_t = REPORT_INTERVAL_S)]
        heartbeat_s: u32,
        #[arg(long, value_enum, default_value = "default")]
        faults: FaultsArg,
        #[arg(long, value_enum, default_value = "http")]
        ingest: IngestArg,
    },
    /// The multi-node topology: the real cluster nodes on a simulated NATS, killed, paused,
    /// partitioned and stalled on a seeded schedule, then checked (docs/simulation.md). Runs in real
    /// time: `seconds` of load and faults a seed.
    Cluster {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many consecutive seeds to run.
        #[arg(long, default_value_t = 1)]
        seeds: u64,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 12)]
        terminals: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Load without faults (the schedule's reference).
        #[arg(long)]
        no_faults: bool,
        /// The fault kinds to draw from (all by default).
        #[arg(long, value_enum, value_delimiter = ',')]
        kinds: Vec<KindArg>,
        /// For testing the checkers: the simulated JetStream does not fence appends, so a paused old
        /// owner's late append gets in (one_writer_per_shard must fail).
        #[arg(long)]
        unfenced_appends: bool,
        /// Shortest fault, in milliseconds.
        #[arg(long, default_value_t = 500)]
        fault_min_ms: u64,
        /// Longest fault, in milliseconds.
        #[arg(long, default_value_t = 4_000)]
        fault_max_ms: u64,
        /// Probability that a node's follower misses the stream message due next (a lossy ordered
        /// consumer); the copy must notice the gap and follow again from it.
        #[arg(long, default_value_t = DEFAULT_FOLLOW_SKIPS)]
        follow_skips: f64,
    },
    /// Simulated over real time for `terminals` reporting every `heartbeat_s`, through the HTTP API with
    /// signature checks off and on (and straight into the log, for reference), side by side in one run.
    Speed {
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1000)]
        terminals: usize,
        #[arg(long, default_value_t = 10)]
        heartbeat_s: u32,
        #[arg(long, default_value_t = 2)]
        hours: u32,
        #[arg(long, value_enum, default_value = "none")]
        faults: FaultsArg,
        /// Where the report goes.
        #[arg(long, default_value = "bench/results")]
        out: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    // Injected actor panics are expected: keep them off the terminal (other panics still print).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("injected fault"));
        if !injected {
            default_hook(info);
        }
    }));
    match Cli::parse().command {
        Command::Run {
            seed,
            seeds,
            terminals,
            days,
            hours,
            heartbeat_s,
            faults,
            ingest,
        } => run(
            seed,
            seeds,
            SimConfig {
                seed,
                terminals,
                days,
                faults: faults.into(),
                ingest: ingest.into(),
                hours,
                heartbeat_s,
                edge_drops_one: false,
            },
        ),
        Command::Cluster {
            seed,
            seeds,
            nodes,
            terminals,
            seconds,
            no_faults,
            kinds,
            unfenced_appends,
            fault_min_ms,
            fault_max_ms,
            follow_skips,
        } => cluster(
            seed,
            seeds,
            ClusterSimConfig {
                seed,
                nodes: nodes.max(1),
                terminals: terminals.max(1),
                seconds,
                faults: !no_faults,
                kinds: if kinds.is_empty() {
                    FaultKind::ALL.to_vec()
                } else {
                    kinds.into_iter().map(FaultKind::from).collect()
                },
                fault_ms: (fault_min_ms, fault_max_ms.max(fault_min_ms + 1)),
                net: NetConfig {
                    fence_appends: !unfenced_appends,
                    p_follow_skipped: follow_skips.clamp(0.0, 1.0),
                    ..NetConfig::default()
                },
            },
        ),
        Command::Speed {
            seed,
            terminals,
            heartbeat_s,
            hours,
            faults,
            out,
        } => speed(
            SimConfig {
                seed,
                terminals,
                days: 1,
                faults: faults.into(),
                ingest: Ingest::Direct,
                hours: Some(hours),
                heartbeat_s,
                edge_drops_one: false,
            },
            &out,
        ),
    }
}

fn cluster(first: u64, seeds: u64, template: ClusterSimConfig) -> ExitCode {
    let mut outcomes = Vec::new();
    for seed in first..first.saturating_add(seeds.max(1)) {
        let config = ClusterSimConfig {
            seed,
            ..template.clone()
        };
        println!("seed {seed}: {}", config.command());
        let outcome =
            custodian_simulations::cluster::run(&config, &mut |line| println!("  {line}"));
        print!("{}", custodian_simulations::cluster::report(&outcome));
        outcomes.push(outcome);
    }
    let failed = custodian_simulations::cluster::failed(&outcomes);
    if failed.is_empty() {
        println!("{} seed(s) passed", outcomes.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("seed(s) {failed:?} failed; each prints its command to reproduce");
        ExitCode::FAILURE
    }
}

fn run(first: u64, seeds: u64, template: SimConfig) -> ExitCode {
    let mut failed = Vec::new();
    for seed in first..first.saturating_add(seeds.max(1)) {
        println!("seed {seed}");
        let config = SimConfig {
            seed,
            ..template.clone()
        };
        println!("  ingest {}", config.ingest.name());
        let outcome = sim::run(&config, &mut |line| println!("  {line}"));
        print_outcome(&outcome);
        if !outcome.passed() {
            let command = config.command();
            println!("  reproduce: {command}");
            failed.push(command);
        }
        println!("log hash {}", outcome.log_hash);
        println!("state hash {}", outcome.state_hash);
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        // On stderr, so that the hashes stay the last lines of stdout.
        eprintln!("{} seed(s) failed; reproduce with:", failed.len());
        for c in &failed {
            eprintln!("  {c}");
        }
        ExitCode::FAILURE
    }
}

fn print_outcome(outcome: &SimOutcome) {
    let s = &outcome.stats;
    println!(
        "  ran: {} events in the log, {} uploads ({} readings), {} duplicates, {} crashes while sending \
         + {} while deriving ({} records lost, {} torn bytes, {} restarts without snapshots), \
         {} actor panics ({} recoveries), {} hang-ups",
        s.events,
        s.uploads,
        s.readings,
        s.duplicates_sent,
        s.crashes_sending,
        s.crashes_deriving,
        s.records_lost,
        s.torn_bytes,
        s.snapshots_lost,
        s.actor_failures,
        s.recoveries,
        s.disconnects
    );
    if let Some(e) = &s.edge {
        println!(
            "  edge: link down {} times ({} steps of 10 min), {} forwarder rounds ({} failed: {} requests \
             lost, {} answers lost), {} batches delivered ({} uploads, {} anomalies), outbox peak {} uploads",
            e.link_outages,
            e.link_down_steps,
            e.rounds,
            e.rounds_failed,
            e.requests_lost,
            e.answers_lost,
            e.batches_delivered,
            e.uploads_forwarded,
            e.anomalies_forwarded,
            e.outbox_peak_uploads
        );
    }
    let simulated = outcome.simulated.as_secs_f64();
    let real = outcome.real.as_secs_f64();
    println!(
        "  simulated {:.1} h in {real:.2} s real ({:.0}x; the steps alone {:.2} s, {:.0}x)",
        simulated / 3600.0,
        simulated / real.max(1e-9),
        outcome.steps_real.as_secs_f64(),
        simulated / outcome.steps_real.as_secs_f64().max(1e-9)
    );
    for c in &outcome.checks {
        println!(
            "  {} {}: {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
}

/// Peak resident memory of this process so far, bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn speed(template: SimConfig, out: &std::path::Path) -> ExitCode {
    let variants = [
        ("HTTP, signature checks off", Ingest::Http(Signatures::Off)),
        ("HTTP, signature checks on", Ingest::Http(Signatures::On)),
        ("straight into the log", Ingest::Direct),
    ];
    let mut rows = Vec::new();
    let mut ok = true;
    for (label, ingest) in variants {
        let config = SimConfig {
            ingest,
            ..template.clone()
        };
        println!("{label}: {}", config.command());
        let outcome = sim::run(&config, &mut |line| println!("  {line}"));
        print_outcome(&outcome);
        if !outcome.passed() {
            ok = false;
            println!("  reproduce: {}", config.command());
        }
        rows.push((label, outcome, peak_rss()));
    }
    let simulated = |o: &SimOutcome| o.simulated.as_secs_f64();
    let ratio = |o: &SimOutcome| simulated(o) / o.steps_real.as_secs_f64().max(1e-9);
    let unsigned = ratio(&rows[0].1);
    let mut report = String::new();
    let t = &template;
    report.push_str(&format!(
        "# Simulation speed\n\n`custodian-sim speed --seed {} --terminals {} --heartbeat-s {} --hours {} --faults {}` \
         ({} build), {}.\n\n\
         {} terminals, each sending a reading every {} s (uploads once a minute), {} simulated hours, faults `{}`; \
         every run is checked (acknowledged readings once, anomalies equal the oracle's, replay equals the live \
         state, the read model complete). \"Speed\" is simulated time over the real time of the steps \
         (terminals sending, the node storing, deriving and projecting); the world's generation and the \
         checks at the end are in \"whole run\".\n\n\
         | path | readings | events in the log | log bytes | steps (real) | speed | whole run | speed vs. signatures off | peak RSS so far | checks |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        t.seed,
        t.terminals,
        t.heartbeat_s,
        t.hours.unwrap_or(24),
        t.faults.name(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        custodian_tools::terminal_sim::now_rfc3339(),
        t.terminals,
        t.heartbeat_s,
        t.hours.unwrap_or(24),
        t.faults.name(),
    ));
    for (label, o, rss) in &rows {
        report.push_str(&format!(
            "| {label} | {} | {} | {:.1} MB | {:.1} s | {:.0}x | {:.1} s | {:.2} | {} | {} |\n",
            o.stats.readings,
            o.stats.events,
            o.log_bytes as f64 / 1e6,
            o.steps_real.as_secs_f64(),
            ratio(o),
            o.real.as_secs_f64(),
            ratio(o) / unsigned,
            rss.map_or("?".into(), |b| format!("{:.0} MB", b as f64 / 1e6)),
            if o.passed() { "pass" } else { "FAIL" },
        ));
    }
    let signed = &rows[1].1;
    let per_reading = rows
        .iter()
        .filter_map(|(_, _, rss)| *rss)
        .max()
        .map(|b| b as f64 / signed.stats.readings.max(1) as f64);
    if let Some(per) = per_reading {
        let budget = 20.0 * 1024.0 * 1024.0 * 1024.0;
        let readings = budget / per;
        let per_day = t.terminals as f64 * 86_400.0 / f64::from(t.heartbeat_s.max(1));
        report.push_str(&format!(
            "\nMemory: the process peaked at {:.0} bytes per reading of one run (the simulated log keeps every \
             record — the reading, its signed body as evidence, derived events — plus the world's plan and the \
             oracle). 20 GiB of this machine's 24 GiB would hold about {:.1} M readings in one run: {:.1} \
             simulated days of these {} terminals at one reading every {} s.\n",
            per,
            readings / 1e6,
            readings / per_day,
            t.terminals,
            t.heartbeat_s
        ));
    }
    println!("\n{report}");
    if let Err(e) = std::fs::create_dir_all(out).and_then(|()| {
        let path = out.join(format!("sim-speed-{}.md", custodian_tools::bench::stamp()));
        std::fs::write(&path, &report)?;
        println!("report: {}", path.display());
        Ok(())
    }) {
        eprintln!(
            "cannot write the report under {}: {e}; pass --out DIR",
            out.display()
        );
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

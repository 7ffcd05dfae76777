//! `custodian-sim`: seeded, deterministic simulations of a node with faults, checked against an oracle.
//!
//! `custodian-sim run --seed N --terminals T --days D [--faults none|default] [--seeds K]` runs seeds
//! `N .. N+K`. For each it prints `seed N` first, progress, the checks, then `state hash …` and
//! `log hash …` last. A failed check prints the command that reproduces it, and the exit status is 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use custodian_simulations::http::Signatures;
use custodian_simulations::sim::{self, Ingest, SimConfig};
use custodian_simulations::workload::Faults;

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

#[derive(Clone, Copy, ValueEnum)]
enum IngestArg {
    /// Straight into the log (the log, the domain core and the deriver alone).
    Direct,
    /// Through the node's HTTP API, terminals signing their uploads (SM2) and the node checking them.
    Http,
    /// Through the node's HTTP API with `ingest.require_signature = false` and unsigned uploads.
    HttpUnsigned,
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
        #[arg(long, value_enum, default_value = "default")]
        faults: FaultsArg,
        #[arg(long, value_enum, default_value = "http")]
        ingest: IngestArg,
    },
}

fn main() -> ExitCode {
    let Command::Run {
        seed,
        seeds,
        terminals,
        days,
        faults,
        ingest,
    } = Cli::parse().command;
    let ingest = match ingest {
        IngestArg::Direct => Ingest::Direct,
        IngestArg::Http => Ingest::Http(Signatures::On),
        IngestArg::HttpUnsigned => Ingest::Http(Signatures::Off),
    };
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
    let faults = match faults {
        FaultsArg::None => Faults::None,
        FaultsArg::Default => Faults::Default,
    };
    let mut failed = Vec::new();
    for seed in seed..seed.saturating_add(seeds.max(1)) {
        println!("seed {seed}");
        println!("  ingest {}", ingest.name());
        let config = SimConfig {
            seed,
            terminals,
            days,
            faults,
            ingest,
        };
        let outcome = sim::run(&config, &mut |line| println!("  {line}"));
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
        let simulated = outcome.simulated.as_secs_f64();
        let real = outcome.real.as_secs_f64();
        println!(
            "  simulated {:.1} h in {real:.2} s real ({:.0}x)",
            simulated / 3600.0,
            simulated / real.max(1e-9)
        );
        for c in &outcome.checks {
            println!(
                "  {} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        if !outcome.passed() {
            let command = format!(
                "cargo run -p custodian-simulations --bin custodian-sim -- run --seed {seed} --terminals {terminals} --days {days} --faults {} --ingest {}",
                faults.name(),
                ingest.name()
            );
            println!("  reproduce: {command}");
            failed.push(command);
        }
        println!("state hash {}", outcome.state_hash);
        println!("log hash {}", outcome.log_hash);
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

//! # custodian-tools
//!
//! What drives a node from outside, kept out of the server crate: the HTTP client ([`client`], with the
//! node's address and token as command arguments), the terminal simulator ([`terminal_sim`]: signed
//! uploads with fixed keys, for the demo, the benchmarks and the tests), the terminal client
//! ([`terminal_client`], `custodian terminal`), the demo ([`demo`]) and the benchmarks (`bench*`: ingest
//! and crypto, cluster, dataset, detection, edge, projections, queries), which print reports into
//! `bench/results/`. The `custodian` binary (`node/cli`) runs them as commands; the tests and simulations
//! use them as a library.

pub mod bench;
pub mod bench_cluster;
pub mod bench_dataset;
pub mod bench_detect;
pub mod bench_edge;
pub mod bench_projections;
pub mod bench_query;
pub mod check;
pub mod client;
pub mod cluster_harness;
pub mod demo;
pub mod local;
pub mod terminal_client;
pub mod terminal_sim;

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// Write `pem` to a new file readable by its owner only; an existing file is refused, not overwritten.
pub fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))
}

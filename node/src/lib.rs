//! # custodian-node
//!
//! The `custodian` binary and everything that faces the outside world:
//! - [`config`]: defaults, TOML file, `CUSTODIAN_*` environment, flags.
//! - [`datadir`]: the exclusive hold on a data dir and the node's own secrets in it.
//! - [`server`]: starting and stopping a node (data dir, event log, HTTP API).
//! - [`api`]: the axum HTTP API — registration, ingest, the event feed, health, metrics — and the
//!   `{code, message}` error shape.
//! - [`metrics`]: Prometheus counters and histograms.
//! - [`client`]: a small HTTP client for the CLI, the demo, the benchmark and the tests.
//! - [`demo`] and [`bench`]: simulated terminals against a node, with a summary or a report.
//! - [`cli`]: the command line.
//!
//! Domain rules live in `custodian-events`; this crate validates nothing on its own beyond HTTP shapes and
//! authentication.

pub mod api;
pub mod audit;
pub mod bench;
pub mod bench_cluster;
pub mod bench_dataset;
pub mod bench_detect;
pub mod bench_edge;
pub mod bench_projections;
pub mod bench_query;
pub mod cli;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod datadir;
pub mod demo;
pub mod edge;
pub mod keys_cli;
pub mod log_cli;
pub mod metrics;
pub mod query;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod terminal_client;
pub mod terminal_sim;
pub mod terminals;
pub mod tokens;
pub mod upload;

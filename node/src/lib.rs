//! # custodian-node
//!
//! The server: everything a running node does for the outside world, and nothing that drives one.
//! - [`config`]: defaults, TOML file, `CUSTODIAN_*` environment, flags.
//! - [`datadir`]: the exclusive hold on a data dir and the node's own secrets in it.
//! - [`server`]: starting and stopping a node (data dir, event log, deriver, projections, HTTP API).
//! - [`api`]: the axum HTTP API — registration, ingest, the event feed, queries, health, metrics — and the
//!   `{code, message}` error shape; [`dashboard`]: the regulators' pages at `/ui`.
//! - [`edge`]: the edge node (outbox, forwarder, MQTT uploads).
//! - [`state`], [`terminals`], [`upload`], [`sealing`], [`snapshots`], [`tokens`], [`audit`],
//!   [`secrets`], [`metrics`]: what the handlers and the runtime share.
//!
//! The command line is `custodian-cli` (`node/cli`); the client, the terminal simulator, the demo and the
//! benchmarks are `custodian-tools` (`simulations/tools`). Domain rules live in `custodian-events`; this
//! crate validates nothing on its own beyond HTTP shapes and authentication.

pub mod api;
pub mod audit;
pub mod config;
pub mod dashboard;
pub mod datadir;
pub mod edge;
pub mod metrics;
pub mod query;
pub mod sealing;
pub mod secrets;
pub mod server;
pub mod snapshots;
pub mod state;
pub mod terminals;
pub mod tokens;
pub mod upload;

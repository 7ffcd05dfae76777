//! # custodian-cli
//!
//! The `custodian` binary: the command line ([`cli`]) that starts a node or an edge (from
//! `custodian-node`), runs the operator's commands — keys and envelopes ([`keys_cli`]), log export,
//! import and replay ([`log_cli`]), tokens and read-model rebuilds — and the tools of `custodian-tools`
//! (demo, terminal, benchmarks). `main.rs` only parses, sets up logging and runs.

pub mod cli;
pub mod keys_cli;
pub mod log_cli;

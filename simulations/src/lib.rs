//! # custodian-simulations
//!
//! The seeded, deterministic simulation of whole nodes with faults, event-log replay and the invariant
//! checkers (issue "Deterministic simulation and event-log replay"). So far it holds the simulated event
//! log:
//!
//! - [`memlog`]: [`MemLog`], an in-memory [`EventLog`](custodian_events::log::EventLog) with the sled log's
//!   records and dedupe, whose durability the simulator drives: syncs on demand, crashes that lose what was
//!   not synced (optionally leaving a torn write), recovery to the durable state. It passes the same
//!   contract as the sled log (`custodian_events::log::contract`).
//!
//! The foundation's crash test of real processes lives in `tests/`. Must not contain production code paths
//! of its own: the simulated log exists to be driven by a simulator, never to back a node.

pub mod memlog;

pub use memlog::{Crash, MemLog, MemLogConfig, Recovery, SyncMode, Synced, TornWrite};

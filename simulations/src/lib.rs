//! # custodian-simulations
//!
//! The seeded, deterministic simulation of whole nodes with faults, event-log replay and the invariant
//! checkers (issue "Deterministic simulation and event-log replay"). So far:
//!
//! - [`memlog`]: [`MemLog`], an in-memory [`EventLog`](custodian_log::EventLog) with the sled log's
//!   records and dedupe, whose durability the simulator drives: syncs on demand, crashes that lose what was
//!   not synced (optionally leaving a torn write), recovery to the durable state. It passes the same
//!   contract as the sled log (`custodian_log::contract`).
//! - [`workload`]: a seeded site population (enterprises, scales, shipments under manifests) with ground
//!   truth — injected anomalies — and the plan of how its facts reach the log (late, reordered, after
//!   outages).
//! - [`oracle`]: from the world and its plan alone, the anomalies the documented rules must produce.
//! - [`http`]: the node's real HTTP API (`custodian_node::api::router`) over the simulated log, reached
//!   through an in-process network the simulator drives; terminals sign their uploads with SM2.
//! - [`sink`]: a read model outside the node that fails, loses answers and stalls, fed by the node's real
//!   projection runner.
//! - [`edge`]: the edge-and-platform topology: the node as an edge with its real outbox and forwarder,
//!   a platform node of its own, and a link between them that goes down and loses requests and answers.
//! - [`sim`]: one run — the node (API, log, deriver, projection runner) fed the plan with duplicates,
//!   hang-ups and crashes with torn writes — and the checkers; the `custodian-sim` binary runs seeds and
//!   measures the simulation's speed. See `docs/simulation.md`.
//!
//! - [`net`] and [`cluster`]: the multi-node topology — the real cluster nodes on a simulated NATS that
//!   pauses, partitions and stalls, nodes killed and restarted, and the checkers one writer per shard,
//!   nothing lost, nothing doubled (`custodian-sim cluster`).
//!
//! The foundation's crash test of real processes lives in `tests/`. Must not contain production code paths
//! of its own: the simulated log exists to be driven by a simulator, never to back a node.

pub mod cluster;
pub mod edge;
pub mod harness;
pub mod http;
pub mod memlog;
pub mod net;
pub mod oracle;
pub mod sim;
pub mod sink;
pub mod workload;

pub use memlog::{Crash, MemLog, MemLogConfig, Recovery, SyncMode, Synced, TornWrite};

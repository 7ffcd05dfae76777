//! # custodian-actors
//!
//! Ractor actors that run the pure domain core (`custodian_events::domain`) over the event log, and the
//! [`Deriver`] that feeds them.
//!
//! Data flows one way: the deriver tails the durable log from its checkpoint, routes each event to the
//! actor of its aggregate, and appends what the actors derive back to the log through a [`DerivedSink`].
//! Ingest never waits on a mailbox; when the deriver falls too far behind, the node pushes back instead.
//! Derived events carry deterministic identities that the log deduplicates, so a restart (which replays
//! the log from the start until snapshots exist) never stores an anomaly twice.
//!
//! Built so far (issue 3, first slice): [`ContainerActor`] (`weight_fluctuation`) and [`TerminalActor`]
//! (`tamper_suspected`). Still to come: enterprise and manifest actors, the other rules, supervision with restart, passivation, snapshots, clock ticks.
//!
//! Must not contain NATS, SQL or InfluxDB clients.

mod container;
mod deriver;
mod terminal;

pub use container::{ContainerActor, ContainerMsg};
pub use deriver::{DerivedSink, Deriver, DeriverConfig};
pub use terminal::{TerminalActor, TerminalMsg};

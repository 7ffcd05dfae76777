//! # custodian-actors
//!
//! Ractor actors that run the pure domain core (`custodian_events::domain`) over the event log, and the
//! [`Deriver`] that feeds them.
//!
//! Data flows one way: the deriver tails the durable log from its checkpoint, routes each event to the
//! actor of its aggregate (one [`AggregateActor`] per terminal, enterprise, container and manifest, all
//! linked to one [`Supervisor`]), and appends what the actors derive back to the log through a
//! [`DerivedSink`]. Ingest never waits on a mailbox; when the deriver falls too far behind, the node
//! pushes back instead. Derived events carry deterministic identities that the log deduplicates, so a
//! restart or a recovery never stores one twice. Snapshots ([`SnapshotStore`]) keep restarts short and
//! let idle aggregates be passivated.
//!
//! Must not contain NATS, SQL or InfluxDB clients.

mod aggregate;
mod deriver;
mod snapshots;
mod supervisor;

pub use aggregate::{AggregateActor, AggregateMsg, Answer, Fault};
pub use deriver::{DerivedSink, Deriver, DeriverConfig, DeriverStats, LogSink};
pub use snapshots::{MemorySnapshots, SnapshotStore};
pub use supervisor::{Supervisor, SupervisorStats};

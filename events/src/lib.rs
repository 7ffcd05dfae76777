//! # custodian-events
//!
//! The facts Custodian records and the log that keeps them.
//!
//! - [`ids`]: id newtypes (`TerminalId`, `EnterpriseId`, `ContainerId`), checked against
//!   `^[A-Za-z0-9._-]{1,64}$`.
//! - [`reading`]: what a terminal measured, validated and normalised to a canonical integer form.
//! - [`event`]: the domain events, their streams, dedupe keys and canonical JSON.
//! - [`canonical`]: RFC 8785 canonical JSON, the bytes every fingerprint is taken over.
//! - [`envelope`]: the versioned, rkyv-encoded record and the checks every read makes.
//! - [`log`]: the [`log::EventLog`] trait, its embedded sled implementation with group commit, and the
//!   contract ([`log::contract`]) every implementation is checked against.
//! - [`replay`]: a recorded log through the current domain core: derived events compared, a state hash.
//!
//! Invariants kept here: an append returns only after its batch is on disk; a dedupe key is stored once
//! (same fingerprint: duplicate; other fingerprint: conflict, kept as evidence); sequences are global and
//! gapless; every record is checked on read and a corrupt one is reported, never returned as an event.
//!
//! Deliberately not here: tokio tasks, HTTP, SQL, InfluxDB, wall-clock reads and random numbers. Time comes
//! in through [`Clock`]; the log's group commit runs on a plain thread of its own.

pub mod canonical;
pub mod crypto;
pub mod digital_envelope;
pub mod domain;
pub mod envelope;
pub mod event;
pub mod fingerprint;
pub mod ids;
pub mod json_int;
pub mod keyring;
pub mod limits;
pub mod log;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod reading;
pub mod replay;
pub mod terminal_keys;

pub use envelope::{CorruptRecord, Envelope, Fingerprint, fingerprint};
pub use event::Event;
pub use ids::{ContainerId, EnterpriseId, IdError, ManifestId, TerminalId};
pub use reading::{RawReading, Reading, ReadingCheck, ReadingKind, Stage};

/// A domain rejection: the input is not acceptable. Not an infrastructure failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// A stable, snake_case code that clients can match on (documented in `docs/api/errors.md`).
    pub code: &'static str,
    /// A sentence for a person: what was wrong and, where it helps, what to do.
    pub message: String,
}

impl Rejection {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// The source of time for everything that must not read the wall clock itself.
pub trait Clock: Send + Sync + 'static {
    /// UTC nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i64;
}

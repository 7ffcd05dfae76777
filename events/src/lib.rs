//! # custodian-events
//!
//! The facts Custodian records and the pure rules over them: no I/O, no runtime, no storage. The log that
//! keeps the facts is the `custodian-log` crate (`events/log/`).
//!
//! - [`ids`]: id newtypes (`TerminalId`, `EnterpriseId`, `ContainerId`), checked against
//!   `^[A-Za-z0-9._-]{1,64}$`.
//! - [`reading`]: what a terminal measured, validated and normalised to a canonical integer form.
//! - [`event`]: the domain events, their streams, dedupe keys and canonical JSON.
//! - [`anomaly`]: `AnomalyDetected`, what a rule found, with its evidence and deterministic identity.
//! - [`domain`]: the aggregates and rules that derive events from recorded ones.
//! - [`canonical`]: RFC 8785 canonical JSON, the bytes every fingerprint is taken over.
//! - [`fingerprint`]: the SHA-256 fingerprint of canonical bytes.
//! - [`crypto`], [`digital_envelope`], [`keyring`], [`terminal_keys`]: SM2/SM3/SM4 primitives, the data keys
//!   and the rules of terminal keys.
//! - [`envelope`]: the versioned, rkyv-encoded record and the checks every read makes.
//! - [`replay`]: a recorded log through the current domain core: derived events compared, a state hash.
//! - [`limits`]: every named limit of the vocabulary, in one place.
//!
//! Invariants kept here: a dedupe key names one fact (same fingerprint: duplicate; other fingerprint:
//! conflict); every record is checked on decode and a corrupt one is reported, never returned as an event;
//! the rules are deterministic (the same log in gives the same derived events out).
//!
//! Deliberately not here: tokio, sled, files, HTTP, SQL, InfluxDB, wall-clock reads and random numbers (the
//! crate does not depend on them). Time comes in through [`Clock`], entropy through [`crypto::Entropy`].

// First: its macro is used by the modules declared after it.
#[macro_use]
mod named_enum;

pub mod anomaly;
pub mod canonical;
pub mod crypto;
pub mod dedupe;
pub mod digital_envelope;
pub mod domain;
pub mod envelope;
pub mod event;
pub mod fingerprint;
pub mod ids;
pub mod json_int;
pub mod keyring;
pub mod limits;
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

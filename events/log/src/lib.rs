//! # custodian-log
//!
//! The append-only event log: the [`EventLog`] trait and its embedded implementation, [`SledLog`]. It stands
//! apart from the pure domain (`custodian-events`), which knows nothing of storage, threads or tokio.
//!
//! The trait is the seam the simulator's log (and later a JetStream-backed log in cluster mode) plugs into.
//! Its contract:
//! - `append` stores a batch atomically, assigns global gapless sequences in order, and resolves only after
//!   the batch is durable. Each proposed event with a dedupe key is checked against everything stored and
//!   everything earlier in the same group: same key and fingerprint is a `Duplicate` naming the original
//!   sequence; same key with another fingerprint is a `Conflict`, and the conflicting event's evidence (if
//!   its type has any) is stored once per distinct fingerprint.
//! - `read` returns only durable events, each checked (see [`custodian_events::envelope`]); a corrupt record is an
//!   error naming its sequence, never an event.
//! - `subscribe` tells tailers the last durable sequence as it moves.
//!
//! `contract` (feature `contract`, and in this crate's tests) holds these promises as checks that every
//! implementation runs; the production build does not carry it.

#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub mod dedupe;
pub mod export;
mod sled_log;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use dedupe::{Decision, Evidence, decide, evidence_identity};
pub use sled_log::{SledLog, SledLogConfig, open_sled};

use custodian_events::envelope::{
    CorruptRecord, Envelope, Fingerprint, HeaderTags, event_bytes, fingerprint, seal_aad_keyed,
};
use custodian_events::event::{DedupeKey, Event};
use custodian_events::keyring::{DataKey, Keyring, KeyringError, SealedPayload};

/// A boxed future, so that the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An event proposed for appending, with what the log needs to deduplicate it. The fingerprint is computed
/// by the caller so that hashing runs on the callers' threads, not on the single writer.
#[derive(Debug, Clone)]
pub struct Proposed {
    pub event: Event,
    pub fingerprint: Fingerprint,
    pub dedupe_key: Option<DedupeKey>,
    /// The payload as it will rest on disk, when it is sealed.
    pub sealed: Option<SealedPayload>,
    /// The token whose request proposes it (see [`Envelope::caused_by`]).
    pub caused_by: Option<String>,
    /// The keyed hashes of the stream and fingerprint a sealed record stores instead of them.
    pub tags: Option<HeaderTags>,
}

impl Proposed {
    pub fn new(event: Event) -> Self {
        Proposed {
            fingerprint: fingerprint(&event.canonical().to_bytes()),
            dedupe_key: event.dedupe_key(),
            event,
            sealed: None,
            caused_by: None,
            tags: None,
        }
    }

    /// A `DataKeyIssued`, sealed under the log's own key (derived from the master key, so it opens before
    /// any data key is known): its scope names an enterprise, which must not rest in the clear.
    /// `caused_by` as in [`Proposed::caused_by`].
    pub fn data_key(
        issued: custodian_events::event::DataKeyIssued,
        keyring: &Keyring,
        caused_by: Option<&str>,
    ) -> Self {
        let mut p = Proposed::new(Event::DataKeyIssued(issued));
        if let Some(token_id) = caused_by {
            p = p.caused_by(token_id);
        }
        p.sealed_with(keyring, &keyring.meta_key())
    }

    /// Records the token whose request caused the event. Before [`Proposed::sealed_with`]: the cause is
    /// bound into the sealed payload's associated data.
    ///
    /// # Panics
    /// When the proposal is already sealed, or `token_id` is longer than
    /// [`custodian_events::envelope::CAUSED_BY_BYTES_MAX`] (both programming errors).
    pub fn caused_by(mut self, token_id: impl Into<String>) -> Self {
        let token_id = token_id.into();
        assert!(
            self.sealed.is_none(),
            "caused_by must be set before the payload is sealed"
        );
        assert!(
            token_id.len() <= custodian_events::envelope::CAUSED_BY_BYTES_MAX,
            "a token id of {} bytes",
            token_id.len()
        );
        self.caused_by = Some(token_id);
        self
    }

    /// The proposal a record holds (what [`Proposed::into_record`] made, under `seq`): checked as a read
    /// checks it (a sealed payload is opened with `keyring`), the sealed payload kept as it is. For a node
    /// that hands a proposal to another to append.
    pub fn from_record(
        seq: u64,
        record: &[u8],
        keyring: Option<&Keyring>,
    ) -> Result<Proposed, CorruptRecord> {
        let env = Envelope::decode(seq, record, keyring)?;
        let (sealed, tags) = match Envelope::sealed_part(seq, record)? {
            Some((s, t)) => (Some(s), t),
            None => (None, None),
        };
        Ok(Proposed {
            dedupe_key: env.event.dedupe_key(),
            fingerprint: env.fingerprint,
            event: env.event,
            sealed,
            caused_by: env.caused_by,
            tags,
        })
    }

    /// The record of this proposal stored at `seq`.
    pub fn into_record(self, seq: u64, recorded_at_ns: i64) -> Vec<u8> {
        Envelope::encode(
            seq,
            recorded_at_ns,
            self.fingerprint,
            self.event,
            self.sealed,
            self.caused_by,
            self.tags,
        )
    }

    /// The record of the evidence this proposal's conflict with the event at `original_seq` keeps
    /// ([`Event::conflict_evidence`]) stored at `seq`: sealed with the key that sealed this proposal, if it
    /// was sealed (from `keyring`), and caused by the same token.
    ///
    /// # Panics
    /// When the event keeps no evidence ([`Event::keeps_conflict_evidence`]): [`decide`] asks for evidence
    /// only of one that does.
    pub fn evidence_record(
        &self,
        original_seq: u64,
        keyring: Option<&Keyring>,
        seq: u64,
        recorded_at_ns: i64,
    ) -> Result<Vec<u8>, EventLogError> {
        let evidence = self
            .event
            .conflict_evidence(original_seq)
            .expect("evidence is recorded only for events that keep it");
        let fp = fingerprint(&evidence.canonical().to_bytes());
        let (sealed, tags) = match (&self.sealed, keyring) {
            (Some(sealed), Some(keyring)) => {
                let key = keyring
                    .get(&sealed.key_id)
                    .ok_or_else(|| KeyringError::UnknownKey {
                        key_id: sealed.key_id.clone(),
                    })?;
                let (sealed, tags) =
                    seal_keyed(keyring, &key, &evidence, &fp, self.caused_by.as_deref());
                (Some(sealed), Some(tags))
            }
            _ => (None, None),
        };
        Ok(Envelope::encode(
            seq,
            recorded_at_ns,
            fp,
            evidence,
            sealed,
            self.caused_by.clone(),
            tags,
        ))
    }

    /// Seals the payload at rest with `key` (on the caller's thread: sealing is the costly part).
    /// The record stores it in format 3: the stream and the fingerprint as keyed hashes, the key by its
    /// opaque id.
    pub fn sealed_with(mut self, keyring: &Keyring, key: &DataKey) -> Self {
        let (sealed, tags) = seal_keyed(
            keyring,
            key,
            &self.event,
            &self.fingerprint,
            self.caused_by.as_deref(),
        );
        self.sealed = Some(sealed);
        self.tags = Some(tags);
        self
    }
}

/// Seals `event` for a format 3 record: its payload and the tags its header stores.
fn seal_keyed(
    keyring: &Keyring,
    key: &DataKey,
    event: &Event,
    fp: &Fingerprint,
    caused_by: Option<&str>,
) -> (SealedPayload, HeaderTags) {
    let tags = HeaderTags::of(keyring, &event.stream(), fp);
    let aad = seal_aad_keyed(&tags, event.event_type(), &key.opaque_id, caused_by);
    (keyring.seal(key, &aad, &event_bytes(event)), tags)
}

/// What became of one proposed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored now, at this sequence.
    Appended { seq: u64 },
    /// The same fact was stored before, at this sequence.
    Duplicate { seq: u64 },
    /// Another fact is stored under the same dedupe key at `original_seq`; the evidence of this attempt is
    /// at `evidence_seq` when the event type keeps evidence.
    Conflict {
        original_seq: u64,
        evidence_seq: Option<u64>,
    },
}

/// What the dedupe index holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupeEntry {
    pub seq: u64,
    pub fingerprint: Fingerprint,
}

/// The result of checking every record of a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub last_seq: u64,
    pub corrupt: Vec<CorruptRecord>,
    /// Missing sequence ranges, inclusive.
    pub gaps: Vec<(u64, u64)>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.gaps.is_empty()
    }
}

/// An infrastructure failure of the log (as opposed to a domain rejection).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventLogError {
    /// The append queue is full: the caller should back off and retry. Nothing was written.
    #[error("the event log's append queue is full ({queue_max} requests); retry shortly")]
    Overloaded { queue_max: usize },
    /// The storage failed; the batch may or may not be stored, and a retry is answered consistently
    /// (as duplicates if it was).
    #[error("event log storage failed: {0}")]
    Storage(#[source] Arc<sled::Error>),
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The dedupe index failed its check; the log refuses to decide dedupe on it.
    #[error("event log index is corrupt: {0}")]
    IndexCorrupt(String),
    #[error("a batch holds {len} events; at most {max} fit in one append")]
    BatchTooLarge { len: usize, max: usize },
    #[error("the event log is shut down")]
    Closed,
    /// The log went down (a simulated crash: only the simulator's log returns this) before the append was
    /// durable, or was asked for something while down. The append was never acknowledged and the simulated
    /// log drops it when it recovers, so a retry after recovery is stored as new.
    #[error("the event log crashed: not durable, or down until it recovers")]
    Crashed,
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// The log cannot take this append here and now (in cluster mode: this node does not own the shard,
    /// was fenced by a newer owner, or cannot reach the cluster). Nothing of the append was acknowledged;
    /// a retry, here later or at the shard's owner, is answered consistently.
    #[error("the event log cannot take this append now: {0}")]
    Unavailable(String),
    /// The log on disk does not belong with what it is opened against (a cluster node's copy filed from
    /// another incarnation of the stream, say). Opening refuses rather than serve or extend it.
    #[error("{0}")]
    Mismatch(String),
}

/// Refuses a batch of `len` events where one append may carry at most `max`.
pub fn check_batch_len(len: usize, max: usize) -> Result<(), EventLogError> {
    if len > max {
        return Err(EventLogError::BatchTooLarge { len, max });
    }
    Ok(())
}

impl From<sled::Error> for EventLogError {
    fn from(e: sled::Error) -> Self {
        EventLogError::Storage(Arc::new(e))
    }
}

/// The append-only, durable, deduplicating event log.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `batch` atomically; resolves once it is durable. Outcomes are in the batch's order.
    fn append(
        &self,
        batch: Vec<Proposed>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, EventLogError>>;

    /// Up to `max` durable events from `from_seq` on, in order, each checked.
    fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Envelope>, EventLogError>;

    /// Up to `max` durable records from `from_seq` on, as stored (sealed payloads stay sealed), with their
    /// sequences: what an export copies. Only the record framing is checked here; [`Envelope::decode`]
    /// checks the rest.
    fn read_raw(&self, from_seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, EventLogError>;

    /// Like `read`, but returns only events whose type `want`s, opening and checking only those; scans at
    /// most `max` records and says which was the last one scanned (0 when none), so a tailer can move its
    /// checkpoint past what it skipped.
    fn read_where(
        &self,
        from_seq: u64,
        max: usize,
        want: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<Envelope>, u64), EventLogError> {
        let all = self.read(from_seq, max)?;
        let last = all.last().map_or(0, |e| e.seq);
        Ok((
            all.into_iter().filter(|e| want(&e.event_type)).collect(),
            last,
        ))
    }

    /// The last durable sequence (0 when the log is empty).
    fn last_seq(&self) -> u64;

    /// Follows the last durable sequence; tailers read from their checkpoint when it moves.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;

    /// What the dedupe index holds for `key`.
    fn lookup(&self, dedupe_key: &DedupeKey) -> Result<Option<DedupeEntry>, EventLogError>;

    /// Bytes the log occupies on disk.
    fn size_on_disk(&self) -> Result<u64, EventLogError>;

    /// Group commits (fsyncs) made since the log was opened.
    fn commits_total(&self) -> u64 {
        0
    }

    /// Checks every record; `progress(done, total)` is called now and then.
    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, EventLogError>;

    /// Resolves once this log holds everything acknowledged anywhere before the call: at once for a log
    /// of one node; in cluster mode, once this node's copy has caught up with the stream. For a reader
    /// that must not answer "unknown" about what another node just stored.
    fn barrier(&self) -> BoxFuture<'_, Result<(), EventLogError>> {
        Box::pin(async { Ok(()) })
    }
}

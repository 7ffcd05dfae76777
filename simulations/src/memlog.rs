//! [`MemLog`]: an [`EventLog`] held in memory, with a durability model a simulator drives by hand.
//!
//! The model, in short:
//! - **Records** are what [`SledLog`](custodian_log::SledLog) stores: [`Envelope::encode`]d, read back
//!   through [`Envelope::decode`], so every read makes the same checks. Dedupe is decided exactly as the
//!   sled log decides it (first content of a key wins, a resend is a `Duplicate`, other content a
//!   `Conflict` whose reading evidence is stored once per distinct content); the shared contract
//!   ([`custodian_log::contract`]) checks both.
//! - **The disk** holds the *synced* records, one after the other as `[len u32 LE][record]` frames, and a
//!   commit point (the last synced sequence) that a sync moves atomically with them.
//! - **An append** is decided when [`EventLog::append`] is called (not when its future is first polled),
//!   against everything stored and everything unsynced: its records join the *unsynced tail* (the page
//!   cache). Its future resolves only once a sync covers it. Readers, `last_seq` and `subscribe` see only
//!   synced records; `lookup` answers from the index, which — as in the sled log — may run ahead of
//!   durability, here by every unsynced append.
//! - **Syncs** happen after every append ([`SyncMode::EveryAppend`], the default) or only when the simulator
//!   calls [`MemLog::sync`] ([`SyncMode::OnDemand`]). A sync makes the whole unsynced tail durable in order,
//!   installs the data keys of the `DataKeyIssued` events it made durable, answers every waiting append
//!   (a resend answered `Duplicate` of an unsynced event waits too) and counts as one commit.
//! - **A crash** ([`MemLog::crash`]) loses the unsynced tail; waiting appends fail with
//!   [`EventLogError::Crashed`]. With [`TornWrite::Prefix`], the first bytes of the tail's frames reached
//!   the disk past the commit point: [`EventLog::verify`] reports each record there as corrupt (a torn
//!   record fails [`Envelope::decode`]'s checks; a whole one was never committed). While down, the log
//!   refuses appends, reads and lookups with `Crashed`; `last_seq`, `verify` and `size_on_disk` still
//!   answer, about the disk.
//! - **Recovery** ([`MemLog::recover`], also a clean restart of a running log, which syncs first) truncates
//!   the disk to the commit point — so whatever was never acknowledged is gone, and a resend of it is
//!   `Appended` again — and rebuilds the dedupe index, the conflict-evidence index and the data keys by
//!   decoding every committed record, as a sled import does.
//!
//! Deterministic: no threads, no wall clock (time from the injected [`Clock`], read once per append as the
//! sled log reads it once per group commit), no randomness, ordered maps only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use custodian_events::Clock;
use custodian_events::CorruptRecord;
use custodian_events::envelope::{Envelope, Fingerprint};
use custodian_events::event::{DataKeyIssued, DedupeKey, Event};
use custodian_events::keyring::{Keyring, KeyringError};
use custodian_log::{
    AppendOutcome, BoxFuture, Decision, DedupeEntry, EventLog, EventLogError, Proposed,
    VerifyReport, check_batch_len, decide, evidence_identity,
};
use tokio::sync::{oneshot, watch};

/// When the log syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every append is synced as it is made: appends resolve at once (what the contract tests use).
    #[default]
    EveryAppend,
    /// Appends wait in the unsynced tail until the simulator calls [`MemLog::sync`] (or crashes the log).
    OnDemand,
}

/// Settings of the simulated log.
#[derive(Debug, Clone)]
pub struct MemLogConfig {
    pub sync: SyncMode,
    /// Events one append may carry (as [`SledLogConfig::batch_events_max`](custodian_log::SledLogConfig)).
    pub batch_events_max: usize,
}

impl Default for MemLogConfig {
    fn default() -> Self {
        MemLogConfig {
            sync: SyncMode::EveryAppend,
            batch_events_max: 10_000,
        }
    }
}

/// What of the unsynced tail reached the disk when the log crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornWrite {
    /// Nothing.
    Nothing,
    /// The first `bytes` bytes of the unsynced tail's frames (`[len u32 LE][record]`, in sequence order),
    /// at most all of them, but not the commit that would have made them durable. They lie on the disk
    /// past the commit point until recovery truncates them.
    Prefix { bytes: usize },
}

/// What a crash lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// Appends that were waiting for a sync, now answered with [`EventLogError::Crashed`].
    pub appends_failed: usize,
    /// Records of the unsynced tail (none of them acknowledged).
    pub records_lost: u64,
    /// Bytes of them left on the disk past the commit point.
    pub torn_bytes: usize,
}

/// What a sync made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    /// Appends answered.
    pub appends: usize,
    /// Records made durable.
    pub records: u64,
}

/// What a recovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// The last durable sequence, where appends go on from.
    pub last_seq: u64,
    /// Bytes past the commit point that were cut off.
    pub truncated_bytes: usize,
}

type Answer = Result<Vec<AppendOutcome>, EventLogError>;

/// An append waiting for a sync.
struct Waiting {
    outcomes: Vec<AppendOutcome>,
    /// Data keys it stores, installed once durable.
    data_keys: Vec<DataKeyIssued>,
    reply: oneshot::Sender<Answer>,
}

struct State {
    up: bool,
    keyring: Option<Arc<Keyring>>,
    /// Committed records; record `i` has sequence `i + 1`.
    disk: Vec<Vec<u8>>,
    /// Bytes past the commit point, left by a torn write; empty while up.
    torn: Vec<u8>,
    /// Records decided but not synced, from sequence `disk.len() + 1` on.
    unsynced: Vec<Vec<u8>>,
    waiting: Vec<Waiting>,
    /// Dedupe key → first event stored under it (synced or not).
    dedupe: BTreeMap<DedupeKey, DedupeEntry>,
    /// (key, fingerprint of a conflicting attempt) → sequence of its evidence (synced or not).
    evidence: BTreeMap<(DedupeKey, Fingerprint), u64>,
    commits: u64,
}

impl State {
    fn durable_seq(&self) -> u64 {
        self.disk.len() as u64
    }

    fn next_seq(&self) -> u64 {
        (self.disk.len() + self.unsynced.len()) as u64 + 1
    }
}

/// The simulated event log. See the module docs for its model.
pub struct MemLog {
    clock: Arc<dyn Clock>,
    config: MemLogConfig,
    state: Mutex<State>,
    durable_tx: watch::Sender<u64>,
}

impl MemLog {
    /// An empty log. With a `keyring`, payloads can be sealed and every `DataKeyIssued` the log stores is
    /// installed in it once durable.
    pub fn new(
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
        config: MemLogConfig,
    ) -> MemLog {
        MemLog {
            clock,
            config,
            state: Mutex::new(State {
                up: true,
                keyring,
                disk: Vec::new(),
                torn: Vec::new(),
                unsynced: Vec::new(),
                waiting: Vec::new(),
                dedupe: BTreeMap::new(),
                evidence: BTreeMap::new(),
                commits: 0,
            }),
            durable_tx: watch::channel(0).0,
        }
    }

    pub fn config(&self) -> &MemLogConfig {
        &self.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("memlog state lock")
    }

    /// Whether the log is running (not crashed and not yet recovered).
    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// Appends waiting for a sync.
    pub fn waiting_appends(&self) -> usize {
        self.state().waiting.len()
    }

    /// Records decided but not yet synced.
    pub fn unsynced_records(&self) -> u64 {
        self.state().unsynced.len() as u64
    }

    /// Makes the whole unsynced tail durable and answers every waiting append (a no-op while down).
    pub fn sync(&self) -> Synced {
        let mut st = self.state();
        self.sync_locked(&mut st)
    }

    fn sync_locked(&self, st: &mut State) -> Synced {
        if !st.up || st.waiting.is_empty() {
            return Synced::default();
        }
        let records = st.unsynced.len() as u64;
        let unsynced = std::mem::take(&mut st.unsynced);
        st.disk.extend(unsynced);
        st.commits += 1;
        let waiting = std::mem::take(&mut st.waiting);
        let appends = waiting.len();
        for w in waiting {
            // As the sled log: the records are durable either way; a key that does not unwrap fails the
            // appends that stored it.
            let installed = match &st.keyring {
                Some(ring) => w
                    .data_keys
                    .iter()
                    .try_for_each(|k| ring.install(k).map(|_| ())),
                None => Ok(()),
            };
            let _ = w.reply.send(match installed {
                Ok(()) => Ok(w.outcomes),
                Err(e) => Err(e.into()),
            });
        }
        self.durable_tx.send_replace(st.durable_seq());
        Synced { appends, records }
    }

    /// Crashes the log: the unsynced tail is lost (but for what `torn` leaves on the disk past the commit
    /// point), waiting appends fail with [`EventLogError::Crashed`], and the log is down until
    /// [`MemLog::recover`]. Crashing a log that is down changes nothing.
    pub fn crash(&self, torn: TornWrite) -> Crash {
        let mut st = self.state();
        if !st.up {
            return Crash {
                appends_failed: 0,
                records_lost: 0,
                torn_bytes: 0,
            };
        }
        st.up = false;
        let unsynced = std::mem::take(&mut st.unsynced);
        let mut tail = Vec::new();
        if let TornWrite::Prefix { bytes } = torn {
            for r in &unsynced {
                if tail.len() >= bytes {
                    break;
                }
                tail.extend_from_slice(&(r.len() as u32).to_le_bytes());
                tail.extend_from_slice(r);
            }
            tail.truncate(bytes);
        }
        let torn_bytes = tail.len();
        st.torn = tail;
        let waiting = std::mem::take(&mut st.waiting);
        let appends_failed = waiting.len();
        for w in waiting {
            let _ = w.reply.send(Err(EventLogError::Crashed));
        }
        // The indexes are rebuilt from the disk on recovery.
        st.dedupe.clear();
        st.evidence.clear();
        Crash {
            appends_failed,
            records_lost: unsynced.len() as u64,
            torn_bytes,
        }
    }

    /// Starts the log again on its disk, with the keyring it had. See [`MemLog::recover_with`].
    pub fn recover(&self) -> Result<Recovery, EventLogError> {
        let keyring = self.state().keyring.clone();
        self.recover_with(keyring)
    }

    /// Starts the log again on its disk with `keyring` (as a restarted node passes a fresh keyring of its
    /// master key). A running log is first shut down cleanly: its unsynced tail is synced, as the sled
    /// log's writer finishes what is queued when it is dropped. Then whatever lies past the commit point is
    /// truncated and the indexes and data keys are rebuilt from the committed records; the sequence goes on
    /// after the last of them. Fails, and stays down, as opening the sled log fails: a log holding data
    /// keys needs a keyring of the master key they were wrapped with.
    pub fn recover_with(&self, keyring: Option<Arc<Keyring>>) -> Result<Recovery, EventLogError> {
        let mut st = self.state();
        if st.up {
            self.sync_locked(&mut st);
            st.up = false;
        }
        let truncated_bytes = std::mem::take(&mut st.torn).len();
        let mut dedupe = BTreeMap::new();
        let mut evidence = BTreeMap::new();
        for (i, record) in st.disk.iter().enumerate() {
            let seq = i as u64 + 1;
            let env = Envelope::decode(seq, record, keyring.as_deref())?;
            if let Some(key) = env.event.dedupe_key() {
                if let Some(first) = dedupe.get(&key) {
                    let first: &DedupeEntry = first;
                    return Err(EventLogError::IndexCorrupt(format!(
                        "record {seq} is a second {} with the identity of record {}",
                        env.event_type, first.seq
                    )));
                }
                dedupe.insert(
                    key,
                    DedupeEntry {
                        seq,
                        fingerprint: env.fingerprint,
                    },
                );
            }
            if let Some(identity) = evidence_identity(&env.event) {
                evidence.insert(identity, seq);
            }
            if let Event::DataKeyIssued(k) = &env.event {
                match &keyring {
                    Some(ring) => {
                        ring.install(k)?;
                    }
                    None => {
                        return Err(KeyringError::UnknownKey {
                            key_id: Keyring::key_id(&k.scope, k.generation),
                        }
                        .into());
                    }
                }
            }
        }
        st.dedupe = dedupe;
        st.evidence = evidence;
        st.keyring = keyring;
        st.up = true;
        let last_seq = st.durable_seq();
        self.durable_tx.send_replace(last_seq);
        Ok(Recovery {
            last_seq,
            truncated_bytes,
        })
    }

    /// Decides one append and puts its records in the unsynced tail; nothing is changed when it fails.
    fn decide(
        &self,
        st: &mut State,
        batch: Vec<Proposed>,
    ) -> Result<(Vec<AppendOutcome>, Vec<DataKeyIssued>), EventLogError> {
        let recorded_at_ns = self.clock.now_ns();
        let first_seq = st.next_seq();
        let mut records: Vec<Vec<u8>> = Vec::new();
        // What this append adds to the indexes, seen by its own later events, applied once it is decided.
        let mut dedupe: BTreeMap<DedupeKey, DedupeEntry> = BTreeMap::new();
        let mut evidence: BTreeMap<(DedupeKey, Fingerprint), u64> = BTreeMap::new();
        let mut data_keys = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for p in batch {
            let seq = first_seq + records.len() as u64;
            let Some(key) = p.dedupe_key.clone() else {
                records.push(p.into_record(seq, recorded_at_ns));
                outcomes.push(AppendOutcome::Appended { seq });
                continue;
            };
            let held = dedupe
                .get(&key)
                .or_else(|| st.dedupe.get(&key))
                .map(|e| (e.seq, e.fingerprint));
            let keeps = p.event.keeps_conflict_evidence();
            let decision = decide(&p.fingerprint, held, keeps, || {
                let ckey = (key.clone(), p.fingerprint);
                let known = evidence.get(&ckey).or_else(|| st.evidence.get(&ckey));
                Ok::<_, EventLogError>(known.copied())
            })?;
            match decision {
                Decision::Append => {
                    dedupe.insert(
                        key,
                        DedupeEntry {
                            seq,
                            fingerprint: p.fingerprint,
                        },
                    );
                    if let Event::DataKeyIssued(k) = &p.event {
                        data_keys.push(k.clone());
                    }
                    records.push(p.into_record(seq, recorded_at_ns));
                    outcomes.push(AppendOutcome::Appended { seq });
                }
                Decision::Duplicate(original) => {
                    outcomes.push(AppendOutcome::Duplicate { seq: original });
                }
                Decision::Conflict {
                    original,
                    evidence: e,
                } => {
                    let evidence_seq = e.stored_at(|| {
                        let keyring = st.keyring.as_deref();
                        records.push(p.evidence_record(original, keyring, seq, recorded_at_ns)?);
                        evidence.insert((key, p.fingerprint), seq);
                        Ok::<_, EventLogError>(seq)
                    })?;
                    outcomes.push(AppendOutcome::Conflict {
                        original_seq: original,
                        evidence_seq,
                    });
                }
            }
        }
        st.dedupe.extend(dedupe);
        st.evidence.extend(evidence);
        st.unsynced.extend(records);
        Ok((outcomes, data_keys))
    }

    /// Decides `batch` now; the answer comes with the sync that covers it.
    fn submit(&self, batch: Vec<Proposed>) -> Result<oneshot::Receiver<Answer>, EventLogError> {
        let mut st = self.state();
        if !st.up {
            return Err(EventLogError::Crashed);
        }
        let (outcomes, data_keys) = self.decide(&mut st, batch)?;
        let (reply, answer) = oneshot::channel();
        st.waiting.push(Waiting {
            outcomes,
            data_keys,
            reply,
        });
        if self.config.sync == SyncMode::EveryAppend {
            self.sync_locked(&mut st);
        }
        Ok(answer)
    }

    /// The running log's state, or `Crashed`.
    fn up(&self) -> Result<MutexGuard<'_, State>, EventLogError> {
        let st = self.state();
        if st.up {
            Ok(st)
        } else {
            Err(EventLogError::Crashed)
        }
    }

    /// `(seq, record)` of up to `max` committed records from `from_seq` on.
    fn committed(st: &State, from_seq: u64, max: usize) -> impl Iterator<Item = (u64, &[u8])> {
        let from = from_seq.max(1);
        st.disk
            .iter()
            .enumerate()
            .skip((from - 1).min(st.disk.len() as u64) as usize)
            .take(max)
            .map(|(i, r)| (i as u64 + 1, r.as_slice()))
    }
}

impl EventLog for MemLog {
    fn append(
        &self,
        batch: Vec<Proposed>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, EventLogError>> {
        let submitted = check_batch_len(batch.len(), self.config.batch_events_max).and_then(|()| {
            if batch.is_empty() {
                let (reply, answer) = oneshot::channel();
                let _ = reply.send(Ok(Vec::new()));
                Ok(answer)
            } else {
                self.submit(batch)
            }
        });
        Box::pin(async move {
            // A dropped sender is a log that went away with the append unanswered: as good as a crash.
            submitted?.await.map_err(|_| EventLogError::Crashed)?
        })
    }

    fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Envelope>, EventLogError> {
        let st = self.up()?;
        let keyring = st.keyring.clone();
        Self::committed(&st, from_seq, max)
            .map(|(seq, r)| Ok(Envelope::decode(seq, r, keyring.as_deref())?))
            .collect()
    }

    fn read_raw(&self, from_seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, EventLogError> {
        let st = self.up()?;
        Ok(Self::committed(&st, from_seq, max)
            .map(|(seq, r)| (seq, r.to_vec()))
            .collect())
    }

    fn read_where(
        &self,
        from_seq: u64,
        max: usize,
        want: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<Envelope>, u64), EventLogError> {
        let st = self.up()?;
        let keyring = st.keyring.clone();
        let (mut out, mut last) = (Vec::new(), 0);
        for (seq, r) in Self::committed(&st, from_seq, max) {
            if let Some(env) = Envelope::decode_if(seq, r, keyring.as_deref(), want)? {
                out.push(env);
            }
            last = seq;
        }
        Ok((out, last))
    }

    fn last_seq(&self) -> u64 {
        self.state().durable_seq()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    fn lookup(&self, dedupe_key: &DedupeKey) -> Result<Option<DedupeEntry>, EventLogError> {
        Ok(self.up()?.dedupe.get(dedupe_key).copied())
    }

    fn size_on_disk(&self) -> Result<u64, EventLogError> {
        let st = self.state();
        let frames: usize = st.disk.iter().map(|r| 4 + r.len()).sum();
        Ok((frames + st.torn.len()) as u64)
    }

    fn commits_total(&self) -> u64 {
        self.state().commits
    }

    /// Checks every committed record and reports every record past the commit point (left by a torn write)
    /// as corrupt: a torn one with the check it fails, a whole one as never committed.
    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, EventLogError> {
        let st = self.state();
        let durable = st.durable_seq();
        let mut report = VerifyReport::default();
        for (i, record) in st.disk.iter().enumerate() {
            let seq = i as u64 + 1;
            if let Err(e) = Envelope::decode(seq, record, st.keyring.as_deref()) {
                report.corrupt.push(e);
            }
            report.records += 1;
            report.last_seq = seq;
            if report.records % 10_000 == 0 {
                progress(report.records, durable);
            }
        }
        let mut at = 0;
        let mut seq = durable + 1;
        while at < st.torn.len() {
            let rest = &st.torn[at..];
            report.records += 1;
            report.last_seq = seq;
            let Some(len) = rest.get(..4) else {
                report.corrupt.push(CorruptRecord {
                    seq,
                    reason: format!(
                        "torn write past the last sync: {} bytes of a record's length",
                        rest.len()
                    ),
                });
                break;
            };
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            let body = &rest[4..];
            if body.len() < len {
                let why = match Envelope::decode(seq, body, st.keyring.as_deref()) {
                    Err(e) => e.reason,
                    Ok(_) => "a torn record that decodes".into(),
                };
                report.corrupt.push(CorruptRecord {
                    seq,
                    reason: format!(
                        "torn write past the last sync: {} of {len} bytes ({why})",
                        body.len()
                    ),
                });
                break;
            }
            report.corrupt.push(CorruptRecord {
                seq,
                reason: "written past the last sync, never committed: recovery drops it".into(),
            });
            at += 4 + len;
            seq += 1;
        }
        progress(report.records, durable);
        Ok(report)
    }
}

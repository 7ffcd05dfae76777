//! The event log in cluster mode: an [`EventLog`] on JetStream (cluster issue, part 3).
//!
//! - **One replicated stream** holds every shard's history, each shard on its own subject
//!   (`{subject}.07`, see [`crate::ownership`]). A message is either a *record batch* — `b'R'`, a `u32`
//!   count, then `[u32 len][record]` per record, every record [`Envelope::encode`]d under sequence 0 — or an
//!   owner's JSON `OwnerChanged`.
//! - **Only the shard's owner appends**, fenced by the subject's expected last sequence. It decides dedupe
//!   against its own copy of the log, which holds every earlier record of the shard: it caught up past its
//!   own `OwnerChanged` before its first append, and each of its appends waits until its own copy has filed
//!   it. Every dedupe key belongs to the stream of its event, so to one shard: the owner's check is exact
//!   cluster-wide, for as long as the stream keeps its history — no `Nats-Msg-Id` window.
//! - **Every node keeps a copy** ([`SledLog`] in its data dir) filled by an ordered consumer in stream
//!   order. Record batches are filed under the copy's next sequences ([`SledLog::apply_replicated`]), so
//!   every copy gives every event the same gapless sequence, whichever node appended it; reads, `lookup`,
//!   `subscribe` and `verify` are the copy's. The copy stores how far into the stream it has come, so a
//!   restarted node resumes there.
//! - **An append resolves** once JetStream acknowledged the record batch (R3, `sync_interval: always`: on
//!   disk on a majority) *and* this node's copy has filed it: what `append` answers can be read at once.
//!
//! - **Any node takes any append.** A shard's part of a batch that this node does not own goes to the
//!   owner as a request on core NATS (`{subject}_fwd.07`, which only the owner subscribes to, so a dead
//!   owner's requests fail at once with *no responders* and are retried): the records as this
//!   node encoded them (sealed payloads stay sealed) and how far this node's copy had come, so the owner
//!   first catches up (it needs the data keys the records are sealed with). The owner appends and answers
//!   the outcomes and its copy's position, and this node waits until its own copy is there too. No owner
//!   answering (during a failover) is retried for [`FORWARD_WAIT`], then the append is `Unavailable`; a
//!   retried request the owner did take is answered as duplicates.
//!
//! A batch is atomic per shard (and per message: one shard's part of a batch bigger than the server's
//! `max_payload` goes out as several messages, and a crash between them stores a prefix, whose resend is
//! answered duplicate for the prefix and appended for the rest). A batch of several shards gets each
//! shard's sequences together, shard by shard in the order the batch first names them.
//!
//! See `docs/cluster.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_events::Clock;
use custodian_events::envelope::{Envelope, Fingerprint};
use custodian_events::event::DedupeKey;
use custodian_events::keyring::Keyring;
use custodian_log::{
    AppendOutcome, BoxFuture, Decision, DedupeEntry, EventLog, EventLogError, Proposed, SledLog,
    SledLogConfig, VerifyReport, check_batch_len, decide,
};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::Held;
use crate::ownership::{Owned, OwnerChanged, OwnershipError, Shards};
use crate::placement::{SHARDS, shard_of};

const RECORDS_TAG: u8 = b'R';

/// How long an append waits for this node's copy to catch up before it answers `Unavailable`.
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How long an append keeps asking for a shard's owner before it answers `Unavailable` (a failover takes
/// about 2 s, see `docs/cluster.md`).
pub const FORWARD_WAIT: Duration = Duration::from_secs(10);

/// One try of a forwarded append.
const FORWARD_TRY: Duration = Duration::from_secs(2);

/// How often the owner's subscriptions to forwarded appends follow what it owns.
const SUBSCRIPTIONS_EVERY: Duration = Duration::from_millis(25);

/// How long the copy's consumer may stay quiet before the stream is asked whether it moved on.
const FOLLOW_QUIET: Duration = Duration::from_millis(750);

/// Stream sequences whose first copy sequence is remembered for appends waiting on them.
const FIRSTS_KEPT: usize = 65_536;

/// Settings of a node's cluster log.
#[derive(Debug, Clone)]
pub struct ClusterLogConfig {
    /// The node's copy of the log.
    pub local: SledLogConfig,
    /// Events one append may carry.
    pub batch_events_max: usize,
}

impl ClusterLogConfig {
    pub fn new(local: SledLogConfig) -> Self {
        ClusterLogConfig {
            batch_events_max: local.batch_events_max,
            local,
        }
    }
}

/// What the copy has seen of the stream, shared by the follower task and the appenders.
#[derive(Default)]
struct Seen {
    /// Stream sequence of a record batch → the copy sequence of its first record.
    firsts: BTreeMap<u64, u64>,
    /// The highest epoch each shard's `OwnerChanged` named so far.
    epochs: BTreeMap<u16, u64>,
    /// Shards whose `OwnerChanged` epochs did not grow (a broken fence): a checker reads these.
    epoch_regressions: Vec<(u16, u64, u64)>,
}

/// The event log of a node in cluster mode.
pub struct ClusterLog {
    local: Arc<SledLog>,
    shards: Shards,
    held: Arc<Mutex<Held>>,
    node: String,
    locks: Vec<tokio::sync::Mutex<()>>,
    applied: watch::Receiver<u64>,
    seen: Arc<Mutex<Seen>>,
    follower: JoinHandle<()>,
    server: Mutex<Option<JoinHandle<()>>>,
    /// Set while this node cannot hear itself on NATS (fenced by membership): appends fail at once.
    isolated: std::sync::atomic::AtomicBool,
    clock: Arc<dyn Clock>,
    config: ClusterLogConfig,
    message_bytes_max: usize,
}

fn unavailable(what: impl std::fmt::Display) -> EventLogError {
    EventLogError::Unavailable(what.to_string())
}

/// A record batch message.
fn encode_records(records: &[Vec<u8>]) -> Vec<u8> {
    let len = 5 + records.iter().map(|r| 4 + r.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(RECORDS_TAG);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn decode_records(stream_seq: u64, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let short = || format!("stream message {stream_seq}: a record batch cut short");
    let count = u32::from_le_bytes(bytes.get(1..5).ok_or_else(short)?.try_into().expect("4"));
    let mut at = 5;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u32::from_le_bytes(
            bytes
                .get(at..at + 4)
                .ok_or_else(short)?
                .try_into()
                .expect("4"),
        ) as usize;
        at += 4;
        out.push(bytes.get(at..at + len).ok_or_else(short)?.to_vec());
        at += len;
    }
    if at != bytes.len() {
        return Err(format!(
            "stream message {stream_seq}: {} bytes after the last record",
            bytes.len() - at
        ));
    }
    Ok(out)
}

/// Where an outcome's sequence comes from: known, or the `n`th record of this append (filed later).
#[derive(Debug, Clone, Copy)]
enum Loc {
    Seq(u64),
    New(usize),
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Appended(Loc),
    Duplicate(Loc),
    Conflict {
        original: Loc,
        evidence: Option<Loc>,
    },
}

impl ClusterLog {
    /// Opens the node's copy at `config.local.path`, starts following the stream from where the copy
    /// stopped, and appends to the shards `held` says this node owns (the coordinator's record of them).
    pub async fn open(
        config: ClusterLogConfig,
        node: &str,
        shards: Shards,
        held: Arc<Mutex<Held>>,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<Arc<ClusterLog>, EventLogError> {
        let local_config = config.local.clone();
        // The copy's clock is never read: its records come stamped by their owners.
        let copy_clock = clock.clone();
        let local = Arc::new(
            tokio::task::spawn_blocking(move || SledLog::open(local_config, copy_clock, keyring))
                .await
                .map_err(|e| unavailable(format!("opening the copy: {e}")))??,
        );
        let position = local.replicated_position()?;
        check_stream(&local, &shards, position).await?;
        let (applied_tx, applied) = watch::channel(position);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let follower = tokio::spawn(follow(
            shards.clone(),
            local.clone(),
            applied_tx,
            seen.clone(),
            held.clone(),
        ));
        let message_bytes_max = shards.max_payload().saturating_sub(4096).max(64 * 1024);
        let log = Arc::new(ClusterLog {
            local,
            shards,
            held,
            node: node.to_owned(),
            locks: (0..SHARDS).map(|_| tokio::sync::Mutex::new(())).collect(),
            applied,
            seen,
            follower,
            server: Mutex::new(None),
            isolated: std::sync::atomic::AtomicBool::new(false),
            clock,
            config,
            message_bytes_max,
        });
        let server = tokio::spawn(serve_forwarded(Arc::downgrade(&log)));
        *log.server.lock().expect("server lock") = Some(server);
        Ok(log)
    }

    fn forward_subject(&self, shard: u16) -> String {
        format!("{}_fwd.{shard:02}", self.shards.subject())
    }

    /// Sends one shard's part of a batch to the shard's owner; `out` gets the outcomes.
    async fn forward(
        &self,
        shard: u16,
        items: Vec<(usize, Proposed)>,
        out: &mut [Option<AppendOutcome>],
    ) -> Result<(), EventLogError> {
        let indexes: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
        let records: Vec<Vec<u8>> = items
            .into_iter()
            .map(|(_, p)| p.into_record(0, 0))
            .collect();
        let mut payload = self.applied().to_le_bytes().to_vec();
        payload.extend_from_slice(&encode_records(&records));
        let payload = bytes::Bytes::from(payload);
        let subject = self.forward_subject(shard);
        let started = std::time::Instant::now();
        let mut last_problem = String::from("no owner answered");
        while started.elapsed() < FORWARD_WAIT {
            let answer = tokio::time::timeout(
                FORWARD_TRY,
                self.shards.bus().request(subject.clone(), payload.clone()),
            )
            .await;
            let answer_payload = match answer {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    last_problem = format!("no owner answered ({e})");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(_) => {
                    last_problem = format!("no owner answered within {FORWARD_TRY:?}");
                    continue;
                }
            };
            match decode_answer(&answer_payload) {
                Ok((applied, outcomes)) => {
                    if outcomes.len() != indexes.len() {
                        return Err(unavailable(format!(
                            "the owner of shard {shard} answered {} outcomes for {} events",
                            outcomes.len(),
                            indexes.len()
                        )));
                    }
                    if !self.caught_up_to(applied, CATCH_UP_WAIT).await {
                        return Err(unavailable(format!(
                            "stored by the owner of shard {shard}, but this node's copy has not caught up within {CATCH_UP_WAIT:?}; a retry is answered as duplicates"
                        )));
                    }
                    for (i, o) in indexes.iter().zip(outcomes) {
                        out[*i] = Some(o);
                    }
                    return Ok(());
                }
                Err(Answered::Retry(m)) => {
                    last_problem = m;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Answered::Final(e)) => return Err(e),
            }
        }
        Err(unavailable(format!(
            "shard {shard}: {last_problem}; tried for {FORWARD_WAIT:?}. Nothing was acknowledged; send the request again"
        )))
    }

    /// What the owner does with a forwarded part: catch up, append, answer.
    async fn take_forwarded(&self, shard: u16, payload: &[u8]) -> Vec<u8> {
        let answer = async {
            let min_applied = u64::from_le_bytes(
                payload
                    .get(..8)
                    .ok_or_else(|| EventLogError::IndexCorrupt("a forwarded append cut short".into()))?
                    .try_into()
                    .expect("8 bytes"),
            );
            let records = decode_records(0, &payload[8..]).map_err(EventLogError::IndexCorrupt)?;
            if !self.caught_up_to(min_applied, CATCH_UP_WAIT).await {
                return Err(unavailable(format!(
                    "the owner's copy has not caught up with the sender's (stream sequence {min_applied})"
                )));
            }
            let mut items = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                items.push((i, Proposed::from_record(0, r, self.local.keyring())?));
            }
            let mut out = vec![None; items.len()];
            self.append_shard(shard, items, &mut out).await?;
            Ok::<_, EventLogError>(
                out.into_iter()
                    .map(|o| o.expect("every item has an outcome"))
                    .collect::<Vec<_>>(),
            )
        }
        .await;
        encode_answer(self.applied(), answer)
    }

    /// Marks this node cut off from the cluster (or back): while it is, every append fails at once with
    /// `Unavailable`, so that a terminal tries another node instead of waiting for a forward that cannot
    /// get through.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated
            .store(isolated, std::sync::atomic::Ordering::Release);
    }

    /// The node's copy.
    pub fn local(&self) -> &Arc<SledLog> {
        &self.local
    }

    /// How far into the stream this node's copy has come (the stream sequence of the last message filed).
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the copy has come to stream sequence `stream_seq`; false after `within`.
    pub async fn caught_up_to(&self, stream_seq: u64, within: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(within, rx.wait_for(|v| *v >= stream_seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Shards whose `OwnerChanged` epochs did not grow, as (shard, before, after): empty unless a fence
    /// was broken.
    pub fn epoch_regressions(&self) -> Vec<(u16, u64, u64)> {
        self.seen
            .lock()
            .expect("seen lock")
            .epoch_regressions
            .clone()
    }

    /// The last epoch each shard's history named.
    pub fn epochs(&self) -> BTreeMap<u16, u64> {
        self.seen.lock().expect("seen lock").epochs.clone()
    }

    /// The shard of an event stream (`terminal:T-1`): every event of one stream, and so every dedupe key,
    /// is in one shard.
    pub fn shard_of_stream(stream: &str) -> u16 {
        shard_of(stream)
    }

    /// Stops appending: waits for each owned shard's appends in flight, then lets go of it. Returns what
    /// it held. Appends after this go to the shards' next owners.
    pub async fn release_all(&self) -> Vec<Owned> {
        let shards = self.held.lock().expect("held lock").owned_shards();
        let mut released = Vec::new();
        for shard in shards {
            let _writer = self.locks[shard as usize].lock().await;
            if let Some(o) = self.held.lock().expect("held lock").owned.remove(&shard) {
                released.push(o);
            }
        }
        released
    }

    fn owned(&self, shard: u16) -> Option<Owned> {
        self.held
            .lock()
            .expect("held lock")
            .owned
            .get(&shard)
            .cloned()
    }

    /// Lets go of `shard` after an append that failed: fenced (a newer owner), or unknown outcome (the
    /// coordinator claims it again with a new epoch and this node catches up from the stream, so a
    /// message that did get in is seen before the next decision).
    fn relinquish(&self, shard: u16, epoch: u64, why: &str) {
        let mut h = self.held.lock().expect("held lock");
        if h.owned.get(&shard).is_some_and(|o| o.epoch == epoch) {
            h.owned.remove(&shard);
            h.dropped += 1;
            tracing::warn!(node = %self.node, shard, epoch, why, "cluster log: letting go of the shard");
        }
    }

    /// Appends one shard's part of a batch; `out` gets the outcomes at the items' indexes.
    async fn append_shard(
        &self,
        shard: u16,
        items: Vec<(usize, Proposed)>,
        out: &mut [Option<AppendOutcome>],
    ) -> Result<(), EventLogError> {
        let _writer = self.locks[shard as usize].lock().await;
        let mut owned = self.owned(shard).ok_or_else(|| {
            unavailable(format!(
                "node {} does not own shard {shard}: send the request to its owner",
                self.node
            ))
        })?;
        if !self.caught_up_to(owned.last_seq, CATCH_UP_WAIT).await {
            return Err(unavailable(format!(
                "this node's copy has not caught up with shard {shard} (stream sequence {}) within {CATCH_UP_WAIT:?}",
                owned.last_seq
            )));
        }
        let recorded_at_ns = self.clock.now_ns();
        let mut records: Vec<Vec<u8>> = Vec::new();
        // Seqs of this append's records, filled as their messages are filed.
        let mut filed: Vec<u64> = Vec::new();
        let mut keys: BTreeMap<DedupeKey, (Loc, Fingerprint)> = BTreeMap::new();
        let mut evidence: BTreeMap<(DedupeKey, Fingerprint), Loc> = BTreeMap::new();
        let mut pending: Vec<(usize, Pending)> = Vec::with_capacity(items.len());
        let mut bytes = 0usize;
        for (i, p) in items {
            let Some(key) = p.dedupe_key.clone() else {
                let rec = p.into_record(0, recorded_at_ns);
                bytes += rec.len() + 4;
                records.push(rec);
                pending.push((i, Pending::Appended(Loc::New(records.len() - 1))));
                if bytes >= self.message_bytes_max {
                    self.publish(&mut owned, &mut records, &mut filed).await?;
                    bytes = 0;
                }
                continue;
            };
            // The copy's index may keep fingerprints as keyed hashes: compare like with like.
            let index_fp = self.local.index_fingerprint(&p.fingerprint);
            let known = match keys.get(&key) {
                Some(k) => Some(*k),
                None => self
                    .local
                    .lookup(&key)?
                    .map(|DedupeEntry { seq, fingerprint }| (Loc::Seq(seq), fingerprint)),
            };
            let keeps = p.event.keeps_conflict_evidence();
            let decision = decide(&index_fp, known, keeps, || {
                Ok::<_, EventLogError>(match evidence.get(&(key.clone(), p.fingerprint)) {
                    Some(l) => Some(*l),
                    None => self
                        .local
                        .conflict_evidence(&key, &p.fingerprint)?
                        .map(Loc::Seq),
                })
            })?;
            match decision {
                Decision::Append => {
                    let rec = p.into_record(0, recorded_at_ns);
                    bytes += rec.len() + 4;
                    records.push(rec);
                    let loc = Loc::New(records.len() - 1);
                    keys.insert(key, (loc, index_fp));
                    pending.push((i, Pending::Appended(loc)));
                }
                Decision::Duplicate(loc) => {
                    pending.push((i, Pending::Duplicate(loc)));
                }
                Decision::Conflict {
                    mut original,
                    evidence: e,
                } => {
                    // Evidence names the original's sequence: publish what is waiting to learn it.
                    if let Loc::New(n) = original {
                        if filed.len() <= n {
                            self.publish(&mut owned, &mut records, &mut filed).await?;
                            bytes = 0;
                        }
                        original = Loc::Seq(filed[n]);
                    }
                    let Loc::Seq(original_seq) = original else {
                        unreachable!("resolved above")
                    };
                    let ev = e.stored_at(|| {
                        let keyring = self.local_keyring();
                        let rec = p.evidence_record(original_seq, keyring, 0, recorded_at_ns)?;
                        bytes += rec.len() + 4;
                        records.push(rec);
                        let l = Loc::New(records.len() - 1);
                        evidence.insert((key, p.fingerprint), l);
                        Ok::<_, EventLogError>(l)
                    })?;
                    pending.push((
                        i,
                        Pending::Conflict {
                            original,
                            evidence: ev,
                        },
                    ));
                }
            }
            if bytes >= self.message_bytes_max {
                self.publish(&mut owned, &mut records, &mut filed).await?;
                bytes = 0;
            }
        }
        if filed.len() < records.len() {
            self.publish(&mut owned, &mut records, &mut filed).await?;
        }
        let resolve = |l: Loc| match l {
            Loc::Seq(s) => s,
            Loc::New(n) => filed[n],
        };
        for (i, p) in pending {
            out[i] = Some(match p {
                Pending::Appended(l) => AppendOutcome::Appended { seq: resolve(l) },
                Pending::Duplicate(l) => AppendOutcome::Duplicate { seq: resolve(l) },
                Pending::Conflict { original, evidence } => AppendOutcome::Conflict {
                    original_seq: resolve(original),
                    evidence_seq: evidence.map(resolve),
                },
            });
        }
        Ok(())
    }

    fn local_keyring(&self) -> Option<&Keyring> {
        self.local.keyring()
    }

    /// Publishes the records not yet published (`records[filed.len()..]`) as one fenced message, waits
    /// until this node's copy filed it, and notes their sequences in `filed`.
    async fn publish(
        &self,
        owned: &mut Owned,
        records: &mut [Vec<u8>],
        filed: &mut Vec<u64>,
    ) -> Result<(), EventLogError> {
        let from = filed.len();
        if from == records.len() {
            return Ok(());
        }
        let payload = bytes::Bytes::from(encode_records(&records[from..]));
        let epoch = owned.epoch;
        let stream_seq = match self.shards.append(owned, payload.clone()).await {
            Ok(s) => s,
            Err(OwnershipError::Fenced { shard, expected }) => {
                self.relinquish(shard, epoch, "fenced");
                return Err(unavailable(format!(
                    "shard {shard} has a newer owner than this node (expected last sequence {expected} is stale); nothing was stored, send the request again"
                )));
            }
            // The answer was lost: if the message is in and surely ours, carry on from it.
            Err(e) => match self.shards.landed(owned, &payload).await {
                Some(seq) => {
                    self.held.lock().expect("held lock").answers_recovered += 1;
                    tracing::info!(node = %self.node, shard = owned.shard, seq, error = %e,
                        "cluster log: an append's answer was lost, but it landed; carrying on");
                    seq
                }
                None => {
                    self.relinquish(owned.shard, epoch, "publish outcome unknown");
                    return Err(unavailable(format!(
                        "publishing to shard {} failed ({e}); it may or may not be stored, and a retry is answered consistently",
                        owned.shard
                    )));
                }
            },
        };
        // The next append of this shard continues from here.
        {
            let mut h = self.held.lock().expect("held lock");
            if let Some(o) = h.owned.get_mut(&owned.shard)
                && o.epoch == epoch
            {
                o.last_seq = stream_seq;
            }
        }
        if !self.caught_up_to(stream_seq, CATCH_UP_WAIT).await {
            return Err(unavailable(format!(
                "stored at stream sequence {stream_seq}, but this node's copy has not filed it within {CATCH_UP_WAIT:?}; a retry is answered as duplicates"
            )));
        }
        let first = self
            .seen
            .lock()
            .expect("seen lock")
            .firsts
            .get(&stream_seq)
            .copied()
            .ok_or_else(|| {
                unavailable(format!(
                    "stream sequence {stream_seq} was filed but its sequences are forgotten; a retry is answered as duplicates"
                ))
            })?;
        filed.extend((0..(records.len() - from) as u64).map(|k| first + k));
        Ok(())
    }
}

/// Refuses a copy filed from another stream than this one (the stream deleted and made again under the
/// same name, a data dir from another cluster of the same name): its sequences would not be the other
/// copies', so every acknowledgement this node gave would name another event than every other node's
/// answer for the same reading. Records the stream's identity in a copy that has none yet.
async fn check_stream(
    local: &SledLog,
    shards: &Shards,
    position: u64,
) -> Result<(), EventLogError> {
    let id = shards
        .bus()
        .stream_id()
        .await
        .map_err(|e| unavailable(format!("cannot ask the stream what it is: {e}")))?;
    let path = local.path().display().to_string();
    match local.replicated_stream()? {
        Some(filed_from) if filed_from != id => {
            return Err(EventLogError::Mismatch(format!(
                "stream_mismatch: the copy of the log in {path} was filed from {filed_from}, but the                  cluster's stream is {id}; its events would stand at other sequences than on the other nodes.                  Move that data dir away and start the node with an empty one (it copies the stream again)"
            )));
        }
        Some(_) => {}
        None if position > 0 => {
            // A copy from before the identity was recorded: it must at least not be ahead of the stream.
            let last = shards
                .stream_last_seq()
                .await
                .map_err(|e| unavailable(format!("cannot ask the stream how far it is: {e}")))?;
            if last < position {
                return Err(EventLogError::Mismatch(format!(
                    "stream_mismatch: the copy of the log in {path} has filed the stream up to message                      {position}, but the cluster's stream ({id}) ends at {last}: it was filed from another                      stream. Move that data dir away and start the node with an empty one"
                )));
            }
            local.set_replicated_stream(&id)?;
        }
        None => local.set_replicated_stream(&id)?,
    }
    Ok(())
}

/// Files the stream into the copy, in order, from where the copy stopped; restarts the consumer after
/// errors.
async fn follow(
    shards: Shards,
    local: Arc<SledLog>,
    applied: watch::Sender<u64>,
    seen: Arc<Mutex<Seen>>,
    held: Arc<Mutex<Held>>,
) {
    loop {
        let from = *applied.borrow() + 1;
        let mut messages = match shards.follow(from).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, from, "cluster log: cannot follow the stream; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            // A consumer that went quiet while the stream moved on (its server or the stream's leader
            // changed) is recreated at once rather than after its own heartbeat timeouts.
            let next = match tokio::time::timeout(FOLLOW_QUIET, messages.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => {
                    let last = tokio::time::timeout(FOLLOW_QUIET, shards.stream_last_seq()).await;
                    match last {
                        Ok(Ok(last)) if last > *applied.borrow() => {
                            tracing::info!(
                                last,
                                applied = *applied.borrow(),
                                "cluster log: the consumer went quiet behind the stream; recreating it"
                            );
                            break;
                        }
                        _ => continue,
                    }
                }
            };
            let (stream_seq, shard, payload) = match next {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster log: following the stream failed; resuming");
                    break;
                }
            };
            let expected = *applied.borrow() + 1;
            if stream_seq < expected {
                continue;
            }
            if stream_seq > expected {
                // The delivery skipped messages (an ordered consumer can lose one: a slow consumer's
                // dropped message, a consumer recreated past it). Filing this one anyway would put every
                // later event at another sequence in this copy than in the others', so that what this
                // node acknowledges names other events than what every other node answers. Follow again
                // from the first missing message instead.
                held.lock().expect("held lock").follow_gaps += 1;
                tracing::warn!(
                    expected,
                    delivered = stream_seq,
                    "cluster log: the stream's delivery skipped messages; following again from the first missing one"
                );
                break;
            }
            match payload.first() {
                Some(&RECORDS_TAG) => {
                    let records = match decode_records(stream_seq, &payload) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "cluster log: a corrupt message stops the copy");
                            return;
                        }
                    };
                    let count = records.len() as u64;
                    match local.apply_replicated(records, stream_seq).await {
                        Ok(first) => {
                            held.lock().expect("held lock").filed(shard, count);
                            let mut s = seen.lock().expect("seen lock");
                            s.firsts.insert(stream_seq, first);
                            while s.firsts.len() > FIRSTS_KEPT {
                                s.firsts.pop_first();
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, stream_seq, "cluster log: filing a message failed; the copy stops here (run `custodian log verify` and rebuild the copy)");
                            return;
                        }
                    }
                }
                Some(b'{') => match serde_json::from_slice::<OwnerChanged>(&payload) {
                    Ok(oc) => {
                        let mut s = seen.lock().expect("seen lock");
                        let before = s.epochs.get(&oc.shard).copied().unwrap_or(0);
                        if oc.epoch <= before {
                            s.epoch_regressions.push((oc.shard, before, oc.epoch));
                        } else {
                            s.epochs.insert(oc.shard, oc.epoch);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, stream_seq, "cluster log: an unreadable OwnerChanged");
                    }
                },
                _ => {
                    tracing::error!(
                        stream_seq,
                        "cluster log: a message of an unknown kind stops the copy"
                    );
                    return;
                }
            }
            applied.send_replace(stream_seq);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers forwarded appends for the shards this node owns: subscribes to a shard's subject when it comes
/// to own it, and drops the subscription when it lets go.
async fn serve_forwarded(log: std::sync::Weak<ClusterLog>) {
    let mut serving: BTreeMap<u16, JoinHandle<()>> = BTreeMap::new();
    loop {
        let Some(l) = log.upgrade() else { break };
        let owned = l.held.lock().expect("held lock").owned_shards();
        serving.retain(|shard, task| {
            let keep = owned.contains(shard) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for shard in owned {
            if serving.contains_key(&shard) {
                continue;
            }
            match l.shards.subscribe(l.forward_subject(shard)).await {
                Ok(sub) => {
                    serving.insert(shard, tokio::spawn(serve_shard(log.clone(), shard, sub)));
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "cannot subscribe to forwarded appends; retrying");
                }
            }
        }
        drop(l);
        tokio::time::sleep(SUBSCRIPTIONS_EVERY).await;
    }
    for (_, task) in serving {
        task.abort();
    }
}

async fn serve_shard(
    log: std::sync::Weak<ClusterLog>,
    shard: u16,
    mut requests: crate::bus::BoxStream<crate::bus::Incoming>,
) {
    while let Some(msg) = requests.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Some(log) = log.upgrade() else { return };
        tokio::spawn(async move {
            let answer = log.take_forwarded(shard, &msg.payload).await;
            if let Err(e) = log.shards.bus().publish(reply, answer.into()).await {
                tracing::debug!(error = %e, shard, "cannot answer a forwarded append; the sender retries");
            }
        });
    }
}

/// How a forwarded append was answered, when not with outcomes.
enum Answered {
    Retry(String),
    Final(EventLogError),
}

fn encode_answer(applied: u64, answer: Result<Vec<AppendOutcome>, EventLogError>) -> Vec<u8> {
    let value = match answer {
        Ok(outcomes) => serde_json::json!({
            "applied": applied,
            "outcomes": outcomes.iter().map(|o| match *o {
                AppendOutcome::Appended { seq } => serde_json::json!(["appended", seq]),
                AppendOutcome::Duplicate { seq } => serde_json::json!(["duplicate", seq]),
                AppendOutcome::Conflict { original_seq, evidence_seq } =>
                    serde_json::json!(["conflict", original_seq, evidence_seq]),
            }).collect::<Vec<_>>(),
        }),
        Err(e) => {
            let kind = match &e {
                EventLogError::BatchTooLarge { .. } => "batch_too_large",
                EventLogError::Corrupt(_) | EventLogError::IndexCorrupt(_) => "corrupt",
                EventLogError::Keyring(_) => "keyring",
                _ => "retry",
            };
            serde_json::json!({ "error": kind, "message": e.to_string() })
        }
    };
    serde_json::to_vec(&value).expect("serialises")
}

fn decode_answer(bytes: &[u8]) -> Result<(u64, Vec<AppendOutcome>), Answered> {
    let bad = |what: &str| Answered::Final(unavailable(format!("the owner's answer {what}")));
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad("is not JSON"))?;
    if let Some(kind) = v.get("error").and_then(|k| k.as_str()) {
        let message = v
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned();
        return Err(match kind {
            "retry" => Answered::Retry(format!("the owner answered: {message}")),
            "corrupt" => Answered::Final(EventLogError::IndexCorrupt(format!(
                "the owner refused the records: {message}"
            ))),
            _ => Answered::Final(unavailable(format!("the owner answered: {message}"))),
        });
    }
    let applied = v
        .get("applied")
        .and_then(|a| a.as_u64())
        .ok_or_else(|| bad("has no position"))?;
    let outcomes = v
        .get("outcomes")
        .and_then(|o| o.as_array())
        .ok_or_else(|| bad("has no outcomes"))?
        .iter()
        .map(|o| {
            let kind = o.get(0).and_then(|k| k.as_str());
            let a = o.get(1).and_then(|n| n.as_u64());
            match (kind, a) {
                (Some("appended"), Some(seq)) => Ok(AppendOutcome::Appended { seq }),
                (Some("duplicate"), Some(seq)) => Ok(AppendOutcome::Duplicate { seq }),
                (Some("conflict"), Some(original_seq)) => Ok(AppendOutcome::Conflict {
                    original_seq,
                    evidence_seq: o.get(2).and_then(|n| n.as_u64()),
                }),
                _ => Err(bad("holds an unknown outcome")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((applied, outcomes))
}

impl Drop for ClusterLog {
    fn drop(&mut self) {
        self.follower.abort();
        if let Some(s) = self.server.lock().expect("server lock").take() {
            s.abort();
        }
    }
}

impl EventLog for ClusterLog {
    fn append(
        &self,
        batch: Vec<Proposed>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, EventLogError>> {
        Box::pin(async move {
            check_batch_len(batch.len(), self.config.batch_events_max)?;
            if self.isolated.load(std::sync::atomic::Ordering::Acquire) {
                return Err(unavailable(format!(
                    "node {} is cut off from the cluster (it does not hear its own heartbeats); send the request to another node",
                    self.node
                )));
            }
            let len = batch.len();
            // Each shard's part, shards in the order the batch first names them.
            let mut parts: Vec<(u16, Vec<(usize, Proposed)>)> = Vec::new();
            for (i, p) in batch.into_iter().enumerate() {
                let shard = shard_of(&p.event.stream());
                match parts.iter_mut().find(|(s, _)| *s == shard) {
                    Some((_, items)) => items.push((i, p)),
                    None => parts.push((shard, vec![(i, p)])),
                }
            }
            let mut out: Vec<Option<AppendOutcome>> = vec![None; len];
            for (shard, items) in parts {
                if self.owned(shard).is_some() {
                    self.append_shard(shard, items, &mut out).await?;
                } else {
                    self.forward(shard, items, &mut out).await?;
                }
            }
            Ok(out
                .into_iter()
                .map(|o| o.expect("every item has an outcome"))
                .collect())
        })
    }

    fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Envelope>, EventLogError> {
        self.local.read(from_seq, max)
    }

    fn read_raw(&self, from_seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, EventLogError> {
        self.local.read_raw(from_seq, max)
    }

    fn read_where(
        &self,
        from_seq: u64,
        max: usize,
        want: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<Envelope>, u64), EventLogError> {
        self.local.read_where(from_seq, max, want)
    }

    fn last_seq(&self) -> u64 {
        self.local.last_seq()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.local.subscribe()
    }

    fn lookup(&self, dedupe_key: &DedupeKey) -> Result<Option<DedupeEntry>, EventLogError> {
        self.local.lookup(dedupe_key)
    }

    fn size_on_disk(&self) -> Result<u64, EventLogError> {
        self.local.size_on_disk()
    }

    fn commits_total(&self) -> u64 {
        self.local.commits_total()
    }

    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, EventLogError> {
        self.local.verify(progress)
    }

    fn barrier(&self) -> BoxFuture<'_, Result<(), EventLogError>> {
        Box::pin(async move {
            let last =
                self.shards.stream_last_seq().await.map_err(|e| {
                    unavailable(format!("cannot ask the stream how far it is: {e}"))
                })?;
            if self.caught_up_to(last, CATCH_UP_WAIT).await {
                Ok(())
            } else {
                Err(unavailable(format!(
                    "this node's copy has not caught up with the stream (sequence {last}) within {CATCH_UP_WAIT:?}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_batches_round_trip_and_refuse_bad_framing() {
        let records = vec![b"one".to_vec(), Vec::new(), vec![7u8; 300]];
        let bytes = encode_records(&records);
        assert_eq!(decode_records(1, &bytes).unwrap(), records);
        assert!(decode_records(1, &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_records(1, &longer).is_err());
        assert!(decode_records(1, &[RECORDS_TAG, 1, 0]).is_err());
    }
}

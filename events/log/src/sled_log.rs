//! The embedded event log on sled, with group commit.
//!
//! Layout, all in one sled tree so that one `apply_batch` is atomic across records and indexes:
//! - `e` + first seq (u64 big-endian) → a **segment**: `[format u8 = 1][count u16 LE]` then `count` times
//!   `[len u32 LE][record]`, the records of consecutive sequences from the first on. Each record is an
//!   [`Envelope::encode`]d event with its own CRC and fingerprint. A segment holds at most
//!   [`SEGMENT_EVENTS_MAX`] events and never spans two group commits.
//! - `d` + dedupe space + block number (u64 big-endian) → a **dedupe block**: `[crc32 u32 LE]` then up to
//!   [`BLOCK_SLOTS`] entries `[slot offset u8][seq u64 BE][fingerprint 32 bytes]`, sorted by offset. A
//!   terminal's readings `seq` 0–63 share block 0, 64–127 block 1, and so on.
//! - `c` + dedupe space + slot (u64 BE) + fingerprint → seq of the conflict evidence, so that a resent
//!   conflict is stored once.
//! - `k` + data key id → seq of its `DataKeyIssued` event, written with it, so that opening the log
//!   finds every data key without scanning the events.
//!
//! Why segments and blocks rather than one key per event: sled 0.34 pays several microseconds per
//! inserted key (it copies the leaf it changes), which capped a key-per-event layout at ~42,000
//! readings/s on this 2-core machine; packing a group's records into segments and a terminal's
//! neighbouring sequences into blocks cuts the keys written per reading from two to about 1/30
//! (see docs/decisions/0001).
//!
//! Group commit: appenders hand their batches to one writer thread through a bounded queue. The writer takes
//! everything waiting (up to `group_events_max` events), decides dedupe for the whole group, writes it with
//! one atomic `apply_batch`, calls `flush` (which fsyncs) once, and only then answers every appender. So
//! concurrent appenders share one fsync, and nobody is answered before their events are on disk. The writer
//! is a plain thread, not a tokio task: fsync blocks, and this crate runs no async runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AppendOutcome, BoxFuture, DedupeEntry, EventLog, EventLogError, Proposed, VerifyReport,
    check_batch_len,
};
use crate::dedupe::{Decision, decide, evidence_identity};
use custodian_events::Clock;
use custodian_events::envelope::{CorruptRecord, Envelope, Fingerprint};
use custodian_events::event::{DedupeKey, Event};
use custodian_events::keyring::{Keyring, KeyringError};

const PREFIX_EVENT: u8 = b'e';
const PREFIX_DEDUPE: u8 = b'd';
const PREFIX_CONFLICT: u8 = b'c';
const PREFIX_DATA_KEY: u8 = b'k';

/// Events per segment (one sled value). 64 records of ~330 bytes are ~21 KiB.
pub const SEGMENT_EVENTS_MAX: usize = 64;
const SEGMENT_FORMAT: u8 = 1;
const SEGMENT_HEADER_LEN: usize = 3;

/// Slots per dedupe block (one sled value of at most 4 + 64 × 41 bytes).
pub const BLOCK_SLOTS: u64 = 64;
const BLOCK_ENTRY_LEN: usize = 41;

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct SledLogConfig {
    /// The folder sled keeps its files in.
    pub path: PathBuf,
    /// Append requests that may wait for the writer. When full, `append` fails at once with
    /// `Overloaded` (the HTTP layer answers 503 with Retry-After). Each waiting request holds its batch in
    /// memory: at 1,000 readings of ~300 bytes, 1,024 requests are ~300 MB at worst.
    pub queue_requests_max: usize,
    /// Events the writer takes into one group commit. A bigger group shares one fsync among more appenders
    /// but makes each group wait longer. The writer always takes at least one request.
    pub group_events_max: usize,
    /// Events one append may carry.
    pub batch_events_max: usize,
    /// sled's page cache, in bytes.
    pub cache_capacity_bytes: u64,
}

impl SledLogConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledLogConfig {
            path: path.into(),
            queue_requests_max: 1024,
            group_events_max: 16_384,
            batch_events_max: 10_000,
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, EventLogError>>;

struct Request {
    batch: Vec<Proposed>,
    reply: Reply,
}

/// Records decided elsewhere, filed as they are (see [`SledLog::apply_replicated`]).
struct Replicated {
    records: Vec<Vec<u8>>,
    position: u64,
    reply: oneshot::Sender<Result<u64, EventLogError>>,
}

/// What the writer thread is asked to do.
enum Job {
    Append(Request),
    Replicated(Replicated),
}

/// The key of the position a replicated copy has reached in its source.
const REPLICATED_POSITION_KEY: &[u8] = b"m/replicated-position";
/// Which stream a replicated copy is filed from (see [`SledLog::replicated_stream`]).
const REPLICATED_STREAM_KEY: &[u8] = b"m/replicated-stream";

/// The embedded, single-node event log.
pub struct SledLog {
    db: sled::Db,
    queue: Option<mpsc::Sender<Job>>,
    durable_seq: Arc<AtomicU64>,
    durable_rx: watch::Receiver<u64>,
    commits: Arc<AtomicU64>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    keyring: Option<Arc<Keyring>>,
    index: Index,
    config: SledLogConfig,
}

impl SledLog {
    /// Opens (or creates) the log at `config.path` and starts its writer thread. With a `keyring`,
    /// payloads can be sealed at rest and every data key the log holds is unwrapped now: a wrong master
    /// key fails here, with `master_key_mismatch`, not later on some read.
    pub fn open(
        config: SledLogConfig,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<SledLog, EventLogError> {
        let (log, writer, rx) = Self::open_paused(config, clock, keyring)?;
        log.start_writer(writer, rx);
        Ok(log)
    }

    /// Opens the log without starting its writer, so that a test can fill the append queue.
    fn open_paused(
        config: SledLogConfig,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
    ) -> Result<(SledLog, Writer, mpsc::Receiver<Job>), EventLogError> {
        let db = open_sled(
            sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity_bytes),
        )?;
        let index = Index::open(&db, keyring.clone())?;
        install_data_keys(&db, &index, keyring.as_deref())?;
        let last_seq = match db.scan_prefix([PREFIX_EVENT]).next_back() {
            None => 0,
            Some(kv) => {
                let (k, v) = kv?;
                let first = seq_from_event_key(&k);
                first + segment_records(first, &v)?.len() as u64 - 1
            }
        };
        let durable_seq = Arc::new(AtomicU64::new(last_seq));
        let (durable_tx, durable_rx) = watch::channel(last_seq);
        let (tx, rx) = mpsc::channel(config.queue_requests_max);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            next_seq: last_seq + 1,
            durable_seq: durable_seq.clone(),
            durable_tx,
            commits: commits.clone(),
            clock,
            keyring: keyring.clone(),
            index: index.clone(),
            group_events_max: config.group_events_max,
        };
        let log = SledLog {
            db,
            queue: Some(tx),
            durable_seq,
            durable_rx,
            commits,
            writer: std::sync::Mutex::new(None),
            keyring,
            index,
            config,
        };
        Ok((log, writer, rx))
    }

    fn start_writer(&self, writer: Writer, rx: mpsc::Receiver<Job>) {
        let handle = std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || writer.run(rx))
            .expect("spawning the log writer thread");
        *self.writer.lock().expect("writer handle lock") = Some(handle);
    }

    /// Whether the log holds any data key (so a master key is needed to read it).
    pub fn holds_data_keys(path: &std::path::Path) -> Result<bool, EventLogError> {
        let db = open_sled(sled::Config::new().path(path))?;
        Ok(db.scan_prefix([PREFIX_DATA_KEY]).next().is_some())
    }

    pub fn config(&self) -> &SledLogConfig {
        &self.config
    }

    /// Files `records` — each encoded under sequence 0 by the owner that decided it (a cluster log's shard
    /// owner, which checked dedupe against its own copy) — under the next sequences of this log, indexes
    /// them as an import does (dedupe, conflict evidence, data keys, each data key installed in the keyring
    /// as it passes), and stores `position` (how far this copy has come in its source) with them in one
    /// atomic, flushed batch. Resolves to the first sequence given. A record whose identity this log holds
    /// already is refused as corrupt and nothing of the call is stored: the source never stores a fact twice.
    pub fn apply_replicated(
        &self,
        records: Vec<Vec<u8>>,
        position: u64,
    ) -> BoxFuture<'_, Result<u64, EventLogError>> {
        Box::pin(async move {
            let queue = self.queue.as_ref().ok_or(EventLogError::Closed)?;
            let (reply, answer) = oneshot::channel();
            queue
                .send(Job::Replicated(Replicated {
                    records,
                    position,
                    reply,
                }))
                .await
                .map_err(|_| EventLogError::Closed)?;
            answer.await.map_err(|_| EventLogError::Closed)?
        })
    }

    /// The keyring payloads are sealed and opened with, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_deref()
    }

    /// The `position` of the last [`SledLog::apply_replicated`] (0 when none).
    pub fn replicated_position(&self) -> Result<u64, EventLogError> {
        Ok(self
            .db
            .get(REPLICATED_POSITION_KEY)?
            .map_or(0, |v| be_u64(&v)))
    }

    /// What [`EventLog::lookup`] answers as a key's fingerprint for an event of fingerprint `fp`: the
    /// fingerprint itself, or its keyed hash where the log's indexes are keyed. Compare with this.
    pub fn index_fingerprint(&self, fp: &Fingerprint) -> Fingerprint {
        self.index.entry_fingerprint(fp)
    }

    /// The folder the log lives in.
    pub fn path(&self) -> &std::path::Path {
        &self.config.path
    }

    /// The identity of the stream this copy is filed from (its name and creation time), once recorded.
    /// A copy must only ever be filed from one incarnation of one stream: filed from another, its
    /// sequences would not be the other copies' (see `custodian_cluster::cluster_log`).
    pub fn replicated_stream(&self) -> Result<Option<String>, EventLogError> {
        Ok(self
            .db
            .get(REPLICATED_STREAM_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the identity of the stream this copy is filed from, durably.
    pub fn set_replicated_stream(&self, id: &str) -> Result<(), EventLogError> {
        self.db.insert(REPLICATED_STREAM_KEY, id.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// The sequence of the conflict evidence stored for `key` with content `fp`, if any.
    pub fn conflict_evidence(
        &self,
        key: &DedupeKey,
        fp: &Fingerprint,
    ) -> Result<Option<u64>, EventLogError> {
        Ok(self
            .db
            .get(self.index.conflict_key(key, fp))?
            .map(|v| be_u64(&v)))
    }

    /// Fills an empty log at `config.path` with `records` — `(seq, record)` as [`EventLog::read_raw`] gave
    /// them, from sequence 1 on without gaps — and opens it. Every record is checked as a read checks it
    /// (sealed ones opened with `keyring`, which learns each data key from its `DataKeyIssued` record as it
    /// passes), and the dedupe, conflict-evidence and data-key indexes are rebuilt from the events, so the
    /// restored log answers duplicates and conflicts exactly as the original did. `progress(seq)` is called
    /// now and then. Nothing is left behind on failure but what was written so far into the new directory.
    pub fn import(
        config: SledLogConfig,
        clock: Arc<dyn Clock>,
        keyring: Option<Arc<Keyring>>,
        records: &mut dyn Iterator<Item = Result<(u64, Vec<u8>), EventLogError>>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SledLog, EventLogError> {
        {
            let db = open_sled(sled::Config::new().path(&config.path))?;
            let index = Index::open(&db, keyring.clone())?;
            if db.scan_prefix([PREFIX_EVENT]).next().is_some() {
                return Err(EventLogError::IndexCorrupt(format!(
                    "{} already holds a log; import only into an empty data dir",
                    config.path.display()
                )));
            }
            let mut next = 1u64;
            let mut pending: Vec<Vec<u8>> = Vec::new();
            let mut batch = sled::Batch::default();
            let mut blocks: BTreeMap<Vec<u8>, Block> = BTreeMap::new();
            let mut batch_records = 0usize;
            let flush_segment = |pending: &mut Vec<Vec<u8>>, batch: &mut sled::Batch, next: u64| {
                if !pending.is_empty() {
                    let first = next - pending.len() as u64;
                    batch.insert(&event_key(first), encode_segment(pending));
                    pending.clear();
                }
            };
            for item in records {
                let (seq, record) = item?;
                if seq != next {
                    return Err(CorruptRecord {
                        seq,
                        reason: format!("the import expected record {next} here"),
                    }
                    .into());
                }
                let env = Envelope::decode(seq, &record, keyring.as_deref())?;
                index_stored(
                    &db,
                    &index,
                    &mut blocks,
                    &mut batch,
                    keyring.as_deref(),
                    &env,
                )?;
                pending.push(record);
                next += 1;
                batch_records += 1;
                if pending.len() == SEGMENT_EVENTS_MAX {
                    flush_segment(&mut pending, &mut batch, next);
                }
                if batch_records >= 64 * SEGMENT_EVENTS_MAX {
                    flush_segment(&mut pending, &mut batch, next);
                    for (k, b) in std::mem::take(&mut blocks) {
                        batch.insert(k, encode_block(&b));
                    }
                    db.apply_batch(std::mem::take(&mut batch))?;
                    batch_records = 0;
                    progress(next - 1);
                }
            }
            flush_segment(&mut pending, &mut batch, next);
            for (k, b) in blocks {
                batch.insert(k, encode_block(&b));
            }
            db.apply_batch(batch)?;
            db.flush()?;
            progress(next - 1);
        }
        SledLog::open(config, clock, keyring)
    }

    /// `each(seq, record)` of up to `max` durable records from `from_seq` on, in order.
    fn durable_records<T>(
        &self,
        from_seq: u64,
        max: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<T, EventLogError>,
    ) -> Result<Vec<T>, EventLogError> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let available = (durable + 1).saturating_sub(from_seq.max(1));
        let mut out = Vec::with_capacity(max.min(available as usize));
        self.each_durable(from_seq, max, |seq, record| {
            out.push(each(seq, record)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `each(seq, record)` for up to `max` durable records from `from_seq` on, in order.
    fn each_durable(
        &self,
        from_seq: u64,
        max: usize,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), EventLogError>,
    ) -> Result<(), EventLogError> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let from_seq = from_seq.max(1);
        if from_seq > durable || max == 0 {
            return Ok(());
        }
        let mut scanned = 0;
        for segment in self.segments_from(from_seq, durable) {
            let (first, bytes) = segment?;
            for (i, record) in segment_records(first, &bytes)?.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq < from_seq {
                    continue;
                }
                if seq > durable || scanned == max {
                    return Ok(());
                }
                each(seq, record)?;
                scanned += 1;
            }
        }
        Ok(())
    }

    /// The segments that hold `from_seq` and after, up to `last_seq`.
    fn segments_from(
        &self,
        from_seq: u64,
        last_seq: u64,
    ) -> impl Iterator<Item = Result<(u64, sled::IVec), EventLogError>> + '_ {
        // The segment holding `from_seq` starts at or before it: the last segment key <= from_seq.
        let start = match self
            .db
            .range(event_key(0)..=event_key(from_seq))
            .next_back()
        {
            Some(Ok((k, _))) => seq_from_event_key(&k),
            _ => from_seq,
        };
        self.db
            .range(event_key(start)..=event_key(last_seq))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((seq_from_event_key(&k), v))
            })
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        self.queue.take();
        if let Some(w) = self.writer.lock().expect("writer handle lock").take() {
            let _ = w.join();
        }
        let _ = self.db.flush();
    }
}

impl EventLog for SledLog {
    fn append(
        &self,
        batch: Vec<Proposed>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, EventLogError>> {
        Box::pin(async move {
            check_batch_len(batch.len(), self.config.batch_events_max)?;
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let queue = self.queue.as_ref().ok_or(EventLogError::Closed)?;
            let (reply, answer) = oneshot::channel();
            queue
                .try_send(Job::Append(Request { batch, reply }))
                .map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => EventLogError::Overloaded {
                        queue_max: self.config.queue_requests_max,
                    },
                    mpsc::error::TrySendError::Closed(_) => EventLogError::Closed,
                })?;
            answer.await.map_err(|_| EventLogError::Closed)?
        })
    }

    fn read(&self, from_seq: u64, max: usize) -> Result<Vec<Envelope>, EventLogError> {
        self.durable_records(from_seq, max, |seq, record| {
            Ok(Envelope::decode(seq, record, self.keyring.as_deref())?)
        })
    }

    fn read_raw(&self, from_seq: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, EventLogError> {
        self.durable_records(from_seq, max, |seq, record| Ok((seq, record.to_vec())))
    }

    fn read_where(
        &self,
        from_seq: u64,
        max: usize,
        want: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(Vec<Envelope>, u64), EventLogError> {
        let (mut out, mut last) = (Vec::new(), 0);
        self.each_durable(from_seq, max, |seq, record| {
            if let Some(env) = Envelope::decode_if(seq, record, self.keyring.as_deref(), want)? {
                out.push(env);
            }
            last = seq;
            Ok(())
        })?;
        Ok((out, last))
    }

    fn last_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_rx.clone()
    }

    fn lookup(&self, key: &DedupeKey) -> Result<Option<DedupeEntry>, EventLogError> {
        let block = load_block(&self.db, &self.index, key)?;
        Ok(block.get(&block_offset(key)).copied())
    }

    fn size_on_disk(&self) -> Result<u64, EventLogError> {
        Ok(self.db.size_on_disk()?)
    }

    fn commits_total(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, EventLogError> {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let mut report = VerifyReport::default();
        // The next sequence the log should hold; unknown after a segment whose framing is broken.
        let mut expected = Some(1u64);
        let mut next_progress = 10_000;
        for kv in self.db.scan_prefix([PREFIX_EVENT]) {
            let (k, v) = kv?;
            let first = seq_from_event_key(&k);
            if let Some(expected) = expected
                && first != expected
            {
                report.gaps.push((expected, first - 1));
            }
            match segment_records(first, &v) {
                Err(e) => {
                    report.corrupt.push(e);
                    report.records += 1;
                    report.last_seq = first;
                    expected = None;
                }
                Ok(records) => {
                    for (i, record) in records.iter().enumerate() {
                        if let Err(e) =
                            Envelope::decode(first + i as u64, record, self.keyring.as_deref())
                        {
                            report.corrupt.push(e);
                        }
                    }
                    report.records += records.len() as u64;
                    report.last_seq = first + records.len() as u64 - 1;
                    expected = Some(report.last_seq + 1);
                }
            }
            if report.records >= next_progress {
                progress(report.records, durable);
                next_progress += 10_000;
            }
        }
        progress(report.records, durable);
        Ok(report)
    }
}

/// The single writer: owns the next sequence number and does all dedupe decisions, so that concurrent
/// resends of one reading cannot both be appended.
struct Writer {
    db: sled::Db,
    next_seq: u64,
    durable_seq: Arc<AtomicU64>,
    durable_tx: watch::Sender<u64>,
    commits: Arc<AtomicU64>,
    clock: Arc<dyn Clock>,
    keyring: Option<Arc<Keyring>>,
    index: Index,
    group_events_max: usize,
}

type Block = BTreeMap<u8, DedupeEntry>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // A replicated job met while gathering a group waits for the group's commit.
        let mut held: Option<Job> = None;
        while let Some(job) = held.take().or_else(|| rx.blocking_recv()) {
            let first = match job {
                Job::Append(r) => r,
                Job::Replicated(r) => {
                    let out = self.apply_replicated(r.records, r.position);
                    if let Err(e) = &out {
                        tracing::error!(error = %e, "event log: applying replicated records failed");
                    }
                    let _ = r.reply.send(out);
                    continue;
                }
            };
            let mut events = first.batch.len();
            let mut group = vec![first];
            while events < self.group_events_max {
                match rx.try_recv() {
                    Ok(Job::Append(r)) => {
                        events += r.batch.len();
                        group.push(r);
                    }
                    Ok(other) => {
                        held = Some(other);
                        break;
                    }
                    Err(_) => break,
                }
            }
            match self.commit(&mut group) {
                Ok(outcomes) => {
                    for (req, out) in group.into_iter().zip(outcomes) {
                        let _ = req.reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "event log group commit failed");
                    for req in group {
                        let _ = req.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Files records decided elsewhere (see [`SledLog::apply_replicated`]).
    fn apply_replicated(
        &mut self,
        records: Vec<Vec<u8>>,
        position: u64,
    ) -> Result<u64, EventLogError> {
        let first_seq = self.next_seq;
        let mut batch = sled::Batch::default();
        let mut blocks: BTreeMap<Vec<u8>, Block> = BTreeMap::new();
        let mut stored = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let seq = first_seq + i as u64;
            let record = Envelope::reseq(0, record, seq)?;
            let env = Envelope::decode(seq, &record, self.keyring.as_deref())?;
            // Data keys are installed as they pass: later records of the same call may be sealed with them.
            index_stored(
                &self.db,
                &self.index,
                &mut blocks,
                &mut batch,
                self.keyring.as_deref(),
                &env,
            )?;
            stored.push(record);
        }
        let mut seq = first_seq;
        for chunk in stored.chunks(SEGMENT_EVENTS_MAX) {
            batch.insert(&event_key(seq), encode_segment(chunk));
            seq += chunk.len() as u64;
        }
        for (k, b) in blocks {
            batch.insert(k, encode_block(&b));
        }
        batch.insert(REPLICATED_POSITION_KEY, &position.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.next_seq = seq;
        self.db.flush()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        let last = self.next_seq - 1;
        self.durable_seq.store(last, Ordering::Release);
        self.durable_tx.send_replace(last);
        Ok(first_seq)
    }

    /// Decides, writes and fsyncs one group; the outcomes are per request, per event. Takes the events out
    /// of the requests (they are encoded, not cloned); the replies stay.
    fn commit(&mut self, group: &mut [Request]) -> Result<Vec<Vec<AppendOutcome>>, EventLogError> {
        let recorded_at_ns = self.clock.now_ns();
        let first_seq = self.next_seq;
        let mut records: Vec<Vec<u8>> = Vec::new();
        // Dedupe blocks this group read or changed (changed ones are written back), and evidence keys.
        let mut blocks: BTreeMap<Vec<u8>, (Block, bool)> = BTreeMap::new();
        let mut evidence: BTreeMap<Vec<u8>, (u64, bool)> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        // Data keys stored by this group: indexed with it, installed once durable.
        let mut data_keys = Vec::new();
        for req in group.iter_mut() {
            let mut out = Vec::with_capacity(req.batch.len());
            for p in std::mem::take(&mut req.batch) {
                let seq = first_seq + records.len() as u64;
                let Some(key) = p.dedupe_key.clone() else {
                    records.push(p.into_record(seq, recorded_at_ns));
                    out.push(AppendOutcome::Appended { seq });
                    continue;
                };
                let bkey = self.index.block_key(&key);
                let entry_fp = self.index.entry_fingerprint(&p.fingerprint);
                let (block, dirty) = match blocks.get_mut(&bkey) {
                    Some(b) => b,
                    None => {
                        let b = load_block(&self.db, &self.index, &key)?;
                        blocks.entry(bkey).or_insert((b, false))
                    }
                };
                let held = block
                    .get(&block_offset(&key))
                    .map(|e| (e.seq, e.fingerprint));
                let keeps = p.event.keeps_conflict_evidence();
                let decision = decide(&entry_fp, held, keeps, || {
                    let ckey = self.index.conflict_key(&key, &p.fingerprint);
                    Ok::<_, EventLogError>(match evidence.get(&ckey) {
                        Some((s, _)) => Some(*s),
                        None => self.db.get(&ckey)?.map(|v| be_u64(&v)),
                    })
                })?;
                match decision {
                    Decision::Append => {
                        block.insert(
                            block_offset(&key),
                            DedupeEntry {
                                seq,
                                fingerprint: entry_fp,
                            },
                        );
                        *dirty = true;
                        if let Event::DataKeyIssued(k) = &p.event {
                            data_keys.push((seq, k.clone()));
                        }
                        records.push(p.into_record(seq, recorded_at_ns));
                        out.push(AppendOutcome::Appended { seq });
                    }
                    Decision::Duplicate(original) => {
                        out.push(AppendOutcome::Duplicate { seq: original });
                    }
                    Decision::Conflict {
                        original,
                        evidence: e,
                    } => {
                        let evidence_seq = e.stored_at(|| {
                            let keyring = self.keyring.as_deref();
                            records.push(p.evidence_record(
                                original,
                                keyring,
                                seq,
                                recorded_at_ns,
                            )?);
                            let ckey = self.index.conflict_key(&key, &p.fingerprint);
                            evidence.insert(ckey, (seq, true));
                            Ok::<_, EventLogError>(seq)
                        })?;
                        out.push(AppendOutcome::Conflict {
                            original_seq: original,
                            evidence_seq,
                        });
                    }
                }
            }
            outcomes.push(out);
        }
        if !records.is_empty() {
            let mut batch = sled::Batch::default();
            let mut seq = first_seq;
            for chunk in records.chunks(SEGMENT_EVENTS_MAX) {
                batch.insert(&event_key(seq), encode_segment(chunk));
                seq += chunk.len() as u64;
            }
            for (k, (block, dirty)) in blocks {
                if dirty {
                    batch.insert(k, encode_block(&block));
                }
            }
            for (k, (s, fresh)) in evidence {
                if fresh {
                    batch.insert(k, s.to_be_bytes().to_vec());
                }
            }
            for (s, k) in &data_keys {
                batch.insert(
                    self.index
                        .data_key_index(&Keyring::key_id(&k.scope, k.generation)),
                    &s.to_be_bytes(),
                );
            }
            self.db.apply_batch(batch)?;
            // From here on the sequences are taken, even if the flush fails: the events are in sled's
            // memory and the next successful flush makes them durable, so a retry is answered as a
            // duplicate only once that flush has run.
            self.next_seq = seq;
        }
        self.db.flush()?;
        if let Some(keyring) = &self.keyring {
            for (_, k) in &data_keys {
                keyring.install(k)?;
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        let last = self.next_seq - 1;
        self.durable_seq.store(last, Ordering::Release);
        self.durable_tx.send_replace(last);
        Ok(outcomes)
    }
}

/// Indexes a record filed as it was decided elsewhere (an import, a cluster copy): its identity into
/// `blocks` (a second one is corrupt: the source never stores a fact twice), a conflict's evidence and a
/// data key into `batch`, and the data key into `keyring` at once (later records may be sealed with it).
fn index_stored(
    db: &sled::Db,
    index: &Index,
    blocks: &mut BTreeMap<Vec<u8>, Block>,
    batch: &mut sled::Batch,
    keyring: Option<&Keyring>,
    env: &Envelope,
) -> Result<(), EventLogError> {
    let seq = env.seq;
    if let Some(key) = env.event.dedupe_key() {
        let bkey = index.block_key(&key);
        if !blocks.contains_key(&bkey) {
            let b = load_block(db, index, &key)?;
            blocks.insert(bkey.clone(), b);
        }
        let block = blocks.get_mut(&bkey).expect("just inserted");
        if let Some(e) = block.get(&block_offset(&key)) {
            return Err(CorruptRecord {
                seq,
                reason: format!(
                    "a second {} with the identity of event {}: the log this came from never stores one twice",
                    env.event_type, e.seq
                ),
            }
            .into());
        }
        block.insert(
            block_offset(&key),
            DedupeEntry {
                seq,
                fingerprint: index.entry_fingerprint(&env.fingerprint),
            },
        );
    }
    if let Some((key, fp)) = evidence_identity(&env.event) {
        batch.insert(index.conflict_key(&key, &fp), seq.to_be_bytes().to_vec());
    }
    if let Event::DataKeyIssued(k) = &env.event {
        batch.insert(
            index.data_key_index(&Keyring::key_id(&k.scope, k.generation)),
            &seq.to_be_bytes(),
        );
        if let Some(keyring) = keyring {
            keyring.install(k)?;
        }
    }
    Ok(())
}

/// How long opening waits for a previous holder of the same sled files in this process to let go.
const SLED_LOCK_WAIT_MS_MAX: u64 = 5_000;

/// Opens sled, waiting a little for its file lock: sled releases the lock of a dropped `Db` only when its
/// epoch-based garbage collection gets round to it, so reopening right after a drop (a restart within one
/// process) can find the lock still held for a moment.
pub fn open_sled(config: sled::Config) -> Result<sled::Db, EventLogError> {
    let mut waited_ms = 0;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && waited_ms < SLED_LOCK_WAIT_MS_MAX =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
                waited_ms += 20;
            }
            other => return Ok(other?),
        }
    }
}

/// Unwraps every data key the log holds into `keyring`; without a keyring, a log holding keys is refused.
fn install_data_keys(
    db: &sled::Db,
    index: &Index,
    keyring: Option<&Keyring>,
) -> Result<(), EventLogError> {
    for kv in db.scan_prefix([PREFIX_DATA_KEY]) {
        let (k, v) = kv?;
        let seq = be_u64(&v);
        // In the keyed layout the index key is a hash: the key is named by its event.
        let key_id = match index.keyring {
            Some(_) => format!("of event {seq}"),
            None => String::from_utf8_lossy(&k[1..]).into_owned(),
        };
        let Some(keyring) = keyring else {
            return Err(EventLogError::Keyring(KeyringError::UnknownKey { key_id }));
        };
        let (first, segment) = db
            .range(event_key(0)..=event_key(seq))
            .next_back()
            .ok_or_else(|| CorruptRecord {
                seq,
                reason: format!("data key {key_id} points at a missing event"),
            })??;
        let first = seq_from_event_key(&first);
        let records = segment_records(first, &segment)?;
        let record = records
            .get((seq - first) as usize)
            .ok_or_else(|| CorruptRecord {
                seq,
                reason: format!("data key {key_id} points outside its segment"),
            })?;
        // Sealed under the log's own key (derived from the master key), or plain in older logs.
        // A record that does not open under the meta key of this master key: another master key (a
        // corrupt record fails its CRC first).
        let env = Envelope::decode(seq, record, Some(keyring)).map_err(|e| {
            if e.reason.contains("not known to this node") || e.reason.contains("fails its check") {
                EventLogError::Keyring(KeyringError::MasterKeyMismatch {
                    key_id: format!("{key_id} (sealed under the log's own key)"),
                })
            } else {
                e.into()
            }
        })?;
        match env.event {
            Event::DataKeyIssued(issued) => {
                keyring.install(&issued)?;
            }
            other => {
                return Err(CorruptRecord {
                    seq,
                    reason: format!("data key {key_id} points at a {}", other.event_type()),
                }
                .into());
            }
        }
    }
    Ok(())
}

fn encode_segment(records: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = records.iter().map(|r| 4 + r.len()).sum();
    let mut out = Vec::with_capacity(SEGMENT_HEADER_LEN + len);
    out.push(SEGMENT_FORMAT);
    out.extend_from_slice(&(records.len() as u16).to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// Splits a segment into its records (not yet checked one by one).
fn segment_records(first_seq: u64, bytes: &[u8]) -> Result<Vec<&[u8]>, CorruptRecord> {
    let corrupt = |reason: String| CorruptRecord {
        seq: first_seq,
        reason: format!("segment starting here: {reason}"),
    };
    if bytes.len() < SEGMENT_HEADER_LEN || bytes[0] != SEGMENT_FORMAT {
        return Err(corrupt("unknown segment format".into()));
    }
    let count = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
    if count == 0 || count > SEGMENT_EVENTS_MAX {
        return Err(corrupt(format!("segment claims {count} records")));
    }
    let mut out = Vec::with_capacity(count);
    let mut at = SEGMENT_HEADER_LEN;
    for _ in 0..count {
        let len = bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt("truncated".into()))?;
        let record = bytes
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| corrupt("truncated".into()))?;
        out.push(record);
        at += 4 + len;
    }
    if at != bytes.len() {
        return Err(corrupt(format!(
            "{} bytes after the last record",
            bytes.len() - at
        )));
    }
    Ok(out)
}

fn block_offset(key: &DedupeKey) -> u8 {
    (key.slot % BLOCK_SLOTS) as u8
}

fn load_block(db: &sled::Db, index: &Index, key: &DedupeKey) -> Result<Block, EventLogError> {
    match db.get(index.block_key(key))? {
        None => Ok(Block::new()),
        Some(v) => decode_block(&v).ok_or_else(|| {
            EventLogError::IndexCorrupt(format!(
                "dedupe block {}/{} fails its check",
                index.space_name(key),
                key.slot / BLOCK_SLOTS
            ))
        }),
    }
}

fn encode_block(block: &Block) -> Vec<u8> {
    let mut body = Vec::with_capacity(block.len() * BLOCK_ENTRY_LEN);
    for (offset, e) in block {
        body.push(*offset);
        body.extend_from_slice(&e.seq.to_be_bytes());
        body.extend_from_slice(&e.fingerprint);
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode_block(v: &[u8]) -> Option<Block> {
    let body = v.get(4..)?;
    if crc32fast::hash(body).to_le_bytes() != v[..4] || body.len() % BLOCK_ENTRY_LEN != 0 {
        return None;
    }
    Some(
        body.chunks(BLOCK_ENTRY_LEN)
            .map(|c| {
                (
                    c[0],
                    DedupeEntry {
                        seq: be_u64(&c[1..9]),
                        fingerprint: c[9..41].try_into().expect("32 bytes"),
                    },
                )
            })
            .collect(),
    )
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [PREFIX_EVENT; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_from_event_key(k: &[u8]) -> u64 {
    be_u64(&k[1..])
}

fn be_u64(b: &[u8]) -> u64 {
    // A broken invariant if not: every key and value written here has these 8 bytes.
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes of sequence"))
}

/// What marks a log whose index keys are keyed hashes.
const INDEX_LAYOUT_KEY: &[u8] = b"m/index-layout";
const INDEX_LAYOUT_KEYED: &[u8] = b"keyed-v1";

/// How the log's index keys are made. With a keyring (the layout of every log made with one): the dedupe
/// space, a conflicting fingerprint and a data key id are keyed hashes ([`Keyring::tag`]), and the
/// fingerprints in dedupe blocks are too, so that no index key names a terminal, an enterprise, a
/// manifest or a container, and no stored fingerprint can be matched against a guessed reading. Without
/// (a log without a master key, or one made before this layout), they are in the clear.
#[derive(Clone)]
struct Index {
    keyring: Option<Arc<Keyring>>,
}

impl Index {
    /// The layout of the log in `db`: keyed when it says so, or when it is new and a keyring is given
    /// (then recorded); in the clear for a log made without one.
    fn open(db: &sled::Db, keyring: Option<Arc<Keyring>>) -> Result<Index, EventLogError> {
        let Some(keyring) = keyring else {
            return Ok(Index { keyring: None });
        };
        if db.get(INDEX_LAYOUT_KEY)?.as_deref() == Some(INDEX_LAYOUT_KEYED) {
            return Ok(Index {
                keyring: Some(keyring),
            });
        }
        if db.scan_prefix([PREFIX_EVENT]).next().is_some() {
            tracing::warn!(
                "this event log was made before its index keys were keyed hashes: they name terminals and \
                 enterprises in the clear. Export it and import it into an empty data dir \
                 (`custodian log export`, `custodian log import`) to rewrite them"
            );
            return Ok(Index { keyring: None });
        }
        db.insert(INDEX_LAYOUT_KEY, INDEX_LAYOUT_KEYED)?;
        Ok(Index {
            keyring: Some(keyring),
        })
    }

    /// The dedupe space as stored.
    fn space(&self, key: &DedupeKey) -> Vec<u8> {
        match &self.keyring {
            Some(k) => k
                .tag(&[b"dedupe space\0".as_slice(), &key.space].concat())
                .to_vec(),
            None => key.space.clone(),
        }
    }

    /// The space for messages: itself in the clear, its hash otherwise.
    fn space_name(&self, key: &DedupeKey) -> String {
        match &self.keyring {
            Some(_) => format!("#{}", hex::encode(self.space(key))),
            None => format!("{:?}", String::from_utf8_lossy(&key.space)),
        }
    }

    fn block_key(&self, key: &DedupeKey) -> Vec<u8> {
        let space = self.space(key);
        let mut k = Vec::with_capacity(1 + space.len() + 8);
        k.push(PREFIX_DEDUPE);
        k.extend_from_slice(&space);
        k.extend_from_slice(&(key.slot / BLOCK_SLOTS).to_be_bytes());
        k
    }

    fn conflict_key(&self, key: &DedupeKey, fp: &Fingerprint) -> Vec<u8> {
        let space = self.space(key);
        let mut k = Vec::with_capacity(1 + space.len() + 8 + 32);
        k.push(PREFIX_CONFLICT);
        k.extend_from_slice(&space);
        k.extend_from_slice(&key.slot.to_be_bytes());
        match &self.keyring {
            Some(r) => k.extend_from_slice(&r.tag(&[b"conflict\0".as_slice(), fp].concat())),
            None => k.extend_from_slice(fp),
        }
        k
    }

    fn data_key_index(&self, key_id: &str) -> Vec<u8> {
        let mut k = vec![PREFIX_DATA_KEY];
        match &self.keyring {
            Some(r) => k.extend_from_slice(&r.tag(&[b"data key\0", key_id.as_bytes()].concat())),
            None => k.extend_from_slice(key_id.as_bytes()),
        }
        k
    }

    /// What a dedupe block stores for a fingerprint.
    fn entry_fingerprint(&self, fp: &Fingerprint) -> Fingerprint {
        match &self.keyring {
            Some(r) => r.tag_long(&[b"dedupe fingerprint\0".as_slice(), fp].concat()),
            None => *fp,
        }
    }
}

#[cfg(test)]
mod tests;

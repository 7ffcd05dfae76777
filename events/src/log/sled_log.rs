//! The embedded event log on sled, with group commit.
//!
//! Layout, all in one sled tree so that one `apply_batch` is atomic across records and indexes:
//! - `e` + seq (8 bytes big-endian) → the record ([`Envelope::encode`]);
//! - `d` + dedupe key → seq (8 bytes big-endian) + fingerprint (32 bytes);
//! - `c` + dedupe key + fingerprint → seq of the conflict evidence, so a resent conflict is stored once.
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
};
use crate::Clock;
use crate::envelope::{Envelope, Fingerprint, fingerprint};

const PREFIX_EVENT: u8 = b'e';
const PREFIX_DEDUPE: u8 = b'd';
const PREFIX_CONFLICT: u8 = b'c';

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

/// The embedded, single-node event log.
pub struct SledLog {
    db: sled::Db,
    queue: Option<mpsc::Sender<Request>>,
    durable_seq: Arc<AtomicU64>,
    durable_rx: watch::Receiver<u64>,
    commits: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
    config: SledLogConfig,
}

impl SledLog {
    /// Opens (or creates) the log at `config.path` and starts its writer thread.
    pub fn open(config: SledLogConfig, clock: Arc<dyn Clock>) -> Result<SledLog, EventLogError> {
        let db = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .open()?;
        let last_seq = match db.scan_prefix([PREFIX_EVENT]).next_back() {
            None => 0,
            Some(kv) => seq_from_event_key(&kv?.0),
        };
        let durable_seq = Arc::new(AtomicU64::new(last_seq));
        let (durable_tx, durable_rx) = watch::channel(last_seq);
        let (tx, rx) = mpsc::channel(config.queue_requests_max);
        let commits = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            commits: commits.clone(),
            db: db.clone(),
            next_seq: last_seq + 1,
            durable_seq: durable_seq.clone(),
            durable_tx,
            clock,
            group_events_max: config.group_events_max,
        };
        let writer = std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || writer.run(rx))
            .expect("spawning the log writer thread");
        Ok(SledLog {
            db,
            queue: Some(tx),
            durable_seq,
            durable_rx,
            commits,
            writer: Some(writer),
            config,
        })
    }

    pub fn config(&self) -> &SledLogConfig {
        &self.config
    }
}

impl Drop for SledLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and stop.
        self.queue.take();
        if let Some(w) = self.writer.take() {
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
            if batch.len() > self.config.batch_events_max {
                return Err(EventLogError::BatchTooLarge {
                    len: batch.len(),
                    max: self.config.batch_events_max,
                });
            }
            if batch.is_empty() {
                return Ok(Vec::new());
            }
            let queue = self.queue.as_ref().ok_or(EventLogError::Closed)?;
            let (reply, answer) = oneshot::channel();
            queue
                .try_send(Request { batch, reply })
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
        let durable = self.durable_seq.load(Ordering::Acquire);
        let from_seq = from_seq.max(1);
        if from_seq > durable || max == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(max.min((durable - from_seq + 1) as usize));
        for kv in self
            .db
            .range(event_key(from_seq)..=event_key(durable))
            .take(max)
        {
            let (k, v) = kv?;
            out.push(Envelope::decode(seq_from_event_key(&k), &v)?);
        }
        Ok(out)
    }

    fn last_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_rx.clone()
    }

    fn lookup(&self, dedupe_key: &[u8]) -> Result<Option<DedupeEntry>, EventLogError> {
        Ok(self
            .db
            .get(prefixed(PREFIX_DEDUPE, dedupe_key))?
            .map(|v| decode_dedupe(&v)))
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
        let mut expected = 1u64;
        for kv in self.db.scan_prefix([PREFIX_EVENT]) {
            let (k, v) = kv?;
            let seq = seq_from_event_key(&k);
            if seq != expected {
                report.gaps.push((expected, seq - 1));
            }
            expected = seq + 1;
            report.records += 1;
            report.last_seq = seq;
            if let Err(e) = Envelope::decode(seq, &v) {
                report.corrupt.push(e);
            }
            if report.records % 10_000 == 0 {
                progress(report.records, durable);
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
    group_events_max: usize,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        while let Some(first) = rx.blocking_recv() {
            let mut events = first.batch.len();
            let mut group = vec![first];
            while events < self.group_events_max {
                match rx.try_recv() {
                    Ok(r) => {
                        events += r.batch.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            match self.commit(&group) {
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

    /// Decides, writes and fsyncs one group; the outcomes are per request, per event.
    fn commit(&mut self, group: &[Request]) -> Result<Vec<Vec<AppendOutcome>>, EventLogError> {
        let recorded_at_ns = self.clock.now_ns();
        let mut batch = sled::Batch::default();
        let mut seq = self.next_seq;
        // What this group has written so far, so that a duplicate later in the group sees it.
        let mut pending: BTreeMap<Vec<u8>, DedupeEntry> = BTreeMap::new();
        let mut pending_evidence: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(group.len());
        for req in group {
            let mut out = Vec::with_capacity(req.batch.len());
            for p in &req.batch {
                let Some(key) = &p.dedupe_key else {
                    batch.insert(
                        &event_key(seq),
                        record(seq, recorded_at_ns, p.fingerprint, p),
                    );
                    out.push(AppendOutcome::Appended { seq });
                    seq += 1;
                    continue;
                };
                let existing = match pending.get(key) {
                    Some(e) => Some(*e),
                    None => self
                        .db
                        .get(prefixed(PREFIX_DEDUPE, key))?
                        .map(|v| decode_dedupe(&v)),
                };
                match existing {
                    None => {
                        let entry = DedupeEntry {
                            seq,
                            fingerprint: p.fingerprint,
                        };
                        batch.insert(
                            &event_key(seq),
                            record(seq, recorded_at_ns, p.fingerprint, p),
                        );
                        batch.insert(prefixed(PREFIX_DEDUPE, key), encode_dedupe(&entry));
                        pending.insert(key.clone(), entry);
                        out.push(AppendOutcome::Appended { seq });
                        seq += 1;
                    }
                    Some(e) if e.fingerprint == p.fingerprint => {
                        out.push(AppendOutcome::Duplicate { seq: e.seq });
                    }
                    Some(e) => {
                        let evidence_seq = match p.event.conflict_evidence(e.seq) {
                            None => None,
                            Some(evidence) => {
                                let ckey = conflict_key(key, &p.fingerprint);
                                let known = match pending_evidence.get(&ckey) {
                                    Some(s) => Some(*s),
                                    None => self.db.get(&ckey)?.map(|v| be_u64(&v)),
                                };
                                Some(match known {
                                    Some(s) => s,
                                    None => {
                                        let fp = fingerprint(&evidence.canonical().to_bytes());
                                        let env = Envelope::new(seq, recorded_at_ns, fp, evidence);
                                        batch.insert(&event_key(seq), env.encode());
                                        batch.insert(ckey.clone(), seq.to_be_bytes().to_vec());
                                        pending_evidence.insert(ckey, seq);
                                        seq += 1;
                                        seq - 1
                                    }
                                })
                            }
                        };
                        out.push(AppendOutcome::Conflict {
                            original_seq: e.seq,
                            evidence_seq,
                        });
                    }
                }
            }
            outcomes.push(out);
        }
        if seq != self.next_seq {
            self.db.apply_batch(batch)?;
            // From here on the sequences are taken, even if the flush fails: the events are in sled's
            // memory and the next successful flush makes them durable, so a retry is answered as a
            // duplicate only once that flush has run.
            self.next_seq = seq;
        }
        self.db.flush()?;
        self.commits.fetch_add(1, Ordering::Relaxed);
        let last = self.next_seq - 1;
        self.durable_seq.store(last, Ordering::Release);
        self.durable_tx.send_replace(last);
        Ok(outcomes)
    }
}

fn record(seq: u64, recorded_at_ns: i64, fp: Fingerprint, p: &Proposed) -> Vec<u8> {
    Envelope::new(seq, recorded_at_ns, fp, p.event.clone()).encode()
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

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(prefix);
    k.extend_from_slice(key);
    k
}

fn conflict_key(key: &[u8], fp: &Fingerprint) -> Vec<u8> {
    let mut k = prefixed(PREFIX_CONFLICT, key);
    k.extend_from_slice(fp);
    k
}

fn encode_dedupe(e: &DedupeEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    v.extend_from_slice(&e.seq.to_be_bytes());
    v.extend_from_slice(&e.fingerprint);
    v
}

fn decode_dedupe(v: &[u8]) -> DedupeEntry {
    DedupeEntry {
        seq: be_u64(v),
        fingerprint: v[8..40].try_into().expect("32 bytes of fingerprint"),
    }
}

#[cfg(test)]
mod tests;

//! The edge's outbox: what waits to be forwarded, in a sled database of its own (`DATA_DIR/outbox`).
//!
//! The edge's event log is the durable truth (an upload is acknowledged once it is there); the outbox is
//! fed from the log behind a checkpoint, so a crash between the two loses nothing: the feeder reads the
//! log again from the checkpoint, and every key derives from a log sequence, so feeding twice is one entry.
//! Entries leave only when the platform has acknowledged them (or, refused, into the dead letters).
//!
//! | key | value |
//! |---|---|
//! | `m` + name | counters: `checkpoint`, `bytes`, `uploads`, `anomalies`, `dead` (u64 BE); `mlayout` |
//! | `q` + terminal's name hash (16 bytes) + log seq (u64 BE) | a waiting upload: the signed body, the signature, the seqs the edge accepted |
//! | `a` + log seq | a waiting anomaly (rkyv `AnomalyDetected`) |
//! | `x` + log seq | a dead letter: an upload the platform refused, with its reason |
//! | `l` + log seq | a local anomaly, for `GET /v1/anomalies` at the edge (the newest `LOCAL_ANOMALIES_MAX`) |
//!
//! Nothing in it is readable without the master key: a terminal is named by a keyed hash of its id
//! (HMAC-SM3 under a key derived from the master key), and every `q`, `a`, `x` and `l` value is sealed
//! (SM4-GCM, the sled key as associated data, [`OutboxKeys`]). An outbox of the older layout (terminal ids
//! and values in the clear) is rewritten into this one when it is opened.
//!
//! Per terminal the `q` keys sort by log sequence: a FIFO per terminal. Every change is one atomic sled
//! batch, counters included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use custodian_events::Event;
use custodian_events::crypto::{Entropy, GCM_NONCE_LEN, Sm4GcmKey, hmac_sm3};
use custodian_events::domain::AnomalyDetected;
use custodian_events::envelope::Envelope;
use serde::{Deserialize, Serialize};

/// Local anomalies kept for `GET /v1/anomalies` at the edge.
pub const LOCAL_ANOMALIES_MAX: u64 = 10_000;

/// A terminal's upload waiting to be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub terminal_id: String,
    pub body: Vec<u8>,
    /// Base64 of the DER SM2 signature, as the terminal sent it.
    pub signature: String,
    /// The readings of the body the edge stored (duplicates and refusals at the edge are not waited for).
    pub seqs: Vec<u64>,
}

/// An upload the platform refused for good, kept until an operator retries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub log_seq: u64,
    pub entry: Entry,
    pub code: String,
    pub message: String,
    pub at_ns: i64,
}

/// An anomaly the edge derived, as `GET /v1/anomalies` at the edge shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalAnomaly {
    pub anomaly_id: String,
    pub event_seq: u64,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub terminal_id: Option<String>,
    pub enterprise_id: Option<String>,
    pub container_id: Option<String>,
    pub description: String,
    pub detected_at_ns: i64,
}

/// What the feeder found in the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Fed {
    Upload {
        log_seq: u64,
        entry: Entry,
    },
    Anomaly {
        log_seq: u64,
        anomaly: AnomalyDetected,
        recorded_at_ns: i64,
    },
}

/// Turns a run of log events into outbox items: an `UploadSigned` and the readings appended with it (the
/// same atomic append, so they follow it), and each `AnomalyDetected`. `complete` says the run reaches the
/// end of the log; when it does not, an upload at its very end may still have readings beyond it, so the
/// returned checkpoint stops before that upload and the next run reads it again.
pub fn collect(events: &[Envelope], complete: bool) -> (Vec<Fed>, Option<u64>) {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut open: Option<(u64, Entry)> = None;
    let close = |open: &mut Option<(u64, Entry)>, out: &mut Vec<Fed>| {
        if let Some((log_seq, entry)) = open.take()
            && !entry.seqs.is_empty()
        {
            out.push(Fed::Upload { log_seq, entry });
        }
    };
    for e in events {
        match &e.event {
            Event::ReadingRecorded(r)
                if open
                    .as_ref()
                    .is_some_and(|(_, o)| o.terminal_id == r.terminal_id.as_str()) =>
            {
                open.as_mut().expect("checked").1.seqs.push(r.seq);
            }
            Event::UploadSigned(u) => {
                close(&mut open, &mut out);
                open = Some((
                    e.seq,
                    Entry {
                        terminal_id: u.terminal_id.to_string(),
                        body: u.body.clone(),
                        signature: base64::engine::general_purpose::STANDARD.encode(&u.signature),
                        seqs: Vec::new(),
                    },
                ));
            }
            Event::AnomalyDetected(a) => {
                close(&mut open, &mut out);
                out.push(Fed::Anomaly {
                    log_seq: e.seq,
                    anomaly: a.clone(),
                    recorded_at_ns: e.recorded_at_ns,
                });
            }
            _ => close(&mut open, &mut out),
        }
    }
    let last = events.last().map(|e| e.seq);
    let checkpoint = match (&open, complete) {
        // Hold the open upload back (it is the last thing in the run); everything before it is fed.
        (Some((log_seq, _)), false) => Some(log_seq - 1),
        _ => {
            close(&mut open, &mut out);
            last
        }
    };
    (out, checkpoint)
}

/// A batch to forward: anomalies first, then uploads, round-robin over terminals.
#[derive(Debug, Default)]
pub struct Batch {
    pub anomalies: Vec<(u64, AnomalyDetected)>,
    /// (log seq, entry).
    pub uploads: Vec<(u64, Entry)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.anomalies.is_empty() && self.uploads.is_empty()
    }
}

/// How big one batch may get.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub uploads_max: usize,
    pub bytes_max: usize,
    pub per_terminal_max: usize,
    pub anomalies_max: usize,
}

/// The counts and sizes the outbox reports.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub checkpoint: u64,
    pub bytes: u64,
    pub bytes_max: u64,
    pub uploads: u64,
    pub anomalies: u64,
    pub dead_letters: u64,
}

/// The keys the outbox seals its values and hashes terminal ids with, derived from one secret (the
/// edge derives it from its master key, [`custodian_events::keyring::Keyring::derive`]).
pub struct OutboxKeys {
    seal: Sm4GcmKey,
    names: [u8; 32],
    entropy: Arc<dyn Entropy>,
}

impl OutboxKeys {
    pub fn new(secret: &[u8; 32], entropy: Arc<dyn Entropy>) -> OutboxKeys {
        let seal = hmac_sm3(secret, b"outbox seal");
        OutboxKeys {
            seal: Sm4GcmKey::new(seal[..16].try_into().expect("16 bytes")),
            names: hmac_sm3(secret, b"outbox names"),
            entropy,
        }
    }

    /// `nonce ‖ SM4-GCM(plain)`, bound to `key`.
    fn seal(&self, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; GCM_NONCE_LEN];
        self.entropy.fill(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(self.seal.seal(&nonce, key, plain));
        out
    }

    fn open(&self, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, sled::Error> {
        let bad = |why: &str| {
            sled::Error::Unsupported(format!(
                "an outbox value does not open ({why}): a wrong master key, or damage"
            ))
        };
        if sealed.len() < GCM_NONCE_LEN {
            return Err(bad("too short"));
        }
        let (nonce, body) = sealed.split_at(GCM_NONCE_LEN);
        self.seal
            .open(nonce.try_into().expect("12 bytes"), key, body)
            .map_err(|e| bad(&e.to_string()))
    }

    /// The 16 bytes a terminal is named by.
    fn terminal(&self, terminal: &str) -> [u8; NAME_LEN] {
        hmac_sm3(&self.names, terminal.as_bytes())[..NAME_LEN]
            .try_into()
            .expect("16 bytes")
    }
}

/// Bytes of a terminal's name hash in a `q` key.
const NAME_LEN: usize = 16;

/// Marks an outbox of this layout.
const LAYOUT_KEY: &[u8] = b"mlayout";
const LAYOUT_SEALED: &[u8] = b"sealed-v1";

pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    keys: OutboxKeys,
    bytes_max: u64,
    /// Serialises writers, so that the counters move with the entries.
    write: Mutex<()>,
    checkpoint: AtomicU64,
    bytes: AtomicU64,
    uploads: AtomicU64,
    anomalies: AtomicU64,
    dead: AtomicU64,
    /// The terminal served last, where the next batch's round starts after.
    cursor: Mutex<Vec<u8>>,
    /// Woken when something is fed.
    pub fed: tokio::sync::Notify,
}

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

/// An upload's key: `q`, the terminal's name hash, the log sequence.
fn upload_key(name: &[u8; NAME_LEN], log_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + NAME_LEN + 8);
    k.push(b'q');
    k.extend_from_slice(name);
    k.extend_from_slice(&log_seq.to_be_bytes());
    k
}

fn seq_key(prefix: u8, log_seq: u64) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&log_seq.to_be_bytes());
    k
}

fn log_seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("outbox records serialise")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, sled::Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| sled::Error::Unsupported(format!("an outbox record does not decode: {e}")))
}

/// What one atomic change does to the counters.
#[derive(Default)]
struct Delta {
    bytes: i64,
    uploads: i64,
    anomalies: i64,
    dead: i64,
}

impl Outbox {
    /// Opens (or makes) the outbox at `path`, holding at most `bytes_max` bytes, its values sealed with
    /// `keys`.
    pub fn open(
        path: &std::path::Path,
        bytes_max: u64,
        keys: OutboxKeys,
    ) -> Result<Outbox, sled::Error> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024);
        // sled lets go of a dropped database's file lock only when its background work gets round to
        // it: reopening right after a drop (a restart within one process) waits for it a little.
        let mut waited_ms = 0;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && waited_ms < 5_000 =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    waited_ms += 20;
                }
                other => break other?,
            }
        };
        let tree = db.open_tree("outbox")?;
        if tree.get(LAYOUT_KEY)?.as_deref() != Some(LAYOUT_SEALED) {
            rewrite_clear_layout(&tree, &keys)?;
        }
        let get = |name: &str| -> Result<u64, sled::Error> {
            Ok(u64_of(
                tree.get([b"m".as_slice(), name.as_bytes()].concat())?,
            ))
        };
        Ok(Outbox {
            checkpoint: AtomicU64::new(get("checkpoint")?),
            bytes: AtomicU64::new(get("bytes")?),
            uploads: AtomicU64::new(get("uploads")?),
            anomalies: AtomicU64::new(get("anomalies")?),
            dead: AtomicU64::new(get("dead")?),
            db,
            tree,
            keys,
            bytes_max,
            write: Mutex::new(()),
            cursor: Mutex::new(Vec::new()),
            fed: tokio::sync::Notify::new(),
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            checkpoint: self.checkpoint.load(Ordering::Acquire),
            bytes: self.bytes.load(Ordering::Acquire),
            bytes_max: self.bytes_max,
            uploads: self.uploads.load(Ordering::Acquire),
            anomalies: self.anomalies.load(Ordering::Acquire),
            dead_letters: self.dead.load(Ordering::Acquire),
        }
    }

    /// The last log sequence fed into the outbox.
    pub fn checkpoint_seq(&self) -> u64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Whether the outbox holds its limit (new uploads are then refused).
    pub fn full(&self) -> bool {
        self.bytes.load(Ordering::Acquire) >= self.bytes_max
    }

    /// Applies `batch` and the counter changes atomically, then updates the counters in memory.
    fn commit(
        &self,
        mut batch: sled::Batch,
        d: Delta,
        checkpoint: Option<u64>,
    ) -> Result<(), sled::Error> {
        let add = |a: &AtomicU64, by: i64| (a.load(Ordering::Acquire) as i64 + by).max(0) as u64;
        let (bytes, uploads, anomalies, dead) = (
            add(&self.bytes, d.bytes),
            add(&self.uploads, d.uploads),
            add(&self.anomalies, d.anomalies),
            add(&self.dead, d.dead),
        );
        batch.insert(b"mbytes".as_slice(), &bytes.to_be_bytes());
        batch.insert(b"muploads".as_slice(), &uploads.to_be_bytes());
        batch.insert(b"manomalies".as_slice(), &anomalies.to_be_bytes());
        batch.insert(b"mdead".as_slice(), &dead.to_be_bytes());
        if let Some(c) = checkpoint {
            batch.insert(b"mcheckpoint".as_slice(), &c.to_be_bytes());
        }
        self.tree.apply_batch(batch)?;
        self.bytes.store(bytes, Ordering::Release);
        self.uploads.store(uploads, Ordering::Release);
        self.anomalies.store(anomalies, Ordering::Release);
        self.dead.store(dead, Ordering::Release);
        if let Some(c) = checkpoint {
            self.checkpoint.store(c, Ordering::Release);
        }
        Ok(())
    }

    /// Stores what the feeder found and moves the checkpoint, in one atomic batch. Items already held
    /// (fed again after a crash) are not counted twice.
    pub fn feed(&self, items: &[Fed], checkpoint: u64) -> Result<(), sled::Error> {
        let _w = self.write.lock().expect("outbox lock");
        let mut batch = sled::Batch::default();
        let mut d = Delta::default();
        let mut locals = 0u64;
        for item in items {
            match item {
                Fed::Upload { log_seq, entry } => {
                    let key = upload_key(&self.keys.terminal(&entry.terminal_id), *log_seq);
                    if self.tree.contains_key(&key)? {
                        continue;
                    }
                    let value = self.keys.seal(&key, &encode(entry));
                    d.bytes += (key.len() + value.len()) as i64;
                    d.uploads += 1;
                    batch.insert(key, value);
                }
                Fed::Anomaly {
                    log_seq,
                    anomaly,
                    recorded_at_ns,
                } => {
                    let key = seq_key(b'a', *log_seq);
                    if self.tree.contains_key(&key)? {
                        continue;
                    }
                    let value = self.keys.seal(
                        &key,
                        &rkyv::to_bytes::<rkyv::rancor::Error>(anomaly)
                            .expect("an anomaly encodes"),
                    );
                    d.bytes += (key.len() + value.len()) as i64;
                    d.anomalies += 1;
                    batch.insert(key, value);
                    let local = LocalAnomaly {
                        anomaly_id: hex::encode(anomaly.anomaly_id),
                        event_seq: *log_seq,
                        kind: anomaly.kind.name().to_owned(),
                        severity: anomaly.severity.name().to_owned(),
                        subject: anomaly.subject.clone(),
                        terminal_id: anomaly.terminal_id.as_ref().map(ToString::to_string),
                        enterprise_id: anomaly.enterprise_id.as_ref().map(ToString::to_string),
                        container_id: anomaly.container_id.as_ref().map(ToString::to_string),
                        description: custodian_projections::describe::anomaly_description(anomaly),
                        detected_at_ns: *recorded_at_ns,
                    };
                    let lkey = seq_key(b'l', *log_seq);
                    let lvalue = self
                        .keys
                        .seal(&lkey, &serde_json::to_vec(&local).expect("json"));
                    batch.insert(lkey, lvalue);
                    locals += 1;
                }
            }
        }
        self.commit(batch, d, Some(checkpoint))?;
        if locals > 0 {
            self.trim_local_anomalies()?;
        }
        if !items.is_empty() {
            self.fed.notify_one();
        }
        Ok(())
    }

    fn trim_local_anomalies(&self) -> Result<(), sled::Error> {
        let held = self.tree.scan_prefix(b"l").keys().count() as u64;
        if held <= LOCAL_ANOMALIES_MAX {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for k in self
            .tree
            .scan_prefix(b"l")
            .keys()
            .take((held - LOCAL_ANOMALIES_MAX) as usize)
        {
            batch.remove(k?);
        }
        self.tree.apply_batch(batch)
    }

    /// The newest local anomalies first, at most `limit`, older than `before` (an event seq) if given.
    pub fn local_anomalies(
        &self,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<LocalAnomaly>, sled::Error> {
        let end = seq_key(b'l', before.unwrap_or(u64::MAX));
        let mut out = Vec::new();
        for kv in self.tree.range(b"l".to_vec()..end).rev() {
            let (k, v) = kv?;
            if let Ok(a) = serde_json::from_slice::<LocalAnomaly>(&self.keys.open(&k, &v)?) {
                out.push(a);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The next batch: waiting anomalies first (they jump the queue), then uploads, at most
    /// `per_terminal_max` of each terminal, terminals taken round-robin from after the one served last.
    pub fn next_batch(&self, limits: BatchLimits) -> Result<Batch, sled::Error> {
        let mut batch = Batch::default();
        for kv in self.tree.scan_prefix(b"a").take(limits.anomalies_max) {
            let (k, v) = kv?;
            let v = self.keys.open(&k, &v)?;
            let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(v.len());
            aligned.extend_from_slice(&v);
            let a = rkyv::from_bytes::<AnomalyDetected, rkyv::rancor::Error>(&aligned).map_err(
                |e| sled::Error::Unsupported(format!("an outbox anomaly does not decode: {e}")),
            )?;
            batch.anomalies.push((log_seq_of(&k), a));
        }
        let cursor = self.cursor.lock().expect("cursor lock").clone();
        // Past every key of a terminal (they are all `q` + name + 8 bytes).
        let after = |terminal: &[u8]| [b"q".as_slice(), terminal, &[0xff; 9]].concat();
        let mut from = if cursor.is_empty() {
            b"q".to_vec()
        } else {
            after(&cursor)
        };
        let mut wrapped = cursor.is_empty();
        let mut first: Option<Vec<u8>> = None;
        let mut last_served = cursor.clone();
        let mut bytes = 0usize;
        'terminals: loop {
            let next = self.tree.range(from.clone()..).next().transpose()?;
            let key = match next {
                Some((k, _)) if k.first() == Some(&b'q') => k,
                _ => {
                    if wrapped {
                        break;
                    }
                    wrapped = true;
                    from = b"q".to_vec();
                    continue;
                }
            };
            let Some(terminal) = key.get(1..1 + NAME_LEN).map(<[u8]>::to_vec) else {
                return Err(sled::Error::Unsupported(format!(
                    "an outbox key of {} bytes",
                    key.len()
                )));
            };
            if first.as_deref() == Some(terminal.as_slice()) {
                break;
            }
            first.get_or_insert_with(|| terminal.clone());
            let prefix = [b"q".as_slice(), &terminal].concat();
            for kv in self.tree.scan_prefix(&prefix).take(limits.per_terminal_max) {
                let (k, v) = kv?;
                if batch.uploads.len() >= limits.uploads_max
                    || (bytes + v.len() > limits.bytes_max && !batch.uploads.is_empty())
                {
                    break 'terminals;
                }
                bytes += v.len();
                batch
                    .uploads
                    .push((log_seq_of(&k), decode::<Entry>(&self.keys.open(&k, &v)?)?));
                last_served = terminal.clone();
            }
            from = after(&terminal);
        }
        *self.cursor.lock().expect("cursor lock") = last_served;
        Ok(batch)
    }

    /// Removes uploads the platform acknowledged, and anomalies it recorded.
    pub fn remove(&self, uploads: &[(u64, &str)], anomalies: &[u64]) -> Result<(), sled::Error> {
        let _w = self.write.lock().expect("outbox lock");
        let mut batch = sled::Batch::default();
        let mut d = Delta::default();
        for (log_seq, terminal) in uploads {
            let key = upload_key(&self.keys.terminal(terminal), *log_seq);
            if let Some(v) = self.tree.get(&key)? {
                d.bytes -= (key.len() + v.len()) as i64;
                d.uploads -= 1;
                batch.remove(key);
            }
        }
        for log_seq in anomalies {
            let key = seq_key(b'a', *log_seq);
            if let Some(v) = self.tree.get(&key)? {
                d.bytes -= (key.len() + v.len()) as i64;
                d.anomalies -= 1;
                batch.remove(key);
            }
        }
        self.commit(batch, d, None)
    }

    /// Moves an upload the platform refused into the dead letters (still counted against the limit).
    pub fn dead_letter(
        &self,
        log_seq: u64,
        terminal: &str,
        code: &str,
        message: &str,
        at_ns: i64,
    ) -> Result<(), sled::Error> {
        let _w = self.write.lock().expect("outbox lock");
        let key = upload_key(&self.keys.terminal(terminal), log_seq);
        let Some(v) = self.tree.get(&key)? else {
            return Ok(());
        };
        let entry: Entry = decode(&self.keys.open(&key, &v)?)?;
        let dkey = seq_key(b'x', log_seq);
        let letter = self.keys.seal(
            &dkey,
            &encode(&DeadLetter {
                log_seq,
                entry,
                code: code.to_owned(),
                message: message.to_owned(),
                at_ns,
            }),
        );
        let mut batch = sled::Batch::default();
        let d = Delta {
            bytes: (dkey.len() + letter.len()) as i64 - (key.len() + v.len()) as i64,
            uploads: -1,
            dead: 1,
            ..Delta::default()
        };
        batch.remove(key);
        batch.insert(dkey, letter);
        self.commit(batch, d, None)
    }

    /// The dead letters, oldest first, at most `limit`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, sled::Error> {
        self.tree
            .scan_prefix(b"x")
            .take(limit)
            .map(|kv| {
                let (k, v) = kv?;
                decode::<DeadLetter>(&self.keys.open(&k, &v)?)
            })
            .collect()
    }

    /// Puts every dead letter back in its terminal's queue; returns how many.
    pub fn retry_dead_letters(&self) -> Result<u64, sled::Error> {
        let _w = self.write.lock().expect("outbox lock");
        let mut batch = sled::Batch::default();
        let mut d = Delta::default();
        for kv in self.tree.scan_prefix(b"x") {
            let (k, v) = kv?;
            let letter: DeadLetter = decode(&self.keys.open(&k, &v)?)?;
            let key = upload_key(
                &self.keys.terminal(&letter.entry.terminal_id),
                letter.log_seq,
            );
            let value = self.keys.seal(&key, &encode(&letter.entry));
            d.bytes += (key.len() + value.len()) as i64 - (k.len() + v.len()) as i64;
            d.uploads += 1;
            d.dead -= 1;
            batch.remove(k);
            batch.insert(key, value);
        }
        let moved = (-d.dead) as u64;
        self.commit(batch, d, None)?;
        if moved > 0 {
            self.fed.notify_one();
        }
        Ok(moved)
    }

    /// Drops dead letters for good: those at `log_seqs`, or every one with `None`, freeing their bytes
    /// (dead letters count against the outbox's limit, so letters nobody can fix would fill it in the
    /// end). Their readings stay in the edge's event log; only the outbox lets go of them. Returns the log
    /// sequences dropped, in order; a sequence that is not a dead letter (any more) is left out.
    pub fn discard_dead_letters(&self, log_seqs: Option<&[u64]>) -> Result<Vec<u64>, sled::Error> {
        let _w = self.write.lock().expect("outbox lock");
        let mut batch = sled::Batch::default();
        let mut d = Delta::default();
        let mut dropped = Vec::new();
        let mut drop = |k: &[u8], v: &[u8]| {
            d.bytes -= (k.len() + v.len()) as i64;
            d.dead -= 1;
            batch.remove(k);
            dropped.push(log_seq_of(k));
        };
        match log_seqs {
            None => {
                for kv in self.tree.scan_prefix(b"x") {
                    let (k, v) = kv?;
                    drop(&k, &v);
                }
            }
            Some(seqs) => {
                let wanted: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
                for seq in wanted {
                    let k = seq_key(b'x', seq);
                    if let Some(v) = self.tree.get(&k)? {
                        drop(&k, &v);
                    }
                }
            }
        }
        self.commit(batch, d, None)?;
        Ok(dropped)
    }

    pub fn flush(&self) -> Result<(), sled::Error> {
        self.db.flush().map(|_| ())
    }

    /// Bytes on disk (sled's files).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Rewrites an outbox of the older layout (`q` + terminal id + `0x00` + seq, values in the clear) into
/// this one, in one atomic batch, and marks it. What waits is kept: it is not yet acknowledged. (sled
/// may keep the old bytes in its files until it reclaims them.)
fn rewrite_clear_layout(tree: &sled::Tree, keys: &OutboxKeys) -> Result<(), sled::Error> {
    let mut batch = sled::Batch::default();
    let mut rewritten = 0u64;
    let mut bytes: i64 = 0;
    for kv in tree.iter() {
        let (k, v) = kv?;
        let new_key = match k.first() {
            Some(b'q') => {
                let entry: Entry = decode(&v)?;
                upload_key(&keys.terminal(&entry.terminal_id), log_seq_of(&k))
            }
            Some(b'a' | b'x' | b'l') => k.to_vec(),
            _ => continue,
        };
        let value = keys.seal(&new_key, &v);
        bytes += (new_key.len() + value.len()) as i64 - (k.len() + v.len()) as i64;
        batch.remove(k);
        batch.insert(new_key, value);
        rewritten += 1;
    }
    if rewritten > 0 {
        let held = u64_of(tree.get(b"mbytes")?) as i64;
        batch.insert(
            b"mbytes".as_slice(),
            &((held + bytes).max(0) as u64).to_be_bytes(),
        );
        tracing::warn!(
            entries = rewritten,
            "the edge's outbox was of the older layout (terminal ids and uploads in the clear); rewritten sealed"
        );
    }
    batch.insert(LAYOUT_KEY, LAYOUT_SEALED);
    tree.apply_batch(batch)?;
    tree.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests;

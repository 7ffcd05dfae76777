//! The contract every [`EventLog`] keeps, as checks that any implementation can be run through.
//!
//! An implementation provides a [`LogFactory`] (fresh, empty logs, and optionally the same log again after a
//! restart) and runs [`check_all`] — or single checks — on an async runtime. Each check opens its own logs,
//! drives them only through the trait and panics with a message naming the check and what differed. The
//! checks need no runtime features of their own (concurrent appends are polled together on one task), read
//! no clock and draw no OS randomness (keyrings get [`SeededEntropy`]), so they are deterministic for a
//! deterministic log.
//!
//! What is checked:
//! - sequences are global, gapless and start at 1; what was appended reads back as proposed;
//! - dedupe within one batch and across batches: a resend is a `Duplicate` of the first, other content
//!   under the same key is a `Conflict`, whose evidence (for readings) is stored once per distinct content
//!   and named again by every resend of that content; a run of pseudo-random batches against a model;
//! - `lookup` agrees with what was appended;
//! - `read`, `read_raw` and `read_where` agree with each other, `read_where` naming the last record scanned;
//! - concurrent resends of one reading store it exactly once;
//! - `subscribe` shows the new `last_seq` once an append has resolved;
//! - sealed payloads (with a `DataKeyIssued` appended first) read back, evidence sealed like its attempt;
//! - `caused_by` survives, the first cause of a fact is kept;
//! - where the factory can reopen, everything acknowledged survives a restart with dedupe intact, data keys
//!   are learnt again from the log, and new appends continue the sequence.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use super::{AppendOutcome, BoxFuture, DedupeEntry, EventLog, Proposed};
use custodian_events::crypto::Entropy;
use custodian_events::envelope::Envelope;
use custodian_events::event::{
    DedupeKey, EnterpriseRegistered, Event, NoteFiled, dedupe_key_reading,
};
use custodian_events::ids::{ContainerId, EnterpriseId, TerminalId};
use custodian_events::keyring::{DataKey, Keyring};
use custodian_events::reading::{Reading, ReadingKind};

/// Makes logs of one implementation for the checks.
pub trait LogFactory {
    type Log: EventLog;

    /// A new, empty log. With `keyring`, payloads sealed with its data keys are stored and read, and every
    /// `DataKeyIssued` the log stores is installed in it once durable.
    fn open(&self, keyring: Option<Arc<Keyring>>) -> Arc<Self::Log>;

    /// Whether [`LogFactory::reopen`] works; when not, the checks of durability across restarts are
    /// skipped and it is never called.
    fn can_reopen(&self) -> bool;

    /// The same log after a restart: `log` — the only reference left — is shut down and what it stored is
    /// opened again with `keyring`, a fresh keyring of the same master key (as a restarted node makes
    /// one), which learns the log's data keys from the log.
    fn reopen(&self, log: Arc<Self::Log>, keyring: Option<Arc<Keyring>>) -> Arc<Self::Log>;

    /// The order in which the log gives the new events of `batch` their sequences, as indexes into it:
    /// the batch's own order (the default), or another one the implementation documents (the cluster log
    /// files a batch shard by shard).
    fn filing_order(&self, batch: &[Proposed]) -> Vec<usize> {
        (0..batch.len()).collect()
    }
}

/// Runs every check of the contract.
pub async fn check_all<F: LogFactory>(f: &F) {
    sequences_are_gapless_and_read_back(f).await;
    duplicates_and_conflicts_within_and_across_batches(f).await;
    dedupe_matches_the_model(f).await;
    lookup_agrees_with_appends(f).await;
    reads_agree_with_each_other(f).await;
    concurrent_resends_store_once(f).await;
    subscribe_follows_the_last_seq(f).await;
    sealed_payloads_read_back(f).await;
    caused_by_survives(f).await;
    acknowledged_appends_survive_a_reopen(f).await;
}

// ----- fixtures -----

/// A weight reading of `terminal`'s `seq`, proposed as a terminal sends it.
pub fn reading(terminal: &str, seq: u64, value: i64) -> Proposed {
    Proposed::new(Event::ReadingRecorded(reading_event(
        terminal, seq, value, None,
    )))
}

/// Like [`reading`], sealed with `key` (the container id is [`SEALED_MARKER`], so a test can look for the
/// plaintext in the stored bytes).
pub fn sealed_reading(
    terminal: &str,
    seq: u64,
    value: i64,
    ring: &Keyring,
    key: &DataKey,
) -> Proposed {
    Proposed::new(Event::ReadingRecorded(reading_event(
        terminal,
        seq,
        value,
        Some(SEALED_MARKER),
    )))
    .sealed_with(ring, key)
}

/// The container id of [`sealed_reading`]s.
pub const SEALED_MARKER: &str = "CONTRACT-SEALED-PLAINTEXT-MARKER";

fn reading_event(terminal: &str, seq: u64, value: i64, container: Option<&str>) -> Reading {
    Reading {
        terminal_id: TerminalId::parse(terminal).expect("a valid terminal id"),
        seq,
        measured_at_ns: 1_794_000_000_000_000_000 + seq as i64,
        kind: ReadingKind::Weight,
        value,
        container_id: container.map(|c| ContainerId::parse(c).expect("a valid container id")),
        stage: None,
        waste_code: None,
        manifest_id: None,
    }
}

/// A note: an event without a dedupe key, so identical notes are each stored.
pub fn note(text: &str) -> Proposed {
    Proposed::new(Event::NoteFiled(NoteFiled {
        enterprise_id: EnterpriseId::parse("E-1").expect("a valid enterprise id"),
        container_id: None,
        author: "contract".into(),
        text: text.into(),
        filed_at_ns: 1_794_000_000_000_000_000,
    }))
}

/// An enterprise registration: deduplicated, but its conflicts keep no evidence.
pub fn enterprise(id: &str, name: &str) -> Proposed {
    Proposed::new(Event::EnterpriseRegistered(EnterpriseRegistered {
        id: EnterpriseId::parse(id).expect("a valid enterprise id"),
        name: name.into(),
        province_code: "440000".into(),
        city_code: "440100".into(),
        storage_capacity_mg: 1_000_000_000,
    }))
}

/// The dedupe key of `terminal`'s reading `seq`.
pub fn reading_key(terminal: &str, seq: u64) -> DedupeKey {
    dedupe_key_reading(
        &TerminalId::parse(terminal).expect("a valid terminal id"),
        seq,
    )
}

/// Randomness from a seed (splitmix64): deterministic, and distinct for distinct seeds.
pub struct SeededEntropy(Mutex<u64>);

impl SeededEntropy {
    pub fn new(seed: u64) -> Self {
        SeededEntropy(Mutex::new(seed))
    }
}

impl Entropy for SeededEntropy {
    fn fill(&self, buf: &mut [u8]) {
        let mut state = self.0.lock().expect("entropy lock");
        for chunk in buf.chunks_mut(8) {
            *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// A keyring of master key `[master; 16]` whose randomness comes from `seed`.
pub fn keyring(master: u8, seed: u64) -> Arc<Keyring> {
    Arc::new(Keyring::new(
        [master; 16],
        Arc::new(SeededEntropy::new(seed)),
    ))
}

// ----- helpers -----

fn appended(seq: u64) -> AppendOutcome {
    AppendOutcome::Appended { seq }
}

fn duplicate(seq: u64) -> AppendOutcome {
    AppendOutcome::Duplicate { seq }
}

fn conflict(original_seq: u64, evidence_seq: Option<u64>) -> AppendOutcome {
    AppendOutcome::Conflict {
        original_seq,
        evidence_seq,
    }
}

async fn append<L: EventLog + ?Sized>(
    check: &str,
    log: &L,
    batch: Vec<Proposed>,
) -> Vec<AppendOutcome> {
    let len = batch.len();
    let out = log
        .append(batch)
        .await
        .unwrap_or_else(|e| panic!("EventLog contract, {check}: an append failed: {e}"));
    assert_eq!(
        out.len(),
        len,
        "EventLog contract, {check}: an append of {len} events answered {} outcomes",
        out.len()
    );
    out
}

fn read_all<L: EventLog + ?Sized>(check: &str, log: &L) -> Vec<Envelope> {
    let events = log
        .read(1, usize::MAX)
        .unwrap_or_else(|e| panic!("EventLog contract, {check}: read failed: {e}"));
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=log.last_seq()).collect();
    assert_eq!(
        seqs, want,
        "EventLog contract, {check}: reading everything does not give sequences 1..=last_seq"
    );
    events
}

fn verify_ok<L: EventLog + ?Sized>(check: &str, log: &L) {
    let report = log
        .verify(&mut |_, _| {})
        .unwrap_or_else(|e| panic!("EventLog contract, {check}: verify failed: {e}"));
    assert!(
        report.is_ok(),
        "EventLog contract, {check}: verify reports problems on a healthy log: {report:?}"
    );
    assert_eq!(
        (report.records, report.last_seq),
        (log.last_seq(), log.last_seq()),
        "EventLog contract, {check}: verify's (records, last_seq)"
    );
}

/// Polls all `futures` together on this task until each has finished; their results in order.
async fn join_all<'a, T>(mut futures: Vec<BoxFuture<'a, T>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter()
        .map(|v| v.expect("every future finished"))
        .collect()
}

/// A small deterministic generator for the model check (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ----- the checks -----

/// Sequences are global, gapless and start at 1; appended events read back as proposed; empty and
/// out-of-range reads are empty.
pub async fn sequences_are_gapless_and_read_back<F: LogFactory>(f: &F) {
    const C: &str = "sequences_are_gapless_and_read_back";
    let log = f.open(None);
    assert_eq!(
        log.last_seq(),
        0,
        "EventLog contract, {C}: a new log's last_seq"
    );
    assert!(log.read(1, 10).unwrap().is_empty());
    assert!(log.read_raw(1, 10).unwrap().is_empty());
    assert_eq!(log.read_where(1, 10, &|_| true).unwrap(), (Vec::new(), 0));
    verify_ok(C, &*log);
    assert!(
        append(C, &*log, Vec::new()).await.is_empty(),
        "EventLog contract, {C}: an empty append"
    );
    assert_eq!(
        log.last_seq(),
        0,
        "EventLog contract, {C}: an empty append moved last_seq"
    );

    let batches = vec![
        vec![reading("T-1", 1, 10), reading("T-1", 2, 20)],
        // No dedupe key: identical notes are each stored.
        vec![note("same"), note("same")],
        vec![reading("T-2", 1, 10)],
    ];
    let mut proposed = Vec::new();
    let mut next = 1;
    for batch in batches {
        let n = batch.len() as u64;
        proposed.extend(batch.iter().cloned());
        let out = append(C, &*log, batch).await;
        let want: Vec<_> = (next..next + n).map(appended).collect();
        assert_eq!(out, want, "EventLog contract, {C}: outcomes of new events");
        next += n;
        assert_eq!(
            log.last_seq(),
            next - 1,
            "EventLog contract, {C}: last_seq once an append resolved"
        );
    }
    let events = read_all(C, &*log);
    for (e, p) in events.iter().zip(&proposed) {
        assert_eq!(
            (
                &e.event,
                &e.fingerprint,
                e.stream.as_str(),
                e.event_type.as_str()
            ),
            (
                &p.event,
                &p.fingerprint,
                p.event.stream().as_str(),
                p.event.event_type()
            ),
            "EventLog contract, {C}: event {} does not read back as proposed",
            e.seq
        );
        assert_eq!((&e.key_id, &e.caused_by), (&None, &None));
    }
    assert_eq!(events[4].stream, "terminal:T-2");
    assert_eq!(
        log.read(0, 100).unwrap(),
        events,
        "EventLog contract, {C}: reading from 0 reads from 1"
    );
    for (from, max) in [(3u64, 100usize), (2, 2), (5, 1), (1, 4)] {
        let got: Vec<u64> = log.read(from, max).unwrap().iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (from..=5).take(max).collect();
        assert_eq!(got, want, "EventLog contract, {C}: read({from}, {max})");
    }
    assert!(log.read(6, 100).unwrap().is_empty());
    assert!(log.read(1, 0).unwrap().is_empty());
    log.size_on_disk()
        .unwrap_or_else(|e| panic!("EventLog contract, {C}: size_on_disk failed: {e}"));
    verify_ok(C, &*log);
}

/// The sled log's own test, for every log: resends and conflicting resends within one batch and across
/// batches, evidence stored once per distinct conflicting content; conflicts of types without evidence.
pub async fn duplicates_and_conflicts_within_and_across_batches<F: LogFactory>(f: &F) {
    const C: &str = "duplicates_and_conflicts_within_and_across_batches";
    let log = f.open(None);
    let out = append(
        C,
        &*log,
        vec![
            reading("T-1", 1, 10),
            reading("T-1", 1, 10),
            reading("T-1", 1, 11),
            reading("T-1", 1, 11),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            appended(1),
            duplicate(1),
            conflict(1, Some(2)),
            conflict(1, Some(2))
        ],
        "EventLog contract, {C}: one batch"
    );
    let out = append(
        C,
        &*log,
        vec![
            reading("T-1", 1, 11),
            reading("T-1", 1, 12),
            reading("T-1", 1, 10),
            reading("T-1", 1, 12),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            conflict(1, Some(2)),
            conflict(1, Some(3)),
            duplicate(1),
            conflict(1, Some(3))
        ],
        "EventLog contract, {C}: a second batch"
    );
    let events = read_all(C, &*log);
    assert_eq!(events.len(), 3, "EventLog contract, {C}: events stored");
    for (e, value) in events[1..].iter().zip([11, 12]) {
        match &e.event {
            Event::ReadingConflicted(c) => {
                assert_eq!(
                    (c.original_event_seq, c.reading.value),
                    (1, value),
                    "EventLog contract, {C}: evidence {}",
                    e.seq
                );
                assert_eq!(e.stream, "terminal:T-1");
            }
            other => panic!(
                "EventLog contract, {C}: expected evidence at {}, got {other:?}",
                e.seq
            ),
        }
    }
    // A conflict of a type that keeps no evidence stores nothing.
    let out = append(
        C,
        &*log,
        vec![enterprise("E-1", "one"), enterprise("E-1", "other")],
    )
    .await;
    assert_eq!(out, vec![appended(4), conflict(4, None)]);
    let out = append(
        C,
        &*log,
        vec![enterprise("E-1", "other"), enterprise("E-1", "one")],
    )
    .await;
    assert_eq!(out, vec![conflict(4, None), duplicate(4)]);
    // A batch of nothing but resends stores nothing.
    let out = append(C, &*log, vec![reading("T-1", 1, 10), reading("T-1", 1, 12)]).await;
    assert_eq!(out, vec![duplicate(1), conflict(1, Some(3))]);
    assert_eq!(log.last_seq(), 4, "EventLog contract, {C}: last_seq");
    verify_ok(C, &*log);
}

/// Pseudo-random batches of new readings, resends and conflicting resends (over neighbouring dedupe slots
/// 62–66) against a model: the first content per (terminal, seq) wins, resends are duplicates of it, each
/// distinct conflicting content is stored once as evidence, and sequences stay gapless — across a reopen
/// halfway when the factory can reopen.
pub async fn dedupe_matches_the_model<F: LogFactory>(f: &F) {
    const C: &str = "dedupe_matches_the_model";
    for run in 0..6u64 {
        let mut rng = Rng(0x5EED_0000 + run * 7919 + 1);
        let mut log = f.open(None);
        let mut first: BTreeMap<(u64, u64), (u64, i64)> = BTreeMap::new();
        let mut evidence: BTreeMap<(u64, u64, i64), u64> = BTreeMap::new();
        let mut next = 1u64;
        let batches = 2 + rng.below(7);
        for b in 0..batches {
            if b == batches / 2 && f.can_reopen() {
                log = f.reopen(log, None);
            }
            let batch: Vec<(u64, u64, i64)> = (0..1 + rng.below(8))
                .map(|_| {
                    let s = if rng.below(2) == 0 {
                        1 + rng.below(5)
                    } else {
                        62 + rng.below(5)
                    };
                    (rng.below(3), s, rng.below(3) as i64)
                })
                .collect();
            let proposed: Vec<Proposed> = batch
                .iter()
                .map(|(t, s, v)| reading(&format!("T-{t}"), *s, *v))
                .collect();
            let order = f.filing_order(&proposed);
            let got = append(C, &*log, proposed).await;
            for i in order {
                let ((t, s, v), outcome) = (&batch[i], got[i]);
                let expected = match first.get(&(*t, *s)) {
                    None => {
                        first.insert((*t, *s), (next, *v));
                        next += 1;
                        appended(next - 1)
                    }
                    Some((seq, value)) if value == v => duplicate(*seq),
                    Some((seq, _)) => {
                        let ev = *evidence.entry((*t, *s, *v)).or_insert_with(|| {
                            next += 1;
                            next - 1
                        });
                        conflict(*seq, Some(ev))
                    }
                };
                assert_eq!(
                    outcome, expected,
                    "EventLog contract, {C}: run {run}, batch {b}, reading T-{t}/{s} = {v}"
                );
            }
        }
        assert_eq!(
            log.last_seq(),
            next - 1,
            "EventLog contract, {C}: run {run}"
        );
        assert_eq!(read_all(C, &*log).len() as u64, next - 1);
        verify_ok(C, &*log);
    }
}

/// `lookup` names the first event stored under a key, with its fingerprint, whatever came after; keys
/// never stored (also neighbours in the same dedupe block) are `None`.
pub async fn lookup_agrees_with_appends<F: LogFactory>(f: &F) {
    const C: &str = "lookup_agrees_with_appends";
    let log = f.open(None);
    let slots = [1u64, 63, 64, 127, 128, 1_000_000];
    let batch: Vec<Proposed> = slots.iter().map(|s| reading("T-1", *s, 7)).collect();
    let firsts = batch.clone();
    append(C, &*log, batch).await;
    append(C, &*log, vec![note("no key")]).await;
    // Conflicts and resends do not move what the index holds.
    let resends = slots
        .iter()
        .flat_map(|s| [reading("T-1", *s, 8), reading("T-1", *s, 7)])
        .collect();
    append(C, &*log, resends).await;
    append(
        C,
        &*log,
        vec![enterprise("E-1", "one"), enterprise("E-1", "two")],
    )
    .await;
    for (i, (s, p)) in slots.iter().zip(&firsts).enumerate() {
        assert_eq!(
            log.lookup(&reading_key("T-1", *s)).unwrap(),
            Some(DedupeEntry {
                seq: i as u64 + 1,
                fingerprint: p.fingerprint
            }),
            "EventLog contract, {C}: lookup of T-1/{s}"
        );
    }
    let e1 = log
        .lookup(&enterprise("E-1", "x").dedupe_key.unwrap())
        .unwrap();
    assert_eq!(
        e1.map(|e| (e.seq, e.fingerprint)),
        Some((log.last_seq(), enterprise("E-1", "one").fingerprint)),
        "EventLog contract, {C}: lookup of an enterprise"
    );
    for (t, s) in [
        ("T-1", 2u64),
        ("T-1", 62),
        ("T-1", 65),
        ("T-2", 1),
        ("T-1", 0),
    ] {
        assert_eq!(
            log.lookup(&reading_key(t, s)).unwrap(),
            None,
            "EventLog contract, {C}: lookup of {t}/{s}, never stored"
        );
    }
    // Every stored event with a key is what lookup names for it.
    for e in read_all(C, &*log) {
        if let Some(k) = e.event.dedupe_key() {
            assert_eq!(
                log.lookup(&k).unwrap(),
                Some(DedupeEntry {
                    seq: e.seq,
                    fingerprint: e.fingerprint
                }),
                "EventLog contract, {C}: lookup of the key of event {}",
                e.seq
            );
        }
    }
}

/// `read_raw` holds exactly the records `read` opens; `read_where` returns `read`'s events of the wanted
/// types and names the last record it scanned (0 when none), wanted or not.
pub async fn reads_agree_with_each_other<F: LogFactory>(f: &F) {
    const C: &str = "reads_agree_with_each_other";
    let log = f.open(None);
    for round in 0..5u64 {
        let mut batch: Vec<Proposed> = (1..=25)
            .map(|s| reading("T-1", round * 25 + s, s as i64))
            .collect();
        batch.push(note(&format!("round {round}")));
        batch.push(reading("T-1", round * 25 + 3, -1)); // a conflict: evidence
        append(C, &*log, batch).await;
    }
    let last = log.last_seq();
    assert_eq!(last, 5 * 27);
    type Want<'a> = &'a (dyn Fn(&str) -> bool + Sync);
    let filters: [(&str, Want); 3] = [
        ("everything", &|_| true),
        ("nothing", &|_| false),
        ("notes and evidence", &|t| {
            t == "NoteFiled" || t == "ReadingConflicted"
        }),
    ];
    for (from, max) in [
        (1u64, 1usize),
        (1, 10),
        (1, 1000),
        (0, 5),
        (26, 2),
        (27, 30),
        (last - 1, 5),
        (last, 1),
        (last + 1, 5),
        (5, 0),
    ] {
        let read = log.read(from, max).unwrap();
        let raw = log.read_raw(from, max).unwrap();
        let want: Vec<u64> = (from.max(1)..=last).take(max).collect();
        assert_eq!(
            read.iter().map(|e| e.seq).collect::<Vec<_>>(),
            want,
            "EventLog contract, {C}: read({from}, {max})"
        );
        assert_eq!(
            raw.iter().map(|r| r.0).collect::<Vec<_>>(),
            want,
            "EventLog contract, {C}: read_raw({from}, {max})"
        );
        for ((seq, record), e) in raw.iter().zip(&read) {
            let decoded = Envelope::decode(*seq, record, None).unwrap_or_else(|err| {
                panic!("EventLog contract, {C}: a raw record does not decode: {err}")
            });
            assert_eq!(
                &decoded, e,
                "EventLog contract, {C}: raw record {seq} is not what read gives"
            );
        }
        for (name, want_type) in filters {
            let (got, last_scanned) = log.read_where(from, max, want_type).unwrap();
            let expected: Vec<Envelope> = read
                .iter()
                .filter(|e| want_type(&e.event_type))
                .cloned()
                .collect();
            assert_eq!(
                got, expected,
                "EventLog contract, {C}: read_where({from}, {max}, {name})"
            );
            assert_eq!(
                last_scanned,
                read.last().map_or(0, |e| e.seq),
                "EventLog contract, {C}: the last record read_where({from}, {max}, {name}) scanned"
            );
        }
    }
}

/// Many appends of one reading in flight at once store it exactly once; the same holds for one
/// conflicting content (one piece of evidence), and sequences stay gapless.
pub async fn concurrent_resends_store_once<F: LogFactory>(f: &F) {
    const C: &str = "concurrent_resends_store_once";
    let log = f.open(None);
    let futures: Vec<_> = (0..64u64)
        .map(|i| {
            let mut batch = vec![reading("T-1", 7, 70)];
            if i % 2 == 1 {
                batch.push(reading("T-2", i, 1));
            }
            if i % 4 == 3 {
                batch.push(reading("T-1", 7, 71));
            }
            log.append(batch)
        })
        .collect();
    let outcomes: Vec<Vec<AppendOutcome>> = join_all(futures)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("EventLog contract, {C}: an append failed: {e}")))
        .collect();
    let first: Vec<AppendOutcome> = outcomes.iter().map(|o| o[0]).collect();
    let stored: Vec<u64> = first
        .iter()
        .filter_map(|o| match o {
            AppendOutcome::Appended { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "EventLog contract, {C}: the reading was appended by {} of 64 concurrent appends: {first:?}",
        stored.len()
    );
    let seq = stored[0];
    assert!(
        first
            .iter()
            .all(|o| *o == appended(seq) || *o == duplicate(seq)),
        "EventLog contract, {C}: {first:?}"
    );
    let conflicts: Vec<AppendOutcome> = outcomes
        .iter()
        .filter(|o| o.len() == 3)
        .map(|o| o[2])
        .collect();
    let evidence = match conflicts[0] {
        AppendOutcome::Conflict {
            original_seq,
            evidence_seq: Some(ev),
        } if original_seq == seq => ev,
        other => panic!("EventLog contract, {C}: a conflicting resend answered {other:?}"),
    };
    assert!(
        conflicts
            .iter()
            .all(|o| *o == conflict(seq, Some(evidence))),
        "EventLog contract, {C}: concurrent conflicting resends: {conflicts:?}"
    );
    // 1 reading, 32 other readings, 1 piece of evidence.
    assert_eq!(log.last_seq(), 34, "EventLog contract, {C}: events stored");
    let events = read_all(C, &*log);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "ReadingConflicted")
            .count(),
        1
    );
    verify_ok(C, &*log);
}

/// A subscriber sees the new last durable sequence once an append has resolved.
pub async fn subscribe_follows_the_last_seq<F: LogFactory>(f: &F) {
    const C: &str = "subscribe_follows_the_last_seq";
    let log = f.open(None);
    let mut rx = log.subscribe();
    assert_eq!(
        *rx.borrow_and_update(),
        0,
        "EventLog contract, {C}: a new log"
    );
    append(C, &*log, vec![reading("T-1", 1, 1), reading("T-1", 2, 1)]).await;
    assert!(
        rx.has_changed().unwrap(),
        "EventLog contract, {C}: no change seen after an append"
    );
    assert_eq!(*rx.borrow_and_update(), 2, "EventLog contract, {C}");
    append(C, &*log, vec![reading("T-1", 1, 1)]).await;
    assert_eq!(
        *rx.borrow_and_update(),
        2,
        "EventLog contract, {C}: a resend moved it"
    );
    append(C, &*log, vec![reading("T-1", 3, 1)]).await;
    assert_eq!(*rx.borrow_and_update(), 3, "EventLog contract, {C}");
    let late = log.subscribe();
    assert_eq!(
        *late.borrow(),
        log.last_seq(),
        "EventLog contract, {C}: a late subscriber"
    );
    // Waiting for a change that already happened returns at once.
    let mut rx2 = log.subscribe();
    rx2.borrow_and_update();
    append(C, &*log, vec![reading("T-1", 4, 1)]).await;
    rx2.changed().await.unwrap();
    assert_eq!(*rx2.borrow(), 4);
}

/// With a data key issued through the log, sealed readings and their conflict evidence rest sealed (no
/// plaintext in the raw record) and read back opened; a second issue of a key id is a conflict without
/// evidence. After a reopen with a fresh keyring of the same master key, the key is learnt from the log.
pub async fn sealed_payloads_read_back<F: LogFactory>(f: &F) {
    const C: &str = "sealed_payloads_read_back";
    let ring = keyring(1, 11);
    let log = f.open(Some(ring.clone()));
    let issued = Proposed::new(Event::DataKeyIssued(ring.issue("E-1", 1)));
    assert_eq!(
        append(C, &*log, vec![issued]).await,
        vec![appended(1)],
        "EventLog contract, {C}: issuing a data key"
    );
    let key = ring.current("E-1").unwrap_or_else(|| {
        panic!("EventLog contract, {C}: the data key is not installed once durable")
    });
    let again = Proposed::new(Event::DataKeyIssued(ring.issue("E-1", 1)));
    assert_eq!(
        append(C, &*log, vec![again]).await,
        vec![conflict(1, None)],
        "EventLog contract, {C}: a second issue of E-1/1"
    );
    let sealed = |s, v| sealed_reading("T-1", s, v, &ring, &key);
    let out = append(
        C,
        &*log,
        vec![
            sealed(1, 10),
            sealed(1, 11),
            sealed(1, 10),
            reading("T-1", 2, 20),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![appended(2), conflict(2, Some(3)), duplicate(2), appended(4)],
        "EventLog contract, {C}: sealed readings"
    );
    let check_events = |log: &F::Log, ring: &Keyring| {
        let events = read_all(C, log);
        assert_eq!(events.len(), 4);
        assert_eq!(
            events[0].key_id, None,
            "EventLog contract, {C}: data keys rest wrapped, not sealed"
        );
        assert_eq!(events[1].key_id.as_deref(), Some("E-1/1"));
        assert!(matches!(&events[1].event, Event::ReadingRecorded(r) if r.value == 10));
        assert_eq!(
            events[2].key_id.as_deref(),
            Some("E-1/1"),
            "EventLog contract, {C}: evidence is sealed like its attempt"
        );
        assert!(
            matches!(&events[2].event, Event::ReadingConflicted(c) if c.reading.value == 11 && c.original_event_seq == 2)
        );
        assert_eq!(events[3].key_id, None);
        let raw = log.read_raw(1, 10).unwrap();
        let marker = SEALED_MARKER.as_bytes();
        for (seq, record) in &raw {
            let holds = record.windows(marker.len()).any(|w| w == marker);
            assert!(
                !holds,
                "EventLog contract, {C}: raw record {seq} holds a sealed payload's plaintext"
            );
            assert_eq!(
                Envelope::decode(*seq, record, Some(ring)).unwrap(),
                events[*seq as usize - 1],
                "EventLog contract, {C}: raw record {seq} opens to something else than read gives"
            );
            assert!(
                Envelope::decode(*seq, record, None).is_err() == matches!(seq, 2 | 3),
                "EventLog contract, {C}: only the sealed records need the keyring (record {seq})"
            );
        }
        verify_ok(C, log);
        events
    };
    let before = check_events(&log, &ring);
    if !f.can_reopen() {
        return;
    }
    let fresh = keyring(1, 12);
    let log = f.reopen(log, Some(fresh.clone()));
    assert!(
        fresh.current("E-1").is_some(),
        "EventLog contract, {C}: a reopened log did not install its data key"
    );
    assert_eq!(
        check_events(&log, &fresh),
        before,
        "EventLog contract, {C}: after a reopen"
    );
    let key = fresh.current("E-1").unwrap();
    let sealed = |s, v| sealed_reading("T-1", s, v, &fresh, &key);
    assert_eq!(
        append(C, &*log, vec![sealed(1, 10), sealed(1, 11), sealed(3, 30)]).await,
        vec![duplicate(2), conflict(2, Some(3)), appended(5)],
        "EventLog contract, {C}: sealed resends after a reopen"
    );
    assert!(matches!(
        &log.read(5, 1).unwrap()[0],
        e if e.key_id.as_deref() == Some("E-1/1")
    ));
}

/// The token that caused an event is kept with it, plain or sealed; a resend under another token keeps
/// the first cause; evidence carries the cause of its attempt.
pub async fn caused_by_survives<F: LogFactory>(f: &F) {
    const C: &str = "caused_by_survives";
    let ring = keyring(2, 21);
    let log = f.open(Some(ring.clone()));
    append(
        C,
        &*log,
        vec![Proposed::new(Event::DataKeyIssued(ring.issue("E-1", 1))).caused_by("bootstrap")],
    )
    .await;
    let key = ring.current("E-1").expect("installed once durable");
    let token_a = "0123456789abcdef0123456789abcdef";
    let token_b = "fedcba9876543210fedcba9876543210";
    let sealed_by = |s, v, t: &str| {
        Proposed::new(Event::ReadingRecorded(reading_event(
            "T-1",
            s,
            v,
            Some(SEALED_MARKER),
        )))
        .caused_by(t)
        .sealed_with(&ring, &key)
    };
    let out = append(
        C,
        &*log,
        vec![
            reading("T-2", 1, 1).caused_by(token_a),
            reading("T-2", 1, 1).caused_by(token_b),
            reading("T-2", 1, 2).caused_by(token_b),
            reading("T-2", 2, 2),
            sealed_by(1, 1, token_a),
            sealed_by(1, 2, token_b),
            note("caused").caused_by(token_b),
        ],
    )
    .await;
    assert_eq!(
        out,
        vec![
            appended(2),
            duplicate(2),
            conflict(2, Some(3)),
            appended(4),
            appended(5),
            conflict(5, Some(6)),
            appended(7)
        ],
        "EventLog contract, {C}"
    );
    let check = |log: &F::Log| {
        let causes: Vec<Option<String>> =
            read_all(C, log).into_iter().map(|e| e.caused_by).collect();
        let want: Vec<Option<String>> = [
            Some("bootstrap"),
            Some(token_a),
            Some(token_b),
            None,
            Some(token_a),
            Some(token_b),
            Some(token_b),
        ]
        .into_iter()
        .map(|c| c.map(str::to_owned))
        .collect();
        assert_eq!(causes, want, "EventLog contract, {C}: the causes stored");
        verify_ok(C, log);
    };
    check(&log);
    if !f.can_reopen() {
        return;
    }
    let log = f.reopen(log, Some(keyring(2, 22)));
    check(&log);
}

/// Everything acknowledged survives a reopen — events byte for byte, lookups, duplicates and conflicts
/// answered as before with the same evidence — and the sequence goes on from the last one; twice over.
pub async fn acknowledged_appends_survive_a_reopen<F: LogFactory>(f: &F) {
    const C: &str = "acknowledged_appends_survive_a_reopen";
    let log = f.open(None);
    let mut sent: Vec<Proposed> = Vec::new();
    let mut outcomes: Vec<AppendOutcome> = Vec::new();
    for round in 0..4u64 {
        let mut batch: Vec<Proposed> = [1u64, 2, 63, 64, 65]
            .iter()
            .map(|s| reading(&format!("T-{}", round % 2), s + round * 100, 1))
            .collect();
        batch.push(reading(&format!("T-{}", round % 2), 2 + round * 100, 9));
        batch.push(note("n"));
        batch.push(enterprise(&format!("E-{round}"), "e"));
        sent.extend(batch.iter().cloned());
        outcomes.extend(append(C, &*log, batch).await);
    }
    if !f.can_reopen() {
        return;
    }
    let mut log = log;
    for restart in 1..=2u64 {
        let events = read_all(C, &*log);
        let raw = log.read_raw(1, usize::MAX).unwrap();
        log = f.reopen(log, None);
        let last = events.len() as u64;
        assert_eq!(
            log.last_seq(),
            last,
            "EventLog contract, {C}: last_seq after restart {restart}"
        );
        assert_eq!(
            *log.subscribe().borrow(),
            last,
            "EventLog contract, {C}: subscribe after restart {restart}"
        );
        assert_eq!(
            read_all(C, &*log),
            events,
            "EventLog contract, {C}: the events after restart {restart}"
        );
        assert_eq!(
            log.read_raw(1, usize::MAX).unwrap(),
            raw,
            "EventLog contract, {C}: the records after restart {restart}"
        );
        verify_ok(C, &*log);
        for e in &events {
            if let Some(k) = e.event.dedupe_key() {
                assert_eq!(
                    log.lookup(&k).unwrap(),
                    Some(DedupeEntry {
                        seq: e.seq,
                        fingerprint: e.fingerprint
                    }),
                    "EventLog contract, {C}: lookup of event {}'s key after restart {restart}",
                    e.seq
                );
            }
        }
        // Everything sent again: each keyed event is answered as the first time it was seen (a duplicate
        // of what it stored, or the same conflict with the same evidence); the notes, unkeyed, are new.
        let again = append(C, &*log, sent.clone()).await;
        let mut next = last + 1;
        for ((p, first), now) in sent.iter().zip(&outcomes).zip(&again) {
            let want = match (p.dedupe_key.is_some(), first) {
                (false, _) => {
                    next += 1;
                    appended(next - 1)
                }
                (true, AppendOutcome::Appended { seq }) => duplicate(*seq),
                (true, other) => *other,
            };
            assert_eq!(
                *now, want,
                "EventLog contract, {C}: a resend of {:?} after restart {restart}",
                p.event
            );
        }
        assert_eq!(
            append(C, &*log, vec![reading("T-9", restart, 1)]).await,
            vec![appended(next)],
            "EventLog contract, {C}: the first new event after restart {restart}"
        );
        assert_eq!(
            &read_all(C, &*log)[..events.len()],
            &events[..],
            "EventLog contract, {C}: appends after restart {restart} changed what was stored"
        );
    }
}

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use custodian_events::event::Event;
use custodian_events::ids::TerminalId;
use custodian_events::reading::{Reading, ReadingKind};

struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_ns(&self) -> i64 {
        self.0
    }
}

fn open(dir: &std::path::Path) -> SledLog {
    SledLog::open(
        SledLogConfig::new(dir.join("log")),
        Arc::new(FixedClock(1_795_000_000_000_000_000)),
        None,
    )
    .unwrap()
}

fn reading(terminal: &str, seq: u64, value: i64) -> Proposed {
    Proposed::new(Event::ReadingRecorded(Reading {
        terminal_id: TerminalId::parse(terminal).unwrap(),
        seq,
        measured_at_ns: 1_794_000_000_000_000_000 + seq as i64,
        kind: ReadingKind::Weight,
        value,
        container_id: None,
        stage: None,
        waste_code: None,
        manifest_id: None,
    }))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appends_get_gapless_sequences_and_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let rt = rt();
    let out = rt
        .block_on(log.append(vec![reading("T-1", 1, 10), reading("T-1", 2, 20)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Appended { seq: 1 },
            AppendOutcome::Appended { seq: 2 }
        ]
    );
    let out = rt
        .block_on(log.append(vec![reading("T-2", 1, 10)]))
        .unwrap();
    assert_eq!(out, vec![AppendOutcome::Appended { seq: 3 }]);
    assert_eq!(log.last_seq(), 3);
    let events = log.read(1, 100).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(events[2].stream, "terminal:T-2");
    assert_eq!(log.read(3, 100).unwrap().len(), 1);
    assert!(log.read(4, 100).unwrap().is_empty());
}

#[test]
fn duplicates_and_conflicts_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let rt = rt();
    let out = rt
        .block_on(log.append(vec![
            reading("T-1", 1, 10),
            reading("T-1", 1, 10),
            reading("T-1", 1, 11),
            reading("T-1", 1, 11),
        ]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Appended { seq: 1 },
            AppendOutcome::Duplicate { seq: 1 },
            AppendOutcome::Conflict {
                original_seq: 1,
                evidence_seq: Some(2)
            },
            AppendOutcome::Conflict {
                original_seq: 1,
                evidence_seq: Some(2)
            },
        ]
    );
    let out = rt
        .block_on(log.append(vec![
            reading("T-1", 1, 11),
            reading("T-1", 1, 12),
            reading("T-1", 1, 10),
        ]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Conflict {
                original_seq: 1,
                evidence_seq: Some(2)
            },
            AppendOutcome::Conflict {
                original_seq: 1,
                evidence_seq: Some(3)
            },
            AppendOutcome::Duplicate { seq: 1 },
        ]
    );
    let events = log.read(1, 10).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].event_type, "ReadingConflicted");
    match &events[2].event {
        Event::ReadingConflicted(c) => {
            assert_eq!(c.original_event_seq, 1);
            assert_eq!(c.reading.value, 12);
        }
        other => panic!("expected evidence, got {other:?}"),
    }
}

#[test]
fn dedupe_and_sequence_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let log = open(dir.path());
        rt.block_on(log.append(vec![reading("T-1", 1, 10), reading("T-1", 2, 20)]))
            .unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.last_seq(), 2);
    let out = rt
        .block_on(log.append(vec![reading("T-1", 2, 20), reading("T-1", 3, 30)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Duplicate { seq: 2 },
            AppendOutcome::Appended { seq: 3 }
        ]
    );
    assert_eq!(
        log.lookup(&custodian_events::event::dedupe_key_reading(
            &TerminalId::parse("T-1").unwrap(),
            3
        ))
        .unwrap()
        .map(|e| e.seq),
        Some(3)
    );
    // Sequences 63 and 64 of one terminal sit in different dedupe blocks; both dedupe.
    let out = rt
        .block_on(log.append(vec![reading("T-1", 63, 1), reading("T-1", 64, 1)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Appended { seq: 4 },
            AppendOutcome::Appended { seq: 5 }
        ]
    );
    drop(log);
    let log = open(dir.path());
    let out = rt
        .block_on(log.append(vec![reading("T-1", 64, 1), reading("T-1", 63, 1)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Duplicate { seq: 5 },
            AppendOutcome::Duplicate { seq: 4 }
        ]
    );
}

#[test]
fn concurrent_resends_of_one_reading_append_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path()));
    let rt = rt();
    let outcomes = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(vec![reading("T-1", 7, 70)]).await.unwrap()[0]
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let appended = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Appended { .. }))
        .count();
    assert_eq!(appended, 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(
        o,
        AppendOutcome::Appended { seq: 1 } | AppendOutcome::Duplicate { seq: 1 }
    )));
    assert_eq!(log.last_seq(), 1);
}

#[test]
fn a_flipped_bit_on_disk_is_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let log = open(dir.path());
        rt.block_on(log.append(vec![reading("T-1", 1, 10), reading("T-1", 2, 20)]))
            .unwrap();
    }
    {
        // Both events share the segment at key 1; flip a bit in the middle of the second record.
        let db = open_sled(sled::Config::new().path(dir.path().join("log"))).unwrap();
        let mut v = db.get(event_key(1)).unwrap().unwrap().to_vec();
        let second_len = segment_records(1, &v).unwrap()[1].len();
        let mid = v.len() - second_len / 2;
        v[mid] ^= 0x04;
        db.insert(event_key(1), v).unwrap();
        db.flush().unwrap();
    }
    let log = open(dir.path());
    assert_eq!(log.read(1, 1).unwrap().len(), 1);
    match log.read(1, 10) {
        Err(EventLogError::Corrupt(c)) => assert_eq!(c.seq, 2),
        other => panic!("expected a corrupt record, got {other:?}"),
    }
    let report = log.verify(&mut |_, _| {}).unwrap();
    assert_eq!(report.records, 2);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].seq, 2);
    assert!(!report.is_ok());
}

#[test]
fn broken_segment_framing_is_reported_and_a_corrupt_index_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let log = open(dir.path());
        rt.block_on(log.append(vec![reading("T-1", 1, 10), reading("T-1", 2, 20)]))
            .unwrap();
        rt.block_on(log.append(vec![reading("T-1", 3, 30)]))
            .unwrap();
    }
    {
        let db = open_sled(sled::Config::new().path(dir.path().join("log"))).unwrap();
        let mut v = db.get(event_key(1)).unwrap().unwrap().to_vec();
        v[1] = 9; // the segment now claims nine records
        db.insert(event_key(1), v).unwrap();
        let key =
            custodian_events::event::dedupe_key_reading(&TerminalId::parse("T-1").unwrap(), 3);
        let index = Index { keyring: None };
        let mut b = db.get(index.block_key(&key)).unwrap().unwrap().to_vec();
        b[6] ^= 1;
        db.insert(index.block_key(&key), b).unwrap();
        db.flush().unwrap();
    }
    let log = open(dir.path());
    assert!(matches!(log.read(1, 10), Err(EventLogError::Corrupt(c)) if c.seq == 1));
    assert_eq!(log.read(3, 10).unwrap().len(), 1);
    let report = log.verify(&mut |_, _| {}).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert!(report.gaps.is_empty(), "{report:?}");
    let err = rt
        .block_on(log.append(vec![reading("T-1", 4, 40)]))
        .unwrap_err();
    assert!(matches!(err, EventLogError::IndexCorrupt(_)), "{err:?}");
}

#[test]
fn segments_hold_at_most_their_limit_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let rt = rt();
    let n = SEGMENT_EVENTS_MAX as u64 * 3 + 5;
    let batch: Vec<Proposed> = (1..=n).map(|s| reading("T-1", s, s as i64)).collect();
    rt.block_on(log.append(batch)).unwrap();
    let db = &log.db;
    let segments: Vec<u64> = db
        .scan_prefix([PREFIX_EVENT])
        .map(|kv| seq_from_event_key(&kv.unwrap().0))
        .collect();
    assert_eq!(segments, vec![1, 65, 129, 193]);
    for from in [1, 2, 64, 65, 66, 190, n] {
        let got = log.read(from, 70).unwrap();
        let want: Vec<u64> = (from..=n).take(70).collect();
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            want,
            "from {from}"
        );
    }
    let report = log.verify(&mut |_, _| {}).unwrap();
    assert_eq!(
        (report.records, report.last_seq, report.is_ok()),
        (n, n, true)
    );
    drop(log);
    assert_eq!(open(dir.path()).last_seq(), n);
}

#[test]
fn a_full_queue_refuses_at_once_and_stores_nothing_of_the_refused_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SledLogConfig::new(dir.path().join("log"));
    config.queue_requests_max = 2;
    let (log, writer, rx) = SledLog::open_paused(config, Arc::new(FixedClock(1)), None).unwrap();
    let log_ref = &log;
    let rt = rt();
    let (first, second, refused) = rt.block_on(async {
        // Two appends wait in the queue (the writer is not running yet); the third finds it full.
        let first = log_ref.append(vec![reading("T-1", 1, 1)]);
        let second = log_ref.append(vec![reading("T-1", 2, 1)]);
        let mut first = Box::pin(first);
        let mut second = Box::pin(second);
        assert!(futures_poll_once(&mut first).await.is_none());
        assert!(futures_poll_once(&mut second).await.is_none());
        let refused = log_ref.append(vec![reading("T-1", 3, 1)]).await;
        (first, second, refused)
    });
    assert!(
        matches!(refused, Err(EventLogError::Overloaded { queue_max: 2 })),
        "{refused:?}"
    );
    log.start_writer(writer, rx);
    let (a, b) = rt.block_on(async { (first.await.unwrap(), second.await.unwrap()) });
    assert_eq!(a, vec![AppendOutcome::Appended { seq: 1 }]);
    assert_eq!(b, vec![AppendOutcome::Appended { seq: 2 }]);
    // The refused reading was never stored: sent again, it is new.
    assert_eq!(
        rt.block_on(log.append(vec![reading("T-1", 3, 1)])).unwrap(),
        vec![AppendOutcome::Appended { seq: 3 }]
    );
}

/// Polls a future once; `Some` if it finished.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[test]
fn an_oversized_batch_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SledLogConfig::new(dir.path().join("log"));
    config.batch_events_max = 2;
    let log = SledLog::open(config, Arc::new(FixedClock(0)), None).unwrap();
    let err = rt()
        .block_on(log.append(vec![
            reading("T-1", 1, 1),
            reading("T-1", 2, 1),
            reading("T-1", 3, 1),
        ]))
        .unwrap_err();
    assert!(matches!(
        err,
        EventLogError::BatchTooLarge { len: 3, max: 2 }
    ));
    assert_eq!(log.last_seq(), 0);
}

fn open_sealed(dir: &std::path::Path, master: u8) -> Result<SledLog, EventLogError> {
    SledLog::open(
        SledLogConfig::new(dir.join("log")),
        Arc::new(FixedClock(1)),
        Some(Arc::new(Keyring::new(
            [master; 16],
            Arc::new(custodian_events::crypto::OsEntropy),
        ))),
    )
}

#[test]
fn sealed_events_read_back_after_a_restart_and_only_with_the_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let log = open_sealed(dir.path(), 1).unwrap();
        let ring = log.keyring.clone().unwrap();
        let issued = Proposed::new(Event::DataKeyIssued(ring.issue("E-1", 1)));
        assert_eq!(
            rt.block_on(log.append(vec![issued.clone()])).unwrap(),
            vec![AppendOutcome::Appended { seq: 1 }]
        );
        let key = ring.current("E-1").expect("installed once durable");
        // A second issue of the same generation is a conflict and is not installed.
        let again = Proposed::new(Event::DataKeyIssued(ring.issue("E-1", 1)));
        assert!(matches!(
            rt.block_on(log.append(vec![again])).unwrap()[0],
            AppendOutcome::Conflict { .. }
        ));
        let sealed = |s, v| reading("T-1", s, v).sealed_with(&ring, &key);
        let out = rt
            .block_on(log.append(vec![sealed(1, 10), sealed(1, 11)]))
            .unwrap();
        assert_eq!(
            out,
            vec![
                AppendOutcome::Appended { seq: 2 },
                AppendOutcome::Conflict {
                    original_seq: 2,
                    evidence_seq: Some(3)
                }
            ]
        );
        let events = log.read(1, 10).unwrap();
        assert_eq!(events[1].key_id.as_deref(), Some("E-1/1"));
        assert_eq!(
            events[2].key_id.as_deref(),
            Some("E-1/1"),
            "evidence is sealed too"
        );
        assert_eq!(events[0].key_id, None, "data keys rest wrapped, not sealed");
    }
    let log = open_sealed(dir.path(), 1).unwrap();
    let events = log.read(1, 10).unwrap();
    assert_eq!(events.len(), 3);
    assert!(matches!(&events[1].event, Event::ReadingRecorded(r) if r.value == 10));
    assert!(log.verify(&mut |_, _| {}).unwrap().is_ok());
    drop(log);
    match open_sealed(dir.path(), 2) {
        Err(EventLogError::Keyring(KeyringError::MasterKeyMismatch { key_id })) => {
            assert_eq!(key_id, "E-1/1")
        }
        Err(other) => panic!("expected master_key_mismatch, got {other}"),
        Ok(_) => panic!("expected master_key_mismatch, the log opened"),
    }
    assert!(SledLog::holds_data_keys(&dir.path().join("log")).unwrap());
    assert!(
        SledLog::open(
            SledLogConfig::new(dir.path().join("log")),
            Arc::new(FixedClock(1)),
            None
        )
        .is_err()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever mix of new readings, resends and conflicting resends arrives, in whatever batches, the log
    /// matches a simple model: the first fingerprint per (terminal, seq) wins, resends are duplicates of it,
    /// each distinct conflicting content is stored once as evidence, and sequences stay gapless.
    #[test]
    fn the_log_matches_the_dedupe_model(
        batches in proptest::collection::vec(
            proptest::collection::vec((0u8..3, prop_oneof![1u64..6, 62u64..67], 0i64..3), 1..8), 1..8)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let rt = rt();
        let mut first: BTreeMap<(u8, u64), (u64, i64)> = BTreeMap::new();
        let mut evidence: BTreeMap<(u8, u64, i64), u64> = BTreeMap::new();
        let mut next = 1u64;
        for batch in batches {
            let proposed: Vec<Proposed> = batch
                .iter()
                .map(|(t, s, v)| reading(&format!("T-{t}"), *s, *v))
                .collect();
            let got = rt.block_on(log.append(proposed)).unwrap();
            for ((t, s, v), outcome) in batch.iter().zip(got) {
                let expected = match first.get(&(*t, *s)) {
                    None => {
                        first.insert((*t, *s), (next, *v));
                        next += 1;
                        AppendOutcome::Appended { seq: next - 1 }
                    }
                    Some((seq, value)) if value == v => AppendOutcome::Duplicate { seq: *seq },
                    Some((seq, _)) => {
                        let ev = *evidence.entry((*t, *s, *v)).or_insert_with(|| {
                            next += 1;
                            next - 1
                        });
                        AppendOutcome::Conflict { original_seq: *seq, evidence_seq: Some(ev) }
                    }
                };
                prop_assert_eq!(outcome, expected);
            }
        }
        let events = log.read(1, 10_000).unwrap();
        prop_assert_eq!(events.len() as u64, next - 1);
        for (i, e) in events.iter().enumerate() {
            prop_assert_eq!(e.seq, i as u64 + 1);
        }
        let report = log.verify(&mut |_, _| {}).unwrap();
        prop_assert!(report.is_ok());
    }
}

#[test]
fn an_exported_log_imports_record_for_record_and_deduplicates_as_before() {
    use crate::export::{ExportHeader, ExportReader, Exporter};
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let source = open_sealed(dir.path(), 1).unwrap();
    let ring = source.keyring.clone().unwrap();
    rt.block_on(source.append(vec![Proposed::new(Event::DataKeyIssued(
        ring.issue("E-1", 1),
    ))]))
    .unwrap();
    let key = ring.current("E-1").unwrap();
    let sealed = |t: &str, s, v| reading(t, s, v).sealed_with(&ring, &key);
    // 300 readings over three terminals (several segments and dedupe blocks), a duplicate, a conflict with
    // its evidence, a plain event with a cause.
    for round in 0..3u64 {
        let batch = (1..=100)
            .map(|i| sealed(&format!("T-{round}"), i, i as i64))
            .collect();
        rt.block_on(source.append(batch)).unwrap();
    }
    let outcomes = rt
        .block_on(source.append(vec![sealed("T-0", 5, 5), sealed("T-0", 6, 999)]))
        .unwrap();
    assert!(matches!(outcomes[0], AppendOutcome::Duplicate { .. }));
    let AppendOutcome::Conflict {
        evidence_seq: Some(evidence),
        ..
    } = outcomes[1]
    else {
        panic!("{outcomes:?}")
    };
    rt.block_on(source.append(vec![
        reading("T-9", 1, 1).caused_by("0123456789abcdef0123456789abcdef"),
    ]))
    .unwrap();

    // Export, the way the node streams it.
    let (mut ex, mut bytes) = Exporter::start(&ExportHeader::new(
        source.last_seq(),
        None,
        "2026-11-26T00:00:00Z".into(),
    ));
    let mut from = 1;
    loop {
        let chunk = source.read_raw(from, 50).unwrap();
        let Some(last) = chunk.last().map(|r| r.0) else {
            break;
        };
        for (seq, r) in &chunk {
            ex.record(*seq, r, &mut bytes);
        }
        from = last + 1;
    }
    bytes.extend(ex.finish());

    // Import needs the master key for the sealed payloads.
    let without = SledLog::import(
        SledLogConfig::new(dir.path().join("nokey")),
        Arc::new(FixedClock(2)),
        None,
        &mut ExportReader::open(bytes.as_slice()).unwrap(),
        &mut |_| {},
    );
    assert!(without.is_err());
    let mut seen = 0;
    let copy = SledLog::import(
        SledLogConfig::new(dir.path().join("copy")),
        Arc::new(FixedClock(2)),
        Some(Arc::new(Keyring::new(
            [1; 16],
            Arc::new(custodian_events::crypto::OsEntropy),
        ))),
        &mut ExportReader::open(bytes.as_slice()).unwrap(),
        &mut |s| seen = s,
    )
    .unwrap();
    assert_eq!(seen, source.last_seq());
    assert_eq!(copy.last_seq(), source.last_seq());
    let (a, b) = (
        source.read(1, 10_000).unwrap(),
        copy.read(1, 10_000).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(
        b.last().unwrap().caused_by.as_deref(),
        Some("0123456789abcdef0123456789abcdef")
    );
    for e in &a {
        if let Some(k) = e.event.dedupe_key() {
            assert_eq!(source.lookup(&k).unwrap(), copy.lookup(&k).unwrap());
        }
    }
    // The copy answers resends exactly as the source did, and appends after its last record.
    let copy_ring = copy.keyring.clone().unwrap();
    let copy_key = copy_ring.current("E-1").unwrap();
    let again = |s, v| reading("T-0", s, v).sealed_with(&copy_ring, &copy_key);
    let out = rt
        .block_on(copy.append(vec![again(5, 5), again(6, 999), again(101, 1)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Duplicate { seq: 6 },
            AppendOutcome::Conflict {
                original_seq: 7,
                evidence_seq: Some(evidence)
            },
            AppendOutcome::Appended {
                seq: source.last_seq() + 1
            },
        ]
    );
    // Importing into a directory that holds a log is refused.
    drop(copy);
    let err = SledLog::import(
        SledLogConfig::new(dir.path().join("copy")),
        Arc::new(FixedClock(2)),
        None,
        &mut std::iter::empty(),
        &mut |_| {},
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("already holds a log"), "{err}");
}

/// Fresh sled logs in one temporary directory; reopening drops the log (its writer finishes and flushes)
/// and opens the same folder again.
struct SledFactory {
    dir: tempfile::TempDir,
    opened: std::sync::atomic::AtomicUsize,
}

impl crate::contract::LogFactory for SledFactory {
    type Log = SledLog;

    fn open(&self, keyring: Option<Arc<Keyring>>) -> Arc<SledLog> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let config = SledLogConfig::new(self.dir.path().join(format!("log-{n}")));
        Arc::new(
            SledLog::open(
                config,
                Arc::new(FixedClock(1_795_000_000_000_000_000)),
                keyring,
            )
            .unwrap(),
        )
    }

    fn can_reopen(&self) -> bool {
        true
    }

    fn reopen(&self, log: Arc<SledLog>, keyring: Option<Arc<Keyring>>) -> Arc<SledLog> {
        let config = log.config().clone();
        drop(Arc::into_inner(log).expect("the contract holds the only reference when it reopens"));
        Arc::new(
            SledLog::open(
                config,
                Arc::new(FixedClock(1_795_000_000_000_000_001)),
                keyring,
            )
            .unwrap(),
        )
    }
}

#[test]
fn the_event_log_contract_holds_for_sled() {
    let factory = SledFactory {
        dir: tempfile::tempdir().unwrap(),
        opened: std::sync::atomic::AtomicUsize::new(0),
    };
    rt().block_on(crate::contract::check_all(&factory));
}

#[test]
fn replicated_records_are_filed_indexed_and_never_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let rt = rt();
    let rec = |t: &str, s: u64, v: i64| reading(t, s, v).into_record(0, 5);
    assert_eq!(log.replicated_position().unwrap(), 0);
    let first = rt
        .block_on(log.apply_replicated(vec![rec("T-1", 1, 1), rec("T-2", 1, 1)], 10))
        .unwrap();
    assert_eq!(first, 1);
    let first = rt
        .block_on(log.apply_replicated(vec![rec("T-1", 2, 1)], 12))
        .unwrap();
    assert_eq!(first, 3);
    assert_eq!(log.last_seq(), 3);
    assert_eq!(log.replicated_position().unwrap(), 12);
    let got = log
        .lookup(&reading("T-1", 2, 1).dedupe_key.unwrap())
        .unwrap();
    assert_eq!(got.map(|e| e.seq), Some(3));
    // The same identity again is refused as corrupt, and nothing of that call is filed.
    let again = rt.block_on(log.apply_replicated(vec![rec("T-3", 1, 1), rec("T-1", 1, 9)], 13));
    assert!(matches!(again, Err(EventLogError::Corrupt(_))), "{again:?}");
    assert_eq!(log.last_seq(), 3);
    assert_eq!(log.replicated_position().unwrap(), 12);
    assert!(log.verify(&mut |_, _| {}).unwrap().is_ok());
    // An append after replicated records continues the sequence and sees their identities.
    let out = rt
        .block_on(log.append(vec![reading("T-1", 1, 1), reading("T-9", 1, 1)]))
        .unwrap();
    assert_eq!(
        out,
        vec![
            AppendOutcome::Duplicate { seq: 1 },
            AppendOutcome::Appended { seq: 4 }
        ]
    );
}

//! The simulated log keeps the event-log contract, and its crash model keeps its promises: what was
//! acknowledged survives a crash, what was not vanishes (a resend of it is new), a torn write never reaches
//! a reader, and sequences stay gapless across recoveries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use custodian_events::Clock;
use custodian_events::event::Event;
use custodian_events::keyring::Keyring;
use custodian_log::contract::{self, LogFactory, keyring, note, reading, reading_key};
use custodian_log::{AppendOutcome, BoxFuture, EventLog, EventLogError, Proposed};
use custodian_simulations::{MemLog, MemLogConfig, SyncMode, TornWrite};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_ns(&self) -> i64 {
        self.0
    }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(FixedClock(1_795_000_000_000_000_000))
}

struct MemFactory;

impl LogFactory for MemFactory {
    type Log = MemLog;

    fn open(&self, keyring: Option<Arc<Keyring>>) -> Arc<MemLog> {
        Arc::new(MemLog::new(clock(), keyring, MemLogConfig::default()))
    }

    fn can_reopen(&self) -> bool {
        true
    }

    fn reopen(&self, log: Arc<MemLog>, keyring: Option<Arc<Keyring>>) -> Arc<MemLog> {
        log.recover_with(keyring).expect("recovering the log");
        log
    }
}

#[tokio::test]
async fn the_event_log_contract_holds_for_memlog() {
    contract::check_all(&MemFactory).await;
}

fn on_demand() -> MemLog {
    MemLog::new(
        clock(),
        None,
        MemLogConfig {
            sync: SyncMode::OnDemand,
            ..MemLogConfig::default()
        },
    )
}

/// Polls `f` once; `Some` if it finished.
fn poll_once<T>(f: &mut BoxFuture<'_, T>) -> Option<T> {
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

fn appended(seq: u64) -> AppendOutcome {
    AppendOutcome::Appended { seq }
}

#[test]
fn acknowledged_appends_survive_a_crash_and_unacknowledged_ones_vanish() {
    let log = on_demand();
    let mut a = log.append(vec![reading("T-1", 1, 10), reading("T-1", 2, 20)]);
    assert!(poll_once(&mut a).is_none(), "answered before a sync");
    assert_eq!(log.last_seq(), 0);
    assert!(
        log.read(1, 10).unwrap().is_empty(),
        "unsynced events are read"
    );
    let synced = log.sync();
    assert_eq!((synced.appends, synced.records), (1, 2));
    assert_eq!(
        poll_once(&mut a).unwrap().unwrap(),
        vec![appended(1), appended(2)]
    );
    assert_eq!(log.commits_total(), 1);

    // Not synced: a new reading, a conflict with evidence, a resend of an acknowledged one.
    let mut b = log.append(vec![
        reading("T-1", 3, 30),
        reading("T-1", 1, 11),
        reading("T-1", 2, 20),
    ]);
    assert!(poll_once(&mut b).is_none());
    // The index runs ahead of durability, as the sled log's may.
    assert_eq!(
        log.lookup(&reading_key("T-1", 3)).unwrap().map(|e| e.seq),
        Some(3)
    );
    // A resend of something unsynced waits for the sync too: a duplicate never vouches for what may be lost.
    let mut c = log.append(vec![reading("T-1", 3, 30)]);
    assert!(poll_once(&mut c).is_none());
    assert_eq!(log.waiting_appends(), 2);
    assert_eq!(log.unsynced_records(), 2);

    let crash = log.crash(TornWrite::Nothing);
    assert_eq!(
        (crash.appends_failed, crash.records_lost, crash.torn_bytes),
        (2, 2, 0)
    );
    assert!(matches!(
        poll_once(&mut b),
        Some(Err(EventLogError::Crashed))
    ));
    assert!(matches!(
        poll_once(&mut c),
        Some(Err(EventLogError::Crashed))
    ));
    assert!(!log.is_up());
    // Down: nothing is served, but the disk can be checked.
    assert!(matches!(log.read(1, 10), Err(EventLogError::Crashed)));
    assert!(matches!(log.read_raw(1, 10), Err(EventLogError::Crashed)));
    assert!(matches!(
        log.lookup(&reading_key("T-1", 1)),
        Err(EventLogError::Crashed)
    ));
    let mut refused = log.append(vec![reading("T-1", 9, 9)]);
    assert!(matches!(
        poll_once(&mut refused),
        Some(Err(EventLogError::Crashed))
    ));
    assert_eq!(log.last_seq(), 2);
    assert!(log.verify(&mut |_, _| {}).unwrap().is_ok());
    assert_eq!(log.sync().appends, 0, "a sync while down");

    let recovery = log.recover().unwrap();
    assert_eq!((recovery.last_seq, recovery.truncated_bytes), (2, 0));
    assert_eq!(log.lookup(&reading_key("T-1", 3)).unwrap(), None);
    let events = log.read(1, 10).unwrap();
    assert_eq!(events.len(), 2);
    // The lost batch, sent again: new (not duplicates), its evidence stored again, sequences gapless.
    let mut again = log.append(vec![
        reading("T-1", 3, 30),
        reading("T-1", 1, 11),
        reading("T-1", 2, 20),
    ]);
    log.sync();
    assert_eq!(
        poll_once(&mut again).unwrap().unwrap(),
        vec![
            appended(3),
            AppendOutcome::Conflict {
                original_seq: 1,
                evidence_seq: Some(4)
            },
            AppendOutcome::Duplicate { seq: 2 },
        ]
    );
    let seqs: Vec<u64> = log.read(1, 10).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(log.verify(&mut |_, _| {}).unwrap().is_ok());
}

#[test]
fn subscribers_and_readers_see_only_synced_events() {
    let log = on_demand();
    let mut rx = log.subscribe();
    let mut a = log.append(vec![reading("T-1", 1, 1)]);
    let mut b = log.append(vec![note("x"), note("x")]);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(log.last_seq(), 0);
    log.sync();
    assert_eq!(*rx.borrow_and_update(), 3);
    assert_eq!(poll_once(&mut a).unwrap().unwrap(), vec![appended(1)]);
    assert_eq!(
        poll_once(&mut b).unwrap().unwrap(),
        vec![appended(2), appended(3)]
    );
    let mut c = log.append(vec![reading("T-1", 2, 1)]);
    log.crash(TornWrite::Nothing);
    assert!(matches!(
        poll_once(&mut c),
        Some(Err(EventLogError::Crashed))
    ));
    log.recover().unwrap();
    assert_eq!(*rx.borrow_and_update(), 3);
    assert_eq!(log.read(1, 10).unwrap().len(), 3);
}

#[test]
fn a_clean_restart_syncs_what_is_waiting() {
    let log = on_demand();
    let mut a = log.append(vec![reading("T-1", 1, 1)]);
    let recovery = log.recover().unwrap();
    assert_eq!(recovery.last_seq, 1);
    assert_eq!(poll_once(&mut a).unwrap().unwrap(), vec![appended(1)]);
    // A crash of a log that is already down changes nothing.
    log.crash(TornWrite::Nothing);
    let again = log.crash(TornWrite::Prefix { bytes: 100 });
    assert_eq!((again.appends_failed, again.torn_bytes), (0, 0));
    log.recover().unwrap();
    assert_eq!(log.last_seq(), 1);
}

/// The bytes `records` take on the disk, as frames.
fn frames_len(records: &[(u64, Vec<u8>)]) -> Vec<usize> {
    records.iter().map(|(_, r)| 4 + r.len()).collect()
}

#[test]
fn a_torn_write_never_yields_a_partial_event_and_recovery_truncates_it() {
    // How long the unsynced tail's frames are: the same three records as below, synced on a scratch log.
    let tail = || vec![reading("T-1", 3, 30), note("tail"), reading("T-1", 1, 99)];
    let head = || vec![reading("T-1", 1, 10), reading("T-1", 2, 20)];
    let scratch = MemLog::new(clock(), None, MemLogConfig::default());
    futures_ready(scratch.append(head())).unwrap();
    futures_ready(scratch.append(tail())).unwrap();
    let frames = frames_len(&scratch.read_raw(3, 10).unwrap());
    let total: usize = frames.iter().sum();
    // Every boundary of a frame, a byte either side of it, and a stride through the rest.
    let mut cuts: Vec<usize> = (0..=total).step_by(17).collect();
    let mut at = 0;
    for len in &frames {
        for d in [0, 1, 2, 3, 4, 5] {
            cuts.push(at + d);
        }
        at += len;
        cuts.extend([at - 1, at, at + 1]);
    }
    cuts.retain(|c| *c <= total + 10);
    cuts.sort_unstable();
    cuts.dedup();

    for cut in cuts {
        let log = on_demand();
        let mut h = log.append(head());
        log.sync();
        assert!(poll_once(&mut h).unwrap().is_ok());
        let durable = log.read(1, 10).unwrap();
        let durable_size = log.size_on_disk().unwrap() as usize;
        let mut t = log.append(tail());
        assert_eq!(log.size_on_disk().unwrap() as usize, durable_size);
        let crash = log.crash(TornWrite::Prefix { bytes: cut });
        assert_eq!(crash.torn_bytes, cut.min(total), "cut {cut}");
        assert!(matches!(
            poll_once(&mut t),
            Some(Err(EventLogError::Crashed))
        ));

        // verify reports what lies past the commit point, record by record, and nothing else.
        let report = log.verify(&mut |_, _| {}).unwrap();
        let mut expected_corrupt = Vec::new();
        let mut acc = 0;
        for (i, len) in frames.iter().enumerate() {
            if acc >= cut.min(total) {
                break;
            }
            expected_corrupt.push(3 + i as u64);
            acc += len;
        }
        let corrupt: Vec<u64> = report.corrupt.iter().map(|c| c.seq).collect();
        assert_eq!(corrupt, expected_corrupt, "cut {cut}: {report:?}");
        assert_eq!(report.is_ok(), cut == 0, "cut {cut}");
        assert_eq!(report.records, 2 + expected_corrupt.len() as u64);
        if cut > 0 && !frames_end_at(&frames, cut.min(total)) {
            let torn = report.corrupt.last().unwrap();
            assert!(torn.reason.contains("torn write"), "cut {cut}: {torn:?}");
        }
        assert_eq!(log.last_seq(), 2);
        assert_eq!(
            log.size_on_disk().unwrap() as usize,
            durable_size + cut.min(total)
        );

        let recovery = log.recover().unwrap();
        assert_eq!(
            (recovery.last_seq, recovery.truncated_bytes),
            (2, cut.min(total)),
            "cut {cut}"
        );
        assert!(log.verify(&mut |_, _| {}).unwrap().is_ok(), "cut {cut}");
        assert_eq!(log.read(1, 10).unwrap(), durable, "cut {cut}");
        // The tail, sent again, is new: gapless from 3, the conflict's evidence stored again.
        let mut again = log.append(tail());
        log.sync();
        assert_eq!(
            poll_once(&mut again).unwrap().unwrap(),
            vec![
                appended(3),
                appended(4),
                AppendOutcome::Conflict {
                    original_seq: 1,
                    evidence_seq: Some(5)
                }
            ],
            "cut {cut}"
        );
        assert_eq!(log.read(1, 10).unwrap().len(), 5);
    }
}

fn frames_end_at(frames: &[usize], cut: usize) -> bool {
    let mut at = 0;
    for len in frames {
        at += len;
        if at == cut {
            return true;
        }
    }
    false
}

/// The result of a future that is ready at once.
fn futures_ready<T>(mut f: BoxFuture<'_, T>) -> T {
    poll_once(&mut f).expect("ready at once")
}

#[test]
fn data_keys_are_installed_only_once_durable() {
    let ring = keyring(5, 1);
    let log = MemLog::new(
        clock(),
        Some(ring.clone()),
        MemLogConfig {
            sync: SyncMode::OnDemand,
            ..MemLogConfig::default()
        },
    );
    let mut issue = log.append(vec![Proposed::new(Event::DataKeyIssued(
        ring.issue("E-1", 1),
    ))]);
    assert!(ring.current("E-1").is_none());
    log.crash(TornWrite::Nothing);
    assert!(matches!(
        poll_once(&mut issue),
        Some(Err(EventLogError::Crashed))
    ));
    log.recover().unwrap();
    assert!(ring.current("E-1").is_none(), "a lost key was installed");
    let mut issue = log.append(vec![Proposed::new(Event::DataKeyIssued(
        ring.issue("E-1", 1),
    ))]);
    assert!(ring.current("E-1").is_none());
    log.sync();
    assert_eq!(poll_once(&mut issue).unwrap().unwrap(), vec![appended(1)]);
    let key = ring.current("E-1").expect("installed once durable");
    let mut sealed = log.append(vec![contract::sealed_reading("T-1", 1, 1, &ring, &key)]);
    log.sync();
    assert_eq!(poll_once(&mut sealed).unwrap().unwrap(), vec![appended(2)]);
    // Recovery needs the master key, as opening the sled log does.
    log.crash(TornWrite::Nothing);
    assert!(log.recover_with(None).is_err());
    assert!(log.recover_with(Some(keyring(6, 1))).is_err());
    assert!(!log.is_up());
    let fresh = keyring(5, 2);
    log.recover_with(Some(fresh.clone())).unwrap();
    assert!(fresh.current("E-1").is_some());
    assert_eq!(log.read(1, 10).unwrap().len(), 2);
}

/// The model a seeded run is checked against: what the log holds, decided and durable.
#[derive(Clone, Default)]
struct Model {
    next: u64,
    first: BTreeMap<(u64, u64), (u64, i64)>,
    evidence: BTreeMap<(u64, u64, i64), u64>,
}

impl Model {
    fn decide(&mut self, t: u64, s: u64, v: i64) -> AppendOutcome {
        match self.first.get(&(t, s)) {
            None => {
                self.first.insert((t, s), (self.next, v));
                self.next += 1;
                appended(self.next - 1)
            }
            Some((seq, value)) if *value == v => AppendOutcome::Duplicate { seq: *seq },
            Some((seq, _)) => {
                let next = &mut self.next;
                let ev = *self.evidence.entry((t, s, v)).or_insert_with(|| {
                    *next += 1;
                    *next - 1
                });
                AppendOutcome::Conflict {
                    original_seq: *seq,
                    evidence_seq: Some(ev),
                }
            }
        }
    }
}

/// Runs `steps` random operations (appends, syncs, crashes with random torn writes, recoveries) against
/// the model; returns the log's records at the end.
fn seeded_run(seed: u64, steps: usize) -> Vec<(u64, Vec<u8>)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let log = on_demand();
    let mut live = Model {
        next: 1,
        ..Model::default()
    };
    let mut durable = live.clone();
    let mut durable_records = Vec::new();
    let mut pending: Vec<(BoxFuture<'_, _>, Vec<AppendOutcome>)> = Vec::new();
    for step in 0..steps {
        match rng.random_range(0..10) {
            0..6 => {
                let batch: Vec<(u64, u64, i64)> = (0..rng.random_range(1..6))
                    .map(|_| {
                        (
                            rng.random_range(0..3),
                            rng.random_range(1..12),
                            rng.random_range(0..3),
                        )
                    })
                    .collect();
                let expected = batch
                    .iter()
                    .map(|(t, s, v)| live.decide(*t, *s, *v))
                    .collect();
                let proposed = batch
                    .iter()
                    .map(|(t, s, v)| reading(&format!("T-{t}"), *s, *v))
                    .collect();
                let mut f = log.append(proposed);
                assert!(poll_once(&mut f).is_none(), "seed {seed}, step {step}");
                pending.push((f, expected));
            }
            6..8 => {
                log.sync();
                for (mut f, expected) in pending.drain(..) {
                    assert_eq!(
                        poll_once(&mut f).unwrap().unwrap(),
                        expected,
                        "seed {seed}, step {step}"
                    );
                }
                durable = live.clone();
                durable_records = log.read_raw(1, usize::MAX).unwrap();
                assert_eq!(durable_records.len() as u64, durable.next - 1);
            }
            _ => {
                let torn = match rng.random_range(0..3) {
                    0 => TornWrite::Nothing,
                    _ => TornWrite::Prefix {
                        bytes: rng.random_range(0..2_000),
                    },
                };
                log.crash(torn);
                for (mut f, _) in pending.drain(..) {
                    assert!(
                        matches!(poll_once(&mut f), Some(Err(EventLogError::Crashed))),
                        "seed {seed}, step {step}"
                    );
                }
                let report = log.verify(&mut |_, _| {}).unwrap();
                assert!(report.corrupt.iter().all(|c| c.seq > durable.next - 1));
                assert!(report.gaps.is_empty());
                log.recover().unwrap();
                live = durable.clone();
                assert_eq!(
                    log.read_raw(1, usize::MAX).unwrap(),
                    durable_records,
                    "seed {seed}, step {step}: what was acknowledged changed"
                );
                assert!(log.verify(&mut |_, _| {}).unwrap().is_ok());
            }
        }
    }
    log.sync();
    for (mut f, expected) in pending.drain(..) {
        assert_eq!(poll_once(&mut f).unwrap().unwrap(), expected, "seed {seed}");
    }
    let records = log.read_raw(1, usize::MAX).unwrap();
    assert_eq!(records.len() as u64, live.next - 1);
    assert_eq!(log.read(1, usize::MAX).unwrap().len(), records.len());
    records
}

#[test]
fn seeded_runs_of_appends_syncs_and_crashes_match_the_model_and_repeat_exactly() {
    for seed in 0..16 {
        let first = seeded_run(seed, 160);
        assert_eq!(first, seeded_run(seed, 160), "seed {seed}: two runs differ");
    }
}

#[test]
fn an_oversized_batch_or_a_failing_append_stores_nothing() {
    let log = MemLog::new(
        clock(),
        Some(keyring(8, 1)),
        MemLogConfig {
            batch_events_max: 2,
            ..MemLogConfig::default()
        },
    );
    let err = futures_ready(log.append(vec![
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
    // A conflicting resend sealed with a key the log's keyring does not hold cannot have its evidence
    // sealed: the whole append fails, the new reading before it included.
    let ring = keyring(7, 1);
    ring.install(&ring.issue("E-1", 1)).unwrap();
    let key = ring.current("E-1").unwrap();
    futures_ready(log.append(vec![reading("T-1", 1, 1)])).unwrap();
    let err = futures_ready(log.append(vec![
        reading("T-1", 2, 1),
        contract::sealed_reading("T-1", 1, 2, &ring, &key),
    ]))
    .unwrap_err();
    assert!(matches!(err, EventLogError::Keyring(_)), "{err:?}");
    assert_eq!(log.last_seq(), 1);
    assert_eq!(
        futures_ready(log.append(vec![reading("T-1", 2, 1)])).unwrap(),
        vec![appended(2)]
    );
}

//! The deriver over a real sled log: weighings in, a weight-fluctuation anomaly out, and a second deriver
//! replaying the same log from the start stores nothing twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custodian_actors::{Deriver, DeriverConfig, LogSink};
use custodian_events::{Clock, ContainerId, Event, Reading, ReadingKind, TerminalId};
use custodian_log::{EventLog, Proposed, SledLog, SledLogConfig};

struct FixedClock;
impl Clock for FixedClock {
    fn now_ns(&self) -> i64 {
        1_795_000_000_000_000_000
    }
}

fn weighing(seq: u64, container: &str, kg: i64) -> Proposed {
    Proposed::new(Event::ReadingRecorded(Reading {
        terminal_id: TerminalId::parse("T-1").unwrap(),
        seq,
        measured_at_ns: 1_790_000_000_000_000_000 + seq as i64 * 60_000_000_000,
        kind: ReadingKind::Weight,
        value: kg * 1_000_000,
        container_id: Some(ContainerId::parse(container).unwrap()),
        stage: None,
        waste_code: None,
        manifest_id: None,
    }))
}

async fn caught_up(log: &Arc<dyn EventLog>, deriver: &Deriver) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while deriver
        .checkpoint
        .load(std::sync::atomic::Ordering::Acquire)
        < log.last_seq()
    {
        assert!(Instant::now() < deadline, "the deriver did not catch up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn anomalies(log: &Arc<dyn EventLog>) -> Vec<u64> {
    log.read(1, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.event, Event::AnomalyDetected(_)))
        .map(|e| e.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_are_derived_once_and_a_replay_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        SledLog::open(SledLogConfig::new(dir.path()), Arc::new(FixedClock), None).unwrap(),
    );
    // Two drums: A drifts 10 % (nothing), B drops 50 % (one anomaly), across many small batches.
    for i in 0..20u64 {
        let a = if i % 2 == 0 { 100 } else { 110 };
        let b = if i == 10 { 50 } else { 100 };
        log.append(vec![
            weighing(2 * i + 1, "A", a),
            weighing(2 * i + 2, "B", b),
        ])
        .await
        .unwrap();
    }
    let sink = Arc::new(LogSink(log.clone()));
    let deriver = Deriver::start(log.clone(), sink.clone(), DeriverConfig::default());
    caught_up(&log, &deriver).await;
    // 100 → 50 and 50 → 100: two anomalies for drum B, none for A.
    let first = anomalies(&log);
    assert_eq!(first.len(), 2, "{first:?}");
    deriver.stop().await;

    let replay = Deriver::start(log.clone(), sink, DeriverConfig::default());
    caught_up(&log, &replay).await;
    assert_eq!(anomalies(&log), first, "a replay stores nothing twice");
    replay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_falls_silent_while_its_actor_is_passivated() {
    use custodian_events::event::{ClockTicked, TerminalKind, TerminalRegistered};
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(
        SledLog::open(SledLogConfig::new(dir.path()), Arc::new(FixedClock), None).unwrap(),
    );
    let reg = |id: &str| {
        Proposed::new(Event::TerminalRegistered(TerminalRegistered {
            id: TerminalId::parse(id).unwrap(),
            enterprise_id: custodian_events::EnterpriseId::parse("E-1").unwrap(),
            kind: TerminalKind::LoadCell,
            capacity_mg: 1_000_000_000,
            report_interval_s: 10,
            public_key: None,
        }))
    };
    let reading = |id: &str, seq: u64, at_s: i64| {
        Proposed::new(Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse(id).unwrap(),
            seq,
            measured_at_ns: 1_790_000_000_000_000_000 + at_s * 1_000_000_000,
            kind: ReadingKind::Level,
            value: 1_000,
            container_id: None,
            stage: None,
            waste_code: None,
            manifest_id: None,
        }))
    };
    log.append(vec![reg("QUIET"), reg("BUSY"), reading("QUIET", 1, 0)])
        .await
        .unwrap();
    let sink = Arc::new(LogSink(log.clone()));
    let deriver = Deriver::start(
        log.clone(),
        sink,
        DeriverConfig {
            snapshot_every_events: 10,
            passivate_after_events: 20,
            read_batch_max: 10,
            ..DeriverConfig::default()
        },
    );
    // BUSY reports for a while; QUIET's actor idles past the passivation bound and is stopped.
    for i in 0..60u64 {
        log.append(vec![reading("BUSY", i + 1, i as i64)])
            .await
            .unwrap();
    }
    caught_up(&log, &deriver).await;
    // Both QUIET and the enterprise E-1 (reached only by the registrations) were idle.
    assert!(
        deriver
            .stats
            .passivations
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
    // A tick past QUIET's deadline (last reading at 0 s, 3 × 10 s allowed) wakes it from its snapshot.
    log.append(vec![Proposed::new(Event::ClockTicked(ClockTicked {
        at_ns: 1_790_000_000_000_000_000 + 59 * 1_000_000_000,
    }))])
    .await
    .unwrap();
    caught_up(&log, &deriver).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    caught_up(&log, &deriver).await;
    let silent: Vec<_> = log
        .read(1, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::AnomalyDetected(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0].subject, "terminal:QUIET");
    assert_eq!(silent[0].kind.name(), "terminal_silent");
    deriver.stop().await;
}

//! What the simulations share: the simulator's clock, a checker's verdict, driving calls and the deriver
//! to rest on the simulated log, and the replay and duplicate checks every topology runs. A leaf: the
//! single-node (`sim`), edge and cluster simulations import it, it imports none of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use custodian_actors::Deriver;
use custodian_events::domain::{AggregateKey, Rules};
use custodian_events::replay::Replay;
use custodian_events::{Clock, Envelope, Event, Fingerprint, TerminalId};
use custodian_log::{AppendOutcome, EventLog};

use crate::http::Pending;
use crate::memlog::MemLog;

/// Real time the deriver may take to settle before the run fails.
pub(crate) const SETTLE_REAL_S: u64 = 120;

/// A clock the simulator sets.
#[derive(Debug)]
pub struct SimClock(pub AtomicI64);

impl SimClock {
    pub fn set(&self, ns: i64) {
        self.0.store(ns, Ordering::SeqCst);
    }
}

impl Clock for SimClock {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One checker's verdict.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    /// Passes with `fine()` as its detail when there is no problem; fails naming the count and the first ten.
    pub(crate) fn from_problems(
        name: &'static str,
        problems: Vec<String>,
        fine: impl FnOnce() -> String,
    ) -> Check {
        Check {
            name,
            ok: problems.is_empty(),
            detail: if problems.is_empty() {
                fine()
            } else {
                format!(
                    "{} problem(s): {}",
                    problems.len(),
                    problems
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        }
    }
}

/// Syncs until the deriver has processed the whole log and nothing waits.
pub(crate) async fn settle(log: &MemLog, deriver: &Deriver) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(SETTLE_REAL_S);
    let mut spins = 0u32;
    loop {
        log.sync();
        if deriver.checkpoint.load(Ordering::Acquire) == log.last_seq()
            && log.waiting_appends() == 0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the deriver did not settle in {SETTLE_REAL_S} s (checkpoint {}, log {})",
                deriver.checkpoint.load(Ordering::Acquire),
                log.last_seq()
            ));
        }
        spins += 1;
        if spins < 20 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Polls a call once, in the simulator's order (nothing else runs meanwhile).
pub(crate) fn poll_once(call: &mut Pending) -> Option<Result<Vec<AppendOutcome>, String>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match call.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(answer) => Some(answer),
        std::task::Poll::Pending => None,
    }
}

/// Syncs the log and polls `call` until it is answered (a call that appends more than once, say a first
/// data key and then the sealed event, needs a sync for each).
pub(crate) fn drive(
    log: &MemLog,
    call: &mut Pending,
    rounds_max: usize,
) -> Result<Vec<AppendOutcome>, String> {
    for _ in 0..rounds_max {
        if let Some(answer) = poll_once(call) {
            return answer;
        }
        log.sync();
    }
    Err(format!("a call was not answered after {rounds_max} syncs"))
}

/// (c) A replay of `envs` from scratch finds no difference and ends in the `live` deriver's states; (d) no
/// derived event is in `envs` twice. Also the replay's state hash, hex.
pub(crate) fn check_replay(
    envs: &[Envelope],
    live: &BTreeMap<AggregateKey, custodian_events::domain::AggregateState>,
    rules: Rules,
) -> (Check, Check, String) {
    let mut replay = Replay::new(rules, true);
    for env in envs {
        replay.step(env);
    }
    let core = &replay.core().aggregates;
    let differing: Vec<String> = core
        .iter()
        .filter(|(k, v)| live.get(*k) != Some(*v))
        .map(|(k, _)| k.to_string())
        .chain(
            live.keys()
                .filter(|k| !core.contains_key(*k))
                .map(|k| format!("{k} (only live)")),
        )
        .collect();
    let report = replay.finish();
    let mut detail: Vec<String> = report
        .differences
        .iter()
        .take(10)
        .map(|d| d.describe())
        .collect();
    if !differing.is_empty() {
        detail.push(format!(
            "{} aggregate state(s) differ from the live deriver's: {}",
            differing.len(),
            differing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let c = Check {
        name: "(c) replay from scratch equals the live run",
        ok: report.differences.is_empty() && differing.is_empty(),
        detail: if detail.is_empty() {
            format!(
                "{} events, {} aggregates, no difference",
                report.events, report.aggregates
            )
        } else {
            format!(
                "{} difference(s): {}",
                report.differences.len(),
                detail.join("; ")
            )
        },
    };
    let d = Check {
        name: "(d) no derived event twice",
        ok: report.derived_twice_in_log.is_empty(),
        detail: if report.derived_twice_in_log.is_empty() {
            "none".into()
        } else {
            format!("at sequences {:?}", report.derived_twice_in_log)
        },
    };
    (c, d, report.state_hash_hex())
}

/// The fingerprints of every reading in `envs`, by (terminal, seq): more than one is a reading stored twice.
pub(crate) fn readings_by_key(envs: &[Envelope]) -> BTreeMap<(TerminalId, u64), Vec<Fingerprint>> {
    let mut all: BTreeMap<(TerminalId, u64), Vec<Fingerprint>> = BTreeMap::new();
    for env in envs {
        if let Event::ReadingRecorded(r) = &env.event {
            all.entry((r.terminal_id.clone(), r.seq))
                .or_default()
                .push(env.fingerprint);
        }
    }
    all
}

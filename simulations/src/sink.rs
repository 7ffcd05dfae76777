//! A read model the simulator can make fail or stall, fed by the node's real projection runner
//! ([`custodian_projections::runner`]).
//!
//! It stands where PostgreSQL or InfluxDB stand in a node: outside the node, so it survives the node's
//! crashes, and holding its own checkpoint. Like theirs, its [`Projection::apply`] is one transaction —
//! the batch's effects and the new checkpoint together — that skips what the checkpoint already covers.
//! Its faults come from its own seeded generator:
//! - *outage*: the transaction fails before anything is written (`Unavailable`);
//! - *lost answer*: it commits, then answers an error, so the runner hands the same events again;
//! - *stall*: it answers only after a pause (real milliseconds; the simulated clock does not move).
//!
//! What it holds is checked at the end of a run: every acknowledged reading exactly once, with the value
//! acknowledged, and every anomaly the log holds — nothing lost or doubled on the way to a read model.
//! (The runner reads the log on tokio's blocking pool and retries on real time; that timing is not part of
//! the seed, but nothing it decides reaches the log, so the log and the state hashes stay deterministic.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_events::{Envelope, Event, TerminalId};
use custodian_log::EventLog;
use custodian_projections::runner::{
    self, BoxFuture, Family, Prepared, Projection, ProjectionError, RunnerConfig, RunnerHandle,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Probabilities per transaction.
const P_OUTAGE: f64 = 0.08;
const P_ANSWER_LOST: f64 = 0.04;
const P_STALL: f64 = 0.04;
/// Longest stall, real milliseconds.
const STALL_MS_MAX: u64 = 30;

/// What the model holds.
#[derive(Debug, Default)]
pub struct Held {
    pub checkpoint: u64,
    pub genesis: Option<String>,
    /// (terminal, seq) → (value, how many times it was written).
    pub readings: BTreeMap<(TerminalId, u64), (i64, u32)>,
    /// Sequences of the anomalies written.
    pub anomalies: BTreeSet<u64>,
    pub transactions: u64,
    pub outages: u64,
    pub answers_lost: u64,
    pub stalls: u64,
}

/// The model and its faults.
pub struct SimModel {
    held: Mutex<Held>,
    rng: Mutex<SmallRng>,
    faults: bool,
}

impl SimModel {
    pub fn new(seed: u64, faults: bool) -> Arc<SimModel> {
        Arc::new(SimModel {
            held: Mutex::default(),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            faults,
        })
    }

    pub fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("model lock")
    }

    /// Starts the node's projection runner on this model (again after every restart of the node).
    pub fn run(
        self: &Arc<Self>,
        log: Arc<dyn EventLog>,
        directory: custodian_projections::directory::SharedDirectory,
        batch_events_max: usize,
    ) -> RunnerHandle {
        runner::spawn(
            log,
            Arc::new(SimFamily(self.clone())),
            directory,
            RunnerConfig {
                batch_events_max,
                backoff_min: Duration::from_millis(1),
                backoff_max: Duration::from_millis(20),
                ..RunnerConfig::default()
            },
        )
    }
}

struct SimFamily(Arc<SimModel>);

impl Family for SimFamily {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn active_generation(
        &self,
        _genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<u32, ProjectionError>> {
        Box::pin(async { Ok(1) })
    }

    fn open(&self, _generation: u32) -> Arc<dyn Projection> {
        self.0.clone()
    }

    fn promote(
        &self,
        generation: u32,
        _genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(async move {
            if generation == 1 {
                Ok(())
            } else {
                Err(ProjectionError::Failed(
                    "the simulated model has one generation".into(),
                ))
            }
        })
    }

    fn discard(&self, _generation: u32) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(async { Ok(()) })
    }
}

enum Fate {
    Fine,
    Outage,
    AnswerLost,
    Stall(u64),
}

impl Projection for SimModel {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn generation(&self) -> u32 {
        1
    }

    fn target(&self) -> String {
        "memory".into()
    }

    fn wants(&self, event_type: &str) -> bool {
        matches!(event_type, "ReadingRecorded" | "AnomalyDetected")
    }

    fn prepare(&self) -> BoxFuture<'_, Result<Prepared, ProjectionError>> {
        Box::pin(async {
            let held = self.held();
            Ok(Prepared {
                checkpoint: held.checkpoint,
                log_genesis: held.genesis.clone(),
            })
        })
    }

    fn set_log_genesis(&self, genesis: &str) {
        self.held().genesis = Some(genesis.to_owned());
    }

    fn apply<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let fate = {
                let mut rng = self.rng.lock().expect("model rng");
                let x: f64 = rng.random();
                if !self.faults {
                    Fate::Fine
                } else if x < P_OUTAGE {
                    Fate::Outage
                } else if x < P_OUTAGE + P_ANSWER_LOST {
                    Fate::AnswerLost
                } else if x < P_OUTAGE + P_ANSWER_LOST + P_STALL {
                    Fate::Stall(rng.random_range(1..=STALL_MS_MAX))
                } else {
                    Fate::Fine
                }
            };
            match fate {
                Fate::Outage => {
                    self.held().outages += 1;
                    return Err(ProjectionError::Unavailable(
                        "simulated outage: the model does not answer".into(),
                    ));
                }
                Fate::Stall(ms) => {
                    self.held().stalls += 1;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Fate::Fine | Fate::AnswerLost => {}
            }
            {
                let mut held = self.held();
                let from = held.checkpoint;
                for env in events.iter().filter(|e| e.seq > from) {
                    match &env.event {
                        Event::ReadingRecorded(r) => {
                            let slot = held
                                .readings
                                .entry((r.terminal_id.clone(), r.seq))
                                .or_insert((r.value, 0));
                            slot.0 = r.value;
                            slot.1 += 1;
                        }
                        Event::AnomalyDetected(_) => {
                            held.anomalies.insert(env.seq);
                        }
                        _ => {}
                    }
                }
                held.checkpoint = held.checkpoint.max(upto);
                held.transactions += 1;
            }
            if matches!(fate, Fate::AnswerLost) {
                self.held().answers_lost += 1;
                return Err(ProjectionError::Unavailable(
                    "simulated: the commit's answer was lost".into(),
                ));
            }
            Ok(())
        })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

//! The deriver: tails the durable log, routes events to their aggregates' actors, and appends what they
//! derive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custodian_events::domain::AnomalyKind;
use custodian_events::domain::WeighingRules;
use custodian_events::log::{BoxFuture, EventLog};
use custodian_events::{ContainerId, Event, ReadingKind, TerminalId};
use ractor::{Actor, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::container::{ContainerActor, ContainerMsg};
use crate::terminal::{TerminalActor, TerminalMsg};

/// Where derived events go: the node seals them like any other event and appends them to the log, which
/// answers duplicates for anything derived before.
pub trait DerivedSink: Send + Sync + 'static {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Debug, Clone)]
pub struct DeriverConfig {
    pub weighing: WeighingRules,
    /// Events read from the log per step.
    pub read_batch_max: usize,
    /// How long an actor may take to answer one event before the deriver treats it as failed.
    pub actor_call_timeout_ms: u64,
    /// Waiting between attempts when the sink (the log) refuses derived events.
    pub retry_backoff_ms_max: u64,
}

impl Default for DeriverConfig {
    fn default() -> Self {
        DeriverConfig {
            weighing: WeighingRules::default(),
            read_batch_max: 1_000,
            actor_call_timeout_ms: 5_000,
            retry_backoff_ms_max: 2_000,
        }
    }
}

/// A running deriver.
pub struct Deriver {
    /// The last log sequence fully processed (its derived events appended).
    pub checkpoint: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Deriver {
    /// Starts tailing `log` from the beginning (state lives only in memory until snapshots exist).
    pub fn start(
        log: Arc<dyn EventLog>,
        sink: Arc<dyn DerivedSink>,
        config: DeriverConfig,
    ) -> Self {
        Self::start_with_checkpoint(log, sink, config, Arc::new(AtomicU64::new(0)))
    }

    /// Like [`Deriver::start`], publishing progress in `checkpoint` (which it resets to 0).
    pub fn start_with_checkpoint(
        log: Arc<dyn EventLog>,
        sink: Arc<dyn DerivedSink>,
        config: DeriverConfig,
        checkpoint: Arc<AtomicU64>,
    ) -> Self {
        checkpoint.store(0, Ordering::Release);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(log, sink, config, checkpoint.clone(), stopped));
        Deriver {
            checkpoint,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    sink: Arc<dyn DerivedSink>,
    config: DeriverConfig,
    checkpoint: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut containers: BTreeMap<ContainerId, ActorRef<ContainerMsg>> = BTreeMap::new();
    let mut terminals: BTreeMap<TerminalId, ActorRef<TerminalMsg>> = BTreeMap::new();
    let mut durable = log.subscribe();
    loop {
        if *stopped.borrow() {
            break;
        }
        let from = checkpoint.load(Ordering::Acquire) + 1;
        if from > log.last_seq() {
            tokio::select! {
                _ = durable.changed() => continue,
                _ = stopped.changed() => break,
            }
        }
        let batch = {
            let log = log.clone();
            let max = config.read_batch_max;
            tokio::task::spawn_blocking(move || log.read_where(from, max, &routed)).await
        };
        let (events, last) = match batch {
            Ok(Ok((events, last))) => (events, last),
            Ok(Err(e)) => {
                // A corrupt record stops derivation here rather than deciding on a gap.
                tracing::error!(error = %e, seq = from, "deriver cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(config.retry_backoff_ms_max)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "deriver read task failed");
                continue;
            }
        };
        if last == 0 {
            continue;
        }
        // Hand every event to its actor first, then collect the answers in log order: actors of
        // different containers work in parallel, each container's mailbox keeps its own order, and the
        // derived events come out in the order of their causes.
        let mut pending = Vec::new();
        for env in events {
            let (tx, rx) = ractor::concurrency::oneshot();
            let (label, sent) = match route_of(&env.event) {
                None => continue,
                Some(Route::Container(id)) => {
                    let actor = match containers.get(&id) {
                        Some(a) => a.clone(),
                        None => {
                            let (a, _) = Actor::spawn(
                                None,
                                ContainerActor,
                                (id.clone(), config.weighing.clone()),
                            )
                            .await
                            .expect("spawning a container actor");
                            containers.insert(id.clone(), a.clone());
                            a
                        }
                    };
                    let sent = actor.cast(ContainerMsg::Record {
                        event: Box::new(env.event),
                        event_seq: env.seq,
                        reply: tx.into(),
                    });
                    (format!("container:{id}"), sent.is_ok())
                }
                Some(Route::Terminal(id)) => {
                    let actor = match terminals.get(&id) {
                        Some(a) => a.clone(),
                        None => {
                            let (a, _) = Actor::spawn(None, TerminalActor, id.clone())
                                .await
                                .expect("spawning a terminal actor");
                            terminals.insert(id.clone(), a.clone());
                            a
                        }
                    };
                    let sent = actor.cast(TerminalMsg::Record {
                        event: Box::new(env.event),
                        event_seq: env.seq,
                        reply: tx.into(),
                    });
                    (format!("terminal:{id}"), sent.is_ok())
                }
            };
            pending.push((label, sent, rx));
        }
        let mut derived = Vec::new();
        let mut failed = false;
        let timeout = Duration::from_millis(config.actor_call_timeout_ms);
        for (actor, sent, rx) in pending {
            match (sent, tokio::time::timeout(timeout, rx).await) {
                (true, Ok(Ok(out))) => derived.extend(out),
                _ => {
                    tracing::error!(%actor, "actor failed; replaying the log");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // An actor's memory is lost with it. Until snapshots exist, rebuild every actor by replaying
            // the log from the start: decisions are deterministic and derived events deduplicate, so
            // nothing is lost or doubled.
            for (_, a) in std::mem::take(&mut containers) {
                a.stop(None);
            }
            for (_, a) in std::mem::take(&mut terminals) {
                a.stop(None);
            }
            checkpoint.store(0, Ordering::Release);
            continue;
        }
        if !derived.is_empty() {
            let mut backoff_ms = 50;
            while let Err(e) = sink.append(derived.clone()).await {
                tracing::warn!(error = %e, "deriver cannot append derived events; retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(config.retry_backoff_ms_max);
                if *stopped.borrow() {
                    return;
                }
            }
        }
        checkpoint.store(last, Ordering::Release);
    }
    for (_, a) in containers {
        a.stop(None);
    }
    for (_, a) in terminals {
        a.stop(None);
    }
}

/// The event types any actor cares about; the rest are skipped without being opened.
fn routed(event_type: &str) -> bool {
    matches!(
        event_type,
        "ReadingRecorded" | "ReadingConflicted" | "AnomalyDetected"
    )
}

/// Which actor an event goes to.
enum Route {
    Container(ContainerId),
    Terminal(TerminalId),
}

fn route_of(event: &Event) -> Option<Route> {
    match event {
        Event::ReadingRecorded(r) if r.kind == ReadingKind::Weight => {
            r.container_id.clone().map(Route::Container)
        }
        Event::ReadingConflicted(c) => Some(Route::Terminal(c.reading.terminal_id.clone())),
        Event::AnomalyDetected(a) => match a.kind {
            AnomalyKind::TamperSuspected => a.terminal_id.clone().map(Route::Terminal),
            _ => a.container_id.clone().map(Route::Container),
        },
        _ => None,
    }
}

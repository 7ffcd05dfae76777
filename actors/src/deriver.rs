//! The deriver: tails the durable log, routes events to their aggregates' actors, and appends what they
//! derive.
//!
//! - **Routing** is the pure [`Router`]: registrations teach it which enterprise a terminal belongs to,
//!   and its deadline index says which aggregates a `ClockTicked` must wake.
//! - **Order.** Every event of a batch is handed to its actors first, then the answers are collected in
//!   log order: actors of different aggregates work in parallel, each mailbox keeps its own order, and the
//!   derived events come out in the order of their causes. A clock tick waits for the answers before it
//!   (their deadlines decide whom it wakes), so the live run decides exactly as [`Core`] would.
//! - **Supervision.** Actors are linked to a [`Supervisor`]; a panic loses one actor's memory, not the
//!   deriver. The deriver notices the missing answer, recovers the aggregate from its last snapshot plus
//!   the log past it, and hands it the batch's events again. One that fails `restarts_max` times in a row
//!   on the same events is quarantined (logged, counted, its events skipped) so a poison event cannot
//!   stall detection for everyone.
//! - **Snapshots and passivation.** Every `snapshot_every_events` log events the states of the aggregates
//!   that changed, the router and the checkpoint are committed to a [`SnapshotStore`] in one write; a
//!   restart resumes there. Aggregates that no event has reached for `passivate_after_events` are stopped
//!   at that commit and woken from their snapshot by their next event or a clock tick past their deadline.
//!
//! [`Core`]: custodian_events::domain::Core

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custodian_events::Event;
use custodian_events::domain::{AggregateKey, AggregateState, At, Router, Rules, routed_type};
use custodian_log::{BoxFuture, EventLog};
use ractor::concurrency::oneshot;
use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::aggregate::{AggregateActor, AggregateArgs, AggregateMsg, Answer, Fault};
use crate::snapshots::{MemorySnapshots, SnapshotStore};
use crate::supervisor::{Supervisor, SupervisorStats};

/// Where derived events go: the node seals them like any other event and appends them to the log, which
/// answers duplicates for anything derived before.
pub trait DerivedSink: Send + Sync + 'static {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), String>>;
}

/// A sink that appends derived events straight to a log, unsealed: for tests, benchmarks and tools
/// over a log of their own (the node's sink seals them first).
pub struct LogSink(pub Arc<dyn EventLog>);

impl DerivedSink for LogSink {
    fn append(&self, events: Vec<Event>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let batch = events
                .into_iter()
                .map(custodian_log::Proposed::new)
                .collect();
            self.0
                .append(batch)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

#[derive(Debug, Clone)]
pub struct DeriverConfig {
    pub rules: Rules,
    /// Events read from the log per step.
    pub read_batch_max: usize,
    /// How long an actor may take to answer one event before the deriver treats it as failed.
    pub actor_call_timeout_ms: u64,
    /// Waiting between attempts when the sink (the log) refuses derived events.
    pub retry_backoff_ms_max: u64,
    /// Commit a snapshot after this many log events.
    pub snapshot_every_events: u64,
    /// Passivate an aggregate that no event has reached for this many log events.
    pub passivate_after_events: u64,
    /// Recoveries of one aggregate on the same events before it is quarantined.
    pub restarts_max: u32,
    pub fault: Option<Fault>,
}

impl Default for DeriverConfig {
    fn default() -> Self {
        DeriverConfig {
            rules: Rules::default(),
            read_batch_max: 1_000,
            actor_call_timeout_ms: 5_000,
            retry_backoff_ms_max: 2_000,
            snapshot_every_events: 50_000,
            passivate_after_events: 200_000,
            restarts_max: 3,
            fault: None,
        }
    }
}

/// What the deriver has done, for `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub struct DeriverStats {
    pub live_actors: AtomicU64,
    pub passivations: AtomicU64,
    pub recoveries: AtomicU64,
    pub quarantined: AtomicU64,
    pub snapshots: AtomicU64,
    /// The checkpoint of the last committed snapshot.
    pub snapshot_seq: AtomicU64,
    pub supervisor: Arc<SupervisorStats>,
}

enum Command {
    States(tokio::sync::oneshot::Sender<BTreeMap<AggregateKey, AggregateState>>),
}

/// A running deriver.
pub struct Deriver {
    /// The last log sequence fully processed (its derived events appended).
    pub checkpoint: Arc<AtomicU64>,
    pub stats: Arc<DeriverStats>,
    commands: mpsc::Sender<Command>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Deriver {
    /// Starts with snapshots in memory: from the start of the log.
    pub fn start(
        log: Arc<dyn EventLog>,
        sink: Arc<dyn DerivedSink>,
        config: DeriverConfig,
    ) -> Self {
        Self::start_with(
            log,
            sink,
            config,
            Arc::new(MemorySnapshots::default()),
            Arc::new(AtomicU64::new(0)),
        )
    }

    /// Starts from the last snapshot in `store`, publishing progress in `checkpoint`.
    pub fn start_with(
        log: Arc<dyn EventLog>,
        sink: Arc<dyn DerivedSink>,
        config: DeriverConfig,
        store: Arc<dyn SnapshotStore>,
        checkpoint: Arc<AtomicU64>,
    ) -> Self {
        let stats = Arc::new(DeriverStats::default());
        let (stop, stopped) = watch::channel(false);
        let (commands, command_rx) = mpsc::channel(4);
        let task = tokio::spawn(run(
            log,
            sink,
            config,
            store,
            checkpoint.clone(),
            stats.clone(),
            stopped,
            command_rx,
        ));
        Deriver {
            checkpoint,
            stats,
            commands,
            stop,
            task,
        }
    }

    /// Every aggregate's state, live or passivated, as of the current checkpoint.
    pub async fn states(&self) -> BTreeMap<AggregateKey, AggregateState> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::States(tx)).await.is_err() {
            return BTreeMap::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops after the batch in hand, committing a last snapshot.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Live {
    actor: ActorRef<AggregateMsg>,
    last_used: u64,
}

struct Pending {
    key: AggregateKey,
    event: Arc<Event>,
    at: At,
    rx: Option<ractor::concurrency::OneshotReceiver<Answer>>,
}

struct Inner {
    log: Arc<dyn EventLog>,
    config: DeriverConfig,
    rules: Arc<Rules>,
    store: Arc<dyn SnapshotStore>,
    stats: Arc<DeriverStats>,
    supervisor: ActorRef<()>,
    router: Router,
    live: BTreeMap<AggregateKey, Live>,
    dirty: BTreeSet<AggregateKey>,
    quarantined: BTreeSet<AggregateKey>,
    /// The checkpoint of the last committed snapshot: every stored state is exact as of it.
    committed_at: u64,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    log: Arc<dyn EventLog>,
    sink: Arc<dyn DerivedSink>,
    config: DeriverConfig,
    store: Arc<dyn SnapshotStore>,
    checkpoint: Arc<AtomicU64>,
    stats: Arc<DeriverStats>,
    mut stopped: watch::Receiver<bool>,
    mut commands: mpsc::Receiver<Command>,
) {
    let (router, committed_at) = match store.load_meta() {
        Ok(Some((seq, router))) => match Router::from_bytes(&router) {
            Ok(r) => (r, seq),
            Err(e) => {
                tracing::error!(error = %e, "deriver snapshot unreadable; replaying the log from the start");
                (Router::default(), 0)
            }
        },
        Ok(None) => (Router::default(), 0),
        Err(e) => {
            tracing::error!(error = %e, "deriver snapshot store unreadable; replaying the log from the start");
            (Router::default(), 0)
        }
    };
    checkpoint.store(committed_at, Ordering::Release);
    stats.snapshot_seq.store(committed_at, Ordering::Relaxed);
    let (supervisor, _) = Actor::spawn(None, Supervisor, stats.supervisor.clone())
        .await
        .expect("spawning the supervisor");
    let mut d = Inner {
        rules: Arc::new(config.rules.clone()),
        log,
        config,
        store,
        stats,
        supervisor,
        router,
        live: BTreeMap::new(),
        dirty: BTreeSet::new(),
        quarantined: BTreeSet::new(),
        committed_at,
    };
    let mut durable = d.log.subscribe();
    loop {
        if *stopped.borrow() {
            break;
        }
        while let Ok(cmd) = commands.try_recv() {
            d.command(cmd).await;
        }
        let from = checkpoint.load(Ordering::Acquire) + 1;
        if from > d.log.last_seq() {
            tokio::select! {
                _ = durable.changed() => {}
                _ = stopped.changed() => {}
                Some(cmd) = commands.recv() => d.command(cmd).await,
            }
            continue;
        }
        let (events, last) = match d.read(from).await {
            Ok(batch) => batch,
            Err(e) => {
                // A corrupt record stops derivation here rather than deciding on a gap.
                tracing::error!(error = %e, seq = from, "deriver cannot read the log; retrying");
                tokio::time::sleep(Duration::from_millis(d.config.retry_backoff_ms_max)).await;
                continue;
            }
        };
        if last == 0 {
            continue;
        }
        let derived = d.process(events).await;
        if !derived.is_empty() {
            let mut backoff_ms = 50;
            while let Err(e) = sink.append(derived.clone()).await {
                tracing::warn!(error = %e, "deriver cannot append derived events; retrying");
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(d.config.retry_backoff_ms_max);
                if *stopped.borrow() {
                    d.shutdown();
                    return;
                }
            }
        }
        checkpoint.store(last, Ordering::Release);
        if last - d.committed_at >= d.config.snapshot_every_events {
            d.commit(last).await;
        }
    }
    let last = checkpoint.load(Ordering::Acquire);
    if last > d.committed_at {
        d.commit(last).await;
    }
    d.shutdown();
}

impl Inner {
    async fn read(&self, from: u64) -> Result<(Vec<custodian_events::Envelope>, u64), String> {
        let log = self.log.clone();
        let max = self.config.read_batch_max;
        tokio::task::spawn_blocking(move || log.read_where(from, max, &routed_type))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::States(reply) => {
                let mut states = BTreeMap::new();
                match self.store_all() {
                    Ok(stored) => states.extend(stored),
                    Err(e) => tracing::error!(error = %e, "reading stored aggregate states"),
                }
                let keys: Vec<AggregateKey> = self.live.keys().cloned().collect();
                for key in keys {
                    if let Some(s) = self.snapshot_of(&key).await {
                        states.insert(key, s);
                    }
                }
                let _ = reply.send(states);
            }
        }
    }

    fn store_all(&self) -> Result<Vec<(AggregateKey, AggregateState)>, String> {
        self.store
            .all()?
            .into_iter()
            .map(|(k, b)| {
                AggregateState::from_bytes(&b)
                    .map(|s| (k, s))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    async fn snapshot_of(&self, key: &AggregateKey) -> Option<AggregateState> {
        let bytes = self.snapshot_bytes(key).await?;
        AggregateState::from_bytes(&bytes).ok()
    }

    async fn snapshot_bytes(&self, key: &AggregateKey) -> Option<Vec<u8>> {
        let live = self.live.get(key)?;
        let (tx, rx) = oneshot();
        live.actor
            .cast(AggregateMsg::Snapshot { reply: tx.into() })
            .ok()?;
        tokio::time::timeout(Duration::from_millis(self.config.actor_call_timeout_ms), rx)
            .await
            .ok()?
            .ok()
    }

    /// Routes a batch to the actors and collects what they derive, in log order.
    async fn process(&mut self, events: Vec<custodian_events::Envelope>) -> Vec<Event> {
        let mut pending = Vec::new();
        let mut derived = Vec::new();
        for env in events {
            let at = At {
                seq: env.seq,
                recorded_at_ns: env.recorded_at_ns,
            };
            let event = Arc::new(env.event);
            if matches!(*event, Event::ClockTicked(_)) {
                // Whom a tick wakes depends on the deadlines the answers before it report.
                self.settle(&mut pending, &mut derived).await;
            }
            for key in self.router.route(&event) {
                if self.quarantined.contains(&key) {
                    continue;
                }
                let actor = self.actor(&key).await;
                let (tx, rx) = oneshot();
                let sent = actor
                    .cast(AggregateMsg::Record {
                        event: event.clone(),
                        at,
                        reply: tx.into(),
                    })
                    .is_ok();
                if let Some(live) = self.live.get_mut(&key) {
                    live.last_used = at.seq;
                }
                self.dirty.insert(key.clone());
                pending.push(Pending {
                    key,
                    event: event.clone(),
                    at,
                    rx: sent.then_some(rx),
                });
            }
        }
        self.settle(&mut pending, &mut derived).await;
        derived
    }

    /// Collects the answers of `pending`, recovering any aggregate whose actor failed.
    async fn settle(&mut self, pending: &mut Vec<Pending>, derived: &mut Vec<Event>) {
        let timeout = Duration::from_millis(self.config.actor_call_timeout_ms);
        let mut answers: Vec<Option<Answer>> = Vec::with_capacity(pending.len());
        let mut failed = BTreeSet::new();
        for p in pending.iter_mut() {
            if failed.contains(&p.key) {
                answers.push(None);
                continue;
            }
            let answer = match p.rx.take() {
                Some(rx) => tokio::time::timeout(timeout, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            if answer.is_none() {
                failed.insert(p.key.clone());
            }
            answers.push(answer);
        }
        for key in failed {
            let idx: Vec<usize> = (0..pending.len())
                .filter(|&i| pending[i].key == key)
                .collect();
            match self.recover_and_redo(&key, pending, &idx).await {
                Some(redone) => {
                    for (i, a) in idx.into_iter().zip(redone) {
                        answers[i] = Some(a);
                    }
                }
                None => {
                    tracing::error!(aggregate = %key, seq = pending[idx[0]].at.seq, "aggregate keeps failing on the same events; quarantined, its events are skipped");
                    self.stats.quarantined.fetch_add(1, Ordering::Relaxed);
                    self.quarantined.insert(key.clone());
                    if let Some(live) = self.live.remove(&key) {
                        live.actor.stop(None);
                    }
                    for i in idx {
                        answers[i] = None;
                    }
                }
            }
        }
        for (p, a) in pending.drain(..).zip(answers) {
            if let Some(a) = a {
                self.router.set_deadline(&p.key, a.deadline_ns);
                derived.extend(a.derived);
            }
        }
        self.stats
            .live_actors
            .store(self.live.len() as u64, Ordering::Relaxed);
    }

    /// Rebuilds `key` from its snapshot and the log up to just before its first event in `pending`,
    /// in a new actor, and hands it those events again.
    async fn recover_and_redo(
        &mut self,
        key: &AggregateKey,
        pending: &[Pending],
        idx: &[usize],
    ) -> Option<Vec<Answer>> {
        let timeout = Duration::from_millis(self.config.actor_call_timeout_ms);
        for attempt in 1..=self.config.restarts_max {
            self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
            if let Some(live) = self.live.remove(key) {
                live.actor.stop(None);
            }
            let upto = pending[idx[0]].at.seq - 1;
            let state = match self.rebuild(key, upto).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(aggregate = %key, error = %e, "cannot rebuild the aggregate");
                    return None;
                }
            };
            tracing::warn!(aggregate = %key, attempt, last_seq = state.last_seq, "aggregate recovered from its snapshot and the log");
            let actor = self.spawn(key, state).await;
            let mut rxs = Vec::new();
            for &i in idx {
                let (tx, rx) = oneshot();
                let p = &pending[i];
                let _ = actor.cast(AggregateMsg::Record {
                    event: p.event.clone(),
                    at: p.at,
                    reply: tx.into(),
                });
                rxs.push(rx);
            }
            let mut out = Vec::new();
            for rx in rxs {
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(a)) => out.push(a),
                    _ => break,
                }
            }
            if out.len() == idx.len() {
                return Some(out);
            }
        }
        None
    }

    /// The state of `key` as of log sequence `upto`: its last snapshot, caught up from the log.
    async fn rebuild(&self, key: &AggregateKey, upto: u64) -> Result<AggregateState, String> {
        let mut state = match self.store.get(key)? {
            Some(b) => AggregateState::from_bytes(&b).map_err(|e| e.to_string())?,
            None => AggregateState::new(key.clone()),
        };
        // Every stored state is exact as of the last commit; nothing of this aggregate before it is
        // missing.
        let mut from = self.committed_at.max(state.last_seq) + 1;
        while from <= upto {
            let (events, last) = self.read(from).await?;
            if last == 0 {
                break;
            }
            for env in events {
                if env.seq > upto {
                    break;
                }
                if self
                    .router
                    .routes_to(&env.event, key, state.deadline_ns(&self.rules))
                {
                    let at = At {
                        seq: env.seq,
                        recorded_at_ns: env.recorded_at_ns,
                    };
                    // What it derives was appended when these events were first processed.
                    state.step(&self.rules, &env.event, at);
                }
            }
            from = last + 1;
        }
        Ok(state)
    }

    /// The live actor of `key`, woken from its snapshot or made new.
    async fn actor(&mut self, key: &AggregateKey) -> ActorRef<AggregateMsg> {
        if let Some(live) = self.live.get(key) {
            return live.actor.clone();
        }
        let state = match self.store.get(key) {
            Ok(Some(b)) => match AggregateState::from_bytes(&b) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(aggregate = %key, error = %e, "snapshot unreadable; rebuilding from the log");
                    self.rebuild(key, self.committed_at)
                        .await
                        .unwrap_or_else(|_| AggregateState::new(key.clone()))
                }
            },
            Ok(None) => AggregateState::new(key.clone()),
            Err(e) => {
                tracing::error!(aggregate = %key, error = %e, "snapshot store unreadable");
                AggregateState::new(key.clone())
            }
        };
        self.spawn(key, state).await
    }

    async fn spawn(&mut self, key: &AggregateKey, state: AggregateState) -> ActorRef<AggregateMsg> {
        let last_used = state.last_seq;
        let (actor, _) = Actor::spawn_linked(
            None,
            AggregateActor,
            AggregateArgs {
                state,
                rules: self.rules.clone(),
                fault: self.config.fault.clone(),
            },
            self.supervisor.get_cell(),
        )
        .await
        .expect("spawning an aggregate actor");
        self.live.insert(
            key.clone(),
            Live {
                actor: actor.clone(),
                last_used,
            },
        );
        actor
    }

    /// Commits the changed states, the router and `checkpoint`; passivates the idle aggregates.
    async fn commit(&mut self, checkpoint: u64) {
        let idle_before = checkpoint.saturating_sub(self.config.passivate_after_events);
        let idle: Vec<AggregateKey> = self
            .live
            .iter()
            .filter(|(_, l)| l.last_used < idle_before)
            .map(|(k, _)| k.clone())
            .collect();
        let mut keys: BTreeSet<AggregateKey> = self.dirty.iter().cloned().collect();
        keys.extend(idle.iter().cloned());
        let mut states = Vec::with_capacity(keys.len());
        for key in keys {
            if !self.live.contains_key(&key) {
                continue;
            }
            match self.snapshot_bytes(&key).await {
                Some(b) => states.push((key, b)),
                None => {
                    tracing::warn!(aggregate = %key, "no snapshot answer; commit postponed");
                    return;
                }
            }
        }
        let store = self.store.clone();
        let router = self.router.to_bytes();
        let written =
            tokio::task::spawn_blocking(move || store.commit(checkpoint, router, states)).await;
        let written = match written {
            Ok(r) => r,
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot commit the deriver snapshot; will retry");
            return;
        }
        self.dirty.clear();
        self.committed_at = checkpoint;
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        self.stats.snapshot_seq.store(checkpoint, Ordering::Relaxed);
        for key in idle {
            if let Some(live) = self.live.remove(&key) {
                live.actor.stop(None);
                self.stats.passivations.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats
            .live_actors
            .store(self.live.len() as u64, Ordering::Relaxed);
    }

    fn shutdown(&mut self) {
        for (_, live) in std::mem::take(&mut self.live) {
            live.actor.stop(None);
        }
        self.supervisor.stop(None);
        self.stats.live_actors.store(0, Ordering::Relaxed);
    }
}

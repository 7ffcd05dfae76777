//! The projection runner: one task per read model, tailing the log from the model's own checkpoint in
//! batches, retrying a failing backend with capped, jittered backoff, and rebuilding a model from sequence 0
//! into a shadow copy that replaces the live one only once it has caught up.
//!
//! What makes the effect exactly-once lives in each model (see [`Projection::apply`]): the runner may hand a
//! model the same events again after a failure or a restart, and the model must come out as if it saw them
//! once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use custodian_events::Envelope;
use custodian_log::EventLog;
use hdrhistogram::Histogram;
use rand::Rng as _;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::directory::SharedDirectory;

/// How long a replaced model stays after a rebuilt one went live, for the queries still reading it.
pub const REPLACED_MODEL_GRACE: Duration = Duration::from_secs(2);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a step of a projection failed. Every failure is retried with backoff; the kinds differ in what the
/// log line tells the operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProjectionError {
    /// The backend did not answer (down, unreachable, timed out, overloaded).
    #[error("{0}")]
    Unavailable(String),
    /// The backend answered with an error, or reading the log failed.
    #[error("{0}")]
    Failed(String),
}

/// One generation of one read model.
pub trait Projection: Send + Sync + 'static {
    /// `postgres`, `influx` or `search`.
    fn name(&self) -> &'static str;
    fn generation(&self) -> u32;
    /// Where this generation lives: a schema, a database, a directory.
    fn target(&self) -> String;
    /// Whether the model needs events of this type (registrations are always handed over as well).
    fn wants(&self, event_type: &str) -> bool;
    /// Creates what the generation needs (idempotent) and answers its checkpoint: the last log sequence
    /// whose effect it holds, and which log that was (the fingerprint of its first event, once known).
    fn prepare(&self) -> BoxFuture<'_, Result<Prepared, ProjectionError>>;
    /// The log the model is fed from (hex fingerprint of its first event); stored with every checkpoint.
    fn set_log_genesis(&self, genesis: &str);
    /// Applies `events` (the wanted events after the checkpoint, in log order) and moves the checkpoint to
    /// `upto`, so that applying them again, whole or in part, changes nothing.
    fn apply<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
    /// For queries that need the concrete model (the search index).
    fn as_any(&self) -> &dyn std::any::Any;
    /// Work on a batch that needs no backend (encoding points, say), done on the blocking pool while the
    /// previous batch is being written; handed back to [`Projection::apply_encoded`].
    fn encode(&self, _events: &[Envelope]) -> Result<Option<Encoded>, ProjectionError> {
        Ok(None)
    }
    /// [`Projection::apply`] with what [`Projection::encode`] made of the same events.
    fn apply_encoded<'a>(
        &'a self,
        events: &'a [Envelope],
        upto: u64,
        _encoded: Option<Encoded>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.apply(events, upto)
    }
}

/// What [`Projection::encode`] made of a batch.
pub type Encoded = Box<dyn std::any::Any + Send>;

/// A batch read from the log: the events the model wants, the last sequence scanned, the model's encoding.
struct Batch {
    events: Vec<Envelope>,
    last: u64,
    encoded: Option<Encoded>,
}

/// What a model holds when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prepared {
    pub checkpoint: u64,
    pub log_genesis: Option<String>,
}

/// The generations of one read model and which of them is live.
///
/// A model belongs to one event log (the fingerprint of its first event, its *genesis*): where several
/// logs' models share a backend (one PostgreSQL database, one InfluxDB server), each log has its own live
/// generation, and a generation holding another log's model is never served nor written.
pub trait Family: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The live generation of the log whose genesis is `genesis` (1 for a model never rebuilt; for a log
    /// whose genesis is not known yet, or not recorded here yet, the family's default pointer).
    fn active_generation(
        &self,
        genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<u32, ProjectionError>>;
    fn open(&self, generation: u32) -> Arc<dyn Projection>;
    /// Makes `generation` the live one of the log whose genesis is `genesis`, in one step queries observe
    /// atomically.
    fn promote(
        &self,
        generation: u32,
        genesis: Option<&str>,
    ) -> BoxFuture<'_, Result<(), ProjectionError>>;
    /// Removes what `generation` holds (a replaced model, or a shadow left by an interrupted rebuild).
    fn discard(&self, generation: u32) -> BoxFuture<'_, Result<(), ProjectionError>>;
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most log records scanned per batch.
    pub batch_events_max: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// In cluster mode, whether this node holds the projection's lease: while it does not, the runner
    /// stands by (state `standby`), and when it gets the lease it reads the model's checkpoint again (the
    /// previous holder moved it). `None`: always run.
    pub lease: Option<tokio::sync::watch::Receiver<bool>>,
    /// What to do when the live model turns out to have been built from another event log (a database
    /// shared with another node, or left from an earlier log): never serve it, and with this set build
    /// this log's own in a free generation beside it (`projections.on_foreign_log = "rebuild"`); without,
    /// stay `foreign_log` until the operator acts.
    pub rebuild_foreign: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch_events_max: 5_000,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            lease: None,
            rebuild_foreign: false,
        }
    }
}

/// What `custodian projections status` shows of one model.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ProjectionStatus {
    pub name: String,
    /// `starting`, `running` or `failing`.
    pub state: String,
    pub generation: u32,
    pub target: String,
    pub checkpoint: u64,
    /// The log's last durable sequence when the model last looked.
    pub head: u64,
    pub lag_events: u64,
    pub applied_events_total: u64,
    pub batches_total: u64,
    pub failures_total: u64,
    pub last_error: Option<String>,
    /// Seconds since the current failure began.
    pub failing_for_s: Option<f64>,
    /// Age of the oldest event of the last batch when it was committed, in ms.
    pub last_batch_lag_ms: Option<u64>,
    pub rebuild: Option<RebuildStatus>,
    /// The last rebuild that finished: its generation and how long it took.
    pub last_rebuild: Option<FinishedRebuild>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RebuildStatus {
    pub generation: u32,
    pub target: String,
    pub checkpoint: u64,
    pub head: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FinishedRebuild {
    pub generation: u32,
    pub events: u64,
    pub took_s: f64,
}

/// Live figures of one runner.
pub struct ProjectionStats {
    status: Mutex<ProjectionStatus>,
    live: Mutex<Option<Arc<dyn Projection>>>,
    /// Batch commit lag (ms) of the live model since the runner started.
    lag_ms: Mutex<Histogram<u64>>,
}

impl ProjectionStats {
    fn new(name: &str) -> ProjectionStats {
        ProjectionStats {
            status: Mutex::new(ProjectionStatus {
                name: name.to_owned(),
                state: "starting".into(),
                ..Default::default()
            }),
            live: Mutex::new(None),
            lag_ms: Mutex::new(Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds")),
        }
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.lock().expect("stats lock").clone()
    }

    /// The commit-lag histogram (ms) since the runner started or was last reset.
    pub fn lag_histogram(&self) -> Histogram<u64> {
        self.lag_ms.lock().expect("stats lock").clone()
    }

    pub fn reset_lag_histogram(&self) {
        self.lag_ms.lock().expect("stats lock").reset();
    }

    fn update(&self, f: impl FnOnce(&mut ProjectionStatus)) {
        f(&mut self.status.lock().expect("stats lock"));
    }
}

enum Command {
    Rebuild(oneshot::Sender<Result<u32, String>>),
}

/// A running projection.
pub struct RunnerHandle {
    pub stats: Arc<ProjectionStats>,
    commands: mpsc::Sender<Command>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RunnerHandle {
    pub fn name(&self) -> String {
        self.stats.status().name
    }

    pub fn status(&self) -> ProjectionStatus {
        self.stats.status()
    }

    /// The generation queries should read.
    pub fn live(&self) -> Option<Arc<dyn Projection>> {
        self.stats.live.lock().expect("stats lock").clone()
    }

    /// Starts rebuilding the model from sequence 0 into a new generation; answers its number. Refused
    /// while a rebuild runs.
    pub async fn rebuild(&self) -> Result<u32, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Rebuild(tx))
            .await
            .map_err(|_| "the projection has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the projection has stopped".to_owned())?
    }

    /// Stops the runner. A batch in flight is abandoned: its transaction rolls back, or it is written again
    /// on the next start.
    pub async fn stop(&self) {
        let task = self.task.lock().expect("task lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Starts tailing the log into `family`'s live generation.
pub fn spawn(
    log: Arc<dyn EventLog>,
    family: Arc<dyn Family>,
    directory: SharedDirectory,
    config: RunnerConfig,
) -> RunnerHandle {
    let stats = Arc::new(ProjectionStats::new(family.name()));
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(
        Runner {
            log,
            family,
            directory,
            config,
            stats: stats.clone(),
            commands: rx,
            health: Health::default(),
            genesis: None,
        }
        .run(),
    );
    RunnerHandle {
        stats,
        commands: tx,
        task: Mutex::new(Some(task)),
    }
}

/// One generation being fed.
struct Feed {
    model: Arc<dyn Projection>,
    checkpoint: Option<u64>,
    /// The next batch, being read while the current one is written: (its first sequence, the read).
    prefetch: Option<(u64, JoinHandle<ReadResult>)>,
    /// Whether the model knows which log feeds it.
    genesis_set: bool,
    /// Set when the model turned out to be another log's.
    foreign: Option<Foreign>,
    /// Whether this log's pointer to the generation has been written this run.
    pointer_recorded: bool,
}

/// Why a model is not this log's.
#[derive(Debug, Clone)]
struct Foreign {
    /// Whether this log has a first event (so could have a model of its own): while it is empty, a model
    /// of another log is refused but nothing is built (a cluster node's copy may simply not have caught
    /// up yet).
    decided: bool,
}

/// The state a model of another log is shown in.
pub const FOREIGN_LOG: &str = "foreign_log";

/// Generations looked at for one this log may take, past the live one.
const GENERATIONS_PROBED_MAX: u32 = 64;

type ReadResult = Result<Batch, ProjectionError>;

impl Feed {
    fn new(model: Arc<dyn Projection>) -> Feed {
        Feed {
            model,
            checkpoint: None,
            prefetch: None,
            genesis_set: false,
            foreign: None,
            pointer_recorded: false,
        }
    }
}

/// Reads the batch after `from - 1` for `model`, teaches the directory its registrations and lets the model
/// encode it (on the blocking pool: the log opens and checks events).
fn read_batch(
    log: Arc<dyn EventLog>,
    model: Arc<dyn Projection>,
    directory: SharedDirectory,
    from: u64,
    max: usize,
) -> JoinHandle<ReadResult> {
    tokio::task::spawn_blocking(move || {
        let want =
            |t: &str| t == "EnterpriseRegistered" || t == "TerminalRegistered" || model.wants(t);
        let (events, last) = log
            .read_where(from, max, &want)
            .map_err(|e| ProjectionError::Failed(format!("reading the event log: {e}")))?;
        directory
            .write()
            .expect("directory lock")
            .learn_all(&events);
        let events: Vec<Envelope> = events
            .into_iter()
            .filter(|e| model.wants(&e.event_type))
            .collect();
        let encoded = model.encode(&events)?;
        Ok(Batch {
            events,
            last,
            encoded,
        })
    })
}

struct Shadow {
    feed: Feed,
    started: Instant,
}

#[derive(Default)]
struct Health {
    failing_since: Option<Instant>,
    attempts: u32,
}

struct Runner {
    log: Arc<dyn EventLog>,
    family: Arc<dyn Family>,
    directory: SharedDirectory,
    config: RunnerConfig,
    stats: Arc<ProjectionStats>,
    commands: mpsc::Receiver<Command>,
    health: Health,
    /// The fingerprint of the log's first event, once there is one.
    genesis: Option<String>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Runner {
    async fn run(mut self) {
        let generation = loop {
            let genesis = match self.genesis().await {
                Ok(g) => g,
                Err(e) => {
                    self.failed("reading the event log", e).await;
                    continue;
                }
            };
            match self.family.active_generation(genesis.as_deref()).await {
                Ok(g) => break g,
                Err(e) => self.failed("finding the live generation", e).await,
            }
        };
        // Queries read the model only once it is known to be this log's (`verify`).
        let mut live = Feed::new(self.family.open(generation));
        let target = live.model.target();
        self.stats.update(|s| {
            s.generation = generation;
            s.target = target;
        });
        let mut shadow: Option<Shadow> = None;
        let mut durable = self.log.subscribe();
        let mut lease = self.config.lease.clone();
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                self.command(cmd, &live, &mut shadow).await;
            }
            if live.foreign.as_ref().is_some_and(|f| f.decided) && self.config.rebuild_foreign {
                live = self.adopt_free_generation(live).await;
                continue;
            }
            if let Some(lease) = lease.as_mut()
                && !*lease.borrow_and_update()
            {
                // Another node holds the lease: stand by, and start again from the model's checkpoint.
                // The model is still checked to be this log's, so this node's queries can read it.
                if self.stats.live.lock().expect("stats lock").is_none() {
                    self.verify(&mut live, true).await;
                    if live.foreign.is_some() {
                        continue;
                    }
                }
                live.checkpoint = None;
                if let Some((_, read)) = live.prefetch.take() {
                    read.abort();
                }
                self.stats.update(|s| s.state = "standby".into());
                tokio::select! {
                    changed = lease.changed() => if changed.is_err() { return },
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => self.command(cmd, &live, &mut shadow).await,
                        None => return,
                    },
                }
                continue;
            }
            let head = self.log.last_seq();
            let mut busy = false;
            if self.step(&mut live, head, true).await {
                busy = true;
            }
            if let Some(s) = shadow.as_mut() {
                if self.step(&mut s.feed, head, false).await {
                    busy = true;
                }
                let done = |f: &Feed| f.checkpoint.is_some_and(|c| c >= head);
                if done(&s.feed) && done(&live) {
                    let s = shadow.take().expect("checked above");
                    live = self.swap(live, s).await;
                    continue;
                }
            }
            if !busy {
                let lease_lost = async {
                    match lease.as_mut() {
                        Some(l) => {
                            let _ = l.changed().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    changed = durable.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = lease_lost => {}
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => self.command(cmd, &live, &mut shadow).await,
                        None => return,
                    },
                }
            }
        }
    }

    async fn command(&mut self, cmd: Command, live: &Feed, shadow: &mut Option<Shadow>) {
        match cmd {
            Command::Rebuild(reply) => {
                if let Some(s) = shadow {
                    let _ = reply.send(Err(format!(
                        "a rebuild into generation {} is already running",
                        s.feed.model.generation()
                    )));
                    return;
                }
                // The next generation this log may take: never one holding another log's model.
                let generation = match self.free_generation(live.model.generation()).await {
                    Ok(g) => g,
                    Err(e) => {
                        let _ = reply.send(Err(format!("cannot rebuild: {e}")));
                        return;
                    }
                };
                // A shadow left by an interrupted rebuild starts over.
                if let Err(e) = self.family.discard(generation).await {
                    let _ = reply.send(Err(format!(
                        "cannot clear generation {generation} for the rebuild: {e}"
                    )));
                    return;
                }
                let model = self.family.open(generation);
                tracing::info!(
                    projection = self.family.name(),
                    generation,
                    target = %model.target(),
                    "rebuilding from sequence 0 into a shadow copy; the live model keeps serving until it has caught up"
                );
                let status = RebuildStatus {
                    generation,
                    target: model.target(),
                    checkpoint: 0,
                    head: self.log.last_seq(),
                    elapsed_s: 0.0,
                };
                self.stats.update(|s| s.rebuild = Some(status));
                *shadow = Some(Shadow {
                    feed: Feed::new(model),
                    started: Instant::now(),
                });
                let _ = reply.send(Ok(generation));
            }
        }
    }

    async fn swap(&mut self, old: Feed, new: Shadow) -> Feed {
        let generation = new.feed.model.generation();
        loop {
            let genesis = self.genesis.clone();
            match self.family.promote(generation, genesis.as_deref()).await {
                Ok(()) => break,
                Err(e) => self.failed("switching to the rebuilt model", e).await,
            }
        }
        self.recovered();
        let took = new.started.elapsed().as_secs_f64();
        let checkpoint = new.feed.checkpoint.unwrap_or(0);
        tracing::info!(
            projection = self.family.name(),
            generation,
            events = checkpoint,
            took_s = took,
            "rebuild finished; the new model is live"
        );
        let target = new.feed.model.target();
        *self.stats.live.lock().expect("stats lock") = Some(new.feed.model.clone());
        // Queries read the new model from here on; those already reading the replaced one finish within
        // the grace before it is dropped (dropped first, they failed with "relation does not exist").
        tokio::time::sleep(REPLACED_MODEL_GRACE).await;
        let old_generation = old.model.generation();
        if let Err(e) = self.family.discard(old_generation).await {
            tracing::warn!(
                projection = self.family.name(),
                generation = old_generation,
                error = %e,
                "the rebuilt model is live, but the replaced one could not be removed; remove it by hand"
            );
        }
        self.stats.update(|s| {
            s.generation = generation;
            s.target = target;
            s.checkpoint = checkpoint;
            s.rebuild = None;
            s.last_rebuild = Some(FinishedRebuild {
                generation,
                events: checkpoint,
                took_s: took,
            });
        });
        new.feed
    }

    /// Prepares `feed`'s model and checks that it is this log's (or blank); answers its checkpoint. A
    /// model of another log is never fed nor served: `feed.foreign` says why, and the caller decides.
    async fn verify(&mut self, feed: &mut Feed, live: bool) -> Option<u64> {
        let Prepared {
            checkpoint: c,
            log_genesis,
        } = match feed.model.prepare().await {
            Ok(p) => p,
            Err(e) => {
                self.failed("preparing the model", e).await;
                return None;
            }
        };
        let mine = match self.genesis().await {
            Ok(g) => g,
            Err(e) => {
                self.failed("reading the event log", e).await;
                return None;
            }
        };
        if c > 0 || log_genesis.is_some() {
            let stored = log_genesis.as_deref().unwrap_or("");
            if mine.as_deref() != Some(stored) {
                let why = format!(
                    "{} holds a read model built from another event log (first event {}, this log's {}, \
                     checkpoint {c}); this node does not serve it. Point projections at another database, \
                     drop that one, or set projections.on_foreign_log = \"rebuild\" to build this log's own \
                     generation beside it (the other log's stays untouched)",
                    feed.model.target(),
                    if stored.is_empty() { "unknown" } else { stored },
                    mine.as_deref().unwrap_or("none yet: the log is empty"),
                );
                feed.foreign = Some(Foreign {
                    // Only a log with a first event can have a model of its own.
                    decided: mine.is_some(),
                });
                if live {
                    *self.stats.live.lock().expect("stats lock") = None;
                }
                let state = if live { FOREIGN_LOG } else { "failing" };
                self.failed_in(
                    state,
                    "checking the read model",
                    ProjectionError::Failed(why),
                )
                .await;
                return None;
            }
        }
        feed.foreign = None;
        self.recovered();
        if live {
            if let Some(g) = mine.as_deref()
                && !feed.pointer_recorded
            {
                // This log's own pointer to its live generation, beside other logs' in a shared backend.
                match self.family.promote(feed.model.generation(), Some(g)).await {
                    Ok(()) => feed.pointer_recorded = true,
                    Err(e) => {
                        self.failed("recording the live generation", e).await;
                        return None;
                    }
                }
            }
            *self.stats.live.lock().expect("stats lock") = Some(feed.model.clone());
            let (generation, target) = (feed.model.generation(), feed.model.target());
            self.stats.update(|s| {
                s.checkpoint = c;
                s.state = "running".into();
                s.generation = generation;
                s.target = target;
            });
        }
        Some(c)
    }

    /// The first generation after `after` that this log may take: one that holds nothing (no checkpoint,
    /// no log) or this log's own. Another log's generation is skipped, never written.
    async fn free_generation(&mut self, after: u32) -> Result<u32, ProjectionError> {
        let mine = self.genesis().await?;
        for generation in after + 1..=after + GENERATIONS_PROBED_MAX {
            let p = self.family.open(generation).prepare().await?;
            let blank = p.checkpoint == 0 && p.log_genesis.is_none();
            if blank || (p.log_genesis.is_some() && p.log_genesis == mine) {
                return Ok(generation);
            }
        }
        Err(ProjectionError::Failed(format!(
            "generations {} to {} all hold other event logs' models; drop some of them",
            after + 1,
            after + GENERATIONS_PROBED_MAX
        )))
    }

    /// The live model is another log's and the operator allows building this log's own: takes a free
    /// generation (this log's own, or an empty one) as the live one instead.
    async fn adopt_free_generation(&mut self, live: Feed) -> Feed {
        let from = live.model.generation();
        let generation = match self.free_generation(from).await {
            Ok(g) => g,
            Err(e) => {
                self.failed("finding a generation for this log", e).await;
                return live;
            }
        };
        let model = self.family.open(generation);
        tracing::warn!(
            projection = self.family.name(),
            foreign = %live.model.target(),
            own = %model.target(),
            "the read model was built from another event log; building this log's own beside it \
             (projections.on_foreign_log = \"rebuild\"); the other log's stays untouched"
        );
        if let Some((_, read)) = live.prefetch {
            read.abort();
        }
        let target = model.target();
        self.stats.update(|s| {
            s.generation = generation;
            s.target = target;
            s.state = "starting".into();
        });
        Feed::new(model)
    }

    /// Starts reading the batch from `from` on for `model`, from this runner's log (`fn read_batch`).
    fn read_batch(&self, model: &Arc<dyn Projection>, from: u64) -> JoinHandle<ReadResult> {
        read_batch(
            self.log.clone(),
            model.clone(),
            self.directory.clone(),
            from,
            self.config.batch_events_max,
        )
    }

    /// Feeds one batch to `feed` if it is behind `head`; answers whether there was anything to do.
    async fn step(&mut self, feed: &mut Feed, head: u64, live: bool) -> bool {
        let checkpoint = match feed.checkpoint {
            Some(c) => c,
            None => match self.verify(feed, live).await {
                Some(c) => {
                    feed.checkpoint = Some(c);
                    c
                }
                None => return true,
            },
        };
        if live {
            self.stats.update(|s| {
                s.head = head;
                s.lag_events = head.saturating_sub(checkpoint);
            });
        }
        if checkpoint >= head {
            return false;
        }
        if !feed.genesis_set {
            match self.genesis().await {
                Ok(Some(g)) => {
                    feed.model.set_log_genesis(&g);
                    feed.genesis_set = true;
                }
                Ok(None) => return false,
                Err(e) => {
                    self.failed("reading the event log", e).await;
                    return true;
                }
            }
        }
        // The batch read ahead while the last one was written, if it starts where this one must.
        let read = match feed.prefetch.take() {
            Some((from, handle)) if from == checkpoint + 1 => handle,
            Some((_, handle)) => {
                handle.abort();
                self.read_batch(&feed.model, checkpoint + 1)
            }
            None => self.read_batch(&feed.model, checkpoint + 1),
        }
        .await;
        let Batch {
            events,
            last,
            encoded,
        } = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.failed("reading a batch", e).await;
                return true;
            }
            Err(e) => {
                self.failed("reading a batch", ProjectionError::Failed(e.to_string()))
                    .await;
                return true;
            }
        };
        if last == 0 {
            return false;
        }
        if last < head {
            feed.prefetch = Some((last + 1, self.read_batch(&feed.model, last + 1)));
        }
        match feed.model.apply_encoded(&events, last, encoded).await {
            Ok(()) => {
                self.recovered();
                feed.checkpoint = Some(last);
                let lag_ms = events
                    .first()
                    .map(|e| ((now_ns() - e.recorded_at_ns).max(0) / 1_000_000) as u64);
                if live {
                    if let Some(l) = lag_ms {
                        let _ = self
                            .stats
                            .lag_ms
                            .lock()
                            .expect("stats lock")
                            .record(l.max(1));
                    }
                    self.stats.update(|s| {
                        s.checkpoint = last;
                        s.lag_events = head.saturating_sub(last);
                        s.applied_events_total += events.len() as u64;
                        s.batches_total += 1;
                        if lag_ms.is_some() {
                            s.last_batch_lag_ms = lag_ms;
                        }
                    });
                } else {
                    self.stats.update(|s| {
                        if let Some(r) = s.rebuild.as_mut() {
                            r.checkpoint = last;
                            r.head = head;
                        }
                    });
                }
            }
            Err(e) => self.failed("applying a batch", e).await,
        }
        if let Some(r) = self
            .stats
            .status
            .lock()
            .expect("stats lock")
            .rebuild
            .as_mut()
        {
            r.head = head;
        }
        true
    }

    /// The fingerprint of the log's first event (None while the log is empty).
    async fn genesis(&mut self) -> Result<Option<String>, ProjectionError> {
        if self.genesis.is_none() && self.log.last_seq() >= 1 {
            let log = self.log.clone();
            let first = tokio::task::spawn_blocking(move || log.read(1, 1))
                .await
                .map_err(|e| ProjectionError::Failed(e.to_string()))?
                .map_err(|e| ProjectionError::Failed(format!("reading event 1: {e}")))?;
            self.genesis = first.first().map(|e| hex::encode(e.fingerprint));
        }
        Ok(self.genesis.clone())
    }

    /// Logs the first failure of a run of failures (not every retry), then waits out the backoff.
    async fn failed(&mut self, doing: &str, e: ProjectionError) {
        self.failed_in("failing", doing, e).await
    }

    /// [`Runner::failed`], showing the model in `state` meanwhile.
    async fn failed_in(&mut self, state: &str, doing: &str, e: ProjectionError) {
        let name = self.family.name();
        if self.health.failing_since.is_none() {
            self.health.failing_since = Some(Instant::now());
            match &e {
                ProjectionError::Unavailable(m) => tracing::warn!(
                    projection = name,
                    "{doing} failed, the backend is unavailable: {m}; ingest goes on and the projection \
                     retries with backoff until it answers"
                ),
                ProjectionError::Failed(m) => tracing::error!(
                    projection = name,
                    "{doing} failed: {m}; retrying with backoff"
                ),
            }
        }
        self.health.attempts += 1;
        let since = self.health.failing_since;
        self.stats.update(|s| {
            s.state = state.into();
            s.failures_total += 1;
            s.last_error = Some(format!("{doing}: {e}"));
            s.failing_for_s = since.map(|t| t.elapsed().as_secs_f64());
        });
        let exp = self
            .config
            .backoff_min
            .saturating_mul(1u32 << self.health.attempts.min(16))
            .min(self.config.backoff_max);
        // Full jitter between half and all of the step, so many nodes do not retry in step.
        let ms = exp.as_millis().max(2) as u64;
        let wait = rand::rng().random_range(ms / 2..=ms);
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }

    fn recovered(&mut self) {
        if let Some(since) = self.health.failing_since.take() {
            tracing::info!(
                projection = self.family.name(),
                after_s = since.elapsed().as_secs_f64(),
                attempts = self.health.attempts,
                "the projection is running again"
            );
            self.health.attempts = 0;
            self.stats.update(|s| {
                s.state = "running".into();
                s.failing_for_s = None;
            });
        }
    }
}

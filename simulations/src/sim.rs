//! The simulator: one seeded run of a node — the real [`Deriver`] over a [`MemLog`] — fed a generated
//! world ([`crate::workload`]) with faults, then checked against the oracle ([`crate::oracle`]) and a
//! replay from scratch.
//!
//! **Determinism.** One current-thread tokio runtime; the log's clock is a simulated [`SimClock`] the
//! simulator sets to each item's instant; the log syncs only when the simulator says
//! ([`SyncMode::OnDemand`]), and after every step of the plan the simulator syncs and *settles* the
//! deriver (until its checkpoint is the log's last sequence with nothing waiting) before it goes on. So
//! the deriver only ever reads a log nobody else is writing, and the log's contents — sequences,
//! `recorded_at`, bytes — are a function of the seed.
//!
//! **Faults** ([`Faults::Default`]; all from a second `SmallRng` of the seed):
//! - *duplicates*: ~30 % of a step's acknowledged uploads are sent again during the next step, at random
//!   places (a terminal that missed the acknowledgement); the log must answer `Duplicate` for all of them;
//! - *late and reordered readings, offline terminals*: from the workload (uploads delayed by minutes,
//!   scales offline for hours that flush a partly shuffled backlog in several uploads);
//! - *crash while terminals send* (~2 % of steps): after a random number of the step's appends the log
//!   crashes, leaving a torn prefix of the unsynced tail (0 – 3000 bytes) on the disk; every waiting
//!   append must fail, `verify` must report the torn records, the deriver is stopped (as the node dies),
//!   the log recovers (truncating the torn bytes) and must then verify clean, the deriver is restarted —
//!   from its snapshot store, or (one restart in five) from an empty one, a node that lost its snapshots —
//!   and every unacknowledged item of the step is sent again, in order (terminals retry; the node's
//!   ticker retries its tick);
//! - *actor panics*: every aggregate that an event at a multiple of a seeded 300 – 899 goes to panics
//!   once while handling it (the deriver's `Fault` hook); the supervisor and the deriver must recover it
//!   from its snapshot and the log, quarantining nothing;
//! - *crash while deriving* (~2 % of steps): once the step is synced, the log crashes as soon as the
//!   deriver's first append of derived events waits for a sync — those derived events are lost — and the
//!   node restarts as above; the deriver must derive them again.
//!
//! With or without faults, the workload's tampering (a rewrite of a reading already in the log) must be
//! answered `Conflict` with evidence, and every first send `Appended`.
//!
//! **Checks** at the end: (a) every acknowledged reading is in the log exactly once, with the content
//! acknowledged, and every reading measured was acknowledged; (b) the anomalies in the log equal the
//! oracle's, by kind, subject and causes (precision and recall 1.0), every injected truth is among them,
//! and without faults the detected (kind, subject) pairs are exactly the truths'; (c) a [`Replay`] from
//! scratch finds no difference and ends in the deriver's aggregate states; (d) no derived event is in the
//! log twice; plus the crash checks above.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custodian_actors::{DerivedSink, Deriver, DeriverConfig, Fault, LogSink, MemorySnapshots};
use custodian_events::crypto::{Entropy, Sm2KeyPair};
use custodian_events::domain::{AggregateKey, AnomalyKind, Rules};
use custodian_events::keyring::{Keyring, MASTER_KEY_LEN};
use custodian_events::{Envelope, Event, Fingerprint, TerminalId, fingerprint};
use custodian_log::{AppendOutcome, EventLog, Proposed};
use custodian_node::sealing::NodeSink;
use custodian_tools::terminal_sim::SeededEntropy;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

pub use crate::harness::{Check, SimClock};
use crate::harness::{SETTLE_REAL_S, check_replay, drive, poll_once, readings_by_key, settle};
use crate::http::{HttpNode, Pending, Signatures, TerminalKeys};
use crate::memlog::{MemLog, MemLogConfig, SyncMode, TornWrite};
use crate::oracle::{self, Expected};
use crate::sink::SimModel;
use crate::workload::{self, Faults, Item, Payload, T0};
use custodian_projections::runner::RunnerHandle;

/// Probability that a step has a crash while terminals send.
const P_CRASH_SENDING: f64 = 0.02;
/// Probability that a step has a crash while the deriver appends.
const P_CRASH_DERIVING: f64 = 0.02;
/// Probability that an acknowledged upload is sent again.
const P_DUPLICATE: f64 = 0.3;
/// Probability that a terminal hangs up while its upload waits for the log (HTTP ingest).
const P_DISCONNECT: f64 = 0.02;
/// Probability that a restarted node lost its deriver snapshots.
const P_SNAPSHOTS_LOST: f64 = 0.2;
/// Syncs one call may wait for before the run fails.
const DRIVE_ROUNDS_MAX: usize = 16;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub terminals: usize,
    pub days: u32,
    pub faults: Faults,
    pub ingest: Ingest,
    /// Simulated hours instead of `days` (at least 2).
    pub hours: Option<u32>,
    /// Seconds between two heartbeats of a terminal.
    pub heartbeat_s: u32,
    /// With `--ingest edge`, for testing the checkers: the edge drops one waiting upload from its outbox
    /// without forwarding it, which check (f) must catch.
    pub edge_drops_one: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            terminals: 20,
            days: 2,
            faults: Faults::Default,
            ingest: Ingest::Http(Signatures::On),
            hours: None,
            heartbeat_s: workload::REPORT_INTERVAL_S,
            edge_drops_one: false,
        }
    }
}

impl SimConfig {
    /// The `custodian-sim run` command line of this configuration.
    pub fn command(&self) -> String {
        let mut c = format!(
            "cargo run -p custodian-simulations --bin custodian-sim -- run --seed {} --terminals {} --faults {} --ingest {}",
            self.seed,
            self.terminals,
            self.faults.name(),
            self.ingest.name()
        );
        match self.hours {
            Some(h) => c.push_str(&format!(" --hours {h}")),
            None => c.push_str(&format!(" --days {}", self.days)),
        }
        if self.heartbeat_s != workload::REPORT_INTERVAL_S {
            c.push_str(&format!(" --heartbeat-s {}", self.heartbeat_s));
        }
        c
    }
}

/// How the facts reach the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    /// Straight into the log: the log, the domain core and the deriver alone.
    Direct,
    /// Through the node's HTTP API ([`crate::http`]): ingest with or without SM2 signature checks,
    /// registrations and manifests by the administrator, sealed payloads, derived events appended by the
    /// node's own sink.
    Http(Signatures),
    /// Terminals upload (signed) to an edge node, which forwards to a platform node over a link with
    /// outages ([`crate::edge`]).
    Edge,
}

impl Ingest {
    pub fn name(self) -> &'static str {
        match self {
            Ingest::Direct => "direct",
            Ingest::Http(Signatures::On) => "http",
            Ingest::Http(Signatures::Off) => "http-unsigned",
            Ingest::Edge => "edge",
        }
    }
}

/// What happened in a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub uploads: u64,
    pub readings: u64,
    pub duplicates_sent: u64,
    pub crashes_sending: u64,
    pub crashes_deriving: u64,
    pub torn_bytes: u64,
    pub records_lost: u64,
    pub snapshots_lost: u64,
    /// Terminals that hung up while their upload waited for the log (it was stored; they send it again).
    pub disconnects: u64,
    /// The read model's transactions and its injected faults.
    pub model_transactions: u64,
    pub model_outages: u64,
    pub model_answers_lost: u64,
    pub model_stalls: u64,
    /// Actor panics injected, recoveries of aggregates, aggregates quarantined.
    pub actor_failures: u64,
    pub recoveries: u64,
    pub quarantined: u64,
    pub offline_periods: usize,
    pub truths: usize,
    pub expected: usize,
    pub detected: usize,
    pub events: u64,
    /// The edge topology's counts (`--ingest edge`).
    pub edge: Option<crate::edge::EdgeStats>,
}

#[derive(Debug, Clone)]
pub struct SimOutcome {
    pub config: SimConfig,
    pub checks: Vec<Check>,
    pub stats: Stats,
    /// The replay's state hash, hex.
    pub state_hash: String,
    /// SHA-256 of every record's bytes, hex (with `--ingest edge`, the edge's records then the platform's).
    pub log_hash: String,
    pub simulated: Duration,
    /// The whole run: the world, the steps, the checks.
    pub real: Duration,
    /// The steps alone: terminals sending, the node storing and deriving (the simulation's speed).
    pub steps_real: Duration,
    /// Bytes of the log's records.
    pub log_bytes: u64,
}

impl SimOutcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// Runs one simulation on a current-thread runtime of its own.
pub fn run(config: &SimConfig, progress: &mut dyn FnMut(String)) -> SimOutcome {
    run_with_deriver_rules(config, workload::rules(), progress)
}

/// Runs one simulation whose deriver decides by `deriver_rules` while the oracle and the replay keep the
/// documented ones: for checking that the checkers catch a node that decides wrongly.
pub fn run_with_deriver_rules(
    config: &SimConfig,
    deriver_rules: Rules,
    progress: &mut dyn FnMut(String),
) -> SimOutcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(run_async(config, deriver_rules, progress))
}

struct Node {
    log: Arc<MemLog>,
    config: DeriverConfig,
    store: Arc<MemorySnapshots>,
    /// With HTTP ingest: the node's API, and what a restarted node is made from.
    http: Option<(HttpNode, HttpSetup)>,
    /// The read model outside the node, and the node's projection runner feeding it.
    model: Arc<SimModel>,
    projection: Option<RunnerHandle>,
    projection_batch: usize,
}

/// What a node with an HTTP API is started from, again after every crash.
struct HttpSetup {
    clock: Arc<SimClock>,
    entropy: Arc<dyn Entropy>,
    master: [u8; MASTER_KEY_LEN],
    signatures: Signatures,
    platform_seed: u64,
    /// With `--ingest edge`: the node is an edge, its runtime attached at every start.
    edge: Option<(crate::edge::EdgeAttach, custodian_node::config::EdgeConfig)>,
}

impl HttpSetup {
    fn keyring(&self) -> Arc<Keyring> {
        Arc::new(Keyring::new(self.master, self.entropy.clone()))
    }

    fn node(&self, log: Arc<MemLog>, keyring: Arc<Keyring>) -> HttpNode {
        let mut config = HttpNode::config(self.signatures);
        if let Some((_, edge)) = &self.edge {
            config.edge = edge.clone();
        }
        let node = HttpNode::start_with(
            log,
            self.clock.clone(),
            self.entropy.clone(),
            keyring,
            config,
            Arc::new(AtomicU64::new(0)),
            Sm2KeyPair::generate(&SeededEntropy::new(self.platform_seed)),
        );
        if let Some((attach, _)) = &self.edge {
            attach.attach(&node.state);
        }
        node
    }
}

impl Node {
    fn start(&self) -> Deriver {
        let log: Arc<dyn EventLog> = self.log.clone();
        let (sink, derived_seq): (Arc<dyn DerivedSink>, _) = match &self.http {
            Some((http, _)) => (
                Arc::new(NodeSink(Arc::downgrade(&http.state))),
                http.state.derived_seq.clone(),
            ),
            None => (Arc::new(LogSink(log.clone())), Arc::new(AtomicU64::new(0))),
        };
        Deriver::start_with(
            log,
            sink,
            self.config.clone(),
            self.store.clone(),
            derived_seq,
        )
    }

    /// Starts the node's projection runner on the read model.
    fn start_projection(&mut self) {
        let directory = match &self.http {
            Some((http, _)) => http.state.directory.clone(),
            None => Arc::new(std::sync::RwLock::new(
                custodian_projections::directory::Directory::load(self.log.as_ref())
                    .expect("the recovered log reads"),
            )),
        };
        self.projection = Some(
            self.model
                .run(self.log.clone(), directory, self.projection_batch),
        );
    }

    /// Sends `item` the way this node takes it; the answer comes once the simulator drives the call.
    /// The call is polled outside tokio's cooperative budget: the simulator polls hundreds of calls in one
    /// go without yielding, and an exhausted budget would make a ready answer look pending.
    fn send(&self, item: &Item, keys: &TerminalKeys) -> Pending {
        Box::pin(tokio::task::unconstrained(self.call(item, keys)))
    }

    fn call(&self, item: &Item, keys: &TerminalKeys) -> Pending {
        let Some((http, _)) = &self.http else {
            let log = self.log.clone();
            let proposed = proposed(item);
            return Box::pin(async move { log.append(proposed).await.map_err(|e| e.to_string()) });
        };
        match &item.payload {
            Payload::Api(events) => http.api(keys, events.clone()),
            Payload::Upload { terminal, readings } => http.upload(keys, terminal, readings),
            Payload::Rewrite { reading, .. } => {
                http.upload(keys, &reading.terminal_id, std::slice::from_ref(reading))
            }
            Payload::Tick(at_ns) => http.tick(*at_ns),
        }
    }

    /// Stops a deriver, keeping its counts.
    async fn stop(deriver: Deriver, stats: &mut Stats) {
        let d = &deriver.stats;
        stats.actor_failures += d.supervisor.failures.load(Ordering::Relaxed);
        stats.recoveries += d.recoveries.load(Ordering::Relaxed);
        stats.quarantined += d.quarantined.load(Ordering::Relaxed);
        deriver.stop().await;
    }

    /// Stops the deriver of a crashed log, recovers the log and starts a deriver again.
    async fn restart(
        &mut self,
        deriver: Deriver,
        rng: &mut SmallRng,
        stats: &mut Stats,
        failures: &mut Vec<String>,
    ) -> Deriver {
        Self::stop(deriver, stats).await;
        if let Some(p) = self.projection.take() {
            p.stop().await;
        }
        // A restarted node starts from its disk alone: a fresh keyring that learns the data keys from the
        // log, a fresh API state, a fresh terminal registry.
        let keyring = self.http.as_ref().map(|(_, setup)| setup.keyring());
        let recovered = match &keyring {
            Some(k) => self.log.recover_with(Some(k.clone())),
            None => self.log.recover(),
        };
        if let Err(e) = recovered {
            failures.push(format!("recovery failed: {e}"));
        }
        if let (Some(keyring), Some((_, setup))) = (keyring, self.http.take()) {
            let http = setup.node(self.log.clone(), keyring);
            self.http = Some((http, setup));
        }
        match self.log.verify(&mut |_, _| {}) {
            Ok(r) if r.corrupt.is_empty() => {}
            Ok(r) => failures.push(format!(
                "after recovery, verify reports {} corrupt record(s): {}",
                r.corrupt.len(),
                r.corrupt[0].reason
            )),
            Err(e) => failures.push(format!("verify after recovery: {e}")),
        }
        if rng.random_bool(P_SNAPSHOTS_LOST) {
            self.store = Arc::new(MemorySnapshots::default());
            stats.snapshots_lost += 1;
        }
        self.start_projection();
        self.start()
    }

    /// Crashes the log with a torn write of up to 3000 bytes and checks what `verify` says of it.
    fn crash(&self, rng: &mut SmallRng, stats: &mut Stats, failures: &mut Vec<String>) {
        let bytes = rng.random_range(0..=3000);
        let crash = self.log.crash(TornWrite::Prefix { bytes });
        stats.torn_bytes += crash.torn_bytes as u64;
        stats.records_lost += crash.records_lost;
        match self.log.verify(&mut |_, _| {}) {
            Ok(r) => {
                let reported = !r.corrupt.is_empty();
                if (crash.torn_bytes > 0) != reported {
                    failures.push(format!(
                        "after a crash leaving {} torn bytes, verify reports {} corrupt record(s)",
                        crash.torn_bytes,
                        r.corrupt.len()
                    ));
                }
            }
            Err(e) => failures.push(format!("verify after a crash: {e}")),
        }
    }
}

/// Something the simulator sends in a step.
struct Send<'a> {
    item: &'a Item,
    kind: SendKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendKind {
    /// The first time.
    First,
    /// Again, after an acknowledgement the terminal missed: answered `duplicate`, acknowledged before.
    Resend,
    /// Again, after the terminal hung up while the node was storing it: stored before or now (a crash may
    /// have lost it), and this is the terminal's acknowledgement.
    Retry,
}

fn proposed(item: &Item) -> Vec<Proposed> {
    item.events().into_iter().map(Proposed::new).collect()
}

async fn run_async(
    config: &SimConfig,
    deriver_rules: Rules,
    progress: &mut dyn FnMut(String),
) -> SimOutcome {
    let started = Instant::now();
    let faults = config.faults == Faults::Default;
    let rules = workload::rules();
    let world = workload::generate_with(
        config.seed,
        config.terminals,
        config.hours.unwrap_or(config.days.max(1) * 24),
        config.faults,
        config.heartbeat_s,
    );
    let expected = oracle::expected(&world, &rules);
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0xFA17_5EED_0000_0001);
    let mut stats = Stats {
        offline_periods: world.offline.len(),
        truths: world.truths.len(),
        expected: expected.len(),
        ..Stats::default()
    };
    let mut failures: Vec<String> = Vec::new();
    let clock = Arc::new(SimClock(AtomicI64::new(T0)));
    let entropy: Arc<dyn Entropy> =
        Arc::new(SeededEntropy::new(config.seed ^ 0x5EA1_0000_0000_0002));
    let setup = match config.ingest {
        Ingest::Direct => None,
        Ingest::Http(_) | Ingest::Edge => {
            let mut master = [0u8; MASTER_KEY_LEN];
            entropy.fill(&mut master);
            Some(HttpSetup {
                clock: clock.clone(),
                entropy: entropy.clone(),
                master,
                signatures: match config.ingest {
                    Ingest::Http(s) => s,
                    _ => Signatures::On,
                },
                platform_seed: config.seed ^ 0x7047_0000_0000_0003,
                edge: None,
            })
        }
    };
    let mut setup = setup;
    let mut topology = None;
    if config.ingest == Ingest::Edge {
        match crate::edge::Topology::new(config.seed, clock.clone(), &world, faults) {
            Ok(mut t) => {
                t.drops_one = config.edge_drops_one;
                let edge_config = crate::edge::edge_config(&mut rng);
                if let Some(s) = setup.as_mut() {
                    s.edge = Some((t.attach.clone(), edge_config));
                }
                topology = Some(t);
            }
            Err(e) => failures.push(format!("the edge topology: {e}")),
        }
    }
    let keyring = setup.as_ref().map(HttpSetup::keyring);
    let log = Arc::new(MemLog::new(
        clock.clone(),
        keyring.clone(),
        MemLogConfig {
            sync: SyncMode::OnDemand,
            ..MemLogConfig::default()
        },
    ));
    let keys = TerminalKeys::generate(
        config.seed,
        world.terminals.iter(),
        match config.ingest {
            Ingest::Http(s) => s,
            Ingest::Edge => Signatures::On,
            Ingest::Direct => Signatures::Off,
        },
    );
    // Actor panics: every aggregate an event at a multiple of `every` goes to panics once on it.
    let every = rng.random_range(300..900u64);
    let panicked: Arc<Mutex<BTreeSet<(AggregateKey, u64)>>> = Arc::default();
    let fault = faults.then(|| {
        Fault(Arc::new(move |key: &AggregateKey, seq: u64| {
            seq.is_multiple_of(every)
                && panicked
                    .lock()
                    .expect("fault set")
                    .insert((key.clone(), seq))
        }))
    });
    let deriver_config = DeriverConfig {
        fault,
        rules: deriver_rules,
        read_batch_max: rng.random_range(8..=512),
        snapshot_every_events: rng.random_range(20..=500),
        passivate_after_events: rng.random_range(50..=3000),
        retry_backoff_ms_max: 20,
        ..DeriverConfig::default()
    };
    progress(format!(
        "world: {} terminals, {} readings, {} truths, {} offline periods, {} expected anomalies; \
         deriver read batch {}, snapshot every {}, passivate after {}",
        world.terminals.len(),
        world.readings.len(),
        world.truths.len(),
        world.offline.len(),
        expected.len(),
        deriver_config.read_batch_max,
        deriver_config.snapshot_every_events,
        deriver_config.passivate_after_events
    ));
    let http = setup.map(|setup| {
        let keyring = keyring.expect("a keyring with HTTP ingest");
        (setup.node(log.clone(), keyring), setup)
    });
    let mut node = Node {
        log: log.clone(),
        config: deriver_config,
        store: Arc::new(MemorySnapshots::default()),
        http,
        model: SimModel::new(config.seed ^ 0x0DE1_0000_0000_0004, faults),
        projection: None,
        projection_batch: rng.random_range(16..=2_000),
    };
    node.start_projection();
    let mut deriver = node.start();
    // (terminal, seq) → fingerprint of every reading acknowledged.
    let mut acked: BTreeMap<(TerminalId, u64), Fingerprint> = BTreeMap::new();
    let mut to_resend: Vec<(&Item, SendKind)> = Vec::new();
    let mut day_reported = 0i64;
    let http = matches!(config.ingest, Ingest::Http(_) | Ingest::Edge);

    // After the plan, one step more with nothing new: the terminals' last resends and retries.
    let last = workload::Step {
        end_ns: world.end_ns,
        items: Vec::new(),
    };
    let steps_started = Instant::now();
    for step in world.steps.iter().chain(std::iter::once(&last)) {
        let mut sends: Vec<Send> = step
            .items
            .iter()
            .map(|item| Send {
                item,
                kind: SendKind::First,
            })
            .collect();
        for (item, kind) in std::mem::take(&mut to_resend) {
            let at = rng.random_range(0..=sends.len());
            sends.insert(at, Send { item, kind });
        }
        let mut crash_at = (faults && !sends.is_empty() && rng.random_bool(P_CRASH_SENDING))
            .then(|| rng.random_range(0..sends.len()));
        loop {
            let crashing = crash_at.take();
            // (position in `sends`, the call, its answer once there).
            let mut waiting: Vec<(usize, Pending, Option<_>)> = Vec::new();
            let mut hung_up = Vec::new();
            for (pos, send) in sends.iter().enumerate() {
                if Some(pos) == crashing {
                    break;
                }
                // A resend goes out at the instant of the item it follows.
                if send.kind == SendKind::First {
                    clock.set(send.item.at_ns);
                }
                let mut call = node.send(send.item, &keys);
                let answer = if http && matches!(send.item.payload, Payload::Api(_)) {
                    // The administrator waits for each answer before the next call.
                    Some(drive(
                        &log,
                        &mut call,
                        DRIVE_ROUNDS_MAX * send.item.events().len(),
                    ))
                } else {
                    poll_once(&mut call)
                };
                if answer.is_none()
                    && http
                    && faults
                    && send.kind == SendKind::First
                    && matches!(send.item.payload, Payload::Upload { .. })
                    && rng.random_bool(P_DISCONNECT)
                {
                    // The terminal hangs up while the upload waits for the log: the handler is dropped.
                    drop(call);
                    hung_up.push(pos);
                    continue;
                }
                waiting.push((pos, call, answer));
            }
            if crashing.is_some() {
                node.crash(&mut rng, &mut stats, &mut failures);
                let mut answered = Vec::new();
                for (pos, mut call, answer) in waiting {
                    match answer.or_else(|| poll_once(&mut call)) {
                        // Over HTTP an administrator's call is driven to its answer at once, and the
                        // syncs that takes make what was sent before it durable: those answers stand.
                        Some(Ok(outcomes)) if http => {
                            record(
                                &sends[pos],
                                &outcomes,
                                &mut acked,
                                &mut stats,
                                &mut failures,
                            );
                            answered.push(pos);
                        }
                        Some(Ok(_)) => {
                            failures.push("an append was acknowledged by a crashed log".into())
                        }
                        Some(Err(_)) => {}
                        None => failures.push("a call hung after the log crashed".into()),
                    }
                }
                // Sent again below: what was acknowledged must now be a duplicate; what a terminal hung
                // up on may or may not have been stored.
                for pos in answered {
                    sends[pos].kind = SendKind::Resend;
                }
                for pos in hung_up {
                    sends[pos].kind = SendKind::Retry;
                }
                stats.crashes_sending += 1;
                deriver = node
                    .restart(deriver, &mut rng, &mut stats, &mut failures)
                    .await;
                // Every item of the step is unacknowledged: all are sent again, in order.
                continue;
            }
            clock.set(step.end_ns);
            for _ in 0..DRIVE_ROUNDS_MAX {
                log.sync();
                let mut all = true;
                for (_, call, answer) in waiting.iter_mut() {
                    if answer.is_none() {
                        *answer = poll_once(call);
                        all &= answer.is_some();
                    }
                }
                if all {
                    break;
                }
            }
            for (pos, _, answer) in waiting {
                let send = &sends[pos];
                match answer {
                    Some(Ok(outcomes)) => {
                        record(send, &outcomes, &mut acked, &mut stats, &mut failures);
                        if faults
                            && send.kind == SendKind::First
                            && matches!(send.item.payload, Payload::Upload { .. })
                            && rng.random_bool(P_DUPLICATE)
                        {
                            to_resend.push((send.item, SendKind::Resend));
                        }
                    }
                    Some(Err(e)) => failures.push(format!("a send failed without a crash: {e}")),
                    None => failures.push(format!(
                        "a send ({:?} of {:?}, {} event(s)) was not answered after {DRIVE_ROUNDS_MAX} syncs",
                        send.kind,
                        match &send.item.payload {
                            Payload::Api(_) => "api",
                            Payload::Upload { .. } => "upload",
                            Payload::Tick(_) => "tick",
                            Payload::Rewrite { .. } => "rewrite",
                        },
                        send.item.events().len()
                    )),
                }
            }
            for pos in hung_up {
                stats.disconnects += 1;
                to_resend.push((sends[pos].item, SendKind::Retry));
            }
            break;
        }
        if faults && rng.random_bool(P_CRASH_DERIVING) {
            let deadline = Instant::now() + Duration::from_secs(SETTLE_REAL_S);
            loop {
                if log.waiting_appends() > 0 {
                    node.crash(&mut rng, &mut stats, &mut failures);
                    stats.crashes_deriving += 1;
                    deriver = node
                        .restart(deriver, &mut rng, &mut stats, &mut failures)
                        .await;
                    break;
                }
                if deriver.checkpoint.load(Ordering::Acquire) == log.last_seq()
                    || Instant::now() > deadline
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        if let Err(e) = settle(&log, &deriver).await {
            failures.push(e);
            break;
        }
        if let (Some(t), Some((edge, _))) = (topology.as_mut(), node.http.as_ref()) {
            let edge = edge.state.clone();
            let is_last = std::ptr::eq(step, &last);
            t.step(step, &edge, &keys, is_last, &mut rng, &mut failures)
                .await;
        }
        // Progress every simulated day, or every hour in runs shorter than two days.
        let hours_total = (world.end_ns - T0) / 3_600_000_000_000;
        let (unit, unit_ns) = if hours_total >= 48 {
            ("day", 86_400_000_000_000)
        } else {
            ("hour", 3_600_000_000_000)
        };
        let day = (step.end_ns - T0) / unit_ns;
        if day > day_reported {
            day_reported = day;
            progress(format!(
                "{unit} {day}/{}: {} events in the log, {} crashes, {} duplicates sent, {:.1} s real",
                (world.end_ns - T0) / unit_ns,
                log.last_seq(),
                stats.crashes_sending + stats.crashes_deriving,
                stats.duplicates_sent,
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let steps_real = steps_started.elapsed();
    let live = deriver.states().await;
    Node::stop(deriver, &mut stats).await;
    // The read model catches up with the whole log, through whatever faults it still has.
    let deadline = Instant::now() + Duration::from_secs(SETTLE_REAL_S);
    while node.model.held().checkpoint < log.last_seq() {
        if Instant::now() > deadline {
            failures.push(format!(
                "the read model did not catch up in {SETTLE_REAL_S} s (checkpoint {}, log {})",
                node.model.held().checkpoint,
                log.last_seq()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    if let Some(p) = node.projection.take() {
        p.stop().await;
    }
    {
        let held = node.model.held();
        stats.model_transactions = held.transactions;
        stats.model_outages = held.outages;
        stats.model_answers_lost = held.answers_lost;
        stats.model_stalls = held.stalls;
    }
    if stats.quarantined > 0 {
        failures.push(format!("{} aggregate(s) quarantined", stats.quarantined));
    }
    if faults && stats.actor_failures > 0 && stats.recoveries == 0 {
        failures.push(format!(
            "{} actor failure(s), no recovery",
            stats.actor_failures
        ));
    }

    // The whole log.
    let mut envs: Vec<Envelope> = Vec::new();
    let mut log_hash = Sha256::new();
    let mut log_bytes = 0u64;
    let mut from = 1;
    loop {
        match (log.read(from, 10_000), log.read_raw(from, 10_000)) {
            (Ok(batch), Ok(raw)) if !batch.is_empty() => {
                from = batch.last().expect("non-empty").seq + 1;
                for (seq, bytes) in raw {
                    log_hash.update(seq.to_le_bytes());
                    log_hash.update((bytes.len() as u64).to_le_bytes());
                    log_hash.update(&bytes);
                    log_bytes += bytes.len() as u64;
                }
                envs.extend(batch);
            }
            (Ok(_), Ok(_)) => break,
            (Err(e), _) | (_, Err(e)) => {
                failures.push(format!("reading the log: {e}"));
                break;
            }
        }
    }
    stats.events = envs.len() as u64;
    let mut checks = Vec::new();
    checks.push(Check {
        name: "faults handled",
        ok: failures.is_empty(),
        detail: failures.join("; "),
    });
    checks.push(check_acked(&world, &envs, &acked));
    checks.push(check_model(&envs, &node.model.held()));
    let detected: BTreeSet<Expected> = envs
        .iter()
        .filter_map(|e| match &e.event {
            Event::AnomalyDetected(a) => {
                Some(Expected::new(a.kind, a.subject.clone(), a.causes.clone()))
            }
            _ => None,
        })
        .collect();
    stats.detected = detected.len();
    checks.push(check_anomalies(&expected, &detected));
    checks.push(check_truths(&world, &detected, faults));

    let (c, d, state_hash) = check_replay(&envs, &live, rules);
    checks.push(c);
    checks.push(d);
    if let Some(t) = topology.as_mut() {
        checks.extend(t.finish(&envs, &mut log_hash).await);
        stats.edge = Some(t.stats.clone());
    }
    SimOutcome {
        config: config.clone(),
        checks,
        stats,
        state_hash,
        log_hash: hex::encode(log_hash.finalize()),
        simulated: Duration::from_nanos((world.end_ns - T0) as u64),
        real: started.elapsed(),
        steps_real,
        log_bytes,
    }
}

/// Records what the log answered to one send.
fn record(
    send: &Send,
    outcomes: &[AppendOutcome],
    acked: &mut BTreeMap<(TerminalId, u64), Fingerprint>,
    stats: &mut Stats,
    failures: &mut Vec<String>,
) {
    let events = send.item.events();
    if outcomes.len() != events.len() {
        failures.push(format!(
            "{} outcomes for {} events",
            outcomes.len(),
            events.len()
        ));
        return;
    }
    let duplicate = send.kind != SendKind::First;
    match send.kind {
        SendKind::Resend => stats.duplicates_sent += 1,
        SendKind::First | SendKind::Retry => {
            if matches!(send.item.payload, Payload::Upload { .. }) {
                stats.uploads += 1;
            }
        }
    }
    let rewrite = matches!(send.item.payload, Payload::Rewrite { .. });
    for (event, outcome) in events.iter().zip(outcomes) {
        let fine = match outcome {
            AppendOutcome::Appended { .. } => send.kind != SendKind::Resend && !rewrite,
            AppendOutcome::Duplicate { .. } => duplicate && !rewrite,
            AppendOutcome::Conflict { evidence_seq, .. } => rewrite && evidence_seq.is_some(),
        };
        if !fine {
            failures.push(format!(
                "{} {} {} was answered {outcome:?}",
                match send.kind {
                    SendKind::First => "the first send of",
                    SendKind::Resend => "the resend of",
                    SendKind::Retry => "the retry after a hang-up of",
                },
                event.event_type(),
                event.stream()
            ));
        }
        if let Event::ReadingRecorded(r) = event
            && send.kind != SendKind::Resend
            && !rewrite
        {
            stats.readings += 1;
            acked.insert(
                (r.terminal_id.clone(), r.seq),
                fingerprint(&event.canonical().to_bytes()),
            );
        }
    }
}

/// (a) Every acknowledged reading is in the log exactly once, as acknowledged; every reading was.
fn check_acked(
    world: &workload::Workload,
    envs: &[Envelope],
    acked: &BTreeMap<(TerminalId, u64), Fingerprint>,
) -> Check {
    let in_log = readings_by_key(envs);
    let mut problems = Vec::new();
    for (key, fp) in acked {
        match in_log.get(key).map(Vec::as_slice) {
            Some([one]) if one == fp => {}
            Some([_]) => problems.push(format!(
                "{}/{} differs from what was acknowledged",
                key.0, key.1
            )),
            None | Some([]) => problems.push(format!(
                "{}/{} acknowledged but not in the log",
                key.0, key.1
            )),
            Some(many) => problems.push(format!(
                "{}/{} is in the log {} times",
                key.0,
                key.1,
                many.len()
            )),
        }
    }
    for key in in_log.keys().filter(|k| !acked.contains_key(*k)) {
        problems.push(format!(
            "{}/{} is in the log, never acknowledged",
            key.0, key.1
        ));
    }
    for key in world.readings.keys().filter(|k| !acked.contains_key(*k)) {
        problems.push(format!(
            "{}/{} was measured, never acknowledged",
            key.0, key.1
        ));
    }
    Check::from_problems(
        "(a) acknowledged readings in the log exactly once",
        problems,
        || format!("{} readings", acked.len()),
    )
}

/// (e) The read model holds every reading in the log exactly once, with its value, and every anomaly.
fn check_model(envs: &[Envelope], held: &crate::sink::Held) -> Check {
    let mut problems = Vec::new();
    let mut readings = 0usize;
    let mut anomalies = BTreeSet::new();
    for env in envs {
        match &env.event {
            Event::ReadingRecorded(r) => {
                readings += 1;
                match held.readings.get(&(r.terminal_id.clone(), r.seq)) {
                    Some((v, 1)) if *v == r.value => {}
                    Some((v, n)) => problems.push(format!(
                        "{}/{} written {n} time(s) with {v} (log: {})",
                        r.terminal_id, r.seq, r.value
                    )),
                    None => problems.push(format!("{}/{} missing", r.terminal_id, r.seq)),
                }
            }
            Event::AnomalyDetected(_) => {
                anomalies.insert(env.seq);
            }
            _ => {}
        }
    }
    if held.readings.len() != readings {
        problems.push(format!(
            "{} readings in the model, {readings} in the log",
            held.readings.len()
        ));
    }
    if held.anomalies != anomalies {
        problems.push(format!(
            "anomalies: {} in the model, {} in the log, {} in both",
            held.anomalies.len(),
            anomalies.len(),
            held.anomalies.intersection(&anomalies).count()
        ));
    }
    Check::from_problems(
        "(e) the read model holds every reading once and every anomaly",
        problems,
        || {
            format!(
                "{readings} readings, {} anomalies; {} transactions through {} outages, {} lost answers, {} stalls",
                anomalies.len(),
                held.transactions,
                held.outages,
                held.answers_lost,
                held.stalls
            )
        },
    )
}

/// (b) The anomalies detected equal the oracle's.
fn check_anomalies(expected: &BTreeSet<Expected>, detected: &BTreeSet<Expected>) -> Check {
    let hit = expected.intersection(detected).count();
    let missing: Vec<&Expected> = expected.difference(detected).collect();
    let unexpected: Vec<&Expected> = detected.difference(expected).collect();
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(hit, detected.len());
    let recall = ratio(hit, expected.len());
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for e in detected {
        *by_kind.entry(e.kind.name()).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut detail = format!(
        "precision {precision:.3}, recall {recall:.3} ({} expected, {} detected: {})",
        expected.len(),
        detected.len(),
        kinds.join(", ")
    );
    for m in missing.iter().take(20) {
        detail.push_str(&format!("\n    - expected, not detected: {}", m.describe()));
    }
    for u in unexpected.iter().take(20) {
        detail.push_str(&format!("\n    + detected, not expected: {}", u.describe()));
    }
    Check {
        name: "(b) anomalies detected equal the oracle's",
        ok: missing.is_empty() && unexpected.is_empty(),
        detail,
    }
}

/// Every injected truth is detected; without faults, nothing else is.
fn check_truths(world: &workload::Workload, detected: &BTreeSet<Expected>, faults: bool) -> Check {
    let truths: BTreeSet<(AnomalyKind, String)> =
        world.truths.iter().flat_map(|t| t.anomalies()).collect();
    let found: BTreeSet<(AnomalyKind, String)> = detected
        .iter()
        .map(|e| (e.kind, e.subject.clone()))
        .collect();
    let undetected: Vec<String> = truths
        .difference(&found)
        .map(|(k, s)| format!("{} {s}", k.name()))
        .collect();
    let beyond: Vec<String> = found
        .difference(&truths)
        .map(|(k, s)| format!("{} {s}", k.name()))
        .collect();
    let ok = undetected.is_empty() && (faults || beyond.is_empty());
    let mut detail = format!(
        "{} truths → {} (kind, subject); {} more caused by faults",
        world.truths.len(),
        truths.len(),
        beyond.len()
    );
    if !undetected.is_empty() {
        detail.push_str(&format!("; undetected truths: {}", undetected.join(", ")));
    }
    if !faults && !beyond.is_empty() {
        detail.push_str(&format!(
            "; without faults, detected beyond the truths: {}",
            beyond
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Check {
        name: "truths detected, noise silent",
        ok,
        detail,
    }
}

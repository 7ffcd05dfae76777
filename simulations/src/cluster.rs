//! The multi-node topology (cluster issue, part 8): the real cluster nodes — membership, coordinator,
//! planner and cluster log ([`ClusterNode::join_on`]), each with its own sled copy of the log — on the
//! simulated NATS of [`crate::net`], terminals appending through whichever node they pick, and a seeded
//! schedule of faults: nodes killed and restarted on their copies, paused (what they send is held and
//! lands late), partitioned (what they send is lost), JetStream stalled as by a leader election, plus
//! lost acknowledgements, lost core messages and latency throughout.
//!
//! **Checks** at the end, once every fault has healed and every terminal has had every reading
//! acknowledged:
//! - *one writer per shard at a time*: on every shard's subject of the stream, the `OwnerChanged` epochs
//!   only grow, each is written by a connection of the node it names, and every record message between
//!   two of them is written by the connection that wrote the first (no interleaved appends); no node's
//!   copy saw an epoch go back;
//! - *nothing lost*: every acknowledged reading is in every node's copy at the sequence it was
//!   acknowledged with;
//! - *nothing doubled*: no reading is in any copy twice, and every resend was answered `duplicate` at the
//!   first sequence;
//! - *the copies agree*: every node's copy is the same records, byte for byte, as long as the stream;
//! - *liveness*: every reading made was acknowledged once the faults healed.
//!
//! **Reproducing.** The seed fixes the workload, the fault schedule and the network's random choices;
//! the nodes run in real time on a tokio runtime, so the interleaving of their tasks is not fixed: a
//! failing seed reproduces its schedule, and usually its failure, not its exact trace. Run it again with
//! the printed command.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custodian_cluster::cluster_log::ClusterLog;
use custodian_cluster::node::{ClusterNode, ClusterSettings};
use custodian_cluster::ownership::OwnerChanged;
use custodian_events::{Clock, Event};
use custodian_log::contract;
use custodian_log::{AppendOutcome, EventLog, SledLogConfig};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::harness::Check;
use crate::net::{NetConfig, NetStats, SimBus, SimNet, Standing};

/// Probability that an acknowledged batch is sent again later (a terminal that missed the answer).
const P_RESEND: f64 = 0.15;
/// How long a terminal waits for a node's answer before it tries another.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How long the terminals may take, once the faults have healed, to have everything acknowledged.
const DRAIN_WAIT: Duration = Duration::from_secs(90);

/// The faults a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Stall,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Stall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Stall => "stall",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClusterSimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub terminals: usize,
    /// Real seconds of load and faults.
    pub seconds: u64,
    /// Whether the schedule has faults.
    pub faults: bool,
    /// The kinds it draws from (kills 30 %, pauses 25 %, partitions 25 %, stalls 20 %, among those
    /// given).
    pub kinds: Vec<FaultKind>,
    /// How long a fault lasts, in milliseconds: drawn from `min..max` (500..4000).
    pub fault_ms: (u64, u64),
    pub net: NetConfig,
}

/// How often a follower misses a stream message in the seeded runs: one delivery in 500.
pub const DEFAULT_FOLLOW_SKIPS: f64 = 0.002;

impl Default for ClusterSimConfig {
    fn default() -> Self {
        ClusterSimConfig {
            seed: 1,
            nodes: 3,
            terminals: 12,
            seconds: 30,
            faults: true,
            kinds: FaultKind::ALL.to_vec(),
            fault_ms: (500, 4_000),
            net: NetConfig {
                p_follow_skipped: DEFAULT_FOLLOW_SKIPS,
                ..NetConfig::default()
            },
        }
    }
}

impl ClusterSimConfig {
    pub fn command(&self) -> String {
        let kinds = if self.kinds.len() == FaultKind::ALL.len() {
            String::new()
        } else {
            format!(
                " --kinds {}",
                self.kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let durations = if self.fault_ms == (500, 4_000) {
            String::new()
        } else {
            format!(
                " --fault-min-ms {} --fault-max-ms {}",
                self.fault_ms.0, self.fault_ms.1
            )
        };
        let skips = if self.net.p_follow_skipped == DEFAULT_FOLLOW_SKIPS {
            String::new()
        } else {
            format!(" --follow-skips {}", self.net.p_follow_skipped)
        };
        format!(
            "cargo run -p custodian-simulations --bin custodian-sim -- cluster --seed {} --nodes {} --terminals {} --seconds {}{}{}{}{}{}",
            self.seed,
            self.nodes,
            self.terminals,
            self.seconds,
            if self.faults { "" } else { " --no-faults" },
            kinds,
            durations,
            if self.net.fence_appends {
                ""
            } else {
                " --unfenced-appends"
            },
            skips
        )
    }
}

/// What happened in a run.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    pub kills: u64,
    pub pauses: u64,
    /// Pauses that caught an append of the node in flight.
    pub pauses_with_append_held: u64,
    pub partitions: u64,
    pub stalls: u64,
    pub batches_acked: u64,
    pub readings_acked: u64,
    pub resends: u64,
    /// Appends that failed (503, a killed node, no answer in time) and were sent again.
    pub retries: u64,
    /// The longest a terminal went without an acknowledgement while it had something to send.
    pub longest_wait: Duration,
    pub stream_messages: u64,
    pub owner_changes: u64,
    /// Appends whose answer was lost but which had landed, so their owner kept the shard
    /// (`Shards::landed`), summed over every node's lives.
    pub answers_recovered: u64,
    pub net: NetStats,
}

#[derive(Debug, Clone)]
pub struct ClusterOutcome {
    pub config: ClusterSimConfig,
    pub checks: Vec<Check>,
    pub stats: ClusterStats,
    pub real: Duration,
}

impl ClusterOutcome {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

struct WallClock;

impl Clock for WallClock {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64
    }
}

/// A running node as the terminals reach it: its log and a signal that turns true when it is killed.
#[derive(Clone)]
struct Reach {
    log: Arc<ClusterLog>,
    killed: watch::Receiver<bool>,
}

struct Slot {
    id: String,
    dir: PathBuf,
    running: Option<Running>,
}

struct Running {
    node: ClusterNode,
    bus: Arc<SimBus>,
    killed: watch::Sender<bool>,
}

struct Topology {
    net: Arc<SimNet>,
    settings: ClusterSettings,
    slots: Vec<Slot>,
    reach: Arc<Mutex<Vec<Option<Reach>>>>,
    /// `answers_recovered` of the nodes' lives that ended.
    answers_recovered: u64,
}

impl Topology {
    async fn start(&mut self, i: usize) -> Result<(), String> {
        let bus = self.net.connect(&self.slots[i].id);
        let settings = ClusterSettings {
            node_id: self.slots[i].id.clone(),
            ..self.settings.clone()
        };
        // A killed node's copy is closed once its last task has let go of it: retry while sled says
        // the directory is locked.
        let started = Instant::now();
        let node = loop {
            match ClusterNode::join_on(
                bus.clone(),
                &settings,
                SledLogConfig::new(&self.slots[i].dir),
                Arc::new(WallClock),
                None,
            )
            .await
            {
                Ok(n) => break n,
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(format!("{} cannot start: {e}", self.slots[i].id)),
            }
        };
        let (killed, killed_rx) = watch::channel(false);
        self.reach.lock().expect("reach lock")[i] = Some(Reach {
            log: node.log.clone(),
            killed: killed_rx,
        });
        self.slots[i].running = Some(Running { node, bus, killed });
        Ok(())
    }

    /// `kill -9`: every task of the node stops, its connection closes, its requests in flight fail.
    fn kill(&mut self, i: usize) {
        self.reach.lock().expect("reach lock")[i] = None;
        if let Some(r) = self.slots[i].running.take() {
            self.answers_recovered += r
                .node
                .coordinator
                .held
                .lock()
                .expect("held lock")
                .answers_recovered;
            let _ = r.killed.send(true);
            self.net.close(&r.bus);
            r.node.coordinator.stop();
            r.node.membership.stop();
            drop(r);
        }
        self.net.set_standing(&self.slots[i].id, Standing::Up);
    }
}

#[derive(Default)]
struct Ledger {
    /// (terminal, reading) → the sequence it was acknowledged at.
    acked: BTreeMap<(String, u64), u64>,
    problems: Vec<String>,
    made: u64,
}

/// Runs one seed on a runtime of its own.
pub fn run(config: &ClusterSimConfig, progress: &mut dyn FnMut(String)) -> ClusterOutcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run_async(config, progress))
}

async fn run_async(config: &ClusterSimConfig, progress: &mut dyn FnMut(String)) -> ClusterOutcome {
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!(
        "custodian-cluster-sim-{}-{}-{}",
        config.seed,
        std::process::id(),
        started.elapsed().as_nanos() ^ rand::random::<u32>() as u128
    ));
    std::fs::create_dir_all(&root).expect("a temp dir");
    let net = SimNet::new(config.seed, config.net);
    let mut topo = Topology {
        net: net.clone(),
        settings: ClusterSettings {
            urls: String::new(),
            node_id: String::new(),
            name: "sim".into(),
            replicas: 3,
            secrets: Default::default(),
        },
        slots: (0..config.nodes)
            .map(|i| Slot {
                id: format!("n{}", i + 1),
                dir: root.join(format!("n{}", i + 1)),
                running: None,
            })
            .collect(),
        reach: Arc::new(Mutex::new(vec![None; config.nodes])),
        answers_recovered: 0,
    };
    let mut stats = ClusterStats::default();
    let mut checks = Vec::new();
    for i in 0..config.nodes {
        if let Err(e) = topo.start(i).await {
            checks.push(Check {
                name: "start",
                ok: false,
                detail: e,
            });
            return ClusterOutcome {
                config: config.clone(),
                checks,
                stats,
                real: started.elapsed(),
            };
        }
    }
    progress(format!(
        "seed {}: {} nodes joined; {} terminals start",
        config.seed, config.nodes, config.terminals
    ));

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_new = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));
    let resends = Arc::new(AtomicU64::new(0));
    let longest_wait_ms = Arc::new(AtomicU64::new(0));
    let terminals: Vec<_> = (0..config.terminals)
        .map(|k| {
            tokio::spawn(terminal(
                k,
                config.seed,
                topo.reach.clone(),
                ledger.clone(),
                stop_new.clone(),
                retries.clone(),
                resends.clone(),
                longest_wait_ms.clone(),
            ))
        })
        .collect();

    // The fault schedule.
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0x6661_756c_7473);
    let load_for = Duration::from_secs(config.seconds);
    tokio::time::sleep(Duration::from_secs(3).min(load_for)).await;
    while config.faults && started.elapsed() + Duration::from_secs(5) < load_for {
        let gap = Duration::from_millis(rng.random_range(1_000..3_000));
        tokio::time::sleep(gap).await;
        let i = rng.random_range(0..config.nodes);
        let id = topo.slots[i].id.clone();
        let (lo, hi) = config.fault_ms;
        let d = Duration::from_millis(rng.random_range(lo..hi.max(lo + 1)));
        let at = started.elapsed().as_secs_f64();
        let weights: Vec<(FaultKind, u32)> = [
            (FaultKind::Kill, 30),
            (FaultKind::Pause, 25),
            (FaultKind::Partition, 25),
            (FaultKind::Stall, 20),
        ]
        .into_iter()
        .filter(|(k, _)| config.kinds.contains(k))
        .collect();
        let total: u32 = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            break;
        }
        let mut draw = rng.random_range(0..total);
        let kind = weights
            .iter()
            .find(|(_, w)| {
                let hit = draw < *w;
                draw = draw.saturating_sub(*w);
                hit
            })
            .map(|(k, _)| *k)
            .expect("a kind");
        match kind {
            FaultKind::Kill => {
                stats.kills += 1;
                progress(format!("{at:6.1}s  kill -9 {id}; restart after {d:?}"));
                topo.kill(i);
                tokio::time::sleep(d).await;
                if let Err(e) = topo.start(i).await {
                    checks.push(Check {
                        name: "restart",
                        ok: false,
                        detail: e,
                    });
                    break;
                }
            }
            FaultKind::Pause => {
                stats.pauses += 1;
                // At the worst moment: as the node sends an append (which is then held and lands
                // late, after another node may have taken its shards over), or in 200 ms at most.
                net.arm_pause(&id);
                let armed_at = Instant::now();
                while net.standing(&id) != Standing::Paused
                    && armed_at.elapsed() < Duration::from_millis(200)
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let in_flight = net.disarm_pause(&id);
                if in_flight {
                    stats.pauses_with_append_held += 1;
                } else {
                    net.set_standing(&id, Standing::Paused);
                }
                progress(format!(
                    "{at:6.1}s  pause {id} for {d:?}{}",
                    if in_flight {
                        " (an append of its in flight)"
                    } else {
                        ""
                    }
                ));
                tokio::time::sleep(d).await;
                net.set_standing(&id, Standing::Up);
            }
            FaultKind::Partition => {
                stats.partitions += 1;
                progress(format!("{at:6.1}s  partition {id} for {d:?}"));
                net.set_standing(&id, Standing::Partitioned);
                tokio::time::sleep(d).await;
                net.set_standing(&id, Standing::Up);
            }
            FaultKind::Stall => {
                stats.stalls += 1;
                progress(format!("{at:6.1}s  JetStream stalls for {d:?}"));
                net.set_stalled(true);
                tokio::time::sleep(d).await;
                net.set_stalled(false);
            }
        }
    }
    if let Some(rest) = load_for.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    stop_new.store(true, Ordering::Relaxed);
    progress(format!(
        "{:6.1}s  faults over; terminals finish what they have",
        started.elapsed().as_secs_f64()
    ));
    let drained = tokio::time::timeout(DRAIN_WAIT, futures_util::future::join_all(terminals))
        .await
        .is_ok();
    {
        let l = ledger.lock().expect("ledger lock");
        checks.push(Check {
            name: "liveness",
            ok: drained && l.acked.len() as u64 == l.made,
            detail: format!(
                "{} of {} readings acknowledged{}",
                l.acked.len(),
                l.made,
                if drained {
                    String::new()
                } else {
                    format!(" when the terminals had not finished {DRAIN_WAIT:?} after the faults")
                }
            ),
        });
    }

    // Every copy catches up with the stream.
    let stream = net.stream();
    let last = stream.len() as u64;
    let reach: Vec<Reach> = topo
        .reach
        .lock()
        .expect("reach lock")
        .iter()
        .flatten()
        .cloned()
        .collect();
    let mut caught_up = true;
    for r in &reach {
        caught_up &= r.log.caught_up_to(last, Duration::from_secs(30)).await;
    }
    checks.push(Check {
        name: "copies_caught_up",
        ok: caught_up,
        detail: format!("every node's copy filed the stream's {last} messages"),
    });

    checks.push(one_writer_per_shard(&stream, &reach));
    let l = ledger.lock().expect("ledger lock");
    checks.extend(copies(&reach, &l));
    checks.push(Check::from_problems("answers", l.problems.clone(), || {
        "every resend was answered duplicate at its first sequence; no conflict".into()
    }));

    stats.readings_acked = l.acked.len() as u64;
    drop(l);
    stats.retries = retries.load(Ordering::Relaxed);
    stats.resends = resends.load(Ordering::Relaxed);
    stats.longest_wait = Duration::from_millis(longest_wait_ms.load(Ordering::Relaxed));
    stats.stream_messages = last;
    stats.owner_changes = stream
        .iter()
        .filter(|w| w.payload.first() == Some(&b'{'))
        .count() as u64;
    stats.net = net.stats();
    for i in 0..config.nodes {
        topo.kill(i);
    }
    stats.answers_recovered = topo.answers_recovered;
    drop(reach);
    let passed = checks.iter().all(|c| c.ok);
    if passed {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        progress(format!("the nodes' copies are kept in {}", root.display()));
    }
    ClusterOutcome {
        config: config.clone(),
        checks,
        stats,
        real: started.elapsed(),
    }
}

/// A terminal: batches of 1–3 readings through a node picked at random, until acknowledged; now and then
/// an acknowledged batch again.
#[allow(clippy::too_many_arguments)]
async fn terminal(
    k: usize,
    seed: u64,
    reach: Arc<Mutex<Vec<Option<Reach>>>>,
    ledger: Arc<Mutex<Ledger>>,
    stop_new: Arc<AtomicBool>,
    retries: Arc<AtomicU64>,
    resends: Arc<AtomicU64>,
    longest_wait_ms: Arc<AtomicU64>,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ k as u64);
    let id = format!("T-{k}");
    let mut next = 0u64;
    let mut pending: Option<(Vec<u64>, bool)> = None;
    let mut sent_again: Vec<Vec<u64>> = Vec::new();
    let mut waiting_since = Instant::now();
    loop {
        if pending.is_none() {
            if !sent_again.is_empty() && rng.random_bool(P_RESEND) {
                let batch = sent_again.swap_remove(rng.random_range(0..sent_again.len()));
                resends.fetch_add(1, Ordering::Relaxed);
                pending = Some((batch, true));
            } else if stop_new.load(Ordering::Relaxed) {
                return;
            } else {
                let n = rng.random_range(1..=3u64);
                let batch: Vec<u64> = (next..next + n).collect();
                next += n;
                ledger.lock().expect("ledger lock").made += n;
                pending = Some((batch, false));
            }
            waiting_since = Instant::now();
        }
        let (batch, resend) = pending.clone().expect("a batch");
        let nodes = reach.lock().expect("reach lock").len();
        let pick = rng.random_range(0..nodes);
        let Some(mut node) = reach.lock().expect("reach lock")[pick].clone() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let proposals = batch
            .iter()
            .map(|s| contract::reading(&id, *s, *s as i64 * 10 + k as i64))
            .collect();
        let answer = tokio::select! {
            a = node.log.append(proposals) => Some(a),
            _ = node.killed.wait_for(|k| *k) => None,
            _ = tokio::time::sleep(ANSWER_WAIT) => None,
        };
        match answer {
            Some(Ok(outcomes)) => {
                {
                    let mut l = ledger.lock().expect("ledger lock");
                    for (s, o) in batch.iter().zip(outcomes) {
                        let seq = match o {
                            AppendOutcome::Appended { seq } => {
                                if resend {
                                    l.problems.push(format!(
                                        "{id} reading {s} sent again was appended again at {seq}"
                                    ));
                                }
                                seq
                            }
                            AppendOutcome::Duplicate { seq } => seq,
                            AppendOutcome::Conflict { original_seq, .. } => {
                                l.problems.push(format!(
                                    "{id} reading {s} answered conflict ({original_seq})"
                                ));
                                continue;
                            }
                        };
                        match l.acked.get(&(id.clone(), *s)).copied() {
                            Some(first) if first != seq => l.problems.push(format!(
                                "{id} reading {s} acknowledged at {first}, then at {seq}"
                            )),
                            Some(_) => {}
                            None => {
                                l.acked.insert((id.clone(), *s), seq);
                            }
                        }
                    }
                }
                let waited = waiting_since.elapsed().as_millis() as u64;
                longest_wait_ms.fetch_max(waited, Ordering::Relaxed);
                if !resend {
                    sent_again.push(batch);
                }
                pending = None;
                tokio::time::sleep(Duration::from_millis(rng.random_range(10..40))).await;
            }
            _ => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.random_range(20..100))).await;
            }
        }
    }
}

/// One writer per shard at a time, from the stream as written (with each message's writer) and from
/// every copy's view of the epochs.
fn one_writer_per_shard(stream: &[crate::net::Written], reach: &[Reach]) -> Check {
    let mut problems = Vec::new();
    // subject → (epoch, writer of its OwnerChanged)
    let mut current: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    let mut records_checked = 0u64;
    for w in stream {
        match w.payload.first() {
            Some(b'{') => match serde_json::from_slice::<OwnerChanged>(&w.payload) {
                Ok(oc) => {
                    if let Some((epoch, _)) = current.get(w.subject.as_str())
                        && oc.epoch <= *epoch
                    {
                        problems.push(format!(
                            "{}: epoch {} after {epoch} (stream sequence {})",
                            w.subject, oc.epoch, w.seq
                        ));
                    }
                    if w.writer.split('#').next() != Some(oc.node.as_str()) {
                        problems.push(format!(
                            "{}: OwnerChanged for {} written by {} (stream sequence {})",
                            w.subject, oc.node, w.writer, w.seq
                        ));
                    }
                    current.insert(&w.subject, (oc.epoch, &w.writer));
                }
                Err(e) => problems.push(format!("stream sequence {}: {e}", w.seq)),
            },
            _ => {
                records_checked += 1;
                match current.get(w.subject.as_str()) {
                    None => problems.push(format!(
                        "{}: records by {} before any owner (stream sequence {})",
                        w.subject, w.writer, w.seq
                    )),
                    Some((epoch, writer)) if *writer != w.writer => problems.push(format!(
                        "{}: records by {} while {writer} owns it at epoch {epoch} (stream sequence {})",
                        w.subject, w.writer, w.seq
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    for r in reach {
        for (shard, before, after) in r.log.epoch_regressions() {
            problems.push(format!(
                "a copy saw shard {shard}'s epoch go from {before} to {after}"
            ));
        }
    }
    Check::from_problems("one_writer_per_shard", problems, || {
        format!(
            "{} shards' histories: epochs only grow, every OwnerChanged by the node it names, {records_checked} record messages each by its epoch's owner",
            current.len()
        )
    })
}

/// Nothing lost, nothing doubled, and the copies the same.
fn copies(reach: &[Reach], ledger: &Ledger) -> Vec<Check> {
    let mut lost = Vec::new();
    let mut doubled = Vec::new();
    let mut differ = Vec::new();
    let mut first: Option<Vec<(u64, Vec<u8>)>> = None;
    for (n, r) in reach.iter().enumerate() {
        let raw = match r.log.read_raw(1, usize::MAX) {
            Ok(raw) => raw,
            Err(e) => {
                lost.push(format!("node {n}'s copy cannot be read: {e}"));
                continue;
            }
        };
        let events = match r.log.read(1, usize::MAX) {
            Ok(e) => e,
            Err(e) => {
                lost.push(format!("node {n}'s copy cannot be decoded: {e}"));
                continue;
            }
        };
        let mut at: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for env in &events {
            if let Event::ReadingRecorded(reading) = &env.event
                && let Some(before) =
                    at.insert((reading.terminal_id.to_string(), reading.seq), env.seq)
            {
                doubled.push(format!(
                    "{} reading {} at {before} and {} on one copy",
                    reading.terminal_id, reading.seq, env.seq
                ));
            }
        }
        for (key, seq) in &ledger.acked {
            match at.get(key) {
                Some(s) if s == seq => {}
                Some(s) => lost.push(format!(
                    "{} reading {} acknowledged at {seq}, stored at {s}",
                    key.0, key.1
                )),
                None => lost.push(format!(
                    "{} reading {} acknowledged at {seq}, not in a copy",
                    key.0, key.1
                )),
            }
        }
        match &first {
            None => first = Some(raw),
            Some(f) if *f != raw => differ.push(format!(
                "a copy of {} records differs from one of {}",
                raw.len(),
                f.len()
            )),
            Some(_) => {}
        }
    }
    let records = first.as_ref().map_or(0, Vec::len);
    let acked = ledger.acked.len();
    let copies_n = reach.len();
    vec![
        Check::from_problems("nothing_lost", lost, || {
            format!("{acked} acknowledged readings in all {copies_n} copies at their sequences")
        }),
        Check::from_problems("nothing_doubled", doubled, || {
            "no reading twice in any copy".into()
        }),
        Check::from_problems("copies_agree", differ, || {
            format!("{copies_n} copies of {records} records, byte for byte the same")
        }),
    ]
}

/// The seeds' summary table, one line per check.
pub fn report(outcome: &ClusterOutcome) -> String {
    let s = &outcome.stats;
    let mut out = format!(
        "seed {} ({} nodes, {} terminals, {} s{}): {} in {:.1} s\n  faults: {} kills, {} pauses ({} with an append in flight), {} partitions, {} JetStream stalls; network: {} acks lost, {} core messages lost, {} held then delivered, {} stalled writes dropped, {} stream deliveries skipped\n  {} readings acknowledged, {} resends, {} retries, longest wait {:?}; stream {} messages, {} owner changes, {} fenced appends, {} lost compare-and-sets, {} lost answers recovered\n",
        outcome.config.seed,
        outcome.config.nodes,
        outcome.config.terminals,
        outcome.config.seconds,
        if outcome.config.faults {
            ""
        } else {
            ", no faults"
        },
        if outcome.passed() { "PASSED" } else { "FAILED" },
        outcome.real.as_secs_f64(),
        s.kills,
        s.pauses,
        s.pauses_with_append_held,
        s.partitions,
        s.stalls,
        s.net.acks_lost,
        s.net.messages_lost,
        s.net.held_then_delivered,
        s.net.stalled_writes_dropped,
        s.net.follow_skips,
        s.readings_acked,
        s.resends,
        s.retries,
        s.longest_wait,
        s.stream_messages,
        s.owner_changes,
        s.net.fenced_appends,
        s.net.lost_compare_and_sets,
        s.answers_recovered,
    );
    for c in &outcome.checks {
        out.push_str(&format!(
            "  [{}] {}: {}\n",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    if !outcome.passed() {
        out.push_str(&format!("  reproduce: {}\n", outcome.config.command()));
    }
    out
}

/// Seeds whose runs failed, for a summary.
pub fn failed(outcomes: &[ClusterOutcome]) -> BTreeSet<u64> {
    outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.config.seed)
        .collect()
}

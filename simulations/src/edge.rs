//! The edge-and-platform topology (`custodian-sim run --ingest edge`): the terminals upload to an **edge**
//! node — the node the simulator has always run, with its log, deriver and crashes, now carrying the real
//! edge runtime ([`EdgeRuntime`]: the outbox fed from its log behind a checkpoint, the forwarder sealing
//! batches to the platform) — and the edge forwards to a **platform** node of its own (API, log, deriver)
//! over a simulated **link** that goes down for hours, loses requests and loses answers.
//!
//! - The administrator's calls (registrations, manifests) and the clock ticks go to both nodes, in the
//!   plan's order: the edge works from what it was given (the platform's registrations sync is what a
//!   real edge uses; it is covered by `tests/tests/edge.rs`, and manifests have no sync yet).
//! - Every step, once the edge has settled, the simulator moves the edge's log into the outbox
//!   ([`feed_once`]) and, while the link is up, runs forwarder rounds ([`forward_once`]) — each a sealed
//!   batch through the platform's real router, polled in the simulator's order with the platform's log
//!   synced between polls — then settles the platform's deriver. A failed round is tried again in the same
//!   step, at most [`ROUNDS_PER_STEP`] rounds: the forwarder's backoff (at most 30 s) is shorter than a
//!   step, so its waits are not simulated.
//! - After the plan the link comes back for good and the outbox drains.
//!
//! Checks, beside the node's own (a)–(e) on the edge: **(f)** every reading the edge acknowledged is in the
//! platform's log exactly once, with the same content, each terminal's in the edge's order, and the outbox
//! ends empty with no dead letters; **(g)** every anomaly the edge derived reached the platform, reported
//! ahead of the backlog or derived there with the same identity; **(c, platform)** a replay of the
//! platform's log from scratch finds no difference and ends in its deriver's states; **(d, platform)** no
//! derived event is in its log twice.
//!
//! The outbox is a sled database in a temporary directory; it is not crashed (sled's own crash safety is
//! not simulated) but outlives every crash of the edge, as the directory does.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, header};
use custodian_actors::{Deriver, DeriverConfig, MemorySnapshots};
use custodian_events::crypto::{Entropy, Sm2KeyPair, Sm2PublicKey};
use custodian_events::keyring::{Keyring, MASTER_KEY_LEN};
use custodian_events::{Envelope, Event, Fingerprint, TerminalId};
use custodian_log::EventLog;
use custodian_node::edge::forward::{ForwardOnce, forward_once};
use custodian_node::edge::outbox::Outbox;
use custodian_node::edge::run::feed_once;
use custodian_node::edge::wire::EDGE_HEADER;
use custodian_node::edge::{EdgeRuntime, Upstream, UpstreamAnswer};
use custodian_node::sealing::NodeSink;
use custodian_node::state::AppState;
use custodian_tools::terminal_sim::SeededEntropy;
use rand::Rng;
use rand::rngs::SmallRng;
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

use crate::harness::{Check, SimClock};
use crate::http::{ADMIN_TOKEN, HttpNode, Pending, Signatures, TerminalKeys};
use crate::memlog::{MemLog, MemLogConfig, SyncMode};
use crate::workload::{self, Payload};

/// The edge's id at the platform.
pub const EDGE_ID: &str = "EDGE-SIM";
/// Forwarder rounds per 10-minute step at most (the link's capacity).
pub const ROUNDS_PER_STEP: usize = 40;
/// Probability that a step starts a link outage (with faults).
const P_OUTAGE_START: f64 = 0.012;
/// Probability that a request on a working link is lost before it reaches the platform.
const P_REQUEST_LOST: f64 = 0.04;
/// Probability that the platform's answer is lost on the way back (the batch was stored).
const P_ANSWER_LOST: f64 = 0.06;
/// Polls (with a platform sync between two) a forwarder round may take.
const ROUND_POLLS_MAX: usize = 100_000;

/// The simulated link between the edge and the platform.
pub struct SimLink {
    /// The platform's router.
    router: axum::Router,
    state: Mutex<LinkState>,
}

/// What the link does to the next request, and what it did.
#[derive(Debug, Default, Clone)]
pub struct LinkState {
    pub up: bool,
    pub lose_next_request: bool,
    pub lose_next_answer: bool,
    pub refused_down: u64,
    pub requests_lost: u64,
    pub answers_lost: u64,
}

impl SimLink {
    fn call(&self, request: Request<Body>) -> UpstreamAnswer {
        let (lose_answer, refused) = {
            let mut s = self.state.lock().expect("link lock");
            if !s.up {
                s.refused_down += 1;
                (false, Some("the link is down"))
            } else if std::mem::take(&mut s.lose_next_request) {
                s.requests_lost += 1;
                (false, Some("the request was lost on the way (timed out)"))
            } else {
                let lose = std::mem::take(&mut s.lose_next_answer);
                s.answers_lost += u64::from(lose);
                (lose, None)
            }
        };
        if let Some(why) = refused {
            return Box::pin(std::future::ready(Err(why.to_owned())));
        }
        let call = self.router.clone().oneshot(request);
        Box::pin(async move {
            let response = call.await.expect("the router is infallible");
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .map_err(|e| format!("reading the answer: {e}"))?;
            if lose_answer {
                return Err("the answer was lost on the way back (timed out)".into());
            }
            Ok((status, body))
        })
    }
}

impl Upstream for SimLink {
    fn post(&self, path: &str, edge_id: &str, body: Vec<u8>) -> UpstreamAnswer {
        self.call(
            Request::post(path)
                .header(EDGE_HEADER, edge_id)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(body))
                .expect("a valid request"),
        )
    }

    fn get(&self, path: &str) -> UpstreamAnswer {
        self.call(
            Request::get(path)
                .body(Body::empty())
                .expect("a valid request"),
        )
    }
}

/// What the edge runtime of every life of the edge node is attached with.
#[derive(Clone)]
pub struct EdgeAttach {
    pub outbox: Arc<Outbox>,
    pub link: Arc<SimLink>,
    pub platform_key: Sm2PublicKey,
    pub dir: std::path::PathBuf,
}

impl EdgeAttach {
    /// Attaches the edge runtime to a (re)started edge node.
    pub fn attach(&self, state: &Arc<AppState>) {
        EdgeRuntime::attach(
            state,
            EDGE_ID.to_owned(),
            self.outbox.clone(),
            self.link.clone(),
            Some(self.platform_key.clone()),
            self.dir.join("upstream_public_key.pem"),
        );
    }
}

/// The edge's forwarding settings, from the seed: small batches and few uploads per terminal, so that
/// round-robin and the per-terminal order are exercised.
pub fn edge_config(rng: &mut SmallRng) -> custodian_node::config::EdgeConfig {
    custodian_node::config::EdgeConfig {
        id: Some(EDGE_ID.to_owned()),
        upstream: Some("http://platform.sim".to_owned()),
        batch_uploads_max: rng.random_range(4..=120),
        per_terminal_uploads_max: rng.random_range(1..=12),
        ..Default::default()
    }
}

/// Counts of the topology, for the run's stats.
#[derive(Debug, Clone, Default)]
pub struct EdgeStats {
    pub link_outages: u64,
    pub link_down_steps: u64,
    pub rounds: u64,
    pub rounds_failed: u64,
    pub requests_lost: u64,
    pub answers_lost: u64,
    pub batches_delivered: u64,
    pub uploads_forwarded: u64,
    pub anomalies_forwarded: u64,
    /// The most uploads the outbox held at a step's end.
    pub outbox_peak_uploads: u64,
}

/// The platform and the link, beside the edge the simulator runs.
pub struct Topology {
    pub attach: EdgeAttach,
    pub platform: HttpNode,
    pub log: Arc<MemLog>,
    deriver: Option<Deriver>,
    registered: bool,
    /// The world's enterprises, and those the platform has not seen registered yet.
    enterprises: Vec<String>,
    unregistered: BTreeSet<String>,
    outage_steps_left: u64,
    clock: Arc<SimClock>,
    faults: bool,
    /// The checker test: drop one waiting upload from the outbox (see `SimConfig::edge_drops_one`).
    pub drops_one: bool,
    pub stats: EdgeStats,
}

impl Topology {
    /// The platform (its own log, keyring, keys and deriver) and the link; the outbox in a temporary
    /// directory.
    pub fn new(
        seed: u64,
        clock: Arc<SimClock>,
        world: &workload::Workload,
        faults: bool,
    ) -> Result<Topology, String> {
        let entropy: Arc<dyn Entropy> = Arc::new(SeededEntropy::new(seed ^ 0x9147_0000_0000_0005));
        let mut master = [0u8; MASTER_KEY_LEN];
        entropy.fill(&mut master);
        let keyring = Arc::new(Keyring::new(master, entropy.clone()));
        let log = Arc::new(MemLog::new(
            clock.clone(),
            Some(keyring.clone()),
            MemLogConfig {
                sync: SyncMode::OnDemand,
                ..MemLogConfig::default()
            },
        ));
        let platform_key = Sm2KeyPair::generate(&SeededEntropy::new(seed ^ 0x9147_0000_0000_0006));
        let public = Sm2PublicKey::from_der(&platform_key.public_key_der())
            .map_err(|e| format!("the platform key: {e}"))?;
        let derived_seq = Arc::new(AtomicU64::new(0));
        let outbox_secret = keyring.derive("edge outbox");
        let platform = HttpNode::start(
            log.clone(),
            clock.clone(),
            entropy,
            keyring,
            Signatures::On,
            derived_seq.clone(),
            platform_key,
        );
        let deriver = Deriver::start_with(
            log.clone(),
            Arc::new(NodeSink(Arc::downgrade(&platform.state))),
            DeriverConfig {
                rules: workload::rules(),
                ..DeriverConfig::default()
            },
            Arc::new(MemorySnapshots::default()),
            derived_seq,
        );
        let dir = std::env::temp_dir().join(format!(
            "custodian-sim-edge-{}-{seed}-{}",
            std::process::id(),
            DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let outbox = Outbox::open(
            &dir.join("outbox"),
            custodian_node::edge::OUTBOX_BYTES_DEFAULT,
            custodian_node::edge::outbox::OutboxKeys::new(
                &outbox_secret,
                Arc::new(SeededEntropy::new(seed ^ 0x9147_0000_0000_0007)),
            ),
        )
        .map_err(|e| format!("cannot open the outbox in {}: {e}", dir.display()))?;
        let enterprises: Vec<String> = world
            .steps
            .iter()
            .flat_map(|s| &s.items)
            .filter_map(|i| match &i.payload {
                Payload::Api(events) => Some(events),
                _ => None,
            })
            .flatten()
            .filter_map(|e| match e {
                Event::EnterpriseRegistered(r) => Some(r.id.to_string()),
                _ => None,
            })
            .collect();
        Ok(Topology {
            attach: EdgeAttach {
                outbox: Arc::new(outbox),
                link: Arc::new(SimLink {
                    router: custodian_node::api::router(platform.state.clone()),
                    state: Mutex::new(LinkState {
                        up: true,
                        ..LinkState::default()
                    }),
                }),
                platform_key: public,
                dir,
            },
            platform,
            log,
            deriver: Some(deriver),
            registered: false,
            unregistered: enterprises.iter().cloned().collect(),
            enterprises,
            outage_steps_left: 0,
            clock,
            faults,
            drops_one: false,
            stats: EdgeStats::default(),
        })
    }

    /// One step at the platform: the administrator's calls and ticks of `items`, the edge's log into its
    /// outbox, forwarder rounds while the link is up, the platform's deriver settled. `faults`: link
    /// outages, lost requests and lost answers; `last`: the link is up for good and the outbox drains.
    pub async fn step(
        &mut self,
        step: &workload::Step,
        edge: &Arc<AppState>,
        keys: &TerminalKeys,
        last: bool,
        rng: &mut SmallRng,
        failures: &mut Vec<String>,
    ) {
        let (clock, faults) = (self.clock.clone(), self.faults);
        for item in &step.items {
            let mut call: Pending = match &item.payload {
                Payload::Api(events) => {
                    clock.set(item.at_ns);
                    for e in events {
                        if let Event::EnterpriseRegistered(r) = e {
                            self.unregistered.remove(r.id.as_str());
                        }
                    }
                    self.platform.api(keys, events.clone())
                }
                Payload::Tick(at_ns) => {
                    clock.set(item.at_ns);
                    self.platform.tick(*at_ns)
                }
                _ => continue,
            };
            if let Err(e) = crate::harness::drive(&self.log, &mut call, ROUND_POLLS_MAX) {
                failures.push(format!("the platform's administrator call failed: {e}"));
            }
        }
        clock.set(step.end_ns);
        if !self.registered && self.unregistered.is_empty() {
            self.registered = true;
            if let Err(e) = self.register_edge(edge) {
                failures.push(e);
            }
        }
        // The edge's log into its outbox (the feeder), all of it.
        let Some(rt) = edge.edge.get().cloned() else {
            failures.push("the edge node has no edge runtime".into());
            return;
        };
        loop {
            match feed_once(edge, &rt) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failures.push(format!("the outbox feeder: {e}"));
                    break;
                }
            }
        }
        if self.drops_one && self.attach.outbox.counts().uploads > 0 {
            self.drops_one = false;
            let batch = self
                .attach
                .outbox
                .next_batch(custodian_node::edge::outbox::BatchLimits {
                    uploads_max: 1,
                    bytes_max: usize::MAX,
                    per_terminal_max: 1,
                    anomalies_max: 0,
                });
            if let Ok(batch) = batch
                && let Some((id, entry)) = batch.uploads.first()
            {
                let _ = self
                    .attach
                    .outbox
                    .remove(&[(*id, entry.terminal_id.as_str())], &[]);
            }
        }
        let held = self.attach.outbox.counts().uploads;
        self.stats.outbox_peak_uploads = self.stats.outbox_peak_uploads.max(held);
        // The link.
        let up = if last || !faults {
            true
        } else if self.outage_steps_left > 0 {
            self.outage_steps_left -= 1;
            false
        } else if rng.random_bool(P_OUTAGE_START) {
            // 1 to 30 hours, the occasional one longer than a day.
            self.outage_steps_left = rng.random_range(6..=180) - 1;
            self.stats.link_outages += 1;
            false
        } else {
            true
        };
        self.attach.link.state.lock().expect("link lock").up = up;
        if !up {
            self.stats.link_down_steps += 1;
            return;
        }
        if !self.registered {
            return;
        }
        let rounds_max = if last { usize::MAX } else { ROUNDS_PER_STEP };
        let mut rounds = 0;
        let mut failed_in_a_row = 0;
        while rounds < rounds_max {
            rounds += 1;
            if faults && !last {
                let mut s = self.attach.link.state.lock().expect("link lock");
                s.lose_next_request = rng.random_bool(P_REQUEST_LOST);
                s.lose_next_answer = rng.random_bool(P_ANSWER_LOST);
            }
            self.stats.rounds += 1;
            let outcome = match poll_to_end(&self.log, Box::pin(forward_once(&rt))) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("a forwarder round: {e}"));
                    break;
                }
            };
            match outcome {
                ForwardOnce::Idle => break,
                ForwardOnce::Delivered { uploads, anomalies } => {
                    failed_in_a_row = 0;
                    self.stats.batches_delivered += 1;
                    self.stats.uploads_forwarded += uploads as u64;
                    self.stats.anomalies_forwarded += anomalies as u64;
                }
                ForwardOnce::Failed(why) => {
                    self.stats.rounds_failed += 1;
                    failed_in_a_row += 1;
                    if failed_in_a_row > 20 {
                        failures.push(format!(
                            "the forwarder failed 20 times in a row on a working link: {why}"
                        ));
                        break;
                    }
                }
            }
        }
        let s = self.attach.link.state.lock().expect("link lock").clone();
        self.stats.requests_lost = s.requests_lost;
        self.stats.answers_lost = s.answers_lost;
        if let Err(e) = self.settle().await {
            failures.push(e);
        }
    }

    /// `POST /v1/edges` at the platform: the edge's key, every enterprise.
    fn register_edge(&self, edge: &Arc<AppState>) -> Result<(), String> {
        let body = serde_json::json!({
            "id": EDGE_ID,
            "public_key_pem": edge.access.tokens.key().public_key_pem(),
            "enterprise_ids": self.enterprises,
        });
        let request = Request::post("/v1/edges")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::from(body.to_string()))
            .expect("a valid request");
        let call = custodian_node::api::router(self.platform.state.clone()).oneshot(request);
        let (status, bytes) = poll_to_end(
            &self.log,
            Box::pin(async move {
                let r = call.await.expect("infallible");
                let status = r.status();
                (
                    status,
                    axum::body::to_bytes(r.into_body(), usize::MAX)
                        .await
                        .unwrap_or_default(),
                )
            }),
        )?;
        if !status.is_success() {
            return Err(format!(
                "registering the edge answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        Ok(())
    }

    async fn settle(&self) -> Result<(), String> {
        match &self.deriver {
            Some(d) => crate::harness::settle(&self.log, d)
                .await
                .map_err(|e| format!("the platform: {e}")),
            None => Ok(()),
        }
    }

    /// Stops the platform's deriver and checks the topology: (f), (g), and the platform's (c) and (d).
    /// `log_hash` goes on over the platform's records.
    pub async fn finish(&mut self, edge_envs: &[Envelope], log_hash: &mut Sha256) -> Vec<Check> {
        let mut problems = Vec::new();
        if let Err(e) = self.settle().await {
            problems.push(e);
        }
        let live = match self.deriver.take() {
            Some(d) => {
                let live = d.states().await;
                d.stop().await;
                live
            }
            None => Default::default(),
        };
        let mut envs = Vec::new();
        let mut from = 1;
        loop {
            match (self.log.read(from, 10_000), self.log.read_raw(from, 10_000)) {
                (Ok(batch), Ok(raw)) if !batch.is_empty() => {
                    from = batch.last().expect("non-empty").seq + 1;
                    for (seq, bytes) in raw {
                        log_hash.update(seq.to_le_bytes());
                        log_hash.update((bytes.len() as u64).to_le_bytes());
                        log_hash.update(&bytes);
                    }
                    envs.extend(batch);
                }
                (Ok(_), Ok(_)) => break,
                (Err(e), _) | (_, Err(e)) => {
                    problems.push(format!("reading the platform's log: {e}"));
                    break;
                }
            }
        }
        let mut checks = vec![
            check_forwarded(edge_envs, &envs, &self.attach.outbox, problems),
            check_anomalies_reached(edge_envs, &envs),
        ];
        let (c, d, _) = crate::harness::check_replay(&envs, &live, workload::rules());
        checks.push(Check {
            name: "(c, platform) replay of the platform's log equals its live run",
            ..c
        });
        checks.push(Check {
            name: "(d, platform) no derived event twice in the platform's log",
            ..d
        });
        let _ = self.attach.outbox.flush();
        checks
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.attach.dir);
    }
}

static DIRS: AtomicU64 = AtomicU64::new(0);

/// Polls `call` to its end in the simulator's order, syncing the platform's log between two polls.
fn poll_to_end<T>(
    log: &MemLog,
    call: std::pin::Pin<Box<dyn Future<Output = T> + '_>>,
) -> Result<T, String> {
    let mut call = Box::pin(tokio::task::unconstrained(call));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..ROUND_POLLS_MAX {
        if let std::task::Poll::Ready(v) = call.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        log.sync();
    }
    Err(format!("not done after {ROUND_POLLS_MAX} polls"))
}

/// (f) Every reading of the edge's log is in the platform's exactly once, the same, each terminal's in the
/// same order; the outbox is empty and holds no dead letters.
fn check_forwarded(
    edge: &[Envelope],
    platform: &[Envelope],
    outbox: &Outbox,
    mut problems: Vec<String>,
) -> Check {
    fn order(envs: &[Envelope]) -> BTreeMap<TerminalId, Vec<u64>> {
        let mut order: BTreeMap<TerminalId, Vec<u64>> = BTreeMap::new();
        for env in envs {
            if let Event::ReadingRecorded(r) = &env.event {
                order.entry(r.terminal_id.clone()).or_default().push(r.seq);
            }
        }
        order
    }
    let (at_edge, edge_order) = (crate::harness::readings_by_key(edge), order(edge));
    let (at_platform, platform_order) =
        (crate::harness::readings_by_key(platform), order(platform));
    for (key, fps) in &at_edge {
        match at_platform.get(key).map(Vec::as_slice) {
            Some([one]) if Some(one) == fps.first() => {}
            Some([_]) => problems.push(format!("{}/{} differs at the platform", key.0, key.1)),
            None | Some([]) => problems.push(format!(
                "{}/{} acknowledged by the edge, not at the platform",
                key.0, key.1
            )),
            Some(many) => problems.push(format!(
                "{}/{} is at the platform {} times",
                key.0,
                key.1,
                many.len()
            )),
        }
    }
    for key in at_platform.keys().filter(|k| !at_edge.contains_key(*k)) {
        problems.push(format!(
            "{}/{} is at the platform, not at the edge",
            key.0, key.1
        ));
    }
    let mut out_of_order = 0;
    for (terminal, order) in &edge_order {
        if platform_order.get(terminal) != Some(order) {
            out_of_order += 1;
            if out_of_order <= 3 {
                problems.push(format!(
                    "terminal {terminal}'s readings reached the platform in another order than the edge's"
                ));
            }
        }
    }
    let c = outbox.counts();
    if c.uploads + c.anomalies + c.dead_letters > 0 {
        problems.push(format!(
            "the outbox still holds {} upload(s), {} anomaly(ies), {} dead letter(s)",
            c.uploads, c.anomalies, c.dead_letters
        ));
    }
    Check::from_problems(
        "(f) the edge's readings at the platform exactly once, in order",
        problems,
        || {
            format!(
                "{} readings of {} terminals, each terminal's in the edge's order; outbox empty",
                at_edge.len(),
                edge_order.len()
            )
        },
    )
}

/// (g) Every anomaly the edge derived is at the platform: reported by the edge or derived there, by id.
fn check_anomalies_reached(edge: &[Envelope], platform: &[Envelope]) -> Check {
    let mut reported = BTreeSet::new();
    let mut derived = BTreeSet::new();
    let mut kinds: BTreeMap<Fingerprint, &'static str> = BTreeMap::new();
    for env in platform {
        match &env.event {
            Event::AnomalyReported(r) => {
                reported.insert(r.anomaly.anomaly_id);
            }
            Event::AnomalyDetected(a) => {
                derived.insert(a.anomaly_id);
                kinds.insert(a.anomaly_id, a.kind.name());
            }
            _ => {}
        }
    }
    let at_edge: BTreeSet<Fingerprint> = edge
        .iter()
        .filter_map(|e| match &e.event {
            Event::AnomalyDetected(a) => {
                kinds.insert(a.anomaly_id, a.kind.name());
                Some(a.anomaly_id)
            }
            _ => None,
        })
        .collect();
    let by_kind = |ids: &mut dyn Iterator<Item = &Fingerprint>| {
        let mut n: BTreeMap<&str, usize> = BTreeMap::new();
        for id in ids {
            *n.entry(kinds.get(id).copied().unwrap_or("?")).or_default() += 1;
        }
        let parts: Vec<String> = n.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    };
    let problems: Vec<String> = at_edge
        .iter()
        .filter(|id| !reported.contains(*id) && !derived.contains(*id))
        .map(|id| {
            format!(
                "anomaly {} of the edge is not at the platform",
                hex::encode(id)
            )
        })
        .collect();
    Check::from_problems(
        "(g) the edge's anomalies reached the platform",
        problems,
        || {
            format!(
                "{} at the edge: {} reported ahead, {} derived by the platform too with the same identity; \
                 derived only by the platform, from the order readings reached it: {}; only by the edge: {}",
                at_edge.len(),
                at_edge.intersection(&reported).count(),
                at_edge.intersection(&derived).count(),
                by_kind(&mut derived.difference(&at_edge)),
                by_kind(&mut at_edge.difference(&derived)),
            )
        },
    )
}

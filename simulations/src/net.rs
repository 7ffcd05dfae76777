//! The simulated NATS of the multi-node topology ([`crate::cluster`]): one in-memory JetStream (a
//! key-value bucket with compare-and-set revisions, a stream with subject-fenced appends and ordered
//! followers) and core publish/subscribe/request, behind the cluster's own
//! [`Bus`](custodian_cluster::bus::Bus) trait — so the real membership, coordinator, planner and cluster
//! log run on it unchanged — with the faults the simulator drives:
//!
//! - **pause** of a node (SIGSTOP, or a proxy that stops forwarding with the TCP connection kept): every
//!   operation it starts and every message to it is *held* and happens when it resumes — a write its
//!   caller has long given up on lands late. The simulator pauses a node at the worst moment it can: as
//!   it sends an append ([`SimNet::arm_pause`]), or after 200 ms if it sends none;
//! - **partition** of a node (its connection gone): what it sends and what is sent to it is *lost*; its
//!   operations fail at their deadline;
//! - **kill** of a node: its connection closes (subscriptions gone, further operations refused);
//!   what it had already sent still lands;
//! - **stall** of JetStream (a leader election): bucket and stream operations wait for the stall to end;
//!   those whose callers gave up land afterwards or not, at random;
//! - **lost acknowledgements**: a write that is applied but whose caller hears only a timeout;
//! - latency: every operation waits a random 0 – `latency_max` first.
//!
//! Every message of the stream remembers the connection that wrote it (which the real JetStream does not
//! tell): the checkers use it to prove one writer per shard at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use custodian_cluster::bus::{
    APPEND_TIMEOUT, BoxFuture, BoxStream, Bus, BusError, Incoming, REQUEST_TIMEOUT, StreamMessage,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// How long a core request waits for its answer (async-nats' default).
const CORE_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's standing on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Up,
    Paused,
    Partitioned,
}

/// Knobs of the network's own misbehaviour.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    pub latency_max: Duration,
    /// Probability that a bucket or stream write is applied but its caller hears a timeout.
    pub p_ack_lost: f64,
    /// Probability that a core message (a heartbeat, a forwarded request, an answer) is lost.
    pub p_message_lost: f64,
    /// Whether appends check their expected last subject sequence (always, but for testing the
    /// checkers: a JetStream that does not fence lets a late append of an old owner in).
    pub fence_appends: bool,
    /// Probability that a follower's delivery skips the stream message due next, as a lossy ordered
    /// consumer would (a message dropped on a slow consumer, a consumer recreated past it): the stream
    /// holds it, the follower never sees it unless it asks again.
    pub p_follow_skipped: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency_max: Duration::from_millis(3),
            p_ack_lost: 0.01,
            p_message_lost: 0.005,
            fence_appends: true,
            p_follow_skipped: 0.0,
        }
    }
}

/// One message of the stream, with the connection that wrote it.
#[derive(Debug, Clone)]
pub struct Written {
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    /// `node#connection`.
    pub writer: String,
}

struct Sub {
    conn: u64,
    node: String,
    subject: String,
    tx: mpsc::UnboundedSender<Incoming>,
}

#[derive(Default)]
struct State {
    kv: BTreeMap<String, (Bytes, u64)>,
    kv_rev: u64,
    stream: Vec<Written>,
    last_by_subject: HashMap<String, u64>,
    subs: Vec<Sub>,
    standing: BTreeMap<String, Standing>,
    closed: std::collections::BTreeSet<u64>,
    stalled: bool,
    replies: HashMap<String, oneshot::Sender<Bytes>>,
    /// Nodes to pause the moment they next append (the worst moment: an append in flight).
    pause_armed: std::collections::BTreeSet<String>,
}

/// What happened on the network (for the run's report).
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub acks_lost: u64,
    pub messages_lost: u64,
    pub held_then_delivered: u64,
    pub stalled_writes_dropped: u64,
    pub fenced_appends: u64,
    pub lost_compare_and_sets: u64,
    /// Stream messages a follower's delivery skipped (see [`NetConfig::p_follow_skipped`]).
    pub follow_skips: u64,
}

/// The simulated NATS.
pub struct SimNet {
    state: Mutex<State>,
    /// The stream's length, for followers.
    len: watch::Sender<u64>,
    /// Bumped on every change of standing or stall.
    faults: watch::Sender<u64>,
    rng: Mutex<SmallRng>,
    config: NetConfig,
    next_conn: AtomicU64,
    next_inbox: AtomicU64,
    stats: Mutex<NetStats>,
    /// The stream's identity: every `SimNet` is a stream made anew.
    id: String,
}

/// Tells the streams of two `SimNet`s apart, within one process.
static NETS_MADE: AtomicU64 = AtomicU64::new(0);

impl SimNet {
    pub fn new(seed: u64, config: NetConfig) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State::default()),
            len: watch::channel(0).0,
            faults: watch::channel(0).0,
            rng: Mutex::new(SmallRng::seed_from_u64(seed ^ 0x006e_6574_776f_726b)),
            config,
            next_conn: AtomicU64::new(1),
            next_inbox: AtomicU64::new(1),
            stats: Mutex::new(NetStats::default()),
            id: format!(
                "simulated stream {} of seed {seed}",
                NETS_MADE.fetch_add(1, Ordering::Relaxed) + 1
            ),
        })
    }

    /// A new connection of `node` (a process start).
    pub fn connect(self: &Arc<Self>, node: &str) -> Arc<SimBus> {
        self.state
            .lock()
            .expect("net lock")
            .standing
            .entry(node.to_owned())
            .or_insert(Standing::Up);
        Arc::new(SimBus {
            net: self.clone(),
            node: node.to_owned(),
            conn: self.next_conn.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Closes a connection (its process was killed): its subscriptions go, its operations are refused.
    pub fn close(&self, bus: &SimBus) {
        let mut s = self.state.lock().expect("net lock");
        s.closed.insert(bus.conn);
        s.subs.retain(|sub| sub.conn != bus.conn);
    }

    pub fn set_standing(&self, node: &str, standing: Standing) {
        self.state
            .lock()
            .expect("net lock")
            .standing
            .insert(node.to_owned(), standing);
        self.faults.send_modify(|n| *n += 1);
    }

    /// Pauses `node` the moment it next sends an append — so that append is held and lands late, the
    /// case fencing exists for. [`SimNet::standing`] tells when it happened.
    pub fn arm_pause(&self, node: &str) {
        self.state
            .lock()
            .expect("net lock")
            .pause_armed
            .insert(node.to_owned());
    }

    /// Disarms a pause that has not happened yet; whether it had.
    pub fn disarm_pause(&self, node: &str) -> bool {
        !self
            .state
            .lock()
            .expect("net lock")
            .pause_armed
            .remove(node)
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.state.lock().expect("net lock").stalled = stalled;
        self.faults.send_modify(|n| *n += 1);
    }

    /// The whole stream as written.
    pub fn stream(&self) -> Vec<Written> {
        self.state.lock().expect("net lock").stream.clone()
    }

    pub fn stats(&self) -> NetStats {
        self.stats.lock().expect("stats lock").clone()
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("rng lock").random_bool(p)
    }

    async fn latency(&self) {
        let max = self.config.latency_max.as_micros() as u64;
        if max > 0 {
            let us = self.rng.lock().expect("rng lock").random_range(0..=max);
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }

    pub fn standing(&self, node: &str) -> Standing {
        *self
            .state
            .lock()
            .expect("net lock")
            .standing
            .get(node)
            .unwrap_or(&Standing::Up)
    }

    /// Waits until `node` may act: at once when up; when paused, until it resumes (the operation is held,
    /// then happens); `false` when it is partitioned (the operation is lost) or its connection closed.
    async fn pass(&self, node: &str, conn: u64) -> bool {
        let mut faults = self.faults.subscribe();
        let mut held = false;
        loop {
            if self.state.lock().expect("net lock").closed.contains(&conn) {
                return false;
            }
            match self.standing(node) {
                Standing::Up => {
                    if held {
                        self.stats.lock().expect("stats lock").held_then_delivered += 1;
                    }
                    return true;
                }
                Standing::Partitioned => return false,
                Standing::Paused => {
                    held = true;
                    if faults.changed().await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits out a JetStream stall; `false` when the write is to be dropped after one.
    async fn through_stall(&self) -> bool {
        let mut faults = self.faults.subscribe();
        let mut waited = false;
        while self.state.lock().expect("net lock").stalled {
            waited = true;
            if faults.changed().await.is_err() {
                return false;
            }
        }
        if waited && self.chance(0.5) {
            self.stats
                .lock()
                .expect("stats lock")
                .stalled_writes_dropped += 1;
            return false;
        }
        true
    }

    /// Delivers a core message to every subscriber of `subject` (or to a request's waiting caller).
    fn deliver(self: &Arc<Self>, subject: &str, incoming: Incoming) {
        if let Some(tx) = self.state.lock().expect("net lock").replies.remove(subject) {
            let _ = tx.send(incoming.payload);
            return;
        }
        let targets: Vec<(String, u64, mpsc::UnboundedSender<Incoming>)> = {
            let mut s = self.state.lock().expect("net lock");
            s.subs.retain(|sub| !sub.tx.is_closed());
            s.subs
                .iter()
                .filter(|sub| sub.subject == subject)
                .map(|sub| (sub.node.clone(), sub.conn, sub.tx.clone()))
                .collect()
        };
        for (node, conn, tx) in targets {
            let net = self.clone();
            let msg = incoming.clone();
            tokio::spawn(async move {
                if net.pass(&node, conn).await {
                    let _ = tx.send(msg);
                } else {
                    net.stats.lock().expect("stats lock").messages_lost += 1;
                }
            });
        }
    }
}

/// One node's connection to the simulated NATS.
pub struct SimBus {
    net: Arc<SimNet>,
    node: String,
    conn: u64,
}

impl SimBus {
    pub fn writer(&self) -> String {
        format!("{}#{}", self.node, self.conn)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs `op` on the network after the sender's latency, pause or partition and any stall, as a task
    /// of its own (a write that has left the process lands even if its caller gives up); the caller
    /// waits up to `deadline`. A lost acknowledgement applies the write and answers a timeout.
    async fn write<T: Send + 'static>(
        &self,
        deadline: Duration,
        op: impl FnOnce(&mut State) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        let (tx, rx) = oneshot::channel();
        let net = self.net.clone();
        let (node, conn) = (self.node.clone(), self.conn);
        tokio::spawn(async move {
            net.latency().await;
            if !net.pass(&node, conn).await || !net.through_stall().await {
                return;
            }
            let result = {
                let mut s = net.state.lock().expect("net lock");
                let r = op(&mut s);
                let len = s.stream.len() as u64;
                drop(s);
                net.len.send_if_modified(|l| {
                    let moved = *l != len;
                    *l = len;
                    moved
                });
                r
            };
            if result.is_ok() && net.chance(net.config.p_ack_lost) {
                net.stats.lock().expect("stats lock").acks_lost += 1;
                return;
            }
            let _ = tx.send(result);
        });
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(BusError::Other(format!(
                "timed out after {deadline:?} (simulated)"
            ))),
        }
    }

    /// A read: after latency, pause and stall; fails at `deadline` when partitioned.
    async fn read<T>(&self, op: impl FnOnce(&State) -> T) -> Result<T, BusError> {
        let started = Instant::now();
        self.net.latency().await;
        let ok = tokio::time::timeout(REQUEST_TIMEOUT, async {
            self.net.pass(&self.node, self.conn).await && {
                let mut faults = self.net.faults.subscribe();
                while self.net.state.lock().expect("net lock").stalled {
                    if faults.changed().await.is_err() {
                        break;
                    }
                }
                true
            }
        })
        .await;
        match ok {
            Ok(true) => Ok(op(&self.net.state.lock().expect("net lock"))),
            _ => {
                tokio::time::sleep_until(started + REQUEST_TIMEOUT).await;
                Err(BusError::Other("timed out (simulated)".into()))
            }
        }
    }
}

impl Bus for SimBus {
    fn kv_get(&self, key: String) -> BoxFuture<'_, Result<Option<(Bytes, u64)>, BusError>> {
        Box::pin(async move { self.read(|s| s.kv.get(&key).cloned()).await })
    }

    fn kv_create(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        let net = self.net.clone();
        Box::pin(async move {
            self.write(REQUEST_TIMEOUT, move |s| {
                if s.kv.contains_key(&key) {
                    net.stats.lock().expect("stats lock").lost_compare_and_sets += 1;
                    return Err(BusError::WrongLast);
                }
                s.kv_rev += 1;
                s.kv.insert(key, (value, s.kv_rev));
                Ok(s.kv_rev)
            })
            .await
        })
    }

    fn kv_update(
        &self,
        key: String,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        let net = self.net.clone();
        Box::pin(async move {
            self.write(REQUEST_TIMEOUT, move |s| {
                if s.kv.get(&key).map(|(_, r)| *r) != Some(revision) {
                    net.stats.lock().expect("stats lock").lost_compare_and_sets += 1;
                    return Err(BusError::WrongLast);
                }
                s.kv_rev += 1;
                s.kv.insert(key, (value, s.kv_rev));
                Ok(s.kv_rev)
            })
            .await
        })
    }

    fn kv_put(&self, key: String, value: Bytes) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.write(REQUEST_TIMEOUT, move |s| {
                s.kv_rev += 1;
                s.kv.insert(key, (value, s.kv_rev));
                Ok(s.kv_rev)
            })
            .await
        })
    }

    fn append(
        &self,
        subject: String,
        payload: Bytes,
        expected: u64,
    ) -> BoxFuture<'_, Result<u64, BusError>> {
        let net = self.net.clone();
        let writer = self.writer();
        let fence = self.net.config.fence_appends;
        let armed = {
            let mut st = self.net.state.lock().expect("net lock");
            let armed = st.pause_armed.remove(&self.node);
            if armed {
                st.standing.insert(self.node.clone(), Standing::Paused);
            }
            armed
        };
        if armed {
            self.net.faults.send_modify(|n| *n += 1);
        }
        Box::pin(async move {
            self.write(APPEND_TIMEOUT, move |s| {
                let last = s.last_by_subject.get(&subject).copied().unwrap_or(0);
                if fence && last != expected {
                    net.stats.lock().expect("stats lock").fenced_appends += 1;
                    return Err(BusError::WrongLast);
                }
                let seq = s.stream.len() as u64 + 1;
                s.last_by_subject.insert(subject.clone(), seq);
                s.stream.push(Written {
                    seq,
                    subject,
                    payload,
                    writer,
                });
                Ok(seq)
            })
            .await
        })
    }

    fn last_subject_seq(&self, subject: String) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move {
            self.read(|s| s.last_by_subject.get(&subject).copied().unwrap_or(0))
                .await
        })
    }

    fn stream_last_seq(&self) -> BoxFuture<'_, Result<u64, BusError>> {
        Box::pin(async move { self.read(|s| s.stream.len() as u64).await })
    }

    fn stream_id(&self) -> BoxFuture<'_, Result<String, BusError>> {
        Box::pin(async move { self.read(|_| ()).await.map(|()| self.net.id.clone()) })
    }

    fn stream_message(&self, seq: u64) -> BoxFuture<'_, Result<Option<StreamMessage>, BusError>> {
        Box::pin(async move {
            self.read(|s| {
                s.stream
                    .get((seq as usize).wrapping_sub(1))
                    .map(|w| (w.seq, w.subject.clone(), w.payload.clone()))
            })
            .await
        })
    }

    fn follow(
        &self,
        from_seq: u64,
    ) -> BoxFuture<'_, Result<BoxStream<Result<StreamMessage, BusError>>, BusError>> {
        Box::pin(async move {
            self.read(|_| ()).await?;
            let net = self.net.clone();
            let (node, conn) = (self.node.clone(), self.conn);
            let len = net.len.subscribe();
            let next = from_seq.max(1);
            let stream = futures_util::stream::unfold(
                (net, node, conn, len, next),
                |(net, node, conn, mut len, mut next)| async move {
                    loop {
                        // A partitioned follower ends (the caller recreates it); a paused one waits.
                        if !net.pass(&node, conn).await {
                            return None;
                        }
                        if *len.borrow_and_update() >= next {
                            if net.chance(net.config.p_follow_skipped) {
                                net.stats.lock().expect("stats lock").follow_skips += 1;
                                next += 1;
                                continue;
                            }
                            let msg = {
                                let s = net.state.lock().expect("net lock");
                                let w = &s.stream[(next - 1) as usize];
                                (w.seq, w.subject.clone(), w.payload.clone())
                            };
                            net.latency().await;
                            return Some((Ok(msg), (net, node, conn, len, next + 1)));
                        }
                        let mut faults = net.faults.subscribe();
                        tokio::select! {
                            changed = len.changed() => if changed.is_err() { return None },
                            _ = faults.changed() => {}
                        }
                    }
                },
            );
            let stream: BoxStream<Result<StreamMessage, BusError>> = Box::pin(stream);
            Ok(stream)
        })
    }

    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.send(subject, payload, None);
            Ok(())
        })
    }

    fn request(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<Bytes, BusError>> {
        Box::pin(async move {
            self.net.latency().await;
            if !self.net.pass(&self.node, self.conn).await {
                tokio::time::sleep(CORE_REQUEST_TIMEOUT).await;
                return Err(BusError::Other("request timed out (simulated)".into()));
            }
            let responders = {
                let s = self.net.state.lock().expect("net lock");
                s.subs
                    .iter()
                    .any(|sub| sub.subject == subject && !sub.tx.is_closed())
            };
            if !responders {
                return Err(BusError::NoResponders);
            }
            let inbox = format!(
                "_INBOX.{}",
                self.net.next_inbox.fetch_add(1, Ordering::Relaxed)
            );
            let (tx, rx) = oneshot::channel();
            self.net
                .state
                .lock()
                .expect("net lock")
                .replies
                .insert(inbox.clone(), tx);
            self.send(subject, payload, Some(inbox.clone()));
            let answer = tokio::time::timeout(CORE_REQUEST_TIMEOUT, rx).await;
            self.net
                .state
                .lock()
                .expect("net lock")
                .replies
                .remove(&inbox);
            match answer {
                Ok(Ok(payload)) => Ok(payload),
                _ => Err(BusError::Other("request timed out (simulated)".into())),
            }
        })
    }

    fn subscribe(&self, subject: String) -> BoxFuture<'_, Result<BoxStream<Incoming>, BusError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            {
                let mut s = self.net.state.lock().expect("net lock");
                if s.closed.contains(&self.conn) {
                    return Err(BusError::Other("connection closed".into()));
                }
                s.subs.push(Sub {
                    conn: self.conn,
                    node: self.node.clone(),
                    subject,
                    tx,
                });
            }
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            let stream: BoxStream<Incoming> = Box::pin(stream);
            Ok(stream)
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn max_payload(&self) -> usize {
        1024 * 1024
    }

    fn destroy(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}

impl SimBus {
    /// A core message leaves this node: lost sometimes, held while it is paused, lost while it is cut off.
    fn send(&self, subject: String, payload: Bytes, reply: Option<String>) {
        let net = self.net.clone();
        let (node, conn) = (self.node.clone(), self.conn);
        tokio::spawn(async move {
            net.latency().await;
            if !net.pass(&node, conn).await || net.chance(net.config.p_message_lost) {
                net.stats.lock().expect("stats lock").messages_lost += 1;
                return;
            }
            net.deliver(&subject, Incoming { payload, reply });
        });
    }
}

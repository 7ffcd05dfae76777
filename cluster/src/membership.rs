//! Membership over core NATS: every node publishes a heartbeat every `interval` on
//! `{prefix}.heartbeat` and listens to everyone's, its own included.
//!
//! - A peer not heard for `suspect_after` is **suspected**; for `dead_after`, **dead** (its shards may be
//!   taken over). Heard again, it is alive again (`Recovered`, or `Restarted` with a new incarnation).
//! - **Self-fencing:** a node that has not heard *its own* heartbeat for `fence_after` (shorter than
//!   `dead_after`) is fenced: it must stop its actors and stop appending. Its heartbeats travel the same
//!   path as everyone's, so if the others stop hearing it, it stops hearing itself too — and it fences
//!   itself `dead_after − fence_after` before they may declare it dead and take over. A node starts fenced
//!   and is unfenced once it hears itself.
//! - What self-fencing cannot cover — a node paused (SIGSTOP, a long GC-like stall) that wakes up after its
//!   shards moved — is what the fencing tokens on every append are for (the ownership part of the cluster
//!   issue).
//!
//! [`Tracker`] is the decision, pure and driven by the caller's clock (unit-tested); [`Membership`] runs
//! it over a NATS client. Defaults and their reasoning: `docs/membership.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use crate::bus::{Bus, NatsBus};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// When a peer is suspected, dead, and when a node fences itself.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Between two heartbeats of a node.
    pub interval: Duration,
    /// Not heard for this long: suspected.
    pub suspect_after: Duration,
    /// Not heard for this long: dead (its shards may move).
    pub dead_after: Duration,
    /// Not heard *itself* for this long: the node fences itself (must be below `dead_after`).
    pub fence_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            interval: Duration::from_millis(200),
            suspect_after: Duration::from_millis(600),
            dead_after: Duration::from_millis(1_500),
            fence_after: Duration::from_millis(1_000),
        }
    }
}

impl Thresholds {
    /// Checks the ordering the guarantees need: `interval < suspect_after < dead_after` and
    /// `interval < fence_after < dead_after`.
    pub fn check(&self) -> Result<(), String> {
        if self.interval.is_zero()
            || self.interval >= self.suspect_after
            || self.suspect_after >= self.dead_after
            || self.interval >= self.fence_after
            || self.fence_after >= self.dead_after
        {
            return Err(format!(
                "membership thresholds must satisfy 0 < interval < suspect_after < dead_after and interval < fence_after < dead_after (got {self:?})"
            ));
        }
        Ok(())
    }
}

/// What a node publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// Chosen at start: a restarted node has another.
    pub incarnation: u64,
    pub seq: u64,
    /// The node's last word when it stops gracefully: the others treat it as dead at once.
    #[serde(default)]
    pub leaving: bool,
    /// The node's smoothed load, for placement (`None` until it has measured one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
}

/// What a node says of its load in its heartbeats (smoothed by [`crate::load`]); placement weighs nodes
/// by it (`docs/placement.md`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Cores.
    pub capacity: f64,
    /// Fraction of the machine's CPU used by work other than this node's process.
    pub cpu_other: f64,
    /// Fraction of the machine's memory in use.
    pub mem_used: f64,
}

/// A peer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Alive,
    Suspected,
    Dead,
}

/// A change of the membership view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Joined(String),
    Suspected(String),
    Dead(String),
    /// Heard again after being suspected or dead.
    Recovered(String),
    /// Heard with another incarnation: the node restarted.
    Restarted(String),
    Fenced,
    Unfenced,
}

/// The membership as a node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct View {
    /// Peers and their status (this node included, as it hears itself).
    pub peers: BTreeMap<String, Status>,
    /// Whether this node is fenced (has not heard itself lately): it must not own anything.
    pub fenced: bool,
}

impl View {
    /// The alive nodes, this one included when not fenced.
    pub fn alive(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, s)| **s == Status::Alive)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Peer {
    incarnation: u64,
    last_seen: Instant,
    status: Status,
}

/// The membership decision, driven by the caller's clock.
#[derive(Debug, Clone)]
pub struct Tracker {
    me: String,
    incarnation: u64,
    thresholds: Thresholds,
    peers: BTreeMap<String, Peer>,
    own_seen: Option<Instant>,
    fenced: bool,
}

impl Tracker {
    pub fn new(me: &str, incarnation: u64, thresholds: Thresholds) -> Tracker {
        Tracker {
            me: me.to_owned(),
            incarnation,
            thresholds,
            peers: BTreeMap::new(),
            own_seen: None,
            fenced: true,
        }
    }

    /// A heartbeat arrived at `now`.
    pub fn heard(&mut self, hb: &Heartbeat, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        if hb.leaving {
            if hb.node != self.me
                && let Some(p) = self.peers.get_mut(&hb.node)
                && p.incarnation == hb.incarnation
                && p.status != Status::Dead
            {
                p.status = Status::Dead;
                changes.push(Change::Dead(hb.node.clone()));
            }
            return changes;
        }
        if hb.node == self.me {
            if hb.incarnation != self.incarnation {
                // Another process under this node's id: never ours to trust.
                return changes;
            }
            self.own_seen = Some(now);
            if self.fenced {
                self.fenced = false;
                changes.push(Change::Unfenced);
            }
        }
        match self.peers.get_mut(&hb.node) {
            None => {
                self.peers.insert(
                    hb.node.clone(),
                    Peer {
                        incarnation: hb.incarnation,
                        last_seen: now,
                        status: Status::Alive,
                    },
                );
                changes.push(Change::Joined(hb.node.clone()));
            }
            Some(p) => {
                if p.incarnation != hb.incarnation {
                    p.incarnation = hb.incarnation;
                    changes.push(Change::Restarted(hb.node.clone()));
                } else if p.status != Status::Alive {
                    changes.push(Change::Recovered(hb.node.clone()));
                }
                p.status = Status::Alive;
                p.last_seen = p.last_seen.max(now);
            }
        }
        changes
    }

    /// Re-evaluates every status and the fence at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Change> {
        let t = self.thresholds;
        let mut changes = Vec::new();
        for (node, p) in self.peers.iter_mut() {
            let silent = now.saturating_duration_since(p.last_seen);
            let status = if silent >= t.dead_after {
                Status::Dead
            } else if silent >= t.suspect_after {
                Status::Suspected
            } else {
                Status::Alive
            };
            if status != p.status {
                match status {
                    Status::Suspected if p.status == Status::Alive => {
                        changes.push(Change::Suspected(node.clone()))
                    }
                    Status::Dead => changes.push(Change::Dead(node.clone())),
                    _ => {}
                }
                // Only silence moves a peer down; hearing it moves it up (`heard`).
                if status as u8 > p.status as u8 {
                    p.status = status;
                }
            }
        }
        let fenced = self
            .own_seen
            .is_none_or(|seen| now.saturating_duration_since(seen) >= t.fence_after);
        if fenced && !self.fenced {
            self.fenced = true;
            changes.push(Change::Fenced);
        }
        changes
    }

    pub fn view(&self) -> View {
        View {
            peers: self
                .peers
                .iter()
                .map(|(n, p)| {
                    let status = if *n == self.me && self.fenced {
                        Status::Suspected
                    } else {
                        p.status
                    };
                    (n.clone(), status)
                })
                .collect(),
            fenced: self.fenced,
        }
    }
}

/// Sets what a node's heartbeats say of its load; dead once its [`Membership`] is dropped.
pub struct LoadHandle(std::sync::Weak<Mutex<Option<Load>>>);

impl LoadHandle {
    /// Whether the membership still lives (and took the load).
    pub fn set_load(&self, load: Load) -> bool {
        match self.0.upgrade() {
            Some(l) => {
                *l.lock().expect("load lock") = Some(load);
                true
            }
            None => false,
        }
    }
}

/// A node's membership over NATS: a task that heartbeats, listens and keeps the [`View`] current.
pub struct Membership {
    client: Arc<dyn Bus>,
    subject: String,
    node: String,
    incarnation: u64,
    view: watch::Receiver<View>,
    changes: tokio::sync::broadcast::Sender<Change>,
    task: JoinHandle<()>,
    /// What this node's next heartbeats say of its load.
    own_load: Arc<Mutex<Option<Load>>>,
    /// The last load each node's heartbeats said.
    loads: Arc<Mutex<BTreeMap<String, Load>>>,
}

impl Membership {
    /// Joins: subscribes to `{prefix}.heartbeat` and heartbeats as `node` every `thresholds.interval`.
    pub async fn start(
        client: async_nats::Client,
        prefix: &str,
        node: &str,
        thresholds: Thresholds,
    ) -> Result<Membership, String> {
        Membership::start_on(Arc::new(NatsBus::core(client)), prefix, node, thresholds).await
    }

    /// The same on any bus (the simulator's).
    pub async fn start_on(
        client: Arc<dyn Bus>,
        prefix: &str,
        node: &str,
        thresholds: Thresholds,
    ) -> Result<Membership, String> {
        thresholds.check()?;
        let subject = format!("{prefix}.heartbeat");
        let mut heartbeats = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ u64::from(std::process::id());
        let mut tracker = Tracker::new(node, incarnation, thresholds);
        let (view_tx, view) = watch::channel(tracker.view());
        let (changes, _) = tokio::sync::broadcast::channel(1024);
        let changes_tx = changes.clone();
        let node = node.to_owned();
        let (me, me_subject, me_client) = (node.clone(), subject.clone(), client.clone());
        let own_load: Arc<Mutex<Option<Load>>> = Arc::default();
        let loads: Arc<Mutex<BTreeMap<String, Load>>> = Arc::default();
        let (own_load2, loads2) = (own_load.clone(), loads.clone());
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(thresholds.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            loop {
                let changed = tokio::select! {
                    _ = ticker.tick() => {
                        seq += 1;
                        let load = *own_load2.lock().expect("load lock");
                        let hb = Heartbeat { node: node.clone(), incarnation, seq, leaving: false, load };
                        let payload = serde_json::to_vec(&hb).expect("a heartbeat serialises");
                        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
                            tracing::debug!(error = %e, "heartbeat not sent");
                        }
                        tracker.tick(Instant::now())
                    }
                    msg = heartbeats.next() => {
                        let Some(msg) = msg else { break };
                        match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                            Ok(hb) => {
                                if let Some(load) = hb.load {
                                    loads2.lock().expect("loads lock").insert(hb.node.clone(), load);
                                }
                                tracker.heard(&hb, Instant::now())
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "a heartbeat that does not parse; ignored");
                                Vec::new()
                            }
                        }
                    }
                };
                for c in changed.iter() {
                    match c {
                        Change::Fenced => {
                            tracing::warn!(node = %node, "fenced: this node has not heard its own heartbeat; stop owning")
                        }
                        Change::Dead(n) => tracing::warn!(peer = %n, "peer dead"),
                        other => tracing::info!(change = ?other, "membership"),
                    }
                }
                if !changed.is_empty() {
                    view_tx.send_replace(tracker.view());
                    for c in changed {
                        let _ = changes_tx.send(c);
                    }
                }
            }
        });
        Ok(Membership {
            client: me_client,
            subject: me_subject,
            node: me,
            incarnation,
            view,
            changes,
            task,
            own_load,
            loads,
        })
    }

    /// What this node's heartbeats say of its load from now on.
    pub fn set_load(&self, load: Load) {
        *self.own_load.lock().expect("load lock") = Some(load);
    }

    /// A handle that sets this node's load while the membership lives.
    pub fn handle(&self) -> LoadHandle {
        LoadHandle(Arc::downgrade(&self.own_load))
    }

    /// The table [`Membership::loads`] reads, shared (the planner keeps it).
    pub fn load_table(&self) -> Arc<Mutex<BTreeMap<String, Load>>> {
        self.loads.clone()
    }

    /// The last load each node (this one included) said in its heartbeats.
    pub fn loads(&self) -> BTreeMap<String, Load> {
        self.loads.lock().expect("loads lock").clone()
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Follows the view.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Every change from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Leaves with a goodbye: stops heartbeating and tells the others, who treat this node as dead at once
    /// (its shards move without waiting for `dead_after`). Call it only once this node has stopped
    /// appending.
    pub async fn goodbye(&self) {
        self.task.abort();
        let hb = Heartbeat {
            node: self.node.clone(),
            incarnation: self.incarnation,
            seq: u64::MAX,
            leaving: true,
            load: None,
        };
        let payload = serde_json::to_vec(&hb).expect("a heartbeat serialises");
        if let Err(e) = self
            .client
            .publish(self.subject.clone(), payload.into())
            .await
        {
            tracing::warn!(error = %e, "goodbye not sent; the others see this node die instead");
        }
        self.client.flush().await;
    }

    /// Leaves at once (no goodbye: the others see it die).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: &str, incarnation: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            incarnation,
            seq,
            leaving: false,
            load: None,
        }
    }

    #[test]
    fn a_goodbye_makes_a_peer_dead_at_once_and_only_a_new_incarnation_revives_it() {
        let t0 = Instant::now();
        let mut t = Tracker::new("a", 1, Thresholds::default());
        t.heard(&hb("a", 1, 1), t0);
        t.heard(&hb("b", 7, 1), t0);
        let bye = Heartbeat {
            leaving: true,
            ..hb("b", 7, u64::MAX)
        };
        // A goodbye of another incarnation is not b's.
        assert!(
            t.heard(
                &Heartbeat {
                    incarnation: 8,
                    ..bye.clone()
                },
                t0
            )
            .is_empty()
        );
        assert_eq!(t.heard(&bye, t0), vec![Change::Dead("b".into())]);
        assert_eq!(t.view().alive(), vec!["a".to_owned()]);
        assert!(t.heard(&bye, t0).is_empty());
        assert!(t.tick(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(
            t.heard(&hb("b", 9, 1), t0 + Duration::from_millis(200)),
            vec![Change::Restarted("b".into())]
        );
        assert_eq!(t.view().alive(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn a_node_starts_fenced_and_is_unfenced_once_it_hears_itself() {
        let t0 = Instant::now();
        let mut t = Tracker::new("a", 1, Thresholds::default());
        assert!(t.view().fenced);
        assert_eq!(
            t.heard(&hb("a", 1, 1), t0),
            vec![Change::Unfenced, Change::Joined("a".into())]
        );
        assert!(!t.view().fenced);
        assert_eq!(t.view().alive(), vec!["a".to_owned()]);
        // Another process claiming to be "a" does not count.
        let mut u = Tracker::new("a", 1, Thresholds::default());
        assert!(u.heard(&hb("a", 2, 1), t0).is_empty());
        assert!(u.view().fenced);
    }

    #[test]
    fn silence_makes_a_peer_suspected_then_dead_and_hearing_it_brings_it_back() {
        let th = Thresholds::default();
        let t0 = Instant::now();
        let mut t = Tracker::new("a", 1, th);
        t.heard(&hb("b", 7, 1), t0);
        assert!(t.tick(t0 + th.suspect_after / 2).is_empty());
        assert_eq!(
            t.tick(t0 + th.suspect_after),
            vec![Change::Suspected("b".into())]
        );
        assert_eq!(t.tick(t0 + th.dead_after), vec![Change::Dead("b".into())]);
        assert!(t.tick(t0 + th.dead_after * 3).is_empty());
        assert_eq!(t.view().peers["b"], Status::Dead);
        assert_eq!(
            t.heard(&hb("b", 7, 9), t0 + th.dead_after * 3),
            vec![Change::Recovered("b".into())]
        );
        assert_eq!(
            t.heard(&hb("b", 8, 1), t0 + th.dead_after * 3),
            vec![Change::Restarted("b".into())]
        );
        assert_eq!(t.view().peers["b"], Status::Alive);
    }

    #[test]
    fn a_node_fences_itself_before_its_peers_may_declare_it_dead() {
        let th = Thresholds::default();
        let t0 = Instant::now();
        let mut a = Tracker::new("a", 1, th);
        let mut b = Tracker::new("b", 2, th);
        // Both hear a's heartbeat at t0, then nothing of a reaches anyone.
        a.heard(&hb("a", 1, 1), t0);
        b.heard(&hb("b", 2, 1), t0);
        b.heard(&hb("a", 1, 1), t0);
        let mut fenced_at = None;
        let mut dead_at = None;
        let mut now = t0;
        while dead_at.is_none() {
            now += Duration::from_millis(10);
            // b keeps hearing itself.
            b.heard(&hb("b", 2, 0), now);
            if a.tick(now).contains(&Change::Fenced) {
                fenced_at = Some(now);
            }
            if b.tick(now).contains(&Change::Dead("a".into())) {
                dead_at = Some(now);
            }
        }
        let (fenced_at, dead_at) = (fenced_at.expect("a fenced itself"), dead_at.unwrap());
        assert!(dead_at - fenced_at >= th.dead_after - th.fence_after);
    }

    #[test]
    fn thresholds_out_of_order_are_refused() {
        assert!(Thresholds::default().check().is_ok());
        let bad = Thresholds {
            fence_after: Duration::from_secs(2),
            ..Thresholds::default()
        };
        assert!(bad.check().is_err());
    }
}

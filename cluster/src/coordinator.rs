//! Failover of shard ownership: membership ([`crate::membership`]) says who is alive; every node computes
//! the same target owner per shard from the alive set (rendezvous hashing, [`crate::placement`]); a node
//! claims ([`crate::ownership`]) the shards it is the target of whose recorded owner is dead or absent,
//! and drops everything the moment it is fenced or sees its record taken.
//!
//! Shards are sticky: a node joining takes no shard from a live owner here (moving live shards is the
//! placement's and the handoff's business). A suspected owner is not taken over; a dead one is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::membership::{Membership, Status, View};
use crate::ownership::{Owned, OwnershipError, Shards};
use crate::placement::{NodeView, SHARDS, plain_owner};

/// What a coordinator holds and did.
#[derive(Debug, Default)]
pub struct Held {
    pub owned: BTreeMap<u16, Owned>,
    pub claims: u64,
    pub lost: u64,
    pub dropped: u64,
    /// Shards given up to their target (rebalancing), which then claims them.
    pub handed_off: u64,
}

/// Shards a node hands off to their targets in one pass, at most (placement's cap on moves).
pub const HANDOFFS_PER_PASS_MAX: usize = 4;

/// How long the alive set must stay the same before shards move to a node that is alive (and not only
/// away from dead ones): a node that flaps does not pull shards back and forth.
pub const REBALANCE_SETTLE: Duration = Duration::from_secs(3);

/// A node's ownership loop.
pub struct Coordinator {
    pub node: String,
    pub held: Arc<Mutex<Held>>,
    task: JoinHandle<()>,
    fence_task: JoinHandle<()>,
}

/// The target owner of `shard` among the alive `nodes` (sorted ids): the same on every node that sees
/// the same alive set.
pub fn target(shard: u16, nodes: &[String]) -> Option<String> {
    if nodes.is_empty() {
        return None;
    }
    let views: Vec<NodeView> = nodes
        .iter()
        .map(|id| NodeView {
            id: id.clone(),
            capacity: 1.0,
            cpu_other: 0.0,
            mem_used: 0.0,
            alive: true,
        })
        .collect();
    Some(nodes[plain_owner(shard, &views)].clone())
}

impl Coordinator {
    /// Runs the loop: a pass on every membership change and every `every` besides. For its first `grace`
    /// (at least the membership's `dead_after`) it takes nothing from owners it has not heard of: they may
    /// be alive and not heard yet.
    pub fn start(
        node: &str,
        membership: &Membership,
        shards: Shards,
        every: Duration,
        grace: Duration,
    ) -> Coordinator {
        let held = Arc::new(Mutex::new(Held::default()));
        let mut view = membership.watch();
        let node_id = node.to_owned();
        let held2 = held.clone();
        // Self-fencing must not wait for a pass (whose NATS requests hang when the node is cut off):
        // a task of its own drops every shard the moment the view says fenced.
        let fenced = Arc::new(AtomicBool::new(true));
        let fenced2 = fenced.clone();
        let fence_task = {
            let (mut view, held, node) = (membership.watch(), held.clone(), node.to_owned());
            tokio::spawn(async move {
                loop {
                    let now = view.borrow_and_update().fenced;
                    fenced.store(now, Ordering::Release);
                    if now {
                        drop_all(&node, &held);
                    }
                    if view.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let (mut alive, mut stable_since) = (Vec::new(), Instant::now());
            loop {
                let current = view.borrow_and_update().clone();
                let take_unknown = started.elapsed() >= grace;
                if current.alive() != alive {
                    alive = current.alive();
                    stable_since = Instant::now();
                }
                let rebalance = take_unknown && stable_since.elapsed() >= REBALANCE_SETTLE;
                pass(
                    &node_id,
                    &current,
                    &shards,
                    &held2,
                    take_unknown,
                    rebalance,
                    &fenced2,
                )
                .await;
                tokio::select! {
                    changed = view.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Coordinator {
            node: node.to_owned(),
            held,
            task,
            fence_task,
        }
    }

    /// The shards this node owns now.
    pub fn owned(&self) -> Vec<u16> {
        self.held
            .lock()
            .expect("held lock")
            .owned
            .keys()
            .copied()
            .collect()
    }

    /// Stops at once, as a killed process would (nothing released).
    pub fn stop(&self) {
        self.task.abort();
        self.fence_task.abort();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
        self.fence_task.abort();
    }
}

fn drop_all(node: &str, held: &Mutex<Held>) {
    let mut h = held.lock().expect("held lock");
    if !h.owned.is_empty() {
        tracing::warn!(node, shards = h.owned.len(), "fenced: dropping every shard");
        h.dropped += h.owned.len() as u64;
        h.owned.clear();
    }
}

/// One pass over every shard: the owner records are read together, the claims made together.
async fn pass(
    node: &str,
    view: &View,
    shards: &Shards,
    held: &Mutex<Held>,
    take_unknown: bool,
    rebalance: bool,
    fenced: &AtomicBool,
) {
    if view.fenced {
        drop_all(node, held);
        return;
    }
    let alive = view.alive();
    let records = futures_util::future::join_all((0..SHARDS).map(|s| shards.owner(s))).await;
    let mut handoffs = 0;
    let mut claims: Vec<(u16, Option<u64>)> = Vec::new();
    for (shard, record) in (0..SHARDS).zip(records) {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(shard, error = %e, "cannot read the owner record");
                continue;
            }
        };
        let mine = held.lock().expect("held lock").owned.get(&shard).cloned();
        if let Some(owned) = mine {
            // Someone claimed it since: drop it (its next append would be fenced anyway).
            if record.as_ref().map(|(_, epoch)| *epoch) != Some(owned.epoch) {
                let mut h = held.lock().expect("held lock");
                h.owned.remove(&shard);
                h.dropped += 1;
                continue;
            }
            // Rebalancing: a shard whose target is another alive node is handed to it, a few a pass.
            // Stop appending first, then mark the record released; the target claims it on its next
            // pass. An append already on its way either lands before the target's OwnerChanged (and
            // the target sees it) or after (and is fenced, answered 503, resent).
            let to = target(shard, &alive);
            if rebalance
                && handoffs < HANDOFFS_PER_PASS_MAX
                && to.as_deref().is_some_and(|t| t != node)
            {
                held.lock().expect("held lock").owned.remove(&shard);
                match shards.release(&owned).await {
                    Ok(_) => {
                        handoffs += 1;
                        held.lock().expect("held lock").handed_off += 1;
                        tracing::info!(shard, to = ?to, "handed the shard off to its target");
                    }
                    Err(e) => {
                        // Not released: the record still names this node, which claims it back.
                        tracing::warn!(shard, error = %e, "cannot release the shard; keeping it");
                    }
                }
            }
            continue;
        }
        // A record naming this node that it does not hold (a claim whose fence did not get through, or
        // an earlier life of this node) is this node's to finish, whoever the target is now.
        let on_record = record.as_ref().is_some_and(|(owner, _)| owner == node);
        if !on_record && target(shard, &alive).as_deref() != Some(node) {
            continue;
        }
        let seen = match &record {
            None => None,
            Some((owner, epoch)) => {
                // Take over only from a dead owner (or one never heard, after the grace), or from an
                // earlier life of this node.
                let takeable = match view.peers.get(owner) {
                    _ if owner == node => true,
                    // Released by its owner for this node (rebalancing).
                    _ if owner.is_empty() => true,
                    Some(s) => *s == Status::Dead,
                    None => take_unknown,
                };
                if !takeable {
                    continue;
                }
                Some(*epoch)
            }
        };
        claims.push((shard, seen));
    }
    let results = futures_util::future::join_all(
        claims
            .iter()
            .map(|(shard, seen)| shards.claim(*shard, node, *seen)),
    )
    .await;
    for ((shard, _), result) in claims.into_iter().zip(results) {
        match result {
            // Fenced meanwhile: the record names this node, which finishes the claim once unfenced.
            Ok(_) if fenced.load(Ordering::Acquire) => {}
            Ok(owned) => {
                let mut h = held.lock().expect("held lock");
                h.claims += 1;
                h.owned.insert(shard, owned);
            }
            Err(OwnershipError::Lost { .. }) => held.lock().expect("held lock").lost += 1,
            Err(e) => tracing::warn!(shard, error = %e, "claim failed; the next pass retries"),
        }
    }
}

/// Waits until `ok` holds, polling every 5 ms; the time it took, or `None` after `within`.
pub async fn wait_for(within: Duration, mut ok: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ok().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

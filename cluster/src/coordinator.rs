//! Failover of shard ownership: membership ([`crate::membership`]) says who is alive; every node computes
//! the same target owner per shard from the alive set (rendezvous hashing, [`crate::placement`]); a node
//! claims ([`crate::ownership`]) the shards it is the target of whose recorded owner is dead or absent,
//! and drops everything the moment it is fenced or sees its record taken.
//!
//! Shards are sticky: a node joining takes no shard from a live owner by itself. Live shards move by the
//! placement plan ([`crate::planner`]): the planner (the alive node with the smallest id) writes one every
//! [`PLAN_EVERY`]; an owner hands off a shard the plan gives to another alive node, and that node claims
//! it. A shard whose planned owner is not alive (or that no plan names yet) has the rendezvous target
//! among the alive nodes, so failover never waits for a plan. A suspected owner is not taken over; a dead
//! one is.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::membership::{Load, Membership, Status, View};
use crate::ownership::{Owned, OwnershipError, Shards};
use crate::placement::{NodeView, SHARDS, plain_owner};
use crate::planner::{Forecasts, PLAN_EVERY, PlanRecord};

/// What a coordinator holds and did.
#[derive(Debug, Default)]
pub struct Held {
    pub owned: BTreeMap<u16, Owned>,
    pub claims: u64,
    pub lost: u64,
    pub dropped: u64,
    /// Appends whose answer was lost but which had landed, so the owner carried on
    /// ([`Shards::landed`]) instead of dropping the shard.
    pub answers_recovered: u64,
    /// Times this node's copy found the stream's delivery had skipped messages and followed again from
    /// the first missing one (it never files past a gap).
    pub follow_gaps: u64,
    /// Shards given up to their target (rebalancing), which then claims them.
    pub handed_off: u64,
    /// Records this node's copy of the log has filed, per shard (the planner's rates).
    pub filed: Vec<u64>,
    /// Plans this node wrote as the planner.
    pub plans: u64,
    /// Voluntary moves those plans made.
    pub planned_moves: u64,
    /// The plan the last pass followed.
    pub plan: Option<PlanRecord>,
}

impl Held {
    /// The shards held now, in order.
    pub fn owned_shards(&self) -> Vec<u16> {
        self.owned.keys().copied().collect()
    }

    /// Counts `records` filed for `shard`.
    pub fn filed(&mut self, shard: u16, records: u64) {
        if self.filed.len() < usize::from(SHARDS) {
            self.filed.resize(usize::from(SHARDS), 0);
        }
        if let Some(n) = self.filed.get_mut(usize::from(shard)) {
            *n += records;
        }
    }
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
    planner_task: JoinHandle<()>,
}

/// The target owner of `shard` among the alive `nodes` (sorted ids): the plan's owner when it is alive,
/// else the rendezvous target.
pub fn planned_target(shard: u16, nodes: &[String], plan: Option<&PlanRecord>) -> Option<String> {
    match plan.and_then(|p| p.owner(shard)) {
        Some(owner) if nodes.iter().any(|n| n == owner) => Some(owner.to_owned()),
        _ => target(shard, nodes),
    }
}

/// The rendezvous target owner of `shard` among the alive `nodes` (sorted ids): the same on every node
/// that sees the same alive set.
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
        let planner_task = tokio::spawn(run_planner(
            node.to_owned(),
            membership.watch(),
            membership.load_table(),
            shards.clone(),
            held.clone(),
        ));
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
            planner_task,
        }
    }

    /// The shards this node owns now.
    pub fn owned(&self) -> Vec<u16> {
        self.held.lock().expect("held lock").owned_shards()
    }

    /// Stops at once, as a killed process would (nothing released).
    pub fn stop(&self) {
        self.task.abort();
        self.fence_task.abort();
        self.planner_task.abort();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.task.abort();
        self.fence_task.abort();
        self.planner_task.abort();
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
    // The plan (none yet, or unreadable: rendezvous targets only).
    let plan = match shards.plan().await {
        Ok(Some(bytes)) => serde_json::from_slice::<PlanRecord>(&bytes)
            .ok()
            .filter(|p| p.owners.len() == usize::from(SHARDS)),
        _ => held.lock().expect("held lock").plan.clone(),
    };
    held.lock().expect("held lock").plan = plan.clone();
    let target = |shard: u16, alive: &[String]| planned_target(shard, alive, plan.as_ref());
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

/// The planner's loop: every [`PLAN_EVERY`] it folds the records this node's copy filed per shard into
/// the forecasts; while this node is the alive node with the smallest id (and the alive set has been the
/// same for [`REBALANCE_SETTLE`]) it plans over the current owners and writes the plan when it changed.
async fn run_planner(
    node: String,
    view: tokio::sync::watch::Receiver<View>,
    node_loads: Arc<Mutex<BTreeMap<String, Load>>>,
    shards: Shards,
    held: Arc<Mutex<Held>>,
) {
    let mut forecasts = Forecasts::default();
    let mut ticker = tokio::time::interval(PLAN_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut alive, mut stable_since) = (Vec::new(), Instant::now());
    let mut round = 0u64;
    let mut written: Option<PlanRecord> = None;
    loop {
        ticker.tick().await;
        let counts = held.lock().expect("held lock").filed.clone();
        if !forecasts.observe(&counts, Instant::now()) {
            continue;
        }
        let current_view = view.borrow().clone();
        if current_view.alive() != alive {
            alive = current_view.alive();
            stable_since = Instant::now();
        }
        if current_view.fenced
            || alive.first() != Some(&node)
            || stable_since.elapsed() < REBALANCE_SETTLE
        {
            written = None;
            continue;
        }
        let records = futures_util::future::join_all((0..SHARDS).map(|s| shards.owner(s))).await;
        let Ok(current) = records
            .into_iter()
            .map(|r| r.map(|o| o.map(|(owner, _)| owner)))
            .collect::<Result<Vec<_>, _>>()
        else {
            continue;
        };
        let previous = written
            .clone()
            .or_else(|| held.lock().expect("held lock").plan.clone());
        let loads = node_loads.lock().expect("loads lock").clone();
        round += 1;
        let Some(plan) = crate::planner::plan(
            &node,
            round,
            forecasts.loads(),
            &alive,
            &loads,
            &current,
            previous.as_ref(),
        ) else {
            continue;
        };
        if previous.as_ref().is_some_and(|p| p.owners == plan.owners) && plan.moves == 0 {
            continue;
        }
        match shards
            .put_plan(serde_json::to_vec(&plan).expect("a plan serialises"))
            .await
        {
            Ok(_) => {
                let mut h = held.lock().expect("held lock");
                h.plans += 1;
                h.planned_moves += plan.moves as u64;
                if plan.moves > 0 {
                    tracing::info!(round, moves = plan.moves, "placement: a new plan");
                }
                written = Some(plan);
            }
            Err(e) => tracing::warn!(error = %e, "placement: cannot write the plan; next round"),
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

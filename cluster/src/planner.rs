//! Load-predictive placement driving ownership (cluster issue, part 7; `docs/placement.md`).
//!
//! Every node forecasts every shard's event rate from its own copy of the log (the copies are the same,
//! so the forecasts agree): the records its copy filed per shard ([`crate::coordinator::Held::filed`]),
//! folded every [`PLAN_EVERY`] into a [`Holt`] forecast per shard. One node plans — the alive node with
//! the smallest id — and writes the plan to the owner bucket under [`PLAN_KEY`]:
//! [`place`] over the planned loads, the alive nodes weighted by the loads their heartbeats carry
//! ([`crate::load`]), starting from the current owners (stickiness, at most
//! [`PlacementConfig::moves_max`] voluntary moves a round). Every node's coordinator then treats the
//! plan's owner of a shard as its target: an owner hands off a shard the plan gives to another alive
//! node, and that node claims it. A shard whose planned owner is not alive falls back to rendezvous over
//! the alive nodes, so failover never waits for a plan.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::membership::Load;
use crate::placement::{Holt, NodeView, PlacementConfig, SHARDS, place};

/// How often the forecasts are folded and the planner plans.
pub const PLAN_EVERY: Duration = Duration::from_secs(2);

/// The owner bucket's key holding the plan.
pub const PLAN_KEY: &str = "placement";

/// Every shard costs this much besides its events (records a second): its actors, its copy, its
/// subscription. An idle cluster is thus planned by shard counts, and a node that joins one gets shards.
pub const BASE_LOAD: f64 = 0.5;

/// Holt's parameters and the margin (`docs/placement.md`): α, β, γ, horizon h, margin k.
const ALPHA: f64 = 0.3;
const BETA: f64 = 0.05;
const GAMMA: f64 = 0.2;
const HORIZON: f64 = 1.0;
const MARGIN_K: f64 = 1.0;

/// The plan as written to the owner bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The node that planned.
    pub by: String,
    /// The planner's round (counts up while one node plans).
    pub round: u64,
    /// The planned owner of every shard.
    pub owners: Vec<String>,
    /// The planned load of every shard (records a second, [`BASE_LOAD`] included).
    pub loads: Vec<f64>,
    /// Voluntary moves this plan made from the current owners.
    pub moves: usize,
}

impl PlanRecord {
    /// The planned owner of `shard`.
    pub fn owner(&self, shard: u16) -> Option<&str> {
        self.owners.get(usize::from(shard)).map(String::as_str)
    }
}

/// Per-shard rate forecasts from cumulative record counts.
#[derive(Debug, Clone)]
pub struct Forecasts {
    holts: Vec<Holt>,
    last: Option<(Vec<u64>, Instant)>,
}

impl Default for Forecasts {
    fn default() -> Self {
        Forecasts {
            holts: vec![Holt::new(ALPHA, BETA, GAMMA); usize::from(SHARDS)],
            last: None,
        }
    }
}

impl Forecasts {
    /// Folds the rates since the last call: `counts` are cumulative records per shard at `now`. Returns
    /// whether a rate was folded (the first call only sets the baseline).
    pub fn observe(&mut self, counts: &[u64], now: Instant) -> bool {
        let folded = match &self.last {
            Some((before, at)) => {
                let secs = now.saturating_duration_since(*at).as_secs_f64();
                if secs <= 0.0 {
                    return false;
                }
                for (s, holt) in self.holts.iter_mut().enumerate() {
                    let delta = counts
                        .get(s)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(before.get(s).copied().unwrap_or(0));
                    holt.observe(delta as f64 / secs);
                }
                true
            }
            None => false,
        };
        self.last = Some((counts.to_vec(), now));
        folded
    }

    /// The planned load of every shard: the forecast one interval ahead, plus `k` smoothed errors, plus
    /// [`BASE_LOAD`].
    pub fn loads(&self) -> Vec<f64> {
        self.holts
            .iter()
            .map(|h| h.planned(HORIZON, MARGIN_K) + BASE_LOAD)
            .collect()
    }
}

/// The alive nodes as placement sees them: capacity and headroom from their heartbeats' loads; a node
/// that has sent none counts as one idle core.
pub fn node_views(alive: &[String], loads: &BTreeMap<String, Load>) -> Vec<NodeView> {
    alive
        .iter()
        .map(|id| {
            let l = loads.get(id).copied().unwrap_or(Load {
                capacity: 1.0,
                cpu_other: 0.0,
                mem_used: 0.0,
            });
            NodeView {
                id: id.clone(),
                capacity: l.capacity.max(0.1),
                cpu_other: l.cpu_other,
                mem_used: l.mem_used,
                alive: true,
            }
        })
        .collect()
}

/// Plans every shard over the `alive` nodes from the `current` owner of each (a node id; an empty or
/// unknown one counts as none, except that a released shard keeps the owner the `previous` plan gave it).
pub fn plan(
    by: &str,
    round: u64,
    shard_loads: Vec<f64>,
    alive: &[String],
    node_loads: &BTreeMap<String, Load>,
    current: &[Option<String>],
    previous: Option<&PlanRecord>,
) -> Option<PlanRecord> {
    if alive.is_empty() {
        return None;
    }
    let nodes = node_views(alive, node_loads);
    let index = |id: &str| alive.iter().position(|n| n == id);
    let current: Vec<Option<usize>> = (0..SHARDS)
        .map(|s| match current.get(usize::from(s)).cloned().flatten() {
            Some(owner) if owner.is_empty() => previous.and_then(|p| p.owner(s)).and_then(index),
            Some(owner) => index(&owner),
            None => None,
        })
        .collect();
    let placed = place(&shard_loads, &nodes, &current, PlacementConfig::default());
    Some(PlanRecord {
        by: by.to_owned(),
        round,
        owners: placed.owners.iter().map(|&n| alive[n].clone()).collect(),
        loads: shard_loads,
        moves: placed.moves.iter().filter(|m| !m.forced).count(),
    })
}

/// The load each node carries under `owners` (the per-shard `loads` summed by owner).
pub fn node_loads(owners: &[String], loads: &[f64]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (owner, load) in owners.iter().zip(loads) {
        *out.entry(owner.clone()).or_insert(0.0) += load;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn forecasts_follow_the_rate_per_second_of_each_shard() {
        let mut f = Forecasts::default();
        let t0 = Instant::now();
        let mut counts = vec![0u64; usize::from(SHARDS)];
        assert!(!f.observe(&counts, t0));
        for step in 1..=20u64 {
            counts[3] += 200; // 100 a second
            counts[9] += 20; // 10 a second
            assert!(f.observe(&counts, t0 + PLAN_EVERY * step as u32));
        }
        let loads = f.loads();
        assert!((loads[3] - 100.0 - BASE_LOAD).abs() < 1.0, "{}", loads[3]);
        assert!((loads[9] - 10.0 - BASE_LOAD).abs() < 0.5, "{}", loads[9]);
        assert!((loads[0] - BASE_LOAD).abs() < 1e-9);
    }

    #[test]
    fn an_idle_cluster_is_planned_by_shard_counts_and_a_joining_node_gets_shards_a_few_a_round() {
        let alive = ids(3);
        // Two nodes hold everything; n3 just joined.
        let current: Vec<Option<String>> = (0..SHARDS)
            .map(|s| Some(if s % 2 == 0 { "n1" } else { "n2" }.to_owned()))
            .collect();
        let loads = vec![BASE_LOAD; usize::from(SHARDS)];
        let p = plan("n1", 1, loads, &alive, &BTreeMap::new(), &current, None).unwrap();
        let to_n3 = p.owners.iter().filter(|o| *o == "n3").count();
        assert_eq!(to_n3, PlacementConfig::default().moves_max);
        assert_eq!(p.moves, to_n3);
    }

    #[test]
    fn a_hot_node_sheds_shards_and_a_balanced_plan_is_kept() {
        let alive = ids(3);
        let current: Vec<Option<String>> = (0..SHARDS)
            .map(|s| Some(alive[usize::from(s) % 3].clone()))
            .collect();
        // n1's shards carry ten times the others' rate.
        let loads: Vec<f64> = (0..SHARDS)
            .map(|s| if s % 3 == 0 { 10.0 } else { 1.0 })
            .collect();
        let mut owners: Vec<Option<String>> = current.clone();
        let mut previous = None;
        let before = node_loads(
            &owners
                .iter()
                .map(|o| o.clone().unwrap())
                .collect::<Vec<_>>(),
            &loads,
        );
        for round in 0..20 {
            let p = plan(
                "n1",
                round,
                loads.clone(),
                &alive,
                &BTreeMap::new(),
                &owners,
                previous.as_ref(),
            )
            .unwrap();
            assert!(p.moves <= PlacementConfig::default().moves_max);
            owners = p.owners.iter().cloned().map(Some).collect();
            previous = Some(p);
        }
        let last = previous.unwrap();
        let after = node_loads(&last.owners, &loads);
        let ratio = |m: &BTreeMap<String, f64>| {
            let max = m.values().cloned().fold(0.0, f64::max);
            max / (m.values().sum::<f64>() / 3.0)
        };
        assert!(ratio(&before) > 1.9, "{before:?}");
        assert!(ratio(&after) < 1.15, "{after:?}");
        // Converged: planning again moves nothing.
        let again = plan(
            "n1",
            99,
            loads,
            &alive,
            &BTreeMap::new(),
            &owners,
            Some(&last),
        )
        .unwrap();
        assert_eq!(again.moves, 0);
        assert_eq!(again.owners, last.owners);
    }

    #[test]
    fn a_node_with_less_headroom_is_planned_less_load() {
        let alive = ids(2);
        let mut loads_by_node = BTreeMap::new();
        loads_by_node.insert(
            "n1".to_owned(),
            Load {
                capacity: 2.0,
                cpu_other: 0.6,
                mem_used: 0.2,
            },
        );
        loads_by_node.insert(
            "n2".to_owned(),
            Load {
                capacity: 2.0,
                cpu_other: 0.0,
                mem_used: 0.2,
            },
        );
        let p = plan(
            "n1",
            1,
            vec![1.0; usize::from(SHARDS)],
            &alive,
            &loads_by_node,
            &vec![None; usize::from(SHARDS)],
            None,
        )
        .unwrap();
        let n1 = p.owners.iter().filter(|o| *o == "n1").count();
        assert!(n1 < 32, "n1 (busy with other work) got {n1} of 64");
    }

    #[test]
    fn a_released_shard_stays_with_the_owner_the_previous_plan_gave_it() {
        let alive = ids(3);
        let first = plan(
            "n1",
            1,
            vec![1.0; usize::from(SHARDS)],
            &alive,
            &BTreeMap::new(),
            &vec![None; usize::from(SHARDS)],
            None,
        )
        .unwrap();
        let mut current: Vec<Option<String>> = first.owners.iter().cloned().map(Some).collect();
        current[5] = Some(String::new());
        let second = plan(
            "n1",
            2,
            vec![1.0; usize::from(SHARDS)],
            &alive,
            &BTreeMap::new(),
            &current,
            Some(&first),
        )
        .unwrap();
        assert_eq!(second.owners, first.owners);
        assert_eq!(second.moves, 0);
    }
}

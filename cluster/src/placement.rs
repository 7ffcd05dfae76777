//! Load-predictive shard placement: which node owns which of the [`SHARDS`] shards.
//!
//! Three parts, each small and deterministic (see `docs/placement.md` for the formulas and the figures):
//!
//! - [`Holt`]: a per-shard forecast of the event rate — Holt's linear trend (level and trend, exponentially
//!   smoothed) plus a margin of `k` times the smoothed absolute one-step error, so that a noisy shard is
//!   planned for its likely peak rather than its mean.
//! - [`DualKalman`]: a node's CPU and memory readings, smoothed by two scalar Kalman filters — a slow one
//!   that irons out noise and a fast one that follows real changes — switching to the fast one while the
//!   readings leave the slow one's 3σ band (the idea of the dual-mode filter behind Orleans'
//!   resource-optimised placement).
//! - [`place`]: weighted rendezvous hashing with bounded loads. Each node's weight is its capacity times its
//!   headroom; each node may take at most `(1 + ε)` times its weighted share of the forecast load; a shard
//!   stays with its owner while the owner has room (stickiness); voluntary moves are capped per interval;
//!   shards of dead nodes always move.

use sha2::{Digest, Sha256};

/// The number of shards terminals and enterprises hash into.
pub const SHARDS: u16 = 64;

/// The shard of a terminal or enterprise id: SHA-256 of the id, first 8 bytes, modulo [`SHARDS`].
pub fn shard_of(id: &str) -> u16 {
    let h = Sha256::digest(id.as_bytes());
    let v = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (v % u64::from(SHARDS)) as u16
}

/// Holt's linear trend with a residual margin: `forecast(h) = level + h·trend`, and
/// `planned(h, k) = forecast(h) + k·resid` where `resid` is the exponentially smoothed absolute one-step
/// error.
#[derive(Debug, Clone)]
pub struct Holt {
    alpha: f64,
    beta: f64,
    gamma: f64,
    level: Option<f64>,
    trend: f64,
    resid: f64,
}

impl Holt {
    /// `alpha` smooths the level, `beta` the trend, `gamma` the residual (each in (0, 1]).
    pub fn new(alpha: f64, beta: f64, gamma: f64) -> Holt {
        Holt {
            alpha,
            beta,
            gamma,
            level: None,
            trend: 0.0,
            resid: 0.0,
        }
    }

    /// Folds the rate observed over the last interval.
    pub fn observe(&mut self, y: f64) {
        match self.level {
            None => self.level = Some(y),
            Some(l) => {
                let error = y - (l + self.trend);
                self.resid = (1.0 - self.gamma) * self.resid + self.gamma * error.abs();
                let level = self.alpha * y + (1.0 - self.alpha) * (l + self.trend);
                self.trend = self.beta * (level - l) + (1.0 - self.beta) * self.trend;
                self.level = Some(level);
            }
        }
    }

    /// The rate expected `h` intervals ahead (never negative).
    pub fn forecast(&self, h: f64) -> f64 {
        (self.level.unwrap_or(0.0) + h * self.trend).max(0.0)
    }

    /// [`Holt::forecast`] plus `k` smoothed absolute errors: what to plan for.
    pub fn planned(&self, h: f64, k: f64) -> f64 {
        self.forecast(h) + k * self.resid
    }

    pub fn trend(&self) -> f64 {
        self.trend
    }
}

/// A scalar Kalman filter for a random walk: `x' = x + w` (variance `q`), `z = x + v` (variance `r`).
#[derive(Debug, Clone)]
struct Kalman {
    x: f64,
    p: f64,
    q: f64,
    r: f64,
}

impl Kalman {
    /// Folds `z`; returns the innovation `z - x̂⁻` and its standard deviation `√(p⁻ + r)`.
    fn update(&mut self, z: f64) -> (f64, f64) {
        let p = self.p + self.q;
        let innovation = z - self.x;
        let sd = (p + self.r).sqrt();
        let k = p / (p + self.r);
        self.x += k * innovation;
        self.p = (1.0 - k) * p;
        (innovation, sd)
    }
}

/// Two Kalman filters over one signal (a node's CPU or memory use, a fraction): the slow one (small process
/// noise) smooths; the fast one (large process noise) follows. While a reading falls outside the slow
/// filter's 3σ innovation band the estimate is the fast filter's, and the slow one is re-anchored on it.
#[derive(Debug, Clone)]
pub struct DualKalman {
    slow: Kalman,
    fast: Kalman,
    started: bool,
    fast_mode: bool,
}

impl DualKalman {
    /// `r`: the readings' noise variance.
    pub fn new(r: f64) -> DualKalman {
        DualKalman {
            slow: Kalman {
                x: 0.0,
                p: 1.0,
                q: r * 0.01,
                r,
            },
            fast: Kalman {
                x: 0.0,
                p: 1.0,
                q: r * 4.0,
                r,
            },
            started: false,
            fast_mode: false,
        }
    }

    /// Folds one reading; returns the estimate.
    pub fn observe(&mut self, z: f64) -> f64 {
        if !self.started {
            self.started = true;
            self.slow.x = z;
            self.fast.x = z;
            return z;
        }
        let (innovation, sd) = self.slow.update(z);
        self.fast.update(z);
        self.fast_mode = innovation.abs() > 3.0 * sd;
        if self.fast_mode {
            self.slow.x = self.fast.x;
            self.slow.p = self.fast.p;
        }
        self.estimate()
    }

    pub fn estimate(&self) -> f64 {
        if self.fast_mode {
            self.fast.x
        } else {
            self.slow.x
        }
    }

    /// Whether the last reading switched the estimate to the fast filter.
    pub fn fast_mode(&self) -> bool {
        self.fast_mode
    }
}

/// What the placer knows of a node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: String,
    /// Cores (or any unit of work per interval the shard loads are in).
    pub capacity: f64,
    /// Smoothed fraction of its CPU used by work other than its shards.
    pub cpu_other: f64,
    /// Smoothed fraction of its memory in use.
    pub mem_used: f64,
    pub alive: bool,
}

impl NodeView {
    /// Capacity times headroom: `capacity · max(0.05, min(1 − cpu_other, 1 − mem_used))`.
    pub fn weight(&self) -> f64 {
        self.capacity * (1.0 - self.cpu_other).min(1.0 - self.mem_used).max(0.05)
    }
}

/// How [`place`] decides.
#[derive(Debug, Clone, Copy)]
pub struct PlacementConfig {
    /// A node may take `(1 + epsilon)` times its weighted share of the load.
    pub epsilon: f64,
    /// Voluntary moves per interval at most (shards of dead nodes do not count).
    pub moves_max: usize,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            epsilon: 0.10,
            moves_max: 4,
        }
    }
}

/// One shard changing owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub shard: u16,
    /// The previous owner (an index into the nodes), `None` when the shard had none.
    pub from: Option<usize>,
    pub to: usize,
    /// Whether the previous owner was dead or missing (not counted against `moves_max`).
    pub forced: bool,
}

/// Owners for every shard and the moves from the current owners.
#[derive(Debug, Clone)]
pub struct Plan {
    /// An index into the nodes, per shard.
    pub owners: Vec<usize>,
    pub moves: Vec<Move>,
}

/// A uniform number in (0, 1) from `(shard, node)`.
fn unit(shard: u16, node: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(shard.to_be_bytes());
    h.update(node.as_bytes());
    let v = u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
    ((v >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The weighted rendezvous score of `node` for `shard`: `−w / ln(u)`, `u` uniform in (0, 1) from the pair.
/// The highest score wins; a node of twice the weight wins twice as often, and removing a node moves only
/// the shards it held.
pub fn rendezvous_score(shard: u16, node: &str, weight: f64) -> f64 {
    -weight / unit(shard, node).ln()
}

/// Plain hashing, for comparison: the unweighted rendezvous winner among the alive nodes.
pub fn plain_owner(shard: u16, nodes: &[NodeView]) -> usize {
    (0..nodes.len())
        .filter(|&n| nodes[n].alive)
        .max_by(|&a, &b| {
            unit(shard, &nodes[b].id)
                .partial_cmp(&unit(shard, &nodes[a].id))
                .expect("finite")
        })
        .expect("an alive node")
}

/// Places every shard of `loads` (the planned load of each shard, in the nodes' capacity units) on the
/// alive `nodes`, starting from `current` owners. Panics when no node is alive.
///
/// 1. Each alive node `n` gets the bound `C_n = (1 + ε) · L · w_n / Σw` (`L` the total load) — raised to the
///    largest single shard when that is bigger, so a placement always exists.
/// 2. Shards are taken heaviest first. A shard stays with its alive owner while the owner stays within its
///    bound; otherwise it goes to the alive node of highest rendezvous score with room, or — none having
///    room — to the one left least full relative to its bound.
/// 3. Voluntary moves beyond `moves_max` are undone, keeping those that relieve the fullest owners first.
pub fn place(
    loads: &[f64],
    nodes: &[NodeView],
    current: &[Option<usize>],
    config: PlacementConfig,
) -> Plan {
    let alive: Vec<usize> = (0..nodes.len()).filter(|&n| nodes[n].alive).collect();
    assert!(!alive.is_empty(), "placing shards needs an alive node");
    let total: f64 = loads.iter().sum();
    let weights: Vec<f64> = nodes.iter().map(NodeView::weight).collect();
    let weight_sum: f64 = alive.iter().map(|&n| weights[n]).sum();
    let largest = loads.iter().cloned().fold(0.0, f64::max);
    let bound: Vec<f64> = (0..nodes.len())
        .map(|n| ((1.0 + config.epsilon) * total * weights[n] / weight_sum).max(largest))
        .collect();
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by(|&a, &b| {
        loads[b]
            .partial_cmp(&loads[a])
            .expect("finite")
            .then(a.cmp(&b))
    });
    let owner_of = |s: usize| current.get(s).copied().flatten();
    let mut assigned = vec![0.0; nodes.len()];
    // The load each node had under the current owners (for ranking which moves help most).
    let mut before = vec![0.0; nodes.len()];
    for (s, load) in loads.iter().enumerate() {
        if let Some(o) = owner_of(s).filter(|&o| o < nodes.len()) {
            before[o] += load;
        }
    }
    let mut owners = vec![0usize; loads.len()];
    for &s in &order {
        let shard = s as u16;
        let load = loads[s];
        let keep = owner_of(s)
            .filter(|&o| o < nodes.len() && nodes[o].alive && assigned[o] + load <= bound[o]);
        let to = keep.unwrap_or_else(|| {
            let mut ranked = alive.clone();
            ranked.sort_by(|&a, &b| {
                rendezvous_score(shard, &nodes[b].id, weights[b])
                    .partial_cmp(&rendezvous_score(shard, &nodes[a].id, weights[a]))
                    .expect("finite")
            });
            ranked
                .iter()
                .copied()
                .find(|&n| assigned[n] + load <= bound[n])
                .unwrap_or_else(|| {
                    *alive
                        .iter()
                        .min_by(|&&a, &&b| {
                            ((assigned[a] + load) / bound[a])
                                .partial_cmp(&((assigned[b] + load) / bound[b]))
                                .expect("finite")
                        })
                        .expect("an alive node")
                })
        });
        assigned[to] += load;
        owners[s] = to;
    }
    let mut moves: Vec<Move> = Vec::new();
    let mut voluntary: Vec<(usize, usize, usize)> = Vec::new(); // (shard, from, to)
    for (s, &to) in owners.iter().enumerate() {
        match owner_of(s) {
            Some(from) if from == to => {}
            Some(from) if from < nodes.len() && nodes[from].alive => voluntary.push((s, from, to)),
            from => moves.push(Move {
                shard: s as u16,
                from,
                to,
                forced: true,
            }),
        }
    }
    // Relieve the fullest owners first; heavier shards first within one owner.
    voluntary.sort_by(|a, b| {
        (before[b.1] / bound[b.1])
            .partial_cmp(&(before[a.1] / bound[a.1]))
            .expect("finite")
            .then(loads[b.0].partial_cmp(&loads[a.0]).expect("finite"))
            .then(a.0.cmp(&b.0))
    });
    for (i, (s, from, to)) in voluntary.into_iter().enumerate() {
        if i < config.moves_max {
            moves.push(Move {
                shard: s as u16,
                from: Some(from),
                to,
                forced: false,
            });
        } else {
            owners[s] = from;
        }
    }
    moves.sort_by_key(|m| m.shard);
    Plan { owners, moves }
}

#[cfg(test)]
mod tests;

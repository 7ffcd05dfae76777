//! The placement simulator: a skewed, drifting workload on a few nodes, placed three ways side by side —
//! plain hashing (unweighted rendezvous), reactive bounded placement (the last interval's rates and raw
//! node readings) and predictive placement (Holt forecasts with a margin, dual-mode Kalman node
//! readings) — and the node loads each gives. Seeded and deterministic; `custodian bench placement` prints
//! the report.
//!
//! The world, per interval (a minute, say): 64 shards with Zipf-skewed rates (exponent 1.1, a random
//! rank per shard) that drift (a growth rate per shard, redrawn every 180 intervals, −0.4 % to +0.6 % an
//! interval), surge (now and then a shard ramps to 2–4 times its rate over 30–90 intervals: a large
//! enterprise joining) and are noisy (±14 %); nodes of equal capacity, one with a noisy neighbour taking
//! 35 % of its CPU for a quarter of the run, one dying at 70 % of the run and coming back at 78 %. The total
//! rate grows from 55 % to 75 % of the nodes' capacity over the run (the shares drift and surge within it).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::placement::{DualKalman, Holt, NodeView, PlacementConfig, SHARDS, place, plain_owner};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub intervals: usize,
    pub nodes: usize,
    pub config: PlacementConfig,
    /// Holt's smoothing of level and trend, and the margin in smoothed absolute errors.
    pub alpha: f64,
    pub beta: f64,
    pub margin_k: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            intervals: 1440,
            nodes: 3,
            config: PlacementConfig::default(),
            alpha: 0.3,
            beta: 0.05,
            margin_k: 1.0,
        }
    }
}

/// One strategy's figures over a run.
#[derive(Debug, Clone, Default)]
pub struct StrategyReport {
    pub name: &'static str,
    /// Max over mean node utilisation, per interval: mean, p99, max.
    pub ratio_mean: f64,
    pub ratio_p99: f64,
    pub ratio_max: f64,
    /// The busiest node's utilisation, p99 over intervals.
    pub busiest_p99: f64,
    /// Intervals in which some node was over 100 %.
    pub overloaded_intervals: usize,
    pub moves: usize,
    pub forced_moves: usize,
    pub moves_max_per_interval: usize,
}

#[derive(Debug, Clone)]
pub struct SimReport {
    pub options: SimOptions,
    pub strategies: Vec<StrategyReport>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Reactive,
    Predictive,
}

struct Strategy {
    kind: Kind,
    owners: Vec<Option<usize>>,
    forecasts: Vec<Holt>,
    last_rates: Vec<f64>,
    cpu: Vec<DualKalman>,
    mem: Vec<DualKalman>,
    raw_other: Vec<f64>,
    raw_mem: Vec<f64>,
    ratios: Vec<f64>,
    busiest: Vec<f64>,
    report: StrategyReport,
}

impl Strategy {
    fn new(kind: Kind, name: &'static str, o: &SimOptions) -> Strategy {
        Strategy {
            kind,
            owners: vec![None; SHARDS as usize],
            forecasts: vec![Holt::new(o.alpha, o.beta, 0.2); SHARDS as usize],
            last_rates: vec![0.0; SHARDS as usize],
            cpu: vec![DualKalman::new(0.05f64.powi(2)); o.nodes],
            mem: vec![DualKalman::new(0.03f64.powi(2)); o.nodes],
            raw_other: vec![0.0; o.nodes],
            raw_mem: vec![0.3; o.nodes],
            ratios: Vec::new(),
            busiest: Vec::new(),
            report: StrategyReport {
                name,
                ..StrategyReport::default()
            },
        }
    }

    fn place(&mut self, views: &[NodeView], o: &SimOptions) {
        let before = self.owners.clone();
        match self.kind {
            Kind::Plain => {
                for s in 0..SHARDS {
                    self.owners[s as usize] = Some(plain_owner(s, views));
                }
            }
            Kind::Reactive | Kind::Predictive => {
                let predictive = self.kind == Kind::Predictive;
                let views: Vec<NodeView> = views
                    .iter()
                    .enumerate()
                    .map(|(n, v)| NodeView {
                        cpu_other: if predictive {
                            self.cpu[n].estimate()
                        } else {
                            self.raw_other[n]
                        }
                        .clamp(0.0, 0.95),
                        mem_used: if predictive {
                            self.mem[n].estimate()
                        } else {
                            self.raw_mem[n]
                        }
                        .clamp(0.0, 0.95),
                        ..v.clone()
                    })
                    .collect();
                let loads: Vec<f64> = (0..SHARDS as usize)
                    .map(|s| {
                        if predictive {
                            self.forecasts[s].planned(1.0, o.margin_k)
                        } else {
                            self.last_rates[s]
                        }
                    })
                    .collect();
                let plan = place(&loads, &views, &self.owners, o.config);
                self.owners = plan.owners.into_iter().map(Some).collect();
            }
        }
        let mut moved = 0;
        for (b, a) in before.iter().zip(&self.owners) {
            if let Some(b) = b
                && Some(*b) != *a
            {
                moved += 1;
                if !views[*b].alive {
                    self.report.forced_moves += 1;
                }
            }
        }
        self.report.moves += moved;
        self.report.moves_max_per_interval = self.report.moves_max_per_interval.max(moved);
    }

    /// Node utilisations under the actual `rates`, and what the nodes report.
    fn observe(&mut self, rates: &[f64], world: &World, rng: &mut SmallRng) {
        let n = world.capacity.len();
        let mut own = vec![0.0; n];
        for (s, r) in rates.iter().enumerate() {
            if let Some(o) = self.owners[s] {
                own[o] += r;
            }
        }
        let utils: Vec<f64> = (0..n)
            .filter(|&i| world.alive[i])
            .map(|i| own[i] / world.capacity[i] + world.other[i])
            .collect();
        let mean = utils.iter().sum::<f64>() / utils.len() as f64;
        let max = utils.iter().cloned().fold(0.0, f64::max);
        self.ratios.push(max / mean);
        self.busiest.push(max);
        if max > 1.0 {
            self.report.overloaded_intervals += 1;
        }
        for (i, own) in own.iter().enumerate() {
            if !world.alive[i] {
                continue;
            }
            // The node's CPU reading, noisy; the placer subtracts its own shards' observed load.
            let reading = own / world.capacity[i] + world.other[i] + rng.random_range(-0.05..0.05);
            let other = reading - own / world.capacity[i];
            self.raw_other[i] = other;
            self.cpu[i].observe(other);
            let mem = world.mem[i] + rng.random_range(-0.03..0.03);
            self.raw_mem[i] = mem;
            self.mem[i].observe(mem);
        }
        for (s, r) in rates.iter().enumerate() {
            self.last_rates[s] = *r;
            self.forecasts[s].observe(*r);
        }
    }

    fn finish(mut self) -> StrategyReport {
        let pct = |v: &mut Vec<f64>, q: f64| {
            v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        let r = &mut self.report;
        r.ratio_mean = self.ratios.iter().sum::<f64>() / self.ratios.len() as f64;
        r.ratio_p99 = pct(&mut self.ratios, 0.99);
        r.ratio_max = pct(&mut self.ratios, 1.0);
        r.busiest_p99 = pct(&mut self.busiest, 0.99);
        self.report
    }
}

/// The world's state in one interval.
struct World {
    capacity: Vec<f64>,
    other: Vec<f64>,
    mem: Vec<f64>,
    alive: Vec<bool>,
}

/// Runs the three strategies over the same world.
pub fn run(o: &SimOptions, progress: &mut dyn FnMut(usize)) -> SimReport {
    assert!(
        o.nodes >= 2,
        "the placement simulator needs two nodes or more"
    );
    let mut rng = SmallRng::seed_from_u64(o.seed);
    let shards = SHARDS as usize;
    // Zipf-skewed base rates over a random ranking.
    let mut ranks: Vec<usize> = (1..=shards).collect();
    for i in (1..shards).rev() {
        let j = rng.random_range(0..=i);
        ranks.swap(i, j);
    }
    let mut smooth: Vec<f64> = ranks.iter().map(|&r| 1.0 / (r as f64).powf(1.1)).collect();
    let capacity = vec![2.0; o.nodes];
    let scale = 0.55 * capacity.iter().sum::<f64>() / smooth.iter().sum::<f64>();
    smooth.iter_mut().for_each(|v| *v *= scale);
    let mut growth = vec![0.0; shards];
    // Surges: (shard, per-interval factor, intervals left).
    let mut surges: Vec<(usize, f64, usize)> = Vec::new();
    let neighbour = (o.intervals * 3 / 10, o.intervals * 11 / 20);
    let outage = (o.intervals * 7 / 10, o.intervals * 78 / 100);
    let mut strategies = vec![
        Strategy::new(Kind::Plain, "plain hashing", o),
        Strategy::new(Kind::Reactive, "reactive bounded", o),
        Strategy::new(Kind::Predictive, "predictive", o),
    ];
    let mut world = World {
        capacity: capacity.clone(),
        other: vec![0.0; o.nodes],
        mem: vec![0.3; o.nodes],
        alive: vec![true; o.nodes],
    };
    let mut sim_rng = SmallRng::seed_from_u64(o.seed ^ 0x5EED);
    for t in 0..o.intervals {
        if t % 180 == 0 {
            for g in growth.iter_mut() {
                *g = rng.random_range(-0.004..0.006);
            }
        }
        if rng.random_bool(0.004) {
            let s = rng.random_range(0..shards);
            let target: f64 = rng.random_range(2.0..4.0);
            let over = rng.random_range(30..=90);
            surges.push((s, target.powf(1.0 / over as f64), over));
        }
        for (s, g) in growth.iter().enumerate() {
            smooth[s] *= 1.0 + g;
        }
        surges.retain_mut(|(s, f, left)| {
            smooth[*s] *= *f;
            *left -= 1;
            *left > 0
        });
        // The shares drift and surge; the total follows the platform's growth: from 55 % of the capacity
        // to 75 % over the run.
        let target = (0.55 + 0.2 * t as f64 / o.intervals as f64) * capacity.iter().sum::<f64>();
        let total: f64 = smooth.iter().sum();
        smooth.iter_mut().for_each(|v| *v *= target / total);
        let rates: Vec<f64> = smooth
            .iter()
            .map(|v| v * (1.0 + rng.random_range(-0.14..0.14)))
            .collect();
        world.other[0] = if (neighbour.0..neighbour.1).contains(&t) {
            0.35
        } else {
            0.0
        };
        let last = o.nodes - 1;
        world.alive[last] = !(outage.0..outage.1).contains(&t);
        let views: Vec<NodeView> = (0..o.nodes)
            .map(|n| NodeView {
                id: format!("node-{}", n + 1),
                capacity: world.capacity[n],
                cpu_other: 0.0,
                mem_used: 0.3,
                alive: world.alive[n],
            })
            .collect();
        for st in strategies.iter_mut() {
            st.place(&views, o);
            st.observe(&rates, &world, &mut sim_rng);
        }
        if t % 100 == 99 {
            progress(t + 1);
        }
    }
    SimReport {
        options: o.clone(),
        strategies: strategies.into_iter().map(Strategy::finish).collect(),
    }
}

/// Runs seeds `options.seed ..` `seeds` times and reports each strategy's figures averaged over the seeds
/// (a table like [`SimReport::markdown`]'s, and one line per seed).
pub fn run_seeds(options: &SimOptions, seeds: u64, progress: &mut dyn FnMut(u64)) -> String {
    let reports: Vec<SimReport> = (0..seeds.max(1))
        .map(|i| {
            progress(options.seed + i);
            run(
                &SimOptions {
                    seed: options.seed + i,
                    ..options.clone()
                },
                &mut |_| {},
            )
        })
        .collect();
    let n = reports.len() as f64;
    let mut mean: Vec<StrategyReport> = reports[0].strategies.clone();
    for (i, m) in mean.iter_mut().enumerate() {
        let all: Vec<&StrategyReport> = reports.iter().map(|r| &r.strategies[i]).collect();
        let avg = |f: &dyn Fn(&StrategyReport) -> f64| all.iter().map(|s| f(s)).sum::<f64>() / n;
        m.ratio_mean = avg(&|s| s.ratio_mean);
        m.ratio_p99 = avg(&|s| s.ratio_p99);
        m.ratio_max = avg(&|s| s.ratio_max);
        m.busiest_p99 = avg(&|s| s.busiest_p99);
        m.overloaded_intervals = avg(&|s| s.overloaded_intervals as f64).round() as usize;
        m.moves = avg(&|s| s.moves as f64).round() as usize;
        m.forced_moves = avg(&|s| s.forced_moves as f64).round() as usize;
        m.moves_max_per_interval = all
            .iter()
            .map(|s| s.moves_max_per_interval)
            .max()
            .unwrap_or(0);
    }
    let summary = SimReport {
        options: options.clone(),
        strategies: mean,
    };
    let mut out = summary.markdown().replacen(
        &format!("Seed {},", options.seed),
        &format!(
            "Seeds {} to {} (figures are means over the seeds; the most moves in an interval is the maximum),",
            options.seed,
            options.seed + seeds.max(1) - 1
        ),
        1,
    );
    out.push_str("\n| seed | max/mean mean: plain | reactive | predictive | moves: reactive | predictive |\n|---|---|---|---|---|---|\n");
    for r in &reports {
        let s = &r.strategies;
        out.push_str(&format!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
            r.options.seed,
            s[0].ratio_mean,
            s[1].ratio_mean,
            s[2].ratio_mean,
            s[1].moves,
            s[2].moves
        ));
    }
    out
}

impl SimReport {
    /// The report as Markdown.
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut out = format!(
            "# Placement: plain hashing vs reactive vs predictive\n\n\
             Seed {}, {} intervals, {} nodes of equal capacity, {} shards (Zipf 1.1, drifting, surging, ±14 % noise); \
             a noisy neighbour takes 35 % of node-1's CPU from interval {} to {}; node-{} is dead from {} to {}. \
             ε = {}, at most {} voluntary moves an interval; Holt α = {}, β = {}, margin {} smoothed errors.\n\n\
             | strategy | max/mean mean | max/mean p99 | max/mean max | busiest node p99 | intervals with a node over 100 % | moves (forced) | most moves in an interval |\n\
             |---|---|---|---|---|---|---|---|\n",
            o.seed,
            o.intervals,
            o.nodes,
            SHARDS,
            o.intervals * 3 / 10,
            o.intervals * 11 / 20,
            o.nodes,
            o.intervals * 7 / 10,
            o.intervals * 78 / 100,
            o.config.epsilon,
            o.config.moves_max,
            o.alpha,
            o.beta,
            o.margin_k
        );
        for s in &self.strategies {
            out.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.0} % | {} | {} ({}) | {} |\n",
                s.name,
                s.ratio_mean,
                s.ratio_p99,
                s.ratio_max,
                s.busiest_p99 * 100.0,
                s.overloaded_intervals,
                s.moves,
                s.forced_moves,
                s.moves_max_per_interval
            ));
        }
        if let (Some(plain), Some(pred)) = (self.strategies.first(), self.strategies.last()) {
            out.push_str(&format!(
                "\nPredictive over plain hashing, measured side by side: max/mean {:.3} against {:.3} on average \
                 (the imbalance, max/mean − 1, {:.0} % smaller), p99 {:.3} against {:.3}; intervals with a node \
                 over 100 %: {} against {}.\n",
                pred.ratio_mean,
                plain.ratio_mean,
                (1.0 - (pred.ratio_mean - 1.0).max(0.0) / (plain.ratio_mean - 1.0).max(1e-9)) * 100.0,
                pred.ratio_p99,
                plain.ratio_p99,
                pred.overloaded_intervals,
                plain.overloaded_intervals
            ));
        }
        out
    }
}

//! A seeded site population with **ground truth**, and the plan of how its facts reach the log.
//!
//! The world, all from one `SmallRng` seeded with the seed:
//! - `E = max(2, T / 4)` enterprises (storage capacity far above anything stored, so `over_capacity` never
//!   fires) and `T` scales; scale `S-i` belongs to enterprise `E-(i mod E)`, so `S-0 ..= S-(E-1)` are the
//!   enterprises' *primary* scales. Every scale reports a `temperature` heartbeat once per report interval
//!   (with jitter below a minute), so a scale that is up is never silent.
//! - **Shipments**: every enterprise, at random times, fills 1 ..= 4 containers: `generation` and
//!   `storage_in` weighings on its scales, a stay in storage, a `ManifestOpened` (through the API) to
//!   another enterprise, `transfer_out` weighings, a journey, `transfer_in` weighings on the receiver's
//!   scales. Weighing noise is within ±1 % of the value weighed, so two honest weighings of a container
//!   never differ by more than 4.1 %, far below the 20 % rules.
//! - **Injected truths** (the [`Truth`] list): a container that loses 25 – 60 % of its weight in storage
//!   (`weight_fluctuation`), a shipment whose every container arrives 25 – 50 % light
//!   (`manifest_weight_mismatch`, and `weight_fluctuation` of each container), a shipment held in storage
//!   1 – 4 h past the storage limit (`storage_overdue` of each container), a non-primary scale that
//!   stops measuring for 2 – 5 h (`terminal_silent`), a scale that sends one of its readings again hours
//!   later with another value (`tamper_suspected`). Every truth completes before the end.
//! - **Faults of delivery** (with [`Faults::Default`]): a scale offline for 30 min – 6 h keeps measuring
//!   and flushes its backlog when it comes back, partly shuffled and in several uploads; 10 % of uploads
//!   are a few minutes late. The log-level faults (duplicates, crashes) are the simulator's
//!   ([`crate::sim`]); they never change the order in which facts first reach the log.
//!
//! Time is simulated: nanoseconds from [`T0`]. The plan is a list of [`Step`]s of [`STEP_S`] seconds, each
//! an ordered list of [`Item`]s: API calls, terminal uploads and the node's `ClockTicked` at every
//! multiple of the tick interval. Within a step items are ordered by time (API, then uploads, then ticks
//! at the same instant).

use std::collections::BTreeMap;

use custodian_events::domain::{AnomalyKind, Rules};
use custodian_events::event::{
    ClockTicked, EnterpriseRegistered, ManifestOpened, TerminalKind, TerminalRegistered,
};
use custodian_events::{
    ContainerId, EnterpriseId, Event, ManifestId, Reading, ReadingKind, Stage, TerminalId,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The simulated epoch (2026-09-21T…Z), UTC ns.
pub const T0: i64 = 1_790_000_000_000_000_000;
pub const S: i64 = 1_000_000_000;
const MIN: i64 = 60 * S;
const HOUR: i64 = 3_600 * S;
pub const KG: i64 = 1_000_000;
/// The node's default `derive.tick_interval_s`.
pub const TICK_S: i64 = 10;
/// Simulated seconds between two points where the simulator syncs the log and settles the deriver.
pub const STEP_S: i64 = 600;
/// Every scale's registered report interval: silent after 3 of them (45 min) without a reading.
pub const REPORT_INTERVAL_S: u32 = 900;
/// The storage limit the simulation runs with (the default, a year, does not fit in days).
pub const STORAGE_LIMIT_S: i64 = 12 * 3_600;
/// Terminals upload on a one-minute cadence.
const UPLOAD_S: i64 = 60;

/// The rules the simulated node runs with: the defaults but for the storage limit.
pub fn rules() -> Rules {
    Rules {
        storage_limit_s: STORAGE_LIMIT_S,
        ..Rules::default()
    }
}

/// Faults of the simulated world and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    None,
    Default,
}

impl Faults {
    pub fn name(self) -> &'static str {
        match self {
            Faults::None => "none",
            Faults::Default => "default",
        }
    }
}

/// What one item of the plan delivers.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Calls to the node's API (registrations, manifests).
    Api(Vec<Event>),
    /// One upload of a terminal: readings, in the order sent.
    Upload {
        terminal: TerminalId,
        readings: Vec<Reading>,
    },
    /// The node's clock tick.
    Tick(i64),
    /// A terminal sends a reading under a `seq` already in the log, with other content (tampering).
    Rewrite {
        terminal: TerminalId,
        reading: Reading,
    },
}

#[derive(Debug, Clone)]
pub struct Item {
    /// When it is sent (the log's clock reads this while it is appended).
    pub at_ns: i64,
    pub payload: Payload,
}

impl Item {
    /// The events it proposes, in order.
    pub fn events(&self) -> Vec<Event> {
        match &self.payload {
            Payload::Api(events) => events.clone(),
            Payload::Upload { readings, .. } => readings
                .iter()
                .cloned()
                .map(Event::ReadingRecorded)
                .collect(),
            Payload::Tick(at_ns) => vec![Event::ClockTicked(ClockTicked { at_ns: *at_ns })],
            Payload::Rewrite { reading, .. } => vec![Event::ReadingRecorded(reading.clone())],
        }
    }
}

/// Items up to `end_ns`, after which the simulator syncs and settles.
#[derive(Debug, Clone)]
pub struct Step {
    pub end_ns: i64,
    pub items: Vec<Item>,
}

/// A truth injected into the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truth {
    /// The container lost weight in storage: its `transfer_out` weighs 25 – 60 % less.
    LostInStorage { container: ContainerId },
    /// Every container of the manifest arrived 25 – 50 % light.
    ArrivedLight {
        manifest: ManifestId,
        containers: Vec<ContainerId>,
    },
    /// The containers stayed in storage past the limit.
    StoredTooLong { containers: Vec<ContainerId> },
    /// The terminal measured nothing in `[from_ns, to_ns)`.
    FellSilent {
        terminal: TerminalId,
        from_ns: i64,
        to_ns: i64,
    },
    /// The terminal sent its reading `seq` again, hours later, with another value.
    Rewrote { terminal: TerminalId, seq: u64 },
}

impl Truth {
    /// The anomalies (kind, subject) it must cause.
    pub fn anomalies(&self) -> Vec<(AnomalyKind, String)> {
        match self {
            Truth::LostInStorage { container } => {
                vec![(
                    AnomalyKind::WeightFluctuation,
                    format!("container:{container}"),
                )]
            }
            Truth::ArrivedLight {
                manifest,
                containers,
            } => std::iter::once((
                AnomalyKind::ManifestWeightMismatch,
                format!("manifest:{manifest}"),
            ))
            .chain(
                containers
                    .iter()
                    .map(|c| (AnomalyKind::WeightFluctuation, format!("container:{c}"))),
            )
            .collect(),
            Truth::StoredTooLong { containers } => containers
                .iter()
                .map(|c| (AnomalyKind::StorageOverdue, format!("container:{c}")))
                .collect(),
            Truth::FellSilent { terminal, .. } => {
                vec![(AnomalyKind::TerminalSilent, format!("terminal:{terminal}"))]
            }
            Truth::Rewrote { terminal, .. } => {
                vec![(AnomalyKind::TamperSuspected, format!("terminal:{terminal}"))]
            }
        }
    }
}

/// A terminal offline (measuring, not uploading) in `[from_ns, to_ns)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    pub terminal: TerminalId,
    pub from_ns: i64,
    pub to_ns: i64,
}

/// The generated world: its plan and its truth.
#[derive(Debug, Clone)]
pub struct Workload {
    pub steps: Vec<Step>,
    pub truths: Vec<Truth>,
    pub offline: Vec<Offline>,
    /// Every reading measured, by `(terminal, seq)`.
    pub readings: BTreeMap<(TerminalId, u64), Reading>,
    pub terminals: Vec<TerminalId>,
    pub end_ns: i64,
}

struct Scale {
    id: TerminalId,
    enterprise: usize,
    /// `[from, to)` in which it measures nothing.
    silent: Vec<(i64, i64)>,
    /// A continuous load cell under a storage tank (weighs no containers).
    load_cell: bool,
}

impl Scale {
    fn silent_at(&self, t: i64) -> bool {
        self.silent.iter().any(|(a, b)| (*a..*b).contains(&t))
    }
}

/// A weighing to be taken at `at` by one of the scales of `enterprise`.
struct Weighing {
    at: i64,
    enterprise: usize,
    container: ContainerId,
    stage: Stage,
    mg: i64,
    manifest: Option<ManifestId>,
}

fn noisy(rng: &mut SmallRng, mg: i64) -> i64 {
    let n = mg / 100;
    mg + rng.random_range(-n..=n)
}

fn scaled(mg: i64, keep_pct: i64) -> i64 {
    mg * keep_pct / 100
}

/// Generates the world of `seed`.
pub fn generate(seed: u64, terminals: usize, days: u32, faults: Faults) -> Workload {
    generate_with(seed, terminals, days.max(1) * 24, faults, REPORT_INTERVAL_S)
}

/// [`generate`] for `hours` (at least 2) with a heartbeat every `heartbeat_s` seconds (the registered
/// report interval stays [`REPORT_INTERVAL_S`]; a terminal may report more often than it promised).
pub fn generate_with(
    seed: u64,
    terminals: usize,
    hours: u32,
    faults: Faults,
    heartbeat_s: u32,
) -> Workload {
    let mut rng = SmallRng::seed_from_u64(seed);
    let terminals = terminals.max(2);
    let n_ent = (terminals / 4).max(2);
    let hours = hours.max(2);
    let days = hours.div_ceil(24);
    let end_ns = T0 + i64::from(hours) * HOUR;
    let last_fact = end_ns - HOUR;
    let interval = i64::from(heartbeat_s.max(1)) * S;
    let jitter = (interval / 2).clamp(1, 30 * S);
    let enterprises: Vec<EnterpriseId> = (0..n_ent)
        .map(|e| EnterpriseId::parse(&format!("E-{e}")).expect("enterprise id"))
        .collect();
    let mut scales: Vec<Scale> = (0..terminals)
        .map(|i| Scale {
            id: TerminalId::parse(&format!("S-{i}")).expect("terminal id"),
            enterprise: i % n_ent,
            silent: Vec::new(),
            load_cell: false,
        })
        .collect();
    let mut truths = Vec::new();

    // Silences (truths): non-primary scales only, so every enterprise can always weigh.
    for s in scales.iter_mut().skip(n_ent) {
        let len = rng.random_range(2 * HOUR..5 * HOUR);
        let (lo, hi) = (T0 + 2 * HOUR, last_fact - len - HOUR);
        if hi > lo && rng.random_bool(0.3) {
            let from = rng.random_range(lo..hi);
            s.silent.push((from, from + len));
            truths.push(Truth::FellSilent {
                terminal: s.id.clone(),
                from_ns: from,
                to_ns: from + len,
            });
        }
    }

    // Load cells: one under a storage tank at every other enterprise, from a generator of their own.
    let first_cell = scales.len();
    for e in (0..n_ent).step_by(2) {
        scales.push(Scale {
            id: TerminalId::parse(&format!("L-{e}")).expect("terminal id"),
            enterprise: e,
            silent: Vec::new(),
            load_cell: true,
        });
    }

    // Heartbeats.
    let mut measured: Vec<(usize, Reading)> = Vec::new();
    let heartbeat = |id: &TerminalId, at: i64, value: i64| Reading {
        terminal_id: id.clone(),
        seq: 0,
        measured_at_ns: at,
        kind: ReadingKind::Temperature,
        value,
        container_id: None,
        stage: None,
        waste_code: None,
        manifest_id: None,
    };
    for (i, s) in scales.iter().enumerate().take(first_cell) {
        let mut t = T0 + rng.random_range(0..interval);
        // Until the end: a scale that stopped before the last ticks would be silent.
        while t < end_ns {
            let at = t + rng.random_range(0..jitter);
            let v = 20_000 + rng.random_range(0..200);
            if !s.silent_at(at) {
                measured.push((i, heartbeat(&s.id, at, v)));
            }
            t += interval;
        }
    }

    // The tanks' weight, read by their load cells every interval: a slow drift (the tank filling and
    // being emptied by a few kg) and ±0.5 % noise, far below the 20 % load-cell threshold, so never an
    // anomaly.
    let mut lrng = SmallRng::seed_from_u64(seed ^ 0x10AD_CE11_0000_0005);
    for (i, s) in scales.iter().enumerate().skip(first_cell) {
        let mut level = lrng.random_range(2_000 * KG..8_000 * KG) as f64;
        let mut t = T0 + lrng.random_range(0..interval);
        while t < end_ns {
            let at = t + lrng.random_range(0..jitter);
            level = (level + lrng.random_range(-5.0 * KG as f64..5.0 * KG as f64))
                .clamp(1_000.0 * KG as f64, 9_000.0 * KG as f64);
            let noisy = level * (1.0 + lrng.random_range(-0.005..0.005));
            measured.push((
                i,
                Reading {
                    terminal_id: s.id.clone(),
                    seq: 0,
                    measured_at_ns: at,
                    kind: ReadingKind::Weight,
                    value: noisy as i64,
                    container_id: None,
                    stage: None,
                    waste_code: None,
                    manifest_id: None,
                },
            ));
            t += interval;
        }
    }

    // Shipments.
    let mut weighings: Vec<Weighing> = Vec::new();
    let mut api: Vec<Item> = Vec::new();
    let (mut n_containers, mut n_manifests) = (0usize, 0usize);
    for generator in 0..n_ent {
        let mut t = T0 + rng.random_range(10 * MIN..2 * HOUR);
        loop {
            let k = rng.random_range(1..=4usize);
            let roll = rng.random_range(0..100);
            let (lost, light, overdue) =
                (roll < 8, (8..16).contains(&roll), (16..24).contains(&roll));
            let stay = if overdue {
                STORAGE_LIMIT_S * S + rng.random_range(HOUR..4 * HOUR)
            } else {
                rng.random_range(2 * HOUR..STORAGE_LIMIT_S * S - HOUR)
            };
            let travel = rng.random_range(HOUR..3 * HOUR);
            let gap = rng.random_range(20 * MIN..3 * HOUR);
            let done = t + stay + travel + (k as i64 + 1) * MIN;
            if done >= last_fact {
                break;
            }
            let mut recv = rng.random_range(0..n_ent - 1);
            if recv >= generator {
                recv += 1;
            }
            let manifest = ManifestId::parse(&format!("M-{n_manifests}")).expect("manifest id");
            n_manifests += 1;
            let lost_one = rng.random_range(0..k);
            let mut containers = Vec::new();
            let mut out_total = 0;
            for i in 0..k {
                let c = ContainerId::parse(&format!("C-{n_containers}")).expect("container id");
                n_containers += 1;
                let off = i as i64 * MIN;
                let w = rng.random_range(50 * KG..800 * KG);
                let mut weigh = |at: i64, e: usize, stage: Stage, mg: i64, m: bool| {
                    weighings.push(Weighing {
                        at,
                        enterprise: e,
                        container: c.clone(),
                        stage,
                        mg,
                        manifest: m.then(|| manifest.clone()),
                    })
                };
                weigh(t + off, generator, Stage::Generation, w, false);
                let stored = noisy(&mut rng, w);
                weigh(
                    t + 10 * MIN + off,
                    generator,
                    Stage::StorageIn,
                    stored,
                    false,
                );
                let out = if lost && i == lost_one {
                    let keep = 100 - rng.random_range(25..=60);
                    noisy(&mut rng, scaled(w, keep))
                } else {
                    noisy(&mut rng, w)
                };
                out_total += out;
                weigh(t + stay + off, generator, Stage::TransferOut, out, true);
                let arrived = if light {
                    let keep = 100 - rng.random_range(25..=50);
                    noisy(&mut rng, scaled(out, keep))
                } else {
                    noisy(&mut rng, out)
                };
                weigh(
                    t + stay + travel + off,
                    recv,
                    Stage::TransferIn,
                    arrived,
                    true,
                );
                if lost && i == lost_one {
                    truths.push(Truth::LostInStorage {
                        container: c.clone(),
                    });
                }
                containers.push(c);
            }
            if light {
                truths.push(Truth::ArrivedLight {
                    manifest: manifest.clone(),
                    containers: containers.clone(),
                });
            }
            if overdue {
                truths.push(Truth::StoredTooLong {
                    containers: containers.clone(),
                });
            }
            let mut sorted = containers.clone();
            sorted.sort();
            api.push(Item {
                at_ns: t + stay - 5 * MIN,
                payload: Payload::Api(vec![Event::ManifestOpened(ManifestOpened {
                    id: manifest,
                    generator_id: enterprises[generator].clone(),
                    receiver_id: enterprises[recv].clone(),
                    waste_code: "HW08".into(),
                    container_ids: sorted,
                    declared_mg: out_total,
                    notes: None,
                })]),
            });
            t += gap;
        }
    }
    // Each weighing on a scale of its enterprise that is measuring then (a primary always is).
    for w in weighings {
        let candidates: Vec<usize> = (0..scales.len())
            .filter(|&i| {
                scales[i].enterprise == w.enterprise
                    && !scales[i].load_cell
                    && !scales[i].silent_at(w.at)
            })
            .collect();
        let i = candidates[rng.random_range(0..candidates.len())];
        measured.push((
            i,
            Reading {
                terminal_id: scales[i].id.clone(),
                seq: 0,
                measured_at_ns: w.at + rng.random_range(0..S),
                kind: ReadingKind::Weight,
                value: w.mg,
                container_id: Some(w.container),
                stage: Some(w.stage),
                waste_code: Some("HW08".into()),
                manifest_id: w.manifest,
            },
        ));
    }

    // Per scale: readings in time order, strictly increasing instants, seqs from 1.
    let mut per_scale: Vec<Vec<Reading>> = vec![Vec::new(); scales.len()];
    for (i, r) in measured {
        per_scale[i].push(r);
    }
    let mut readings = BTreeMap::new();
    for rs in &mut per_scale {
        rs.sort_by_key(|r| r.measured_at_ns);
        let mut prev = i64::MIN;
        for (n, r) in rs.iter_mut().enumerate() {
            if r.measured_at_ns <= prev {
                r.measured_at_ns = prev + 1;
            }
            prev = r.measured_at_ns;
            r.seq = n as u64 + 1;
            readings.insert((r.terminal_id.clone(), r.seq), r.clone());
        }
    }

    // Offline periods (faults of delivery), from a generator of their own: the same seed is the same world
    // with faults or without.
    let mut frng = SmallRng::seed_from_u64(seed ^ 0x0FF1_1E5E_ED00_0002);
    let mut offline = Vec::new();
    if faults == Faults::Default {
        for s in &scales {
            for day in 0..i64::from(days.max(1)) {
                let len = frng.random_range(30 * MIN..6 * HOUR);
                let lo = T0 + day * 24 * HOUR + HOUR;
                let hi = (lo + 24 * HOUR - len - 2 * HOUR).min(last_fact - len);
                if hi > lo && frng.random_bool(0.35) {
                    let from = frng.random_range(lo..hi);
                    offline.push(Offline {
                        terminal: s.id.clone(),
                        from_ns: from,
                        to_ns: from + len,
                    });
                }
            }
        }
    }

    // Uploads: at the scale's next upload slot; a backlog at the end of its outage.
    let mut uploads: Vec<Item> = Vec::new();
    for (i, rs) in per_scale.into_iter().enumerate() {
        let id = scales[i].id.clone();
        let phase = rng.random_range(0..UPLOAD_S) * S;
        let outages: Vec<&Offline> = offline.iter().filter(|o| o.terminal == id).collect();
        let mut by_time: BTreeMap<i64, Vec<Reading>> = BTreeMap::new();
        let mut backlogs: BTreeMap<i64, Vec<Reading>> = BTreeMap::new();
        for r in rs {
            let m = r.measured_at_ns;
            if let Some(o) = outages.iter().find(|o| (o.from_ns..o.to_ns).contains(&m)) {
                backlogs.entry(o.to_ns).or_default().push(r);
                continue;
            }
            let slots = (m - T0 - phase + UPLOAD_S * S - 1).div_euclid(UPLOAD_S * S);
            let mut at = T0 + phase + slots.max(0) * UPLOAD_S * S;
            if faults == Faults::Default && frng.random_bool(0.1) {
                at += frng.random_range(1..=5) * UPLOAD_S * S;
            }
            by_time.entry(at).or_default().push(r);
        }
        // Tampering (truth): one reading sent again, at least two steps after its upload, altered.
        let rewrite = rng.random_bool(0.15);
        if let Some((at, rs)) = by_time
            .iter()
            .nth(rng.random_range(0..by_time.len().max(1)))
            && rewrite
        {
            let when = at + 2 * STEP_S * S + rng.random_range(0..HOUR);
            if when < end_ns {
                let mut forged = rs[0].clone();
                forged.value += rng.random_range(1..1_000);
                truths.push(Truth::Rewrote {
                    terminal: id.clone(),
                    seq: forged.seq,
                });
                uploads.push(Item {
                    at_ns: when,
                    payload: Payload::Rewrite {
                        terminal: id.clone(),
                        reading: forged,
                    },
                });
            }
        }
        for (at, rs) in by_time {
            uploads.push(Item {
                at_ns: at,
                payload: Payload::Upload {
                    terminal: id.clone(),
                    readings: rs,
                },
            });
        }
        for (at, mut rs) in backlogs {
            // Partly shuffled: a terminal's buffer is not always sent in order.
            for _ in 0..rs.len() / 3 {
                let (a, b) = (
                    frng.random_range(0..rs.len()),
                    frng.random_range(0..rs.len()),
                );
                rs.swap(a, b);
            }
            let mut rest = rs.as_slice();
            while !rest.is_empty() {
                let n = frng.random_range(1..=rest.len().min(20));
                uploads.push(Item {
                    at_ns: at,
                    payload: Payload::Upload {
                        terminal: id.clone(),
                        readings: rest[..n].to_vec(),
                    },
                });
                rest = &rest[n..];
            }
        }
    }

    // Registrations first, then everything in time order (API, uploads, ticks at the same instant).
    let mut setup: Vec<Event> = enterprises
        .iter()
        .map(|e| {
            Event::EnterpriseRegistered(EnterpriseRegistered {
                id: e.clone(),
                name: e.to_string(),
                province_code: "440000".into(),
                city_code: "440100".into(),
                storage_capacity_mg: 1_000_000 * 1_000 * KG,
            })
        })
        .collect();
    setup.extend(scales.iter().map(|s| {
        Event::TerminalRegistered(TerminalRegistered {
            id: s.id.clone(),
            enterprise_id: enterprises[s.enterprise].clone(),
            kind: if s.load_cell {
                TerminalKind::LoadCell
            } else {
                TerminalKind::Scale
            },
            capacity_mg: if s.load_cell { 20_000 * KG } else { 5_000 * KG },
            report_interval_s: REPORT_INTERVAL_S,
            public_key: None,
        })
    }));
    let mut items: Vec<(i64, u8, Item)> = vec![(
        T0,
        0,
        Item {
            at_ns: T0,
            payload: Payload::Api(setup),
        },
    )];
    items.extend(api.into_iter().map(|i| (i.at_ns, 1, i)));
    items.extend(uploads.into_iter().map(|i| (i.at_ns, 2, i)));
    let mut tick = T0 + TICK_S * S;
    while tick <= end_ns {
        items.push((
            tick,
            3,
            Item {
                at_ns: tick,
                payload: Payload::Tick(tick),
            },
        ));
        tick += TICK_S * S;
    }
    items.sort_by_key(|(at, class, _)| (*at, *class));
    let mut steps: Vec<Step> = Vec::new();
    for (at, _, item) in items {
        let k = (at - T0 + STEP_S * S - 1).div_euclid(STEP_S * S).max(0);
        let end = T0 + k * STEP_S * S;
        match steps.last_mut() {
            Some(s) if s.end_ns == end => s.items.push(item),
            _ => steps.push(Step {
                end_ns: end,
                items: vec![item],
            }),
        }
    }
    Workload {
        steps,
        truths,
        offline,
        readings,
        terminals: scales.into_iter().map(|s| s.id).collect(),
        end_ns,
    }
}

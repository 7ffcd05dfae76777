//! The oracle: from the generated world and its delivery plan alone — never from `Core` or the log — the
//! set of anomalies (kind, subject and causing readings) the documented rules must produce.
//!
//! It walks the plan's items in order, which is the order in which facts *first* reach the log: the
//! simulator's duplicates add nothing, and what a crash loses is resent before anything after it. The
//! rules it encodes, as documented in `events/src/domain` (defaults but a 12 h storage limit):
//!
//! - **weight_fluctuation** (container): a weighing is compared with its neighbours by `measured_at`
//!   (ties by `terminal/seq`) *among the weighings already in the log*; a pair fires when
//!   `100 × |later − earlier| > 20 × earlier` (from zero: any rise). An anomaly is never withdrawn, so a
//!   late weighing that lands between two others adds its own pairs and the earlier pair stays: the
//!   expected set is every pair that was ever adjacent on arrival and over the threshold.
//! - **manifest_weight_mismatch**: once the manifest is opened and every listed container has a
//!   `transfer_out` and a `transfer_in` weighing (the latest by `measured_at` per container and side),
//!   decided once (the manifest is then `received`): `100 × |in − out| > 20 × out`. Causes: all of them.
//! - **storage_overdue** (time-driven): at a `ClockTicked` of instant τ, a container whose latest staged
//!   weighing *in the log* is `storage_in` measured at `since` fires when `τ > since + limit`, once per
//!   `storage_in` weighing. So a `transfer_out` measured in time but delivered after that tick (a scale
//!   offline) does not prevent it.
//! - **terminal_silent** (time-driven): at a tick τ, a registered terminal whose latest reading *in the
//!   log* (by `measured_at`) was measured at `last` fires when `τ > last + 3 × report interval`, once per
//!   last reading. A scale offline for more than 45 min is therefore reported silent, naming the last
//!   reading it delivered before the outage; the node cannot tell an outage from a silence. A late
//!   reading measured before `last` does not move it.
//! - **tamper_suspected**: a reading sent under a `(terminal, seq)` the log already holds, with other
//!   content (the workload sends a rewrite only steps after the original was acknowledged, so the
//!   original is the one kept): once per `(terminal, seq)`, however often it is tried.
//! - `over_capacity` and the load-cell `weight_fluctuation` never fire in this world (capacities are
//!   huge; the load cells' tanks drift by a few kg with ±0.5 % noise, far under the 20 % threshold):
//!   none expected, so a false alarm from load-cell noise fails the run.

use std::collections::{BTreeMap, BTreeSet};

use custodian_events::domain::container::change_over_threshold;
use custodian_events::domain::{AnomalyKind, ReadingRef, Rules};
use custodian_events::{ContainerId, Event, ManifestId, Reading, ReadingKind, Stage, TerminalId};

use crate::workload::{Payload, Workload};

/// One anomaly as the oracle and the checker name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expected {
    pub kind: AnomalyKind,
    pub subject: String,
    /// Sorted.
    pub causes: Vec<ReadingRef>,
}

impl Expected {
    pub fn new(kind: AnomalyKind, subject: String, mut causes: Vec<ReadingRef>) -> Self {
        causes.sort();
        causes.dedup();
        Expected {
            kind,
            subject,
            causes,
        }
    }

    pub fn describe(&self) -> String {
        let causes: Vec<String> = self.causes.iter().map(ReadingRef::text).collect();
        format!(
            "{} {} [{}]",
            self.kind.name(),
            self.subject,
            causes.join(", ")
        )
    }
}

fn rref(r: &Reading) -> ReadingRef {
    ReadingRef {
        terminal_id: r.terminal_id.clone(),
        seq: r.seq,
    }
}

#[derive(Default)]
struct Container {
    /// (measured_at, ref) → (value, stage).
    weighings: BTreeMap<(i64, ReadingRef), (i64, Option<Stage>)>,
}

#[derive(Default)]
struct Manifest {
    containers: Option<Vec<ContainerId>>,
    out: BTreeMap<ContainerId, (i64, i64, ReadingRef)>,
    into: BTreeMap<ContainerId, (i64, i64, ReadingRef)>,
    received: bool,
}

impl Manifest {
    fn total(
        &self,
        side: &BTreeMap<ContainerId, (i64, i64, ReadingRef)>,
    ) -> Option<(i64, Vec<ReadingRef>)> {
        let mut total = 0i64;
        let mut refs = Vec::new();
        for c in self.containers.as_ref()? {
            let (_, v, r) = side.get(c)?;
            total = total.saturating_add(*v);
            refs.push(r.clone());
        }
        Some((total, refs))
    }
}

struct Oracle {
    rules: Rules,
    intervals: BTreeMap<TerminalId, i64>,
    last: BTreeMap<TerminalId, (i64, ReadingRef)>,
    containers: BTreeMap<ContainerId, Container>,
    manifests: BTreeMap<ManifestId, Manifest>,
    /// Containers whose latest staged weighing in the log is `storage_in`: (since, that weighing), until
    /// their overdue fires.
    stored: BTreeMap<ContainerId, (i64, ReadingRef)>,
    /// Per terminal, the last reading its silence was reported for.
    silent_for: BTreeMap<TerminalId, ReadingRef>,
    out: BTreeSet<Expected>,
}

impl Oracle {
    fn fire(&mut self, e: Expected) {
        self.out.insert(e);
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::TerminalRegistered(t) => {
                self.intervals
                    .insert(t.id.clone(), i64::from(t.report_interval_s));
            }
            Event::ManifestOpened(m) => {
                let man = self.manifests.entry(m.id.clone()).or_default();
                man.containers = Some(m.container_ids.clone());
                self.manifest_check(&m.id.clone());
            }
            Event::ReadingRecorded(r) => self.reading(r),
            Event::ClockTicked(t) => self.tick(t.at_ns),
            _ => {}
        }
    }

    fn reading(&mut self, r: &Reading) {
        let me = rref(r);
        if self
            .last
            .get(&r.terminal_id)
            .is_none_or(|(at, _)| r.measured_at_ns > *at)
        {
            self.last
                .insert(r.terminal_id.clone(), (r.measured_at_ns, me.clone()));
        }
        if r.kind != ReadingKind::Weight {
            return;
        }
        let Some(c) = &r.container_id else { return };
        // weight_fluctuation over the container's chain.
        let threshold = self.rules.weighing.threshold_pct_default;
        let chain = self.containers.entry(c.clone()).or_default();
        let key = (r.measured_at_ns, me.clone());
        if !chain.weighings.contains_key(&key) {
            let before = chain
                .weighings
                .range(..key.clone())
                .next_back()
                .map(|((_, rf), (v, _))| (rf.clone(), *v));
            let after = chain
                .weighings
                .range((
                    std::ops::Bound::Excluded(key.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .map(|((_, rf), (v, _))| (rf.clone(), *v));
            chain.weighings.insert(key, (r.value, r.stage));
            let latest = chain.weighings.iter().rev().find(|(_, (_, s))| s.is_some());
            match latest {
                Some(((since, rf), (_, Some(Stage::StorageIn)))) => {
                    self.stored.insert(c.clone(), (*since, rf.clone()));
                }
                _ => {
                    self.stored.remove(c);
                }
            }
            let mut fired = Vec::new();
            if let Some((bref, bv)) = before
                && change_over_threshold(bv, r.value, threshold).is_some()
            {
                fired.push(vec![bref, me.clone()]);
            }
            if let Some((aref, av)) = after
                && change_over_threshold(r.value, av, threshold).is_some()
            {
                fired.push(vec![me.clone(), aref]);
            }
            for causes in fired {
                self.fire(Expected::new(
                    AnomalyKind::WeightFluctuation,
                    format!("container:{c}"),
                    causes,
                ));
            }
        }
        // The manifest's sides.
        if let Some(m) = &r.manifest_id {
            let man = self.manifests.entry(m.clone()).or_default();
            let side = match r.stage {
                Some(Stage::TransferOut) => Some(&mut man.out),
                Some(Stage::TransferIn) => Some(&mut man.into),
                _ => None,
            };
            if let Some(side) = side
                && side.get(c).is_none_or(|(at, _, _)| *at <= r.measured_at_ns)
            {
                side.insert(c.clone(), (r.measured_at_ns, r.value, me));
            }
            self.manifest_check(&m.clone());
        }
    }

    fn manifest_check(&mut self, m: &ManifestId) {
        let pct = i128::from(self.rules.manifest_mismatch_pct);
        let Some(man) = self.manifests.get_mut(m) else {
            return;
        };
        if man.received {
            return;
        }
        let (Some((out, mut causes)), Some((into, in_causes))) =
            (man.total(&man.out), man.total(&man.into))
        else {
            return;
        };
        man.received = true;
        causes.extend(in_causes);
        let (o, i) = (i128::from(out), i128::from(into));
        let fires = if o == 0 {
            i > 0
        } else {
            100 * (i - o).abs() > pct * o
        };
        if fires {
            self.fire(Expected::new(
                AnomalyKind::ManifestWeightMismatch,
                format!("manifest:{m}"),
                causes,
            ));
        }
    }

    fn tick(&mut self, at_ns: i64) {
        let mut fired = Vec::new();
        for (t, (last_at, last_ref)) in &self.last {
            let Some(interval) = self.intervals.get(t) else {
                continue;
            };
            let allowed = interval * i64::from(self.rules.silence_intervals) * 1_000_000_000;
            if at_ns > last_at + allowed && self.silent_for.get(t) != Some(last_ref) {
                fired.push(Expected::new(
                    AnomalyKind::TerminalSilent,
                    format!("terminal:{t}"),
                    vec![last_ref.clone()],
                ));
                self.silent_for.insert(t.clone(), last_ref.clone());
            }
        }
        let limit = self.rules.storage_limit_s * 1_000_000_000;
        let overdue: Vec<ContainerId> = self
            .stored
            .iter()
            .filter(|(_, (since, _))| at_ns > since + limit)
            .map(|(c, _)| c.clone())
            .collect();
        for c in overdue {
            let (_, rf) = self.stored.remove(&c).expect("listed");
            fired.push(Expected::new(
                AnomalyKind::StorageOverdue,
                format!("container:{c}"),
                vec![rf],
            ));
        }
        // Once per identity: the set keeps one.
        for e in fired {
            self.fire(e);
        }
    }
}

/// The anomalies the rules must produce from `workload`, delivered in its plan's order.
pub fn expected(workload: &Workload, rules: &Rules) -> BTreeSet<Expected> {
    let mut o = Oracle {
        rules: rules.clone(),
        intervals: BTreeMap::new(),
        last: BTreeMap::new(),
        containers: BTreeMap::new(),
        manifests: BTreeMap::new(),
        stored: BTreeMap::new(),
        silent_for: BTreeMap::new(),
        out: BTreeSet::new(),
    };
    for step in &workload.steps {
        for item in &step.items {
            match &item.payload {
                Payload::Upload { readings, .. } => {
                    for r in readings {
                        o.reading(r);
                    }
                }
                Payload::Rewrite { terminal, reading } => o.fire(Expected::new(
                    AnomalyKind::TamperSuspected,
                    format!("terminal:{terminal}"),
                    vec![rref(reading)],
                )),
                _ => {
                    for e in item.events() {
                        o.event(&e);
                    }
                }
            }
        }
    }
    o.out
}

//! The enterprise aggregate: what an enterprise's weighings say together.
//!
//! - `over_capacity`: the stored inventory — the sum of the latest weighing of every container whose
//!   latest staged weighing here is `storage_in` — rises above the enterprise's registered storage
//!   capacity. It fires on the weighing that crosses the limit, and again only after the inventory has
//!   come back to or under it.
//! - `weight_fluctuation` of a continuous load cell (a weighing without a container, from a terminal
//!   registered as `load_cell`): a change of more than the threshold between consecutive readings (by
//!   `measured_at`) that no `storage_in` / `storage_out` weighing at the enterprise between the two
//!   explains. A late reading is compared with both neighbours, as for containers.
//!
//! Containers leave the inventory map when weighed `transfer_out` or `disposal`, so the state stays the
//! size of what is on site (a `storage_in` arriving after such a weighing, late, counts it back in).

use std::collections::{BTreeMap, BTreeSet};

use crate::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use crate::domain::container::change_over_threshold;
use crate::domain::rules::{At, Rules};
use crate::event::{Event, TerminalKind};
use crate::fingerprint::Fingerprint;
use crate::ids::{ContainerId, EnterpriseId, TerminalId};
use crate::reading::{Reading, ReadingKind, Stage};

/// Readings kept per load cell for comparing late arrivals with their neighbours.
pub const LOAD_CELL_WINDOW: usize = 64;
/// Storage movements kept for explaining load-cell changes.
pub const MOVEMENTS_KEPT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Staged {
    measured_at_ns: i64,
    stage: Stage,
    value_mg: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CellReading {
    value_mg: i64,
    event_seq: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnterpriseState {
    capacity_mg: Option<i64>,
    load_cells: BTreeSet<TerminalId>,
    /// The latest staged weighing of each container on site.
    containers: BTreeMap<ContainerId, Staged>,
    /// The sum of `containers` whose stage is `storage_in`.
    inventory_mg: i64,
    /// Per load cell, its recent readings by `(measured_at, seq)`.
    cells: BTreeMap<TerminalId, BTreeMap<(i64, u64), CellReading>>,
    /// `measured_at` of recent `storage_in` / `storage_out` weighings.
    movements: BTreeSet<i64>,
    emitted: BTreeSet<Fingerprint>,
}

fn contribution(s: Option<&Staged>) -> i64 {
    match s {
        Some(s) if s.stage == Stage::StorageIn => s.value_mg,
        _ => 0,
    }
}

impl EnterpriseState {
    pub fn inventory_mg(&self) -> i64 {
        self.inventory_mg
    }

    /// The inventory after `r` is applied, if `r` changes it.
    fn inventory_after(&self, r: &Reading) -> Option<i64> {
        let (Some(c), Some(stage)) = (&r.container_id, r.stage) else {
            return None;
        };
        let old = self.containers.get(c);
        if old.is_some_and(|o| o.measured_at_ns > r.measured_at_ns) {
            return None;
        }
        let new = Staged {
            measured_at_ns: r.measured_at_ns,
            stage,
            value_mg: r.value,
        };
        Some(self.inventory_mg - contribution(old) + contribution(Some(&new)))
    }

    pub fn decide(
        &self,
        enterprise: &EnterpriseId,
        rules: &Rules,
        event: &Event,
        at: At,
    ) -> Vec<Event> {
        let Event::ReadingRecorded(r) = event else {
            return Vec::new();
        };
        if r.kind != ReadingKind::Weight {
            return Vec::new();
        }
        let mut out = Vec::new();
        let subject = format!("enterprise:{enterprise}");
        let me = ReadingRef {
            terminal_id: r.terminal_id.clone(),
            seq: r.seq,
        };
        if let (Some(capacity), Some(after)) = (self.capacity_mg, self.inventory_after(r))
            && self.inventory_mg <= capacity
            && after > capacity
        {
            let mut a = AnomalyDetected::new(
                AnomalyKind::OverCapacity,
                if 5 * i128::from(after) > 6 * i128::from(capacity) {
                    Severity::High
                } else {
                    Severity::Medium
                },
                subject.clone(),
                vec![me.clone()],
                at.seq,
                vec![at.seq],
            );
            a.enterprise_id = Some(enterprise.clone());
            a.terminal_id = Some(r.terminal_id.clone());
            a.container_id = r.container_id.clone();
            a.previous_value = Some(self.inventory_mg);
            a.current_value = Some(after);
            a.limit_value = Some(capacity);
            if !self.emitted.contains(&a.anomaly_id) {
                out.push(Event::AnomalyDetected(a));
            }
        }
        if r.container_id.is_none()
            && self.load_cells.contains(&r.terminal_id)
            && let Some(cell) = self.cells.get(&r.terminal_id)
        {
            let key = (r.measured_at_ns, r.seq);
            if cell.contains_key(&key) {
                return out;
            }
            let mine = CellReading {
                value_mg: r.value,
                event_seq: at.seq,
            };
            let before = cell.range(..key).next_back();
            let after = cell
                .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
                .next();
            let pairs = [
                before.map(|(k, v)| ((*k, v), (key, &mine))),
                after.map(|(k, v)| ((key, &mine), (*k, v))),
            ];
            for ((ek, ev), (lk, lv)) in pairs.into_iter().flatten() {
                let Some((change_ratio_ppm, severity)) =
                    change_over_threshold(ev.value_mg, lv.value_mg, rules.load_cell_pct)
                else {
                    continue;
                };
                let explained =
                    ek.0 < lk.0 && self.movements.range(ek.0 + 1..=lk.0).next().is_some();
                if explained {
                    continue;
                }
                let causes = vec![
                    ReadingRef {
                        terminal_id: r.terminal_id.clone(),
                        seq: ek.1,
                    },
                    ReadingRef {
                        terminal_id: r.terminal_id.clone(),
                        seq: lk.1,
                    },
                ];
                let mut a = AnomalyDetected::new(
                    AnomalyKind::WeightFluctuation,
                    severity,
                    subject.clone(),
                    causes,
                    at.seq,
                    vec![ev.event_seq, lv.event_seq],
                );
                if self.emitted.contains(&a.anomaly_id) {
                    continue;
                }
                a.enterprise_id = Some(enterprise.clone());
                a.terminal_id = Some(r.terminal_id.clone());
                a.previous_value = Some(ev.value_mg);
                a.current_value = Some(lv.value_mg);
                a.change_ratio_ppm = change_ratio_ppm;
                out.push(Event::AnomalyDetected(a));
            }
        }
        out
    }

    pub fn apply(&mut self, event: &Event, at: At) {
        match event {
            Event::EnterpriseRegistered(e) => self.capacity_mg = Some(e.storage_capacity_mg),
            Event::TerminalRegistered(t) if t.kind == TerminalKind::LoadCell => {
                self.load_cells.insert(t.id.clone());
                self.cells.entry(t.id.clone()).or_default();
            }
            Event::ReadingRecorded(r) if r.kind == ReadingKind::Weight => {
                if let Some(after) = self.inventory_after(r) {
                    let (c, stage) = (r.container_id.clone().unwrap(), r.stage.unwrap());
                    self.inventory_mg = after;
                    if matches!(stage, Stage::TransferOut | Stage::Disposal) {
                        self.containers.remove(&c);
                    } else {
                        self.containers.insert(
                            c,
                            Staged {
                                measured_at_ns: r.measured_at_ns,
                                stage,
                                value_mg: r.value,
                            },
                        );
                    }
                }
                if matches!(r.stage, Some(Stage::StorageIn | Stage::StorageOut)) {
                    self.movements.insert(r.measured_at_ns);
                    while self.movements.len() > MOVEMENTS_KEPT {
                        self.movements.pop_first();
                    }
                }
                if r.container_id.is_none()
                    && let Some(cell) = self.cells.get_mut(&r.terminal_id)
                {
                    cell.insert(
                        (r.measured_at_ns, r.seq),
                        CellReading {
                            value_mg: r.value,
                            event_seq: at.seq,
                        },
                    );
                    while cell.len() > LOAD_CELL_WINDOW {
                        cell.pop_first();
                    }
                }
            }
            Event::AnomalyDetected(a) => {
                self.emitted.insert(a.anomaly_id);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EnterpriseRegistered, TerminalRegistered};

    const KG: i64 = 1_000_000;
    const T0: i64 = 1_790_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn e1() -> EnterpriseId {
        EnterpriseId::parse("E-1").unwrap()
    }

    fn setup(capacity_kg: i64) -> Vec<Event> {
        let terminal = |id: &str, kind| {
            Event::TerminalRegistered(TerminalRegistered {
                id: TerminalId::parse(id).unwrap(),
                enterprise_id: e1(),
                kind,
                capacity_mg: 10_000 * KG,
                report_interval_s: 10,
                public_key: None,
            })
        };
        vec![
            Event::EnterpriseRegistered(EnterpriseRegistered {
                id: e1(),
                name: "x".into(),
                province_code: "440000".into(),
                city_code: "440100".into(),
                storage_capacity_mg: capacity_kg * KG,
            }),
            terminal("S-1", TerminalKind::Scale),
            terminal("L-1", TerminalKind::LoadCell),
        ]
    }

    fn weigh(seq: u64, at_s: i64, container: Option<&str>, stage: Option<Stage>, kg: i64) -> Event {
        Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse(if container.is_some() { "S-1" } else { "L-1" })
                .unwrap(),
            seq,
            measured_at_ns: T0 + at_s * S,
            kind: ReadingKind::Weight,
            value: kg * KG,
            container_id: container.map(|c| ContainerId::parse(c).unwrap()),
            stage,
            waste_code: None,
            manifest_id: None,
        })
    }

    fn run(state: &mut EnterpriseState, events: &[Event]) -> Vec<AnomalyDetected> {
        let rules = Rules::default();
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let at = At::seq(100 + i as u64);
            let derived = state.decide(&e1(), &rules, e, at);
            state.apply(e, at);
            for d in derived {
                state.apply(&d, at);
                if let Event::AnomalyDetected(a) = d {
                    out.push(a);
                }
            }
        }
        out
    }

    #[test]
    fn over_capacity_fires_on_crossing_and_rearms_below() {
        let mut s = EnterpriseState::default();
        run(&mut s, &setup(1000));
        let si = Some(Stage::StorageIn);
        assert!(
            run(
                &mut s,
                &[
                    weigh(1, 0, Some("C-1"), si, 600),
                    weigh(2, 1, Some("C-2"), si, 400)
                ]
            )
            .is_empty(),
            "exactly at capacity is not over"
        );
        let out = run(&mut s, &[weigh(3, 2, Some("C-3"), si, 1)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, AnomalyKind::OverCapacity);
        assert_eq!(out[0].current_value, Some(1001 * KG));
        assert_eq!(out[0].limit_value, Some(1000 * KG));
        // Still over: no new anomaly for more waste.
        assert!(run(&mut s, &[weigh(4, 3, Some("C-4"), si, 5)]).is_empty());
        // C-1 leaves (600 kg), the inventory falls under; then rises over again: a second anomaly.
        assert!(
            run(
                &mut s,
                &[weigh(5, 4, Some("C-1"), Some(Stage::TransferOut), 600)]
            )
            .is_empty()
        );
        assert_eq!(s.inventory_mg(), 406 * KG);
        let out = run(&mut s, &[weigh(6, 5, Some("C-5"), si, 700)]);
        assert_eq!(out.len(), 1);
        // A re-weighing of a stored container replaces its weight, not adds to it.
        let mut t = EnterpriseState::default();
        run(&mut t, &setup(1000));
        run(
            &mut t,
            &[
                weigh(1, 0, Some("C-1"), si, 600),
                weigh(2, 1, Some("C-1"), si, 610),
            ],
        );
        assert_eq!(t.inventory_mg(), 610 * KG);
        // A late, older weighing of a container does not override a newer one.
        run(&mut t, &[weigh(3, -5, Some("C-1"), si, 10)]);
        assert_eq!(t.inventory_mg(), 610 * KG);
    }

    #[test]
    fn a_load_cell_jump_fires_unless_a_storage_movement_explains_it() {
        let mut s = EnterpriseState::default();
        run(&mut s, &setup(100_000));
        assert!(
            run(
                &mut s,
                &[
                    weigh(1, 0, None, None, 1000),
                    weigh(2, 10, None, None, 1200)
                ]
            )
            .is_empty(),
            "20% exactly"
        );
        let out = run(&mut s, &[weigh(3, 20, None, None, 800)]);
        assert_eq!(out.len(), 1, "1200 → 800 kg, unexplained");
        assert_eq!(out[0].kind, AnomalyKind::WeightFluctuation);
        assert_eq!(out[0].terminal_id.as_ref().unwrap().as_str(), "L-1");
        assert_eq!(out[0].change_ratio_ppm, Some(333_333));
        // A drum taken out of storage between two readings explains the drop.
        let out = run(
            &mut s,
            &[
                weigh(4, 25, Some("C-1"), Some(Stage::StorageOut), 300),
                weigh(5, 30, None, None, 500),
            ],
        );
        assert!(out.is_empty(), "{out:?}");
        // A late reading between 20 s and 25 s is compared with both neighbours: 800 → 2000 fires, and
        // 2000 → 500 is explained by the movement at 25 s.
        let out = run(&mut s, &[weigh(6, 22, None, None, 2000)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].previous_value, Some(800 * KG));
    }
}

//! The container aggregate: the custody chain of one container, weighing by weighing, and the
//! `weight_fluctuation` rule over it.
//!
//! Rule: a weighing differs from the previous weighing of the same container (by `measured_at`) by more
//! than the threshold share of the previous value, decided in integers on the canonical milligrams:
//! `100 × |new − prev| > threshold_pct × prev`. At the default 20 % that is `5 × |new − prev| > prev`, so
//! exactly 20 % does not fire. A previous weight of zero and a new weight above zero fires with no ratio.
//! A weighing that arrives late is compared with its neighbours by `measured_at` among the weighings
//! already recorded — the one before it and the one after it — and an anomaly once emitted is never
//! withdrawn. The threshold can be set per waste code.

use std::collections::{BTreeMap, BTreeSet};

use crate::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use crate::event::Event;
use crate::fingerprint::Fingerprint;
use crate::ids::ContainerId;
use crate::reading::{Reading, ReadingKind, Stage};

/// The default weight-fluctuation threshold, in percent of the previous weighing.
pub const WEIGHT_FLUCTUATION_PCT_DEFAULT: u32 = 20;

/// A change of more than this share (in percent) is `high` severity; above the threshold but at most
/// this, `medium`.
pub const WEIGHT_FLUCTUATION_HIGH_PCT: u32 = 50;

/// Thresholds of the weighing rules.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WeighingRules {
    pub threshold_pct_default: u32,
    /// Per waste code (`HW08`, `900-041-49`), overriding the default.
    pub threshold_pct_by_waste_code: BTreeMap<String, u32>,
}

impl Default for WeighingRules {
    fn default() -> Self {
        WeighingRules {
            threshold_pct_default: WEIGHT_FLUCTUATION_PCT_DEFAULT,
            threshold_pct_by_waste_code: BTreeMap::new(),
        }
    }
}

impl WeighingRules {
    fn threshold_pct(&self, waste_code: Option<&str>) -> u32 {
        waste_code
            .and_then(|w| self.threshold_pct_by_waste_code.get(w).copied())
            .unwrap_or(self.threshold_pct_default)
    }
}

/// One weighing in a container's chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Weighing {
    reading: ReadingRef,
    value_mg: i64,
    event_seq: u64,
    #[serde(default)]
    stage: Option<Stage>,
}

/// A container's custody chain as far as the rules need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerState {
    /// Weighings by `(measured_at_ns, terminal, seq)`: time order, ties broken by identity, never by
    /// arrival, so a replay orders them alike.
    weighings: BTreeMap<(i64, ReadingRef), Weighing>,
    /// Anomalies already emitted, so a second decision over the same facts emits nothing.
    emitted: BTreeSet<Fingerprint>,
}

impl ContainerState {
    pub fn weighings(&self) -> usize {
        self.weighings.len()
    }

    /// Decides what a recorded reading (event `event_seq`) derives for `container`.
    pub fn decide(
        &self,
        container: &ContainerId,
        reading: &Reading,
        event_seq: u64,
        rules: &WeighingRules,
    ) -> Vec<Event> {
        if reading.kind != ReadingKind::Weight || reading.container_id.as_ref() != Some(container) {
            return Vec::new();
        }
        let me = Weighing {
            reading: ReadingRef {
                terminal_id: reading.terminal_id.clone(),
                seq: reading.seq,
            },
            value_mg: reading.value,
            event_seq,
            stage: reading.stage,
        };
        let key = (reading.measured_at_ns, me.reading.clone());
        if self.weighings.contains_key(&key) {
            return Vec::new();
        }
        let before = self
            .weighings
            .range(..key.clone())
            .next_back()
            .map(|(_, w)| w);
        let after = self
            .weighings
            .range((std::ops::Bound::Excluded(key), std::ops::Bound::Unbounded))
            .next()
            .map(|(_, w)| w);
        let threshold = rules.threshold_pct(reading.waste_code.as_deref());
        let subject = format!("container:{container}");
        let mut out = Vec::new();
        let pairs = [before.map(|b| (b, &me)), after.map(|a| (&me, a))];
        for (earlier, later) in pairs.into_iter().flatten() {
            if let Some(a) = fluctuation(container, &subject, earlier, later, event_seq, threshold)
                && !self.emitted.contains(&a.anomaly_id)
            {
                out.push(Event::AnomalyDetected(a));
            }
        }
        out
    }

    /// The weighing that put the container into storage, if its latest staged weighing (by
    /// `measured_at`) is `storage_in`.
    fn stored_since(&self) -> Option<(i64, &Weighing)> {
        self.weighings
            .iter()
            .rev()
            .find(|(_, w)| w.stage.is_some())
            .filter(|(_, w)| w.stage == Some(Stage::StorageIn))
            .map(|((at, _), w)| (*at, w))
    }

    fn overdue_identity(container: &ContainerId, stored: &Weighing) -> Fingerprint {
        AnomalyDetected::identity(
            AnomalyKind::StorageOverdue,
            &format!("container:{container}"),
            std::slice::from_ref(&stored.reading),
        )
    }

    /// When the container becomes overdue in storage, unless that was already flagged.
    pub fn deadline_ns(&self, container: &ContainerId, storage_limit_s: i64) -> Option<i64> {
        let (since, w) = self.stored_since()?;
        if self.emitted.contains(&Self::overdue_identity(container, w)) {
            return None;
        }
        // Overdue after *more than* the limit.
        Some(
            since
                .saturating_add(storage_limit_s.saturating_mul(1_000_000_000))
                .saturating_add(1),
        )
    }

    /// `storage_overdue`: a clock tick (`tick_seq`, at `at_ns`) past the limit of the container's stay
    /// in storage.
    pub fn decide_tick(
        &self,
        container: &ContainerId,
        at_ns: i64,
        tick_seq: u64,
        storage_limit_s: i64,
    ) -> Vec<Event> {
        match self.deadline_ns(container, storage_limit_s) {
            Some(deadline) if at_ns >= deadline => {}
            _ => return Vec::new(),
        }
        let (since, w) = self.stored_since().expect("a deadline implies storage");
        let mut a = AnomalyDetected::new(
            AnomalyKind::StorageOverdue,
            Severity::Medium,
            format!("container:{container}"),
            vec![w.reading.clone()],
            tick_seq,
            vec![w.event_seq, tick_seq],
        );
        a.container_id = Some(container.clone());
        a.terminal_id = Some(w.reading.terminal_id.clone());
        a.previous_value = Some(w.value_mg);
        a.current_value = Some((at_ns - since) / 1_000_000_000);
        a.limit_value = Some(storage_limit_s);
        vec![Event::AnomalyDetected(a)]
    }

    /// Applies a recorded reading or a derived event.
    pub fn apply(&mut self, event: &Event, event_seq: u64) {
        match event {
            Event::ReadingRecorded(r) if r.kind == ReadingKind::Weight => {
                let reading = ReadingRef {
                    terminal_id: r.terminal_id.clone(),
                    seq: r.seq,
                };
                self.weighings.insert(
                    (r.measured_at_ns, reading.clone()),
                    Weighing {
                        reading,
                        value_mg: r.value,
                        event_seq,
                        stage: r.stage,
                    },
                );
            }
            Event::AnomalyDetected(a) => {
                self.emitted.insert(a.anomaly_id);
            }
            _ => {}
        }
    }
}

/// Whether a change from `prev` to `new` is over `threshold_pct` percent of `prev`, decided in integers
/// (`100 × |new − prev| > threshold_pct × prev`; from zero, any rise): the ratio in ppm (none from zero)
/// and the severity, or `None` when it is not.
pub fn change_over_threshold(
    prev: i64,
    new: i64,
    threshold_pct: u32,
) -> Option<(Option<i64>, Severity)> {
    let (prev, new) = (i128::from(prev), i128::from(new));
    let diff = (new - prev).abs();
    let fires = if prev == 0 {
        new > 0
    } else {
        100 * diff > i128::from(threshold_pct) * prev.abs()
    };
    if !fires {
        return None;
    }
    let change_ratio_ppm = (prev != 0).then(|| (diff * 1_000_000 / prev.abs()) as i64);
    let severity = match change_ratio_ppm {
        Some(ppm) if ppm <= i64::from(WEIGHT_FLUCTUATION_HIGH_PCT) * 10_000 => Severity::Medium,
        _ => Severity::High,
    };
    Some((change_ratio_ppm, severity))
}

/// The anomaly between two consecutive weighings, if the change is over the threshold.
fn fluctuation(
    container: &ContainerId,
    subject: &str,
    earlier: &Weighing,
    later: &Weighing,
    cause_seq: u64,
    threshold_pct: u32,
) -> Option<AnomalyDetected> {
    let (change_ratio_ppm, severity) =
        change_over_threshold(earlier.value_mg, later.value_mg, threshold_pct)?;
    let causes = vec![earlier.reading.clone(), later.reading.clone()];
    Some(AnomalyDetected {
        anomaly_id: AnomalyDetected::identity(AnomalyKind::WeightFluctuation, subject, &causes),
        kind: AnomalyKind::WeightFluctuation,
        severity,
        subject: subject.to_owned(),
        terminal_id: Some(later.reading.terminal_id.clone()),
        container_id: Some(container.clone()),
        enterprise_id: None,
        manifest_id: None,
        previous_value: Some(earlier.value_mg),
        current_value: Some(later.value_mg),
        change_ratio_ppm,
        limit_value: None,
        cause_seq,
        evidence_seqs: vec![earlier.event_seq, later.event_seq],
        causes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TerminalId;

    const KG: i64 = 1_000_000;

    fn c9() -> ContainerId {
        ContainerId::parse("C-9").unwrap()
    }

    fn weighing(terminal: &str, seq: u64, at_s: i64, mg: i64) -> Reading {
        Reading {
            terminal_id: TerminalId::parse(terminal).unwrap(),
            seq,
            measured_at_ns: 1_790_000_000_000_000_000 + at_s * 1_000_000_000,
            kind: ReadingKind::Weight,
            value: mg,
            container_id: Some(c9()),
            stage: Some(Stage::StorageIn),
            waste_code: Some("HW08".into()),
            manifest_id: None,
        }
    }

    /// Given the weighings (in arrival order), when each is decided and applied as the actor would, then
    /// these anomalies come out.
    fn run(weighings: &[Reading], rules: &WeighingRules) -> Vec<AnomalyDetected> {
        let mut state = ContainerState::default();
        let mut out = Vec::new();
        for (i, r) in weighings.iter().enumerate() {
            let seq = (i as u64 + 1) * 10;
            let derived = state.decide(&c9(), r, seq, rules);
            state.apply(&Event::ReadingRecorded(r.clone()), seq);
            for d in derived {
                state.apply(&d, seq + 1);
                if let Event::AnomalyDetected(a) = d {
                    out.push(a);
                }
            }
        }
        out
    }

    #[test]
    fn storage_overdue_fires_once_past_the_limit_and_not_after_leaving() {
        let limit_s = 100;
        let staged = |seq, at_s, stage| Reading {
            stage: Some(stage),
            ..weighing("T-1", seq, at_s, 100 * KG)
        };
        let mut state = ContainerState::default();
        let r = staged(1, 0, Stage::StorageIn);
        state.apply(&Event::ReadingRecorded(r.clone()), 1);
        let t0 = r.measured_at_ns;
        let at = |s: i64| t0 + s * 1_000_000_000;
        assert_eq!(state.deadline_ns(&c9(), limit_s), Some(at(100) + 1));
        assert!(
            state.decide_tick(&c9(), at(100), 2, limit_s).is_empty(),
            "exactly the limit"
        );
        let out = state.decide_tick(&c9(), at(101), 3, limit_s);
        assert_eq!(out.len(), 1);
        let Event::AnomalyDetected(a) = &out[0] else {
            panic!()
        };
        assert_eq!(a.kind, AnomalyKind::StorageOverdue);
        assert_eq!((a.current_value, a.limit_value), (Some(101), Some(100)));
        state.apply(&out[0], 4);
        assert_eq!(state.deadline_ns(&c9(), limit_s), None, "flagged once");
        // Stored again later (a new storage_in), then taken out before the limit: nothing.
        let mut s2 = ContainerState::default();
        s2.apply(&Event::ReadingRecorded(staged(1, 0, Stage::StorageIn)), 1);
        s2.apply(&Event::ReadingRecorded(staged(2, 50, Stage::StorageOut)), 2);
        assert_eq!(s2.deadline_ns(&c9(), limit_s), None);
        // A late storage_in measured before the storage_out does not put it back.
        s2.apply(&Event::ReadingRecorded(staged(3, 10, Stage::StorageIn)), 3);
        assert_eq!(s2.deadline_ns(&c9(), limit_s), None);
    }

    #[test]
    fn exactly_twenty_percent_does_not_fire_and_just_over_does() {
        let rules = WeighingRules::default();
        // 100 kg, then `next` a minute later.
        let after_100_kg = |next| {
            run(
                &[
                    weighing("T-1", 1, 0, 100 * KG),
                    weighing("T-1", 2, 60, next),
                ],
                &rules,
            )
        };
        assert!(after_100_kg(120 * KG).is_empty());
        assert!(after_100_kg(80 * KG).is_empty());
        let got = after_100_kg(120 * KG + 1);
        assert_eq!(got.len(), 1);
        let a = &got[0];
        assert_eq!(a.kind, AnomalyKind::WeightFluctuation);
        assert_eq!(
            (a.previous_value, a.current_value),
            (Some(100 * KG), Some(120 * KG + 1))
        );
        assert_eq!(a.change_ratio_ppm, Some(200_000));
        assert_eq!(a.severity, Severity::Medium);
        assert_eq!(a.evidence_seqs, vec![10, 20]);
        assert_eq!(a.cause_seq, 20);
        let lighter = after_100_kg(80 * KG - 1);
        assert_eq!(lighter.len(), 1);
    }

    #[test]
    fn a_previous_weight_of_zero_fires_without_a_ratio() {
        let got = run(
            &[weighing("T-1", 1, 0, 0), weighing("T-1", 2, 60, 1)],
            &WeighingRules::default(),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].change_ratio_ppm, None);
        assert_eq!(got[0].severity, Severity::High);
        assert!(
            run(
                &[weighing("T-1", 1, 0, 0), weighing("T-1", 2, 60, 0)],
                &WeighingRules::default()
            )
            .is_empty()
        );
    }

    #[test]
    fn a_late_weighing_is_compared_with_the_one_before_and_the_one_after() {
        // 100 kg at t=0, 100 kg at t=120 (no change); then a weighing measured at t=60 arrives late with
        // 50 kg: it differs from both neighbours, so two anomalies, each naming its pair.
        let got = run(
            &[
                weighing("T-1", 1, 0, 100 * KG),
                weighing("T-1", 3, 120, 100 * KG),
                weighing("T-2", 7, 60, 50 * KG),
            ],
            &WeighingRules::default(),
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].evidence_seqs, vec![10, 30]);
        assert_eq!(got[1].evidence_seqs, vec![30, 20]);
        assert_eq!(
            (got[0].previous_value, got[0].current_value),
            (Some(100 * KG), Some(50 * KG))
        );
        assert_eq!(
            (got[1].previous_value, got[1].current_value),
            (Some(50 * KG), Some(100 * KG))
        );
        assert_ne!(got[0].anomaly_id, got[1].anomaly_id);
    }

    #[test]
    fn an_anomaly_once_emitted_is_never_withdrawn_nor_repeated() {
        // 100 → 50 fires; a later weighing in between (75 kg: 25 % and 50 % apart) adds its own, and the
        // first stays. Deciding the same weighing again emits nothing.
        let rules = WeighingRules::default();
        let mut state = ContainerState::default();
        let a = weighing("T-1", 1, 0, 100 * KG);
        let b = weighing("T-1", 2, 120, 50 * KG);
        state.apply(&Event::ReadingRecorded(a), 1);
        let first = state.decide(&c9(), &b, 2, &rules);
        assert_eq!(first.len(), 1);
        state.apply(&Event::ReadingRecorded(b.clone()), 2);
        for d in &first {
            state.apply(d, 3);
        }
        assert!(
            state.decide(&c9(), &b, 2, &rules).is_empty(),
            "a resend decides nothing"
        );
        let late = weighing("T-2", 5, 60, 75 * KG);
        let more = state.decide(&c9(), &late, 4, &rules);
        assert_eq!(more.len(), 2);
        assert_eq!(
            state.emitted.len(),
            1,
            "the first anomaly is still recorded"
        );
    }

    #[test]
    fn identities_do_not_depend_on_arrival_order_or_on_the_node() {
        let x = ReadingRef {
            terminal_id: TerminalId::parse("T-1").unwrap(),
            seq: 1,
        };
        let y = ReadingRef {
            terminal_id: TerminalId::parse("T-2").unwrap(),
            seq: 9,
        };
        let k = AnomalyKind::WeightFluctuation;
        assert_eq!(
            AnomalyDetected::identity(k, "container:C-9", &[x.clone(), y.clone()]),
            AnomalyDetected::identity(k, "container:C-9", &[y.clone(), x.clone()])
        );
        assert_ne!(
            AnomalyDetected::identity(k, "container:C-9", &[x.clone(), y.clone()]),
            AnomalyDetected::identity(k, "container:C-8", &[x, y])
        );
    }

    #[test]
    fn thresholds_follow_the_waste_code_and_readings_of_other_kinds_or_containers_are_ignored() {
        let mut rules = WeighingRules::default();
        rules.threshold_pct_by_waste_code.insert("HW08".into(), 10);
        let got = run(
            &[
                weighing("T-1", 1, 0, 100 * KG),
                weighing("T-1", 2, 60, 111 * KG),
            ],
            &rules,
        );
        assert_eq!(got.len(), 1, "11 % is over HW08's 10 %");
        let mut other = weighing("T-1", 2, 60, 500 * KG);
        other.container_id = Some(ContainerId::parse("C-8").unwrap());
        let state = {
            let mut s = ContainerState::default();
            s.apply(&Event::ReadingRecorded(weighing("T-1", 1, 0, 100 * KG)), 1);
            s
        };
        assert!(state.decide(&c9(), &other, 2, &rules).is_empty());
        let mut temp = weighing("T-1", 3, 60, 500 * KG);
        temp.kind = ReadingKind::Temperature;
        assert!(state.decide(&c9(), &temp, 3, &rules).is_empty());
    }

    proptest::proptest! {
        /// Whatever the weighings and their arrival order: the same order always decides the same
        /// anomalies (determinism), no anomaly comes out twice, and each one's pair is really over the
        /// threshold.
        #[test]
        fn decisions_are_deterministic_unique_and_justified(
            weighings in proptest::collection::vec((0i64..50, 0i64..200), 1..25),
            order_seed in 0u64..1000,
        ) {
            let mut readings: Vec<Reading> = weighings
                .iter()
                .enumerate()
                .map(|(i, (at, kg))| weighing("T-1", i as u64 + 1, *at, kg * KG / 2))
                .collect();
            // A seeded shuffle: arrival order differs from time order.
            let mut x = order_seed;
            for i in (1..readings.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                readings.swap(i, (x >> 33) as usize % (i + 1));
            }
            let rules = WeighingRules::default();
            let first = run(&readings, &rules);
            proptest::prop_assert_eq!(&first, &run(&readings, &rules));
            let ids: BTreeSet<_> = first.iter().map(|a| a.anomaly_id).collect();
            proptest::prop_assert_eq!(ids.len(), first.len());
            for a in &first {
                let (p, c) = (a.previous_value.unwrap(), a.current_value.unwrap());
                proptest::prop_assert!((p == 0 && c > 0) || 5 * (c - p).abs() > p, "{p} -> {c}");
            }
        }
    }
}

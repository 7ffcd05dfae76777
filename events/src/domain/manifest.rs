//! The manifest aggregate (联单): a transfer order for containers from a generator enterprise to a
//! receiver.
//!
//! A manifest opens (`ManifestOpened`, by an administrator), is dispatched when every one of its
//! containers has a `transfer_out` weighing that carries its `manifest_id`, and is received — which closes
//! it — when every container also has a `transfer_in` weighing carrying it. The weighings may arrive in
//! any order, even before the manifest is opened. On receipt, `manifest_weight_mismatch` fires when the
//! received total differs from the dispatched total by more than the configured share
//! (`100 × |in − out| > pct × out`; default 20 %, where US RCRA rules use 10 %). For each container the
//! latest weighing (by `measured_at`) of each direction counts.

use std::collections::{BTreeMap, BTreeSet};

use crate::Rejection;
use crate::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use crate::domain::rules::{At, Rules};
use crate::event::{CAPACITY_KG_MAX, Event, ManifestOpened, ManifestProgressed, ManifestStatus};
use crate::fingerprint::Fingerprint;
use crate::ids::{ContainerId, EnterpriseId, ManifestId};
pub use crate::limits::MANIFEST_CONTAINERS_MAX;
use crate::reading::{ReadingKind, Stage, is_waste_code};

/// `POST /v1/manifests` as sent.
/// `generator_id` and `receiver_id` differ (`same_generator_and_receiver`): no schema can say so.
#[derive(serde::Deserialize, Debug, Clone)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::id))]
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::id))]
    pub generator_id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::id))]
    pub receiver_id: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::waste_code))]
    pub waste_code: String,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::container_ids))]
    pub container_ids: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::kilograms))]
    pub declared_kg: f64,
    /// Free text, up to 4,000 characters; empty or white space is no notes.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::manifest_notes))]
    pub notes: Option<String>,
}

impl ManifestOpened {
    /// Validates an opening request (the command's `decide`: it rejects, or yields the event).
    pub fn from_raw(raw: &RawManifest) -> Result<Self, Rejection> {
        let id = ManifestId::parse(&raw.id)
            .map_err(|e| Rejection::new("invalid_id", format!("id {:?}: {e}", raw.id)))?;
        let enterprise = |field: &str, v: &str| {
            EnterpriseId::parse(v)
                .map_err(|e| Rejection::new("invalid_id", format!("{field} {v:?}: {e}")))
        };
        let generator_id = enterprise("generator_id", &raw.generator_id)?;
        let receiver_id = enterprise("receiver_id", &raw.receiver_id)?;
        if generator_id == receiver_id {
            return Err(Rejection::new(
                "same_generator_and_receiver",
                format!("generator_id and receiver_id are both {generator_id}"),
            ));
        }
        if !is_waste_code(&raw.waste_code) {
            return Err(Rejection::new(
                "invalid_waste_code",
                format!(
                    "waste_code {:?} is neither a category (HW01 ..= HW50) nor a full code like 900-041-49",
                    raw.waste_code
                ),
            ));
        }
        if raw.container_ids.is_empty() || raw.container_ids.len() > MANIFEST_CONTAINERS_MAX {
            return Err(Rejection::new(
                "value_out_of_range",
                format!("container_ids must list 1 ..= {MANIFEST_CONTAINERS_MAX} containers"),
            ));
        }
        let mut container_ids = BTreeSet::new();
        for c in &raw.container_ids {
            let id = ContainerId::parse(c).map_err(|e| {
                Rejection::new("invalid_container_id", format!("container_id {c:?}: {e}"))
            })?;
            if !container_ids.insert(id) {
                return Err(Rejection::new(
                    "duplicate_container",
                    format!("container_ids lists {c:?} twice"),
                ));
            }
        }
        let kg = raw.declared_kg;
        if !kg.is_finite() || kg <= 0.0 || kg > CAPACITY_KG_MAX {
            return Err(Rejection::new(
                "value_out_of_range",
                format!("declared_kg {kg} is outside (0, {CAPACITY_KG_MAX}]"),
            ));
        }
        let notes = match raw.notes.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(n) => match crate::event::check_text(n, crate::event::NOTE_CHARS_MAX, false) {
                Ok(()) => Some(n.to_owned()),
                Err(e) => {
                    return Err(Rejection::new("value_out_of_range", format!("notes {e}")));
                }
            },
        };
        Ok(ManifestOpened {
            notes,
            id,
            generator_id,
            receiver_id,
            waste_code: raw.waste_code.clone(),
            container_ids: container_ids.into_iter().collect(),
            declared_mg: (kg * 1_000_000.0).round() as i64,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Weighed {
    measured_at_ns: i64,
    value_mg: i64,
    reading: ReadingRef,
    event_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Opened {
    containers: Vec<ContainerId>,
    generator_id: EnterpriseId,
    receiver_id: EnterpriseId,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestState {
    opened: Option<Opened>,
    out: BTreeMap<ContainerId, Weighed>,
    into: BTreeMap<ContainerId, Weighed>,
    status: Option<ManifestStatus>,
    emitted: BTreeSet<Fingerprint>,
}

impl ManifestState {
    pub fn status(&self) -> Option<ManifestStatus> {
        self.status
    }

    /// The total of one direction, with its weighings, once every listed container has one.
    fn complete<'a>(
        &self,
        side: &'a BTreeMap<ContainerId, Weighed>,
    ) -> Option<(i64, Vec<&'a Weighed>)> {
        let opened = self.opened.as_ref()?;
        let mut total = 0i64;
        let mut ws = Vec::new();
        for c in &opened.containers {
            let w = side.get(c)?;
            total = total.saturating_add(w.value_mg);
            ws.push(w);
        }
        Some((total, ws))
    }

    /// Folds in a fact without deciding (used by `decide` on a copy, and by `apply`).
    fn absorb(&mut self, event: &Event, at: At) {
        match event {
            Event::ManifestOpened(m) => {
                self.opened = Some(Opened {
                    containers: m.container_ids.clone(),
                    generator_id: m.generator_id.clone(),
                    receiver_id: m.receiver_id.clone(),
                });
            }
            Event::ReadingRecorded(r) if r.kind == ReadingKind::Weight => {
                let side = match r.stage {
                    Some(Stage::TransferOut) => &mut self.out,
                    Some(Stage::TransferIn) => &mut self.into,
                    _ => return,
                };
                let Some(c) = &r.container_id else { return };
                if side
                    .get(c)
                    .is_some_and(|w| w.measured_at_ns > r.measured_at_ns)
                {
                    return;
                }
                side.insert(
                    c.clone(),
                    Weighed {
                        measured_at_ns: r.measured_at_ns,
                        value_mg: r.value,
                        reading: ReadingRef {
                            terminal_id: r.terminal_id.clone(),
                            seq: r.seq,
                        },
                        event_seq: at.seq,
                    },
                );
            }
            Event::ManifestProgressed(p) => self.status = self.status.max(Some(p.status)),
            Event::AnomalyDetected(a) => {
                self.emitted.insert(a.anomaly_id);
            }
            _ => {}
        }
    }

    pub fn decide(
        &self,
        manifest: &ManifestId,
        rules: &Rules,
        event: &Event,
        at: At,
    ) -> Vec<Event> {
        if !matches!(event, Event::ManifestOpened(_) | Event::ReadingRecorded(_))
            || self.status == Some(ManifestStatus::Received)
        {
            return Vec::new();
        }
        let mut next = self.clone();
        next.absorb(event, at);
        let Some((out_mg, out_ws)) = next.complete(&next.out) else {
            return Vec::new();
        };
        let refs = |ws: &[&Weighed]| ws.iter().map(|w| w.reading.clone()).collect::<Vec<_>>();
        let mut derived = Vec::new();
        let mut out_causes = refs(&out_ws);
        out_causes.sort();
        if self.status.is_none() {
            derived.push(Event::ManifestProgressed(ManifestProgressed {
                manifest_id: manifest.clone(),
                status: ManifestStatus::Dispatched,
                dispatched_mg: out_mg,
                received_mg: None,
                cause_seq: at.seq,
                causes: out_causes.clone(),
            }));
        }
        let Some((in_mg, in_ws)) = next.complete(&next.into) else {
            return derived;
        };
        let mut all_causes = out_causes;
        all_causes.extend(refs(&in_ws));
        all_causes.sort();
        derived.push(Event::ManifestProgressed(ManifestProgressed {
            manifest_id: manifest.clone(),
            status: ManifestStatus::Received,
            dispatched_mg: out_mg,
            received_mg: Some(in_mg),
            cause_seq: at.seq,
            causes: all_causes.clone(),
        }));
        let (o, i) = (i128::from(out_mg), i128::from(in_mg));
        let diff = (i - o).abs();
        let fires = if o == 0 {
            i > 0
        } else {
            100 * diff > i128::from(rules.manifest_mismatch_pct) * o
        };
        if fires {
            let opened = next.opened.as_ref().expect("complete implies opened");
            let mut evidence: Vec<u64> = out_ws.iter().chain(&in_ws).map(|w| w.event_seq).collect();
            evidence.sort();
            let mut a = AnomalyDetected::new(
                AnomalyKind::ManifestWeightMismatch,
                Severity::High,
                format!("manifest:{manifest}"),
                all_causes,
                at.seq,
                evidence,
            );
            if !self.emitted.contains(&a.anomaly_id) {
                a.manifest_id = Some(manifest.clone());
                a.enterprise_id = Some(opened.receiver_id.clone());
                a.previous_value = Some(out_mg);
                a.current_value = Some(in_mg);
                a.change_ratio_ppm = (o != 0).then(|| (diff * 1_000_000 / o) as i64);
                a.limit_value = Some(i64::from(rules.manifest_mismatch_pct));
                derived.push(Event::AnomalyDetected(a));
            }
        }
        derived
    }

    pub fn apply(&mut self, event: &Event, at: At) {
        self.absorb(event, at);
    }

    /// The generator and receiver, once opened.
    pub fn parties(&self) -> Option<(&EnterpriseId, &EnterpriseId)> {
        self.opened
            .as_ref()
            .map(|o| (&o.generator_id, &o.receiver_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TerminalId;
    use crate::reading::Reading;

    const KG: i64 = 1_000_000;

    fn m1() -> ManifestId {
        ManifestId::parse("M-1").unwrap()
    }

    fn raw() -> RawManifest {
        RawManifest {
            id: "M-1".into(),
            generator_id: "E-1".into(),
            receiver_id: "E-2".into(),
            waste_code: "HW08".into(),
            container_ids: vec!["C-2".into(), "C-1".into()],
            declared_kg: 200.0,
            notes: None,
        }
    }

    fn opened() -> Event {
        Event::ManifestOpened(ManifestOpened::from_raw(&raw()).unwrap())
    }

    fn weigh(terminal: &str, seq: u64, c: &str, stage: Stage, kg: i64) -> Event {
        Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse(terminal).unwrap(),
            seq,
            measured_at_ns: 1_790_000_000_000_000_000 + seq as i64,
            kind: ReadingKind::Weight,
            value: kg * KG,
            container_id: Some(ContainerId::parse(c).unwrap()),
            stage: Some(stage),
            waste_code: Some("HW08".into()),
            manifest_id: Some(m1()),
        })
    }

    fn run(events: &[Event], rules: &Rules) -> Vec<Event> {
        let mut s = ManifestState::default();
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let at = At::seq(i as u64 + 1);
            let d = s.decide(&m1(), rules, e, at);
            s.apply(e, at);
            for x in &d {
                s.apply(x, at);
            }
            out.extend(d);
        }
        out
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::ManifestProgressed(p) => p.status.name().to_owned(),
                Event::AnomalyDetected(a) => a.kind.name().to_owned(),
                other => other.event_type().to_owned(),
            })
            .collect()
    }

    #[test]
    fn an_opening_request_is_validated() {
        let m = ManifestOpened::from_raw(&raw()).unwrap();
        assert_eq!(m.container_ids[0].as_str(), "C-1", "sorted");
        assert_eq!(m.declared_mg, 200 * KG);
        let bad = |f: fn(&mut RawManifest), code: &str| {
            let mut r = raw();
            f(&mut r);
            assert_eq!(ManifestOpened::from_raw(&r).unwrap_err().code, code);
        };
        bad(
            |r| r.receiver_id = "E-1".into(),
            "same_generator_and_receiver",
        );
        bad(|r| r.container_ids.clear(), "value_out_of_range");
        bad(
            |r| r.container_ids.push("C-1".into()),
            "duplicate_container",
        );
        bad(|r| r.declared_kg = 0.0, "value_out_of_range");
        bad(|r| r.waste_code = "HW99".into(), "invalid_waste_code");
        bad(|r| r.id = "M 1".into(), "invalid_id");
    }

    #[test]
    fn dispatched_then_received_and_a_light_arrival_is_a_mismatch() {
        let rules = Rules::default();
        use Stage::*;
        // Two drums of 100 kg out; in again as 90 kg and `second_kg`.
        let arrival = |second_kg| {
            run(
                &[
                    opened(),
                    weigh("S-1", 1, "C-1", TransferOut, 100),
                    weigh("S-1", 2, "C-2", TransferOut, 100),
                    weigh("R-1", 1, "C-1", TransferIn, 90),
                    weigh("R-1", 2, "C-2", TransferIn, second_kg),
                ],
                &rules,
            )
        };
        let ok = arrival(70);
        // 200 → 160 kg: exactly 20 % lighter does not fire.
        assert_eq!(kinds(&ok), ["dispatched", "received"]);
        let light = arrival(69);
        assert_eq!(
            kinds(&light),
            ["dispatched", "received", "manifest_weight_mismatch"]
        );
        let Event::AnomalyDetected(a) = &light[2] else {
            panic!()
        };
        assert_eq!(a.previous_value, Some(200 * KG));
        assert_eq!(a.current_value, Some(159 * KG));
        assert_eq!(a.change_ratio_ppm, Some(205_000));
        assert_eq!(a.causes.len(), 4);
        assert_eq!(a.enterprise_id.as_ref().unwrap().as_str(), "E-2");
    }

    #[test]
    fn weighings_before_the_opening_count_and_nothing_happens_twice() {
        let rules = Rules {
            manifest_mismatch_pct: 10,
            ..Rules::default()
        };
        use Stage::*;
        let out = run(
            &[
                weigh("R-1", 1, "C-1", TransferIn, 85),
                weigh("S-1", 1, "C-1", TransferOut, 100),
                weigh("S-1", 2, "C-2", TransferOut, 100),
                weigh("R-1", 2, "C-2", TransferIn, 100),
                weigh("R-1", 3, "C-9", TransferIn, 100),
                opened(),
                weigh("R-1", 2, "C-2", TransferIn, 100),
            ],
            &rules,
        );
        // 200 → 185: 7.5 % is under the 10 % limit (RCRA's).
        assert_eq!(kinds(&out), ["dispatched", "received"]);
    }
}

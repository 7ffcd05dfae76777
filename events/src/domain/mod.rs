//! The pure domain core: aggregates that decide derived events from recorded ones, deterministically.
//!
//! Each aggregate has `decide(&state, event, at) -> Vec<Event>` and `apply(&mut state, event, at)`: no
//! clock, no randomness, no hash-map iteration order — the same log in gives the same states and derived
//! events out, which replay and simulation depend on. Time comes only from events: a reading's
//! `measured_at`, the log's `recorded_at`, and `ClockTicked` for the time-driven rules.
//!
//! Deciding on a recorded fact cannot fail (the fact has happened); commands that can be refused decide
//! with a `Result` before anything is appended (`ManifestOpened::from_raw`, the key rules of
//! `terminal_keys`).
//!
//! - [`terminal`]: `tamper_suspected`, `terminal_silent`, the Hampel `suspect` flag, clock skew.
//! - [`container`]: `weight_fluctuation` over the custody chain, `storage_overdue`.
//! - [`enterprise`]: `over_capacity`, `weight_fluctuation` of continuous load cells.
//! - [`manifest`]: dispatch, receipt, `manifest_weight_mismatch`.
//! - [`Router`]: which aggregates an event concerns (with the terminal → enterprise directory and the
//!   deadline index that wakes aggregates on clock ticks).
//! - [`Core`]: the whole core folded over a log in one thread — the reference the actors must equal.

pub mod cleaning;
pub mod container;
pub mod enterprise;
pub mod manifest;
pub mod rules;
pub mod terminal;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use crate::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
pub use cleaning::Hampel;
pub use container::{ContainerState, WeighingRules};
pub use enterprise::EnterpriseState;
pub use manifest::{ManifestState, RawManifest};
pub use rules::{At, Rules};
pub use terminal::TerminalState;

use crate::event::Event;
use crate::ids::{ContainerId, EnterpriseId, ManifestId, TerminalId};
use crate::reading::ReadingKind;

/// An aggregate's identity.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum AggregateKey {
    Terminal(TerminalId),
    Enterprise(EnterpriseId),
    Container(ContainerId),
    Manifest(ManifestId),
}

impl fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggregateKey::Terminal(id) => write!(f, "terminal:{id}"),
            AggregateKey::Enterprise(id) => write!(f, "enterprise:{id}"),
            AggregateKey::Container(id) => write!(f, "container:{id}"),
            AggregateKey::Manifest(id) => write!(f, "manifest:{id}"),
        }
    }
}

impl AggregateKey {
    /// The aggregate a subject such as `container:C-9` names.
    pub fn of_subject(subject: &str) -> Option<AggregateKey> {
        let (kind, id) = subject.split_once(':')?;
        Some(match kind {
            "terminal" => AggregateKey::Terminal(TerminalId::parse(id).ok()?),
            "enterprise" => AggregateKey::Enterprise(EnterpriseId::parse(id).ok()?),
            "container" => AggregateKey::Container(ContainerId::parse(id).ok()?),
            "manifest" => AggregateKey::Manifest(ManifestId::parse(id).ok()?),
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Body {
    Terminal(TerminalState),
    Enterprise(EnterpriseState),
    Container(ContainerState),
    Manifest(ManifestState),
}

/// One aggregate's state, with the last log sequence it has applied: an event at or below it is skipped,
/// so a snapshot taken at any point can be caught up by replaying the log past it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AggregateState {
    pub key: AggregateKey,
    pub last_seq: u64,
    body: Body,
}

/// A snapshot that does not decode (written by another version, or damaged).
#[derive(Debug, thiserror::Error)]
#[error("aggregate snapshot does not decode: {0}")]
pub struct SnapshotError(String);

impl AggregateState {
    pub fn new(key: AggregateKey) -> Self {
        let body = match &key {
            AggregateKey::Terminal(_) => Body::Terminal(TerminalState::default()),
            AggregateKey::Enterprise(_) => Body::Enterprise(EnterpriseState::default()),
            AggregateKey::Container(_) => Body::Container(ContainerState::default()),
            AggregateKey::Manifest(_) => Body::Manifest(ManifestState::default()),
        };
        AggregateState {
            key,
            last_seq: 0,
            body,
        }
    }

    /// What `event` derives here (nothing for an event already applied).
    pub fn decide(&self, rules: &Rules, event: &Event, at: At) -> Vec<Event> {
        if at.seq <= self.last_seq {
            return Vec::new();
        }
        match (&self.key, &self.body) {
            (AggregateKey::Terminal(id), Body::Terminal(s)) => s.decide(id, rules, event, at),
            (AggregateKey::Enterprise(id), Body::Enterprise(s)) => s.decide(id, rules, event, at),
            (AggregateKey::Container(id), Body::Container(s)) => match event {
                Event::ReadingRecorded(r) => s.decide(id, r, at.seq, &rules.weighing),
                Event::ClockTicked(t) => s.decide_tick(id, t.at_ns, at.seq, rules.storage_limit_s),
                _ => Vec::new(),
            },
            (AggregateKey::Manifest(id), Body::Manifest(s)) => s.decide(id, rules, event, at),
            _ => unreachable!("the body always matches the key"),
        }
    }

    /// Decides on `event`, applies it, and absorbs what it derived: one step of the fold, as the actors,
    /// the recovery replay and [`Core`] all take it. Answers the derived events.
    pub fn step(&mut self, rules: &Rules, event: &Event, at: At) -> Vec<Event> {
        let derived = self.decide(rules, event, at);
        self.apply(rules, event, at);
        self.absorb(rules, &derived, at);
        derived
    }

    /// Applies a recorded event (once: an event at or below `last_seq` is skipped).
    pub fn apply(&mut self, rules: &Rules, event: &Event, at: At) {
        if at.seq <= self.last_seq {
            return;
        }
        self.fold(rules, event, at);
        self.last_seq = at.seq;
    }

    /// Applies what `decide` just derived, before it comes back through the log (where it is applied
    /// again, idempotently), so that the next decision already knows it.
    pub fn absorb(&mut self, rules: &Rules, derived: &[Event], at: At) {
        for d in derived {
            self.fold(rules, d, at);
        }
    }

    fn fold(&mut self, rules: &Rules, event: &Event, at: At) {
        match &mut self.body {
            Body::Terminal(s) => s.apply(rules, event, at),
            Body::Enterprise(s) => s.apply(event, at),
            Body::Container(s) => s.apply(event, at.seq),
            Body::Manifest(s) => s.apply(event, at),
        }
    }

    /// When a clock tick must wake this aggregate, if ever.
    pub fn deadline_ns(&self, rules: &Rules) -> Option<i64> {
        match (&self.key, &self.body) {
            (AggregateKey::Terminal(id), Body::Terminal(s)) => s.deadline_ns(id, rules),
            (AggregateKey::Container(id), Body::Container(s)) => {
                s.deadline_ns(id, rules.storage_limit_s)
            }
            _ => None,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("aggregate states serialise")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        postcard::from_bytes(bytes).map_err(|e| SnapshotError(e.to_string()))
    }

    pub fn terminal(&self) -> Option<&TerminalState> {
        match &self.body {
            Body::Terminal(s) => Some(s),
            _ => None,
        }
    }

    pub fn enterprise(&self) -> Option<&EnterpriseState> {
        match &self.body {
            Body::Enterprise(s) => Some(s),
            _ => None,
        }
    }
}

/// Which aggregates an event concerns. Holds the terminal → enterprise directory (from registrations)
/// and the deadline index (the next `ClockTicked` instant at which each aggregate must be woken).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Router {
    enterprise_of: BTreeMap<TerminalId, EnterpriseId>,
    deadlines: BTreeSet<(i64, AggregateKey)>,
    deadline_of: BTreeMap<AggregateKey, i64>,
}

/// The event types any aggregate cares about; the log skips the rest without opening them.
pub fn routed_type(event_type: &str) -> bool {
    matches!(
        event_type,
        "EnterpriseRegistered"
            | "TerminalRegistered"
            | "ReadingRecorded"
            | "ReadingConflicted"
            | "AnomalyDetected"
            | "ManifestOpened"
            | "ManifestProgressed"
            | "ClockTicked"
    )
}

impl Router {
    /// Learns from `event` (registrations) and answers the aggregates it goes to, in a fixed order.
    pub fn route(&mut self, event: &Event) -> Vec<AggregateKey> {
        if let Event::TerminalRegistered(t) = event {
            self.enterprise_of
                .insert(t.id.clone(), t.enterprise_id.clone());
        }
        self.keys_of(event)
    }

    /// Whether `event` goes to `key`, whose state wants waking at `deadline_ns` — for replaying one
    /// aggregate's events from the log (what the deadline index said at the time follows from the
    /// aggregate's own state).
    pub fn routes_to(&self, event: &Event, key: &AggregateKey, deadline_ns: Option<i64>) -> bool {
        match event {
            Event::ClockTicked(t) => deadline_ns.is_some_and(|d| d <= t.at_ns),
            _ => self.keys_of(event).contains(key),
        }
    }

    fn keys_of(&self, event: &Event) -> Vec<AggregateKey> {
        match event {
            Event::EnterpriseRegistered(e) => vec![AggregateKey::Enterprise(e.id.clone())],
            Event::TerminalRegistered(t) => {
                vec![
                    AggregateKey::Terminal(t.id.clone()),
                    AggregateKey::Enterprise(t.enterprise_id.clone()),
                ]
            }
            Event::ReadingRecorded(r) => {
                let mut keys = vec![AggregateKey::Terminal(r.terminal_id.clone())];
                if r.kind == ReadingKind::Weight {
                    if let Some(c) = &r.container_id {
                        keys.push(AggregateKey::Container(c.clone()));
                        if let Some(m) = &r.manifest_id {
                            keys.push(AggregateKey::Manifest(m.clone()));
                        }
                    }
                    if let Some(e) = self.enterprise_of.get(&r.terminal_id) {
                        keys.push(AggregateKey::Enterprise(e.clone()));
                    }
                }
                keys
            }
            Event::ReadingConflicted(c) => {
                vec![AggregateKey::Terminal(c.reading.terminal_id.clone())]
            }
            Event::ManifestOpened(m) => vec![AggregateKey::Manifest(m.id.clone())],
            Event::ManifestProgressed(m) => vec![AggregateKey::Manifest(m.manifest_id.clone())],
            Event::AnomalyDetected(a) => AggregateKey::of_subject(&a.subject).into_iter().collect(),
            Event::ClockTicked(t) => self
                .deadlines
                .iter()
                .take_while(|(d, _)| *d <= t.at_ns)
                .map(|(_, k)| k.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Records when `key` must next be woken (or that it need not be).
    pub fn set_deadline(&mut self, key: &AggregateKey, deadline_ns: Option<i64>) {
        if self.deadline_of.get(key).copied() == deadline_ns {
            return;
        }
        if let Some(old) = self.deadline_of.remove(key) {
            self.deadlines.remove(&(old, key.clone()));
        }
        if let Some(d) = deadline_ns {
            self.deadline_of.insert(key.clone(), d);
            self.deadlines.insert((d, key.clone()));
        }
    }

    /// How many aggregates wait for a tick.
    pub fn deadlines(&self) -> usize {
        self.deadline_of.len()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("the router serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        postcard::from_bytes(bytes).map_err(|e| SnapshotError(e.to_string()))
    }
}

/// The whole domain core folded over a log in one thread: the reference that the actors must equal.
#[derive(Debug, Clone, Default)]
pub struct Core {
    pub rules: Rules,
    pub router: Router,
    pub aggregates: BTreeMap<AggregateKey, AggregateState>,
}

impl Core {
    pub fn new(rules: Rules) -> Self {
        Core {
            rules,
            ..Core::default()
        }
    }

    /// Decides and applies one logged event; answers what it derives.
    pub fn step(&mut self, event: &Event, at: At) -> Vec<Event> {
        let mut out = Vec::new();
        for key in self.router.route(event) {
            let agg = self
                .aggregates
                .entry(key.clone())
                .or_insert_with(|| AggregateState::new(key.clone()));
            let derived = agg.step(&self.rules, event, at);
            self.router.set_deadline(&key, agg.deadline_ns(&self.rules));
            out.extend(derived);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_routed_type_is_an_event_type() {
        let routed = Event::TYPES.iter().filter(|t| routed_type(t)).count();
        assert_eq!(routed, 8, "a name in routed_type is misspelt or missing");
    }

    #[test]
    fn subjects_name_their_aggregates() {
        assert_eq!(
            AggregateKey::of_subject("container:C-9"),
            Some(AggregateKey::Container(ContainerId::parse("C-9").unwrap()))
        );
        assert_eq!(AggregateKey::of_subject("nothing:x"), None);
        let k = AggregateKey::Manifest(ManifestId::parse("M-1").unwrap());
        assert_eq!(AggregateKey::of_subject(&k.to_string()), Some(k));
    }

    #[test]
    fn states_survive_a_snapshot() {
        let mut core = Core::default();
        let t = TerminalId::parse("T-1").unwrap();
        let r = crate::reading::Reading {
            terminal_id: t.clone(),
            seq: 1,
            measured_at_ns: 5,
            kind: ReadingKind::Weight,
            value: 7,
            container_id: Some(ContainerId::parse("C-1").unwrap()),
            stage: Some(crate::reading::Stage::StorageIn),
            waste_code: None,
            manifest_id: None,
        };
        core.step(&Event::ReadingRecorded(r), At::seq(1));
        for state in core.aggregates.values() {
            let back = AggregateState::from_bytes(&state.to_bytes()).unwrap();
            assert_eq!(&back, state);
        }
        assert_eq!(
            Router::from_bytes(&core.router.to_bytes()).unwrap(),
            core.router
        );
        assert!(AggregateState::from_bytes(b"\xff\xff").is_err());
    }
}

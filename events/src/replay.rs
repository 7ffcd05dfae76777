//! Replaying a recorded log through the current domain core: what it derives, how that compares with what
//! the log holds, and a hash of the state it ends in.
//!
//! The fold is [`Core`], the single-threaded reference the actors are tested against, so a replay decides
//! exactly as a live node with the same rules. Derived events are compared by their dedupe identity and
//! fingerprint: the current code may derive something the log lacks (`missing`), the log may hold something
//! the current code no longer derives (`extra`), or both may name the same identity with other content
//! (`changed`). Events derived in the log at sequence ≤ `until` are compared only with what the replay
//! derives from events up to `until`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::domain::{At, Core, Rules};
use crate::envelope::{Envelope, Fingerprint, fingerprint};
use crate::event::Event;

/// Whether the platform derives `event` (it is never sent or caused by anyone).
pub fn is_derived(event: &Event) -> bool {
    matches!(
        event,
        Event::AnomalyDetected(_) | Event::ManifestProgressed(_) | Event::ReadingSuspect(_)
    )
}

/// How one derived event differs between the log and the current code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The current code derives it; the log does not hold it.
    Missing { after_seq: u64, event: Box<Event> },
    /// The log holds it at `seq`; the current code does not derive it.
    Extra { seq: u64, event: Box<Event> },
    /// Same identity, other content: the log's at `seq`, and what the current code derives.
    Changed {
        seq: u64,
        logged: Box<Event>,
        derived: Box<Event>,
    },
}

impl Difference {
    pub fn describe(&self) -> String {
        let name = |e: &Event| format!("{} on {}", e.event_type(), e.stream());
        match self {
            Difference::Missing { after_seq, event } => format!(
                "missing: the current code derives {} after event {after_seq}; the log does not hold it: {}",
                name(event),
                event.canonical().to_text()
            ),
            Difference::Extra { seq, event } => format!(
                "extra: the log holds {} at event {seq}; the current code does not derive it: {}",
                name(event),
                event.canonical().to_text()
            ),
            Difference::Changed {
                seq,
                logged,
                derived,
            } => format!(
                "changed: {} at event {seq}: logged {} / now {}",
                name(logged),
                logged.canonical().to_text(),
                derived.canonical().to_text()
            ),
        }
    }
}

/// A replay in progress: feed it the log's envelopes in order with [`Replay::step`], then [`Replay::finish`].
pub struct Replay {
    core: Core,
    compare: bool,
    events: u64,
    last_seq: u64,
    by_type: BTreeMap<String, u64>,
    anomalies_by_kind: BTreeMap<&'static str, u64>,
    /// Derived by the current code, by dedupe identity: (after which seq, fingerprint, event).
    derived: BTreeMap<Vec<u8>, (u64, Fingerprint, Event)>,
    /// Derived events the log holds, by dedupe identity: (seq, fingerprint, event).
    logged: BTreeMap<Vec<u8>, (u64, Fingerprint, Event)>,
    derived_twice_in_log: Vec<u64>,
}

/// What a replay found.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Events replayed (all of them, derived ones included).
    pub events: u64,
    pub last_seq: u64,
    pub by_type: BTreeMap<String, u64>,
    /// Anomalies the current code derives, by kind.
    pub anomalies_by_kind: BTreeMap<&'static str, u64>,
    /// Aggregates the fold holds at the end.
    pub aggregates: usize,
    /// SHA-256 over every aggregate's key and snapshot bytes, in key order, and the router's.
    pub state_hash: [u8; 32],
    /// With `compare`: every derived event decided differently (empty when the code agrees with the log).
    pub differences: Vec<Difference>,
    /// With `compare`: sequences of derived events whose identity the log holds more than once.
    pub derived_twice_in_log: Vec<u64>,
}

impl ReplayReport {
    pub fn state_hash_hex(&self) -> String {
        hex::encode(self.state_hash)
    }
}

fn identity(event: &Event) -> Vec<u8> {
    match event.dedupe_key() {
        Some(k) => {
            let mut id = k.space;
            id.extend_from_slice(&k.slot.to_be_bytes());
            id
        }
        // Every derived type has an identity; fall back to the content for safety.
        None => fingerprint(&event.canonical().to_bytes()).to_vec(),
    }
}

impl Replay {
    /// `compare`: also collect derived events, to set them against the log's.
    pub fn new(rules: Rules, compare: bool) -> Self {
        Replay {
            core: Core::new(rules),
            compare,
            events: 0,
            last_seq: 0,
            by_type: BTreeMap::new(),
            anomalies_by_kind: BTreeMap::new(),
            derived: BTreeMap::new(),
            logged: BTreeMap::new(),
            derived_twice_in_log: Vec::new(),
        }
    }

    /// Folds one logged event.
    pub fn step(&mut self, env: &Envelope) {
        self.events += 1;
        self.last_seq = env.seq;
        *self.by_type.entry(env.event_type.clone()).or_default() += 1;
        if self.compare && is_derived(&env.event) {
            match self.logged.entry(identity(&env.event)) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    self.derived_twice_in_log.push(env.seq)
                }
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert((env.seq, env.fingerprint, env.event.clone()));
                }
            }
        }
        let at = At {
            seq: env.seq,
            recorded_at_ns: env.recorded_at_ns,
        };
        for d in self.core.step(&env.event, at) {
            if let Event::AnomalyDetected(a) = &d {
                *self.anomalies_by_kind.entry(a.kind.name()).or_default() += 1;
            }
            if self.compare {
                let fp = fingerprint(&d.canonical().to_bytes());
                self.derived.entry(identity(&d)).or_insert((env.seq, fp, d));
            }
        }
    }

    /// SHA-256 of the fold's state as it stands.
    pub fn state_hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (key, state) in &self.core.aggregates {
            let key = key.to_string();
            let bytes = state.to_bytes();
            h.update((key.len() as u64).to_le_bytes());
            h.update(key.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        h.update(self.core.router.to_bytes());
        h.finalize().into()
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    pub fn finish(mut self) -> ReplayReport {
        let mut differences = Vec::new();
        if self.compare {
            let mut logged = std::mem::take(&mut self.logged);
            for (id, (after_seq, fp, event)) in std::mem::take(&mut self.derived) {
                match logged.remove(&id) {
                    None => differences.push(Difference::Missing {
                        after_seq,
                        event: Box::new(event),
                    }),
                    Some((seq, lfp, levent)) if lfp != fp => {
                        differences.push(Difference::Changed {
                            seq,
                            logged: Box::new(levent),
                            derived: Box::new(event),
                        })
                    }
                    Some(_) => {}
                }
            }
            for (_, (seq, _, event)) in logged {
                differences.push(Difference::Extra {
                    seq,
                    event: Box::new(event),
                });
            }
            differences.sort_by_key(|d| match d {
                Difference::Missing { after_seq, .. } => *after_seq,
                Difference::Extra { seq, .. } | Difference::Changed { seq, .. } => *seq,
            });
        }
        ReplayReport {
            state_hash: self.state_hash(),
            events: self.events,
            last_seq: self.last_seq,
            by_type: self.by_type,
            anomalies_by_kind: self.anomalies_by_kind,
            aggregates: self.core.aggregates.len(),
            differences,
            derived_twice_in_log: self.derived_twice_in_log,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{At, Rules};
    use crate::ids::{ContainerId, TerminalId};
    use crate::reading::{Reading, ReadingKind, Stage};

    const T0: i64 = 1_790_000_000_000_000_000;

    fn weighing(seq: u64, kg: i64) -> Event {
        Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse("T-1").unwrap(),
            seq,
            measured_at_ns: T0 + seq as i64 * 60_000_000_000,
            kind: ReadingKind::Weight,
            value: kg * 1_000_000,
            container_id: Some(ContainerId::parse("C-1").unwrap()),
            stage: Some(Stage::StorageIn),
            waste_code: Some("HW08".into()),
            manifest_id: None,
        })
    }

    fn env(seq: u64, event: Event) -> Envelope {
        Envelope::plain(seq, T0 + seq as i64, event)
    }

    /// A log as a live node would write it: each event followed by what the core derives from it.
    fn live_log(events: Vec<Event>) -> Vec<Envelope> {
        let mut core = Core::new(Rules::default());
        let mut out = Vec::new();
        for e in events {
            let seq = out.len() as u64 + 1;
            let e = env(seq, e);
            let derived = core.step(
                &e.event,
                At {
                    seq,
                    recorded_at_ns: e.recorded_at_ns,
                },
            );
            out.push(e);
            for d in derived {
                let seq = out.len() as u64 + 1;
                let d = env(seq, d);
                core.step(
                    &d.event,
                    At {
                        seq,
                        recorded_at_ns: d.recorded_at_ns,
                    },
                );
                out.push(d);
            }
        }
        out
    }

    fn replay(log: &[Envelope]) -> ReplayReport {
        let mut r = Replay::new(Rules::default(), true);
        for e in log {
            r.step(e);
        }
        r.finish()
    }

    #[test]
    fn a_replay_of_a_live_log_agrees_and_hashes_alike() {
        let log = live_log(vec![weighing(1, 100), weighing(2, 60), weighing(3, 61)]);
        let a = replay(&log);
        assert!(a.differences.is_empty(), "{:?}", a.differences);
        assert_eq!(a.anomalies_by_kind.get("weight_fluctuation"), Some(&1));
        assert_eq!(a.state_hash, replay(&log).state_hash);
        let shorter = replay(&log[..1]);
        assert_ne!(shorter.state_hash, a.state_hash);
    }

    #[test]
    fn missing_extra_and_changed_derivations_are_reported() {
        let log = live_log(vec![weighing(1, 100), weighing(2, 60)]);
        let derived_at = log.iter().position(|e| is_derived(&e.event)).unwrap();
        // The one difference a replay finds, described.
        let only = |r: ReplayReport| {
            assert_eq!(r.differences.len(), 1, "{:?}", r.differences);
            r.differences[0].describe()
        };
        // The log without its derived event: the current code derives one the log lacks.
        let mut without = log.clone();
        without.remove(derived_at);
        assert!(only(replay(&without)).starts_with("missing:"));
        // Its derived event altered: same identity, other content.
        let mut altered = log.clone();
        if let Event::AnomalyDetected(a) = &mut altered[derived_at].event {
            a.current_value = Some(1);
        }
        altered[derived_at].fingerprint =
            fingerprint(&altered[derived_at].event.canonical().to_bytes());
        assert!(only(replay(&altered)).starts_with("changed:"));
        // A log whose derived event the code no longer derives (the 40 % drop undone).
        let mut extra = live_log(vec![weighing(1, 100), weighing(2, 99)]);
        extra.push(env(extra.len() as u64 + 1, log[derived_at].event.clone()));
        assert!(only(replay(&extra)).starts_with("extra:"));
        // The same derived event twice in the log.
        let mut twice = log.clone();
        twice.push(env(twice.len() as u64 + 1, log[derived_at].event.clone()));
        assert_eq!(replay(&twice).derived_twice_in_log.len(), 1);
    }
}

//! The dedupe rule every log decides with: [`decide`], and the identity a stored conflict's evidence is
//! held under ([`evidence_identity`]). A leaf: pure, it names nothing of the log's.
//!
//! The rule (see the crate's contract): the first content stored under a dedupe key wins; the same content
//! again is a duplicate of it; other content is a conflict, whose evidence (for event types that keep
//! any) is stored once per distinct content and answered from then on.
//!
//! Each log looks up what it holds — its own index overlaid with what the group or batch being decided
//! adds — and does what the decision says with its own records and indexes.

use custodian_events::envelope::{Fingerprint, fingerprint};
use custodian_events::event::{DedupeKey, Event};

/// What becomes of a proposed event with a dedupe key. `L` is where a held event stands: its sequence,
/// or, for a log that learns sequences only once it has written, a placeholder it resolves later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<L> {
    /// Nothing is held under the key: the event is stored, and its key held from now on.
    Append,
    /// The same content is held at `L`: the event is answered as its duplicate and not stored.
    Duplicate(L),
    /// Other content is held under the key, at `original`. The event is not stored; `evidence` says what
    /// becomes of the evidence of the attempt.
    Conflict { original: L, evidence: Evidence<L> },
}

/// What becomes of the evidence of a conflicting attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence<L> {
    /// The event's type keeps none ([`Event::keeps_conflict_evidence`]).
    NotKept,
    /// The evidence of this content under this key is stored at `L` already: answered, not stored again.
    Held(L),
    /// None is stored yet: it is stored now ([`crate::Proposed::evidence_record`]), and held under the
    /// key and the attempt's fingerprint from now on.
    Record,
}

impl<L> Evidence<L> {
    /// Where the evidence stands: nowhere when it is not kept, where it is held, or where `record` stores
    /// it (called only for [`Evidence::Record`]).
    pub fn stored_at<E>(self, record: impl FnOnce() -> Result<L, E>) -> Result<Option<L>, E> {
        match self {
            Evidence::NotKept => Ok(None),
            Evidence::Held(at) => Ok(Some(at)),
            Evidence::Record => record().map(Some),
        }
    }
}

/// Decides one proposed event with a dedupe key, given `held`: where the first event stored under the key
/// stands and its fingerprint, if any. `fingerprint` is the proposed event's, in the form the log holds
/// fingerprints in (so that like is compared with like). `keeps_evidence` is whether the event's type
/// keeps evidence of a conflict; `held_evidence` looks up where the evidence of this key and this
/// content is stored, if it is, and is called only for a conflict that keeps evidence (so a log pays for
/// that lookup only then). Its error is the decision's.
pub fn decide<L, E>(
    fingerprint: &Fingerprint,
    held: Option<(L, Fingerprint)>,
    keeps_evidence: bool,
    held_evidence: impl FnOnce() -> Result<Option<L>, E>,
) -> Result<Decision<L>, E> {
    let Some((original, held_fingerprint)) = held else {
        return Ok(Decision::Append);
    };
    if held_fingerprint == *fingerprint {
        return Ok(Decision::Duplicate(original));
    }
    let evidence = if keeps_evidence {
        match held_evidence()? {
            Some(at) => Evidence::Held(at),
            None => Evidence::Record,
        }
    } else {
        Evidence::NotKept
    };
    Ok(Decision::Conflict { original, evidence })
}

/// What a stored event that is a conflict's evidence (a `ReadingConflicted`) is held under: the dedupe
/// key and the fingerprint of the attempt it records, which [`decide`]'s `held_evidence` looks up. For a
/// log that rebuilds its indexes from its records; `None` for any other event.
pub fn evidence_identity(event: &Event) -> Option<(DedupeKey, Fingerprint)> {
    let Event::ReadingConflicted(c) = event else {
        return None;
    };
    let attempt = Event::ReadingRecorded(c.reading.clone());
    let key = attempt.dedupe_key().expect("readings have identities");
    let fp = fingerprint(&attempt.canonical().to_bytes());
    Some((key, fp))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::convert::Infallible;

    use proptest::prelude::*;

    use super::*;

    fn fp(n: u8) -> Fingerprint {
        [n; 32]
    }

    /// A lookup that must not be made.
    fn unused() -> Result<Option<u64>, Infallible> {
        panic!("the evidence lookup was made")
    }

    #[test]
    fn nothing_held_is_appended() {
        assert_eq!(
            decide(&fp(1), None, true, unused),
            Ok(Decision::<u64>::Append)
        );
    }

    #[test]
    fn the_same_content_is_a_duplicate_of_the_held_one() {
        assert_eq!(
            decide(&fp(1), Some((7, fp(1))), true, unused),
            Ok(Decision::Duplicate(7))
        );
    }

    #[test]
    fn other_content_conflicts_and_its_evidence_is_recorded_once() {
        let none = || Ok::<_, Infallible>(None);
        assert_eq!(
            decide(&fp(2), Some((7, fp(1))), true, none),
            Ok(Decision::Conflict {
                original: 7,
                evidence: Evidence::Record
            })
        );
        let held = || Ok::<_, Infallible>(Some(9));
        assert_eq!(
            decide(&fp(2), Some((7, fp(1))), true, held),
            Ok(Decision::Conflict {
                original: 7,
                evidence: Evidence::Held(9)
            })
        );
        assert_eq!(
            decide(&fp(2), Some((7, fp(1))), false, unused),
            Ok(Decision::Conflict {
                original: 7,
                evidence: Evidence::NotKept
            })
        );
    }

    #[test]
    fn a_failing_evidence_lookup_fails_the_decision() {
        let failing = || Err::<Option<u64>, _>("storage failed");
        assert_eq!(
            decide(&fp(2), Some((7, fp(1))), true, failing),
            Err("storage failed")
        );
    }

    #[test]
    fn evidence_stands_where_it_is_held_or_recorded() {
        let never = || -> Result<u64, Infallible> { panic!("recorded") };
        assert_eq!(Evidence::NotKept.stored_at(never), Ok(None));
        assert_eq!(Evidence::Held(4).stored_at(never), Ok(Some(4)));
        assert_eq!(
            Evidence::<u64>::Record.stored_at(|| Ok::<_, Infallible>(5)),
            Ok(Some(5))
        );
        assert_eq!(
            Evidence::<u64>::Record.stored_at(|| Err("sealing failed")),
            Err("sealing failed")
        );
    }

    #[test]
    fn only_a_conflict_record_has_an_evidence_identity() {
        use custodian_events::ids::TerminalId;
        use custodian_events::reading::{Reading, ReadingKind};
        let attempt = Event::ReadingRecorded(Reading {
            terminal_id: TerminalId::parse("T-1").unwrap(),
            seq: 3,
            measured_at_ns: 1_794_000_000_000_000_000,
            kind: ReadingKind::Weight,
            value: 5,
            container_id: None,
            stage: None,
            waste_code: None,
            manifest_id: None,
        });
        let evidence = attempt
            .conflict_evidence(1)
            .expect("readings keep evidence");
        assert!(matches!(evidence, Event::ReadingConflicted(_)));
        assert!(attempt.keeps_conflict_evidence());
        assert!(!evidence.keeps_conflict_evidence() && evidence.conflict_evidence(1).is_none());
        assert_eq!(
            evidence_identity(&evidence),
            Some((
                attempt.dedupe_key().unwrap(),
                fingerprint(&attempt.canonical().to_bytes())
            ))
        );
        assert_eq!(evidence_identity(&attempt), None);
    }

    proptest! {
        /// A log of proposals `(key, content, keeps evidence)` decided one after the other with `decide`:
        /// each key's first content is stored once, and every later proposal of the key names it (as a
        /// duplicate when its content is the same, as a conflict otherwise); a conflict's evidence is stored
        /// once per key and content, and answered from then on; the evidence lookup is made only for a
        /// conflict that keeps evidence.
        #[test]
        fn first_content_wins_and_evidence_is_stored_once(
            proposals in proptest::collection::vec((0u8..4, 0u8..3, any::<bool>()), 0..40)
        ) {
            let mut keys: BTreeMap<u8, (u64, Fingerprint)> = BTreeMap::new();
            let mut evidence: BTreeMap<(u8, Fingerprint), u64> = BTreeMap::new();
            let mut next = 1u64;
            // Where each key's first content stands, and each (key, content)'s first evidence.
            let mut first: BTreeMap<u8, (u64, u8)> = BTreeMap::new();
            let mut first_evidence: BTreeMap<(u8, u8), u64> = BTreeMap::new();
            for (key, content, keeps) in proposals {
                let looked = Cell::new(false);
                let decision = decide(&fp(content), keys.get(&key).copied(), keeps, || {
                    looked.set(true);
                    Ok::<_, Infallible>(evidence.get(&(key, fp(content))).copied())
                })
                .unwrap();
                let seq = next;
                match first.get(&key).copied() {
                    None => {
                        prop_assert_eq!(decision, Decision::Append);
                        first.insert(key, (seq, content));
                    }
                    Some((at, c)) if c == content => {
                        prop_assert_eq!(decision, Decision::Duplicate(at));
                    }
                    Some((at, _)) => {
                        let want = match (keeps, first_evidence.get(&(key, content))) {
                            (false, _) => Evidence::NotKept,
                            (true, Some(e)) => Evidence::Held(*e),
                            (true, None) => {
                                first_evidence.insert((key, content), seq);
                                Evidence::Record
                            }
                        };
                        prop_assert_eq!(decision, Decision::Conflict { original: at, evidence: want });
                    }
                }
                prop_assert_eq!(
                    looked.get(),
                    keeps && matches!(decision, Decision::Conflict { .. })
                );
                // What the log does with the decision.
                match decision {
                    Decision::Append => {
                        keys.insert(key, (seq, fp(content)));
                        next += 1;
                    }
                    Decision::Duplicate(_) => {}
                    Decision::Conflict { evidence: e, .. } => {
                        e.stored_at(|| {
                            evidence.insert((key, fp(content)), seq);
                            next += 1;
                            Ok::<_, Infallible>(seq)
                        })
                        .unwrap();
                    }
                }
            }
            prop_assert_eq!(next - 1, (first.len() + first_evidence.len()) as u64);
        }
    }
}

//! The terminal aggregate. So far: `tamper_suspected` — a terminal that sends a reading under a `seq` it
//! already used, with other content, is rewriting its history; ingest keeps the attempt as a
//! `ReadingConflicted` event, and the terminal's aggregate turns it into an anomaly, once per `(terminal,
//! seq)` however often the terminal tries.

use std::collections::BTreeSet;

use crate::domain::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use crate::envelope::Fingerprint;
use crate::event::Event;
use crate::ids::TerminalId;

/// What a terminal's rules remember.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalState {
    emitted: BTreeSet<Fingerprint>,
}

impl TerminalState {
    /// Decides what an event of `terminal` (at `event_seq`) derives.
    pub fn decide(&self, terminal: &TerminalId, event: &Event, event_seq: u64) -> Vec<Event> {
        let Event::ReadingConflicted(c) = event else {
            return Vec::new();
        };
        if &c.reading.terminal_id != terminal {
            return Vec::new();
        }
        let subject = format!("terminal:{terminal}");
        let causes = vec![ReadingRef {
            terminal_id: terminal.clone(),
            seq: c.reading.seq,
        }];
        let anomaly_id = AnomalyDetected::identity(AnomalyKind::TamperSuspected, &subject, &causes);
        if self.emitted.contains(&anomaly_id) {
            return Vec::new();
        }
        vec![Event::AnomalyDetected(AnomalyDetected {
            anomaly_id,
            kind: AnomalyKind::TamperSuspected,
            severity: Severity::High,
            subject,
            terminal_id: Some(terminal.clone()),
            container_id: c.reading.container_id.clone(),
            previous_value: None,
            current_value: Some(c.reading.value),
            change_ratio_ppm: None,
            cause_seq: event_seq,
            evidence_seqs: vec![c.original_event_seq, event_seq],
            causes,
        })]
    }

    pub fn apply(&mut self, event: &Event) {
        if let Event::AnomalyDetected(a) = event {
            self.emitted.insert(a.anomaly_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ReadingConflicted;
    use crate::reading::{Reading, ReadingKind};

    fn conflict(seq: u64, value: i64) -> Event {
        Event::ReadingConflicted(ReadingConflicted {
            reading: Reading {
                terminal_id: TerminalId::parse("T-1").unwrap(),
                seq,
                measured_at_ns: 0,
                kind: ReadingKind::Weight,
                value,
                container_id: None,
                stage: None,
                waste_code: None,
            },
            original_event_seq: 4,
        })
    }

    #[test]
    fn a_rewritten_seq_is_tamper_suspected_once_however_often_it_is_tried() {
        let t1 = TerminalId::parse("T-1").unwrap();
        let mut state = TerminalState::default();
        let first = state.decide(&t1, &conflict(7, 1), 10);
        assert_eq!(first.len(), 1);
        let Event::AnomalyDetected(a) = &first[0] else {
            panic!("an anomaly")
        };
        assert_eq!(a.kind, AnomalyKind::TamperSuspected);
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.evidence_seqs, vec![4, 10]);
        assert_eq!(a.subject, "terminal:T-1");
        state.apply(&first[0]);
        // Another forged content for the same seq: the same anomaly, not a new one.
        assert!(state.decide(&t1, &conflict(7, 2), 11).is_empty());
        // Another seq rewritten: a new anomaly.
        assert_eq!(state.decide(&t1, &conflict(8, 2), 12).len(), 1);
        // Events of other terminals or other types are not this aggregate's.
        let t2 = TerminalId::parse("T-2").unwrap();
        assert!(state.decide(&t2, &conflict(9, 1), 13).is_empty());
    }
}

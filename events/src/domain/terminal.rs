//! The terminal aggregate: what one terminal's own readings say.
//!
//! - `tamper_suspected`: a terminal that sends a reading under a `seq` it already used, with other
//!   content, is rewriting its history; ingest keeps the attempt as a `ReadingConflicted` event, and this
//!   aggregate turns it into an anomaly, once per `(terminal, seq)` however often the terminal tries.
//! - `terminal_silent`: no reading measured for more than `silence_intervals` registered report intervals
//!   when a `ClockTicked` passes; once per silence (the identity names the last reading before it).
//! - Cleaning: readings without a container (load cells, sensors) are judged by a Hampel filter over the
//!   terminal's recent readings of the same kind and flagged with a `ReadingSuspect` event.
//! - Clock skew: the difference between when the log recorded a reading and when the terminal says it
//!   measured it, kept over the recent readings (median), for the read models and the operators.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::anomaly::{AnomalyDetected, AnomalyKind, ReadingRef, Severity};
use crate::domain::cleaning::median;
use crate::domain::rules::{At, Rules};
use crate::event::{Event, ReadingSuspect, TerminalKind};
use crate::fingerprint::Fingerprint;
use crate::ids::{EnterpriseId, TerminalId};
use crate::reading::ReadingKind;

/// Clock-skew samples kept.
const SKEW_WINDOW: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Registration {
    enterprise_id: EnterpriseId,
    kind: TerminalKind,
    report_interval_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct LastReading {
    measured_at_ns: i64,
    reading: ReadingRef,
    event_seq: u64,
}

/// What a terminal's rules remember.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TerminalState {
    registration: Option<Registration>,
    /// The latest reading by `measured_at`.
    last: Option<LastReading>,
    /// Recent values per kind of the readings without a container, in log order (the Hampel window).
    windows: BTreeMap<ReadingKind, VecDeque<i64>>,
    /// Recent `recorded_at − measured_at`, in ns.
    skews_ns: VecDeque<i64>,
    emitted: BTreeSet<Fingerprint>,
}

impl TerminalState {
    fn silence_identity(terminal: &TerminalId, last: &LastReading) -> Fingerprint {
        AnomalyDetected::identity(
            AnomalyKind::TerminalSilent,
            &format!("terminal:{terminal}"),
            std::slice::from_ref(&last.reading),
        )
    }

    /// The median clock skew over the recent readings (positive: the terminal's clock is behind, or its
    /// uploads are delayed), if any reading was seen.
    pub fn clock_skew_ns(&self) -> Option<i64> {
        median(self.skews_ns.iter().copied())
    }

    /// The first instant at which the terminal counts as silent, unless that silence was already flagged.
    pub fn deadline_ns(&self, terminal: &TerminalId, rules: &Rules) -> Option<i64> {
        let reg = self.registration.as_ref()?;
        let last = self.last.as_ref()?;
        if self
            .emitted
            .contains(&Self::silence_identity(terminal, last))
        {
            return None;
        }
        let allowed_s = i64::from(reg.report_interval_s) * i64::from(rules.silence_intervals);
        // Silent after *more than* the allowed time: the first instant that fires is one ns past it.
        Some(
            last.measured_at_ns
                .saturating_add(allowed_s * 1_000_000_000)
                .saturating_add(1),
        )
    }

    /// Decides what an event of `terminal` derives.
    pub fn decide(
        &self,
        terminal: &TerminalId,
        rules: &Rules,
        event: &Event,
        at: At,
    ) -> Vec<Event> {
        match event {
            Event::ReadingConflicted(c) if &c.reading.terminal_id == terminal => {
                let causes = vec![ReadingRef {
                    terminal_id: terminal.clone(),
                    seq: c.reading.seq,
                }];
                let mut a = AnomalyDetected::new(
                    AnomalyKind::TamperSuspected,
                    Severity::High,
                    format!("terminal:{terminal}"),
                    causes,
                    at.seq,
                    vec![c.original_event_seq, at.seq],
                );
                if self.emitted.contains(&a.anomaly_id) {
                    return Vec::new();
                }
                a.terminal_id = Some(terminal.clone());
                a.container_id = c.reading.container_id.clone();
                a.enterprise_id = self.enterprise_id().cloned();
                a.current_value = Some(c.reading.value);
                vec![Event::AnomalyDetected(a)]
            }
            Event::ReadingRecorded(r) if &r.terminal_id == terminal && r.container_id.is_none() => {
                let Some(window) = self.windows.get(&r.kind) else {
                    return Vec::new();
                };
                match rules.hampel.judge(window, r.value) {
                    Some((window_median, window_mad)) => {
                        vec![Event::ReadingSuspect(ReadingSuspect {
                            terminal_id: terminal.clone(),
                            seq: r.seq,
                            kind: r.kind,
                            value: r.value,
                            window_median,
                            window_mad,
                            cause_seq: at.seq,
                        })]
                    }
                    None => Vec::new(),
                }
            }
            Event::ClockTicked(t) => {
                match self.deadline_ns(terminal, rules) {
                    Some(deadline) if t.at_ns >= deadline => {}
                    _ => return Vec::new(),
                }
                let last = self.last.as_ref().expect("a deadline implies a reading");
                let reg = self.registration.as_ref().expect("and a registration");
                let mut a = AnomalyDetected::new(
                    AnomalyKind::TerminalSilent,
                    Severity::Medium,
                    format!("terminal:{terminal}"),
                    vec![last.reading.clone()],
                    at.seq,
                    vec![last.event_seq, at.seq],
                );
                a.terminal_id = Some(terminal.clone());
                a.enterprise_id = Some(reg.enterprise_id.clone());
                a.current_value = Some((t.at_ns - last.measured_at_ns) / 1_000_000_000);
                a.limit_value =
                    Some(i64::from(reg.report_interval_s) * i64::from(rules.silence_intervals));
                vec![Event::AnomalyDetected(a)]
            }
            _ => Vec::new(),
        }
    }

    fn enterprise_id(&self) -> Option<&EnterpriseId> {
        self.registration.as_ref().map(|r| &r.enterprise_id)
    }

    pub fn apply(&mut self, rules: &Rules, event: &Event, at: At) {
        match event {
            Event::TerminalRegistered(t) => {
                self.registration = Some(Registration {
                    enterprise_id: t.enterprise_id.clone(),
                    kind: t.kind,
                    report_interval_s: t.report_interval_s,
                });
            }
            Event::ReadingRecorded(r) => {
                if self
                    .last
                    .as_ref()
                    .is_none_or(|l| r.measured_at_ns > l.measured_at_ns)
                {
                    self.last = Some(LastReading {
                        measured_at_ns: r.measured_at_ns,
                        reading: ReadingRef {
                            terminal_id: r.terminal_id.clone(),
                            seq: r.seq,
                        },
                        event_seq: at.seq,
                    });
                }
                if r.container_id.is_none() {
                    let w = self.windows.entry(r.kind).or_default();
                    w.push_back(r.value);
                    while w.len() > rules.hampel.window {
                        w.pop_front();
                    }
                }
                self.skews_ns
                    .push_back(at.recorded_at_ns.saturating_sub(r.measured_at_ns));
                while self.skews_ns.len() > SKEW_WINDOW {
                    self.skews_ns.pop_front();
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
    use crate::event::{ClockTicked, ReadingConflicted, TerminalRegistered};
    use crate::reading::Reading;

    const T0: i64 = 1_790_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn t1() -> TerminalId {
        TerminalId::parse("T-1").unwrap()
    }

    fn reading(seq: u64, at_s: i64, value: i64) -> Reading {
        Reading {
            terminal_id: t1(),
            seq,
            measured_at_ns: T0 + at_s * S,
            kind: ReadingKind::Weight,
            value,
            container_id: None,
            stage: None,
            waste_code: None,
            manifest_id: None,
        }
    }

    fn conflict(seq: u64, value: i64) -> Event {
        Event::ReadingConflicted(ReadingConflicted {
            reading: reading(seq, 0, value),
            original_event_seq: 4,
        })
    }

    fn registered(interval_s: u32) -> Event {
        Event::TerminalRegistered(TerminalRegistered {
            id: t1(),
            enterprise_id: EnterpriseId::parse("E-1").unwrap(),
            kind: TerminalKind::LoadCell,
            capacity_mg: 1_000_000_000,
            report_interval_s: interval_s,
            public_key: None,
        })
    }

    /// Decides and applies `events` in order (seq 1, 2, …), applying what they derive too.
    fn run(state: &mut TerminalState, rules: &Rules, events: &[Event]) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let at = At {
                seq: i as u64 + 1,
                recorded_at_ns: T0 + i as i64 * S,
            };
            let derived = state.decide(&t1(), rules, e, at);
            state.apply(rules, e, at);
            for d in &derived {
                state.apply(rules, d, at);
            }
            out.extend(derived);
        }
        out
    }

    fn tick(at_s: i64) -> Event {
        Event::ClockTicked(ClockTicked {
            at_ns: T0 + at_s * S,
        })
    }

    #[test]
    fn a_rewritten_seq_is_tamper_suspected_once_however_often_it_is_tried() {
        let rules = Rules::default();
        let mut state = TerminalState::default();
        let first = state.decide(&t1(), &rules, &conflict(7, 1), At::seq(10));
        assert_eq!(first.len(), 1);
        let Event::AnomalyDetected(a) = &first[0] else {
            panic!("an anomaly")
        };
        assert_eq!(a.kind, AnomalyKind::TamperSuspected);
        assert_eq!(a.severity, Severity::High);
        assert_eq!(a.evidence_seqs, vec![4, 10]);
        assert_eq!(a.subject, "terminal:T-1");
        state.apply(&rules, &first[0], At::seq(11));
        // Another forged content for the same seq: the same anomaly, not a new one.
        assert!(
            state
                .decide(&t1(), &rules, &conflict(7, 2), At::seq(12))
                .is_empty()
        );
        // Another seq rewritten: a new anomaly.
        assert_eq!(
            state
                .decide(&t1(), &rules, &conflict(8, 2), At::seq(13))
                .len(),
            1
        );
        // Events of other terminals are not this aggregate's.
        let t2 = TerminalId::parse("T-2").unwrap();
        assert!(
            state
                .decide(&t2, &rules, &conflict(9, 1), At::seq(14))
                .is_empty()
        );
    }

    #[test]
    fn silence_fires_after_three_intervals_once_per_silence() {
        let rules = Rules::default();
        let mut state = TerminalState::default();
        let r = |seq, at| Event::ReadingRecorded(reading(seq, at, 1000));
        // Interval 10 s: silent after 30 s without a reading measured.
        let out = run(
            &mut state,
            &rules,
            &[registered(10), r(1, 0), tick(20), tick(30)],
        );
        assert!(out.is_empty(), "exactly 3 intervals is not yet silent");
        let out = run(&mut state, &rules, &[tick(31), tick(60), tick(600)]);
        assert_eq!(out.len(), 1, "one anomaly per silence: {out:?}");
        let Event::AnomalyDetected(a) = &out[0] else {
            panic!()
        };
        assert_eq!(a.kind, AnomalyKind::TerminalSilent);
        assert_eq!(a.current_value, Some(31));
        assert_eq!(a.limit_value, Some(30));
        assert_eq!(a.causes[0].seq, 1);
        // It speaks again, then falls silent again: a second silence.
        let out = run(&mut state, &rules, &[r(2, 700), tick(720), tick(731)]);
        assert_eq!(out.len(), 1);
        // A late reading measured before the last one does not reset the silence clock.
        assert_eq!(state.deadline_ns(&t1(), &rules), None);
        run(&mut state, &rules, &[r(3, 650)]);
        assert_eq!(state.deadline_ns(&t1(), &rules), None);
    }

    #[test]
    fn no_silence_before_registration_or_before_a_first_reading() {
        let rules = Rules::default();
        let mut state = TerminalState::default();
        assert!(run(&mut state, &rules, &[registered(10), tick(10_000)]).is_empty());
        let mut unregistered = TerminalState::default();
        let out = run(
            &mut unregistered,
            &rules,
            &[Event::ReadingRecorded(reading(1, 0, 5)), tick(10_000)],
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_spike_from_a_load_cell_is_flagged_suspect_not_dropped() {
        let rules = Rules::default();
        let mut state = TerminalState::default();
        let mut events = vec![registered(10)];
        for i in 0..10u64 {
            events.push(Event::ReadingRecorded(reading(
                i + 1,
                i as i64 * 10,
                1_000_000 + (i as i64 % 3) * 1_000,
            )));
        }
        assert!(run(&mut state, &rules, &events).is_empty());
        let out = run(
            &mut state,
            &rules,
            &[Event::ReadingRecorded(reading(11, 110, 1_500_000))],
        );
        assert_eq!(out.len(), 1);
        let Event::ReadingSuspect(s) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (s.seq, s.value, s.window_median),
            (11, 1_500_000, 1_001_000)
        );
        // The spike entered the window; the signal returning is not a spike.
        assert!(
            run(
                &mut state,
                &rules,
                &[Event::ReadingRecorded(reading(12, 120, 1_001_000))]
            )
            .is_empty()
        );
    }

    #[test]
    fn clock_skew_is_the_median_of_recorded_minus_measured() {
        let rules = Rules::default();
        let mut state = TerminalState::default();
        for (i, skew_s) in [5i64, 7, 6, 100, 6].into_iter().enumerate() {
            let r = reading(i as u64 + 1, i as i64 * 10, 1);
            let at = At {
                seq: i as u64 + 1,
                recorded_at_ns: r.measured_at_ns + skew_s * S,
            };
            state.apply(&rules, &Event::ReadingRecorded(r), at);
        }
        assert_eq!(state.clock_skew_ns(), Some(6 * S));
    }
}

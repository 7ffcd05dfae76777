//! The pure domain core: aggregates that decide derived events from recorded ones, deterministically.
//!
//! Each aggregate is `decide(&state, input) -> Vec<Event>` plus `apply(&mut state, &event)`: no clock, no
//! randomness, no hash-map iteration order — the same log in gives the same state and derived events out,
//! which replay and simulation depend on.
//!
//! Built so far (issue 3, first slice): the container custody chain and the `weight_fluctuation` rule, the
//! terminal aggregate's `tamper_suspected` rule, and the `AnomalyDetected` event with its deterministic
//! identity. Still to come: terminal, enterprise and
//! manifest aggregates, the other anomaly rules, cleaning, KPIs, and the actors that run this over the log.

pub mod anomaly;
pub mod container;
pub mod terminal;

pub use anomaly::{AnomalyDetected, AnomalyKind, Severity};
pub use container::{ContainerState, WeighingRules};
pub use terminal::TerminalState;

//! # custodian-simulations
//!
//! Will own the seeded, deterministic simulation of whole nodes with faults, event-log replay and the
//! invariant checkers (issue "Deterministic simulation and event-log replay"). Empty today; the foundation's
//! crash test lives in `tests/`.
//!
//! Must not contain production code paths of its own.

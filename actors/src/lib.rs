//! # custodian-actors
//!
//! Will own the ractor actors that run the pure domain core over the event log: one `TerminalActor` per
//! terminal and one `EnterpriseActor` per enterprise, their supervisor tree, passivation, and rebuilding
//! state from the log (issue "Domain core and actors"). Empty today: the foundation records facts but
//! derives nothing from them yet.
//!
//! Must not contain NATS, SQL or InfluxDB clients.

//! The regulators' reads, one module per store: every query of a read model that the HTTP API
//! (`api::query`, `api::search`) and the dashboard (`dashboard`) answer from is written here once, as a
//! typed function that takes the store's handle and the caller's scope and returns typed rows.
//!
//! - [`postgres`]: the SQL reads of the PostgreSQL read model (enterprises, KPIs, anomalies, containers
//!   and their custody, terminals, manifests, the overview's figures).
//! - [`influx`]: the InfluxQL reads of the InfluxDB read model (a terminal's readings).
//! - [`search`]: the reads of the full-text index.
//!
//! Every read that can reach a row of another scope carries the scope in its query (`Scope::binds` in the
//! SQL, the tags in the InfluxQL, the filter in the index query), so a row out of scope is never read at
//! all. The few reads without a scope of their own (a known enterprise's terminals, containers, KPIs; a
//! container's custody) take what a scoped read returned. Checking a request's parameters, and the
//! answers' shapes (JSON, pages), stay with the callers; the writes of the read models are
//! `custodian_projections`'.

pub mod influx;
pub mod postgres;
pub mod search;

//! # custodian-projections
//!
//! The read models built from the event log, each tailing it from its own checkpoint: PostgreSQL (business
//! data, sqlx with migrations), InfluxDB (readings as time series) and a tantivy index of the platform's
//! text. Each can be dropped and rebuilt from the log.
//!
//! Must not contain HTTP routing.

pub mod columns;
pub mod describe;
pub mod directory;
pub mod influx;
pub mod pointer;
pub mod postgres;
pub mod readings;
pub mod runner;
pub mod sealed_dir;
pub mod search;
pub mod text;

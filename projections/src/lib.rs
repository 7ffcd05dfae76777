//! # custodian-projections
//!
//! Will own the projection runner with checkpoints and the read models it feeds: PostgreSQL (sqlx,
//! migrations), InfluxDB, the tantivy search index, the query functions over them and the moka cache
//! (issue "Projections"). Empty today: the log is the only store.
//!
//! Must not contain HTTP routing.

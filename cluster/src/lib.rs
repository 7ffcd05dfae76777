//! # custodian-cluster
//!
//! Will own NATS membership, shard placement and ownership (leases with fencing tokens), routing to the
//! owning node, and JetStream as the replicated log behind the `EventLog` trait in cluster mode (issue
//! "Cluster over NATS"). So far:
//!
//! - [`placement`]: shards by hash of id, per-shard rate forecasts (Holt's linear trend with a margin),
//!   node CPU and memory smoothed by a dual-mode Kalman filter, and weighted rendezvous hashing with
//!   bounded loads, stickiness and a cap on moves per interval (`docs/placement.md`);
//! - [`membership`]: heartbeats on core NATS, suspicion and death thresholds, self-fencing
//!   (`docs/membership.md`);
//! - [`ownership`]: owner records in a replicated KV bucket claimed by compare-and-set (the revision is the
//!   shard's epoch) and appends fenced by the subject's expected last sequence (`docs/ownership.md`);
//! - [`coordinator`]: failover of ownership: every node computes the same target per shard from the
//!   alive set and claims the shards of dead owners it is the target of; a fenced node drops everything;
//! - [`placement_sim`]: the placement simulator comparing it with plain hashing on a skewed, drifting
//!   workload (`custodian bench placement`).
//!
//! A node still runs alone on its embedded sled log. Must not contain domain rules.

pub mod cluster_log;
pub mod coordinator;
pub mod failover_bench;
pub mod membership;
pub mod node;
pub mod ownership;
pub mod placement;
pub mod placement_sim;

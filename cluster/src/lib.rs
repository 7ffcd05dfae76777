//! # custodian-cluster
//!
//! Cluster mode over NATS (`docs/cluster.md`):
//!
//! - [`bus`]: what the cluster needs of NATS as one trait, and the real one on async-nats;
//! - [`cluster_log`]: the `EventLog` on JetStream: only a shard's owner appends, fenced; every node keeps
//!   a copy filled in stream order; any node takes any append and forwards it to the owner;
//! - [`node`]: a node's part in a cluster (membership, coordinator and log together; graceful hand-off);
//! - [`placement`]: shards by hash of id, per-shard rate forecasts (Holt's linear trend with a margin),
//!   node CPU and memory smoothed by a dual-mode Kalman filter, and weighted rendezvous hashing with
//!   bounded loads, stickiness and a cap on moves per interval (`docs/placement.md`);
//! - [`membership`]: heartbeats on core NATS, suspicion and death thresholds, self-fencing
//!   (`docs/membership.md`);
//! - [`ownership`]: owner records in a replicated KV bucket claimed by compare-and-set (the revision is the
//!   shard's epoch) and appends fenced by the subject's expected last sequence (`docs/ownership.md`);
//! - [`coordinator`]: failover of ownership: every node computes the same target per shard from the
//!   plan and the alive set and claims the shards of dead owners it is the target of; owners hand off
//!   shards the plan moves; a fenced node drops everything;
//! - [`planner`]: per-shard forecasts from each node's copy, one planner writing the placement plan to the
//!   owner bucket; [`load`]: a node's CPU and memory from `/proc`, smoothed, carried in its heartbeats;
//! - [`placement_sim`]: the placement simulator comparing it with plain hashing on a skewed, drifting
//!   workload (`custodian bench placement`).
//!
//! Must not contain domain rules.

pub mod bus;
pub mod cluster_log;
pub mod coordinator;
pub mod failover_bench;
pub mod load;
pub mod membership;
pub mod node;
pub mod ownership;
pub mod placement;
pub mod placement_sim;
pub mod planner;

//! # custodian-cluster
//!
//! Will own NATS membership, shard placement and ownership (leases with fencing tokens), routing to the
//! owning node, and JetStream as the replicated log behind the `EventLog` trait in cluster mode (issue
//! "Cluster over NATS"). Empty today: a node runs alone on its embedded sled log.
//!
//! Must not contain domain rules.

//! The multi-node topology (`custodian-sim cluster`, docs/simulation.md): the real cluster nodes on the
//! simulated NATS pass every checker under a seeded schedule of kills, pauses, partitions and JetStream
//! stalls; long pauses that catch an append in flight have that late append fenced; and the same
//! schedule on a JetStream that does not fence appends is caught by one_writer_per_shard.
//!
//! The runs take real time (about 20 s each); the tests take turns, so that two clusters do not share
//! the two cores at once.

use std::sync::Mutex;

use custodian_simulations::cluster::{self, ClusterSimConfig, FaultKind};
use custodian_simulations::net::NetConfig;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn seeded_kills_pauses_partitions_and_stalls_lose_and_double_nothing() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut faults_seen = [0u64; 4];
    let mut fenced = 0;
    for seed in [1, 2] {
        let config = ClusterSimConfig {
            seed,
            seconds: 20,
            ..ClusterSimConfig::default()
        };
        let outcome = cluster::run(&config, &mut |line| eprintln!("  {line}"));
        let report = cluster::report(&outcome);
        eprint!("{report}");
        assert!(outcome.passed(), "seed {seed} failed:\n{report}");
        let s = &outcome.stats;
        assert!(s.readings_acked > 1_000, "{report}");
        assert!(s.resends > 0, "{report}");
        for (i, n) in [s.kills, s.pauses, s.partitions, s.stalls]
            .iter()
            .enumerate()
        {
            faults_seen[i] += n;
        }
        fenced += s.net.fenced_appends;
    }
    assert!(
        faults_seen.iter().all(|n| *n > 0),
        "the two seeds did not draw every kind of fault (kills, pauses, partitions, stalls): {faults_seen:?}"
    );
    eprintln!("faults {faults_seen:?}; late appends fenced: {fenced}");
}

#[test]
fn the_checker_catches_a_jetstream_that_does_not_fence_appends() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A paused owner's held append lands after another node took the shard over: pauses long enough
    // for the others to declare it dead (2.5 s and more, against dead_after 1.5 s), each at the moment
    // an append of it is in flight. Up to three seeds (the interleaving is not fixed).
    let pauses = |seed, fence_appends| ClusterSimConfig {
        seed,
        seconds: 15,
        kinds: vec![FaultKind::Pause],
        fault_ms: (2_500, 4_000),
        net: NetConfig {
            fence_appends,
            ..NetConfig::default()
        },
        ..ClusterSimConfig::default()
    };
    // The control: the same schedule on a fencing JetStream passes, the late appends refused.
    let control = cluster::run(&pauses(1, true), &mut |_| {});
    eprint!("{}", cluster::report(&control));
    assert!(control.passed(), "{}", cluster::report(&control));
    assert!(
        control.stats.pauses_with_append_held > 0 && control.stats.net.fenced_appends > 0,
        "no late append was fenced:\n{}",
        cluster::report(&control)
    );
    for seed in 1..=3 {
        let config = pauses(seed, false);
        let outcome = cluster::run(&config, &mut |_| {});
        let caught = outcome
            .checks
            .iter()
            .any(|c| c.name == "one_writer_per_shard" && !c.ok);
        eprint!("{}", cluster::report(&outcome));
        if caught {
            return;
        }
    }
    panic!(
        "three seeds of pauses over an unfenced JetStream and one_writer_per_shard never failed"
    );
}

#[test]
fn a_follower_that_misses_stream_messages_follows_again_and_no_sequence_moves() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // One delivery in fifty never reaches the copy that follows the stream (a lossy ordered consumer).
    // Filing the next message anyway would give every later event another sequence on that node than
    // on the others: an acknowledgement naming one event_seq and a resend to another node naming another.
    // No other fault, so that any failure is this one.
    let config = ClusterSimConfig {
        seed: 5,
        seconds: 10,
        faults: false,
        net: NetConfig {
            p_follow_skipped: 0.02,
            ..NetConfig::default()
        },
        ..ClusterSimConfig::default()
    };
    let outcome = cluster::run(&config, &mut |line| eprintln!("  {line}"));
    let report = cluster::report(&outcome);
    eprint!("{report}");
    assert!(
        outcome.stats.net.follow_skips > 10,
        "too few skipped deliveries to prove anything:\n{report}"
    );
    assert!(outcome.passed(), "{report}");
}

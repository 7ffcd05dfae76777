//! Three `custodian serve --cluster` processes on the three-server JetStream cluster
//! (`scripts/services nats-cluster up`), with terminals uploading through whichever node answers:
//! - any node takes any upload and every node's copy of the log is the same; the `event_seq` each
//!   acknowledgement names is where every node's log holds the reading, and every node answers a resend
//!   as a duplicate of that very event (forwarded to the owner or not);
//! - `kill -9` of a node every few seconds, and its restart: no acknowledged reading lost, none stored
//!   twice, none moved from the `event_seq` it was acknowledged with (on every node, resent to every
//!   node, after the acknowledging nodes were killed); the time each kill kept some terminal from being
//!   acknowledged is printed;
//! - SIGSTOP of a node: its shards move, and when it is resumed its late appends are fenced;
//! - a graceful stop hands the node's shards off, and a rolling restart loses and doubles nothing.

use std::time::{Duration, Instant};

use custodian_tests::cluster::{
    Acks, Cluster, Load, check_acked, check_resends, register, terminals,
};
use custodian_tools::terminal_sim::now_rfc3339;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_takes_any_upload_and_the_copies_agree() {
    let cluster = Cluster::new("any", 3);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let took = cluster.wait_owned(Duration::from_secs(30)).await;
    eprintln!("all 64 shards owned {took:?} after the nodes answered");
    let mut ts = terminals(12);
    register(&cluster, &ts).await;
    // Each terminal uploads through every node in turn; the registration made on n1 is known on all.
    let mut acks = Acks::default();
    for round in 0..3 {
        for (k, t) in ts.iter_mut().enumerate() {
            let (body, seqs) = t.next_body(4, &now_rfc3339());
            let sig = t.sign(&body);
            let r = cluster
                .client((k + round) % 3)
                .upload(body.clone(), Some(&sig))
                .await
                .unwrap();
            assert_eq!(r.results.len(), seqs.len());
            for res in &r.results {
                assert_eq!(serde_json::to_value(res).unwrap()["status"], "accepted");
            }
            acks.note(&r, body, sig);
        }
    }
    let log = cluster.logs_agree().await;
    assert_eq!(check_acked(&log, &acks), 12 * 3 * 4);
    // The event_seq an acknowledgement names is the reading's identity on every node: a resend to any
    // node (forwarded to the owner or not) is a duplicate of that very event.
    assert_eq!(check_resends(&cluster, &acks).await, 3 * 12 * 3 * 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_every_few_seconds_loses_and_doubles_nothing() {
    let rounds: usize = std::env::var("CUSTODIAN_CLUSTER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut cluster = Cluster::new("kill", 3);
    let ts = cluster.ready_with_terminals(12).await;
    let load = Load::start(cluster.first_urls(3), ts);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kills = Vec::new();
    for round in 0..rounds {
        let victim = round % 3;
        let at = Instant::now();
        cluster.kill9(victim);
        let owned = cluster.wait_owned(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outage = load.outage_after(at);
        eprintln!(
            "kill {round}: n{} killed; survivors own its shards after {owned:?}; the longest any terminal waited for an ack: {outage:?}",
            victim + 1
        );
        kills.push((owned, outage));
        cluster.start(victim);
        cluster.wait_ready(victim).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let acks = load.stop().await;
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    let resent = check_resends(&cluster, &acks).await;
    eprintln!(
        "{n} acknowledged readings, all stored exactly once at the event_seq acknowledged; {resent} resends answered duplicate of it on every node; {} failed tries resent; {rounds} kills",
        acks.failures
    );
    assert!(n > 0);
    for (owned, outage) in kills {
        assert!(
            outage < Duration::from_secs(15),
            "a terminal waited {outage:?} (shards owned after {owned:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_fenced_and_a_rolling_restart_loses_nothing() {
    let mut cluster = Cluster::new("pause", 3);
    let ts = cluster.ready_with_terminals(9).await;
    // The load goes through n1 and n2 only: n3 is paused and resumed under it.
    let load = Load::start(cluster.first_urls(2), ts);
    cluster.wait_owns_some(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cluster.healthz(2).await.unwrap();
    let n3_shards = before["cluster"]["owned_shards"].as_array().unwrap().len();
    assert!(n3_shards > 0, "n3 owns nothing: {before}");
    cluster.signal(2, "-STOP");
    let paused = Instant::now();
    // The others take n3's shards over while it sleeps.
    let mut moved = None;
    while paused.elapsed() < Duration::from_secs(20) {
        let mut owned = 0;
        for i in 0..2 {
            owned += cluster.healthz(i).await.unwrap()["cluster"]["owned_shards"]
                .as_array()
                .unwrap()
                .len();
        }
        if owned == 64 {
            moved = Some(paused.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = moved.expect("n1 and n2 took n3's shards over");
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!(
        "n3 paused: its {n3_shards} shards owned by n1 and n2 after {moved:?}; outage {:?}",
        load.outage_after(paused)
    );
    cluster.signal(2, "-CONT");
    // Resumed, n3 finds itself fenced (or its appends fail) and lets go of every shard it held.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.wait_ready(2).await;
    let after = cluster.healthz(2).await.unwrap();
    assert!(
        after["cluster"]["dropped"].as_u64().unwrap() >= n3_shards as u64,
        "n3 resumed without letting go of its {n3_shards} shards: {after}"
    );
    cluster.wait_owned(Duration::from_secs(20)).await;
    // A rolling restart: each node in turn stops gracefully (handing its shards off) and starts again.
    for i in 0..3 {
        let at = Instant::now();
        cluster.stop(i);
        let handed = cluster.wait_owned(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "n{} stopped gracefully: shards owned by the others {:?} after SIGTERM; outage {:?}",
            i + 1,
            at.elapsed().min(handed + at.elapsed()),
            load.outage_after(at)
        );
        cluster.start(i);
        cluster.wait_ready(i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let acks = load.stop().await;
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    eprintln!("{n} acknowledged readings, all stored exactly once");
    // No shard's history has two owners interleaved: the epochs every node saw only grew.
    for i in 0..3 {
        let h = cluster.healthz(i).await.unwrap();
        assert_eq!(h["cluster"]["epoch_regressions"], 0, "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_secrets_are_not_the_clusters_refuses_to_start() {
    // A node with a master key, token key or admin token other than the cluster's would join, report
    // itself healthy and then fail every filing (or issue tokens nobody else accepts). It must refuse to
    // start, naming what differs, and never answer /healthz.
    let mut cluster = Cluster::new("secrets", 3);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    cluster.kill9(2);
    let other_key = cluster.root.join("other_platform.key");
    let other_key = other_key.to_str().unwrap().to_owned();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: [Case; 3] = [
        // No master key given: the node makes one for its empty copy, which is not the cluster's.
        ("master_key", vec![], vec!["CUSTODIAN_MASTER_KEY"]),
        (
            "platform_key",
            vec![("CUSTODIAN_PLATFORM_KEY_FILE", other_key.as_str())],
            vec![],
        ),
        (
            "admin_token",
            vec![("CUSTODIAN_ADMIN_TOKEN", "not-the-clusters-token")],
            vec![],
        ),
    ];
    for (name, set, unset) in cases {
        let _ = std::fs::remove_dir_all(cluster.root.join("n3"));
        let before = cluster.node_log(2).len();
        cluster.start_with(2, &set, &unset);
        let started = Instant::now();
        let status = loop {
            assert!(
                cluster.healthz(2).await.is_none(),
                "n3 with another {name} answered /healthz"
            );
            if let Some(s) = cluster.wait_exit(2, Duration::from_millis(200)).await {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "n3 with another {name} is still running after 60 s"
            );
        };
        assert!(!status.success(), "n3 with another {name} exited {status}");
        let log = cluster.node_log(2)[before..].to_owned();
        assert!(
            log.contains("secret_mismatch") && log.contains(name),
            "n3 with another {name} said: {log}"
        );
    }
    // With the cluster's secrets it joins.
    let _ = std::fs::remove_dir_all(cluster.root.join("n3"));
    cluster.start(2);
    cluster.wait_ready(2).await;
    cluster.wait_owned(Duration::from_secs(30)).await;
}

//! One node cut off from NATS (its only link goes through a proxy that stops forwarding, holding what was
//! in flight) under a loaded three-node cluster, then healed: it fences itself and answers 503 at once, the
//! others take its shards, the bytes it had sent arrive after the heal and its stale appends are fenced;
//! it rejoins and takes shards again. Nothing acknowledged is lost or stored twice.

use std::time::{Duration, Instant};

use custodian_tests::cluster::{Cluster, Load, Proxy, check_acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_is_fenced_and_rejoins_when_healed() {
    let link = Proxy::start("127.0.0.1:4303").await;
    let cluster = Cluster::custom(
        "part",
        3,
        Vec::new(),
        vec![
            custodian_tests::NATS_CLUSTER.into(),
            custodian_tests::NATS_CLUSTER.into(),
            link.url.clone(),
        ],
    );
    let ts = cluster.ready_with_terminals(9).await;
    let load = Load::start(cluster.first_urls(3), ts);
    // Let shards settle onto n3 too (rebalancing after the alive set is stable).
    cluster.wait_owns_some(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let owned_before = cluster.healthz(2).await.unwrap()["cluster"]["owned_shards"]
        .as_array()
        .unwrap()
        .len();

    link.cut(true);
    let at = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // n3 still answers HTTP, fenced: it owns nothing and refuses appends at once.
    let h = cluster.healthz(2).await.unwrap();
    assert_eq!(h["cluster"]["fenced"], true, "{h}");
    assert!(
        h["cluster"]["owned_shards"].as_array().unwrap().is_empty(),
        "{h}"
    );
    let outage = load.outage_after(at);
    eprintln!(
        "n3 cut off with {owned_before} shards: fenced, shards taken over; the longest any terminal waited: {outage:?}"
    );

    link.cut(false);
    let healed = Instant::now();
    let back = loop {
        let h = cluster.healthz(2).await.unwrap();
        if h["cluster"]["fenced"] == false
            && !h["cluster"]["owned_shards"].as_array().unwrap().is_empty()
        {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "n3 did not rejoin: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("healed: n3 owns shards again after {back:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acks = load.stop().await;
    cluster.wait_owned(Duration::from_secs(30)).await;
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    eprintln!("{n} acknowledged readings, all stored exactly once");
    assert!(
        outage < Duration::from_secs(15),
        "a terminal waited {outage:?}"
    );
    for i in 0..3 {
        let h = cluster.healthz(i).await.unwrap();
        assert_eq!(h["cluster"]["epoch_regressions"], 0, "{h}");
    }
}

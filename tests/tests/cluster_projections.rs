//! The PostgreSQL read model in cluster mode: it runs under a lease (the ownership of shard 0), on one node
//! at a time, the others standing by; when the holder is killed another node takes the lease and goes on
//! from the model's checkpoint, and every reading is counted exactly once. Then a regulator's token issued
//! by one node is good on every node, every node answers its queries, and a revocation made on one node
//! holds on the others.

use std::time::{Duration, Instant};

use custodian_tests::ReadModels;
use custodian_tests::cluster::{Cluster, Load, check_acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_model_runs_under_a_lease_and_counts_every_reading_once() {
    let models = ReadModels::new("cluster");
    let env = vec![
        (
            "CUSTODIAN_PROJECTIONS__POSTGRES_ENABLED".into(),
            "true".into(),
        ),
        (
            "CUSTODIAN_PROJECTIONS__POSTGRES_URL".into(),
            models.postgres_url(),
        ),
        (
            "CUSTODIAN_PROJECTIONS__BACKOFF_MAX_MS".into(),
            "1000".into(),
        ),
    ];
    let mut cluster = Cluster::with_env("proj", 3, env);
    let ts = cluster.ready_with_terminals(9).await;
    let load = Load::start(cluster.first_urls(3), ts);
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Exactly one node runs the model; the others stand by.
    let before = postgres_states(&cluster).await;
    let holders: Vec<usize> = before
        .iter()
        .filter(|(_, s)| s != "standby")
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(holders.len(), 1, "postgres runs on one node: {before:?}");
    let holder = holders[0];
    let owned0 = cluster.healthz(holder).await.unwrap()["cluster"]["owned_shards"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(0));
    assert!(owned0, "the holder owns shard 0");

    // Kill it: another node takes the lease and goes on.
    cluster.kill9(holder);
    let at = Instant::now();
    let taken = loop {
        let now = postgres_states(&cluster).await;
        if now.iter().any(|(_, s)| s != "standby") {
            break at.elapsed();
        }
        assert!(
            at.elapsed() < Duration::from_secs(20),
            "nobody took the lease: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("the postgres lease moved {taken:?} after its holder was killed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = load.stop().await;
    let log = cluster.logs_agree().await;
    check_acked(&log, &acks);
    let last = log.len() as u64;
    // The model reaches the head of the log on the new holder.
    let started = Instant::now();
    loop {
        let mut at_head = false;
        for i in cluster.running() {
            let p = cluster.client(i).projections().await.unwrap();
            at_head |= p["projections"].as_array().unwrap().iter().any(|x| {
                x["name"] == "postgres" && x["state"] == "running" && x["checkpoint"] == last
            });
        }
        if at_head {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the model did not reach {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every terminal's reading count equals the log's: nothing projected twice across the hand-over.
    let mut want: std::collections::BTreeMap<String, i64> = Default::default();
    for e in &log {
        if e["type"] == "ReadingRecorded" {
            *want
                .entry(e["payload"]["terminal_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let pool = models.pool().await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, readings::bigint FROM custodian_g1.terminals ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let got: std::collections::BTreeMap<String, i64> = rows.into_iter().collect();
    assert_eq!(
        got, want,
        "readings per terminal: the model against the log"
    );
    pool.close().await;

    // Any node answers a regulator's query, with a token any node issued; a revocation made on one node
    // holds on every node.
    let nodes = cluster.running();
    let (status, v) = cluster
        .client(nodes[0])
        .post_admin("/v1/admin/tokens", &serde_json::json!({"tier": "national"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    for &i in &nodes {
        let regulator =
            custodian_tools::client::NodeClient::new(cluster.url(i), Some(token.clone()));
        let e = regulator.get_admin("/v1/enterprises").await.unwrap();
        assert_eq!(e["items"][0]["id"], "E-0", "node {i}: {e}");
        regulator.get_admin("/v1/anomalies").await.unwrap();
    }
    let (status, v) = cluster
        .client(nodes[0])
        .post_admin(
            &format!("/v1/admin/tokens/{id}/revoke"),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert!(status == 200 || status == 204, "revoking: {status} {v}");
    let other = custodian_tools::client::NodeClient::new(cluster.url(nodes[1]), Some(token));
    let started = Instant::now();
    loop {
        match other.get_admin("/v1/enterprises").await {
            Err(custodian_tools::client::ClientError::Status { status: 401, .. }) => break,
            r => assert!(
                started.elapsed() < Duration::from_secs(10),
                "the revocation did not reach the other node: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(cluster);
    models.drop_all().await;
}

/// (node, state of its postgres projection) for each running node.
async fn postgres_states(c: &Cluster) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for i in c.running() {
        let p = c.client(i).projections().await.unwrap();
        let pg = p["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "postgres")
            .cloned()
            .unwrap();
        out.push((i, pg["state"].as_str().unwrap().to_owned()));
    }
    out
}

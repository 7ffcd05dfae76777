//! A NATS server of the three dies under a loaded three-node Custodian cluster and comes back: JetStream
//! elects new leaders, the nodes reconnect to the survivors, uploads stall and are acknowledged again, and
//! nothing acknowledged is lost or stored twice. The stall is printed. Its own test binary: it stops a
//! server that the other cluster tests share.

use std::process::Command;
use std::time::{Duration, Instant};

use custodian_tests::cluster::{Cluster, Load, check_acked};

fn services(args: &[&str]) -> bool {
    Command::new(custodian_tests::workspace_root().join("scripts/services"))
        .args(args)
        .status()
        .expect("running scripts/services")
        .success()
}

/// Which NATS server leads `stream`, from the servers' monitoring endpoints (`/jsz`).
async fn stream_leader(stream: &str) -> Option<String> {
    for port in [8301, 8302, 8303] {
        let url = format!("http://127.0.0.1:{port}/jsz?accounts=true&streams=true");
        let Ok(resp) = reqwest::get(&url).await else {
            continue;
        };
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            continue;
        };
        for a in v["account_details"].as_array().into_iter().flatten() {
            for st in a["stream_detail"].as_array().into_iter().flatten() {
                if st["name"] == stream
                    && let Some(l) = st["cluster"]["leader"].as_str()
                {
                    return Some(l.to_owned());
                }
            }
        }
    }
    None
}

/// Starts NATS server `n` again however the test ends.
struct Restart(String);

impl Drop for Restart {
    fn drop(&mut self) {
        if !services(&["nats-cluster", "start", &self.0]) {
            eprintln!(
                "could not start NATS server n{} again: run scripts/services nats-cluster up",
                self.0
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_dies_and_comes_back_under_load_and_nothing_is_lost() {
    let cluster = Cluster::new("natsdown", 3);
    let ts = cluster.ready_with_terminals(9).await;
    let load = Load::start(cluster.first_urls(3), ts);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The worst case: the server leading the log stream dies (servers are n1..n3).
    let stream = format!("{}_LOG", cluster.name.to_uppercase());
    let found = stream_leader(&stream).await;
    eprintln!("the stream {stream} is led by {found:?}");
    let leader = found.unwrap_or_else(|| "n1".into());
    let n = leader.trim_start_matches('n').to_owned();
    let at = Instant::now();
    assert!(
        services(&["nats-cluster", "kill", &n]),
        "scripts/services nats-cluster kill {n}"
    );
    let restart = Restart(n);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let stall = load.outage_after(at);
    let acked_while_down = load.acked_since(at);
    eprintln!(
        "NATS server {leader} (the log stream's leader) killed: the longest any terminal waited for an ack: {stall:?}; {acked_while_down} uploads acknowledged in the 12 s after"
    );
    let back = Instant::now();
    drop(restart);
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!(
        "{leader} started again; the longest wait after: {:?}",
        load.outage_after(back)
    );
    let acks = load.stop().await;
    cluster.wait_owned(Duration::from_secs(30)).await;
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    eprintln!(
        "{n} acknowledged readings, all stored exactly once; {} failed tries resent",
        acks.failures
    );
    assert!(
        acked_while_down > 0,
        "nothing was acknowledged with {leader} down"
    );
    assert!(stall < Duration::from_secs(30), "uploads stalled {stall:?}");
}

//! A node's copy of the log belongs to one incarnation of the cluster's stream: started on a stream made
//! anew under the same name (deleted and created again, another cluster of the same name), the node
//! refuses to start instead of filing the new stream after the old records, where every event would
//! stand at another sequence than on the other nodes — acknowledgements naming other events than every
//! other node's duplicate answers. Restarted on its own stream, it carries on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custodian_cluster::node::{ClusterNode, ClusterSettings};
use custodian_events::Clock;
use custodian_log::{AppendOutcome, EventLog, SledLogConfig, contract};
use custodian_simulations::net::{NetConfig, SimNet};

struct WallClock;

impl Clock for WallClock {
    fn now_ns(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i64
    }
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        urls: String::new(),
        node_id: "n1".into(),
        name: "sim".into(),
        replicas: 1,
        secrets: Default::default(),
    }
}

/// Joins `net` on the copy in `dir`, retrying while sled still holds the previous life's lock.
async fn join(net: &Arc<SimNet>, dir: &std::path::Path) -> Result<ClusterNode, String> {
    let started = Instant::now();
    loop {
        match ClusterNode::join_on(
            net.connect("n1"),
            &settings(),
            SledLogConfig::new(dir),
            Arc::new(WallClock),
            None,
        )
        .await
        {
            Err(e) if e.contains("lock") && started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn append_when_owned(node: &ClusterNode, seq: u64) -> u64 {
    let started = Instant::now();
    loop {
        match node
            .log
            .append(vec![contract::reading("T-1", seq, 7)])
            .await
        {
            Ok(o) => match o[0] {
                AppendOutcome::Appended { seq } | AppendOutcome::Duplicate { seq } => return seq,
                other => panic!("{other:?}"),
            },
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no append within 30 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_filed_from_another_stream_refuses_to_start() {
    let quiet = NetConfig {
        p_ack_lost: 0.0,
        p_message_lost: 0.0,
        ..NetConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let first = SimNet::new(1, quiet);
    let node = join(&first, dir.path()).await.expect("the first start");
    let seq = append_when_owned(&node, 1).await;
    drop(node);

    // The same name, a stream made anew: the copy's records are not this stream's.
    let second = SimNet::new(2, quiet);
    let err = match join(&second, dir.path()).await {
        Ok(_) => panic!("a node started on a copy filed from another stream"),
        Err(e) => e,
    };
    assert!(err.contains("stream_mismatch"), "{err}");
    assert!(err.contains(&dir.path().display().to_string()), "{err}");

    // Back on its own stream it carries on: the reading is where it was acknowledged.
    let node = join(&first, dir.path())
        .await
        .expect("a restart on its own stream");
    assert_eq!(append_when_owned(&node, 1).await, seq);
}

//! The event log in cluster mode on the three-node JetStream cluster (`scripts/services nats-cluster up`):
//! it keeps the whole `EventLog` contract; two nodes' copies of one stream are byte for byte the same; a
//! node that does not own a shard hands its appends to the owner and reads them back at once; and after a failover the new owner answers the old
//! owner's acknowledged readings as duplicates at their first sequences — dedupe without a time window —
//! while the old owner's late append is fenced and stores nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use custodian_cluster::cluster_log::{ClusterLog, ClusterLogConfig};
use custodian_cluster::coordinator::Held;
use custodian_cluster::ownership::{Shards, ShardsConfig};
use custodian_cluster::placement::SHARDS;
use custodian_events::Clock;
use custodian_events::keyring::Keyring;
use custodian_log::contract::{self, LogFactory};
use custodian_log::{AppendOutcome, EventLog, EventLogError, SledLogConfig};
use custodian_tests::shards_config;

struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_ns(&self) -> i64 {
        self.0
    }
}

/// A node of the test: its cluster log and the shards it holds.
struct Node {
    log: Arc<ClusterLog>,
    held: Arc<Mutex<Held>>,
    shards: Shards,
}

async fn open_node(
    name: &str,
    config: &ShardsConfig,
    dir: &std::path::Path,
    keyring: Option<Arc<Keyring>>,
) -> Node {
    let shards = Shards::open(custodian_tests::nats_cluster().await, config)
        .await
        .expect("opening the owner bucket and the log stream");
    let held = Arc::new(Mutex::new(Held::default()));
    let log = ClusterLog::open(
        ClusterLogConfig::new(SledLogConfig::new(dir)),
        name,
        shards.clone(),
        held.clone(),
        Arc::new(FixedClock(1_700_000_000_000_000_000)),
        keyring,
    )
    .await
    .expect("opening the cluster log");
    Node { log, held, shards }
}

/// `node` claims every shard from whoever holds it (as the coordinator does from a dead owner).
async fn claim_all(node: &Node, name: &str) {
    let mut claims = Vec::new();
    for shard in 0..SHARDS {
        let shards = node.shards.clone();
        let name = name.to_owned();
        claims.push(tokio::spawn(async move {
            let seen = shards.owner(shard).await.unwrap().map(|(_, epoch)| epoch);
            shards.claim(shard, &name, seen).await.unwrap()
        }));
    }
    for c in claims {
        let owned = c.await.unwrap();
        node.held.lock().unwrap().owned.insert(owned.shard, owned);
    }
}

/// Fresh logs for the contract: each on its own stream and bucket, owning every shard.
struct ClusterFactory {
    dirs: Mutex<Vec<tempfile::TempDir>>,
    /// Per log (by its address): its config and dir, for reopening.
    opened: Mutex<BTreeMap<usize, (ShardsConfig, std::path::PathBuf)>>,
    configs: Mutex<Vec<ShardsConfig>>,
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

impl ClusterFactory {
    fn new() -> Self {
        ClusterFactory {
            dirs: Mutex::new(Vec::new()),
            opened: Mutex::new(BTreeMap::new()),
            configs: Mutex::new(Vec::new()),
        }
    }

    fn open_at(
        &self,
        config: ShardsConfig,
        path: std::path::PathBuf,
        keyring: Option<Arc<Keyring>>,
    ) -> Arc<ClusterLog> {
        let node = block_on(async {
            let node = open_node("node-a", &config, &path, keyring).await;
            claim_all(&node, "node-a").await;
            node
        });
        self.opened
            .lock()
            .unwrap()
            .insert(Arc::as_ptr(&node.log) as usize, (config, path));
        node.log
    }

    async fn clean_up(&self) {
        let configs = std::mem::take(&mut *self.configs.lock().unwrap());
        for c in configs {
            let shards = Shards::open(custodian_tests::nats_cluster().await, &c)
                .await
                .unwrap();
            shards.delete(&c).await.unwrap();
        }
    }
}

impl LogFactory for ClusterFactory {
    type Log = ClusterLog;

    fn open(&self, keyring: Option<Arc<Keyring>>) -> Arc<ClusterLog> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        self.dirs.lock().unwrap().push(dir);
        let config = shards_config("contract");
        self.configs.lock().unwrap().push(config.clone());
        self.open_at(config, path, keyring)
    }

    fn can_reopen(&self) -> bool {
        true
    }

    fn filing_order(&self, batch: &[custodian_log::Proposed]) -> Vec<usize> {
        let mut shards: Vec<u16> = Vec::new();
        for p in batch {
            let s = ClusterLog::shard_of_stream(&p.event.stream());
            if !shards.contains(&s) {
                shards.push(s);
            }
        }
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| {
            let s = ClusterLog::shard_of_stream(&batch[i].event.stream());
            shards.iter().position(|x| *x == s).unwrap()
        });
        order
    }

    fn reopen(&self, log: Arc<ClusterLog>, keyring: Option<Arc<Keyring>>) -> Arc<ClusterLog> {
        let (config, path) = self
            .opened
            .lock()
            .unwrap()
            .remove(&(Arc::as_ptr(&log) as usize))
            .expect("a log this factory opened");
        drop(log);
        self.open_at(config, path, keyring)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_log_keeps_the_event_log_contract() {
    let f = ClusterFactory::new();
    contract::check_all(&f).await;
    f.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_agree_only_owners_append_and_dedupe_survives_failover() {
    let config = shards_config("failover");
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = open_node("node-a", &config, dir_a.path(), None).await;
    let b = open_node("node-b", &config, dir_b.path(), None).await;
    claim_all(&a, "node-a").await;

    // node-a appends 40 terminals' readings, a batch per terminal, several terminals at once.
    let mut acked: Vec<(String, u64, u64)> = Vec::new();
    for round in 0..5u64 {
        let mut batch = Vec::new();
        for t in 0..40 {
            for s in 0..3 {
                batch.push(contract::reading(
                    &format!("T-{t}"),
                    round * 3 + s,
                    100 + t as i64,
                ));
            }
        }
        let keys: Vec<(String, u64)> = batch
            .iter()
            .map(|p| {
                let custodian_events::event::Event::ReadingRecorded(r) = &p.event else {
                    unreachable!()
                };
                (r.terminal_id.as_str().to_owned(), r.seq)
            })
            .collect();
        let out = a.log.append(batch).await.unwrap();
        for ((t, s), o) in keys.into_iter().zip(out) {
            let AppendOutcome::Appended { seq } = o else {
                panic!("{o:?}")
            };
            acked.push((t, s, seq));
        }
    }
    assert_eq!(a.log.last_seq(), 600);

    // node-b owns nothing: its append goes to node-a, and node-b reads it as soon as it is answered.
    let forwarded = b
        .log
        .append(vec![
            contract::reading("T-0", 99, 1),
            contract::reading("T-0", 0, 100),
        ])
        .await
        .unwrap();
    assert_eq!(
        forwarded,
        vec![
            AppendOutcome::Appended { seq: 601 },
            AppendOutcome::Duplicate { seq: acked[0].2 }
        ]
    );
    assert_eq!(b.log.read(601, 1).unwrap()[0].seq, 601);

    // node-b's copy is node-a's, byte for byte.
    let stream_last = a.log.applied();
    assert!(
        b.log
            .caught_up_to(stream_last, Duration::from_secs(20))
            .await,
        "node-b's copy did not catch up"
    );
    let raw_a = a.log.read_raw(1, usize::MAX).unwrap();
    let raw_b = b.log.read_raw(1, usize::MAX).unwrap();
    assert_eq!(raw_a.len(), 601);
    assert!(raw_a == raw_b, "the two copies differ");
    assert!(b.log.verify(&mut |_, _| {}).unwrap().is_ok());

    // node-a is declared dead: node-b takes every shard over. node-a's readings resent to node-b are
    // duplicates at their first sequences.
    claim_all(&b, "node-b").await;
    let resend: Vec<_> = acked
        .iter()
        .map(|(t, s, _)| contract::reading(t, *s, 100 + t[2..].parse::<i64>().unwrap()))
        .collect();
    let out = b.log.append(resend).await.unwrap();
    for ((t, s, seq), o) in acked.iter().zip(out) {
        assert_eq!(
            o,
            AppendOutcome::Duplicate { seq: *seq },
            "{t} reading {s} after the failover"
        );
    }
    // Different content under an acknowledged identity is a conflict with evidence, stored once.
    let c1 = b
        .log
        .append(vec![contract::reading("T-3", 0, 7)])
        .await
        .unwrap();
    let c2 = b
        .log
        .append(vec![contract::reading("T-3", 0, 7)])
        .await
        .unwrap();
    assert_eq!(c1, c2, "a resent conflict names the same evidence");
    assert!(matches!(
        c1[0],
        AppendOutcome::Conflict {
            evidence_seq: Some(602),
            ..
        }
    ));

    // node-a wakes up still believing it owns the shards: its append is fenced and stores nothing.
    let late = a.log.append(vec![contract::reading("T-0", 50, 1)]).await;
    assert!(
        matches!(late, Err(EventLogError::Unavailable(ref m)) if m.contains("newer owner")),
        "{late:?}"
    );
    let new = b
        .log
        .append(vec![contract::reading("T-0", 50, 2)])
        .await
        .unwrap();
    assert_eq!(new, vec![AppendOutcome::Appended { seq: 603 }]);
    assert!(
        a.log
            .caught_up_to(b.log.applied(), Duration::from_secs(20))
            .await
    );
    assert_eq!(a.log.last_seq(), 603);
    assert!(a.log.read_raw(1, usize::MAX).unwrap() == b.log.read_raw(1, usize::MAX).unwrap());
    // Epochs only grew on every shard, as both copies saw them.
    assert!(a.log.epoch_regressions().is_empty());
    assert!(b.log.epoch_regressions().is_empty());
    assert_eq!(a.log.epochs(), b.log.epochs());
    assert_eq!(a.log.epochs().len(), SHARDS as usize);

    drop(a);
    b.shards.clone().delete(&config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_deleted_and_recreated_stream_refuses_to_open() {
    // The stream deleted and made again under the same name (or another cluster of the same name): a
    // copy filed from the old one would file the new stream after its old records, every event at
    // another sequence than on the nodes that start afresh. On real JetStream, where a stream's identity
    // is its name and creation time.
    let config = shards_config("stale");
    let dir = tempfile::tempdir().unwrap();
    let node = open_node("node-a", &config, dir.path(), None).await;
    claim_all(&node, "node-a").await;
    let acked = node
        .log
        .append(vec![contract::reading("T-1", 1, 5)])
        .await
        .unwrap();
    let shards = node.shards.clone();
    drop(node);
    shards.delete(&config).await.unwrap();
    // The same names, a new stream.
    let shards = Shards::open(custodian_tests::nats_cluster().await, &config)
        .await
        .unwrap();
    let refused = ClusterLog::open(
        ClusterLogConfig::new(SledLogConfig::new(dir.path())),
        "node-a",
        shards.clone(),
        Arc::new(Mutex::new(Held::default())),
        Arc::new(FixedClock(1_700_000_000_000_000_000)),
        None,
    )
    .await;
    match refused {
        Err(EventLogError::Mismatch(m)) => assert!(m.contains("stream_mismatch"), "{m}"),
        Err(other) => panic!("expected stream_mismatch, got {other}"),
        Ok(_) => {
            panic!("the copy of a deleted stream opened on its successor (acknowledged {acked:?})")
        }
    }
    shards.delete(&config).await.unwrap();
}

//! Three `custodian serve --cluster` processes on the three-server JetStream cluster
//! (`scripts/services nats-cluster up`), with terminals uploading through whichever node answers:
//! - any node takes any upload and every node's copy of the log is the same;
//! - `kill -9` of a node every few seconds, and its restart: no acknowledged reading lost, none stored
//!   twice; the time each kill kept some terminal from being acknowledged is printed;
//! - SIGSTOP of a node: its shards move, and when it is resumed its late appends are fenced;
//! - a graceful stop hands the node's shards off, and a rolling restart loses and doubles nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custodian_node::client::NodeClient;
use custodian_node::terminal_sim::{SimTerminal, enterprise_body, now_rfc3339};
use custodian_tests::{ADMIN_TOKEN, NATS_CLUSTER, check_log, custodian_bin, free_port};
use serde_json::Value;

/// One node process of the test cluster.
struct ClusterNode {
    id: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// What the nodes of one test share.
struct Cluster {
    name: String,
    master_key: String,
    platform_key: PathBuf,
    /// The nodes' data dirs and logs; kept when the test fails.
    root: PathBuf,
    nodes: Vec<ClusterNode>,
}

impl Cluster {
    fn new(tag: &str, n: usize) -> Cluster {
        let name = format!(
            "t{}_{}_{}",
            tag,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let root = std::env::temp_dir().join(format!("custodian-cluster-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        let platform_key = root.join("platform_signing.key");
        let mut c = Cluster {
            name,
            master_key: custodian_node::server::fresh_master_key_hex(),
            platform_key,
            nodes: Vec::new(),
            root,
        };
        for i in 0..n {
            let id = format!("n{}", i + 1);
            let dir = c.root.join(&id);
            c.nodes.push(ClusterNode {
                id,
                dir,
                port: free_port(),
                child: None,
            });
        }
        for i in 0..n {
            c.start(i);
        }
        c
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn client(&self, i: usize) -> NodeClient {
        NodeClient::new(self.url(i), Some(ADMIN_TOKEN.into()))
    }

    fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{}.log", self.nodes[i].id)))
            .unwrap();
        let n = &self.nodes[i];
        let child = Command::new(custodian_bin())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", n.port),
                "--cluster",
                NATS_CLUSTER,
                "--node-id",
                &n.id,
                "--data-dir",
            ])
            .arg(&n.dir)
            .env("CUSTODIAN_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("CUSTODIAN_MASTER_KEY", &self.master_key)
            .env("CUSTODIAN_PLATFORM_KEY_FILE", &self.platform_key)
            .env("CUSTODIAN_CLUSTER__NAME", &self.name)
            .env("CUSTODIAN_DERIVE__TICK_INTERVAL_S", "0")
            .env("CUSTODIAN_PROJECTIONS__POSTGRES_ENABLED", "false")
            .env("CUSTODIAN_PROJECTIONS__INFLUX_ENABLED", "false")
            .env("CUSTODIAN_PROJECTIONS__SEARCH_ENABLED", "false")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning custodian serve --cluster");
        self.nodes[i].child = Some(child);
    }

    /// Waits for node `i` to answer: it answers once it has joined (which takes long on a busy machine).
    async fn wait_ready(&self, i: usize) {
        self.client(i)
            .wait_ready(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{} not ready: {e:#}", self.nodes[i].id));
    }

    fn signal(&mut self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait: the graceful stop.
    fn stop(&mut self, i: usize) {
        self.signal(i, "-TERM");
        let mut child = self.nodes[i].child.take().expect("running");
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{} stopped with {status}",
            self.nodes[i].id
        );
    }

    async fn healthz(&self, i: usize) -> Option<Value> {
        self.client(i).healthz().await.ok()
    }

    /// Waits until every running node answers and every shard has an owner among them; returns how long.
    async fn wait_owned(&self, within: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let mut owned = std::collections::BTreeSet::new();
            let mut all_up = true;
            for (i, n) in self.nodes.iter().enumerate() {
                if n.child.is_none() {
                    continue;
                }
                match self.healthz(i).await {
                    Some(h) => {
                        for s in h["cluster"]["owned_shards"]
                            .as_array()
                            .into_iter()
                            .flatten()
                        {
                            owned.insert(s.as_u64().unwrap());
                        }
                    }
                    None => all_up = false,
                }
            }
            if all_up && owned.len() == 64 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "shards owned: {} of 64 after {within:?}; node logs in {}",
                owned.len(),
                self.root.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    /// Every node's whole log, once they all agree on its length.
    async fn logs_agree(&self) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let mut logs = Vec::new();
            for i in self.running() {
                logs.push(self.client(i).all_events(1).await.unwrap());
            }
            let lens: Vec<usize> = logs.iter().map(Vec::len).collect();
            if lens.iter().all(|l| *l == lens[0]) {
                for l in &logs[1..] {
                    assert!(l == &logs[0], "two nodes' logs differ");
                }
                return logs.swap_remove(0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the nodes' logs have lengths {lens:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = Command::new("kill")
                    .args(["-CONT", &c.id().to_string()])
                    .status();
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "the nodes' data dirs and logs are kept in {}",
                self.root.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

async fn register(cluster: &Cluster, terminals: &[SimTerminal]) {
    let c = cluster.client(0);
    c.register("/v1/enterprises", &enterprise_body(0))
        .await
        .expect("registering E-0");
    for t in terminals {
        c.register("/v1/terminals", &t.registration(0))
            .await
            .expect("registering a terminal");
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Acks {
    /// Terminal → reading seqs acknowledged (accepted or duplicate).
    acked: BTreeMap<String, Vec<u64>>,
    /// When each acknowledgement came, per terminal.
    times: BTreeMap<String, Vec<Instant>>,
    failures: u64,
}

/// Terminals uploading 5 readings at a time through the nodes in turn; a failed upload is sent again,
/// the same bytes, to the next node, until it is acknowledged.
fn load(
    cluster_urls: Vec<String>,
    terminals: Vec<SimTerminal>,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    terminals
        .into_iter()
        .enumerate()
        .map(|(k, mut t)| {
            let urls = cluster_urls.clone();
            let stop = stop.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                let clients: Vec<NodeClient> = urls
                    .iter()
                    .map(|u| NodeClient::new(u.clone(), None))
                    .collect();
                let mut next = k;
                while !stop.load(Ordering::Relaxed) {
                    let (body, seqs) = t.next_body(5, &now_rfc3339());
                    let sig = t.sign(&body);
                    loop {
                        let c = &clients[next % clients.len()];
                        next += 1;
                        match tokio::time::timeout(
                            Duration::from_secs(15),
                            c.upload(body.clone(), Some(&sig)),
                        )
                        .await
                        {
                            Ok(Ok(r)) => {
                                assert_eq!(r.results.len(), seqs.len());
                                for res in &r.results {
                                    let v = serde_json::to_value(res).unwrap();
                                    assert!(
                                        v["status"] == "accepted" || v["status"] == "duplicate",
                                        "{v}"
                                    );
                                }
                                let mut a = acks.lock().unwrap();
                                a.acked
                                    .entry(r.terminal_id.clone())
                                    .or_default()
                                    .extend(&seqs);
                                a.times
                                    .entry(r.terminal_id)
                                    .or_default()
                                    .push(Instant::now());
                                break;
                            }
                            _ => {
                                acks.lock().unwrap().failures += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect()
}

/// Every acknowledged reading is in the log exactly once.
fn check_acked(log: &[Value], acks: &Acks) -> usize {
    let stored = check_log(log);
    let mut n = 0;
    for (t, seqs) in &acks.acked {
        for s in seqs {
            assert!(
                stored.contains_key(&(t.clone(), *s)),
                "{t} reading {s} was acknowledged but is not in the log"
            );
            n += 1;
        }
    }
    n
}

/// For each event time, the longest any terminal waited after it for its next acknowledgement.
fn outage_after(acks: &Acks, at: Instant) -> Duration {
    acks.times
        .values()
        .filter_map(|ts| ts.iter().find(|t| **t > at).map(|t| *t - at))
        .max()
        .unwrap_or_default()
}

fn terminals(n: usize) -> Vec<SimTerminal> {
    (0..n)
        .map(|i| SimTerminal::new(format!("T-{i}"), 100 + i as u64))
        .collect()
}

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
                .upload(body, Some(&sig))
                .await
                .unwrap();
            for res in &r.results {
                assert_eq!(serde_json::to_value(res).unwrap()["status"], "accepted");
            }
            acks.acked.entry(r.terminal_id).or_default().extend(seqs);
        }
    }
    let log = cluster.logs_agree().await;
    assert_eq!(check_acked(&log, &acks), 12 * 3 * 4);
    let _ = Path::new("");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_every_few_seconds_loses_and_doubles_nothing() {
    let rounds: usize = std::env::var("CUSTODIAN_CLUSTER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut cluster = Cluster::new("kill", 3);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    cluster.wait_owned(Duration::from_secs(30)).await;
    let ts = terminals(12);
    register(&cluster, &ts).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let load = load(urls, ts, stop.clone(), acks.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut kills = Vec::new();
    for round in 0..rounds {
        let victim = round % 3;
        let at = Instant::now();
        cluster.kill9(victim);
        let owned = cluster.wait_owned(Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let outage = outage_after(&acks.lock().unwrap(), at);
        eprintln!(
            "kill {round}: n{} killed; survivors own its shards after {owned:?}; the longest any terminal waited for an ack: {outage:?}",
            victim + 1
        );
        kills.push((owned, outage));
        cluster.start(victim);
        cluster.wait_ready(victim).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    eprintln!(
        "{n} acknowledged readings, all stored exactly once; {} failed tries resent; {rounds} kills",
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
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    cluster.wait_owned(Duration::from_secs(30)).await;
    let ts = terminals(9);
    register(&cluster, &ts).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    // The load goes through n1 and n2 only: n3 is paused and resumed under it.
    let urls: Vec<String> = (0..2).map(|i| cluster.url(i)).collect();
    let load = load(urls, ts, stop.clone(), acks.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
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
        outage_after(&acks.lock().unwrap(), paused)
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
            outage_after(&acks.lock().unwrap(), at)
        );
        cluster.start(i);
        cluster.wait_ready(i).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let log = cluster.logs_agree().await;
    let n = check_acked(&log, &acks);
    eprintln!("{n} acknowledged readings, all stored exactly once");
    // No shard's history has two owners interleaved: the epochs every node saw only grew.
    for i in 0..3 {
        let h = cluster.healthz(i).await.unwrap();
        assert_eq!(h["cluster"]["epoch_regressions"], 0, "{h}");
    }
}

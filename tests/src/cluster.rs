//! Clusters of `custodian serve --cluster` processes on the three-server JetStream cluster, terminals
//! uploading through them, and the checks the cluster tests share (`tests/tests/cluster_*.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{SimTerminal, enterprise_body, now_rfc3339};
use serde_json::Value;

use crate::{ADMIN_TOKEN, NATS_CLUSTER, check_log, custodian_bin, free_port};

/// One node process of the test cluster.
pub struct ClusterNode {
    /// The NATS servers this node is told (the cluster's, or a proxy in front of them).
    pub nats: String,
    id: String,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// What the nodes of one test share.
pub struct Cluster {
    pub name: String,
    master_key: String,
    platform_key: PathBuf,
    /// The nodes' data dirs and logs; kept when the test fails.
    pub root: PathBuf,
    env: Vec<(String, String)>,
    pub nodes: Vec<ClusterNode>,
}

impl Cluster {
    pub fn new(tag: &str, n: usize) -> Cluster {
        Cluster::with_env(tag, n, Vec::new())
    }

    /// The same, every node started with `env` too (it overrides the defaults below).
    pub fn with_env(tag: &str, n: usize, env: Vec<(String, String)>) -> Cluster {
        Cluster::custom(tag, n, env, Vec::new())
    }

    /// The same, node `i` told the NATS servers `nats[i]` (the cluster's when absent).
    pub fn custom(tag: &str, n: usize, env: Vec<(String, String)>, nats: Vec<String>) -> Cluster {
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
            env,
        };
        for i in 0..n {
            let id = format!("n{}", i + 1);
            let dir = c.root.join(&id);
            c.nodes.push(ClusterNode {
                nats: nats
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| NATS_CLUSTER.to_owned()),
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

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn client(&self, i: usize) -> NodeClient {
        NodeClient::new(self.url(i), Some(ADMIN_TOKEN.into()))
    }

    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[], &[]);
    }

    /// Starts node `i` with `set` added to its environment and `unset` taken out of it (a node whose
    /// secrets are not the cluster's, say).
    pub fn start_with(&mut self, i: usize, set: &[(&str, &str)], unset: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(format!("{}.log", self.nodes[i].id)))
            .unwrap();
        let n = &self.nodes[i];
        let mut command = Command::new(custodian_bin());
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", n.port),
                "--cluster",
                &n.nats,
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
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(set.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        for k in unset {
            command.env_remove(k);
        }
        let child = command.spawn().expect("spawning custodian serve --cluster");
        self.nodes[i].child = Some(child);
    }

    /// Waits up to `within` for node `i`'s process to end on its own; its exit status, if it did.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            let child = self.nodes[i].child.as_mut().expect("started");
            if let Some(status) = child.try_wait().unwrap() {
                self.nodes[i].child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// What node `i` wrote to its log so far.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.root.join(format!("{}.log", self.nodes[i].id)))
            .unwrap_or_default()
    }

    /// Waits for node `i` to answer: it answers once it has joined (which takes long on a busy machine).
    pub async fn wait_ready(&self, i: usize) {
        self.client(i)
            .wait_ready(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{} not ready: {e:#}", self.nodes[i].id));
    }

    pub fn signal(&mut self, i: usize, sig: &str) {
        let pid = self.nodes[i].child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }

    pub fn kill9(&mut self, i: usize) {
        let mut child = self.nodes[i].child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait: the graceful stop.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, "-TERM");
        let mut child = self.nodes[i].child.take().expect("running");
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "{} stopped with {status}",
            self.nodes[i].id
        );
    }

    pub async fn healthz(&self, i: usize) -> Option<Value> {
        self.client(i).healthz().await.ok()
    }

    /// Waits until every running node answers and every shard has an owner among them; returns how long.
    pub async fn wait_owned(&self, within: Duration) -> Duration {
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

    /// Waits until node `i` owns some shards (rebalancing moves them to a node once the alive set has
    /// been stable for a few seconds); how many.
    pub async fn wait_owns_some(&self, i: usize, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            if let Some(h) = self.healthz(i).await {
                let n = h["cluster"]["owned_shards"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    return n;
                }
            }
            assert!(
                started.elapsed() < within,
                "{} owns no shard after {within:?}",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    /// Every node's log as far as all of them have come, once each has come at least as far as the
    /// longest was when this was called (a node's ticker or deriver may still be appending): the shorter
    /// logs must be prefixes of the longer, event for event.
    pub async fn logs_agree(&self) -> Vec<Value> {
        let started = Instant::now();
        let mut target = None;
        loop {
            let mut logs = Vec::new();
            for i in self.running() {
                logs.push(self.client(i).all_events(1).await.unwrap());
            }
            let lens: Vec<usize> = logs.iter().map(Vec::len).collect();
            let shortest = *lens.iter().min().expect("a node is running");
            let target = *target.get_or_insert(*lens.iter().max().expect("a node is running"));
            for l in &logs[1..] {
                assert!(
                    l[..shortest] == logs[0][..shortest],
                    "two nodes' logs differ within their first {shortest} events"
                );
            }
            if shortest >= target {
                let mut log = logs.swap_remove(0);
                log.truncate(shortest);
                return log;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the nodes' logs have lengths {lens:?}, short of {target}"
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
            // The stream and the bucket go too (on a thread of its own: this may run inside a runtime).
            let settings = custodian_cluster::node::ClusterSettings {
                urls: NATS_CLUSTER.into(),
                node_id: String::new(),
                name: self.name.clone(),
                replicas: 3,
                secrets: Default::default(),
            };
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async {
                    let config = settings.shards_config();
                    if let Ok(client) = custodian_cluster::node::connect(&settings.urls).await
                        && let Ok(shards) =
                            custodian_cluster::ownership::Shards::open(client, &config).await
                    {
                        let _ = shards.delete(&config).await;
                    }
                });
            })
            .join();
        }
    }
}

pub async fn register(cluster: &Cluster, terminals: &[SimTerminal]) {
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
pub struct Acks {
    /// Terminal → reading seqs acknowledged (accepted or duplicate).
    pub acked: BTreeMap<String, Vec<u64>>,
    /// When each acknowledgement came, per terminal.
    pub times: BTreeMap<String, Vec<Instant>>,
    /// (terminal, reading seq) → the `event_seq` its acknowledgement named.
    pub event_seqs: BTreeMap<(String, u64), u64>,
    /// Every acknowledged upload, body and signature as sent, for resending.
    pub uploads: Vec<(Vec<u8>, String)>,
    pub failures: u64,
}

impl Acks {
    /// Notes an acknowledged upload; a reading acknowledged before must be named by the same `event_seq`.
    pub fn note(&mut self, r: &custodian_node::api::UploadResponse, body: Vec<u8>, sig: String) {
        for res in &r.results {
            let (seq, event_seq) = acked(res);
            let key = (r.terminal_id.clone(), seq);
            if let Some(before) = self.event_seqs.insert(key.clone(), event_seq) {
                assert_eq!(
                    before, event_seq,
                    "{key:?} was acknowledged as event {before}, then answered as event {event_seq}"
                );
            }
            self.acked
                .entry(r.terminal_id.clone())
                .or_default()
                .push(seq);
        }
        self.times
            .entry(r.terminal_id.clone())
            .or_default()
            .push(Instant::now());
        self.uploads.push((body, sig));
    }
}

/// The reading seq and event seq of an accepted or duplicate reading (anything else fails the test).
pub fn acked(res: &custodian_node::api::ReadingResult) -> (u64, u64) {
    use custodian_node::api::ReadingResult;
    match res {
        ReadingResult::Accepted { seq, event_seq }
        | ReadingResult::Duplicate { seq, event_seq } => (*seq, *event_seq),
        other => panic!("an upload answered {other:?}"),
    }
}

/// Terminals uploading 5 readings at a time through the nodes in turn; a failed upload is sent again,
/// the same bytes, to the next node, until it is acknowledged.
pub fn load(
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
                                acks.lock().unwrap().note(&r, body, sig);
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

/// Every acknowledged reading is in the log exactly once, at the `event_seq` its acknowledgement named.
pub fn check_acked(log: &[Value], acks: &Acks) -> usize {
    let stored = check_log(log);
    let mut n = 0;
    for (t, seqs) in &acks.acked {
        for s in seqs {
            let key = (t.clone(), *s);
            let Some(at) = stored.get(&key) else {
                panic!("{t} reading {s} was acknowledged but is not in the log")
            };
            if let Some(acked) = acks.event_seqs.get(&key) {
                assert_eq!(
                    acked, at,
                    "{t} reading {s} was acknowledged as event {acked} but is event {at} in the log"
                );
            }
            n += 1;
        }
    }
    n
}

/// Sends every acknowledged upload again to every running node: each reading must be answered
/// `duplicate`, naming the `event_seq` its first acknowledgement named. Returns the readings resent.
pub async fn check_resends(cluster: &Cluster, acks: &Acks) -> usize {
    use custodian_node::api::ReadingResult;
    let mut n = 0;
    for i in cluster.running() {
        let c = NodeClient::new(cluster.url(i), None);
        for (body, sig) in &acks.uploads {
            let r = c
                .upload(body.clone(), Some(sig))
                .await
                .unwrap_or_else(|e| panic!("resending to n{}: {e}", i + 1));
            for res in &r.results {
                let ReadingResult::Duplicate { seq, event_seq } = res else {
                    panic!("a resend to n{} answered {res:?}", i + 1)
                };
                let first = acks.event_seqs[&(r.terminal_id.clone(), *seq)];
                assert_eq!(
                    *event_seq,
                    first,
                    "{} reading {seq} was acknowledged as event {first}; resent to n{} it is a duplicate of event {event_seq}",
                    r.terminal_id,
                    i + 1
                );
                n += 1;
            }
        }
    }
    n
}

/// For each event time, the longest any terminal waited after it for its next acknowledgement.
pub fn outage_after(acks: &Acks, at: Instant) -> Duration {
    acks.times
        .values()
        .filter_map(|ts| ts.iter().find(|t| **t > at).map(|t| *t - at))
        .max()
        .unwrap_or_default()
}

pub fn terminals(n: usize) -> Vec<SimTerminal> {
    (0..n)
        .map(|i| SimTerminal::new(format!("T-{i}"), 100 + i as u64))
        .collect()
}

/// A TCP proxy to one NATS server that can stop forwarding (both ways) without closing anything: a
/// partition of whoever connects through it.
pub struct Proxy {
    pub url: String,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free port and forwards to `target` (`127.0.0.1:4303`).
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        let target = target.to_owned();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, cut2.clone()));
                tokio::spawn(pump(ro, wi, cut2.clone()));
            }
        });
        Proxy { url, cut }
    }

    /// Cuts (true) or heals (false) the link.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
    }
}

async fn pump(
    mut r: impl tokio::io::AsyncRead + Unpin,
    mut w: impl tokio::io::AsyncWrite + Unpin,
    cut: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while cut.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before the cut wait for the heal, as a partition holds them.
        while cut.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

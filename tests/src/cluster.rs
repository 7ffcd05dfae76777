//! Clusters of `custodian serve --cluster` processes on the three-server JetStream cluster, terminals
//! uploading through them, and the checks the cluster tests share (`tests/tests/cluster_*.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custodian_tools::client::NodeClient;
use custodian_tools::cluster_harness::{ClusterSpec, ProcessCluster, SHARDS, sim_terminals};
use custodian_tools::terminal_sim::{SimTerminal, now_rfc3339};
use serde_json::Value;

use crate::{ADMIN_TOKEN, NATS_CLUSTER, check_log, custodian_bin};

/// The test cluster: the tools' [`ProcessCluster`] (which it derefs to, for its fields and the calls
/// that need no wrapping) with calls that panic, naming what failed, instead of returning errors. Nodes
/// run the `custodian` binary built alongside the tests, on [`NATS_CLUSTER`], with [`ADMIN_TOKEN`].
pub struct Cluster(ProcessCluster);

impl std::ops::Deref for Cluster {
    type Target = ProcessCluster;
    fn deref(&self) -> &ProcessCluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut ProcessCluster {
        &mut self.0
    }
}

impl Cluster {
    pub fn new(tag: &str, n: usize) -> Cluster {
        Cluster::with_env(tag, n, Vec::new())
    }

    /// The same, every node started with `env` too (it overrides the harness's defaults).
    pub fn with_env(tag: &str, n: usize, env: Vec<(String, String)>) -> Cluster {
        Cluster::custom(tag, n, env, Vec::new())
    }

    /// The same, node `i` told the NATS servers `nats[i]` (the cluster's when absent).
    pub fn custom(tag: &str, n: usize, env: Vec<(String, String)>, nats: Vec<String>) -> Cluster {
        let spec = ClusterSpec {
            exe: custodian_bin(),
            nats: NATS_CLUSTER.to_owned(),
            nats_of: nats,
            prefix: "t",
            tag: tag.to_owned(),
            nodes: n,
            admin_token: ADMIN_TOKEN.to_owned(),
            env,
            keep: false,
        };
        Cluster(ProcessCluster::start_all(spec).expect("starting the cluster's nodes"))
    }

    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[], &[]);
    }

    /// Starts node `i` with `set` added to its environment and `unset` taken out of it (a node whose
    /// secrets are not the cluster's, say).
    pub fn start_with(&mut self, i: usize, set: &[(&str, &str)], unset: &[&str]) {
        self.0
            .start_with(i, set, unset)
            .expect("spawning custodian serve --cluster");
    }

    /// Waits up to `within` for node `i`'s process to end on its own; its exit status, if it did.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.0.try_exit(i).unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Waits for node `i` to answer: it answers once it has joined (which takes long on a busy machine).
    pub async fn wait_ready(&self, i: usize) {
        self.client(i)
            .wait_ready(Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("{} not ready: {e:#}", self.nodes[i].id));
    }

    pub fn signal(&mut self, i: usize, sig: &str) {
        self.0.signal(i, sig).unwrap();
    }

    pub fn kill9(&mut self, i: usize) {
        self.0.kill9(i).unwrap();
    }

    /// SIGTERM and wait: the graceful stop.
    pub fn stop(&mut self, i: usize) {
        let status = self.0.stop(i).unwrap();
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
            let (all_up, owned) = self.shards_owned().await;
            if all_up && owned == SHARDS {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "shards owned: {owned} of {SHARDS} after {within:?}; node logs in {}",
                self.root.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `i` owns some shards; how many.
    pub async fn wait_owns_some(&self, i: usize, within: Duration) -> usize {
        self.0.wait_owns_some(i, within).await.unwrap()
    }

    /// Waits until every node answers and every shard is owned (within 30 s), then registers `n`
    /// terminals (and their enterprise) through node 0; the terminals.
    pub async fn ready_with_terminals(&self, n: usize) -> Vec<SimTerminal> {
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await;
        }
        self.wait_owned(Duration::from_secs(30)).await;
        let ts = terminals(n);
        register(self, &ts).await;
        ts
    }

    /// The URLs of nodes `0..n`, for a [`Load`] through them.
    pub fn first_urls(&self, n: usize) -> Vec<String> {
        (0..n).map(|i| self.url(i)).collect()
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

pub async fn register(cluster: &Cluster, terminals: &[SimTerminal]) {
    cluster.0.register(terminals).await.expect("registering");
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

/// A [`load`] running: its terminals, their stop switch and what they saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Acks>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `terminals` uploading through `urls` in turn (see [`load`]).
    pub fn start(urls: Vec<String>, terminals: Vec<SimTerminal>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Acks::default()));
        let tasks = load(urls, terminals, stop.clone(), acks.clone());
        Load { stop, acks, tasks }
    }

    /// The longest any terminal has waited since `at` for its next acknowledgement ([`outage_after`]).
    pub fn outage_after(&self, at: Instant) -> Duration {
        outage_after(&self.acks.lock().unwrap(), at)
    }

    /// How many uploads were acknowledged after `at`.
    pub fn acked_since(&self, at: Instant) -> usize {
        let acks = self.acks.lock().unwrap();
        acks.times.values().flatten().filter(|t| **t > at).count()
    }

    /// Stops the terminals, waits for each to finish its upload, and hands over what they saw.
    pub async fn stop(self) -> Acks {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        std::mem::take(&mut *self.acks.lock().unwrap())
    }
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
    sim_terminals(n)
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

//! Clusters of `custodian serve --cluster` processes on a JetStream cluster: the one harness the cluster
//! benchmark (`bench_cluster.rs`) and the cluster tests (`tests/src/cluster.rs`, which wraps it in calls
//! that panic) both start, stop, kill and watch their nodes with.
//!
//! Each node has its own data dir and log file under a temp dir; every node shares the cluster's name,
//! master key, platform signing key and admin token. Dropping a [`ProcessCluster`] kills its processes
//! (continuing a stopped one first); the temp dir and the cluster's stream and bucket on NATS are removed
//! unless the cluster is kept ([`ProcessCluster::keep`], or the thread is panicking), and then the
//! temp dir is named on stderr for its logs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::client::NodeClient;
use crate::terminal_sim::{SimTerminal, enterprise_body};

/// Shards a cluster's owners divide.
pub const SHARDS: usize = custodian_cluster::placement::SHARDS as usize;

/// How to start a cluster.
pub struct ClusterSpec {
    /// The `custodian` binary the nodes run.
    pub exe: PathBuf,
    /// The NATS servers every node is told unless `nats_of` names others for it.
    pub nats: String,
    /// Node `i` is told `nats_of[i]` instead (a proxy in front of a server, say), where given.
    pub nats_of: Vec<String>,
    /// The cluster's name is `{prefix}{tag}_{pid}_{millis}`, its temp dir `custodian-cluster-{name}`.
    pub prefix: &'static str,
    pub tag: String,
    pub nodes: usize,
    pub admin_token: String,
    /// Added to every node's environment (overriding the defaults of [`ProcessCluster::start_with`]).
    pub env: Vec<(String, String)>,
    /// Keep the temp dir and the NATS names when dropped, until [`ProcessCluster::finish`].
    pub keep: bool,
}

/// One node process.
pub struct NodeProcess {
    /// The NATS servers this node is told.
    pub nats: String,
    pub id: String,
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// The node processes of one cluster and what they share.
pub struct ProcessCluster {
    pub exe: PathBuf,
    pub nats: String,
    pub name: String,
    pub admin_token: String,
    master_key: String,
    platform_key: PathBuf,
    /// The nodes' data dirs and logs.
    pub root: PathBuf,
    env: Vec<(String, String)>,
    pub nodes: Vec<NodeProcess>,
    /// Keep `root` and the NATS names when dropped.
    pub keep: bool,
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("binding an ephemeral port")?
        .port())
}

/// Terminals `T-0` … with fixed keys.
pub fn sim_terminals(n: usize) -> Vec<SimTerminal> {
    (0..n)
        .map(|i| SimTerminal::new(format!("T-{i}"), 100 + i as u64))
        .collect()
}

impl ProcessCluster {
    /// Makes the temp dir and starts every node.
    pub fn start_all(spec: ClusterSpec) -> anyhow::Result<ProcessCluster> {
        let name = format!(
            "{}{}_{}_{}",
            spec.prefix,
            spec.tag,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let root = std::env::temp_dir().join(format!("custodian-cluster-{name}"));
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot make {}", root.display()))?;
        let mut c = ProcessCluster {
            exe: spec.exe,
            master_key: custodian_node::server::fresh_master_key_hex(),
            platform_key: root.join("platform_signing.key"),
            admin_token: spec.admin_token,
            name,
            nodes: Vec::new(),
            root,
            env: spec.env,
            keep: spec.keep,
            nats: spec.nats,
        };
        for i in 0..spec.nodes {
            let id = format!("n{}", i + 1);
            c.nodes.push(NodeProcess {
                nats: spec
                    .nats_of
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| c.nats.clone()),
                dir: c.root.join(&id),
                id,
                port: free_port()?,
                child: None,
            });
        }
        for i in 0..spec.nodes {
            c.start_with(i, &[], &[])?;
        }
        Ok(c)
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// A client of node `i` with the admin token.
    pub fn client(&self, i: usize) -> NodeClient {
        NodeClient::new(self.url(i), Some(self.admin_token.clone()))
    }

    pub fn log_file(&self, i: usize) -> PathBuf {
        self.root.join(format!("{}.log", self.nodes[i].id))
    }

    /// What node `i` wrote to its log so far.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_file(i)).unwrap_or_default()
    }

    /// The last lines of node `i`'s log, for an error message.
    pub fn log_tail(&self, i: usize) -> String {
        let text = self.node_log(i);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Starts node `i` with `set` added to its environment and `unset` taken out of it (a node whose
    /// secrets are not the cluster's, say). `CUSTODIAN_*` settings of this process's own environment are
    /// not passed on: the nodes get the cluster's, with no tick and no read models unless `env` says so.
    pub fn start_with(
        &mut self,
        i: usize,
        set: &[(&str, &str)],
        unset: &[&str],
    ) -> anyhow::Result<()> {
        let log_file = self.log_file(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .with_context(|| format!("cannot open {}", log_file.display()))?;
        let n = &self.nodes[i];
        let mut command = Command::new(&self.exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CUSTODIAN_") {
                command.env_remove(key);
            }
        }
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
            .env("CUSTODIAN_ADMIN_TOKEN", &self.admin_token)
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for k in unset {
            command.env_remove(k);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {} serve", self.exe.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// The nodes whose processes this harness holds (started, not killed or stopped).
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .collect()
    }

    /// If node `i`'s process has ended on its own, its exit status (and it no longer counts as running).
    pub fn try_exit(&mut self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        let exited = match self.nodes[i].child.as_mut() {
            Some(c) => c.try_wait()?,
            None => None,
        };
        if exited.is_some() {
            self.nodes[i].child = None;
        }
        Ok(exited)
    }

    /// Fails if a node that should run has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if let Some(status) = self.try_exit(i)? {
                anyhow::bail!(
                    "node {} exited by itself ({status}); the end of {}:\n{}",
                    self.nodes[i].id,
                    self.log_file(i).display(),
                    self.log_tail(i)
                );
            }
        }
        Ok(())
    }

    /// Waits for node `i` to answer `/healthz` (it answers once it has joined); how long that took.
    pub async fn wait_ready(&mut self, i: usize, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let client = self.client(i);
        loop {
            if client.healthz().await.is_ok() {
                return Ok(started.elapsed());
            }
            self.check_running()?;
            anyhow::ensure!(
                started.elapsed() < within,
                "node {} did not answer /healthz within {within:?}; the end of {}:\n{}",
                self.nodes[i].id,
                self.log_file(i).display(),
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `kill {sig}` to node `i` (`-STOP`, `-CONT`, `-TERM`, …).
    pub fn signal(&mut self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.nodes[i]
            .child
            .as_ref()
            .with_context(|| format!("node {} is not running", self.nodes[i].id))?
            .id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?
            .success();
        anyhow::ensure!(ok, "kill {sig} {pid} failed");
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.nodes[i]
            .child
            .take()
            .with_context(|| format!("node {} is not running", self.nodes[i].id))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait: the graceful stop; its exit status.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.signal(i, "-TERM")?;
        let mut child = self.nodes[i].child.take().context("running")?;
        Ok(child.wait()?)
    }

    /// Each running node's owned shards, sorted (`None` for one that does not answer).
    pub async fn owned_by_node(&self) -> Vec<Option<Vec<u64>>> {
        let mut all = Vec::new();
        for i in self.running() {
            all.push(self.client(i).healthz().await.ok().map(|h| {
                let mut owned: Vec<u64> = h["cluster"]["owned_shards"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .collect();
                owned.sort_unstable();
                owned
            }));
        }
        all
    }

    /// Whether every running node answers, and how many shards have an owner among them.
    pub async fn shards_owned(&self) -> (bool, usize) {
        let by_node = self.owned_by_node().await;
        let all_up = by_node.iter().all(Option::is_some);
        let owned: BTreeSet<u64> = by_node.into_iter().flatten().flatten().collect();
        (all_up, owned.len())
    }

    /// Waits until every running node answers and every shard has an owner among them (polling every
    /// 50 ms); how long that took.
    pub async fn wait_owned(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let (all_up, owned) = self.shards_owned().await;
            if all_up && owned == SHARDS {
                return Ok(started.elapsed());
            }
            self.check_running()?;
            anyhow::ensure!(
                started.elapsed() < within,
                "shards owned: {owned} of {SHARDS} after {within:?} (every node up: {all_up}); node logs in {}",
                self.root.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `i` owns some shards (rebalancing moves them to a node once the alive set has
    /// been stable for a few seconds); how many.
    pub async fn wait_owns_some(&self, i: usize, within: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            if let Ok(h) = self.client(i).healthz().await {
                let n = h["cluster"]["owned_shards"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    return Ok(n);
                }
            }
            anyhow::ensure!(
                started.elapsed() < within,
                "{} owns no shard after {within:?}",
                self.nodes[i].id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the coordinators have finished rebalancing: all shards owned, every running node owns
    /// some, and who owns what has not changed for 4 s (rebalancing starts 3 s after the alive set
    /// settles and moves a few shards every pass). Returns how many shards each node owns.
    pub async fn wait_balanced(&mut self, within: Duration) -> anyhow::Result<Vec<usize>> {
        let started = Instant::now();
        let mut last = Vec::new();
        let mut same_since = Instant::now();
        loop {
            let now: Vec<Vec<u64>> = self
                .owned_by_node()
                .await
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect();
            let total: BTreeSet<u64> = now.iter().flatten().copied().collect();
            if now != last {
                last = now;
                same_since = Instant::now();
            } else if total.len() == SHARDS
                && last.iter().all(|o| !o.is_empty())
                && same_since.elapsed() >= Duration::from_secs(4)
            {
                return Ok(last.iter().map(Vec::len).collect());
            }
            self.check_running()?;
            anyhow::ensure!(
                started.elapsed() < within,
                "the shards did not settle within {within:?}: owned {:?}",
                last.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every running node's copy of the log has the same last sequence, twice in a row 200 ms
    /// apart; returns it.
    pub async fn wait_copies_agree(&mut self, within: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        let mut before: Option<u64> = None;
        loop {
            let mut seqs = Vec::new();
            for i in self.running() {
                let h = self.client(i).healthz().await.ok();
                seqs.push(h.and_then(|h| h["last_seq"].as_u64()));
            }
            let first = seqs.first().copied().flatten();
            let agree = first.is_some() && seqs.iter().all(|s| *s == first);
            if agree && before == first {
                return Ok(first.unwrap_or(0));
            }
            before = if agree { first } else { None };
            self.check_running()?;
            anyhow::ensure!(
                started.elapsed() < within,
                "the nodes' copies of the log did not agree within {within:?}: last_seq {seqs:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sum over running nodes of a counter in `/healthz` `cluster`.
    pub async fn cluster_counter(&self, field: &str) -> u64 {
        let mut n = 0;
        for i in self.running() {
            if let Ok(h) = self.client(i).healthz().await {
                n += h["cluster"][field].as_u64().unwrap_or(0);
            }
        }
        n
    }

    /// Registers enterprise E-0 and the terminals through node 0.
    pub async fn register(&self, terminals: &[SimTerminal]) -> anyhow::Result<()> {
        let c = self.client(0);
        c.register("/v1/enterprises", &enterprise_body(0))
            .await
            .context("registering E-0")?;
        for t in terminals {
            c.register("/v1/terminals", &t.registration(0))
                .await
                .with_context(|| format!("registering {}", t.id))?;
        }
        Ok(())
    }

    /// Stops the nodes and removes the temp dir and the cluster's stream and bucket on NATS.
    pub fn finish(mut self) {
        self.keep = false;
    }
}

impl Drop for ProcessCluster {
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
        if self.keep || std::thread::panicking() {
            eprintln!(
                "cluster {}: the nodes' data dirs and logs are kept in {}",
                self.name,
                self.root.display()
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.root);
        // On a thread of its own: this may run inside a runtime.
        let (nats, name) = (self.nats.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            if let Err(e) = rt.block_on(delete_nats_names(&nats, &name)) {
                eprintln!("could not delete cluster {name}'s stream and bucket on NATS: {e}");
            }
        })
        .join();
    }
}

/// The names cluster `name` uses on NATS: its log stream and owner bucket.
pub fn nats_names(nats: &str, name: &str) -> custodian_cluster::ownership::ShardsConfig {
    custodian_cluster::node::ClusterSettings {
        urls: nats.to_owned(),
        node_id: "harness".into(),
        name: name.to_owned(),
        replicas: 3,
        secrets: Default::default(),
    }
    .shards_config()
}

/// Deletes cluster `name`'s log stream and owner bucket (every node of it stopped).
pub async fn delete_nats_names(nats: &str, name: &str) -> Result<(), String> {
    let names = nats_names(nats, name);
    let js = async_nats::jetstream::new(custodian_cluster::node::connect(nats).await?);
    js.delete_key_value(&names.bucket)
        .await
        .map_err(|e| format!("bucket {}: {e}", names.bucket))?;
    js.delete_stream(&names.stream)
        .await
        .map_err(|e| format!("stream {}: {e}", names.stream))?;
    Ok(())
}

//! # custodian-tests
//!
//! Integration tests against real nodes: in-process nodes over real HTTP on `127.0.0.1:0`, and `custodian`
//! processes that the crash test kills with SIGKILL. No mocks of any service.
//!
//! This library holds the harness the tests share.

pub mod cluster;
pub mod edge;
pub mod private_services;
pub mod scopes;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Arc;

use custodian_events::crypto::Sm2KeyPair;
use custodian_node::api::UploadResponse;
use custodian_node::config::Config;
use custodian_node::server::Node;
use custodian_tools::client::{ClientError, NodeClient};
use custodian_tools::terminal_sim::{signature_header, terminal_body, terminal_key};
use serde_json::Value;

/// The admin token every test node is started with.
pub const ADMIN_TOKEN: &str = "integration-test-admin-token";

/// The `custodian` binary built alongside the tests (`cargo build --workspace --bins` builds it; so does
/// `cargo test --workspace`), or the one `CUSTODIAN_BIN` names.
pub fn custodian_bin() -> PathBuf {
    // Another build of it (e.g. a release build, to load a cluster as an operator would) when asked.
    if let Some(bin) = std::env::var_os("CUSTODIAN_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join("custodian");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// The config every in-process test node starts from: an ephemeral port, `dir`, [`ADMIN_TOKEN`], and no
/// clock ticks unless a test asks for them (they would interleave with the exact logs tests check).
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        ..Config::default()
    };
    config.derive.tick_interval_s = 0;
    config
}

/// Starts an in-process node on an ephemeral port in `dir`, with `tweak` applied to its config.
pub async fn start_node(dir: &Path, tweak: impl FnOnce(&mut Config)) -> (Node, NodeClient) {
    let mut config = test_config(dir);
    // No read models unless a test asks for them (see `ReadModels`): each test gets its own databases.
    config.projections.postgres_enabled = false;
    config.projections.influx_enabled = false;
    config.projections.search_enabled = false;
    tweak(&mut config);
    let node = Node::start(config).await.expect("starting a node");
    let client = NodeClient::new(node.url(), Some(ADMIN_TOKEN.into()));
    (node, client)
}

/// [`start_node`] with its default config in `dir`, with [`register_terminals`] `ids` registered.
pub async fn start_node_with_terminals(
    dir: &Path,
    ids: &[&str],
) -> (Node, NodeClient, TerminalKeys) {
    let (node, client) = start_node(dir, |_| {}).await;
    let keys = register_terminals(&client, ids).await;
    (node, client, keys)
}

/// The signing keys of registered test terminals.
#[derive(Clone, Default)]
pub struct TerminalKeys(pub BTreeMap<String, Arc<Sm2KeyPair>>);

impl TerminalKeys {
    /// The `X-Custodian-Signature` value for `body` signed by terminal `id`.
    pub fn sign(&self, id: &str, body: &[u8]) -> String {
        signature_header(&self.0[id], body)
    }

    /// Uploads `body` signed by terminal `id`.
    pub async fn upload(
        &self,
        client: &NodeClient,
        id: &str,
        body: Vec<u8>,
    ) -> Result<UploadResponse, ClientError> {
        let sig = self.sign(id, &body);
        client.upload(body, Some(&sig)).await
    }

    /// Registers signing terminal `id` of enterprise `E-<enterprise>` with its own SM2 key (seeded by its
    /// id and `seed`), and keeps the key.
    pub async fn register(&mut self, client: &NodeClient, id: &str, enterprise: usize, seed: u64) {
        let key = terminal_key(id, seed);
        client
            .register(
                "/v1/terminals",
                &terminal_body(id, enterprise, Some(&key.public_key_pem())),
            )
            .await
            .expect("registering a terminal");
        self.0.insert(id.to_owned(), Arc::new(key));
    }
}

/// Registers enterprise `E-0` and terminals `ids` under it, each with its own SM2 key (seeded by its id).
pub async fn register_terminals(client: &NodeClient, ids: &[&str]) -> TerminalKeys {
    client
        .register(
            "/v1/enterprises",
            &custodian_tools::terminal_sim::enterprise_body(0),
        )
        .await
        .expect("registering E-0");
    let mut keys = TerminalKeys::default();
    for id in ids {
        keys.register(client, id, 0, 42).await;
    }
    keys
}

/// Asserts that the first reading of an upload was accepted; `what` says which upload.
#[track_caller]
pub fn assert_accepted(r: &UploadResponse, what: &str) {
    assert!(
        matches!(
            r.results[0],
            custodian_node::api::ReadingResult::Accepted { .. }
        ),
        "{what}: {r:?}"
    );
}

/// A `custodian` process (`serve`, or `edge` as [`edge::spawn_edge`] starts it).
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
}

impl NodeProcess {
    /// Starts `custodian serve` on `port` with `data_dir`, its log going to `log_file`.
    pub fn spawn(data_dir: &Path, port: u16, log_file: &Path) -> NodeProcess {
        let listen = format!("127.0.0.1:{port}");
        NodeProcess::custodian(
            &[
                "serve".as_ref(),
                "--listen".as_ref(),
                listen.as_ref(),
                "--data-dir".as_ref(),
                data_dir.as_ref(),
            ],
            // Read models are tested on their own databases (`ReadModels`); keep these off the shared ones.
            &[
                ("CUSTODIAN_PROJECTIONS__POSTGRES_ENABLED", "false"),
                ("CUSTODIAN_PROJECTIONS__INFLUX_ENABLED", "false"),
                ("CUSTODIAN_PROJECTIONS__SEARCH_ENABLED", "false"),
            ],
            port,
            log_file,
        )
    }

    /// Starts `custodian <args>` (which listens on `port`) with the admin token, `RUST_LOG=warn` and `env`,
    /// its stderr appended to `log_file`.
    pub fn custodian(
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
        port: u16,
        log_file: &Path,
    ) -> NodeProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .expect("opening the node's log file");
        let mut cmd = Command::new(custodian_bin());
        cmd.args(args)
            .env("CUSTODIAN_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawning custodian {}: {e}",
                args.first().map_or("".into(), |a| a.to_string_lossy())
            )
        });
        NodeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn client(&self) -> NodeClient {
        NodeClient::new(self.url.clone(), Some(ADMIN_TOKEN.into()))
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        self.child.kill().expect("sending SIGKILL");
        self.child.wait().expect("reaping the node");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a node at `client` to answer, or panics with what it said last.
pub async fn wait_ready(client: &NodeClient) {
    client
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("node ready");
}

/// `GET path` with the client's token: the JSON answer, or the status and body it was refused with (any
/// other failure panics).
pub async fn get_json(client: &NodeClient, path: &str) -> Result<Value, (u16, Value)> {
    client.get_admin(path).await.map_err(|e| match e {
        ClientError::Status { status, body } => (status, body),
        other => panic!("{path}: {other}"),
    })
}

/// Asserts that `GET` of each of `paths` is refused with `status` and error `code`.
pub async fn assert_get_refused(client: &NodeClient, paths: &[&str], status: u16, code: &str) {
    for path in paths {
        let (s, v) = get_json(client, path)
            .await
            .map(|v| panic!("{path} was answered, not refused: {v}"))
            .unwrap_err();
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{path}: {v}");
    }
}

/// Polls `ok` every 50 ms until it holds, or panics after `within` naming `what`.
pub async fn wait_for(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let until = std::time::Instant::now() + within;
    while !ok().await {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (10 s at most) until the domain core has processed the whole log.
pub async fn wait_derived(client: &NodeClient) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = client.healthz().await.unwrap();
        if h["derived_seq"] == h["last_seq"] {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the domain core did not catch up: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RFC 8785 canonical JSON computed independently of the node's own writer
/// ([`custodian_tools::check::canonical_json`]); panics on a number that is not an integer (events carry
/// integers only).
pub fn jcs_independent(v: &Value) -> String {
    custodian_tools::check::canonical_json(v).unwrap_or_else(|e| panic!("{e}"))
}

pub use custodian_tools::check::sha256_hex;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The Python with `cryptography` >= 42 that the interop tests drive: `CUSTODIAN_PYTHON`, or the virtual
/// environment `scripts/test` makes. Missing is a failure, never a skip.
pub fn interop_python() -> PathBuf {
    let python = std::env::var_os("CUSTODIAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv-interop/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which makes the interop virtual environment (python3 -m venv .venv-interop && .venv-interop/bin/pip install 'cryptography>=42')",
        python.display()
    );
    python
}

/// Runs `custodian <args>` with `env`, asserts it succeeded (else fails with its stderr), returns what it
/// wrote.
pub fn custodian_ok(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let out = Command::new(custodian_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run custodian {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "custodian {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`custodian_ok`] as an operator runs it against a node: with the admin token.
pub fn admin_cli_ok(args: &[&str]) -> std::process::Output {
    custodian_ok(args, &[("CUSTODIAN_ADMIN_TOKEN", ADMIN_TOKEN)])
}

/// Runs a command with `stdin`, asserts it succeeded, returns stdout.
pub fn run_ok(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a command with `stdin` and returns what happened.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("writing stdin");
    child.wait_with_output().expect("waiting for the command")
}

/// Checks a whole log as `GET /v1/events` shows it — sequences gapless from 1, every fingerprint
/// recomputes from the canonical payload, no (terminal, seq) recorded twice — and returns where each
/// reading is stored.
pub fn check_log(events: &[Value]) -> BTreeMap<(String, u64), u64> {
    let mut stored = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["event_seq"], i as u64 + 1, "sequence gap before {e}");
        let canonical = jcs_independent(&e["payload"]);
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            e["fingerprint"],
            "event {}",
            e["event_seq"]
        );
        if e["type"] == "ReadingRecorded" {
            let key = (
                e["payload"]["terminal_id"].as_str().unwrap().to_owned(),
                e["payload"]["seq"].as_u64().unwrap(),
            );
            let seq = e["event_seq"].as_u64().unwrap();
            assert!(
                stored.insert(key.clone(), seq).is_none(),
                "{key:?} stored twice"
            );
        }
    }
    stored
}

/// A test's own PostgreSQL database and InfluxDB database (on the shared servers unless told otherwise),
/// named after the test and a random suffix, dropped by [`ReadModels::drop_all`].
pub struct ReadModels {
    pub name: String,
    pub postgres_server: String,
    pub influx_url: String,
}

impl ReadModels {
    /// Databases `custodian_t_<tag>_<random>` on the shared servers (127.0.0.1:5432 and :8086).
    pub fn new(tag: &str) -> ReadModels {
        ReadModels::on(
            tag,
            "postgres://postgres@127.0.0.1:5432",
            "http://127.0.0.1:8086",
        )
    }

    /// The same on other servers (`postgres_server` without a database name).
    pub fn on(tag: &str, postgres_server: &str, influx_url: &str) -> ReadModels {
        ReadModels {
            name: format!("custodian_t_{tag}_{:08x}", rand::random::<u32>()),
            postgres_server: postgres_server.trim_end_matches('/').to_owned(),
            influx_url: influx_url.to_owned(),
        }
    }

    pub fn postgres_url(&self) -> String {
        format!("{}/{}", self.postgres_server, self.name)
    }

    /// Turns on all three read models in `config`, writing to this test's databases.
    pub fn enable(&self, config: &mut Config) {
        let p = &mut config.projections;
        p.postgres_enabled = true;
        p.influx_enabled = true;
        p.search_enabled = true;
        p.postgres_url = self.postgres_url();
        p.influx_url = self.influx_url.clone();
        p.influx = custodian_projections::influx::Dialect::v1(self.name.clone());
        p.backoff_max_ms = 1_000;
    }

    /// A connection pool to the test's database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.postgres_url())
            .await
            .expect("connecting to the test's PostgreSQL database")
    }

    /// An InfluxDB client for generation 1's database (`database` for another).
    pub fn influx(&self, database: Option<&str>) -> custodian_projections::influx::InfluxClient {
        custodian_projections::influx::InfluxClient::new(
            &self.influx_url,
            custodian_projections::influx::Dialect::v1(database.unwrap_or(&self.name).to_owned()),
        )
    }

    /// Drops the test's databases (after its node has stopped).
    pub async fn drop_all(&self) {
        let _ =
            custodian_projections::postgres::drop_database(&self.postgres_server, &self.name).await;
        for db in [
            self.name.clone(),
            format!("{}_g2", self.name),
            format!("{}_g3", self.name),
        ] {
            let _ = self.influx(Some(&db)).drop_target().await;
        }
    }
}

/// Waits until every read model of the node holds the whole log and the domain core has caught up too
/// (derived events land in the log after the readings that caused them).
pub async fn wait_projected(client: &NodeClient, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let h = client.healthz().await.expect("healthz");
        let p = client.projections().await.expect("projections status");
        let last = h["last_seq"].as_u64().unwrap_or(0);
        let all_caught_up = h["derived_seq"] == h["last_seq"]
            && p["projections"].as_array().is_some_and(|a| {
                a.iter()
                    .all(|x| x["checkpoint"].as_u64() == Some(last) && x["rebuild"].is_null())
            });
        if all_caught_up
            && client.healthz().await.expect("healthz")["last_seq"].as_u64() == Some(last)
        {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the read models did not catch up with the log (last_seq {last}) in {within:?}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `{tag}_{pid}_{nanoseconds}`: a name no other test run uses (of NATS buckets, streams and subjects).
pub fn unique_name(tag: &str) -> String {
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Shard ownership of the test's own: bucket `owners_U`, stream `LOG_U`, subject `custodian.test.U` (`U` the
/// [`unique_name`] of `tag`), replicated three times.
pub fn shards_config(tag: &str) -> custodian_cluster::ownership::ShardsConfig {
    let u = unique_name(tag);
    custodian_cluster::ownership::ShardsConfig {
        bucket: format!("owners_{u}"),
        stream: format!("LOG_{u}"),
        subject: format!("custodian.test.{u}"),
        replicas: 3,
    }
}

/// A random number generator seeded by `CUSTODIAN_TEST_SEED` or at random; prints the seed, naming `what`,
/// so that a failing run can be repeated. Returns the seed as well.
pub fn seeded_rng(what: &str) -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("CUSTODIAN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what} seed {seed} (rerun with CUSTODIAN_TEST_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// The three-node JetStream cluster of `scripts/services nats-cluster up`.
pub const NATS_CLUSTER: &str = "nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303";

/// A client of [`NATS_CLUSTER`]; panics naming the command that starts it.
pub async fn nats_cluster() -> async_nats::Client {
    let servers: Vec<async_nats::ServerAddr> = NATS_CLUSTER
        .split(',')
        .map(|u| u.parse().expect("a NATS URL"))
        .collect();
    async_nats::connect(servers).await.unwrap_or_else(|e| {
        panic!(
            "cannot reach the NATS cluster at {NATS_CLUSTER} ({e}); start it with scripts/services nats-cluster up"
        )
    })
}

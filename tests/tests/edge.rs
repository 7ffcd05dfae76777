//! An edge node and the platform, as real processes on loopback: the edge keeps what its terminals upload
//! while the platform is down, forwards it when the platform is back (every reading exactly once, each
//! terminal's in order, the edge's anomalies ahead of the backlog), survives SIGKILL in the middle of
//! draining, waits at most 30 s between retries, refuses uploads with 503 `outbox_full` when its outbox is
//! full without losing what it holds, and takes MQTT uploads.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use custodian_node::client::NodeClient;
use custodian_node::terminal_sim::{enterprise_body, terminal_body, terminal_key, upload_body};
use custodian_tests::*;
use serde_json::{Value, json};

/// 72 hours of readings, one every 10 minutes, 12 to an upload (2 hours).
const HOURS: i64 = 72;
const READING_EVERY_S: i64 = 600;
const PER_UPLOAD: usize = 12;

struct EdgeProcess {
    child: Child,
    url: String,
}

impl EdgeProcess {
    fn spawn(
        data_dir: &Path,
        port: u16,
        upstream: &str,
        edge_id: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> EdgeProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(custodian_bin());
        cmd.args([
            "edge",
            "--upstream",
            upstream,
            "--edge-id",
            edge_id,
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env("CUSTODIAN_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        EdgeProcess {
            child: cmd.spawn().expect("spawning custodian edge"),
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn client(&self) -> NodeClient {
        NodeClient::new(self.url.clone(), Some(ADMIN_TOKEN.into()))
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn public_key_of_edge(data_dir: &Path) -> String {
    let out = run_ok(
        Command::new(custodian_bin())
            .args(["edge", "--print-public-key", "--data-dir"])
            .arg(data_dir),
        b"",
    );
    String::from_utf8(out).unwrap()
}

fn rfc3339(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A site: enterprise E-0 with `terminals` signing terminals, and an edge registered for it.
struct Site {
    terminals: Vec<String>,
    keys: TerminalKeys,
    edge_id: String,
}

async fn register_site(cloud: &NodeClient, edge_dir: &Path, terminals: usize, tag: &str) -> Site {
    cloud
        .register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    let mut keys = TerminalKeys::default();
    let ids: Vec<String> = (0..terminals).map(|i| format!("{tag}-T{i}")).collect();
    for id in &ids {
        let key = terminal_key(id, 7);
        cloud
            .register(
                "/v1/terminals",
                &terminal_body(id, 0, Some(&key.public_key_pem())),
            )
            .await
            .unwrap();
        keys.0.insert(id.clone(), std::sync::Arc::new(key));
    }
    let edge_id = format!("EDGE-{tag}-{}", rand::random::<u32>());
    let (status, v) = cloud
        .post_admin(
            "/v1/edges",
            &json!({"id": edge_id, "public_key_pem": public_key_of_edge(edge_dir), "enterprise_ids": ["E-0"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    Site {
        terminals: ids,
        keys,
        edge_id,
    }
}

/// The upload `n` (from 0) of a terminal: `PER_UPLOAD` readings 10 minutes apart, seqs from 1; drum weights
/// steady except, when `jump`, a 50 % jump at the 5th upload's first reading (a weight-fluctuation anomaly).
fn nth_upload(terminal: &str, n: usize, start_s: i64, jump: bool) -> (Vec<u8>, Vec<u64>) {
    let mut readings = Vec::new();
    let mut seqs = Vec::new();
    for i in 0..PER_UPLOAD {
        let k = n * PER_UPLOAD + i;
        let seq = k as u64 + 1;
        let kg = if jump && k >= 4 * PER_UPLOAD {
            150.0
        } else {
            100.0 + (k % 3) as f64 * 0.1
        };
        readings.push(format!(
            r#"{{"seq":{seq},"measured_at":"{}","kind":"weight","value":{kg:.1},"unit":"kg","container_id":"{terminal}-C1","stage":"storage_in","waste_code":"HW08"}}"#,
            rfc3339(start_s + k as i64 * READING_EVERY_S)
        ));
        seqs.push(seq);
    }
    (upload_body(terminal, &readings), seqs)
}

async fn outbox(edge: &NodeClient) -> Value {
    edge.get_admin("/v1/edge/outbox")
        .await
        .expect("GET /v1/edge/outbox")
}

async fn wait_for(what: &str, within: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + within;
    while !ok().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every reading of every terminal once in the platform's log, each terminal's in seq order; returns the
/// platform's events.
async fn check_delivered(cloud: &NodeClient, site: &Site, per_terminal: u64) -> Vec<Value> {
    let events = cloud.all_events(1).await.unwrap();
    let stored = check_log(&events);
    let mut order: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        if e["type"] == "ReadingRecorded" {
            order
                .entry(e["payload"]["terminal_id"].as_str().unwrap())
                .or_default()
                .push(e["payload"]["seq"].as_u64().unwrap());
        }
    }
    for t in &site.terminals {
        let seqs = order.get(t.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            seqs,
            (1..=per_terminal).collect::<Vec<_>>(),
            "terminal {t}: the platform holds its readings exactly once and in order"
        );
    }
    assert_eq!(
        stored.len() as u64,
        per_terminal * site.terminals.len() as u64
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_72_hour_outage_arrives_exactly_once_in_order_even_with_sigkill_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud_dir, edge_dir) = (dir.path().join("cloud"), dir.path().join("edge"));
    let (cloud_port, edge_port) = (free_port(), free_port());
    let cloud_url = format!("http://127.0.0.1:{cloud_port}");
    let cloud = NodeProcess::spawn(&cloud_dir, cloud_port, &dir.path().join("cloud.log"));
    wait_ready(&cloud.client()).await;
    let site = register_site(&cloud.client(), &edge_dir, 20, "O").await;
    // Small batches, one upload per terminal each: the drain takes long enough to be killed in.
    let env = [
        ("CUSTODIAN_EDGE__BATCH_UPLOADS_MAX", "20"),
        ("CUSTODIAN_EDGE__PER_TERMINAL_UPLOADS_MAX", "1"),
        ("CUSTODIAN_EDGE__RETRY_CAP_MS", "1000"),
    ];
    let edge_log = dir.path().join("edge.log");
    let edge = EdgeProcess::spawn(
        &edge_dir,
        edge_port,
        &cloud_url,
        &site.edge_id,
        &edge_log,
        &env,
    );
    wait_ready(&edge.client()).await;
    let e = edge.client();
    wait_for(
        "the edge's registrations",
        Duration::from_secs(30),
        async || outbox(&e).await["registrations_synced"].as_u64() >= Some(1),
    )
    .await;

    // The platform goes away; 72 hours of readings arrive at the edge.
    cloud.kill9();
    let uploads_per_terminal = (HOURS * 3600 / READING_EVERY_S) as usize / PER_UPLOAD;
    let start_s = time::OffsetDateTime::now_utc().unix_timestamp() - HOURS * 3600;
    for n in 0..uploads_per_terminal {
        for (i, t) in site.terminals.iter().enumerate() {
            let (body, seqs) = nth_upload(t, n, start_s, i == 0);
            let r = site
                .keys
                .upload(&e, t, body)
                .await
                .expect("the edge takes uploads while the platform is down");
            assert!(
                r.results
                    .iter()
                    .all(|x| matches!(x, custodian_node::api::ReadingResult::Accepted { .. })),
                "{seqs:?}: {r:?}"
            );
        }
    }
    let total_uploads = (uploads_per_terminal * site.terminals.len()) as u64;
    wait_for(
        "the outbox to hold every upload",
        Duration::from_secs(30),
        async || outbox(&e).await["outbox"]["uploads"].as_u64() == Some(total_uploads),
    )
    .await;
    let held = outbox(&e).await;
    assert_eq!(
        held["outbox"]["anomalies"], 1,
        "the jump was detected at the edge: {held}"
    );
    let local = e.get_admin("/v1/anomalies").await.unwrap();
    assert_eq!(local["items"][0]["kind"], "weight_fluctuation", "{local}");
    let bytes_per_reading = held["outbox"]["bytes"].as_u64().unwrap() as f64
        / (total_uploads as f64 * PER_UPLOAD as f64);
    println!(
        "outbox: {} uploads, {bytes_per_reading:.0} bytes per buffered reading ({PER_UPLOAD} per upload)",
        total_uploads
    );

    // The platform is back; the edge drains, and is killed in the middle of it.
    let cloud = NodeProcess::spawn(&cloud_dir, cloud_port, &dir.path().join("cloud.log"));
    wait_ready(&cloud.client()).await;
    wait_for(
        "the drain to be under way",
        Duration::from_secs(120),
        async || {
            let left = outbox(&e).await["outbox"]["uploads"]
                .as_u64()
                .unwrap_or(u64::MAX);
            left < total_uploads * 2 / 3
        },
    )
    .await;
    let left_at_kill = outbox(&e).await["outbox"]["uploads"].as_u64().unwrap();
    edge.kill9();
    assert!(
        left_at_kill > 0,
        "the drain finished before the kill; make batches smaller"
    );
    let edge = EdgeProcess::spawn(
        &edge_dir,
        edge_port,
        &cloud_url,
        &site.edge_id,
        &edge_log,
        &env,
    );
    wait_ready(&edge.client()).await;
    let e = edge.client();
    wait_for(
        "the outbox to drain",
        Duration::from_secs(180),
        async || {
            let o = outbox(&e).await;
            o["outbox"]["uploads"] == 0 && o["outbox"]["anomalies"] == 0
        },
    )
    .await;
    assert_eq!(outbox(&e).await["outbox"]["dead_letters"], 0);

    let c = cloud.client();
    let per_terminal = (uploads_per_terminal * PER_UPLOAD) as u64;
    wait_for(
        "the platform to derive the anomaly itself",
        Duration::from_secs(60),
        async || {
            c.events(1, None, &["AnomalyDetected"])
                .await
                .unwrap()
                .iter()
                .any(|a| a["payload"]["kind"] == "weight_fluctuation")
        },
    )
    .await;
    let events = check_delivered(&c, &site, per_terminal).await;
    // The edge's report went ahead of the backlog, and is the anomaly the platform then derived.
    let reported = events
        .iter()
        .find(|e| e["type"] == "AnomalyReported")
        .expect("the edge reported its anomaly");
    let first_reading = events
        .iter()
        .find(|e| e["type"] == "ReadingRecorded")
        .unwrap();
    assert!(
        reported["event_seq"].as_u64() < first_reading["event_seq"].as_u64(),
        "the anomaly jumped the queue"
    );
    let derived = events
        .iter()
        .find(|e| e["type"] == "AnomalyDetected" && e["payload"]["kind"] == "weight_fluctuation")
        .unwrap();
    assert_eq!(
        reported["payload"]["anomaly"]["anomaly_id"],
        derived["payload"]["anomaly_id"]
    );
    assert_eq!(reported["payload"]["edge_id"], site.edge_id.as_str());
    println!(
        "killed the edge with {left_at_kill} of {total_uploads} uploads left; all {} readings arrived once, in order",
        per_terminal * 20
    );
}

//! Nothing that identifies an enterprise, terminal, container or manifest, and no reading value, is
//! readable in any file under a data dir without the master key — on the platform (log, its indexes,
//! deriver snapshots, search index, projection pointers) and on an edge (its log, snapshots, outbox with
//! waiting uploads, anomalies and local anomalies). After a realistic run (registrations, signed uploads
//! with an alarm, a manifest, an inspection note), every byte of every file is scanned for every id, the
//! enterprise's name, the note's text, and each weight as text and as the integer the log keeps (mg,
//! little- and big-endian). The master key comes from the configuration, as it must in production:
//! kept in the data dir, it would open everything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use custodian_node::config::Config;
use custodian_node::server::Node;
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{terminal_key, upload_body};
use serde_json::json;

const ENTERPRISE: &str = "E-ATREST-ENTERPRISE-7";
const NAME: &str = "静态加密检查危废处置有限公司";
const RECEIVER: &str = "E-ATREST-RECEIVER-8";
const TERMINAL: &str = "T-ATREST-SCALE-7";
const CONTAINER: &str = "C-ATREST-DRUM-7";
const MANIFEST: &str = "M-ATREST-MANIFEST-7";
const NOTE: &str = "贮存间标识齐全 ATREST-NOTE-TEXT";
/// The weights uploaded: the second is 50 % lighter (a weight_fluctuation alarm).
const WEIGHTS_KG: [&str; 2] = ["1234.567", "617.283"];
const WEIGHTS_MG: [i64; 2] = [1_234_567_000, 617_283_000];

fn needles() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = [
        ENTERPRISE, RECEIVER, NAME, TERMINAL, CONTAINER, MANIFEST, NOTE,
    ]
    .iter()
    .map(|s| (s.to_string(), s.as_bytes().to_vec()))
    .collect();
    // Every id above shares this; so would a truncated one.
    out.push(("ATREST".into(), b"ATREST".to_vec()));
    for (kg, mg) in WEIGHTS_KG.iter().zip(WEIGHTS_MG) {
        out.push((kg.to_string(), kg.as_bytes().to_vec()));
        out.push((format!("{mg} mg LE"), mg.to_le_bytes().to_vec()));
        out.push((format!("{mg} mg BE"), mg.to_be_bytes().to_vec()));
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every file of `dir`, scanned for every needle; returns how many files and bytes were scanned.
fn scan(dir: &Path) -> (usize, u64) {
    let mut files = Vec::new();
    walk(dir, &mut files);
    let needles = needles();
    let mut found = Vec::new();
    let mut bytes = 0u64;
    for f in &files {
        let data = std::fs::read(f).unwrap();
        bytes += data.len() as u64;
        for (what, needle) in &needles {
            if data.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(format!("{} holds {what:?}", f.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "in the clear at rest:\n{}",
        found.join("\n")
    );
    (files.len(), bytes)
}

fn reading(seq: u64, kg: &str, at: &str) -> String {
    format!(
        r#"{{"seq":{seq},"measured_at":"{at}","kind":"weight","value":{kg},"unit":"kg","container_id":"{CONTAINER}","stage":"storage_in","waste_code":"HW08","manifest_id":"{MANIFEST}"}}"#
    )
}

fn ago(s: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::seconds(s))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn config(dir: &Path, master: &str) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        master_key: Some(master.to_owned()),
        ..Config::default()
    };
    c.derive.tick_interval_s = 0;
    // Snapshots after every few events, so the deriver's store holds every aggregate.
    c.derive.snapshot_every_events = 3;
    c
}

async fn register(client: &NodeClient) -> custodian_events::crypto::Sm2KeyPair {
    client
        .register(
            "/v1/enterprises",
            &json!({"id": ENTERPRISE, "name": NAME, "province_code": "440000", "city_code": "440100",
                    "storage_capacity_kg": 50000.0}),
        )
        .await
        .unwrap();
    client
        .register(
            "/v1/enterprises",
            &json!({"id": RECEIVER, "name": "接收单位", "province_code": "440000", "city_code": "440100",
                    "storage_capacity_kg": 50000.0}),
        )
        .await
        .unwrap();
    let key = terminal_key(TERMINAL, 11);
    client
        .register(
            "/v1/terminals",
            &json!({"id": TERMINAL, "enterprise_id": ENTERPRISE, "kind": "scale", "capacity_kg": 3000.0,
                    "report_interval_s": 10, "public_key_pem": key.public_key_pem()}),
        )
        .await
        .unwrap();
    key
}

async fn upload(client: &NodeClient, key: &custodian_events::crypto::Sm2KeyPair) {
    let body = upload_body(
        TERMINAL,
        &[
            reading(1, WEIGHTS_KG[0], &ago(120)),
            reading(2, WEIGHTS_KG[1], &ago(60)),
        ],
    );
    let sig = custodian_tools::terminal_sim::signature_header(key, &body);
    let r = client.upload(body, Some(&sig)).await.unwrap();
    for res in &r.results {
        assert_eq!(
            serde_json::to_value(res).unwrap()["status"],
            "accepted",
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_data_dir_holds_no_id_and_no_value_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let master = custodian_node::server::fresh_master_key_hex();
    let models = ReadModels::new("atrest");
    let mut c = config(&dir, &master);
    models.enable(&mut c);
    let node = Node::start(c).await.unwrap();
    let client = NodeClient::new(node.url(), Some(ADMIN_TOKEN.into()));
    let key = register(&client).await;
    upload(&client, &key).await;
    let (s, v) = client
        .post_admin(
            "/v1/manifests",
            &json!({"id": MANIFEST, "generator_id": ENTERPRISE, "receiver_id": RECEIVER,
                    "waste_code": "HW08", "container_ids": [CONTAINER], "declared_kg": 617.283}),
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let (s, v) = client
        .post_admin(
            "/v1/notes",
            &json!({"enterprise_id": ENTERPRISE, "author": "检查员", "text": NOTE, "container_id": CONTAINER}),
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    wait_projected(&client, Duration::from_secs(60)).await;
    // The run left what the scan must not find: an alarm, and a search hit for the note.
    let events = client.all_events(1).await.unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "AnomalyDetected"),
        "no alarm was raised"
    );
    let hits = client
        .get_admin("/v1/admin/search?q=ATREST-NOTE-TEXT")
        .await
        .unwrap();
    assert!(!hits["hits"].as_array().unwrap().is_empty(), "{hits}");
    node.stop().await.unwrap();

    assert!(dir.join("search").exists() && dir.join("derive").exists());
    assert!(!dir.join("master.key").exists());
    let (files, bytes) = scan(&dir);
    eprintln!("platform: {files} files, {bytes} bytes scanned, no id or value in the clear");
    models.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_data_dir_holds_no_id_and_no_value_in_the_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let master = custodian_node::server::fresh_master_key_hex();
    // The platform registers the site; the edge is seeded from its registrations file and never
    // reaches the platform, so everything it takes waits in its outbox.
    let (cloud, c) = start_node(&tmp.path().join("cloud"), |_| {}).await;
    let key = register(&c).await;
    let edge_dir = tmp.path().join("edge");
    let edge_key = String::from_utf8(run_ok(
        std::process::Command::new(custodian_bin())
            .args(["edge", "--print-public-key", "--data-dir"])
            .arg(&edge_dir)
            .env("CUSTODIAN_MASTER_KEY", &master),
        b"",
    ))
    .unwrap();
    let edge_id = "EDGE-ATREST-7";
    let (s, v) = c
        .post_admin(
            "/v1/edges",
            &json!({"id": edge_id, "public_key_pem": edge_key, "enterprise_ids": [ENTERPRISE]}),
        )
        .await
        .unwrap();
    assert_eq!(s, 201, "{v}");
    let seed = c
        .get_admin(&format!("/v1/admin/edges/{edge_id}/registrations"))
        .await
        .unwrap();
    let seed_file = tmp.path().join("registrations.json");
    std::fs::write(&seed_file, seed.to_string()).unwrap();
    let platform_key = tmp.path().join("platform.pem");
    std::fs::write(
        &platform_key,
        c.get_admin("/v1/edge/public-key").await.unwrap()["public_key_pem"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    cloud.stop().await.unwrap();

    let mut cfg = config(&edge_dir, &master);
    cfg.edge.upstream = Some(format!("http://127.0.0.1:{}", free_port()));
    cfg.edge.id = Some(edge_id.into());
    cfg.edge.seed_registrations_file = Some(seed_file);
    cfg.edge.upstream_public_key_file = Some(platform_key);
    let edge = Node::start_edge(cfg).await.unwrap();
    let e = NodeClient::new(edge.url(), Some(ADMIN_TOKEN.into()));
    upload(&e, &key).await;
    // The upload and the alarm wait in the outbox (the platform is unreachable).
    let started = std::time::Instant::now();
    loop {
        let o = e.get_admin("/v1/edge/outbox").await.unwrap();
        if o["outbox"]["uploads"].as_u64() >= Some(1)
            && o["outbox"]["anomalies"].as_u64() >= Some(1)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{o}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    edge.stop().await.unwrap();

    assert!(edge_dir.join("outbox").exists() && edge_dir.join("derive").exists());
    assert!(!edge_dir.join("master.key").exists());
    let (files, bytes) = scan(&edge_dir);
    eprintln!("edge: {files} files, {bytes} bytes scanned, no id or value in the clear");
}

//! Terminal identities over a real node: key rotation (the old key still vouches for readings measured
//! before it), revocation (a revoked key vouches for nothing), terminals without keys, replays; and
//! events sealed at rest: no plaintext on disk, and a missing or wrong master key stops the node at start.

use custodian_events::crypto::{OsEntropy, Sm2KeyPair, key_fingerprint};
use custodian_node::config::Config;
use custodian_node::server::Node;
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{enterprise_body, signature_header, terminal_body};
use serde_json::{Value, json};

fn body(seq: u64, measured_at: &str, container: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"terminal_id": "T-1", "readings": [
        {"seq": seq, "measured_at": measured_at, "kind": "weight", "value": 10.0, "unit": "kg", "container_id": container}
    ]}))
    .unwrap()
}

async fn upload(
    client: &NodeClient,
    key: &Sm2KeyPair,
    body: Vec<u8>,
) -> Result<Value, Option<String>> {
    let sig = signature_header(key, &body);
    match client.upload(body, Some(&sig)).await {
        Ok(r) => Ok(serde_json::to_value(&r.results).unwrap()[0].clone()),
        Err(e) => Err(e.code().map(str::to_owned)),
    }
}

/// `POST /v1/terminals/T-1/keys` with `key`'s public key (a rotation to it): the status and answer.
async fn rotate_to(client: &NodeClient, key: &Sm2KeyPair) -> (u16, Value) {
    client
        .post_admin(
            "/v1/terminals/T-1/keys",
            &json!({"public_key_pem": key.public_key_pem()}),
        )
        .await
        .unwrap()
}

/// `POST /v1/terminals/T-1/keys/{fingerprint}/revoke`: the status and answer.
async fn revoke(client: &NodeClient, fingerprint: &str) -> (u16, Value) {
    client
        .post_admin(
            &format!("/v1/terminals/T-1/keys/{fingerprint}/revoke"),
            &Value::Null,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_key_for_earlier_readings_and_revocation_ends_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    let a = Sm2KeyPair::generate(&OsEntropy);
    let b = Sm2KeyPair::generate(&OsEntropy);
    client
        .register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    client
        .register(
            "/v1/terminals",
            &terminal_body("T-1", 0, Some(&a.public_key_pem())),
        )
        .await
        .unwrap();
    let before = "2026-11-20T00:00:00Z";
    assert_eq!(
        upload(&client, &a, body(1, before, "C-1")).await.unwrap()["status"],
        "accepted"
    );

    // Rotate to B: 201, then 200 for the same key again.
    let (s, v) = rotate_to(&client, &b).await;
    assert_eq!((s, v["status"].as_str()), (201, Some("rotated")));
    let (s, _) = rotate_to(&client, &b).await;
    assert_eq!(s, 200);
    let now = custodian_tools::terminal_sim::now_rfc3339();

    // The old key: the offline backlog (measured before the rotation) is accepted, a new reading is not.
    assert_eq!(
        upload(&client, &a, body(2, before, "C-1")).await.unwrap()["status"],
        "accepted"
    );
    let r = upload(&client, &a, body(3, &now, "C-1")).await.unwrap();
    assert_eq!(
        (r["status"].as_str(), r["code"].as_str()),
        (Some("rejected"), Some("key_superseded"))
    );
    // The new key vouches for everything.
    assert_eq!(
        upload(&client, &b, body(3, &now, "C-1")).await.unwrap()["status"],
        "accepted"
    );
    assert_eq!(
        upload(&client, &b, body(4, before, "C-1")).await.unwrap()["status"],
        "accepted"
    );

    // A replayed, validly signed body is simply a duplicate, and its evidence is not stored twice.
    let last = client.healthz().await.unwrap()["last_seq"]
        .as_u64()
        .unwrap();
    assert_eq!(
        upload(&client, &b, body(4, before, "C-1")).await.unwrap()["status"],
        "duplicate"
    );
    assert_eq!(
        client.healthz().await.unwrap()["last_seq"]
            .as_u64()
            .unwrap(),
        last
    );

    // Revoke A: it verifies nothing, not even the backlog it used to.
    let fp_a = hex::encode(key_fingerprint(&a.public_key_der()));
    let (s, v) = revoke(&client, &fp_a).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("revoked")));
    assert_eq!(
        upload(&client, &a, body(5, before, "C-1")).await,
        Err(Some("signature_invalid".into()))
    );
    // A revoked key cannot come back; an unknown fingerprint is a 404.
    let (s, v) = rotate_to(&client, &a).await;
    assert_eq!((s, v["code"].as_str()), (409, Some("key_reused")));
    let (s, _) = revoke(&client, &"0".repeat(64)).await;
    assert_eq!(s, 404);

    // The keys survive a restart (they are events in the log).
    node.stop().await.unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    assert_eq!(
        upload(&client, &a, body(6, before, "C-1")).await,
        Err(Some("signature_invalid".into()))
    );
    assert_eq!(
        upload(&client, &b, body(6, &now, "C-1")).await.unwrap()["status"],
        "accepted"
    );

    // Revoke B as well: nothing verifies any more.
    let fp_b = hex::encode(key_fingerprint(&b.public_key_der()));
    revoke(&client, &fp_b).await;
    assert_eq!(
        upload(&client, &b, body(7, &now, "C-1")).await,
        Err(Some("terminal_key_revoked".into()))
    );

    // The rotation and revocations are events in the log.
    let events = client.all_events(1).await.unwrap();
    let count = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (count("TerminalKeyRotated"), count("TerminalKeyRevoked")),
        (1, 2)
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_without_a_key_cannot_upload_while_signatures_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    client
        .register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    client
        .register("/v1/terminals", &terminal_body("T-1", 0, None))
        .await
        .unwrap();
    let err = client
        .upload(body(1, "2026-11-20T00:00:00Z", "C-1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("terminal_key_missing"));
    let bad_key = json!({"id": "T-2", "enterprise_id": "E-0", "kind": "scale", "capacity_kg": 1.0,
                         "report_interval_s": 10, "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"});
    let (s, v) = client.post_admin("/v1/terminals", &bad_key).await.unwrap();
    assert_eq!((s, v["code"].as_str()), (422, Some("invalid_public_key")));
    node.stop().await.unwrap();

    // With signatures not required, the same terminal uploads unsigned (and nothing is kept as evidence).
    let (node, client) = start_node(dir.path(), |c| c.ingest.require_signature = false).await;
    let r = client
        .upload(body(1, "2026-11-20T00:00:00Z", "C-1"), None)
        .await
        .unwrap();
    assert_accepted(&r, "the unsigned upload");
    let events = client.all_events(1).await.unwrap();
    assert!(events.iter().all(|e| e["type"] != "UploadSigned"));
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_rest_sealed_and_the_master_key_is_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let marker = "CONTAINER-PLAINTEXT-MARKER-42";
    {
        let (node, client) = start_node(&data_dir, |_| {}).await;
        let keys = register_terminals(&client, &["T-1"]).await;
        let r = keys
            .upload(&client, "T-1", body(1, "2026-11-20T00:00:00Z", marker))
            .await
            .unwrap();
        assert_accepted(&r, "the marked upload");
        // Readers see the plaintext; the envelope names its data key.
        let events = client.all_events(1).await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e["payload"]["container_id"] == marker)
        );
        node.stop().await.unwrap();
    }
    // Nothing under the log's folder holds the marker (nor the enterprise's name) in the clear.
    let name = enterprise_body(0)["name"].as_str().unwrap().to_owned();
    for entry in walk(&data_dir.join("log")) {
        let bytes = std::fs::read(&entry).unwrap();
        for needle in [marker.as_bytes(), name.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds plaintext",
                entry.display()
            );
        }
    }

    // Without its master key the node refuses to start, saying so.
    let master = std::fs::read_to_string(data_dir.join("master.key")).unwrap();
    std::fs::remove_file(data_dir.join("master.key")).unwrap();
    let err = start_err(&data_dir, None).await;
    assert!(err.contains("master_key_missing"), "{err}");
    // A wrong master key is refused, not used.
    let err = start_err(&data_dir, Some("00".repeat(16))).await;
    assert!(err.contains("master_key_mismatch"), "{err}");
    // The right one, from the environment's setting, opens everything.
    let (node, client) =
        start_node(&data_dir, |c| c.master_key = Some(master.trim().to_owned())).await;
    let events = client.all_events(1).await.unwrap();
    let sealed_with = |events: &[Value], container: &str| {
        events
            .iter()
            .find(|e| e["payload"]["container_id"] == container)
            .map(|e| e["key_id"].clone())
    };
    assert_eq!(sealed_with(&events, marker), Some(json!("E-0/1")));

    // Rotating the enterprise's data key: new events use generation 2, old ones keep opening with 1.
    let (s, v) = client
        .post_admin("/v1/admin/data-keys/E-0/rotate", &Value::Null)
        .await
        .unwrap();
    assert_eq!((s, v["key_id"].as_str()), (201, Some("E-0/2")));
    let key = terminal_key_for_test();
    let r = upload(
        &client,
        &key,
        body(2, "2026-11-20T00:00:00Z", "C-AFTER-ROTATION"),
    )
    .await
    .unwrap();
    assert_eq!(r["status"], "accepted");
    node.stop().await.unwrap();
    let (node, client) =
        start_node(&data_dir, |c| c.master_key = Some(master.trim().to_owned())).await;
    let events = client.all_events(1).await.unwrap();
    assert_eq!(sealed_with(&events, marker), Some(json!("E-0/1")));
    assert_eq!(
        sealed_with(&events, "C-AFTER-ROTATION"),
        Some(json!("E-0/2"))
    );
    let data_keys: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "DataKeyIssued")
        .collect();
    assert_eq!(data_keys.len(), 2);
    assert!(
        data_keys.iter().all(|e| e["key_id"] == "meta"),
        "data keys rest wrapped, and sealed under the log's own key (derived from the master key)"
    );
    node.stop().await.unwrap();
}

/// The key `register_terminals` gave T-1.
fn terminal_key_for_test() -> Sm2KeyPair {
    custodian_tools::terminal_sim::terminal_key("T-1", 42)
}

async fn start_err(data_dir: &std::path::Path, master_key: Option<String>) -> String {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        admin_token: Some(ADMIN_TOKEN.into()),
        master_key,
        ..Config::default()
    };
    match Node::start(config).await {
        Ok(_) => panic!("the node started without its master key"),
        Err(e) => format!("{e:#}"),
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn a_data_dir_refuses_keys_other_than_its_own_even_with_an_empty_log() {
    // Proves: a data dir remembers the check values of the master key and the token key it was made with
    // (DATA_DIR/secrets.check), so a node started on it with others refuses to start, naming the
    // mismatch — also while its log holds nothing sealed yet, where no data key could tell.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let (node, _client) = start_node(&data_dir, |_| {}).await;
    node.stop().await.unwrap();
    assert!(data_dir.join("secrets.check").exists());
    let check = std::fs::read_to_string(data_dir.join("secrets.check")).unwrap();
    let master = std::fs::read_to_string(data_dir.join("master.key")).unwrap();
    assert!(
        !check.contains(master.trim()),
        "the check file holds the key itself"
    );

    let err = start_err(&data_dir, Some("11".repeat(16))).await;
    assert!(err.contains("master_key_mismatch"), "{err}");

    let other_key = dir.path().join("other_platform.key");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        admin_token: Some(ADMIN_TOKEN.into()),
        platform_key_file: Some(other_key),
        ..Config::default()
    };
    let err = match Node::start(config).await {
        Ok(_) => panic!("the node started with another token key"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("token_key_mismatch"), "{err}");

    // Its own keys open it as before.
    let (node, client) = start_node(&data_dir, |_| {}).await;
    client.healthz().await.unwrap();
    node.stop().await.unwrap();
}

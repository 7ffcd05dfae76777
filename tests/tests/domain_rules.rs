//! The rest of the domain core over a real node: manifests opened over HTTP, dispatched and received
//! by weighings, a light arrival flagged `manifest_weight_mismatch`; storage over an enterprise's
//! capacity flagged `over_capacity`; a terminal falling silent flagged on the node's clock ticks; a
//! weight above the terminal's capacity refused; and `GET /v1/events` streaming NDJSON, filtered by
//! type and following the log.

use std::time::{Duration, Instant};

use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::terminal_key;
use serde_json::{Value, json};

fn weighing(
    seq: u64,
    second: u32,
    container: &str,
    stage: &str,
    kg: f64,
    manifest: Option<&str>,
) -> Value {
    let mut r = json!({"seq": seq, "measured_at": format!("2026-11-20T08:00:{second:02}Z"), "kind": "weight",
           "value": kg, "unit": "kg", "container_id": container, "stage": stage, "waste_code": "HW08"});
    if let Some(m) = manifest {
        r["manifest_id"] = json!(m);
    }
    r
}

fn body(terminal: &str, readings: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"terminal_id": terminal, "readings": readings})).unwrap()
}

/// Waits until the domain core has processed the whole log, then returns the events of `types`.
async fn derived_once_caught_up(client: &NodeClient, types: &[&str]) -> Vec<Value> {
    wait_derived(client).await;
    client.events(1, None, types).await.unwrap()
}

/// Registers enterprise `id` with `capacity_kg` of storage and a signing scale `terminal` in it.
async fn site(
    client: &NodeClient,
    keys: &mut TerminalKeys,
    id: &str,
    capacity_kg: f64,
    terminal: &str,
) {
    client
        .register(
            "/v1/enterprises",
            &json!({"id": id, "name": id, "province_code": "440000", "city_code": "440300",
                    "storage_capacity_kg": capacity_kg}),
        )
        .await
        .unwrap();
    let key = terminal_key(terminal, 42);
    client
        .register(
            "/v1/terminals",
            &json!({"id": terminal, "enterprise_id": id, "kind": "scale", "capacity_kg": 1000.0,
                    "report_interval_s": 1, "public_key_pem": key.public_key_pem()}),
        )
        .await
        .unwrap();
    keys.0.insert(terminal.to_owned(), std::sync::Arc::new(key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_is_dispatched_received_and_a_light_arrival_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    let mut keys = TerminalKeys::default();
    site(&client, &mut keys, "GEN", 100_000.0, "G-1").await;
    site(&client, &mut keys, "RCV", 100_000.0, "R-1").await;
    let manifest = json!({"id": "M-1", "generator_id": "GEN", "receiver_id": "RCV", "waste_code": "HW08",
                          "container_ids": ["C-1", "C-2"], "declared_kg": 200.0});
    let r = client.register("/v1/manifests", &manifest).await.unwrap();
    assert_eq!(r["status"], "registered");
    // The same request again is idempotent; another with the same id conflicts; bad input is refused.
    assert_eq!(
        client.register("/v1/manifests", &manifest).await.unwrap()["status"],
        "unchanged"
    );
    let mut other = manifest.clone();
    other["declared_kg"] = json!(300.0);
    let err = client.register("/v1/manifests", &other).await.unwrap_err();
    assert!(format!("{err:?}").contains("already_registered"), "{err:?}");
    let mut unknown = manifest.clone();
    unknown["id"] = json!("M-2");
    unknown["receiver_id"] = json!("NOPE");
    let err = client
        .register("/v1/manifests", &unknown)
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("unknown_enterprise"), "{err:?}");
    let mut same = manifest.clone();
    same["id"] = json!("M-3");
    same["receiver_id"] = json!("GEN");
    let err = client.register("/v1/manifests", &same).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("same_generator_and_receiver"),
        "{err:?}"
    );

    let m = Some("M-1");
    keys.upload(
        &client,
        "G-1",
        body(
            "G-1",
            vec![
                weighing(1, 0, "C-1", "transfer_out", 100.0, m),
                weighing(2, 1, "C-2", "transfer_out", 100.0, m),
            ],
        ),
    )
    .await
    .unwrap();
    // Received 150 kg of 200: 25 % light.
    keys.upload(
        &client,
        "R-1",
        body(
            "R-1",
            vec![
                weighing(1, 30, "C-1", "transfer_in", 90.0, m),
                weighing(2, 31, "C-2", "transfer_in", 60.0, m),
            ],
        ),
    )
    .await
    .unwrap();
    let events = derived_once_caught_up(&client, &["ManifestProgressed", "AnomalyDetected"]).await;
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "ManifestProgressed")
        .collect();
    assert_eq!(progress.len(), 2, "{events:#?}");
    assert_eq!(progress[0]["payload"]["status"], "dispatched");
    assert_eq!(progress[1]["payload"]["status"], "received");
    assert_eq!(progress[1]["payload"]["received_mg"], 150_000_000);
    let mismatch: Vec<&Value> = events
        .iter()
        .filter(|e| e["payload"]["kind"] == "manifest_weight_mismatch")
        .collect();
    assert_eq!(mismatch.len(), 1, "{events:#?}");
    let p = &mismatch[0]["payload"];
    assert_eq!(p["manifest_id"], "M-1");
    assert_eq!(
        (p["previous_value"].as_i64(), p["current_value"].as_i64()),
        (Some(200_000_000), Some(150_000_000))
    );
    assert_eq!(p["change_ratio_ppm"], 250_000);
    assert_eq!(p["causes"].as_array().unwrap().len(), 4);
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_silence_and_impossible_weights() {
    let dir = tempfile::tempdir().unwrap();
    // Ticks every second, so the silence of a terminal reporting every second shows within seconds.
    let (node, client) = start_node(dir.path(), |c| c.derive.tick_interval_s = 1).await;
    let mut keys = TerminalKeys::default();
    site(&client, &mut keys, "SMALL", 500.0, "S-1").await;

    // A weight above the scale's registered 1,000 kg is refused, and nothing is stored.
    let r = keys
        .upload(
            &client,
            "S-1",
            body(
                "S-1",
                vec![weighing(1, 0, "C-0", "storage_in", 1000.5, None)],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&r.results[0]).unwrap()["code"],
        "value_over_capacity"
    );

    // 300 + 200 kg stored is at capacity; 1 kg more is over it, once.
    let now = time::OffsetDateTime::now_utc();
    let at = |s: i64| {
        (now + time::Duration::seconds(s))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let stored = |seq: u64, s: i64, c: &str, kg: f64| {
        json!({"seq": seq, "measured_at": at(s), "kind": "weight",
        "value": kg, "unit": "kg", "container_id": c, "stage": "storage_in"})
    };
    keys.upload(
        &client,
        "S-1",
        body(
            "S-1",
            vec![
                stored(2, -3, "C-1", 300.0),
                stored(3, -2, "C-2", 200.0),
                stored(4, -1, "C-3", 1.0),
                stored(5, 0, "C-4", 1.0),
            ],
        ),
    )
    .await
    .unwrap();
    let acked = Instant::now();
    // The scale reports every second; after 3 s without a reading it is silent.
    let silent = loop {
        let events = derived_once_caught_up(&client, &["AnomalyDetected"]).await;
        if let Some(s) = events
            .iter()
            .find(|e| e["payload"]["kind"] == "terminal_silent")
        {
            let over: Vec<_> = events
                .iter()
                .filter(|e| e["payload"]["kind"] == "over_capacity")
                .collect();
            assert_eq!(over.len(), 1, "{events:#?}");
            assert_eq!(over[0]["payload"]["current_value"], 501_000_000);
            assert_eq!(over[0]["payload"]["limit_value"], 500_000_000);
            break s.clone();
        }
        assert!(
            acked.elapsed() < Duration::from_secs(15),
            "no terminal_silent: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(silent["payload"]["terminal_id"], "S-1");
    assert_eq!(silent["payload"]["causes"], json!(["S-1/5"]));
    eprintln!(
        "terminal_silent {:?} after the last reading",
        acked.elapsed()
    );
    // Once per silence: more ticks do not repeat it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let events = derived_once_caught_up(&client, &["AnomalyDetected"]).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["payload"]["kind"] == "terminal_silent")
            .count(),
        1
    );
    assert!(
        client
            .events(1, None, &["ClockTicked"])
            .await
            .unwrap()
            .len()
            >= 3
    );
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_ndjson_filtered_by_type_and_can_follow_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client, keys) = start_node_with_terminals(dir.path(), &["T-1"]).await;
    let url = node.url();
    let http = reqwest::Client::new();
    let get = |q: &str| {
        http.get(format!("{url}/v1/events{q}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };

    let resp = get("?types=TerminalRegistered").await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    for field in [
        "event_seq",
        "type",
        "stream",
        "recorded_at",
        "fingerprint",
        "payload",
    ] {
        assert!(!lines[0][field].is_null(), "{field} missing: {}", lines[0]);
    }
    assert_eq!(lines[0]["type"], "TerminalRegistered");
    // Unknown types and malformed queries are 400 with a JSON error; no token is 401.
    let bad = get("?types=Nope").await.unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["code"],
        "unknown_event_type"
    );
    assert_eq!(get("?from_seq=x").await.unwrap().status(), 400);
    assert_eq!(
        http.get(format!("{url}/v1/events"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // follow=true: the response stays open and carries an event appended later.
    let head = client.healthz().await.unwrap()["last_seq"]
        .as_u64()
        .unwrap();
    let mut follow = get(&format!(
        "?from_seq={}&follow=true&types=ReadingRecorded",
        head + 1
    ))
    .await
    .unwrap();
    keys.upload(&client, "T-1", serde_json::to_vec(&json!({"terminal_id": "T-1", "readings": [
        {"seq": 1, "measured_at": "2026-11-20T08:00:00Z", "kind": "weight", "value": 5.0, "unit": "kg"}]})).unwrap())
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), follow.chunk())
        .await
        .expect("the followed stream carries the new event")
        .unwrap()
        .unwrap();
    let line: Value = serde_json::from_slice(chunk.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["type"], "ReadingRecorded");
    assert_eq!(line["payload"]["value"], 5_000_000);
    drop(follow);
    node.stop().await.unwrap();
}

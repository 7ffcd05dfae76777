//! The domain core running over a real node's log: a weight change of more than 20 % is flagged within
//! seconds as an `AnomalyDetected` event, exactly 20 % is not, a terminal rewriting a reading is
//! `tamper_suspected` once, and a restart (which replays the log through fresh actors) never stores an
//! anomaly twice.

use std::time::{Duration, Instant};

use custodian_tests::*;
use custodian_tools::client::NodeClient;
use serde_json::{Value, json};

fn weighing(seq: u64, minute: u32, container: &str, kg: f64) -> Value {
    json!({"seq": seq, "measured_at": format!("2026-11-20T08:{minute:02}:00Z"), "kind": "weight",
           "value": kg, "unit": "kg", "container_id": container, "stage": "storage_in", "waste_code": "HW08"})
}

fn body(readings: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"terminal_id": "T-1", "readings": readings})).unwrap()
}

/// Waits until the domain core has processed the whole log, then returns the anomalies in it.
async fn anomalies_once_caught_up(client: &NodeClient) -> Vec<Value> {
    wait_derived(client).await;
    client
        .all_events(1)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e["type"] == "AnomalyDetected")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_over_20_percent_is_flagged_within_seconds_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let (node, client, keys) = start_node_with_terminals(dir.path(), &["T-1"]).await;

    // Exactly 20 % up, then 20 % down: no anomaly.
    keys.upload(
        &client,
        "T-1",
        body(vec![
            weighing(1, 0, "C-1", 100.0),
            weighing(2, 1, "C-1", 120.0),
        ]),
    )
    .await
    .unwrap();
    keys.upload(&client, "T-1", body(vec![weighing(3, 2, "C-1", 96.0)]))
        .await
        .unwrap();
    assert!(anomalies_once_caught_up(&client).await.is_empty());

    // 100 kg, then 121 kg in another upload (152300 g written in grams works alike): flagged.
    keys.upload(&client, "T-1", body(vec![weighing(4, 0, "C-9", 100.0)]))
        .await
        .unwrap();
    let acked = Instant::now();
    keys.upload(&client, "T-1", body(vec![weighing(5, 1, "C-9", 121.0)]))
        .await
        .unwrap();
    let found = loop {
        let events = client.all_events(1).await.unwrap();
        if let Some(a) = events.into_iter().find(|e| e["type"] == "AnomalyDetected") {
            break a;
        }
        assert!(
            acked.elapsed() < Duration::from_secs(5),
            "no anomaly within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "anomaly in the log {:?} after the acknowledgement",
        acked.elapsed()
    );
    let p = &found["payload"];
    assert_eq!(p["kind"], "weight_fluctuation");
    assert_eq!(p["container_id"], "C-9");
    assert_eq!(p["terminal_id"], "T-1");
    assert_eq!(
        (p["previous_value"].as_i64(), p["current_value"].as_i64()),
        (Some(100_000_000), Some(121_000_000))
    );
    assert_eq!(p["change_ratio_ppm"], 210_000);
    assert_eq!(p["causes"], json!(["T-1/4", "T-1/5"]));
    assert_eq!(found["stream"], "container:C-9");
    assert_eq!(
        found["key_id"], "E-0/1",
        "anomalies rest sealed with their enterprise's key"
    );
    assert_eq!(anomalies_once_caught_up(&client).await.len(), 1);

    // A resend of the weighing that fired is a duplicate and fires nothing new.
    keys.upload(&client, "T-1", body(vec![weighing(5, 1, "C-9", 121.0)]))
        .await
        .unwrap();
    assert_eq!(anomalies_once_caught_up(&client).await.len(), 1);

    // The terminal rewrites its history (seq 4 with another weight), twice: one tamper_suspected.
    for kg in [99.0, 98.0] {
        let r = keys
            .upload(&client, "T-1", body(vec![weighing(4, 0, "C-9", kg)]))
            .await
            .unwrap();
        assert_eq!(
            serde_json::to_value(&r.results).unwrap()[0]["code"],
            "seq_conflict"
        );
    }
    let all = anomalies_once_caught_up(&client).await;
    assert_eq!(all.len(), 2);
    let tamper = &all[1]["payload"];
    assert_eq!(tamper["kind"], "tamper_suspected");
    assert_eq!(tamper["subject"], "terminal:T-1");
    assert_eq!(tamper["causes"], json!(["T-1/4"]));
    assert_eq!(tamper["severity"], "high");
    node.stop().await.unwrap();

    // A restart replays the log through fresh actors: the anomaly is decided again, stored once.
    let (node, client) = start_node(dir.path(), |_| {}).await;
    let again = anomalies_once_caught_up(&client).await;
    assert_eq!(again.len(), 2);
    assert_eq!(again[0]["event_seq"], found["event_seq"]);
    node.stop().await.unwrap();
}

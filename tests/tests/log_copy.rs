//! A running node's log copied out (`custodian log export`), restored elsewhere (`custodian log import`)
//! and replayed (`custodian replay`): the copy holds the same events, answers resends as the original did,
//! and every replay — from the data dir, the restored copy or the file — ends in the same state hash; a
//! replay under other rules reports each derived event it would decide differently.

use std::path::Path;
use std::process::{Command, Output};

use custodian_tests::*;
use serde_json::json;

fn custodian(args: &[&str], dir_for_key: &Path) -> Output {
    let key = std::fs::read_to_string(dir_for_key.join("master.key")).unwrap();
    Command::new(custodian_bin())
        .args(args)
        .env("CUSTODIAN_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("CUSTODIAN_MASTER_KEY", key.trim())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn state_hash(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("state hash "))
        .unwrap_or_else(|| panic!("no state hash in {stdout}"))
        .to_owned()
}

fn weighings(kgs: &[f64]) -> Vec<u8> {
    let readings: Vec<_> = kgs
        .iter()
        .enumerate()
        .map(|(i, kg)| {
            json!({"seq": i + 1, "measured_at": format!("2026-11-20T08:{:02}:00Z", i), "kind": "weight",
                   "value": kg, "unit": "kg", "container_id": "C-1", "stage": "storage_in",
                   "waste_code": "HW08"})
        })
        .collect();
    serde_json::to_vec(&json!({"terminal_id": "T-1", "readings": readings})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_exported_imported_and_replayed_is_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    let (node, admin) = start_node(&source, |_| {}).await;
    let keys = register_terminals(&admin, &["T-1"]).await;
    // 100 kg, then 60 kg: a 40 % drop flags weight_fluctuation; then steady.
    let body = weighings(&[100.0, 60.0, 60.5, 61.0]);
    keys.upload(&admin, "T-1", body.clone()).await.unwrap();
    // Derivation runs behind the log: wait for the anomaly.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let events = loop {
        let events = admin.events(1, None, &[]).await.unwrap();
        if events.iter().any(|e| e["type"] == "AnomalyDetected") {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no anomaly derived: {events:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    let out = admin_cli_ok(&["log", "export", "--node", &node.url()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("checked"));
    let file = dir.path().join("log.export");
    std::fs::write(&file, &out.stdout).unwrap();
    assert!(
        !out.stdout.windows(b"HW08".len()).any(|w| w == b"HW08"),
        "the export keeps payloads sealed"
    );
    // A refused export: no token.
    let refused = Command::new(custodian_bin())
        .args(["log", "export", "--node", &node.url()])
        .env_remove("CUSTODIAN_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    node.stop().await.unwrap();

    // Restore it; a cut file is refused first.
    let copy = dir.path().join("copy");
    let cut = dir.path().join("cut.export");
    std::fs::write(&cut, &out.stdout[..out.stdout.len() - 10]).unwrap();
    let refused = custodian(
        &[
            "log",
            "import",
            cut.to_str().unwrap(),
            "--data-dir",
            dir.path().join("never").to_str().unwrap(),
        ],
        &source,
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cut short"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    ok(&custodian(
        &[
            "log",
            "import",
            file.to_str().unwrap(),
            "--data-dir",
            copy.to_str().unwrap(),
        ],
        &source,
    ));
    ok(&custodian(
        &["log", "verify", "--data-dir", copy.to_str().unwrap()],
        &source,
    ));

    // Three replays, one state.
    let hashes: Vec<String> = [
        vec![
            "replay",
            "--data-dir",
            source.to_str().unwrap(),
            "--compare",
        ],
        vec!["replay", "--data-dir", copy.to_str().unwrap(), "--compare"],
        vec!["replay", "--log", file.to_str().unwrap(), "--compare"],
    ]
    .iter()
    .map(|args| {
        let stdout = ok(&custodian(args, &source));
        assert!(stdout.contains("weight_fluctuation"), "{stdout}");
        assert!(stdout.contains("compare: 0 derived"), "{stdout}");
        state_hash(&stdout)
    })
    .collect();
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(hashes[0], hashes[2]);
    let partial = ok(&custodian(
        &["replay", "--log", file.to_str().unwrap(), "--until", "3"],
        &source,
    ));
    assert_ne!(state_hash(&partial), hashes[0]);

    // Under a 50 % threshold the 40 % drop is no anomaly: the replay says so and exits non-zero.
    let key = std::fs::read_to_string(source.join("master.key")).unwrap();
    let other_rules = Command::new(custodian_bin())
        .args(["replay", "--log", file.to_str().unwrap(), "--compare"])
        .env("CUSTODIAN_MASTER_KEY", key.trim())
        .env("CUSTODIAN_DERIVE__WEIGHT_FLUCTUATION_PCT", "50")
        .output()
        .unwrap();
    assert!(!other_rules.status.success());
    let stdout = String::from_utf8_lossy(&other_rules.stdout);
    assert!(
        stdout.contains("extra: the log holds AnomalyDetected"),
        "{stdout}"
    );

    // The restored node serves the same log and answers the same resend as a duplicate.
    let (copy_node, copy_admin) = start_node(&copy, |_| {}).await;
    assert_eq!(copy_admin.events(1, None, &[]).await.unwrap(), events);
    let again = keys.upload(&copy_admin, "T-1", body).await.unwrap();
    assert!(
        again.results.len() == 4
            && again
                .results
                .iter()
                .all(|r| matches!(r, custodian_node::api::ReadingResult::Duplicate { .. })),
        "{again:?}"
    );
    copy_node.stop().await.unwrap();
}

//! Kill a node with SIGKILL at random moments while several clients upload, restart it each time, and
//! prove that no acknowledged reading was lost or stored twice: every one is in the log exactly once, at
//! the sequence its acknowledgement named; a resend of it answers `duplicate` with that sequence; sequences
//! are gapless; every record passes its check (online through the API and offline with `log verify`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use custodian_node::api::ReadingResult;
use custodian_tests::*;
use custodian_tools::client::{ClientError, NodeClient};
use custodian_tools::terminal_sim::{self, SimTerminal};
use rand::Rng;
use tokio::sync::{Mutex, RwLock};

const CLIENTS: usize = 4;
const KILLS: usize = 30;
const KILLS_IN_FLIGHT_MIN: u64 = 20;
const READINGS_PER_BATCH: usize = 20;

type Acked = BTreeMap<(String, u64), u64>;

struct Shared {
    url: RwLock<String>,
    keys: TerminalKeys,
    in_flight: AtomicU64,
    stop: AtomicBool,
    acked: Mutex<Acked>,
    /// Every body each client sent, to resend at the end.
    bodies: Mutex<Vec<(String, Vec<u8>)>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_reading() {
    let (seed, mut rng) = seeded_rng("kill -9 test");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let log_file = dir.path().join("node.log");
    let port = free_port();

    let node = NodeProcess::spawn(&data_dir, port, &log_file);
    wait_ready(&node.client()).await;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("K-{i}")).collect();
    let keys = register_terminals(
        &node.client(),
        &ids.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;

    let shared = Arc::new(Shared {
        url: RwLock::new(node.url.clone()),
        keys: keys.clone(),
        in_flight: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        acked: Mutex::new(BTreeMap::new()),
        bodies: Mutex::new(Vec::new()),
    });
    let clients: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            tokio::spawn(client_loop(
                shared.clone(),
                id.clone(),
                seed.wrapping_add(i as u64),
            ))
        })
        .collect();

    let mut node = Some(node);
    let mut kills_in_flight = 0;
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(80..400))).await;
        if shared.in_flight.load(Ordering::SeqCst) > 0 {
            kills_in_flight += 1;
        }
        node.take().unwrap().kill9();
        if kill % 10 == 9 {
            println!(
                "  {} kills, {kills_in_flight} with requests in flight",
                kill + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        let next = NodeProcess::spawn(&data_dir, port, &log_file);
        wait_ready(&next.client()).await;
        node = Some(next);
    }
    shared.stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let node = node.unwrap();
    let client = node.client();
    let acked = shared.acked.lock().await.clone();
    println!(
        "{KILLS} kills, {kills_in_flight} while requests were in flight; {} readings acknowledged",
        acked.len()
    );
    assert!(
        kills_in_flight >= KILLS_IN_FLIGHT_MIN,
        "only {kills_in_flight} kills landed while requests were in flight"
    );
    assert!(
        acked.len() > 1000,
        "too little traffic to prove anything: {}",
        acked.len()
    );

    // Every record passes its check (the node verifies each on read), sequences are gapless, and every
    // acknowledged reading is stored once, at the acknowledged sequence.
    let events = client.all_events(1).await.expect("reading the whole log");
    let stored = check_log(&events);
    for (key, event_seq) in &acked {
        assert_eq!(
            stored.get(key),
            Some(event_seq),
            "acknowledged reading {key:?} lost or moved"
        );
    }

    // Resending everything ever sent: every acknowledged reading answers duplicate with its sequence.
    let bodies = shared.bodies.lock().await.clone();
    for (id, body) in bodies {
        let resp = keys.upload(&client, &id, body).await.expect("resend");
        for r in resp.results {
            match r {
                ReadingResult::Duplicate { seq, event_seq } => {
                    if let Some(acked_seq) = acked.get(&(id.clone(), seq)) {
                        assert_eq!(event_seq, *acked_seq);
                    }
                }
                other => panic!("a resend after the storm should be a duplicate, got {other:?}"),
            }
        }
    }

    // Offline: `custodian log verify` refuses the held data dir, then checks every record once stopped.
    let held = std::process::Command::new(custodian_bin())
        .args(["log", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(!held.status.success());
    assert!(
        String::from_utf8_lossy(&held.stderr).contains("data_dir_in_use"),
        "{held:?}"
    );
    node.kill9();
    let verify = std::process::Command::new(custodian_bin())
        .args(["log", "verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The node may have appended a clock tick or a derived event after the events were read.
    let records: usize = out
        .split(" records, last seq ")
        .next()
        .and_then(|head| head.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {out}"));
    assert!(records >= events.len(), "{out}");
    assert!(
        out.contains(&format!(
            "{records} records, last seq {records}, 0 corrupt, 0 gaps"
        )),
        "{out}"
    );
}

/// One terminal: uploads batches until told to stop, retrying each until the node answers, as a real
/// terminal does across the node's crashes.
async fn client_loop(shared: Arc<Shared>, id: String, seed: u64) {
    let mut term = SimTerminal::new(id.clone(), seed);
    while !shared.stop.load(Ordering::SeqCst) {
        let (body, _) = term.next_body(READINGS_PER_BATCH, &terminal_sim::now_rfc3339());
        shared.bodies.lock().await.push((id.clone(), body.clone()));
        loop {
            let client = NodeClient::new(shared.url.read().await.clone(), None);
            shared.in_flight.fetch_add(1, Ordering::SeqCst);
            let answer = shared.keys.upload(&client, &id, body.clone()).await;
            shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            match answer {
                Ok(resp) => {
                    let mut acked = shared.acked.lock().await;
                    for r in resp.results {
                        let (seq, event_seq) = match r {
                            ReadingResult::Accepted { seq, event_seq }
                            | ReadingResult::Duplicate { seq, event_seq } => (seq, event_seq),
                            other => panic!("unexpected {other:?}"),
                        };
                        if let Some(before) = acked.insert((id.clone(), seq), event_seq) {
                            assert_eq!(
                                before, event_seq,
                                "({id}, {seq}) acknowledged at two sequences"
                            );
                        }
                    }
                    break;
                }
                Err(ClientError::Transport(_)) | Err(ClientError::Status { status: 503, .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("upload failed: {e}"),
            }
        }
    }
}

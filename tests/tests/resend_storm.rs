//! A resend storm: every batch sent three times, concurrently and out of order, by many terminals at once,
//! leaves exactly one event per (terminal, seq), each at the sequence every answer named.

use std::collections::BTreeMap;

use custodian_node::api::ReadingResult;
use custodian_tests::*;
use custodian_tools::terminal_sim::SimTerminal;
use rand::seq::SliceRandom;

const TERMINALS: usize = 8;
const BATCHES_PER_TERMINAL: usize = 12;
const READINGS_PER_BATCH: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_three_times_concurrently_out_of_order_is_stored_once() {
    let (seed, mut rng) = seeded_rng("resend storm");
    let dir = tempfile::tempdir().unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    let ids: Vec<String> = (0..TERMINALS).map(|i| format!("S-{i}")).collect();
    let keys =
        register_terminals(&client, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // Every batch three times, all sends shuffled together.
    let mut sends = Vec::new();
    for (t, id) in ids.iter().enumerate() {
        let mut term = SimTerminal::new(id.clone(), seed ^ t as u64);
        for _ in 0..BATCHES_PER_TERMINAL {
            let (body, _) = term.next_body(READINGS_PER_BATCH, "2026-11-26T04:00:00+08:00");
            for _ in 0..3 {
                sends.push((id.clone(), body.clone()));
            }
        }
    }
    sends.shuffle(&mut rng);
    let mut tasks = Vec::new();
    for (id, body) in sends {
        let client = client.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match keys.upload(&client, &id, body.clone()).await {
                    Ok(r) => return (id, r),
                    Err(custodian_tools::client::ClientError::Status { status: 503, .. }) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("upload failed: {e}"),
                }
            }
        }));
    }
    let mut answered: BTreeMap<(String, u64), Vec<(bool, u64)>> = BTreeMap::new();
    for t in tasks {
        let (id, resp) = t.await.unwrap();
        for r in resp.results {
            match r {
                ReadingResult::Accepted { seq, event_seq } => answered
                    .entry((id.clone(), seq))
                    .or_default()
                    .push((true, event_seq)),
                ReadingResult::Duplicate { seq, event_seq } => answered
                    .entry((id.clone(), seq))
                    .or_default()
                    .push((false, event_seq)),
                other => panic!("unexpected result {other:?}"),
            }
        }
    }
    assert_eq!(
        answered.len(),
        TERMINALS * BATCHES_PER_TERMINAL * READINGS_PER_BATCH
    );
    for (key, answers) in &answered {
        assert_eq!(answers.len(), 3, "{key:?}");
        assert_eq!(
            answers.iter().filter(|(acc, _)| *acc).count(),
            1,
            "{key:?} accepted {answers:?}"
        );
        assert!(
            answers.iter().all(|(_, s)| *s == answers[0].1),
            "{key:?} named different events {answers:?}"
        );
    }
    let events = client.all_events(1).await.unwrap();
    let stored = check_log(&events);
    assert_eq!(stored.len(), answered.len());
    for (key, answers) in &answered {
        assert_eq!(stored.get(key), Some(&answers[0].1), "{key:?}");
    }
    node.stop().await.unwrap();
}

use super::*;
use custodian_events::anomaly::{AnomalyKind, ReadingRef, Severity};
use custodian_events::event::{ClockTicked, UploadSigned};
use custodian_events::{Reading, TerminalId};

fn env(seq: u64, event: Event) -> Envelope {
    Envelope {
        seq,
        stream: event.stream(),
        event_type: event.event_type().into(),
        schema_version: 1,
        recorded_at_ns: 0,
        fingerprint: [0; 32],
        key_id: None,
        caused_by: None,
        event,
    }
}

fn upload(t: &str, body: &str) -> Event {
    Event::UploadSigned(UploadSigned {
        terminal_id: TerminalId::parse(t).unwrap(),
        key_fingerprint: [0; 32],
        body: body.as_bytes().to_vec(),
        signature: vec![1, 2, 3],
    })
}

fn reading(t: &str, seq: u64) -> Event {
    Event::ReadingRecorded(Reading {
        terminal_id: TerminalId::parse(t).unwrap(),
        seq,
        measured_at_ns: 0,
        kind: custodian_events::ReadingKind::Weight,
        value: 1,
        container_id: None,
        stage: None,
        waste_code: None,
        manifest_id: None,
    })
}

fn entry(t: &str, seqs: &[u64]) -> Entry {
    Entry {
        terminal_id: t.into(),
        body: b"{}".to_vec(),
        signature: "AQID".into(),
        seqs: seqs.to_vec(),
    }
}

fn anomaly() -> AnomalyDetected {
    AnomalyDetected::new(
        AnomalyKind::WeightFluctuation,
        Severity::Medium,
        "container:C-1".into(),
        vec![ReadingRef {
            terminal_id: TerminalId::parse("T-1").unwrap(),
            seq: 5,
        }],
        9,
        vec![8, 9],
    )
}

#[test]
fn an_upload_takes_the_readings_appended_with_it() {
    let events = vec![
        env(1, upload("T-1", "a")),
        env(2, reading("T-1", 1)),
        env(3, reading("T-1", 2)),
        env(4, upload("T-2", "b")),
        env(5, reading("T-2", 7)),
        env(6, upload("T-1", "resent")), // every reading a duplicate: nothing to forward
        env(7, Event::ClockTicked(ClockTicked { at_ns: 1 })),
        env(8, Event::AnomalyDetected(anomaly())),
        env(9, upload("T-1", "c")),
        env(10, reading("T-1", 3)),
    ];
    let (fed, checkpoint) = collect(&events, true);
    assert_eq!(checkpoint, Some(10));
    let uploads: Vec<(u64, &str, Vec<u64>)> = fed
        .iter()
        .filter_map(|f| match f {
            Fed::Upload { log_seq, entry } => {
                Some((*log_seq, entry.terminal_id.as_str(), entry.seqs.clone()))
            }
            Fed::Anomaly { .. } => None,
        })
        .collect();
    assert_eq!(
        uploads,
        vec![
            (1, "T-1", vec![1, 2]),
            (4, "T-2", vec![7]),
            (9, "T-1", vec![3])
        ]
    );
    assert!(
        fed.iter()
            .any(|f| matches!(f, Fed::Anomaly { log_seq: 8, .. }))
    );

    // A run cut short may end inside an upload's append: that upload waits for the next run.
    let (fed, checkpoint) = collect(&events, false);
    assert_eq!(checkpoint, Some(8));
    assert!(
        !fed.iter()
            .any(|f| matches!(f, Fed::Upload { log_seq: 9, .. }))
    );
}

fn limits(per_terminal: usize, uploads: usize) -> BatchLimits {
    BatchLimits {
        uploads_max: uploads,
        bytes_max: 1 << 20,
        per_terminal_max: per_terminal,
        anomalies_max: 10,
    }
}

#[test]
fn batches_serve_terminals_round_robin_each_in_order_anomalies_first() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
    let mut items = Vec::new();
    // T-A has a long backlog; T-B and T-C a little live data.
    for i in 0..10 {
        items.push(Fed::Upload {
            log_seq: 100 + i,
            entry: entry("T-A", &[i + 1]),
        });
    }
    items.push(Fed::Upload {
        log_seq: 200,
        entry: entry("T-B", &[1]),
    });
    items.push(Fed::Upload {
        log_seq: 300,
        entry: entry("T-C", &[1]),
    });
    items.push(Fed::Upload {
        log_seq: 301,
        entry: entry("T-C", &[2]),
    });
    items.push(Fed::Anomaly {
        log_seq: 400,
        anomaly: anomaly(),
        recorded_at_ns: 1,
    });
    ob.feed(&items, 400).unwrap();
    assert_eq!(ob.counts().uploads, 13);
    assert_eq!(ob.counts().anomalies, 1);

    let b = ob.next_batch(limits(2, 5)).unwrap();
    assert_eq!(b.anomalies.len(), 1, "the anomaly goes first");
    let got: Vec<(u64, String)> = b
        .uploads
        .iter()
        .map(|(s, e)| (*s, e.terminal_id.clone()))
        .collect();
    // Terminals come in the order of their keyed names, each one's readings together and in order.
    let mut sorted = got.clone();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    assert_eq!(
        sorted,
        vec![
            (100, "T-A".into()),
            (101, "T-A".into()),
            (200, "T-B".into()),
            (300, "T-C".into()),
            (301, "T-C".into())
        ],
        "two of T-A's backlog, and the others"
    );
    for t in ["T-A", "T-B", "T-C"] {
        let at: Vec<usize> = (0..got.len()).filter(|i| got[*i].1 == t).collect();
        assert!(
            at.windows(2).all(|w| w[1] == w[0] + 1),
            "{t} together: {got:?}"
        );
        assert!(
            at.windows(2).all(|w| got[w[0]].0 < got[w[1]].0),
            "{t} in order: {got:?}"
        );
    }
    let done: Vec<(u64, &str)> = b
        .uploads
        .iter()
        .map(|(s, e)| (*s, e.terminal_id.as_str()))
        .collect();
    ob.remove(&done, &[400]).unwrap();
    let b = ob.next_batch(limits(2, 5)).unwrap();
    assert!(b.anomalies.is_empty());
    assert_eq!(
        b.uploads.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![102, 103],
        "T-A's FIFO goes on"
    );
    let done: Vec<(u64, &str)> = b
        .uploads
        .iter()
        .map(|(s, e)| (*s, e.terminal_id.as_str()))
        .collect();
    ob.remove(&done, &[]).unwrap();
    assert_eq!(ob.counts().uploads, 6);
}

#[test]
fn counters_survive_reopen_feeding_twice_counts_once_and_dead_letters_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let items = vec![
        Fed::Upload {
            log_seq: 1,
            entry: entry("T-1", &[1]),
        },
        Fed::Upload {
            log_seq: 2,
            entry: entry("T-1", &[2]),
        },
    ];
    {
        let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
        ob.feed(&items, 2).unwrap();
        ob.feed(&items, 2).unwrap(); // after a crash, the feeder reads the log again
        assert_eq!(ob.counts().uploads, 2);
        ob.dead_letter(1, "T-1", "unknown_terminal", "not registered", 0)
            .unwrap();
        ob.flush().unwrap();
    }
    let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
    let c = ob.counts();
    assert_eq!((c.uploads, c.dead_letters, c.checkpoint), (1, 1, 2));
    assert!(c.bytes > 0);
    assert_eq!(ob.dead_letters(10).unwrap()[0].code, "unknown_terminal");
    assert_eq!(ob.retry_dead_letters().unwrap(), 1);
    assert_eq!(ob.counts().uploads, 2);
    let all: Vec<(u64, &str)> = vec![(1, "T-1"), (2, "T-1")];
    ob.remove(&all, &[]).unwrap();
    let c = ob.counts();
    assert_eq!(
        (c.uploads, c.dead_letters, c.bytes),
        (0, 0, 0),
        "every byte accounted for"
    );
}

#[test]
fn a_full_outbox_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 100, keys()).unwrap();
    assert!(!ob.full());
    let big = Entry {
        body: vec![b'x'; 200],
        ..entry("T-1", &[1])
    };
    ob.feed(
        &[Fed::Upload {
            log_seq: 1,
            entry: big,
        }],
        1,
    )
    .unwrap();
    assert!(ob.full());
}

#[test]
fn discarding_dead_letters_frees_their_bytes_and_leaves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
    let items: Vec<Fed> = (1..=4)
        .map(|seq| Fed::Upload {
            log_seq: seq,
            entry: entry("T-1", &[seq]),
        })
        .collect();
    ob.feed(&items, 4).unwrap();
    let one_upload = ob.counts().bytes / 4;
    for seq in 1..=3 {
        ob.dead_letter(seq, "T-1", "terminal_out_of_scope", "not this edge's", 0)
            .unwrap();
    }
    assert_eq!(ob.counts().dead_letters, 3);
    // Chosen ones: an unknown sequence and one still waiting (4) are left alone; asking twice is once.
    assert_eq!(ob.discard_dead_letters(Some(&[2, 9, 4, 2])).unwrap(), [2]);
    let c = ob.counts();
    assert_eq!((c.dead_letters, c.uploads), (2, 1));
    assert_eq!(
        ob.dead_letters(10)
            .unwrap()
            .iter()
            .map(|l| l.log_seq)
            .collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        ob.discard_dead_letters(Some(&[2])).unwrap(),
        Vec::<u64>::new()
    );
    // The rest.
    assert_eq!(ob.discard_dead_letters(None).unwrap(), [1, 3]);
    let c = ob.counts();
    assert_eq!((c.dead_letters, c.uploads), (0, 1));
    assert!(
        c.bytes <= one_upload + 16,
        "only the waiting upload's bytes are left: {} of {}",
        c.bytes,
        one_upload
    );
    let all: Vec<(u64, &str)> = vec![(4, "T-1")];
    ob.remove(&all, &[]).unwrap();
    assert_eq!(ob.counts().bytes, 0, "every byte accounted for");
    ob.flush().unwrap();
    drop(ob);
    let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
    let c = ob.counts();
    assert_eq!(
        (c.dead_letters, c.uploads, c.bytes),
        (0, 0, 0),
        "after reopening"
    );
}

fn keys() -> OutboxKeys {
    OutboxKeys::new(
        &[9; 32],
        std::sync::Arc::new(custodian_events::crypto::OsEntropy),
    )
}

#[test]
fn an_outbox_of_the_clear_layout_is_rewritten_sealed_and_keeps_what_waits() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an outbox held before it was sealed: the terminal id in the key, the upload in the clear.
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("outbox").unwrap();
        let mut k = b"qT-CLEAR-1\0".to_vec();
        k.extend_from_slice(&7u64.to_be_bytes());
        tree.insert(k, encode(&entry("T-CLEAR-1", &[1, 2])))
            .unwrap();
        tree.insert(b"muploads", &1u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let ob = Outbox::open(dir.path(), 1 << 30, keys()).unwrap();
    let b = ob.next_batch(limits(10, 10)).unwrap();
    assert_eq!(b.uploads.len(), 1);
    assert_eq!(b.uploads[0].0, 7);
    assert_eq!(b.uploads[0].1, entry("T-CLEAR-1", &[1, 2]));
    for kv in ob.tree.iter() {
        let (k, v) = kv.unwrap();
        for bytes in [&k[..], &v[..]] {
            assert!(
                !bytes.windows(9).any(|w| w == b"T-CLEAR-1"),
                "the terminal id rests in the clear"
            );
        }
    }
    ob.remove(&[(7, "T-CLEAR-1")], &[]).unwrap();
    assert_eq!(ob.counts().uploads, 0);
}

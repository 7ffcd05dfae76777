//! Shard ownership with fencing on the three-node JetStream cluster (`scripts/services nats-cluster up`,
//! 127.0.0.1:4301-4303; R3 bucket and stream): a new owner's epoch is higher and its `OwnerChanged` fences
//! the old owner, whose next append fails; a stale claim loses; of two claims on one revision exactly one
//! wins; and the shard's history never interleaves two owners.

use custodian_cluster::ownership::{OwnerChanged, OwnershipError, Shards, ShardsConfig};

async fn shards(tag: &str) -> (Shards, Shards, ShardsConfig) {
    let config = custodian_tests::shards_config(tag);
    // Two nodes, each with its own connection.
    let a = Shards::open(custodian_tests::nats_cluster().await, &config)
        .await
        .unwrap();
    let b = Shards::open(custodian_tests::nats_cluster().await, &config)
        .await
        .unwrap();
    (a, b, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_fences_the_old_one_whose_next_append_fails() {
    let (a, b, config) = shards("fence").await;
    let shard = 7;
    let mut owned_a = a.claim(shard, "node-a", None).await.unwrap();
    for i in 0..3 {
        a.append(&mut owned_a, format!("a-{i}").into_bytes())
            .await
            .unwrap();
    }
    let (owner, epoch_a) = b.owner(shard).await.unwrap().expect("an owner");
    assert_eq!((owner.as_str(), epoch_a), ("node-a", owned_a.epoch));
    // node-a is declared dead (or paused): node-b takes the shard over on the revision it saw.
    let mut owned_b = b.claim(shard, "node-b", Some(epoch_a)).await.unwrap();
    assert!(owned_b.epoch > owned_a.epoch, "epochs only grow");
    b.append(&mut owned_b, b"b-0".to_vec()).await.unwrap();
    // node-a wakes up and writes: refused, it must stop.
    let late = a.append(&mut owned_a, b"a-late".to_vec()).await;
    assert!(
        matches!(late, Err(OwnershipError::Fenced { shard: 7, .. })),
        "{late:?}"
    );
    // A stale claim (node-a trying to take the shard back on its old revision) loses.
    assert_eq!(
        a.claim(shard, "node-a", Some(epoch_a)).await.unwrap_err(),
        OwnershipError::Lost { shard }
    );
    // The history: node-a's claim and writes, then node-b's claim and write; nothing of node-a after it.
    let history: Vec<String> = b
        .history(shard)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, p)| match serde_json::from_slice::<OwnerChanged>(&p) {
            Ok(c) => format!("owner {} epoch {}", c.node, c.epoch),
            Err(_) => String::from_utf8(p).unwrap(),
        })
        .collect();
    assert_eq!(
        history,
        vec![
            format!("owner node-a epoch {}", owned_a.epoch),
            "a-0".into(),
            "a-1".into(),
            "a-2".into(),
            format!("owner node-b epoch {}", owned_b.epoch),
            "b-0".into(),
        ]
    );
    a.delete(&config).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_claims_on_one_revision_exactly_one_wins() {
    let (a, b, config) = shards("race").await;
    for shard in 0..8u16 {
        let first = a.claim(shard, "node-0", None).await.unwrap();
        let (ra, rb) = tokio::join!(
            a.claim(shard, "node-a", Some(first.epoch)),
            b.claim(shard, "node-b", Some(first.epoch))
        );
        let winners = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "shard {shard}: {ra:?} {rb:?}");
        let loser = if ra.is_ok() { &rb } else { &ra };
        assert_eq!(loser.as_ref().unwrap_err(), &OwnershipError::Lost { shard });
        let winner = ra.as_ref().or(rb.as_ref()).unwrap();
        assert_eq!(
            a.owner(shard).await.unwrap(),
            Some((winner.node.clone(), winner.epoch))
        );
        // Two claims of an ownerless shard: one wins too.
        let fresh = 100 + shard;
        let (ra, rb) = tokio::join!(
            a.claim(fresh, "node-a", None),
            b.claim(fresh, "node-b", None)
        );
        assert_eq!([&ra, &rb].iter().filter(|r| r.is_ok()).count(), 1);
    }
    a.delete(&config).await.unwrap();
}

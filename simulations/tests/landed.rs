//! `Shards::landed` on the simulated NATS: after an append whose answer was lost, an owner carries on from
//! the message only when it surely is its own — the owner record still at its epoch and the subject's
//! next message its payload byte for byte — and lets the shard go otherwise.

use std::sync::Arc;

use bytes::Bytes;
use custodian_cluster::bus::Bus;
use custodian_cluster::ownership::Shards;
use custodian_simulations::net::{NetConfig, SimNet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_carries_on_from_its_own_landed_append_and_from_nothing_else() {
    let net = SimNet::new(
        7,
        NetConfig {
            p_ack_lost: 0.0,
            p_message_lost: 0.0,
            ..NetConfig::default()
        },
    );
    let bus_a: Arc<dyn Bus> = net.connect("n1");
    let bus_b: Arc<dyn Bus> = net.connect("n2");
    let (a, b) = (Shards::on(bus_a, "sim.log"), Shards::on(bus_b, "sim.log"));
    let mut owned = a.claim(3, "n1", None).await.expect("n1 claims shard 3");
    let ours = Bytes::from_static(b"records of n1");

    // Nothing landed after what the owner knows: not landed (yet).
    let mut before = owned.clone();
    assert_eq!(a.landed(&mut before, &ours).await, None);
    assert_eq!(before.last_seq, owned.last_seq, "unchanged when not landed");

    // The append lands, but its answer is lost (the owner still knows the sequence before it).
    let seq = a
        .append(&mut owned, ours.clone())
        .await
        .expect("the append");
    let mut lost = before.clone();
    assert_eq!(
        a.landed(&mut lost, &Bytes::from_static(b"other records"))
            .await,
        None,
        "another payload is not this append"
    );
    assert_eq!(
        a.landed(&mut lost, &ours).await,
        Some(seq),
        "its own message"
    );
    assert_eq!(lost.last_seq, seq, "and it carries on from there");
    // Which is right: its next append is not fenced.
    let next = a
        .append(&mut lost, Bytes::from_static(b"more records of n1"))
        .await
        .expect("the next append after a recovered answer");
    assert!(next > seq);

    // A newer owner: the record is at another epoch, so nothing is recognised any more.
    let mut stale = lost.clone();
    stale.last_seq = seq;
    let _n2 = b
        .claim(3, "n2", Some(owned.epoch))
        .await
        .expect("n2 takes shard 3 over");
    assert_eq!(
        a.landed(&mut stale, &Bytes::from_static(b"more records of n1"))
            .await,
        None,
        "not the owner any more"
    );
    assert_eq!(stale.last_seq, seq);
}

//! Membership over the real NATS server (127.0.0.1:4222, core NATS): three nodes see each other; a node
//! that stops is suspected and declared dead within the thresholds; a node cut off from NATS (through a
//! TCP proxy that stops forwarding) fences itself before the others declare it dead, and comes back when
//! the link heals.

use std::time::{Duration, Instant};

use custodian_cluster::membership::{Change, Membership, Status, Thresholds};

const NATS: &str = "127.0.0.1:4222";

fn prefix(test: &str) -> String {
    format!("custodian.test.{}", custodian_tests::unique_name(test))
}

async fn client(addr: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .ping_interval(Duration::from_secs(30))
        .connect(addr)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot reach NATS at {addr} ({e}); start it with scripts/services up")
        })
}

async fn join(prefix: &str, node: &str, addr: &str) -> Membership {
    Membership::start(client(addr).await, prefix, node, Thresholds::default())
        .await
        .unwrap()
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Waits (5 s at most) until each of the three members sees three alive and none is fenced.
async fn all_see_three_alive(members: [&Membership; 3]) {
    wait_until(
        "all see three alive, none fenced",
        Duration::from_secs(5),
        || {
            members
                .iter()
                .all(|m| m.view().alive().len() == 3 && !m.view().fenced)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_suspected_then_dead_within_the_thresholds() {
    let p = prefix("stop");
    let a = join(&p, "a", NATS).await;
    let b = join(&p, "b", NATS).await;
    let c = join(&p, "c", NATS).await;
    all_see_three_alive([&a, &b, &c]).await;
    let mut changes = a.changes();
    c.stop();
    let stopped = Instant::now();
    let th = Thresholds::default();
    let (mut suspected, mut dead) = (None, None);
    while dead.is_none() {
        let change = tokio::time::timeout(Duration::from_secs(5), changes.recv())
            .await
            .expect("a change within 5 s")
            .unwrap();
        match change {
            Change::Suspected(n) if n == "c" => suspected = Some(stopped.elapsed()),
            Change::Dead(n) if n == "c" => dead = Some(stopped.elapsed()),
            _ => {}
        }
    }
    let (suspected, dead) = (suspected.expect("suspected before dead"), dead.unwrap());
    eprintln!("c suspected after {suspected:?}, dead after {dead:?}");
    // Silence is counted from the last heartbeat heard (up to one interval before the stop), and the
    // check runs once per interval.
    assert!(suspected + th.interval >= th.suspect_after, "{suspected:?}");
    assert!(dead + th.interval >= th.dead_after, "{dead:?}");
    assert!(dead <= th.dead_after + th.interval * 3, "{dead:?}");
    wait_until("b sees c dead", Duration::from_secs(2), || {
        b.view().peers.get("c") == Some(&Status::Dead)
    })
    .await;
    assert_eq!(a.view().alive(), vec!["a".to_owned(), "b".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_fences_itself_before_the_others_declare_it_dead_and_comes_back() {
    let p = prefix("cut");
    let link = custodian_tests::cluster::Proxy::start(NATS).await;
    let a = join(&p, "a", NATS).await;
    let b = join(&p, "b", NATS).await;
    let c = join(&p, "c", &link.url).await;
    all_see_three_alive([&a, &b, &c]).await;
    let mut c_changes = c.changes();
    let mut a_changes = a.changes();
    link.cut(true);
    let cut_at = Instant::now();
    let th = Thresholds::default();
    let fenced = tokio::spawn(async move {
        loop {
            if c_changes.recv().await.unwrap() == Change::Fenced {
                return Instant::now();
            }
        }
    });
    let dead = tokio::spawn(async move {
        loop {
            if a_changes.recv().await.unwrap() == Change::Dead("c".into()) {
                return Instant::now();
            }
        }
    });
    let fenced = tokio::time::timeout(Duration::from_secs(5), fenced)
        .await
        .expect("c fenced itself within 5 s")
        .unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(5), dead)
        .await
        .expect("a declared c dead within 5 s")
        .unwrap();
    eprintln!(
        "cut: c fenced after {:?}, a declared it dead after {:?}",
        fenced - cut_at,
        dead - cut_at
    );
    assert!(fenced < dead, "c must fence itself before a may take over");
    // Nominally dead_after − fence_after (500 ms) apart; the checks run once per interval on each side.
    assert!(
        dead - fenced + th.interval * 2 >= th.dead_after - th.fence_after,
        "{:?}",
        dead - fenced
    );
    assert!(c.view().fenced);
    // While cut off, c hears nobody: it suspects them too, and owns nothing.
    link.cut(false);
    let healed = wait_until(
        "c unfenced and all alive again",
        Duration::from_secs(10),
        || !c.view().fenced && a.view().peers.get("c") == Some(&Status::Alive),
    )
    .await;
    eprintln!("healed: c back after {healed:?}");
}

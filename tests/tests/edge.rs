//! An edge node and the platform, as real processes on loopback: the edge keeps what its terminals upload
//! while the platform is down, forwards it when the platform is back (every reading exactly once, each
//! terminal's in order, the edge's anomalies ahead of the backlog), survives SIGKILL in the middle of
//! draining, waits at most 30 s between retries, refuses uploads with 503 `outbox_full` when its outbox is
//! full without losing what it holds, and takes MQTT uploads.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use custodian_tests::edge::*;
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::{enterprise_body, upload_body};
use serde_json::{Value, json};

/// 72 hours of readings, one every 10 minutes, 12 to an upload (2 hours).
const HOURS: i64 = 72;
const READING_EVERY_S: i64 = 600;
const PER_UPLOAD: usize = 12;

/// A site: enterprise E-0 with `terminals` signing terminals, and an edge registered for it.
struct Site {
    terminals: Vec<String>,
    keys: TerminalKeys,
    edge_id: String,
}

async fn register_site(cloud: &NodeClient, edge_dir: &Path, terminals: usize, tag: &str) -> Site {
    cloud
        .register("/v1/enterprises", &enterprise_body(0))
        .await
        .unwrap();
    let mut keys = TerminalKeys::default();
    let ids: Vec<String> = (0..terminals).map(|i| format!("{tag}-T{i}")).collect();
    for id in &ids {
        keys.register(cloud, id, 0, 7).await;
    }
    let edge_id = format!("EDGE-{tag}-{}", rand::random::<u32>());
    let (status, v) = cloud
        .post_admin(
            "/v1/edges",
            &json!({"id": edge_id, "public_key_pem": public_key_of_edge(edge_dir), "enterprise_ids": ["E-0"]}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{v}");
    Site {
        terminals: ids,
        keys,
        edge_id,
    }
}

/// The upload `n` (from 0) of a terminal: `PER_UPLOAD` readings 10 minutes apart, seqs from 1; drum weights
/// steady except, when `jump`, a 50 % jump at the 5th upload's first reading (a weight-fluctuation anomaly).
fn nth_upload(terminal: &str, n: usize, start_s: i64, jump: bool) -> (Vec<u8>, Vec<u64>) {
    let mut readings = Vec::new();
    let mut seqs = Vec::new();
    for i in 0..PER_UPLOAD {
        let k = n * PER_UPLOAD + i;
        let seq = k as u64 + 1;
        let kg = if jump && k >= 4 * PER_UPLOAD {
            150.0
        } else {
            100.0 + (k % 3) as f64 * 0.1
        };
        readings.push(format!(
            r#"{{"seq":{seq},"measured_at":"{}","kind":"weight","value":{kg:.1},"unit":"kg","container_id":"{terminal}-C1","stage":"storage_in","waste_code":"HW08"}}"#,
            rfc3339(start_s + k as i64 * READING_EVERY_S)
        ));
        seqs.push(seq);
    }
    (upload_body(terminal, &readings), seqs)
}

/// Every reading of every terminal once in the platform's log, each terminal's in seq order; returns the
/// platform's events.
async fn check_delivered(cloud: &NodeClient, site: &Site, per_terminal: u64) -> Vec<Value> {
    let events = cloud.all_events(1).await.unwrap();
    let stored = check_log(&events);
    let mut order: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &events {
        if e["type"] == "ReadingRecorded" {
            order
                .entry(e["payload"]["terminal_id"].as_str().unwrap())
                .or_default()
                .push(e["payload"]["seq"].as_u64().unwrap());
        }
    }
    for t in &site.terminals {
        let seqs = order.get(t.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            seqs,
            (1..=per_terminal).collect::<Vec<_>>(),
            "terminal {t}: the platform holds its readings exactly once and in order"
        );
    }
    assert_eq!(
        stored.len() as u64,
        per_terminal * site.terminals.len() as u64
    );
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_72_hour_outage_arrives_exactly_once_in_order_even_with_sigkill_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let (cloud_dir, edge_dir) = (dir.path().join("cloud"), dir.path().join("edge"));
    let (cloud_port, edge_port) = (free_port(), free_port());
    let cloud_url = format!("http://127.0.0.1:{cloud_port}");
    let cloud = NodeProcess::spawn(&cloud_dir, cloud_port, &dir.path().join("cloud.log"));
    wait_ready(&cloud.client()).await;
    let site = register_site(&cloud.client(), &edge_dir, 20, "O").await;
    // Small batches, one upload per terminal each: the drain takes long enough to be killed in.
    let env = [
        ("CUSTODIAN_EDGE__BATCH_UPLOADS_MAX", "20"),
        ("CUSTODIAN_EDGE__PER_TERMINAL_UPLOADS_MAX", "1"),
        ("CUSTODIAN_EDGE__RETRY_CAP_MS", "1000"),
        // No clock ticks: the time-driven rules (a terminal silent for 72 hours) would add anomalies of
        // their own to the one this test follows.
        ("CUSTODIAN_DERIVE__TICK_INTERVAL_S", "0"),
    ];
    let edge_log = dir.path().join("edge.log");
    // The same edge each time: its data directory, port, platform, id, log and settings.
    let spawn = || {
        spawn_edge(
            &edge_dir,
            edge_port,
            &cloud_url,
            &site.edge_id,
            &edge_log,
            &[],
            &env,
        )
    };
    let edge = spawn();
    wait_ready(&edge.client()).await;
    let e = edge.client();
    wait_registrations(&e).await;

    // The platform goes away; 72 hours of readings arrive at the edge.
    cloud.kill9();
    let uploads_per_terminal = (HOURS * 3600 / READING_EVERY_S) as usize / PER_UPLOAD;
    let start_s = time::OffsetDateTime::now_utc().unix_timestamp() - HOURS * 3600;
    for n in 0..uploads_per_terminal {
        for (i, t) in site.terminals.iter().enumerate() {
            let (body, seqs) = nth_upload(t, n, start_s, i == 0);
            let r = site
                .keys
                .upload(&e, t, body)
                .await
                .expect("the edge takes uploads while the platform is down");
            assert!(
                r.results
                    .iter()
                    .all(|x| matches!(x, custodian_node::api::ReadingResult::Accepted { .. })),
                "{seqs:?}: {r:?}"
            );
        }
    }
    let total_uploads = (uploads_per_terminal * site.terminals.len()) as u64;
    wait_for(
        "the outbox to hold every upload",
        Duration::from_secs(30),
        async || outbox(&e).await["outbox"]["uploads"].as_u64() == Some(total_uploads),
    )
    .await;
    let held = outbox(&e).await;
    assert_eq!(
        held["outbox"]["anomalies"], 1,
        "the jump was detected at the edge: {held}"
    );
    let local = e.get_admin("/v1/anomalies").await.unwrap();
    assert_eq!(local["items"][0]["kind"], "weight_fluctuation", "{local}");
    let bytes_per_reading = held["outbox"]["bytes"].as_u64().unwrap() as f64
        / (total_uploads as f64 * PER_UPLOAD as f64);
    println!(
        "outbox: {} uploads, {bytes_per_reading:.0} bytes per buffered reading ({PER_UPLOAD} per upload)",
        total_uploads
    );

    // The platform is back; the edge drains, and is killed in the middle of it.
    let cloud = NodeProcess::spawn(&cloud_dir, cloud_port, &dir.path().join("cloud.log"));
    wait_ready(&cloud.client()).await;
    wait_for(
        "the drain to be under way",
        Duration::from_secs(120),
        async || {
            let left = outbox(&e).await["outbox"]["uploads"]
                .as_u64()
                .unwrap_or(u64::MAX);
            left < total_uploads * 2 / 3
        },
    )
    .await;
    let left_at_kill = outbox(&e).await["outbox"]["uploads"].as_u64().unwrap();
    edge.kill9();
    assert!(
        left_at_kill > 0,
        "the drain finished before the kill; make batches smaller"
    );
    let edge = spawn();
    wait_ready(&edge.client()).await;
    let e = edge.client();
    wait_for(
        "the outbox to drain",
        Duration::from_secs(180),
        async || {
            let o = outbox(&e).await;
            o["outbox"]["uploads"] == 0 && o["outbox"]["anomalies"] == 0
        },
    )
    .await;
    assert_eq!(outbox(&e).await["outbox"]["dead_letters"], 0);

    let c = cloud.client();
    let per_terminal = (uploads_per_terminal * PER_UPLOAD) as u64;
    wait_for(
        "the platform to derive the anomaly itself",
        Duration::from_secs(60),
        async || {
            c.events(1, None, &["AnomalyDetected"])
                .await
                .unwrap()
                .iter()
                .any(|a| a["payload"]["kind"] == "weight_fluctuation")
        },
    )
    .await;
    let events = check_delivered(&c, &site, per_terminal).await;
    // The edge's report went ahead of the backlog, and is the anomaly the platform then derived.
    let reported = events
        .iter()
        .find(|e| e["type"] == "AnomalyReported")
        .expect("the edge reported its anomaly");
    let first_reading = events
        .iter()
        .find(|e| e["type"] == "ReadingRecorded")
        .unwrap();
    assert!(
        reported["event_seq"].as_u64() < first_reading["event_seq"].as_u64(),
        "the anomaly jumped the queue"
    );
    let derived = events
        .iter()
        .find(|e| e["type"] == "AnomalyDetected" && e["payload"]["kind"] == "weight_fluctuation")
        .unwrap();
    assert_eq!(
        reported["payload"]["anomaly"]["anomaly_id"],
        derived["payload"]["anomaly_id"]
    );
    assert_eq!(reported["payload"]["edge_id"], site.edge_id.as_str());
    println!(
        "killed the edge with {left_at_kill} of {total_uploads} uploads left; all {} readings arrived once, in order",
        per_terminal * 20
    );
}

/// A platform that answers every batch 503, recording when each attempt came.
async fn busy_platform(
    key_pem: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>) {
    use axum::routing::{get, post};
    let attempts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let app = axum::Router::new()
        .route(
            "/v1/edge/public-key",
            get(move || async move { axum::Json(json!({"public_key_pem": key_pem})) }),
        )
        .route(
            "/v1/edge/batches",
            post(move || async move {
                seen.lock().unwrap().push(Instant::now());
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(json!({"code": "overloaded", "message": "busy"})),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_edge_retries_a_busy_platform_never_more_than_30_s_apart() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = dir.path().join("edge");
    // The platform registers the site, then the edge is seeded from its registrations file: it never
    // reaches the platform itself.
    let (cloud, c) = start_node(&dir.path().join("cloud"), |_| {}).await;
    let site = register_site(&c, &edge_dir, 1, "R").await;
    let seed = c
        .get_admin(&format!("/v1/admin/edges/{}/registrations", site.edge_id))
        .await
        .unwrap();
    let seed_file = dir.path().join("registrations.json");
    std::fs::write(&seed_file, seed.to_string()).unwrap();
    let platform_key = c.get_admin("/v1/edge/public-key").await.unwrap()["public_key_pem"]
        .as_str()
        .unwrap()
        .to_owned();
    cloud.stop().await.unwrap();

    let (upstream, attempts) = busy_platform(platform_key).await;
    let (edge, e) = start_edge(&edge_dir, &upstream, &site.edge_id, |c| {
        c.edge.seed_registrations_file = Some(seed_file.clone());
    })
    .await;
    let t = &site.terminals[0];
    let r = site
        .keys
        .upload(&e, t, one_reading(t, 1, 60))
        .await
        .expect("the seeded edge knows its terminal");
    assert_accepted(&r, "the seeded edge's upload");

    // Defaults: 200 ms doubling to the 30 s cap, jittered in [d/2, d]. After 8 failures the ceiling is
    // the cap; watch four intervals beyond that.
    let started = Instant::now();
    while attempts.lock().unwrap().len() < 13 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the edge stopped retrying"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let times = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "retry intervals: {:?}",
        gaps.iter()
            .map(|g| format!("{:.1}s", g.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    for g in &gaps {
        assert!(
            *g <= Duration::from_millis(30_500),
            "a retry waited {g:?}, over the 30 s cap"
        );
    }
    for g in &gaps[8..] {
        assert!(
            *g >= Duration::from_secs(14),
            "the backoff had grown to its cap by now, but waited only {g:?}"
        );
    }
    let o = outbox(&e).await;
    assert_eq!(
        o["outbox"]["uploads"], 1,
        "nothing is dropped while the platform is busy: {o}"
    );
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_answers_503_outbox_full_and_loses_nothing_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = dir.path().join("edge");
    let cloud_port = free_port();
    let cloud_dir = dir.path().join("cloud");
    let listen = |c: &mut custodian_node::config::Config| {
        c.listen = format!("127.0.0.1:{cloud_port}").parse().unwrap()
    };
    let (cloud, c) = start_node(&cloud_dir, listen).await;
    let site = register_site(&c, &edge_dir, 2, "F").await;
    let (edge, e) = start_edge(&edge_dir, c.base(), &site.edge_id, |c| {
        c.edge.outbox_bytes_max = 8 * 1024;
        c.edge.retry_cap_ms = 500;
    })
    .await;
    wait_registrations(&e).await;
    cloud.stop().await.unwrap();

    let mut accepted: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = None;
    'fill: for seq in 1..=1_000u64 {
        for t in &site.terminals {
            match site.keys.upload(&e, t, one_reading(t, seq, 3_600)).await {
                Ok(_) => *accepted.entry(t.clone()).or_default() = seq,
                Err(custodian_tools::client::ClientError::Status { status, body }) => {
                    refused = Some((status, body));
                    break 'fill;
                }
                Err(other) => panic!("{other:?}"),
            }
            // Let the feeder keep up, so the limit is met near where it lies.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (status, body) = refused.expect("the outbox filled up");
    assert_eq!(status, 503);
    assert_eq!(body["code"], "outbox_full", "{body}");
    let held = outbox(&e).await;
    println!("outbox full after {accepted:?}: {held}");
    assert!(held["outbox"]["bytes"].as_u64() >= Some(8 * 1024));

    // The platform is back: everything the edge acknowledged arrives, and uploads are taken again.
    let (cloud, c) = start_node(&cloud_dir, listen).await;
    wait_for("the outbox to drain", Duration::from_secs(60), async || {
        outbox(&e).await["outbox"]["uploads"] == 0
    })
    .await;
    let stored = check_log(&c.all_events(1).await.unwrap());
    for (t, last) in &accepted {
        for seq in 1..=*last {
            assert!(
                stored.contains_key(&(t.clone(), seq)),
                "{t}/{seq} was acknowledged by the edge but never arrived"
            );
        }
    }
    let t = &site.terminals[0];
    let next = accepted[t] + 1;
    site.keys
        .upload(&e, t, one_reading(t, next, 60))
        .await
        .expect("with room again, uploads are taken");
    edge.stop().await.unwrap();
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_uploads_are_acknowledged_once_durable_answered_and_forwarded() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let dir = tempfile::tempdir().unwrap();
    let edge_dir = dir.path().join("edge");
    let (cloud, c) = start_node(&dir.path().join("cloud"), |_| {}).await;
    let tag = format!("M{}", rand::random::<u16>());
    let site = register_site(&c, &edge_dir, 1, &tag).await;
    let (edge, e) = start_edge(&edge_dir, c.base(), &site.edge_id, |c| {
        c.edge.mqtt_url = Some("mqtt://127.0.0.1:1883".into());
    })
    .await;
    wait_registrations(&e).await;

    let t = site.terminals[0].clone();
    let mut opts = MqttOptions::new(format!("test-terminal-{tag}"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe(
            custodian_node::edge::mqtt::results_topic(&t),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    let mut results = Vec::new();
    let mut published = 0u64;
    let until = Instant::now() + Duration::from_secs(60);
    while results.len() < 3 {
        assert!(Instant::now() < until, "no MQTT results; got {results:?}");
        let ev = tokio::time::timeout(Duration::from_secs(5), events.poll()).await;
        match ev {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => {
                // Two uploads, then the first again: the edge answers it as a duplicate.
                for seq in [1u64, 2, 1] {
                    let body = one_reading(&t, seq, 60 - seq as i64);
                    let payload = json!({
                        "body_b64": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &body),
                        "signature": site.keys.sign(&t, &body),
                    });
                    client
                        .publish(
                            custodian_node::edge::mqtt::uploads_topic(&t),
                            QoS::AtLeastOnce,
                            false,
                            payload.to_string(),
                        )
                        .await
                        .unwrap();
                    published += 1;
                }
            }
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                results.push(serde_json::from_slice::<Value>(&p.payload).unwrap());
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => panic!("the test's MQTT client failed: {err}"),
            Err(_) => {}
        }
    }
    assert_eq!(published, 3);
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["results"][0]["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "accepted", "duplicate"],
        "{results:?}"
    );
    wait_for(
        "the platform to hold both readings",
        Duration::from_secs(30),
        async || {
            let stored = check_log(&c.all_events(1).await.unwrap());
            stored.contains_key(&(t.clone(), 1)) && stored.contains_key(&(t.clone(), 2))
        },
    )
    .await;
    edge.stop().await.unwrap();
    cloud.stop().await.unwrap();
}

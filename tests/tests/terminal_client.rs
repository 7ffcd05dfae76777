//! The reference terminal client (`custodian_tools::terminal_client` and `custodian terminal`) against a real
//! node: batches go through signed, a resend is answered `duplicate` and stored once, and the client gets
//! its readings through a node that is down at first or whose answer is lost on the way.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custodian_events::crypto::Sm2KeyPair;
use custodian_tests::*;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_client::{FlushReport, Progress, ReadingInput, TerminalClient};
use custodian_tools::terminal_sim::terminal_body;
use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};

/// `n` weighings of a drum that fills up, a second apart: the same readings every time it is called.
fn readings(n: u64) -> Vec<ReadingInput> {
    (0..n)
        .map(|i| {
            let at = format!("2026-11-26T04:{:02}:{:02}+08:00", i / 60, i % 60);
            let mut r = ReadingInput::weight_kg(at, 100.0 + i as f64 * 0.5);
            r.container_id = Some("C-9".into());
            r.stage = Some("generation".into());
            r.waste_code = Some("HW08".into());
            r
        })
        .collect()
}

/// A client for `id` with `readings` pushed, numbered from 1.
fn client_with(
    url: &str,
    id: &str,
    key: &Sm2KeyPair,
    readings: Vec<ReadingInput>,
) -> TerminalClient {
    let mut c = TerminalClient::new(url, id, key.clone())
        .with_batch_max(100)
        // A test must end: no batch takes longer than this to go through when the node works.
        .with_give_up_after(Duration::from_secs(30));
    for r in readings {
        c.push(r).unwrap();
    }
    c
}

/// The seqs of terminal `id` in the node's log, each checked to be stored once.
async fn stored_seqs(client: &NodeClient, id: &str) -> Vec<u64> {
    let events = client.all_events(1).await.unwrap();
    check_log(&events)
        .into_keys()
        .filter(|(t, _)| t == id)
        .map(|(_, seq)| seq)
        .collect()
}

fn counts(r: &FlushReport) -> (u64, u64, u64) {
    (r.accepted, r.duplicate, r.rejected)
}

#[tokio::test]
async fn uploads_in_batches_and_a_resend_is_answered_duplicate() {
    // Proves: 250 readings go in three signed batches and are accepted; the same readings again from a new
    // client (same seqs) are all answered duplicate; the log holds each once.
    let dir = tempfile::tempdir().unwrap();
    let (node, client, keys) = start_node_with_terminals(dir.path(), &["T-1"]).await;
    let key = &keys.0["T-1"];

    let mut first = client_with(&node.url(), "T-1", key, readings(250));
    let report = first.flush().await.unwrap();
    assert_eq!(counts(&report), (250, 0, 0));
    assert_eq!((report.batches, report.retries), (3, 0));
    assert_eq!((first.pending(), first.next_seq()), (0, 251));

    let mut again = client_with(&node.url(), "T-1", key, readings(250));
    let report = again.flush().await.unwrap();
    assert_eq!(counts(&report), (0, 250, 0));
    assert_eq!(report.batches, 3);

    assert_eq!(
        stored_seqs(&client, "T-1").await,
        (1..=250).collect::<Vec<_>>()
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn delivers_through_a_node_that_is_not_listening_yet() {
    // Proves: while nothing listens at the node's address the client retries, and once the node is back
    // every reading arrives once.
    let dir = tempfile::tempdir().unwrap();
    let (node, _, keys) = start_node_with_terminals(dir.path(), &["T-1"]).await;
    let url = node.url();
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    node.stop().await.unwrap();

    let retries = Arc::new(AtomicU64::new(0));
    let counted = retries.clone();
    let mut c = client_with(&url, "T-1", &keys.0["T-1"], readings(150)).with_progress(move |p| {
        if let Progress::Retrying { wait, .. } = p {
            assert!(*wait <= Duration::from_secs(30));
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let flushing = tokio::spawn(async move { c.flush().await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while retries.load(Ordering::Relaxed) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client did not retry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (node, client) = start_node(dir.path(), |c| c.listen = addr).await;
    let report = tokio::time::timeout(Duration::from_secs(40), flushing)
        .await
        .expect("the flush ends once the node is back")
        .unwrap()
        .unwrap();
    assert_eq!(counts(&report), (150, 0, 0));
    assert!(report.retries >= 2, "{report:?}");
    assert_eq!(report.retries, retries.load(Ordering::Relaxed));
    assert_eq!(
        stored_seqs(&client, "T-1").await,
        (1..=150).collect::<Vec<_>>()
    );
    node.stop().await.unwrap();
}

/// A TCP proxy to `upstream` that passes its first connection's request on but closes that connection as
/// soon as the answer starts (the node has stored the upload; the client never hears so). Later connections
/// pass both ways.
async fn answer_losing_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut outbound = TcpStream::connect(upstream).await.unwrap();
            let lose_answer = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                if lose_answer {
                    let (mut from_client, _to_client) = inbound.split();
                    let (mut from_node, mut to_node) = outbound.split();
                    let mut byte = [0u8; 1];
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_node) => {}
                        _ = from_node.read(&mut byte) => {}
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_lost_answer_is_resent_and_answered_duplicate() {
    // Proves: when the answer to a stored upload is lost, the client sends the same batch again and the
    // node answers duplicate; nothing is stored twice.
    let dir = tempfile::tempdir().unwrap();
    let (node, client, keys) = start_node_with_terminals(dir.path(), &["T-1"]).await;
    let upstream: SocketAddr = node.url().trim_start_matches("http://").parse().unwrap();
    let proxy = answer_losing_proxy(upstream).await;

    let mut c = client_with(
        &format!("http://{proxy}"),
        "T-1",
        &keys.0["T-1"],
        readings(150),
    );
    let report = c.flush().await.unwrap();
    assert_eq!(counts(&report), (50, 100, 0));
    assert_eq!((report.batches, report.retries), (2, 1));
    assert_eq!(
        stored_seqs(&client, "T-1").await,
        (1..=150).collect::<Vec<_>>()
    );
    node.stop().await.unwrap();
}

/// Runs `custodian terminal ARGS`: its exit success, stdout and stderr.
async fn terminal(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(custodian_bin())
        .arg("terminal")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `custodian terminal --url URL --id ID --key KEY REST` (an upload as terminal `id`): as [`terminal`].
async fn upload_as(url: &str, id: &str, key: &Path, rest: &[&str]) -> (bool, String, String) {
    let mut args = vec!["--url", url, "--id", id, "--key", path(key)];
    args.extend_from_slice(rest);
    terminal(&args).await
}

/// The summary line of a `custodian terminal` run.
fn summary(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_a_key_and_uploads_simulated_and_file_readings() {
    // Proves: `custodian terminal --keygen` makes a key the node verifies; `--simulate` and `--readings`
    // upload with a summary line; a resend of the file is duplicate; an OpenSSL key works; a refusal fails
    // the command naming its code.
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (node, client) = start_node(dir.path(), |_| {}).await;
    register_terminals(&client, &[]).await;
    let url = node.url();

    let key = work.path().join("t.key.pem");
    let (ok, public_pem, err) = terminal(&["--keygen", "--key", path(&key)]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = terminal(&["--keygen", "--key", path(&key)]).await;
    assert!(!ok && err.contains("must not exist"), "{err}");
    client
        .register(
            "/v1/terminals",
            &terminal_body("T-CLI", 0, Some(&public_pem)),
        )
        .await
        .unwrap();

    let (ok, out, err) =
        upload_as(&url, "T-CLI", &key, &["--simulate", "25", "--batch", "10"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        summary(&out),
        serde_json::json!({"accepted": 25, "duplicate": 0, "rejected": 0})
    );
    assert!(err.contains("T-CLI readings 21..=25: 5 accepted"), "{err}");

    let file = work.path().join("readings.ndjson");
    let lines: Vec<String> = readings(3)
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let from_26 = ["--readings", path(&file), "--first-seq", "26"];
    let upload_file = || upload_as(&url, "T-CLI", &key, &from_26);
    let (ok, out, err) = upload_file().await;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["accepted"], 3);
    let (ok, out, err) = upload_file().await;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["duplicate"], 3);
    let (ok, out, err) = upload_as(
        &url,
        "T-CLI",
        &key,
        &[
            "--simulate",
            "3",
            "--interval-s",
            "0.1",
            "--first-seq",
            "29",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["accepted"], 3);
    assert_eq!(
        stored_seqs(&client, "T-CLI").await,
        (1..=31).collect::<Vec<_>>()
    );

    let openssl_key = work.path().join("openssl.key.pem");
    run_ok(
        std::process::Command::new("openssl").args([
            "genpkey",
            "-algorithm",
            "SM2",
            "-out",
            path(&openssl_key),
        ]),
        b"",
    );
    let openssl_pub = run_ok(
        std::process::Command::new("openssl").args(["pkey", "-pubout", "-in", path(&openssl_key)]),
        b"",
    );
    client
        .register(
            "/v1/terminals",
            &terminal_body("T-SSL", 0, Some(std::str::from_utf8(&openssl_pub).unwrap())),
        )
        .await
        .unwrap();
    let (ok, out, err) = upload_as(&url, "T-SSL", &openssl_key, &["--readings", path(&file)]).await;
    assert!(ok, "{err}");
    assert_eq!(summary(&out)["accepted"], 3);

    let (ok, out, err) = upload_as(&url, "T-NOBODY", &key, &["--readings", path(&file)]).await;
    assert!(!ok);
    assert!(err.contains("422 unknown_terminal"), "{err}");
    assert_eq!(summary(&out)["accepted"], 0);
    node.stop().await.unwrap();
}

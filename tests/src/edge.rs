//! The edge harness `tests/tests/edge.rs` and `tests/tests/edge_refusals.rs` share: a `custodian edge`
//! process or an in-process edge, its key, its outbox, and the single-reading uploads its terminals send.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use custodian_node::config::Config;
use custodian_node::server::Node;
use custodian_tools::client::NodeClient;
use custodian_tools::terminal_sim::upload_body;
use serde_json::Value;

use crate::{ADMIN_TOKEN, NodeProcess, custodian_bin, run_ok};

/// Starts `custodian edge` on `port` with `data_dir`, forwarding to `upstream` as `edge_id`, with
/// `extra_args` and `env`; its log goes to `log`.
pub fn spawn_edge(
    data_dir: &Path,
    port: u16,
    upstream: &str,
    edge_id: &str,
    log: &Path,
    extra_args: &[&OsStr],
    env: &[(&str, &str)],
) -> NodeProcess {
    let listen = format!("127.0.0.1:{port}");
    let mut args: Vec<&OsStr> = [
        "edge",
        "--upstream",
        upstream,
        "--edge-id",
        edge_id,
        "--listen",
        &listen,
        "--data-dir",
    ]
    .map(OsStr::new)
    .to_vec();
    args.push(data_dir.as_os_str());
    args.extend_from_slice(extra_args);
    NodeProcess::custodian(&args, env, port, log)
}

/// The public key of the edge whose data directory is `data_dir` (made there if it has none yet).
pub fn public_key_of_edge(data_dir: &Path) -> String {
    let out = run_ok(
        Command::new(custodian_bin())
            .args(["edge", "--print-public-key", "--data-dir"])
            .arg(data_dir),
        b"",
    );
    String::from_utf8(out).unwrap()
}

/// An in-process edge on an ephemeral port, its upstream at `upstream`.
pub async fn start_edge(
    dir: &Path,
    upstream: &str,
    edge_id: &str,
    tweak: impl FnOnce(&mut Config),
) -> (Node, NodeClient) {
    let mut config = crate::test_config(dir);
    config.edge.upstream = Some(upstream.to_owned());
    config.edge.id = Some(edge_id.to_owned());
    tweak(&mut config);
    let node = Node::start_edge(config).await.expect("starting an edge");
    let client = NodeClient::new(node.url(), Some(ADMIN_TOKEN.into()));
    (node, client)
}

/// RFC 3339 of a Unix time in seconds.
pub fn rfc3339(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// One single-reading upload of terminal `t` with `seq`, measured `ago_s` seconds ago.
pub fn one_reading(t: &str, seq: u64, ago_s: i64) -> Vec<u8> {
    let at = rfc3339(time::OffsetDateTime::now_utc().unix_timestamp() - ago_s);
    upload_body(
        t,
        &[format!(
            r#"{{"seq":{seq},"measured_at":"{at}","kind":"weight","value":100.0,"unit":"kg","container_id":"{t}-C1","stage":"storage_in","waste_code":"HW08"}}"#
        )],
    )
}

/// `GET /v1/edge/outbox`.
pub async fn outbox(edge: &NodeClient) -> Value {
    edge.get_admin("/v1/edge/outbox")
        .await
        .expect("GET /v1/edge/outbox")
}

/// Waits (30 s at most, naming `what`) until the edge's outbox holds `uploads` uploads and `dead_letters`
/// dead letters.
pub async fn wait_outbox_holds(edge: &NodeClient, what: &str, uploads: u64, dead_letters: u64) {
    crate::wait_for(what, std::time::Duration::from_secs(30), async || {
        let o = outbox(edge).await;
        o["outbox"]["dead_letters"] == dead_letters && o["outbox"]["uploads"] == uploads
    })
    .await;
}

/// Waits (30 s at most) until the edge has synced its registrations from the platform at least once.
pub async fn wait_registrations(edge: &NodeClient) {
    crate::wait_for(
        "the edge's registrations",
        std::time::Duration::from_secs(30),
        async || outbox(edge).await["registrations_synced"].as_u64() >= Some(1),
    )
    .await;
}

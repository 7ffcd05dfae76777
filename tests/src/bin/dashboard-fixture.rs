//! The dashboard's end-to-end fixture (`e2e/`, run by `scripts/e2e`): a node with PostgreSQL and InfluxDB
//! read models (databases of its own on the shared servers), three enterprises in two provinces, two
//! signing terminals whose weighings raised a `weight_fluctuation` each, a manifest M-1 from E-A to E-C,
//! and national, provincial
//! (440000) and enterprise (E-C) tokens. It writes `{url, trigger, tokens}` as JSON to the path given,
//! then serves `POST {trigger}/alarm/{terminal}`: a new signed weighing pair through the ingest API,
//! which raises a new alarm (how the browser test causes one). It stops, dropping its databases, when
//! its standard input closes or it is sent SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use custodian_tests::scopes::{
    issue_token, open_cross_province_manifest, register_enterprises, signing_terminal, weighings,
};
use custodian_tests::{ReadModels, TerminalKeys, start_node, wait_projected};
use serde_json::json;

struct Trigger {
    admin: custodian_node::client::NodeClient,
    keys: TerminalKeys,
    next: AtomicU64,
}

async fn alarm(
    State(t): State<Arc<Trigger>>,
    Path(terminal): Path<String>,
) -> (axum::http::StatusCode, String) {
    if !t.keys.0.contains_key(&terminal) {
        return (
            axum::http::StatusCode::NOT_FOUND,
            format!("no terminal {terminal}"),
        );
    }
    let first = t.next.fetch_add(2, Ordering::Relaxed);
    let body = weighings(&terminal, &format!("{terminal}-C0"), first);
    match t.keys.upload(&t.admin, &terminal, body).await {
        Ok(_) => (axum::http::StatusCode::OK, "uploaded".into()),
        Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[tokio::main]
async fn main() {
    let out = std::env::args()
        .nth(1)
        .expect("usage: dashboard-fixture OUT.json");
    let dir = tempfile::tempdir().expect("a temp dir");
    let models = ReadModels::new("e2e");
    let (node, admin) = start_node(dir.path(), |c| models.enable(c)).await;
    register_enterprises(&admin).await;
    let mut keys = TerminalKeys::default();
    for (t, e) in [("T-A", "E-A"), ("T-C", "E-C")] {
        signing_terminal(&admin, &mut keys, t, e).await;
    }
    open_cross_province_manifest(&admin).await;
    wait_projected(&admin, Duration::from_secs(60)).await;
    let mut tokens = serde_json::Map::new();
    for (tier, scope) in [
        ("national", None),
        ("province", Some("440000")),
        ("enterprise", Some("E-C")),
    ] {
        let (token, _) = issue_token(&admin, tier, scope).await;
        tokens.insert(tier.into(), token.into());
    }
    let trigger = Arc::new(Trigger {
        admin: admin.clone(),
        keys,
        next: AtomicU64::new(3),
    });
    let app = axum::Router::new()
        .route("/alarm/{terminal}", post(alarm))
        .with_state(trigger);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a trigger port");
    let trigger_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let fixture = json!({"url": node.url(), "trigger": trigger_url, "tokens": tokens});
    let tmp = format!("{out}.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&fixture).unwrap())
        .expect("writing the fixture");
    std::fs::rename(&tmp, &out).expect("writing the fixture");
    eprintln!("dashboard fixture ready at {}", node.url());
    // Until stdin closes or SIGTERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let stdin_closed = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = stdin_closed => {}
    }
    drop(node);
    models.drop_all().await;
    let _ = std::fs::remove_file(&out);
}

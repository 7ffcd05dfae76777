//! Operations: health, metrics, and `/` for a browser.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Liveness and log/deriver figures",
    security(()),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400,
    ),
)]
pub async fn healthz(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "last_seq": st.log.last_seq(),
        "derived_seq": st.derived_seq.load(std::sync::atomic::Ordering::Acquire),
        "deriver": st.deriver_stats.get().map(|d| {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            serde_json::json!({
                "live_actors": n(&d.live_actors),
                "passivations": n(&d.passivations),
                "actor_failures": n(&d.supervisor.failures),
                "recoveries": n(&d.recoveries),
                "quarantined": n(&d.quarantined),
                "snapshots": n(&d.snapshots),
                "snapshot_seq": n(&d.snapshot_seq),
            })
        }),
        "cluster": st.cluster.get().map(|c| c.status()),
    }))
}

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    summary = "Prometheus metrics (ingest, log, projections, query cache)",
    security(()),
    responses(
        (status = 200, description = "OK", body = String, content_type = "text/plain"),
        crate::api::schema::E400,
    ),
)]
pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let size = st.log.size_on_disk().ok();
    let mut text = st.metrics.render(st.log.last_seq(), size);
    if let Some(edge) = st.edge.get() {
        text.push_str(&edge.render_metrics());
    }
    let projections = st.models.statuses();
    crate::metrics::render_projections(&mut text, &projections);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `GET /`: a browser pointed at the node's address lands on the dashboard.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "root",
    summary = "Redirects a browser to the dashboard at /ui.",
    security(()),
    responses(
        (status = 303, description = "See Other: Location /ui"),
        crate::api::schema::E400,
    ),
)]
pub async fn root() -> axum::response::Redirect {
    axum::response::Redirect::to("/ui")
}

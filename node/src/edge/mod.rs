//! The edge node (`custodian edge`): a node at the site that takes the terminals' uploads as the platform
//! would (the same ingest path: signatures, dedupe, durable before the answer; HTTP and MQTT), runs the same
//! domain rules locally, keeps what it accepted in an outbox for 72 hours and more while the uplink is down,
//! and forwards it to the platform when the link is back. See `docs/edge.md`.
//!
//! Parts: `outbox` (sled, fed from the edge's event log behind a checkpoint), `forward` (sealed batches to
//! `POST /v1/edge/batches`, capped backoff, round-robin over terminals, anomalies first), `registrations`
//! (the terminals of the edge's enterprises, fetched from the platform or seeded from a file), `mqtt`
//! (terminals that publish instead of POSTing), `api` (the edge's own endpoints), `wire` (what edge and
//! platform exchange), `backoff`.

pub mod api;
pub mod backoff;
pub mod forward;
pub mod mqtt;
pub mod outbox;
pub mod registrations;
pub mod run;
pub mod wire;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::http::StatusCode;
use custodian_events::crypto::{Entropy, Sm2KeyPair, Sm2PublicKey};
use tokio::task::JoinHandle;

use crate::api::error::ApiError;
use crate::config::EdgeConfig;
use outbox::Outbox;

/// An answer of the platform: its status and body, or why none came.
pub type UpstreamAnswer = Pin<Box<dyn Future<Output = Result<(u16, bytes::Bytes), String>> + Send>>;

/// How an edge reaches the platform: over HTTP ([`HttpUpstream`]) in a real edge, through the simulated
/// network in `custodian-sim`.
pub trait Upstream: Send + Sync {
    /// POSTs `body` (`application/octet-stream`, the edge's id in [`wire::EDGE_HEADER`]) to `path`.
    fn post(&self, path: &str, edge_id: &str, body: Vec<u8>) -> UpstreamAnswer;
    /// GETs `path`.
    fn get(&self, path: &str) -> UpstreamAnswer;
}

/// The platform at a base URL, over HTTP (30 s per request).
pub struct HttpUpstream {
    base: String,
    http: reqwest::Client,
}

impl HttpUpstream {
    pub fn new(base: &str) -> anyhow::Result<HttpUpstream> {
        Ok(HttpUpstream {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .context("cannot make an HTTP client")?,
        })
    }

    fn answer(&self, request: reqwest::RequestBuilder, url: String) -> UpstreamAnswer {
        Box::pin(async move {
            let resp = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            Ok((status, body))
        })
    }
}

impl Upstream for HttpUpstream {
    fn post(&self, path: &str, edge_id: &str, body: Vec<u8>) -> UpstreamAnswer {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .post(&url)
            .header(wire::EDGE_HEADER, edge_id)
            .header("content-type", "application/octet-stream")
            .body(body);
        self.answer(request, url)
    }

    fn get(&self, path: &str) -> UpstreamAnswer {
        let url = format!("{}{path}", self.base);
        self.answer(self.http.get(&url), url)
    }
}

pub use crate::config::{OUTBOX_BYTES_DEFAULT, OUTBOX_BYTES_PER_READING};

/// Counters of the forwarder, for `/metrics` and `GET /v1/edge/outbox`.
#[derive(Default)]
pub struct EdgeStats {
    pub attempts: AtomicU64,
    pub failures: AtomicU64,
    pub uploads_forwarded: AtomicU64,
    pub readings_forwarded: AtomicU64,
    pub anomalies_forwarded: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub local_anomalies: AtomicU64,
    pub registrations_synced: AtomicU64,
    pub refused_full: AtomicU64,
    /// The current wait before the next attempt, ms (0 when the link works).
    pub backoff_ms: AtomicU64,
    pub upstream_ok: AtomicBool,
    /// When the last attempts started, ms since the Unix epoch (the newest 64).
    pub recent_attempts_ms: Mutex<VecDeque<i64>>,
    pub last_error: Mutex<Option<String>>,
}

/// A running edge: its identity, its outbox, its background tasks.
pub struct EdgeRuntime {
    pub id: String,
    pub config: EdgeConfig,
    pub outbox: Arc<Outbox>,
    pub stats: EdgeStats,
    /// The edge's SM2 key pair (the node's own key: `DATA_DIR/platform_signing.key`).
    key: Sm2KeyPair,
    /// The platform's key, once known (from the config, the pinned file or fetched and pinned).
    upstream_key: Mutex<Option<Sm2PublicKey>>,
    pinned_key_file: std::path::PathBuf,
    upstream_link: Arc<dyn Upstream>,
    entropy: Arc<dyn Entropy>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl EdgeRuntime {
    /// Stops the background tasks and flushes the outbox.
    pub async fn stop(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        let _ = self.outbox.flush();
    }

    /// Refuses an upload while the outbox is full: 503 `outbox_full`, nothing stored, nothing dropped.
    pub fn admit(&self) -> Result<(), ApiError> {
        if self.outbox.full() {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            let c = self.outbox.counts();
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outbox_full",
                format!(
                    "the edge's outbox holds {} of {} bytes ({} uploads wait for the platform); nothing of this request was stored; retry later",
                    c.bytes, c.bytes_max, c.uploads
                ),
            ));
        }
        Ok(())
    }

    fn upstream(&self) -> &str {
        self.config
            .upstream
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/')
    }

    /// The platform's key: configured, pinned, or fetched now and pinned for good.
    async fn upstream_key(&self) -> Result<Sm2PublicKey, String> {
        if let Some(k) = self.upstream_key.lock().expect("key lock").clone() {
            return Ok(k);
        }
        let url = format!("{}/v1/edge/public-key", self.upstream());
        let (status, body) = self
            .upstream_link
            .get("/v1/edge/public-key")
            .await
            .map_err(|e| format!("cannot fetch the platform's public key from {url}: {e}"))?;
        if status != 200 {
            return Err(format!("{url} answered {status}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("{url} did not answer JSON: {e}"))?;
        let pem = v["public_key_pem"]
            .as_str()
            .ok_or(format!("{url} gave no public_key_pem"))?;
        let key = Sm2PublicKey::from_pem(pem).map_err(|e| format!("{url} gave no SM2 key: {e}"))?;
        std::fs::write(&self.pinned_key_file, pem).map_err(|e| {
            format!(
                "cannot pin the platform's key in {}: {e}",
                self.pinned_key_file.display()
            )
        })?;
        tracing::info!(file = %self.pinned_key_file.display(), "pinned the platform's public key");
        *self.upstream_key.lock().expect("key lock") = Some(key.clone());
        Ok(key)
    }

    /// Seals `payload` to the platform and POSTs it to `path`; the raw answer on 200, else a failure
    /// naming the status and the platform's `{code, message}`.
    async fn post_sealed(&self, path: &str, payload: &[u8]) -> Result<bytes::Bytes, Failure> {
        let key = self.upstream_key().await.map_err(Failure::Transport)?;
        let sealed = custodian_events::digital_envelope::seal(
            payload,
            &key,
            &self.key,
            self.entropy.as_ref(),
        )
        .map_err(|e| Failure::Transport(format!("cannot seal: {e}")))?;
        let (status, body) = self
            .upstream_link
            .post(path, &self.id, sealed)
            .await
            .map_err(Failure::Transport)?;
        if status == 200 {
            return Ok(body);
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Err(Failure::Status {
            status,
            code: v["code"].as_str().unwrap_or("unknown").to_owned(),
            message: v["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned()),
        })
    }

    /// `custodian_edge_*` metrics.
    pub fn render_metrics(&self) -> String {
        let c = self.outbox.counts();
        let s = &self.stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut g = |name: &str, kind: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        g(
            "custodian_edge_outbox_bytes",
            "gauge",
            "Bytes the outbox holds.",
            c.bytes,
        );
        g(
            "custodian_edge_outbox_bytes_max",
            "gauge",
            "Bytes the outbox may hold.",
            c.bytes_max,
        );
        g(
            "custodian_edge_outbox_uploads",
            "gauge",
            "Uploads waiting for the platform.",
            c.uploads,
        );
        g(
            "custodian_edge_outbox_anomalies",
            "gauge",
            "Anomalies waiting for the platform.",
            c.anomalies,
        );
        g(
            "custodian_edge_dead_letters",
            "gauge",
            "Uploads the platform refused, kept for an operator.",
            c.dead_letters,
        );
        g(
            "custodian_edge_forward_attempts_total",
            "counter",
            "Batches sent to the platform.",
            n(&s.attempts),
        );
        g(
            "custodian_edge_forward_failures_total",
            "counter",
            "Batches that failed or were answered busy.",
            n(&s.failures),
        );
        g(
            "custodian_edge_readings_forwarded_total",
            "counter",
            "Readings the platform acknowledged.",
            n(&s.readings_forwarded),
        );
        g(
            "custodian_edge_anomalies_local_total",
            "counter",
            "Anomalies the edge detected itself.",
            n(&s.local_anomalies),
        );
        g(
            "custodian_edge_uploads_refused_full_total",
            "counter",
            "Uploads refused with 503 outbox_full.",
            n(&s.refused_full),
        );
        g(
            "custodian_edge_backoff_ms",
            "gauge",
            "The current wait before the next attempt.",
            n(&s.backoff_ms),
        );
        g(
            "custodian_edge_upstream_up",
            "gauge",
            "1 when the last attempt reached the platform.",
            s.upstream_ok.load(Ordering::Relaxed) as u64,
        );
        out
    }
}

/// Why a request to the platform failed.
#[derive(Debug)]
enum Failure {
    /// No answer: the link, DNS, a timeout, or no platform key yet.
    Transport(String),
    /// An answer other than 200.
    Status {
        status: u16,
        code: String,
        message: String,
    },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport(m) => write!(f, "the platform is unreachable: {m}"),
            Failure::Status {
                status,
                code,
                message,
            } => {
                write!(f, "the platform answered {status} {code}: {message}")
            }
        }
    }
}

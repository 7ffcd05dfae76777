//! Terminals that speak MQTT: the edge subscribes to `custodian/v1/terminals/+/uploads` (QoS 1, a
//! persistent session) on the site's broker. Each message carries `{"body_b64", "signature"}`, the same
//! signed body as an HTTP upload; it goes through the same ingest path, and the broker gets its PUBACK only
//! after the readings are durable, so a crash before that makes the broker deliver it again (which the log
//! deduplicates). The answer, as `POST /v1/uploads` would give it, is published to
//! `custodian/v1/terminals/{id}/results`.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use tokio::task::JoinHandle;

use crate::state::AppState;

pub const UPLOADS_FILTER: &str = "custodian/v1/terminals/+/uploads";

pub fn uploads_topic(terminal: &str) -> String {
    format!("custodian/v1/terminals/{terminal}/uploads")
}

pub fn results_topic(terminal: &str) -> String {
    format!("custodian/v1/terminals/{terminal}/results")
}

/// An MQTT upload.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUpload {
    pub body_b64: String,
    pub signature: String,
}

/// `mqtt://host:port` → (host, port).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| anyhow::anyhow!("the MQTT URL {url:?} must look like mqtt://HOST:PORT"))?;
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "1883"));
    let port = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| anyhow::anyhow!("the MQTT URL {url:?} has no valid port"))?;
    Ok((host.to_owned(), port))
}

/// Connects (and keeps reconnecting) to the broker at `url` and ingests what terminals publish.
pub fn spawn(state: Arc<AppState>, url: &str) -> anyhow::Result<JoinHandle<()>> {
    let (host, port) = host_port(url)?;
    let edge_id = state
        .edge
        .get()
        .map(|e| e.id.clone())
        .unwrap_or_else(|| "edge".into());
    let mut opts = MqttOptions::new(format!("custodian-edge-{edge_id}"), host, port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_max_packet_size(
        state.config.ingest.body_bytes_max * 2 + 4096,
        state.config.ingest.body_bytes_max * 2 + 4096,
    );
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Publish>(64);
    let worker_client = client.clone();
    let worker_state = state.clone();
    // Messages are handled one by one, in arrival order, so each terminal's uploads keep their order.
    let worker = tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            handle(&worker_state, &worker_client, &p).await;
        }
    });
    let url = url.to_owned();
    Ok(tokio::spawn(async move {
        let _worker = AbortOnDrop(worker);
        let mut down = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if down {
                        tracing::info!(broker = %url, "MQTT broker reachable again");
                    }
                    down = false;
                    if let Err(e) = client.subscribe(UPLOADS_FILTER, QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, "cannot subscribe to MQTT uploads");
                    }
                    tracing::info!(broker = %url, filter = UPLOADS_FILTER, "subscribed to MQTT uploads");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !down {
                        tracing::warn!(broker = %url, error = %e, "MQTT broker unreachable; HTTP uploads go on, retrying");
                    }
                    down = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle(st: &AppState, client: &AsyncClient, p: &Publish) {
    let topic_terminal = p
        .topic
        .strip_prefix("custodian/v1/terminals/")
        .and_then(|t| t.strip_suffix("/uploads"))
        .unwrap_or("")
        .to_owned();
    let answer = ingest(st, &topic_terminal, &p.payload).await;
    let text = match &answer {
        Ok(r) => serde_json::to_vec(r),
        Err(e) => serde_json::to_vec(&serde_json::json!({"code": e.code, "message": e.message})),
    }
    .expect("answers serialise");
    if !topic_terminal.is_empty()
        && let Err(e) = client
            .publish(
                results_topic(&topic_terminal),
                QoS::AtLeastOnce,
                false,
                text,
            )
            .await
    {
        tracing::warn!(error = %e, "cannot publish an MQTT upload's result");
    }
    // Only now, with the readings durable (or the upload refused for good or for now, which the result
    // says), does the broker learn the message was taken.
    if let Err(e) = client.ack(p).await {
        tracing::warn!(error = %e, "cannot acknowledge an MQTT upload; the broker will deliver it again");
    }
}

async fn ingest(
    st: &AppState,
    topic_terminal: &str,
    payload: &[u8],
) -> Result<crate::upload::UploadResponse, crate::api::error::ApiError> {
    use axum::http::StatusCode;
    if let Some(e) = st.edge.get() {
        e.admit()?;
    }
    let m: MqttUpload = crate::api::body::parse_json(payload)?;
    let body = super::wire::unb64(&m.body_b64).map_err(|e| {
        crate::api::error::ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("body_b64 {e}"),
        )
    })?;
    #[derive(Deserialize)]
    struct TerminalOnly {
        terminal_id: String,
    }
    if let Ok(t) = serde_json::from_slice::<TerminalOnly>(&body)
        && t.terminal_id != topic_terminal
    {
        return Err(crate::api::error::ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "topic_mismatch",
            format!(
                "the body is terminal {}'s but was published on {}",
                t.terminal_id,
                uploads_topic(topic_terminal)
            ),
        ));
    }
    let r = crate::api::ingest::ingest_signed(&st.ingest, &body, Some(&m.signature), None).await;
    st.metrics.upload(match &r {
        Ok(_) => 200,
        Err(e) => e.status.as_u16(),
    });
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn broker_urls() {
        assert_eq!(
            super::host_port("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(
            super::host_port("mqtt://broker").unwrap(),
            ("broker".into(), 1883)
        );
        assert!(super::host_port("http://x:1").is_err());
    }
}

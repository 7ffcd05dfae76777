//! The forwarder: takes batches from the outbox (anomalies first, then uploads round-robin over
//! terminals, each terminal's in order), seals each to the platform, and deletes only what the platform
//! acknowledged. A failure waits a capped, jittered, growing interval (never over 30 s) and tries again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::backoff::Backoff;
use super::outbox::{Batch, BatchLimits};
use super::wire::{
    AnomalyOutcome, ForwardAnomaly, ForwardAnswer, ForwardBatch, ForwardUpload, UploadOutcome, b64,
    encode_anomaly,
};
use super::{EdgeRuntime, Failure};
use crate::upload::ReadingResult;

/// Anomalies per batch (they are small; they go before any upload).
const ANOMALIES_PER_BATCH_MAX: usize = 200;

fn limits(rt: &EdgeRuntime) -> BatchLimits {
    let c = &rt.config;
    BatchLimits {
        uploads_max: c.batch_uploads_max,
        bytes_max: c.batch_bytes_max,
        per_terminal_max: c.per_terminal_uploads_max,
        anomalies_max: ANOMALIES_PER_BATCH_MAX,
    }
}

/// What one forwarding round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOnce {
    /// Nothing waits in the outbox.
    Idle,
    /// A batch went and the platform settled all of it: acknowledged, or refused for good (dead letters).
    Delivered { uploads: usize, anomalies: usize },
    /// The batch did not reach the platform, or the platform asked for some of it again: why.
    Failed(String),
}

/// One round of the forwarder, with the outbox read and updated inline: for a caller that drives the edge
/// itself instead of [`run`]'s loop, as the simulator does. No backoff: when to try again is the caller's.
pub async fn forward_once(rt: &Arc<EdgeRuntime>) -> ForwardOnce {
    let batch = match rt.outbox.next_batch(limits(rt)) {
        Ok(b) => b,
        Err(e) => return ForwardOnce::Failed(format!("cannot read the outbox: {e}")),
    };
    if batch.is_empty() {
        return ForwardOnce::Idle;
    }
    let (uploads, anomalies) = (batch.uploads.len(), batch.anomalies.len());
    match deliver(rt, batch, false).await {
        Ok(None) => ForwardOnce::Delivered { uploads, anomalies },
        Ok(Some(why)) => ForwardOnce::Failed(why),
        Err(()) => ForwardOnce::Failed("the outbox update was cancelled".into()),
    }
}

/// Sends `batch` and settles the answer in the outbox (on the blocking pool when `blocking`); `Some(why)`
/// when the batch must go again, in part or whole; `Err` when the runtime is going away.
async fn deliver(
    rt: &Arc<EdgeRuntime>,
    batch: Batch,
    blocking: bool,
) -> Result<Option<String>, ()> {
    {
        let mut recent = rt.stats.recent_attempts_ms.lock().expect("stats lock");
        recent.push_back(now_ms());
        while recent.len() > 64 {
            recent.pop_front();
        }
    }
    rt.stats.attempts.fetch_add(1, Ordering::Relaxed);
    match send(rt, &batch).await {
        Ok(answer) => {
            rt.stats.upstream_ok.store(true, Ordering::Relaxed);
            let applied = if blocking {
                let rt2 = rt.clone();
                tokio::task::spawn_blocking(move || apply(&rt2, &batch, &answer))
                    .await
                    .map_err(|_| ())?
            } else {
                apply(rt, &batch, &answer)
            };
            Ok(match applied {
                Ok(busy) => busy,
                Err(e) => Some(format!("cannot update the outbox: {e}")),
            })
        }
        Err(f) => {
            rt.stats
                .upstream_ok
                .store(matches!(f, Failure::Status { .. }), Ordering::Relaxed);
            Ok(Some(f.to_string()))
        }
    }
}

pub async fn run(rt: Arc<EdgeRuntime>) {
    let limits = limits(&rt);
    let c = &rt.config;
    let seed = rt
        .id
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b))
        ^ std::process::id() as u64;
    let mut backoff = Backoff::new(
        Duration::from_millis(c.retry_base_ms),
        Duration::from_millis(c.retry_cap_ms),
        seed,
    );
    let mut failing = false;
    loop {
        let batch = {
            let outbox = rt.outbox.clone();
            match tokio::task::spawn_blocking(move || outbox.next_batch(limits)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the outbox; retrying in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            }
        };
        if batch.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rt.outbox.fed.notified()).await;
            continue;
        }
        let Ok(busy) = deliver(&rt, batch, true).await else {
            return;
        };
        match busy {
            None => {
                if failing {
                    tracing::info!("the platform takes batches again; draining the outbox");
                }
                failing = false;
                backoff.reset();
                rt.stats.backoff_ms.store(0, Ordering::Relaxed);
            }
            Some(why) => {
                rt.stats.failures.fetch_add(1, Ordering::Relaxed);
                let wait = backoff.next_delay();
                rt.stats
                    .backoff_ms
                    .store(wait.as_millis() as u64, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(error = %why, "cannot forward; the outbox keeps everything, retrying with backoff (at most 30 s apart)");
                }
                *rt.stats.last_error.lock().expect("stats lock") = Some(why);
                failing = true;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn send(rt: &EdgeRuntime, batch: &Batch) -> Result<ForwardAnswer, Failure> {
    let payload = ForwardBatch {
        edge_id: rt.id.clone(),
        anomalies: batch
            .anomalies
            .iter()
            .map(|(id, a)| ForwardAnomaly {
                id: *id,
                anomaly_b64: encode_anomaly(a),
            })
            .collect(),
        uploads: batch
            .uploads
            .iter()
            .map(|(id, e)| ForwardUpload {
                id: *id,
                body_b64: b64(&e.body),
                signature: e.signature.clone(),
            })
            .collect(),
    };
    let json = serde_json::to_vec(&payload).expect("a batch serialises");
    let body = rt.post_sealed("/v1/edge/batches", &json).await?;
    serde_json::from_slice(&body).map_err(|e| Failure::Status {
        status: 200,
        code: "invalid_answer".into(),
        message: format!("the platform's answer to a batch does not parse: {e}"),
    })
}

/// Deletes what the platform acknowledged, dead-letters what it refused; `Some(reason)` when it asked for
/// something to be sent again (it was busy).
fn apply(
    rt: &EdgeRuntime,
    batch: &Batch,
    answer: &ForwardAnswer,
) -> Result<Option<String>, sled::Error> {
    let entries: HashMap<u64, &super::outbox::Entry> =
        batch.uploads.iter().map(|(id, e)| (*id, e)).collect();
    let mut done: Vec<(u64, &str)> = Vec::new();
    let mut recorded: Vec<u64> = Vec::new();
    let mut busy: Option<String> = None;
    let now_ns = now_ms() * 1_000_000;
    for o in &answer.anomalies {
        match o {
            AnomalyOutcome::Recorded { id } | AnomalyOutcome::Duplicate { id } => {
                recorded.push(*id)
            }
            AnomalyOutcome::Rejected { id, code, message } => {
                // The platform derives the anomaly itself once the readings arrive; a refused report
                // loses no data.
                tracing::warn!(
                    log_seq = id,
                    code,
                    message,
                    "the platform refused a reported anomaly; dropping the report"
                );
                recorded.push(*id);
            }
            AnomalyOutcome::Retry { code, message, .. } => {
                busy.get_or_insert(format!("the platform is busy ({code}): {message}"));
            }
        }
    }
    rt.stats
        .anomalies_forwarded
        .fetch_add(recorded.len() as u64, Ordering::Relaxed);
    for o in &answer.uploads {
        match o {
            UploadOutcome::Done { id, results } => {
                let Some(entry) = entries.get(id) else {
                    continue;
                };
                let refused = results.iter().find_map(|r| match r {
                    ReadingResult::Rejected {
                        seq: Some(s),
                        code,
                        message,
                        ..
                    } if entry.seqs.contains(s) => Some((code.clone(), message.clone())),
                    _ => None,
                });
                match refused {
                    None => {
                        rt.stats
                            .readings_forwarded
                            .fetch_add(entry.seqs.len() as u64, Ordering::Relaxed);
                        rt.stats.uploads_forwarded.fetch_add(1, Ordering::Relaxed);
                        done.push((*id, &entry.terminal_id));
                    }
                    Some((code, message)) => {
                        rt.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(terminal = %entry.terminal_id, log_seq = id, %code, %message, "the platform refused a reading; the upload is kept as a dead letter");
                        rt.outbox
                            .dead_letter(*id, &entry.terminal_id, &code, &message, now_ns)?;
                    }
                }
            }
            UploadOutcome::Rejected { id, code, message } => {
                let Some(entry) = entries.get(id) else {
                    continue;
                };
                rt.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(terminal = %entry.terminal_id, log_seq = id, %code, %message, "the platform refused an upload; it is kept as a dead letter");
                rt.outbox
                    .dead_letter(*id, &entry.terminal_id, code, message, now_ns)?;
            }
            UploadOutcome::Retry { code, message, .. } => {
                busy.get_or_insert(format!("the platform is busy ({code}): {message}"));
            }
        }
    }
    rt.outbox.remove(&done, &recorded)?;
    Ok(busy)
}

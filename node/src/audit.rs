//! The audit trail of regulators' reads: who asked what, when, with what answer and how many rows, in
//! `custodian_meta.audit` of the read-model database (beside the generations, so a rebuild keeps it).
//!
//! Requests hand entries to a bounded queue (`AUDIT_QUEUE_MAX`); one task writes them in batches. When the
//! queue is full — the database slow or down — a read waits up to `AUDIT_WAIT` for room and then answers 503
//! `audit_unavailable` instead of its data: an answer is never given without its record, and no record is
//! dropped once queued (a failing batch is retried with backoff until it is written). Reads refused with 401
//! are recorded too (token `-`, tier `none`), but only when there is room at once: they answered no data,
//! and a flood of bad tokens must not push back on good reads; drops are counted in `/metrics`.

use std::time::Duration;

use custodian_projections::columns::bind_rows;
use sqlx::Executor as _;
use tokio::sync::mpsc;

/// Entries waiting to be written.
pub const AUDIT_QUEUE_MAX: usize = 10_000;
/// How long a read waits for room in a full queue.
pub const AUDIT_WAIT: Duration = Duration::from_secs(2);
/// Entries per insert.
const BATCH_MAX: usize = 1_000;

#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at_ns: i64,
    pub token_id: String,
    pub tier: &'static str,
    pub scope: Option<String>,
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub rows: i64,
    pub cached: bool,
    pub duration_us: i64,
}

pub struct Audit {
    tx: mpsc::Sender<AuditEntry>,
    task: tokio::task::JoinHandle<()>,
}

impl Audit {
    /// Starts the writer for the database at `postgres_url` (made lazily; the queue absorbs an outage).
    pub fn start(postgres_url: &str) -> anyhow::Result<Audit> {
        let options: sqlx::postgres::PgConnectOptions = postgres_url.parse()?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE_MAX);
        let task = tokio::spawn(writer(pool, rx));
        Ok(Audit { tx, task })
    }

    /// Queues `entry`, waiting up to `AUDIT_WAIT` for room; false when there was none.
    pub async fn record(&self, entry: AuditEntry) -> bool {
        self.tx.send_timeout(entry, AUDIT_WAIT).await.is_ok()
    }

    /// Queues `entry` if there is room now; false when it was dropped. For what gave away no data (a
    /// refusal) or whose effect is recorded elsewhere: waiting here would let a flood of bad tokens push
    /// back on every good read.
    pub fn try_record(&self, entry: AuditEntry) -> bool {
        self.tx.try_send(entry).is_ok()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

// The columns of one insert, one array each.
#[allow(clippy::type_complexity)]
async fn writer(pool: sqlx::PgPool, mut rx: mpsc::Receiver<AuditEntry>) {
    let mut ready = false;
    let mut failing_since: Option<std::time::Instant> = None;
    let mut batch: Vec<AuditEntry> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(e) => batch.push(e),
                None => return,
            }
        }
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let written = async {
            if !ready {
                pool.execute(
                    "CREATE SCHEMA IF NOT EXISTS custodian_meta; \
                     CREATE TABLE IF NOT EXISTS custodian_meta.audit ( \
                       id bigserial PRIMARY KEY, at timestamptz NOT NULL, token_id text NOT NULL, \
                       tier text NOT NULL, scope text, method text NOT NULL, uri text NOT NULL, \
                       status integer NOT NULL, rows bigint NOT NULL, cached boolean NOT NULL, \
                       duration_us bigint NOT NULL); \
                     CREATE INDEX IF NOT EXISTS audit_token_at ON custodian_meta.audit (token_id, at)",
                )
                .await?;
                ready = true;
            }
            let rows: Vec<_> = batch
                .iter()
                .map(|e| {
                    (
                        e.at_ns,
                        e.token_id.clone(),
                        e.tier,
                        e.scope.clone(),
                        e.method.clone(),
                        e.uri.clone(),
                        i32::from(e.status),
                        e.rows,
                        e.cached,
                        e.duration_us,
                    )
                })
                .collect();
            let q = sqlx::query(
                "INSERT INTO custodian_meta.audit (at, token_id, tier, scope, method, uri, status, rows, \
                   cached, duration_us) \
                 SELECT TIMESTAMPTZ 'epoch' + (a / 1000) * INTERVAL '1 microsecond', b, c, d, e, f, g, h, i, j \
                 FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                   $7::int4[], $8::int8[], $9::bool[], $10::int8[]) AS u(a, b, c, d, e, f, g, h, i, j)",
            );
            bind_rows(q, rows)
            .execute(&pool)
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match written {
            Ok(()) => {
                if let Some(t) = failing_since.take() {
                    tracing::info!(
                        after_s = t.elapsed().as_secs_f64(),
                        "the audit trail is being written again"
                    );
                }
                batch.clear();
            }
            Err(e) => {
                if failing_since.is_none() {
                    failing_since = Some(std::time::Instant::now());
                    tracing::warn!(
                        error = %e,
                        "cannot write the audit trail; reads queue their records (up to {AUDIT_QUEUE_MAX}) and are refused with 503 once the queue is full"
                    );
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

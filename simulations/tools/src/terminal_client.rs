//! A reference terminal client, for vendors and for `custodian terminal`: it numbers readings, batches them,
//! signs each upload with the terminal's SM2 key and retries what failed on the way.
//!
//! The protocol it follows (`POST /v1/uploads`, see `docs/` and `api::ingest`):
//! - A reading's `seq` is its identity: the node stores a `(terminal, seq)` once and answers `duplicate` to
//!   any resend of it. That is what makes retrying safe, and why a resend carries the very same bytes (and,
//!   SM2 signing here being deterministic, the very same signature).
//! - A 200 answers each reading on its own (`accepted`, `duplicate` or `rejected`); a rejected reading is
//!   final and is not sent again.
//! - 5xx, 408, 429 and connection failures are transient: the client waits (capped, jittered backoff; at
//!   most [`RETRY_CAP`] apart, and at least what `Retry-After` asks, within the cap) and sends the same
//!   batch again. Any other 4xx is a refusal that a resend would only repeat: `flush` stops and says why.
//!
//! It does not keep readings across restarts: a terminal that must not lose readings while powered off
//! persists them (and its next seq) itself before pushing them here.

use std::collections::VecDeque;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use custodian_events::crypto::{OsEntropy, Sm2KeyPair, key_fingerprint};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use crate::terminal_sim::{now_rfc3339, signature_header};
use custodian_node::upload::ReadingResult;
use custodian_node::upload::SIGNATURE_HEADER;
use custodian_node::upload::UploadResponse;

/// The backoff the client waits with between attempts: the same type, and the same 30 s cap, as the edge's
/// forwarder.
pub use custodian_node::edge::backoff::{Backoff, RETRY_CAP};

/// The first wait after a failure; it doubles with each failure in a row, up to [`RETRY_CAP`].
pub const RETRY_BASE: Duration = Duration::from_millis(200);

/// Readings per upload unless told otherwise.
pub const BATCH_READINGS_DEFAULT: usize = 100;

/// The most readings one upload may carry: the highest `ingest.batch_readings_max` a node accepts (its
/// default is 1,000; a larger batch than the node's setting is refused with 413 `batch_too_large`).
pub const BATCH_READINGS_MAX: usize = 10_000;

/// Readings the client holds before they are delivered. When full, `push` refuses (the caller flushes
/// first). About 200 bytes each, so ~20 MB: a week of a terminal reporting every 10 s.
pub const PENDING_READINGS_MAX: usize = 100_000;

/// How long one request may take, connecting included, before it counts as a failed attempt.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One reading as a terminal measures it; `seq` is assigned by [`TerminalClient::push`] when absent. The
/// fields are those of a reading in `POST /v1/uploads`; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// RFC 3339 with an offset, e.g. `2026-11-26T04:00:00+08:00`.
    pub measured_at: String,
    /// `weight`, …
    pub kind: String,
    pub value: f64,
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// `generation`, `storage_in`, `storage_out`, `transfer_out`, `transfer_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waste_code: Option<String>,
    /// The manifest (transfer order) a `transfer_out` / `transfer_in` weighing belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_id: Option<String>,
}

impl ReadingInput {
    /// A weighing of `kg` kilograms measured at `measured_at`, without container, stage or waste code.
    pub fn weight_kg(measured_at: impl Into<String>, kg: f64) -> Self {
        ReadingInput {
            seq: None,
            measured_at: measured_at.into(),
            kind: "weight".into(),
            value: kg,
            unit: "kg".into(),
            container_id: None,
            stage: None,
            waste_code: None,
            manifest_id: None,
        }
    }
}

/// A reading the node refused, as its answer said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedReading {
    /// Absent when the node could not read one.
    pub seq: Option<u64>,
    pub code: String,
    pub message: String,
}

/// What became of the readings a flush delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlushReport {
    /// Stored now.
    pub accepted: u64,
    /// Stored before (by an earlier attempt whose answer was lost, or an earlier resend).
    pub duplicate: u64,
    /// Refused one by one; see `rejections`.
    pub rejected: u64,
    /// Uploads answered with 200.
    pub batches: u64,
    /// Attempts that failed and were made again.
    pub retries: u64,
    /// The rejected readings, in the order sent.
    pub rejections: Vec<RejectedReading>,
}

impl FlushReport {
    /// Adds `other`'s counts and rejections to this report.
    pub fn add(&mut self, other: FlushReport) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
        self.batches += other.batches;
        self.retries += other.retries;
        self.rejections.extend(other.rejections);
    }
}

/// Why one attempt failed in a way worth trying again.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("cannot reach the node: {}", error_chain(.0))]
    Transport(reqwest::Error),
    #[error("the node answered {status} {code}: {message}")]
    Unavailable {
        status: u16,
        code: String,
        message: String,
        /// The node's `Retry-After`, already capped at [`RETRY_CAP`].
        retry_after: Option<Duration>,
    },
}

/// Why a flush stopped before every pending reading was delivered. The readings from `first_seq` on stay
/// pending; `delivered` tells what went through before.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// A 4xx other than 408 and 429: sending the same again would be answered the same.
    #[error(
        "the node refused the upload of readings {first_seq}..={last_seq} with {status} {code}: {message}"
    )]
    Refused {
        status: u16,
        code: String,
        message: String,
        first_seq: u64,
        last_seq: u64,
        delivered: FlushReport,
    },
    /// The attempts or the time allowed ran out.
    #[error(
        "gave up on readings {first_seq}..={last_seq} after {attempts} attempts in {:.1} s; the last: {last_error}",
        elapsed.as_secs_f64()
    )]
    GaveUp {
        attempts: u32,
        elapsed: Duration,
        last_error: AttemptError,
        first_seq: u64,
        last_seq: u64,
        delivered: FlushReport,
    },
    /// A 200 that is not the answer to this upload (a wrong URL, or a proxy in the way).
    #[error("the answer to the upload of readings {first_seq}..={last_seq} is not one: {detail}")]
    BadAnswer {
        detail: String,
        first_seq: u64,
        last_seq: u64,
        delivered: FlushReport,
    },
}

impl FlushError {
    /// What this flush delivered before it stopped.
    pub fn delivered(&self) -> &FlushReport {
        match self {
            FlushError::Refused { delivered, .. }
            | FlushError::GaveUp { delivered, .. }
            | FlushError::BadAnswer { delivered, .. } => delivered,
        }
    }

    /// The node's error `code` of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            FlushError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Why `push` refused a reading.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    #[error("{PENDING_READINGS_MAX} readings are pending already; flush first")]
    Full,
    #[error("reading {seq}: the value is not a finite number")]
    ValueNotFinite { seq: u64 },
}

/// What the client is doing, for a progress display.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The node answered an upload of readings `first_seq..=last_seq`.
    Delivered {
        first_seq: u64,
        last_seq: u64,
        attempts: u32,
        batch: &'a FlushReport,
    },
    /// Attempt `attempt` failed; the next one starts after `wait`.
    Retrying {
        first_seq: u64,
        last_seq: u64,
        attempt: u32,
        wait: Duration,
        error: &'a AttemptError,
    },
}

type ProgressFn = Box<dyn FnMut(&Progress<'_>) + Send>;

/// A pending reading: its seq and its JSON, serialised once so that every resend carries the same bytes.
struct Pending {
    seq: u64,
    json: String,
}

/// One terminal's uploads to a node (or an edge, which takes the same API).
pub struct TerminalClient {
    http: reqwest::Client,
    uploads_url: String,
    terminal_id: String,
    key: Sm2KeyPair,
    next_seq: u64,
    pending: VecDeque<Pending>,
    batch_max: usize,
    backoff: Backoff,
    attempts_max: Option<u32>,
    give_up_after: Option<Duration>,
    progress: Option<ProgressFn>,
}

impl TerminalClient {
    /// A client for terminal `terminal_id` signing with `key`, uploading to the node at `base_url`
    /// (`http://host:port`). Numbers readings from 1, sends [`BATCH_READINGS_DEFAULT`] per upload and
    /// retries forever; the `with_*` methods change that.
    pub fn new(base_url: &str, terminal_id: impl Into<String>, key: Sm2KeyPair) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        TerminalClient {
            http,
            uploads_url: format!("{}/v1/uploads", base_url.trim_end_matches('/')),
            terminal_id: terminal_id.into(),
            key,
            next_seq: 1,
            pending: VecDeque::new(),
            batch_max: BATCH_READINGS_DEFAULT,
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP, rand::random()),
            attempts_max: None,
            give_up_after: None,
            progress: None,
        }
    }

    /// The seq the next reading without one gets (a terminal resuming after a restart passes its own).
    pub fn with_next_seq(mut self, seq: u64) -> Self {
        self.next_seq = seq;
        self
    }

    /// Readings per upload, clamped to `1..=BATCH_READINGS_MAX`.
    pub fn with_batch_max(mut self, readings: usize) -> Self {
        self.batch_max = readings.clamp(1, BATCH_READINGS_MAX);
        self
    }

    /// Waits between attempts with `backoff` (for a seeded, repeatable sequence of waits, or shorter ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up on a batch after this many failed attempts in a row.
    pub fn with_attempts_max(mut self, attempts: u32) -> Self {
        self.attempts_max = Some(attempts.max(1));
        self
    }

    /// Gives up on a batch that has not gone through for this long since its first attempt; the last
    /// attempt is made at that moment.
    pub fn with_give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = Some(limit);
        self
    }

    /// Calls `f` after each answered upload and before each wait to retry.
    pub fn with_progress(mut self, f: impl FnMut(&Progress<'_>) + Send + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    pub fn terminal_id(&self) -> &str {
        &self.terminal_id
    }

    /// The seq the next reading without one gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Readings not yet delivered.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a reading and returns its seq: the reading's own if it has one (later readings without one
    /// continue after it), else the next. Nothing is sent until [`flush`](Self::flush).
    pub fn push(&mut self, mut reading: ReadingInput) -> Result<u64, PushError> {
        if self.pending.len() >= PENDING_READINGS_MAX {
            return Err(PushError::Full);
        }
        let seq = reading.seq.unwrap_or(self.next_seq);
        if !reading.value.is_finite() {
            // serde_json would write `null`, which the node would reject; say so here, where it is clear.
            return Err(PushError::ValueNotFinite { seq });
        }
        reading.seq = Some(seq);
        let json =
            serde_json::to_string(&reading).expect("a reading with a finite value serialises");
        self.pending.push_back(Pending { seq, json });
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        Ok(seq)
    }

    /// Sends every pending reading, in order, at most `batch_max` per upload, each upload signed, retrying
    /// transient failures. Returns what the node made of them. On an error the undelivered readings stay
    /// pending, and flushing again resends them (the node answers `duplicate` for any it already has).
    pub async fn flush(&mut self) -> Result<FlushReport, FlushError> {
        let mut report = FlushReport::default();
        while !self.pending.is_empty() {
            let n = self.batch_max.min(self.pending.len());
            let first_seq = self.pending[0].seq;
            let last_seq = self.pending[n - 1].seq;
            let body = self.body(n);
            let signature = signature_header(&self.key, &body);
            let (status, answer, attempts) = match self
                .send_until_answered(&body, &signature, first_seq, last_seq)
                .await
            {
                Ok(a) => a,
                Err((attempts, elapsed, last_error)) => {
                    report.retries += u64::from(attempts.saturating_sub(1));
                    return Err(FlushError::GaveUp {
                        attempts,
                        elapsed,
                        last_error,
                        first_seq,
                        last_seq,
                        delivered: report,
                    });
                }
            };
            report.retries += u64::from(attempts - 1);
            if status != 200 {
                let (code, message) = error_fields(&answer);
                return Err(FlushError::Refused {
                    status,
                    code,
                    message,
                    first_seq,
                    last_seq,
                    delivered: report,
                });
            }
            let batch = match self.read_answer(&answer, n) {
                Ok(b) => b,
                Err(detail) => {
                    return Err(FlushError::BadAnswer {
                        detail,
                        first_seq,
                        last_seq,
                        delivered: report,
                    });
                }
            };
            self.pending.drain(..n);
            tracing::debug!(
                terminal = %self.terminal_id, first_seq, last_seq, attempts,
                accepted = batch.accepted, duplicate = batch.duplicate, rejected = batch.rejected,
                "upload answered"
            );
            if let Some(f) = self.progress.as_mut() {
                f(&Progress::Delivered {
                    first_seq,
                    last_seq,
                    attempts,
                    batch: &batch,
                });
            }
            report.add(batch);
        }
        Ok(report)
    }

    /// `{"terminal_id":…,"readings":[…]}` around the first `n` pending readings.
    fn body(&self, n: usize) -> Vec<u8> {
        let id = serde_json::to_string(&self.terminal_id).expect("a string serialises");
        let len = 32
            + id.len()
            + self
                .pending
                .range(..n)
                .map(|p| p.json.len() + 1)
                .sum::<usize>();
        let mut body = String::with_capacity(len);
        body.push_str(r#"{"terminal_id":"#);
        body.push_str(&id);
        body.push_str(r#","readings":["#);
        for (i, p) in self.pending.range(..n).enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&p.json);
        }
        body.push_str("]}");
        body.into_bytes()
    }

    /// Sends `body` until the node answers something other than a transient failure: its status, its body
    /// and the attempts it took; or, when the limits ran out, the attempts, the time and the last failure.
    async fn send_until_answered(
        &mut self,
        body: &[u8],
        signature: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(u16, bytes::Bytes, u32), (u32, Duration, AttemptError)> {
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let error = match attempt(&self.http, &self.uploads_url, body, signature).await {
                Ok((status, answer)) => {
                    self.backoff.reset();
                    return Ok((status, answer, attempts));
                }
                Err(e) => e,
            };
            let elapsed = started.elapsed();
            let out_of_attempts = self.attempts_max.is_some_and(|max| attempts >= max);
            let out_of_time = self.give_up_after.is_some_and(|limit| elapsed >= limit);
            if out_of_attempts || out_of_time {
                return Err((attempts, elapsed, error));
            }
            let retry_after = match &error {
                AttemptError::Unavailable { retry_after, .. } => *retry_after,
                AttemptError::Transport(_) => None,
            };
            let mut wait = retry_wait(self.backoff.next_delay(), retry_after);
            if let Some(limit) = self.give_up_after {
                wait = wait.min(limit.saturating_sub(elapsed));
            }
            tracing::info!(
                terminal = %self.terminal_id, first_seq, last_seq, attempt = attempts,
                wait_ms = wait.as_millis() as u64, error = %error,
                "upload failed; retrying"
            );
            if let Some(f) = self.progress.as_mut() {
                f(&Progress::Retrying {
                    first_seq,
                    last_seq,
                    attempt: attempts,
                    wait,
                    error: &error,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Counts a 200 answer to the first `n` pending readings, checking that it answers them.
    fn read_answer(&self, answer: &[u8], n: usize) -> Result<FlushReport, String> {
        let answer: UploadResponse = serde_json::from_slice(answer)
            .map_err(|e| format!("not an upload answer ({e}): {}", snippet(answer)))?;
        if answer.terminal_id != self.terminal_id {
            return Err(format!(
                "it answers for terminal {:?}, not {:?}",
                answer.terminal_id, self.terminal_id
            ));
        }
        if answer.results.len() != n {
            return Err(format!("{} results for {n} readings", answer.results.len()));
        }
        let mut batch = FlushReport {
            batches: 1,
            ..FlushReport::default()
        };
        for (sent, result) in self.pending.range(..n).zip(answer.results) {
            let answered = match &result {
                ReadingResult::Accepted { seq, .. } | ReadingResult::Duplicate { seq, .. } => {
                    Some(*seq)
                }
                ReadingResult::Rejected { seq, .. } => *seq,
            };
            if answered.is_some_and(|s| s != sent.seq) {
                return Err(format!(
                    "the result for reading {} is about reading {}",
                    sent.seq,
                    answered.unwrap_or_default()
                ));
            }
            match result {
                ReadingResult::Accepted { .. } => batch.accepted += 1,
                ReadingResult::Duplicate { .. } => batch.duplicate += 1,
                ReadingResult::Rejected {
                    seq, code, message, ..
                } => {
                    batch.rejected += 1;
                    batch
                        .rejections
                        .push(RejectedReading { seq, code, message });
                }
            }
        }
        Ok(batch)
    }
}

/// One request. `Ok` is an answer to keep (200, or a refusal); `Err` a failure to retry.
async fn attempt(
    http: &reqwest::Client,
    url: &str,
    body: &[u8],
    signature: &str,
) -> Result<(u16, bytes::Bytes), AttemptError> {
    let resp = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body.to_vec())
        .send()
        .await
        .map_err(AttemptError::Transport)?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(RETRY_CAP));
    let answer = resp.bytes().await.map_err(AttemptError::Transport)?;
    if is_transient(status) {
        let (code, message) = error_fields(&answer);
        return Err(AttemptError::Unavailable {
            status,
            code,
            message,
            retry_after,
        });
    }
    Ok((status, answer))
}

/// Whether an answer with this status is worth sending the same request again for.
pub fn is_transient(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

/// The wait before the next attempt: the backoff's draw, or longer if the node asked for it with
/// `Retry-After`, never more than [`RETRY_CAP`].
pub fn retry_wait(backoff_delay: Duration, retry_after: Option<Duration>) -> Duration {
    backoff_delay
        .max(retry_after.unwrap_or_default())
        .min(RETRY_CAP)
}

/// `code` and `message` of a `{code, message}` answer, or the raw text when it is not one.
fn error_fields(answer: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct ApiError {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<ApiError>(answer) {
        Ok(e) => (e.code, e.message),
        Err(_) => ("unknown".into(), snippet(answer)),
    }
}

/// The start of a body, for an error message.
fn snippet(body: &[u8]) -> String {
    const CHARS_MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(CHARS_MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.into_owned(),
    }
}

/// An error and its sources, `: `-separated (reqwest's own message leaves out why the connection failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

// ---- `custodian terminal` ---------------------------------------------------------------------------

/// Simulated readings queued between the simulated scale and the uploader (`--interval-s` > 0); when full,
/// the scale waits.
const SIMULATED_QUEUE_MAX: usize = 1_024;

#[derive(Args, Debug)]
pub struct TerminalArgs {
    /// Make a new SM2 private key at --key (PKCS#8 PEM, owner-only; the file must not exist yet), print
    /// its public key PEM (to register the terminal with) and exit.
    #[arg(long)]
    pub keygen: bool,
    /// The node's (or an edge's) API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The terminal's id, as registered.
    #[arg(long, required_unless_present = "keygen")]
    pub id: Option<String>,
    /// The terminal's SM2 private key, PKCS#8 PEM (`openssl genpkey -algorithm SM2` writes one).
    #[arg(long)]
    pub key: PathBuf,
    /// Readings to upload, one JSON object per line (`-` for stdin); `seq` may be left out.
    #[arg(long, conflicts_with_all = ["simulate", "keygen"], required_unless_present_any = ["simulate", "keygen"])]
    pub readings: Option<PathBuf>,
    /// Upload N simulated weighings instead (container C-<id>, stage generation, waste code HW08, measured
    /// now).
    #[arg(long, value_name = "N", conflicts_with = "keygen")]
    pub simulate: Option<u64>,
    /// Seconds between simulated weighings (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub interval_s: f64,
    /// The seq of the first reading that has none.
    #[arg(long, default_value_t = 1)]
    pub first_seq: u64,
    /// Readings per upload.
    #[arg(long, default_value_t = BATCH_READINGS_DEFAULT)]
    pub batch: usize,
    /// Give up when a batch has not gone through for this many seconds (default: retry forever).
    #[arg(long = "give-up-after", value_name = "SECS")]
    pub give_up_after_s: Option<u64>,
}

/// Runs `custodian terminal`.
pub async fn run_command(args: TerminalArgs) -> anyhow::Result<()> {
    if args.keygen {
        return keygen(&args.key);
    }
    let id = args.id.context("--id is required")?;
    let pem = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read {}", args.key.display()))?;
    let key = Sm2KeyPair::from_pkcs8_pem(&pem).with_context(|| {
        format!(
            "{} is not an SM2 PKCS#8 private key (`openssl genpkey -algorithm SM2` or `custodian terminal --keygen` writes one)",
            args.key.display()
        )
    })?;
    let progress_id = id.clone();
    let mut client = TerminalClient::new(&args.url, id.clone(), key)
        .with_next_seq(args.first_seq)
        .with_batch_max(args.batch)
        .with_progress(move |p| print_progress(&progress_id, p));
    if let Some(s) = args.give_up_after_s {
        client = client.with_give_up_after(Duration::from_secs(s));
    }
    let mut report = FlushReport::default();
    let result = match (&args.readings, args.simulate) {
        (Some(path), _) => upload_file(&mut client, path, &mut report).await,
        (None, Some(n)) => {
            let interval = Duration::try_from_secs_f64(args.interval_s)
                .context("--interval-s must be a number of seconds, 0 or more")?;
            upload_simulated(&mut client, n, interval, &mut report).await
        }
        (None, None) => Err(anyhow::anyhow!("give --readings FILE or --simulate N")),
    };
    println!(
        "{}",
        serde_json::json!({
            "accepted": report.accepted,
            "duplicate": report.duplicate,
            "rejected": report.rejected,
        })
    );
    result
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let key = Sm2KeyPair::generate(&OsEntropy);
    crate::write_private(path, &key.to_pkcs8_pem())?;
    print!("{}", key.public_key_pem());
    eprintln!(
        "wrote {}; fingerprint {}; register the public key above with the terminal (public_key_pem)",
        path.display(),
        hex::encode(key_fingerprint(&key.public_key_der()))
    );
    Ok(())
}

/// Pushes `reading`, flushing first when a batch is full, adding what was delivered to `report`.
async fn push_and_flush_full(
    client: &mut TerminalClient,
    reading: ReadingInput,
    report: &mut FlushReport,
) -> anyhow::Result<()> {
    client.push(reading)?;
    if client.pending() >= client.batch_max {
        flush_into(client, report).await?;
    }
    Ok(())
}

async fn flush_into(client: &mut TerminalClient, report: &mut FlushReport) -> anyhow::Result<()> {
    match client.flush().await {
        Ok(r) => {
            report.add(r);
            Ok(())
        }
        Err(e) => {
            report.add(e.delivered().clone());
            Err(e.into())
        }
    }
}

/// Uploads the readings of an NDJSON file (`-`: stdin), a batch at a time as they are read.
async fn upload_file(
    client: &mut TerminalClient,
    path: &Path,
    report: &mut FlushReport,
) -> anyhow::Result<()> {
    let input: Box<dyn std::io::BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let reading: ReadingInput = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not a reading", path.display(), i + 1))?;
        push_and_flush_full(client, reading, report).await?;
    }
    flush_into(client, report).await
}

/// Uploads `n` simulated weighings, one every `interval` (all at once if zero). The scale keeps measuring
/// while an upload is retried; what it measured meanwhile goes in the next batches.
async fn upload_simulated(
    client: &mut TerminalClient,
    n: u64,
    interval: Duration,
    report: &mut FlushReport,
) -> anyhow::Result<()> {
    let mut scale = SimulatedScale::new(client.terminal_id());
    if interval.is_zero() {
        for _ in 0..n {
            push_and_flush_full(client, scale.weigh(), report).await?;
        }
        return flush_into(client, report).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(SIMULATED_QUEUE_MAX);
    let measuring = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        for _ in 0..n {
            tick.tick().await;
            if tx.send(scale.weigh()).await.is_err() {
                return;
            }
        }
    });
    let result = async {
        while let Some(reading) = rx.recv().await {
            client.push(reading)?;
            while client.pending() < client.batch_max {
                match rx.try_recv() {
                    Ok(r) => {
                        client.push(r)?;
                    }
                    Err(_) => break,
                }
            }
            flush_into(client, report).await?;
        }
        anyhow::Ok(())
    }
    .await;
    measuring.abort();
    result
}

/// A scale under a drum that fills up: weighings that grow by 0.5 to 2 kg each.
struct SimulatedScale {
    container_id: String,
    kg: f64,
    rng: SmallRng,
}

impl SimulatedScale {
    fn new(terminal_id: &str) -> Self {
        let mut rng = SmallRng::from_os_rng();
        SimulatedScale {
            container_id: format!("C-{terminal_id}"),
            kg: rng.random_range(20.0..60.0),
            rng,
        }
    }

    fn weigh(&mut self) -> ReadingInput {
        self.kg += self.rng.random_range(0.5..2.0);
        let mut r = ReadingInput::weight_kg(now_rfc3339(), (self.kg * 10.0).round() / 10.0);
        r.container_id = Some(self.container_id.clone());
        r.stage = Some("generation".into());
        r.waste_code = Some("HW08".into());
        r
    }
}

fn print_progress(id: &str, p: &Progress<'_>) {
    match p {
        Progress::Delivered {
            first_seq,
            last_seq,
            attempts,
            batch,
        } => {
            eprintln!(
                "{id} readings {first_seq}..={last_seq}: {} accepted, {} duplicate, {} rejected ({attempts} attempt{})",
                batch.accepted,
                batch.duplicate,
                batch.rejected,
                if *attempts == 1 { "" } else { "s" }
            );
            for r in &batch.rejections {
                let seq = r.seq.map_or("?".into(), |s| s.to_string());
                eprintln!("  reading {seq} rejected: {} {}", r.code, r.message);
            }
        }
        Progress::Retrying {
            first_seq,
            last_seq,
            attempt,
            wait,
            error,
        } => eprintln!(
            "{id} readings {first_seq}..={last_seq}: attempt {attempt} failed ({error}); retrying in {:.1} s",
            wait.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use proptest::prelude::*;

    use super::*;

    /// A stand-in node: answers the first `failures` uploads with `failure`, then accepts every reading;
    /// keeps each request's body and signature.
    struct Stub {
        failures: usize,
        failure: (StatusCode, &'static str),
        seen: Mutex<Vec<(Vec<u8>, String)>>,
    }

    async fn stub_upload(State(s): State<Arc<Stub>>, headers: HeaderMap, body: Bytes) -> Response {
        let signature = headers[SIGNATURE_HEADER].to_str().unwrap().to_owned();
        let n = {
            let mut seen = s.seen.lock().unwrap();
            seen.push((body.to_vec(), signature));
            seen.len()
        };
        if n <= s.failures {
            let (status, code) = s.failure;
            let body = serde_json::json!({"code": code, "message": "stub"});
            return (status, [("retry-after", "0")], axum::Json(body)).into_response();
        }
        let upload: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let results = upload["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let seq = r["seq"].as_u64().unwrap();
                ReadingResult::Accepted {
                    seq,
                    event_seq: seq,
                }
            })
            .collect();
        let answer = UploadResponse {
            terminal_id: upload["terminal_id"].as_str().unwrap().to_owned(),
            results,
        };
        axum::Json(answer).into_response()
    }

    async fn stub(failures: usize, failure: (StatusCode, &'static str)) -> (String, Arc<Stub>) {
        let state = Arc::new(Stub {
            failures,
            failure,
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/v1/uploads", axum::routing::post(stub_upload))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, state)
    }

    fn client(url: &str) -> TerminalClient {
        let key = crate::terminal_sim::terminal_key("T-1", 7);
        TerminalClient::new(url, "T-1", key).with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(5),
            7,
        ))
    }

    fn reading(i: u64) -> ReadingInput {
        ReadingInput::weight_kg("2026-11-26T04:00:00+08:00", 100.0 + i as f64)
    }

    /// The seqs of an upload body, in order.
    fn seqs(body: &[u8]) -> Vec<u64> {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        v["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn sends_in_order_in_batches_of_at_most_batch_max() {
        // Proves: 250 readings go as 100, 100, 50, numbered 1..=250 in order, and all are counted.
        let (url, stub) = stub(0, (StatusCode::OK, "")).await;
        let mut c = client(&url).with_batch_max(100);
        for i in 0..250 {
            c.push(reading(i)).unwrap();
        }
        let report = c.flush().await.unwrap();
        assert_eq!(
            (report.accepted, report.batches, report.retries),
            (250, 3, 0)
        );
        assert_eq!(c.pending(), 0);
        let seen = stub.seen.lock().unwrap();
        let sent: Vec<Vec<u64>> = seen.iter().map(|(b, _)| seqs(b)).collect();
        assert_eq!(
            sent.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(sent.concat(), (1..=250).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_with_the_same_bytes_and_signature() {
        // Proves: two 503s are retried, and every attempt carries the same body and signature.
        let (url, stub) = stub(2, (StatusCode::SERVICE_UNAVAILABLE, "overloaded")).await;
        let mut c = client(&url);
        for i in 0..5 {
            c.push(reading(i)).unwrap();
        }
        let report = c.flush().await.unwrap();
        assert_eq!((report.accepted, report.retries), (5, 2));
        let seen = stub.seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|s| *s == seen[0]));
    }

    #[tokio::test]
    async fn a_refusal_stops_the_flush_and_keeps_the_readings() {
        // Proves: a 401 is not retried; the error names the code; the readings stay pending.
        let (url, stub) = stub(usize::MAX, (StatusCode::UNAUTHORIZED, "signature_invalid")).await;
        let mut c = client(&url);
        for i in 0..3 {
            c.push(reading(i)).unwrap();
        }
        let e = c.flush().await.unwrap_err();
        assert_eq!(e.code(), Some("signature_invalid"));
        assert!(e.to_string().contains("401 signature_invalid"), "{e}");
        assert!(e.to_string().contains("readings 1..=3"), "{e}");
        assert_eq!(c.pending(), 3);
        assert_eq!(stub.seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_allowed() {
        // Proves: against a port nobody listens on, the client stops after `attempts_max` and keeps the batch.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let retried = Arc::new(Mutex::new(0u32));
        let r = retried.clone();
        let mut c = client(&format!("http://127.0.0.1:{port}"))
            .with_attempts_max(3)
            .with_progress(move |p| {
                if let Progress::Retrying { wait, .. } = p {
                    assert!(*wait <= Duration::from_millis(5));
                    *r.lock().unwrap() += 1;
                }
            });
        c.push(reading(0)).unwrap();
        match c.flush().await {
            Err(FlushError::GaveUp {
                attempts,
                last_error: AttemptError::Transport(_),
                ..
            }) => assert_eq!(attempts, 3),
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert_eq!(*retried.lock().unwrap(), 2);
        assert_eq!(c.pending(), 1);
    }

    #[test]
    fn seqs_continue_after_a_reading_that_brings_its_own() {
        // Proves: readings without seq are numbered on from `next_seq` and from any explicit seq.
        let mut c = client("http://127.0.0.1:1").with_next_seq(10);
        assert_eq!(c.push(reading(0)), Ok(10));
        let mut own = reading(1);
        own.seq = Some(20);
        assert_eq!(c.push(own), Ok(20));
        assert_eq!(c.push(reading(2)), Ok(21));
        let mut bad = reading(3);
        bad.value = f64::NAN;
        assert_eq!(c.push(bad), Err(PushError::ValueNotFinite { seq: 22 }));
        assert_eq!((c.pending(), c.next_seq()), (3, 22));
    }

    #[test]
    fn the_body_is_what_the_node_reads() {
        // Proves: the body is an upload the node's shape accepts, with ids escaped.
        let mut c = TerminalClient::new(
            "http://127.0.0.1:1/",
            "T-\"1\"",
            crate::terminal_sim::terminal_key("T-1", 7),
        );
        c.push(reading(0)).unwrap();
        c.push(reading(1)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&c.body(2)).unwrap();
        assert_eq!(v["terminal_id"], "T-\"1\"");
        assert_eq!(v["readings"][1]["seq"], 2);
        assert_eq!(v["readings"][1]["value"], 101.0);
        assert!(v["readings"][1].get("stage").is_none());
        assert_eq!(c.uploads_url, "http://127.0.0.1:1/v1/uploads");
    }

    #[test]
    fn transient_statuses() {
        // Proves: 5xx, 408 and 429 are retried; other 4xx are not.
        for s in [500, 502, 503, 408, 429] {
            assert!(is_transient(s), "{s}");
        }
        for s in [200, 400, 401, 404, 409, 413, 422] {
            assert!(!is_transient(s), "{s}");
        }
    }

    proptest! {
        #[test]
        fn no_wait_exceeds_the_cap_even_when_asked(
            seed in any::<u64>(),
            failures in 0usize..80,
            retry_after_s in proptest::option::of(0u64..100_000),
        ) {
            // Proves: whatever the node's Retry-After, the client never waits more than 30 s, and at least
            // what it asked for within that.
            let mut b = Backoff::new(RETRY_BASE, RETRY_CAP, seed);
            let retry_after = retry_after_s.map(|s| Duration::from_secs(s).min(RETRY_CAP));
            for _ in 0..failures {
                let w = retry_wait(b.next_delay(), retry_after);
                prop_assert!(w <= RETRY_CAP);
                prop_assert!(w >= retry_after.unwrap_or_default());
            }
        }
    }
}

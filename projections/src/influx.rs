//! A small InfluxDB HTTP client speaking both API dialects, and a line-protocol builder.
//!
//! * [`Dialect::V1`]: InfluxDB 1.x, and the v1 compatibility API of 2.x/3.x. Writes go to
//!   `POST /write?db=..&precision=ns[&rp=..][&u=..&p=..]`, queries to `POST /query`.
//! * [`Dialect::V2`]: InfluxDB 2.x/3.x. Writes go to `POST /api/v2/write?org=..&bucket=..&precision=ns`
//!   with `Authorization: Token <token>`; queries use the v1-compatible `/query` endpoint with the same
//!   header and `db=<bucket>` (there is no InfluxQL on the native v2 API).
//!
//! Every failure is one of two kinds ([`InfluxError`]): [`InfluxError::Unavailable`] (unreachable, timed
//! out, 5xx or 429: try again later) or [`InfluxError::Refused`] (any other 4xx, or an InfluxQL error
//! inside a 200 answer: the same request will fail again). Error texts carry the endpoint URL without its
//! query string, so v1 passwords never end up in logs.
//!
//! # Writes and point identity
//!
//! [`InfluxClient::write_lines`] sends at most [`MAX_LINES_PER_REQUEST`] lines per request, gzip-compressed,
//! and stops at the first failing request; the earlier requests stay written. That is safe to retry as a
//! whole because a point's identity is measurement + tag set + timestamp: writing the same point again
//! overwrites it (field by field). Note that InfluxDB 1.x answers a request containing a malformed line
//! with `400 {"error":"partial write: unable to parse '...': ... dropped=N"}` and still stores the good
//! lines of that request; that is reported as [`InfluxError::Refused`].
//!
//! # Line protocol ([`Line`])
//!
//! Escaping follows the line-protocol reference: measurement names escape `,` and space; tag keys, tag
//! values and field keys escape `,`, `=` and space; string field values are double-quoted with `"` and `\`
//! escaped (newlines inside string values are kept; InfluxDB accepts them inside the quotes). Tags are
//! written sorted by key. Integers end in `i`; floats are written in Rust's shortest round-tripping form
//! (`1.5`, `1e300`, `5e-324`), which InfluxDB parses back to the same `f64`.
//!
//! Some strings cannot be represented faithfully in line protocol, so the builder rewrites them rather
//! than produce a line that InfluxDB would reject or misparse. In measurement names, tag keys, tag values
//! and field keys (never in string field values):
//!
//! * a newline or carriage return becomes a space (a line cannot contain one outside a string value);
//! * a backslash that ends the string, or stands right before `,`, `=`, space or `"`, becomes `/`.
//!   InfluxDB 1.x would read it as escaping the following separator (`x\` as a tag value followed by
//!   `,next=1` is rejected as "invalid tag format"), field keys and measurement names unescape such runs
//!   inconsistently, and 2.x/3.x parsers differ from 1.x on backslashes. A backslash before any other
//!   character is written as is and stored as is.
//!
//! Other things the builder refuses or skips (documented on the methods): empty tag keys and values
//! (InfluxDB rejects an empty tag value), NaN and ±infinity float fields (line protocol has no syntax for
//! them), empty field keys. A measurement name must be non-empty and must not start with `#` (a line
//! starting with `#` is a comment that InfluxDB silently ignores); [`Line::new`] panics otherwise, since
//! measurement names are code constants. Keys named `time` are rejected by InfluxDB ("invalid field
//! name"/"invalid tag key"); don't use them.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

/// The most lines [`InfluxClient::write_lines`] puts in one request (InfluxDB recommends batches of
/// 5,000 points).
pub const MAX_LINES_PER_REQUEST: usize = 5000;

/// Whole-request timeout (connect, send, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout: a server that is down should be noticed quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of an unexpected (non-JSON) error body goes into an error's detail.
const MAX_DETAIL_CHARS: usize = 1000;

/// Which InfluxDB HTTP API to speak, with its target and credentials.
///
/// Serialized with a `dialect` tag: `{"dialect":"v1","database":"custodian"}`,
/// `{"dialect":"v2","org":"acme","bucket":"custodian","token":"..."}`. `Debug` redacts the password and
/// the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "dialect", rename_all = "lowercase")]
pub enum Dialect {
    /// InfluxDB 1.x (and 2.x/3.x's v1 compatibility API):
    /// `POST /write?db=<database>&precision=ns[&rp=..][&u=&p=]`.
    V1 {
        database: String,
        #[serde(default)]
        retention_policy: Option<String>,
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        password: Option<String>,
    },
    /// InfluxDB 2.x/3.x: `POST /api/v2/write?org=<org>&bucket=<bucket>&precision=ns` with header
    /// `Authorization: Token <token>`.
    V2 {
        org: String,
        bucket: String,
        token: String,
    },
}

impl Dialect {
    /// InfluxDB 1.x: `database`, its default retention policy, no credentials.
    pub fn v1(database: impl Into<String>) -> Dialect {
        Dialect::V1 {
            database: database.into(),
            retention_policy: None,
            username: None,
            password: None,
        }
    }
}

impl fmt::Debug for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dialect::V1 {
                database,
                retention_policy,
                username,
                password,
            } => f
                .debug_struct("V1")
                .field("database", database)
                .field("retention_policy", retention_policy)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
            Dialect::V2 { org, bucket, .. } => f
                .debug_struct("V2")
                .field("org", org)
                .field("bucket", bucket)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Why a request to InfluxDB failed.
#[derive(Debug, thiserror::Error)]
pub enum InfluxError {
    /// Server unreachable, timed out, or answered 5xx/429: retry later.
    #[error("InfluxDB at {url} is unavailable: {detail}")]
    Unavailable { url: String, detail: String },
    /// Server refused the request (4xx other than 429, or an InfluxQL error inside the answer):
    /// retrying the same request won't help. `status` is the HTTP status; 0 means the request was never
    /// sent (an invalid base URL or token).
    #[error("InfluxDB at {url} refused the request ({status}): {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
}

impl InfluxError {
    /// Whether retrying the same request later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, InfluxError::Unavailable { .. })
    }
}

/// An InfluxDB HTTP client for one server, dialect and target (v1 database or v2 bucket).
///
/// Cloning is cheap: clones share the connection pool.
#[derive(Clone)]
pub struct InfluxClient {
    http: reqwest::Client,
    /// The parsed base URL, or why `new` could not use it (reported by every request as `Refused`).
    base: Arc<Result<Url, String>>,
    /// The base URL as given, for error messages when it did not parse.
    base_text: Arc<str>,
    dialect: Arc<Dialect>,
}

impl fmt::Debug for InfluxClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InfluxClient")
            .field("base_url", &self.base_text)
            .field("dialect", &self.dialect)
            .finish()
    }
}

impl InfluxClient {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8086`; a path prefix such as
    /// `http://proxy/influx` is kept). Requests time out after 10 s, connecting after 2 s.
    ///
    /// Does not contact the server. An unusable `base_url` (not `http(s)://host...`) is not a panic:
    /// every request then fails with [`InfluxError::Refused`] with status 0.
    pub fn new(base_url: &str, dialect: Dialect) -> InfluxClient {
        let base = match Url::parse(base_url) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => Err(format!(
                "invalid InfluxDB base URL {base_url:?}: scheme must be http or https"
            )),
            Ok(url) if url.cannot_be_a_base() || url.host().is_none() => {
                Err(format!("invalid InfluxDB base URL {base_url:?}: no host"))
            }
            Ok(url) => Ok(url),
            Err(e) => Err(format!("invalid InfluxDB base URL {base_url:?}: {e}")),
        };
        if let Err(e) = &base {
            tracing::error!("{e}");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            // Without TLS and proxy support there is nothing environment-dependent that could fail here.
            .expect("building a plain-HTTP reqwest client");
        InfluxClient {
            http,
            base: Arc::new(base),
            base_text: Arc::from(base_url),
            dialect: Arc::new(dialect),
        }
    }

    /// The dialect, target and credentials this client uses.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    /// A client for the same server and credentials writing to another v1 database / v2 bucket (used to
    /// build a shadow copy during rebuilds). Shares the connection pool.
    ///
    /// For v1 the retention policy is *not* carried over: it belongs to the original database, and a
    /// freshly created database only has the default one (InfluxDB 1.x answers a write naming an unknown
    /// retention policy with a 500, which would look like an outage forever). Writes to the new database
    /// go to its default retention policy.
    pub fn with_target(&self, database_or_bucket: &str) -> InfluxClient {
        let dialect = match &*self.dialect {
            Dialect::V1 {
                username, password, ..
            } => Dialect::V1 {
                database: database_or_bucket.to_owned(),
                retention_policy: None,
                username: username.clone(),
                password: password.clone(),
            },
            Dialect::V2 { org, token, .. } => Dialect::V2 {
                org: org.clone(),
                bucket: database_or_bucket.to_owned(),
                token: token.clone(),
            },
        };
        InfluxClient {
            http: self.http.clone(),
            base: self.base.clone(),
            base_text: self.base_text.clone(),
            dialect: Arc::new(dialect),
        }
    }

    /// The v1 database / v2 bucket written to.
    pub fn target(&self) -> &str {
        match &*self.dialect {
            Dialect::V1 { database, .. } => database,
            Dialect::V2 { bucket, .. } => bucket,
        }
    }

    /// Makes sure the target exists. v1: `CREATE DATABASE "<db>"` (a no-op if it exists). v2: nothing,
    /// buckets are made by the operator.
    pub async fn ensure_target(&self) -> Result<(), InfluxError> {
        match &*self.dialect {
            Dialect::V1 { database, .. } => {
                let q = format!("CREATE DATABASE {}", quote_identifier(database));
                self.run_query(None, &q).await.map(drop)
            }
            Dialect::V2 { .. } => Ok(()),
        }
    }

    /// Deletes the target with all its data. v1: `DROP DATABASE "<db>"` (a no-op if it does not exist).
    /// v2: does nothing (logs a warning): buckets are the operator's.
    pub async fn drop_target(&self) -> Result<(), InfluxError> {
        match &*self.dialect {
            Dialect::V1 { database, .. } => {
                let q = format!("DROP DATABASE {}", quote_identifier(database));
                self.run_query(None, &q).await.map(drop)
            }
            Dialect::V2 { bucket, .. } => {
                tracing::warn!(
                    bucket = %bucket,
                    "InfluxDB v2: buckets are not dropped by custodian; delete the bucket's data by hand if needed"
                );
                Ok(())
            }
        }
    }

    /// Writes line-protocol lines (each without a trailing newline), at most [`MAX_LINES_PER_REQUEST`]
    /// per request, gzip-compressed, precision ns. Stops at the first failing request and returns its
    /// error; the lines of earlier requests stay written (point identity makes rewriting them harmless).
    /// An empty slice sends nothing.
    pub async fn write_lines(&self, lines: &[String]) -> Result<(), InfluxError> {
        for chunk in lines.chunks(MAX_LINES_PER_REQUEST) {
            self.write_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn write_chunk(&self, chunk: &[String]) -> Result<(), InfluxError> {
        let (url, shown) = match &*self.dialect {
            Dialect::V1 {
                database,
                retention_policy,
                username,
                password,
            } => {
                let (mut url, shown) = self.endpoint(&["write"])?;
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("db", database).append_pair("precision", "ns");
                    if let Some(rp) = retention_policy {
                        q.append_pair("rp", rp);
                    }
                    q.extend_pairs(v1_credentials(username, password));
                }
                (url, shown)
            }
            Dialect::V2 { org, bucket, .. } => {
                let (mut url, shown) = self.endpoint(&["api", "v2", "write"])?;
                url.query_pairs_mut()
                    .append_pair("org", org)
                    .append_pair("bucket", bucket)
                    .append_pair("precision", "ns");
                (url, shown)
            }
        };
        let raw_len: usize = chunk.iter().map(|l| l.len() + 1).sum();
        let body = gzip_lines(chunk, raw_len);
        tracing::debug!(
            lines = chunk.len(),
            bytes = raw_len,
            gzipped = body.len(),
            target = self.target(),
            "InfluxDB write"
        );
        let request = self
            .authorize(self.http.post(url))
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CONTENT_ENCODING, "gzip")
            .body(body);
        self.send(request, &shown).await.map(drop)
    }

    /// Runs an InfluxQL query against the target (`POST /query?db=<target>&epoch=ns`, the statement in
    /// the form body) and returns InfluxDB's JSON answer (`{"results":[{"statement_id":0,"series":[..]}]}`;
    /// timestamps are epoch nanoseconds). An `"error"` in the answer, top-level or in any statement's
    /// result, is [`InfluxError::Refused`] (with the HTTP status, usually 200).
    ///
    /// For v2 this uses the v1-compatible `/query` endpoint with `Authorization: Token`, db = bucket
    /// (the bucket needs a DBRP mapping on 2.x).
    pub async fn query(&self, influxql: &str) -> Result<serde_json::Value, InfluxError> {
        self.run_query(Some(self.target()), influxql).await
    }

    /// `GET /ping` answers 2xx.
    pub async fn ping(&self) -> Result<(), InfluxError> {
        let (url, shown) = self.endpoint(&["ping"])?;
        self.send(self.http.get(url), &shown).await.map(drop)
    }

    async fn run_query(
        &self,
        db: Option<&str>,
        influxql: &str,
    ) -> Result<serde_json::Value, InfluxError> {
        let (mut url, shown) = self.endpoint(&["query"])?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(db) = db {
                q.append_pair("db", db);
            }
            q.append_pair("epoch", "ns");
            if let Dialect::V1 {
                username, password, ..
            } = &*self.dialect
            {
                q.extend_pairs(v1_credentials(username, password));
            }
        }
        let request = self
            .authorize(self.http.post(url))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form_encode(&[("q", influxql)]));
        let (status, body) = self.send(request, &shown).await?;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| InfluxError::Unavailable {
                url: shown.clone(),
                detail: format!(
                    "the answer to a query is not JSON ({e}): {}",
                    body_excerpt(&body)
                ),
            })?;
        if let Some(detail) = query_error(&answer) {
            return Err(InfluxError::Refused {
                url: shown,
                status: status.as_u16(),
                detail,
            });
        }
        Ok(answer)
    }

    /// The URL of an API path under the base URL, without query, and its display form for errors.
    fn endpoint(&self, segments: &[&str]) -> Result<(Url, String), InfluxError> {
        let not_sent = |detail: String| InfluxError::Refused {
            url: self.base_text.to_string(),
            status: 0,
            detail,
        };
        let mut url = match &*self.base {
            Ok(url) => url.clone(),
            Err(e) => return Err(not_sent(e.clone())),
        };
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| not_sent("the base URL cannot have a path".to_owned()))?
            .pop_if_empty()
            .extend(segments);
        let mut shown = url.clone();
        // Never show credentials embedded in the base URL.
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        Ok((url, shown.to_string()))
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &*self.dialect {
            Dialect::V1 { .. } => request,
            Dialect::V2 { token, .. } => request.header(AUTHORIZATION, format!("Token {token}")),
        }
    }

    /// Sends a request; a 2xx answer gives its status and body, anything else the classified error.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        shown: &str,
    ) -> Result<(StatusCode, Vec<u8>), InfluxError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(e, shown))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error(e, shown))?
            .to_vec();
        if status.is_success() {
            return Ok((status, body));
        }
        let detail = error_detail(&headers, &body);
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            Err(InfluxError::Refused {
                url: shown.to_owned(),
                status: status.as_u16(),
                detail,
            })
        } else {
            Err(InfluxError::Unavailable {
                url: shown.to_owned(),
                detail: format!("HTTP {status}: {detail}"),
            })
        }
    }
}

/// The v1 `u`/`p` query parameters, for those of the two that are set.
fn v1_credentials<'a>(
    username: &'a Option<String>,
    password: &'a Option<String>,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    [("u", username), ("p", password)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut scratch = Url::parse("http://localhost/").expect("a constant URL parses");
    scratch.query_pairs_mut().extend_pairs(pairs);
    scratch.query().unwrap_or_default().to_owned()
}

/// The lines joined with `\n`, gzip-compressed.
fn gzip_lines(lines: &[String], raw_len: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw_len / 4 + 64),
        flate2::Compression::fast(),
    );
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            encoder.write_all(b"\n").expect("writing to a Vec");
        }
        encoder
            .write_all(line.as_bytes())
            .expect("writing to a Vec");
    }
    encoder.finish().expect("writing to a Vec")
}

/// An InfluxQL identifier in double quotes (`"my db"`, `"a\"b"`).
fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A reqwest failure (no answer, or the answer broke off) as `Unavailable`; a request that could not even
/// be built (e.g. a token that is not a valid header value) as `Refused` with status 0. The detail never
/// contains the URL (which may carry v1 credentials).
fn transport_error(e: reqwest::Error, shown: &str) -> InfluxError {
    let is_builder = e.is_builder();
    let is_timeout = e.is_timeout();
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(detail, ": {s}");
        source = s.source();
    }
    if is_builder {
        InfluxError::Refused {
            url: shown.to_owned(),
            status: 0,
            detail,
        }
    } else {
        if is_timeout {
            detail = format!("timed out: {detail}");
        }
        InfluxError::Unavailable {
            url: shown.to_owned(),
            detail,
        }
    }
}

/// The server's error text: 1.x `{"error": ".."}`, 2.x `{"code": "..", "message": ".."}`, the
/// `X-Influxdb-Error` header, or the start of the body.
fn error_detail(headers: &HeaderMap, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            return e.to_owned();
        }
        if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
            return match v.get("code").and_then(|c| c.as_str()) {
                Some(code) => format!("{code}: {m}"),
                None => m.to_owned(),
            };
        }
    }
    if let Some(e) = headers
        .get("x-influxdb-error")
        .and_then(|h| h.to_str().ok())
    {
        return e.to_owned();
    }
    body_excerpt(body)
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty answer)".to_owned();
    }
    let mut excerpt: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    if excerpt.len() < text.len() {
        excerpt.push('…');
    }
    excerpt
}

/// The error inside a 200 query answer, if any: top-level `"error"`, or any statement's `"error"`.
fn query_error(answer: &serde_json::Value) -> Option<String> {
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
        return Some(e.to_owned());
    }
    let errors: Vec<String> = answer
        .get("results")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let e = r.get("error")?.as_str()?;
            Some(match r.get("statement_id").and_then(|s| s.as_i64()) {
                Some(id) => format!("statement {id}: {e}"),
                None => e.to_owned(),
            })
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

// ---------------------------------------------------------------------------------------------------------
// Line protocol
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(String),
}

/// One line-protocol point, built field by field (see the module docs for escaping and the strings that
/// get rewritten).
///
/// ```
/// # use custodian_projections::influx::Line;
/// let line = Line::new("reading")
///     .tag("site", "危废 仓库")
///     .field_f64("value", 1.5)
///     .timestamp_ns(1_700_000_000_000_000_000)
///     .build();
/// assert_eq!(line, r"reading,site=危废\ 仓库 value=1.5 1700000000000000000");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    measurement: String,
    /// Sanitized tag key → sanitized value; sorted by key, a repeated key keeps the last value.
    tags: BTreeMap<String, String>,
    /// Sanitized field keys in the order first set; a repeated key keeps the last value.
    fields: Vec<(String, FieldValue)>,
    timestamp_ns: Option<i64>,
}

impl Line {
    /// Starts a point of `measurement`.
    ///
    /// # Panics
    /// If `measurement` is empty or starts with `#` (InfluxDB would take the line for a comment and
    /// silently drop it). Measurement names are code constants.
    pub fn new(measurement: &str) -> Line {
        assert!(
            !measurement.is_empty() && !measurement.starts_with('#'),
            "invalid InfluxDB measurement name {measurement:?}: must be non-empty and not start with '#'"
        );
        Line {
            measurement: sanitize_identifier(measurement),
            tags: BTreeMap::new(),
            fields: Vec::new(),
            timestamp_ns: None,
        }
    }

    /// Adds a tag. An empty key or value skips the tag (InfluxDB rejects empty tag values; a missing
    /// tag is how an absent value is stored). Setting a key again replaces its value.
    pub fn tag(mut self, k: &str, v: &str) -> Line {
        if !k.is_empty() && !v.is_empty() {
            self.tags
                .insert(sanitize_identifier(k), sanitize_identifier(v));
        }
        self
    }

    /// Adds a float field. NaN and ±infinity have no line-protocol syntax (InfluxDB answers
    /// "invalid number"): such a field is skipped (logged at debug level). If that leaves the line
    /// without fields, [`Line::build`] panics; use [`Line::try_build`] where that can happen.
    pub fn field_f64(self, k: &str, v: f64) -> Line {
        if !v.is_finite() {
            tracing::debug!(
                measurement = %self.measurement,
                field = k,
                value = %v,
                "skipping a non-finite float field: line protocol cannot express it"
            );
            return self;
        }
        self.field(k, FieldValue::F64(v))
    }

    /// Adds an integer field (written `42i`).
    pub fn field_i64(self, k: &str, v: i64) -> Line {
        self.field(k, FieldValue::I64(v))
    }

    /// Adds a boolean field (`true`/`false`).
    pub fn field_bool(self, k: &str, v: bool) -> Line {
        self.field(k, FieldValue::Bool(v))
    }

    /// Adds a string field (double-quoted; `"` and `\` escaped; any character allowed). InfluxDB 1.x
    /// limits string field values to 64 KiB.
    pub fn field_str(self, k: &str, v: &str) -> Line {
        self.field(k, FieldValue::Str(v.to_owned()))
    }

    /// Sets the timestamp in nanoseconds since the Unix epoch. Without one, the server's clock is used,
    /// which makes the point's identity non-deterministic: projections should always set it.
    pub fn timestamp_ns(mut self, ns: i64) -> Line {
        self.timestamp_ns = Some(ns);
        self
    }

    /// Whether the line has at least one field (a line without fields is not valid line protocol).
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// The line-protocol text (no trailing newline).
    ///
    /// # Panics
    /// If no field was added (or every field was skipped, e.g. a NaN float).
    pub fn build(&self) -> String {
        self.try_build().unwrap_or_else(|| {
            panic!(
                "InfluxDB line for measurement {:?} has no field",
                self.measurement
            )
        })
    }

    /// The line-protocol text, or `None` if the line has no field.
    pub fn try_build(&self) -> Option<String> {
        if self.fields.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(64);
        escape_into(&mut out, &self.measurement, &[',', ' ']);
        for (k, v) in &self.tags {
            out.push(',');
            escape_into(&mut out, k, &[',', '=', ' ']);
            out.push('=');
            escape_into(&mut out, v, &[',', '=', ' ']);
        }
        for (i, (k, v)) in self.fields.iter().enumerate() {
            out.push(if i == 0 { ' ' } else { ',' });
            escape_into(&mut out, k, &[',', '=', ' ']);
            out.push('=');
            match v {
                // `{:?}` is the shortest representation that parses back to the same f64, with an
                // exponent for very large/small magnitudes (`1e300`), which InfluxDB accepts.
                FieldValue::F64(f) => {
                    let _ = write!(out, "{f:?}");
                }
                FieldValue::I64(n) => {
                    let _ = write!(out, "{n}i");
                }
                FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                FieldValue::Str(s) => {
                    out.push('"');
                    for c in s.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
        if let Some(ns) = self.timestamp_ns {
            let _ = write!(out, " {ns}");
        }
        Some(out)
    }

    fn field(mut self, k: &str, v: FieldValue) -> Line {
        debug_assert!(!k.is_empty(), "empty InfluxDB field key");
        if k.is_empty() {
            return self;
        }
        let k = sanitize_identifier(k);
        match self.fields.iter_mut().find(|(key, _)| *key == k) {
            Some(existing) => existing.1 = v,
            None => self.fields.push((k, v)),
        }
        self
    }
}

/// Rewrites what line protocol cannot carry in a measurement name, tag key/value or field key: newlines
/// become spaces, and a backslash at the end or right before `,`, `=`, space or `"` becomes `/` (see the
/// module docs). Keeps the number of characters.
fn sanitize_identifier(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), None | Some(',' | '=' | ' ' | '"')) {
            out.push('/');
        } else {
            out.push(c);
        }
    }
    out
}

/// Appends an already sanitized identifier with `escaped` characters backslash-escaped.
fn escape_into(out: &mut String, s: &str, escaped: &[char]) {
    for c in s.chars() {
        if escaped.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::io::Read as _;
    use std::sync::Mutex;

    // -----------------------------------------------------------------------------------------------------
    // A strict test-only line-protocol parser.
    //
    // Stricter than InfluxDB: a backslash escapes only the characters the builder escapes in that
    // position; a backslash before a separator, before an escape, or at the end of a token is an error
    // (those are the spots where InfluxDB versions disagree). Anything the builder writes must parse.
    // -----------------------------------------------------------------------------------------------------

    #[derive(Debug, Clone, PartialEq)]
    enum Parsed {
        F(f64),
        I(i64),
        B(bool),
        S(String),
    }

    #[derive(Debug, PartialEq)]
    struct ParsedLine {
        measurement: String,
        tags: Vec<(String, String)>,
        fields: Vec<(String, Parsed)>,
        timestamp: Option<i64>,
    }

    /// Reads an identifier from `chars[*pos..]` up to one of `terminators` (returned, `None` at the end).
    fn read_identifier(
        chars: &[char],
        pos: &mut usize,
        escapable: &[char],
        terminators: &[char],
    ) -> Result<(String, Option<char>), String> {
        let mut out = String::new();
        let mut last_literal_backslash = false;
        while *pos < chars.len() {
            let c = chars[*pos];
            if c == '\\' {
                match chars.get(*pos + 1) {
                    Some(&n) if escapable.contains(&n) => {
                        if last_literal_backslash {
                            return Err(format!("literal backslash before an escape at {}", *pos));
                        }
                        out.push(n);
                        *pos += 2;
                        last_literal_backslash = false;
                        continue;
                    }
                    None => return Err("backslash at the end of the line".into()),
                    Some(&n) if terminators.contains(&n) || n == '"' => {
                        return Err(format!("backslash before {n:?} at {}", *pos));
                    }
                    Some(_) => {
                        out.push('\\');
                        *pos += 1;
                        last_literal_backslash = true;
                        continue;
                    }
                }
            }
            if terminators.contains(&c) {
                *pos += 1;
                return Ok((out, Some(c)));
            }
            if c == '\n' || c == '\r' {
                return Err(format!("raw newline in an identifier at {}", *pos));
            }
            out.push(c);
            last_literal_backslash = false;
            *pos += 1;
        }
        Ok((out, None))
    }

    fn parse_line(line: &str) -> Result<ParsedLine, String> {
        let chars: Vec<char> = line.chars().collect();
        let mut pos = 0;
        if chars.first() == Some(&'#') {
            return Err("comment line".into());
        }
        let (measurement, mut term) = read_identifier(&chars, &mut pos, &[',', ' '], &[',', ' '])?;
        if measurement.is_empty() {
            return Err("empty measurement".into());
        }
        let mut tags = Vec::new();
        while term == Some(',') {
            let (k, t) = read_identifier(&chars, &mut pos, &[',', '=', ' '], &['=', ',', ' '])?;
            if t != Some('=') || k.is_empty() {
                return Err(format!("bad tag key {k:?}"));
            }
            let (v, t) = read_identifier(&chars, &mut pos, &[',', '=', ' '], &['=', ',', ' '])?;
            if t == Some('=') || t.is_none() || v.is_empty() {
                return Err(format!("bad tag value {v:?} for {k:?}"));
            }
            tags.push((k, v));
            term = t;
        }
        if term != Some(' ') {
            return Err("no fields".into());
        }
        let mut fields = Vec::new();
        loop {
            let (k, t) = read_identifier(&chars, &mut pos, &[',', '=', ' '], &['=', ',', ' '])?;
            if t != Some('=') || k.is_empty() {
                return Err(format!("bad field key {k:?}"));
            }
            let value = if chars.get(pos) == Some(&'"') {
                pos += 1;
                let mut s = String::new();
                loop {
                    match chars.get(pos) {
                        None => return Err("unterminated string".into()),
                        Some('"') => {
                            pos += 1;
                            break;
                        }
                        Some('\\') => match chars.get(pos + 1) {
                            Some(&n @ ('"' | '\\')) => {
                                s.push(n);
                                pos += 2;
                            }
                            other => return Err(format!("bad string escape \\{other:?}")),
                        },
                        Some(&c) => {
                            s.push(c);
                            pos += 1;
                        }
                    }
                }
                Parsed::S(s)
            } else {
                let start = pos;
                while pos < chars.len() && chars[pos] != ',' && chars[pos] != ' ' {
                    pos += 1;
                }
                let token: String = chars[start..pos].iter().collect();
                if let Some(n) = token.strip_suffix('i') {
                    Parsed::I(
                        n.parse()
                            .map_err(|e| format!("bad integer {token:?}: {e}"))?,
                    )
                } else if token == "true" || token == "false" {
                    Parsed::B(token == "true")
                } else if !token.is_empty()
                    && token
                        .chars()
                        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e'))
                {
                    Parsed::F(
                        token
                            .parse()
                            .map_err(|e| format!("bad float {token:?}: {e}"))?,
                    )
                } else {
                    return Err(format!("bad field value {token:?}"));
                }
            };
            fields.push((k, value));
            match chars.get(pos) {
                Some(',') => pos += 1,
                Some(' ') => {
                    pos += 1;
                    let rest: String = chars[pos..].iter().collect();
                    let ts = rest
                        .parse()
                        .map_err(|e| format!("bad timestamp {rest:?}: {e}"))?;
                    return Ok(ParsedLine {
                        measurement,
                        tags,
                        fields,
                        timestamp: Some(ts),
                    });
                }
                None => {
                    return Ok(ParsedLine {
                        measurement,
                        tags,
                        fields,
                        timestamp: None,
                    });
                }
                Some(c) => return Err(format!("unexpected {c:?} after a field value")),
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Escaping
    // -----------------------------------------------------------------------------------------------------

    #[test]
    fn influx_line_escapes_measurement_tags_and_fields() {
        let line = Line::new("my meas,ure=ment")
            .tag("tag key,=", "va lue,=x")
            .field_str("field key,=", "say \"hi\" \\ there")
            .field_i64("n", -42)
            .timestamp_ns(1_700_000_000_000_000_000)
            .build();
        assert_eq!(
            line,
            r#"my\ meas\,ure=ment,tag\ key\,\==va\ lue\,\=x field\ key\,\=="say \"hi\" \\ there",n=-42i 1700000000000000000"#
        );
    }

    #[test]
    fn influx_line_unicode_tags_sorted_and_deduplicated() {
        let line = Line::new("reading")
            .tag("waste_kind", "危废 HW08")
            .tag("site", "仓库,一号")
            .tag("category", "old")
            .tag("category", "危废")
            .tag("empty", "")
            .tag("", "no key")
            .field_bool("ok", true)
            .field_bool("bad", false)
            .build();
        assert_eq!(
            line,
            r"reading,category=危废,site=仓库\,一号,waste_kind=危废\ HW08 ok=true,bad=false"
        );
    }

    #[test]
    fn influx_line_floats_round_trip_and_non_finite_are_skipped() {
        for v in [
            0.0,
            -0.0,
            1.0,
            1.5,
            0.1,
            -2.5e-7,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            123456789.123,
        ] {
            let line = Line::new("m").field_f64("v", v).build();
            let value = line.strip_prefix("m v=").unwrap();
            assert!(!value.contains("inf") && !value.contains("NaN"), "{line}");
            let back: f64 = value.parse().unwrap();
            assert_eq!(back.to_bits(), v.to_bits(), "{line}");
        }
        let line = Line::new("m")
            .field_f64("nan", f64::NAN)
            .field_f64("inf", f64::INFINITY)
            .field_f64("ninf", f64::NEG_INFINITY)
            .field_f64("ok", 2.0);
        assert_eq!(line.build(), "m ok=2.0");
        let only_nan = Line::new("m").field_f64("v", f64::NAN);
        assert!(!only_nan.has_fields());
        assert_eq!(only_nan.try_build(), None);
        assert_eq!(
            Line::new("m")
                .field_i64("min", i64::MIN)
                .field_i64("max", i64::MAX)
                .build(),
            "m min=-9223372036854775808i,max=9223372036854775807i"
        );
    }

    #[test]
    #[should_panic(expected = "has no field")]
    fn influx_line_without_fields_panics() {
        Line::new("m").tag("a", "b").build();
    }

    #[test]
    #[should_panic(expected = "invalid InfluxDB measurement name")]
    fn influx_line_comment_measurement_panics() {
        Line::new("#m");
    }

    #[test]
    fn influx_line_repeated_field_keeps_last_value_in_first_position() {
        let line = Line::new("m")
            .field_i64("a", 1)
            .field_i64("b", 2)
            .field_i64("a", 3)
            .build();
        assert_eq!(line, "m a=3i,b=2i");
    }

    #[test]
    fn influx_line_backslashes_and_newlines() {
        // Backslashes before ordinary characters stay; ones that would escape a separator become '/'.
        let line = Line::new(r"m\x")
            .tag("path", r"C:\dir\file")
            .tag("trail", r"x\")
            .tag("before_comma", r"a\,b")
            .tag("two", r"a\\ b")
            .tag("multi\nline", "one\r\ntwo")
            .field_str("s", "back\\slash \"q\"\nnext line")
            .field_str(r"k\", r"v\")
            .build();
        assert_eq!(
            line,
            "m\\x,before_comma=a/\\,b,multi\\ line=one\\ \\ two,path=C:\\dir\\file,trail=x/,two=a\\/\\ b \
             s=\"back\\\\slash \\\"q\\\"\nnext line\",k/=\"v\\\\\""
        );
        let parsed = parse_line(&line).unwrap();
        assert_eq!(parsed.measurement, r"m\x");
        assert_eq!(
            parsed.tags,
            vec![
                ("before_comma".into(), r"a/,b".into()),
                ("multi line".into(), "one  two".into()),
                ("path".into(), r"C:\dir\file".into()),
                ("trail".into(), "x/".into()),
                ("two".into(), r"a\/ b".into()),
            ]
        );
        assert_eq!(
            parsed.fields,
            vec![
                ("s".into(), Parsed::S("back\\slash \"q\"\nnext line".into())),
                ("k/".into(), Parsed::S(r"v\".into())),
            ]
        );
    }

    #[test]
    fn influx_strict_parser_rejects_ambiguous_lines() {
        for bad in [
            r"m,t=x\,u=1 f=1",    // trailing backslash escaping the separator
            r"m,t=a\\,b f=1",     // literal backslash before an escape
            "m,t=a\nb f=1",       // raw newline in a tag
            r"m,t=a=b f=1",       // unescaped '=' in a tag value
            "m f=NaN",            // no NaN in line protocol
            "#m f=1",             // comment
            "m f=\"unterminated", // string never closed
            "m,t= f=1",           // empty tag value
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[derive(Debug, Clone)]
    enum FieldInput {
        F(f64),
        I(i64),
        B(bool),
        S(String),
    }

    fn field_input() -> impl Strategy<Value = FieldInput> {
        prop_oneof![
            any::<f64>().prop_map(FieldInput::F),
            any::<i64>().prop_map(FieldInput::I),
            any::<bool>().prop_map(FieldInput::B),
            "[a-z危废 ,=\"\\\\\n#]{0,8}".prop_map(FieldInput::S),
        ]
    }

    /// What a sanitized identifier must look like, stated independently of `sanitize_identifier`:
    /// same length; each character equal to the input's, except newline/CR → space and backslash → '/'.
    fn assert_sanitized(input: &str, output: &str) {
        let a: Vec<char> = input.chars().collect();
        let b: Vec<char> = output.chars().collect();
        assert_eq!(a.len(), b.len(), "{input:?} → {output:?}");
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            let ok = x == y
                || ((x == '\n' || x == '\r') && y == ' ')
                || (x == '\\'
                    && y == '/'
                    && matches!(
                        a.get(i + 1),
                        None | Some(',' | '=' | ' ' | '"' | '\n' | '\r')
                    ));
            assert!(ok, "{input:?} → {output:?} at {i}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn influx_built_lines_parse_back(
            measurement in "[a-z危废 ,=\"\\\\]{1,6}",
            tags in proptest::collection::vec(("[a-z危废 ,=\"\\\\#\n]{0,5}", "[a-z危废 ,=\"\\\\#\n]{0,5}"), 0..4),
            fields in proptest::collection::vec(("[a-z危废 ,=\"\\\\#\n]{1,5}", field_input()), 1..4),
            timestamp in proptest::option::of(any::<i64>()),
        ) {
            let mut line = Line::new(&measurement);
            for (k, v) in &tags {
                line = line.tag(k, v);
            }
            let mut finite_fields = 0;
            for (k, v) in &fields {
                line = match v {
                    FieldInput::F(f) => { finite_fields += usize::from(f.is_finite()); line.field_f64(k, *f) }
                    FieldInput::I(n) => { finite_fields += 1; line.field_i64(k, *n) }
                    FieldInput::B(b) => { finite_fields += 1; line.field_bool(k, *b) }
                    FieldInput::S(s) => { finite_fields += 1; line.field_str(k, s) }
                };
            }
            if let Some(ts) = timestamp {
                line = line.timestamp_ns(ts);
            }
            let Some(text) = line.try_build() else {
                prop_assert_eq!(finite_fields, 0);
                return Ok(());
            };
            prop_assert!(!text.contains('\r'));
            let parsed = parse_line(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;

            assert_sanitized(&measurement, &parsed.measurement);
            prop_assert_eq!(parsed.timestamp, timestamp);

            // Tags: the non-empty ones, last value per (sanitized) key, sorted by key.
            let kept: Vec<&(String, String)> = tags.iter().filter(|(k, v)| !k.is_empty() && !v.is_empty()).collect();
            let mut expected_keys: Vec<String> = kept.iter().map(|(k, _)| sanitize_identifier(k)).collect();
            expected_keys.sort();
            expected_keys.dedup();
            let parsed_keys: Vec<String> = parsed.tags.iter().map(|(k, _)| k.clone()).collect();
            prop_assert_eq!(&parsed_keys, &expected_keys);
            for (k, v) in &parsed.tags {
                let (orig_k, orig_v) = kept.iter().rev().find(|(ok, _)| sanitize_identifier(ok) == *k).unwrap();
                assert_sanitized(orig_k, k);
                assert_sanitized(orig_v, v);
            }

            // Fields: last value per (sanitized) key, NaN/inf skipped.
            for (k, v) in &parsed.fields {
                let (orig_k, orig_v) = fields.iter().rev()
                    .filter(|(_, v)| !matches!(v, FieldInput::F(f) if !f.is_finite()))
                    .find(|(ok, _)| sanitize_identifier(ok) == *k).unwrap();
                assert_sanitized(orig_k, k);
                match (orig_v, v) {
                    (FieldInput::F(a), Parsed::F(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
                    (FieldInput::I(a), Parsed::I(b)) => prop_assert_eq!(a, b),
                    (FieldInput::B(a), Parsed::B(b)) => prop_assert_eq!(a, b),
                    (FieldInput::S(a), Parsed::S(b)) => prop_assert_eq!(a, b),
                    (a, b) => prop_assert!(false, "field {:?}: {:?} came back as {:?}", k, a, b),
                }
            }
            let mut distinct: Vec<String> = fields.iter()
                .filter(|(_, v)| !matches!(v, FieldInput::F(f) if !f.is_finite()))
                .map(|(k, _)| sanitize_identifier(k)).collect();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(parsed.fields.len(), distinct.len());
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Client against a fake server (axum), for request shapes and error mapping
    // -----------------------------------------------------------------------------------------------------

    #[derive(Debug, Clone)]
    struct Recorded {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: axum::http::HeaderMap,
        body: Vec<u8>,
    }

    impl Recorded {
        fn param(&self, name: &str) -> Option<&str> {
            self.query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        fn gunzipped_body(&self) -> String {
            let mut out = String::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_string(&mut out)
                .expect("the body is gzip");
            out
        }
    }

    struct Fake {
        url: String,
        requests: Arc<Mutex<Vec<Recorded>>>,
    }

    impl Fake {
        fn requests(&self) -> Vec<Recorded> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn decode_query(query: &str) -> Vec<(String, String)> {
        let url = Url::parse(&format!("http://x/?{query}")).unwrap();
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// A server on 127.0.0.1:0 recording every request and answering them with `answers` in order
    /// (status, JSON body); once those run out, 204 with no body.
    async fn start_fake(answers: Vec<(u16, &'static str)>) -> Fake {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let recorded = requests.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let recorded = recorded.clone();
            let answers = answers.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 256 << 20)
                    .await
                    .unwrap()
                    .to_vec();
                recorded.lock().unwrap().push(Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: decode_query(parts.uri.query().unwrap_or("")),
                    headers: parts.headers,
                    body,
                });
                let (status, body) = answers.lock().unwrap().pop_front().unwrap_or((204, ""));
                axum::http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { url, requests }
    }

    fn v2() -> Dialect {
        Dialect::V2 {
            org: "acme org".into(),
            bucket: "readings".into(),
            token: "s3cr3t-token".into(),
        }
    }

    fn v1_with_credentials() -> Dialect {
        Dialect::V1 {
            database: "custodian".into(),
            retention_policy: Some("one_year".into()),
            username: Some("writer".into()),
            password: Some("pa ss&word".into()),
        }
    }

    #[tokio::test]
    async fn influx_v2_write_request_shape() {
        // https://docs.influxdata.com/influxdb/v2/api/#operation/PostWrite
        let fake = start_fake(vec![]).await;
        let client = InfluxClient::new(&fake.url, v2());
        let lines = vec![
            Line::new("reading")
                .tag("site", "危废 仓库")
                .field_f64("value", 1.5)
                .timestamp_ns(1)
                .build(),
            Line::new("reading")
                .tag("site", "b")
                .field_i64("count", 2)
                .timestamp_ns(2)
                .build(),
            Line::new("note")
                .field_str("text", "line1\nline2")
                .timestamp_ns(3)
                .build(),
        ];
        client.write_lines(&lines).await.unwrap();
        let requests = fake.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v2/write");
        assert_eq!(r.param("org"), Some("acme org"));
        assert_eq!(r.param("bucket"), Some("readings"));
        assert_eq!(r.param("precision"), Some("ns"));
        assert_eq!(r.query.len(), 3, "{:?}", r.query);
        assert_eq!(r.header("authorization"), Some("Token s3cr3t-token"));
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.gunzipped_body(), lines.join("\n"));

        // Nothing to write: no request.
        client.write_lines(&[]).await.unwrap();
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn influx_v1_write_and_query_request_shape() {
        let fake = start_fake(vec![
            (204, ""),
            (200, r#"{"results":[{"statement_id":0,"series":[{"name":"m","columns":["time","count"],"values":[[0,3]]}]}]}"#),
            (200, r#"{"results":[{"statement_id":0}]}"#),
        ])
        .await;
        // A base URL with a path prefix and a trailing slash.
        let client = InfluxClient::new(&format!("{}/influx/", fake.url), v1_with_credentials());
        client.write_lines(&["m f=1i 1".to_owned()]).await.unwrap();
        let answer = client.query("SELECT count(f) FROM m").await.unwrap();
        assert_eq!(answer["results"][0]["series"][0]["values"][0][1], 3);
        client.ensure_target().await.unwrap();

        let requests = fake.requests();
        assert_eq!(requests.len(), 3);
        let w = &requests[0];
        assert_eq!(
            (w.method.as_str(), w.path.as_str()),
            ("POST", "/influx/write")
        );
        assert_eq!(w.param("db"), Some("custodian"));
        assert_eq!(w.param("rp"), Some("one_year"));
        assert_eq!(w.param("precision"), Some("ns"));
        assert_eq!(w.param("u"), Some("writer"));
        assert_eq!(w.param("p"), Some("pa ss&word"));
        assert_eq!(w.header("authorization"), None);
        assert_eq!(w.gunzipped_body(), "m f=1i 1");

        let q = &requests[1];
        assert_eq!(
            (q.method.as_str(), q.path.as_str()),
            ("POST", "/influx/query")
        );
        assert_eq!(q.param("db"), Some("custodian"));
        assert_eq!(q.param("epoch"), Some("ns"));
        assert_eq!(q.param("u"), Some("writer"));
        assert_eq!(
            q.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        let form = decode_query(std::str::from_utf8(&q.body).unwrap());
        assert_eq!(
            form,
            vec![("q".to_owned(), "SELECT count(f) FROM m".to_owned())]
        );

        let c = &requests[2];
        assert_eq!(c.path, "/influx/query");
        assert_eq!(c.param("db"), None);
        let form = decode_query(std::str::from_utf8(&c.body).unwrap());
        assert_eq!(form[0].1, r#"CREATE DATABASE "custodian""#);
    }

    #[tokio::test]
    async fn influx_v2_query_uses_v1_compat_endpoint_and_statement_errors_are_refused() {
        let fake = start_fake(vec![
            (200, r#"{"results":[{"statement_id":0}]}"#),
            (
                200,
                r#"{"results":[{"statement_id":0,"error":"database not found: readings"}]}"#,
            ),
        ])
        .await;
        let client = InfluxClient::new(&fake.url, v2());
        client.query("SHOW MEASUREMENTS").await.unwrap();
        let err = client.query("SELECT * FROM m").await.unwrap_err();
        match &err {
            InfluxError::Refused { status, detail, .. } => {
                assert_eq!(*status, 200);
                assert!(detail.contains("database not found"), "{detail}");
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        let r = &fake.requests()[0];
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/query"));
        assert_eq!(r.param("db"), Some("readings"));
        assert_eq!(r.param("epoch"), Some("ns"));
        assert_eq!(r.header("authorization"), Some("Token s3cr3t-token"));

        // v2 targets are the operator's: nothing is sent for ensure/drop.
        client.ensure_target().await.unwrap();
        client.drop_target().await.unwrap();
        assert_eq!(fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn influx_error_statuses_map_to_refused_or_unavailable() {
        let fake = start_fake(vec![
            (
                401,
                r#"{"code":"unauthorized","message":"unauthorized access"}"#,
            ),
            (
                400,
                r#"{"error":"unable to parse 'bad line here': invalid field format"}"#,
            ),
            (
                404,
                r#"{"code":"not found","message":"bucket \"readings\" not found"}"#,
            ),
            (503, r#"{"error":"engine is shutting down"}"#),
            (429, ""),
            (500, "<html>oops</html>"),
        ])
        .await;
        let client = InfluxClient::new(&fake.url, v2());
        let line = vec!["m f=1i 1".to_owned()];

        let refused = |e: InfluxError, want_status: u16, want_text: &str| match e {
            InfluxError::Refused {
                status,
                detail,
                url,
            } => {
                assert_eq!(status, want_status);
                assert!(detail.contains(want_text), "{detail}");
                assert_eq!(url, format!("{}/api/v2/write", fake.url));
            }
            other => panic!("expected Refused, got {other:?}"),
        };
        refused(
            client.write_lines(&line).await.unwrap_err(),
            401,
            "unauthorized: unauthorized access",
        );
        refused(
            client.write_lines(&line).await.unwrap_err(),
            400,
            "invalid field format",
        );
        refused(
            client.write_lines(&line).await.unwrap_err(),
            404,
            "not found",
        );

        for want in ["engine is shutting down", "429", "<html>oops</html>"] {
            let e = client.write_lines(&line).await.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
        }

        // A closed port: connection refused → Unavailable.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let client = InfluxClient::new(&format!("http://{closed}"), v1_with_credentials());
        for result in [
            client.write_lines(&line).await,
            client.ping().await,
            client.query("SELECT 1").await.map(drop),
        ] {
            let e = result.unwrap_err();
            assert!(e.is_unavailable(), "{e:?}");
            // The v1 password is in the request URL but must not be in the error.
            assert!(!e.to_string().contains("word"), "{e}");
        }

        // An unusable base URL is Refused without a request.
        let bad = InfluxClient::new("not a url", v2());
        match bad.ping().await.unwrap_err() {
            InfluxError::Refused { status: 0, .. } => {}
            other => panic!("expected Refused with status 0, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn influx_write_lines_chunks_requests() {
        let fake = start_fake(vec![]).await;
        let client = InfluxClient::new(&fake.url, v2());
        let lines: Vec<String> = (0..12_001)
            .map(|i| Line::new("m").field_i64("v", i).timestamp_ns(i).build())
            .collect();
        client.write_lines(&lines).await.unwrap();
        let requests = fake.requests();
        assert_eq!(requests.len(), 3);
        let bodies: Vec<String> = requests.iter().map(Recorded::gunzipped_body).collect();
        let counts: Vec<usize> = bodies.iter().map(|b| b.split('\n').count()).collect();
        assert_eq!(counts, vec![5000, 5000, 2001]);
        assert!(counts.iter().all(|&c| c <= MAX_LINES_PER_REQUEST));
        assert_eq!(bodies.join("\n"), lines.join("\n"));
    }

    #[tokio::test]
    async fn influx_write_lines_stops_at_first_failing_request() {
        let fake = start_fake(vec![
            (204, ""),
            (400, r#"{"error":"partial write: x dropped=1"}"#),
        ])
        .await;
        let client = InfluxClient::new(&fake.url, v2());
        let lines: Vec<String> = (0..12_000).map(|i| format!("m v={i}i {i}")).collect();
        let e = client.write_lines(&lines).await.unwrap_err();
        assert!(
            matches!(e, InfluxError::Refused { status: 400, .. }),
            "{e:?}"
        );
        assert_eq!(fake.requests().len(), 2);
    }

    #[test]
    fn influx_dialect_serde_debug_and_with_target() {
        let v1: Dialect =
            serde_json::from_str(r#"{"dialect":"v1","database":"custodian"}"#).unwrap();
        assert_eq!(
            v1,
            Dialect::V1 {
                database: "custodian".into(),
                retention_policy: None,
                username: None,
                password: None
            }
        );
        let v2_json = serde_json::to_value(v2()).unwrap();
        assert_eq!(
            v2_json,
            serde_json::json!({"dialect": "v2", "org": "acme org", "bucket": "readings", "token": "s3cr3t-token"})
        );
        assert_eq!(serde_json::from_value::<Dialect>(v2_json).unwrap(), v2());

        let client = InfluxClient::new("http://127.0.0.1:8086", v1_with_credentials());
        let debug = format!("{client:?}");
        assert!(
            !debug.contains("pa ss&word") && debug.contains("<redacted>"),
            "{debug}"
        );
        assert!(!format!("{:?}", v2()).contains("s3cr3t"));

        let shadow = client.with_target("custodian_shadow");
        assert_eq!(shadow.target(), "custodian_shadow");
        assert_eq!(
            shadow.dialect(),
            &Dialect::V1 {
                database: "custodian_shadow".into(),
                retention_policy: None,
                username: Some("writer".into()),
                password: Some("pa ss&word".into()),
            }
        );
        assert_eq!(client.target(), "custodian");
        let shadow2 = InfluxClient::new("http://h", v2()).with_target("shadow");
        assert_eq!(
            shadow2.dialect(),
            &Dialect::V2 {
                org: "acme org".into(),
                bucket: "shadow".into(),
                token: "s3cr3t-token".into()
            }
        );
        assert_eq!(quote_identifier(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    // -----------------------------------------------------------------------------------------------------
    // Against the real local InfluxDB 1.x (`scripts/services up`)
    // -----------------------------------------------------------------------------------------------------

    const LOCAL_INFLUX: &str = "http://127.0.0.1:8086";

    /// A client for a fresh, uniquely named database on the local InfluxDB; fails the test (never skips)
    /// if the server is not there.
    async fn local_client() -> InfluxClient {
        let client = InfluxClient::new(
            LOCAL_INFLUX,
            Dialect::V1 {
                database: format!("custodian_influx_test_{:016x}", rand::random::<u64>()),
                retention_policy: None,
                username: None,
                password: None,
            },
        );
        if let Err(e) = client.ping().await {
            panic!("the local InfluxDB does not answer /ping ({e}); run `scripts/services up`");
        }
        client
    }

    /// Runs `body` with a fresh database and drops the database afterwards, also when `body` panics.
    async fn with_local_database<F, Fut>(body: F)
    where
        F: FnOnce(InfluxClient) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let client = local_client().await;
        client.ensure_target().await.unwrap();
        let outcome = tokio::spawn(body(client.clone())).await;
        client.drop_target().await.unwrap();
        let databases = client.query("SHOW DATABASES").await.unwrap().to_string();
        assert!(!databases.contains(client.target()), "{databases}");
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    fn first_series(answer: &serde_json::Value) -> &serde_json::Value {
        &answer["results"][0]["series"][0]
    }

    #[tokio::test]
    async fn influx_live_v1_write_count_and_overwrite() {
        with_local_database(|client| async move {
            // Idempotent.
            client.ensure_target().await.unwrap();
            // 12,000 lines; ids 0..10,000, the last 2,000 lines rewrite ids 0..2,000 (same measurement,
            // tags and timestamp: same point) with a new value.
            let base_ns: i64 = 1_700_000_000_000_000_000;
            let lines: Vec<String> = (0..12_000i64)
                .map(|i| {
                    let id = i % 10_000;
                    Line::new("reading")
                        .tag("site", &format!("站点 {}", id % 7))
                        .tag("kind", "危废")
                        .field_f64("value", i as f64)
                        .field_i64("seq", i)
                        .timestamp_ns(base_ns + id * 1_000_000)
                        .build()
                })
                .collect();
            client.write_lines(&lines).await.unwrap();

            let answer = client
                .query("SELECT count(value) FROM reading")
                .await
                .unwrap();
            assert_eq!(first_series(&answer)["values"][0][1], 10_000, "{answer}");

            // Last write wins: ids 0..2,000 carry the value of their second write (id + 10,000).
            let answer = client
                .query("SELECT sum(value) FROM reading")
                .await
                .unwrap();
            let expected: i64 = (0..10_000i64)
                .map(|id| if id < 2_000 { id + 10_000 } else { id })
                .sum();
            assert_eq!(
                first_series(&answer)["values"][0][1].as_f64(),
                Some(expected as f64),
                "{answer}"
            );

            let answer = client
                .query(&format!(
                    "SELECT value, seq FROM reading WHERE site = '站点 0' AND time = {base_ns}"
                ))
                .await
                .unwrap();
            let row = &first_series(&answer)["values"][0];
            assert_eq!(row[0], base_ns, "{answer}");
            assert_eq!(row[1].as_f64(), Some(10_000.0));
            assert_eq!(row[2], 10_000);

            let answer = client
                .query("SHOW TAG VALUES FROM reading WITH KEY = site")
                .await
                .unwrap();
            assert_eq!(
                first_series(&answer)["values"].as_array().unwrap().len(),
                7,
                "{answer}"
            );

            // A query error inside a 200 answer is Refused.
            let e = client
                .query("SELECT value FROM reading WHERE")
                .await
                .unwrap_err();
            assert!(matches!(e, InfluxError::Refused { .. }), "{e:?}");
        })
        .await;
    }

    #[tokio::test]
    async fn influx_live_v1_escaping_round_trip() {
        with_local_database(|client| async move {
            let string_value = "say \"hi\", a=b \\ back\\slash\nsecond line 危废 \\";
            let line = Line::new("esc m,1=\"x\"")
                .tag("k=ey,1 ", "v a,l=ue")
                .tag("危废", "危废 类别")
                .tag("q\"", "\"quoted\"")
                .tag("path", r"C:\dir\file")
                .tag("trail", r"x\")
                .tag("before", r"a\,b")
                .tag("multi", "one\ntwo")
                .field_str("f i,e=ld\"", string_value)
                .field_f64("n", -2.5e-7)
                .field_i64("i", i64::MIN)
                .field_bool("b", true)
                .timestamp_ns(1_700_000_000_000_000_000)
                .build();
            client.write_lines(&[line]).await.unwrap();

            let measurements = client.query("SHOW MEASUREMENTS").await.unwrap();
            assert_eq!(
                first_series(&measurements)["values"][0][0],
                "esc m,1=\"x\"",
                "{measurements}"
            );

            let answer = client
                .query(r#"SELECT * FROM "esc m,1=\"x\"""#)
                .await
                .unwrap();
            let series = first_series(&answer);
            let columns: Vec<&str> = series["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            let row = series["values"][0].as_array().unwrap();
            let get = |name: &str| {
                let i = columns
                    .iter()
                    .position(|c| *c == name)
                    .unwrap_or_else(|| panic!("no column {name:?} in {columns:?}"));
                row[i].clone()
            };
            assert_eq!(get("time"), 1_700_000_000_000_000_000i64);
            assert_eq!(get("k=ey,1 "), "v a,l=ue");
            assert_eq!(get("危废"), "危废 类别");
            assert_eq!(get("q\""), "\"quoted\"");
            assert_eq!(get("path"), r"C:\dir\file");
            assert_eq!(get("trail"), "x/");
            assert_eq!(get("before"), "a/,b");
            assert_eq!(get("multi"), "one two");
            assert_eq!(get("f i,e=ld\""), string_value);
            assert_eq!(get("n").as_f64(), Some(-2.5e-7));
            assert_eq!(get("i"), i64::MIN);
            assert_eq!(get("b"), true);
        })
        .await;
    }

    #[tokio::test]
    async fn influx_live_v1_refusals() {
        with_local_database(|client| async move {
            // A malformed line: 400 "unable to parse"; the good line of the same request is still written.
            let e = client
                .write_lines(&["m f=1i 1".to_owned(), "bad line here".to_owned()])
                .await
                .unwrap_err();
            match &e {
                InfluxError::Refused { status, detail, .. } => {
                    assert_eq!(*status, 400);
                    assert!(detail.contains("unable to parse"), "{detail}");
                }
                other => panic!("expected Refused, got {other:?}"),
            }
            let answer = client.query("SELECT count(f) FROM m").await.unwrap();
            assert_eq!(first_series(&answer)["values"][0][1], 1, "{answer}");

            // A missing database: 404 "database not found".
            let missing = client.with_target(&format!("{}_missing", client.target()));
            let e = missing
                .write_lines(&["m f=1i 1".to_owned()])
                .await
                .unwrap_err();
            assert!(
                matches!(e, InfluxError::Refused { status: 404, .. }),
                "{e:?}"
            );
            let e = missing.query("SELECT * FROM m").await.unwrap_err();
            assert!(e.to_string().contains("database not found"), "{e}");
        })
        .await;
    }
}

//! A small HTTP client for a running node, used by the CLI, the demo, the benchmark and the tests.

use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use clap::Args;

use custodian_node::upload::UploadResponse;

#[derive(Args, Debug, Clone)]
pub struct NodeArgs {
    /// The running node's API.
    #[arg(long, env = "CUSTODIAN_NODE", default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// The node's admin token.
    #[arg(long, env = "CUSTODIAN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// How long one request may take before the client gives up on it.
pub const REQUEST_TIMEOUT_S: u64 = 30;

#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
    admin_token: Option<String>,
}

/// A response that was not the expected success.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node answered {status}: {body}")]
    Status { status: u16, body: Value },
    #[error("request to the node failed: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ClientError {
    /// The `code` of a `{code, message}` answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { body, .. } => body.get("code").and_then(Value::as_str),
            ClientError::Transport(_) => None,
        }
    }
}

impl NodeClient {
    pub fn new(base: impl Into<String>, admin_token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_S))
            .pool_max_idle_per_host(256)
            .build()
            .expect("building an HTTP client without TLS cannot fail");
        NodeClient {
            http,
            base: base.into().trim_end_matches('/').to_owned(),
            admin_token,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn admin(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.admin_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// POSTs JSON with the admin token and returns the status and the JSON body, whatever the status.
    pub async fn post_admin(&self, path: &str, body: &Value) -> Result<(u16, Value), ClientError> {
        let resp = self
            .admin(self.http.post(format!("{}{path}", self.base)))
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// GETs a path with the admin token; a non-2xx answer is an error.
    pub async fn get_admin(&self, path: &str) -> Result<Value, ClientError> {
        let resp = self
            .admin(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(ClientError::Status { status, body })
        }
    }

    /// GETs `path` with the token and answers the body's bytes, unparsed: for timing what the node does, not
    /// what JSON parsing on the client costs.
    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes, ClientError> {
        let resp = self
            .admin(self.http.get(format!("{}{path}", self.base)))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(ClientError::Status {
                status,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            })
        }
    }

    /// `GET /v1/admin/projections`.
    pub async fn projections(&self) -> Result<Value, ClientError> {
        self.get_admin("/v1/admin/projections").await
    }

    /// The status of one projection, if the node runs it.
    pub async fn projection(&self, name: &str) -> Result<Option<Value>, ClientError> {
        let all = self.projections().await?;
        Ok(all["projections"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned())
    }

    /// Waits until every read model holds the log up to its last durable event (or `within` passes),
    /// showing which are behind on stderr when `progress`; answers the models' statuses.
    pub async fn wait_read_models(
        &self,
        within: Option<Duration>,
        progress: bool,
    ) -> Result<Vec<Value>, ClientError> {
        let deadline = within.map(|w| std::time::Instant::now() + w);
        let mut shown = false;
        loop {
            let p = self.projections().await?;
            let last = p["last_seq"].as_u64().unwrap_or(0);
            let list = p["projections"].as_array().cloned().unwrap_or_default();
            let behind: Vec<String> = list
                .iter()
                .filter(|x| x["checkpoint"].as_u64() != Some(last))
                .map(|x| {
                    format!(
                        "{} {}/{last} {}",
                        x["name"].as_str().unwrap_or("?"),
                        x["checkpoint"],
                        x["state"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if behind.is_empty() || deadline.is_some_and(|d| std::time::Instant::now() > d) {
                if shown {
                    eprintln!();
                }
                return Ok(list);
            }
            if progress {
                eprint!("\r  read models catching up: {}   ", behind.join(", "));
                shown = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `POST /v1/admin/projections/{name}/rebuild`: the new generation.
    pub async fn rebuild_projection(&self, name: &str) -> Result<u64, ClientError> {
        match self
            .post_admin(
                &format!("/v1/admin/projections/{name}/rebuild"),
                &Value::Null,
            )
            .await?
        {
            (202, v) => Ok(v["generation"].as_u64().unwrap_or(0)),
            (status, body) => Err(ClientError::Status { status, body }),
        }
    }

    /// Registers, accepting 200 (already registered alike) and 201 (new).
    pub async fn register(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        match self.post_admin(path, body).await? {
            (200 | 201, v) => Ok(v),
            (status, body) => Err(ClientError::Status { status, body }),
        }
    }

    /// Sends an upload body as is, with `signature` (base64 DER SM2) in `X-Custodian-Signature` if given;
    /// any status other than 200 is an error carrying the JSON answer.
    pub async fn upload(
        &self,
        body: Vec<u8>,
        signature: Option<&str>,
    ) -> Result<UploadResponse, ClientError> {
        let mut req = self
            .http
            .post(format!("{}/v1/uploads", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(sig) = signature {
            req = req.header(custodian_node::upload::SIGNATURE_HEADER, sig);
        }
        let resp = req.body(body).send().await?;
        let status = resp.status().as_u16();
        if status == 200 {
            Ok(resp.json().await?)
        } else {
            Err(ClientError::Status {
                status,
                body: resp.json().await.unwrap_or(Value::Null),
            })
        }
    }

    /// `GET /v1/events` (NDJSON): up to `limit` events from `from_seq` on, of `types` (all if empty),
    /// ending at the head of the log.
    pub async fn events(
        &self,
        from_seq: u64,
        limit: Option<u64>,
        types: &[&str],
    ) -> Result<Vec<Value>, ClientError> {
        let mut url = format!("{}/v1/events?from_seq={from_seq}", self.base);
        if let Some(l) = limit {
            url.push_str(&format!("&limit={l}"));
        }
        if !types.is_empty() {
            url.push_str(&format!("&types={}", types.join(",")));
        }
        let resp = self.admin(self.http.get(url)).send().await?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.json().await.unwrap_or(Value::Null);
            return Err(ClientError::Status { status, body });
        }
        let text = resp.text().await?;
        text.lines()
            .map(|l| {
                serde_json::from_str(l).map_err(|e| ClientError::Status {
                    status,
                    body: Value::String(format!("not an NDJSON line ({e}): {l}")),
                })
            })
            .collect()
    }

    /// Every event from `from_seq` on.
    pub async fn all_events(&self, from_seq: u64) -> Result<Vec<Value>, ClientError> {
        self.events(from_seq, None, &[]).await
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    pub async fn healthz(&self) -> Result<Value, ClientError> {
        Ok(self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until the node answers `/healthz`, for at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.healthz().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return self
                    .healthz()
                    .await
                    .map(|_| ())
                    .with_context(|| format!("node at {} did not become ready", self.base));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

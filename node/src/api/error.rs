//! The one error shape every endpoint answers with: a status and `{"code", "message"}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custodian_events::Rejection;
use custodian_log::EventLogError;

/// How long a client should wait before retrying after a 503, in seconds.
pub const RETRY_AFTER_S: u32 = 1;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// A domain rejection of the whole request.
    pub fn unprocessable(r: Rejection) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, r.code, r.message)
    }
}

impl From<EventLogError> for ApiError {
    fn from(e: EventLogError) -> Self {
        match e {
            EventLogError::Overloaded { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{e}; nothing of this request was stored"),
            ),
            EventLogError::Corrupt(c) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_record",
                format!(
                    "{c}; the node refuses to serve it. Run `custodian log verify --data-dir DIR` on the stopped node and restore from a backup"
                ),
            ),
            EventLogError::IndexCorrupt(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt_index",
                format!("{e}; stop the node and run `custodian log verify --data-dir DIR`"),
            ),
            EventLogError::Mismatch(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "log_mismatch",
                e.to_string(),
            ),
            EventLogError::Keyring(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "key_unavailable",
                format!("{e}; check the node's master key"),
            ),
            EventLogError::BatchTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                e.to_string(),
            ),
            EventLogError::Storage(_)
            | EventLogError::Closed
            | EventLogError::Crashed
            | EventLogError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                format!(
                    "{e}; retry later: anything acknowledged before is safe, and a retry of this request is answered consistently"
                ),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "message": self.message });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_log_queue_is_a_503_with_retry_after_and_a_json_code() {
        // The log's side (the queue refuses at once, nothing stored) is proven in the events crate.
        let resp = ApiError::from(EventLogError::Overloaded { queue_max: 1024 }).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "overloaded");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("nothing of this request was stored")
        );
    }
}

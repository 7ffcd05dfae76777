//! A URL whose path or query holds a NUL byte (`%00`) is refused before any handler sees it: 400
//! `invalid_url`. No id, code, cursor or name the API knows can hold one, and PostgreSQL's `text` cannot,
//! so passed on it would be a read model's error (a 503) instead of the caller's.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// Whether `s` (a raw, percent-encoded path or query) decodes to something holding NUL.
fn holds_nul(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

pub async fn refuse_nul(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let part = if holds_nul(uri.path()) {
        Some("path")
    } else if uri.query().is_some_and(holds_nul) {
        Some("query")
    } else {
        None
    };
    match part {
        Some(part) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_url",
            format!("the URL's {part} holds a NUL byte (%00), which no parameter may contain"),
        )
        .into_response(),
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::holds_nul;

    #[test]
    fn only_an_encoded_nul_is_a_nul() {
        assert!(holds_nul("kind=%00x"));
        assert!(holds_nul("/v1/enterprises/E%001"));
        assert!(!holds_nul("kind=%100"));
        assert!(!holds_nul("limit=100&cursor=E-001"));
        assert!(!holds_nul("%2500"));
    }
}

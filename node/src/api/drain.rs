//! Reading the rest of a request body that a handler answered without reading whole (a 413 for a body
//! over the limit, a 401 before the body was looked at), before the answer goes out.
//!
//! Why: a client that writes its whole body before it reads the answer (Python's `urllib`, many terminal
//! firmwares) would otherwise meet a closed connection mid-write — a broken pipe or a reset — and never
//! see the 413 that tells it what is wrong. So the node reads and discards what is left, up to
//! [`UNREAD_BODY_DRAIN_BYTES_MAX`] and for at most [`UNREAD_BODY_DRAIN_WAIT`], then answers; past either
//! bound it answers with `Connection: close` and the connection closes as before. A client that sent
//! `Expect: 100-continue` is not drained: it waits for the answer before it sends the body, and would only
//! be invited to send what is then thrown away.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, HttpBody as _};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt as _;

/// The most of an unread body the node reads and throws away so that the client sees its answer. Costs
/// reading (not keeping) that many bytes per such request; a body that declares more, or sends more, is
/// answered with `Connection: close` without being read to its end.
pub const UNREAD_BODY_DRAIN_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// The longest the node spends reading an unread body before it answers anyway.
pub const UNREAD_BODY_DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The middleware: hands the handler a body it can read as usual, and reads what it left afterwards.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if req.body().is_end_stream() || expects_continue {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let shared = Arc::new(tokio::sync::Mutex::new(body.into_data_stream()));
    let for_handler = Body::from_stream(futures_util::stream::unfold(
        shared.clone(),
        |s| async move {
            let next = s.lock().await.next().await;
            next.map(|chunk| (chunk, s))
        },
    ));
    let mut resp = next.run(Request::from_parts(parts, for_handler)).await;
    let mut rest = shared.lock().await;
    if !drain(&mut rest, declared).await {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads `rest` to its end within the bounds; whether it got there.
async fn drain(rest: &mut BodyDataStream, declared: Option<u64>) -> bool {
    if rest.is_end_stream() {
        return true;
    }
    if declared.is_some_and(|n| n > UNREAD_BODY_DRAIN_BYTES_MAX) {
        return false;
    }
    let read_all = async {
        let mut read = 0u64;
        while let Some(chunk) = rest.next().await {
            let Ok(chunk) = chunk else { return false };
            read += chunk.len() as u64;
            if read > UNREAD_BODY_DRAIN_BYTES_MAX {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(UNREAD_BODY_DRAIN_WAIT, read_all)
        .await
        .unwrap_or(false)
}

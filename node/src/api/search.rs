//! Full-text search on the live index, for the regulators' scoped search and the admin's: the request's
//! checks and the answer; the index read is `crate::query::search`'s.

use axum::http::StatusCode;

use crate::api::error::ApiError;
use crate::query::search::SearchError;
use crate::state::Reads;

/// The most hits one search answers.
const SEARCH_LIMIT_MAX: usize = 200;

/// Runs a search on the live index; `filter` carries the caller's scope.
pub(crate) async fn run_search(
    st: &Reads,
    text: String,
    filter: custodian_projections::search::SearchFilter,
    limit: Option<usize>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "q must hold at least one word",
        ));
    }
    if let Some(k) = &filter.kind
        && !custodian_projections::search::DOC_KINDS.contains(&k.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "kind {k:?} is not one of {}",
                custodian_projections::search::DOC_KINDS.join(", ")
            ),
        ));
    }
    let limit = limit.unwrap_or(20);
    if !(1..=SEARCH_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must lie in 1 ..= {SEARCH_LIMIT_MAX}"),
        ));
    }
    let index = crate::query::search::index(st).ok_or_else(|| {
        st.models
            .unavailable("search", "search index", "search_unavailable")
    })?;
    let hits = crate::query::search::hits(index, text, filter, limit)
        .await
        .map_err(|e| match e {
            SearchError::Failed(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)
            }
            SearchError::Query(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("{e:#}"))
            }
        })?;
    Ok(axum::Json(serde_json::json!({ "hits": hits })))
}

//! Full-text search on the live index, for the regulators' scoped search and the admin's: the request's
//! checks and the answer; the index read is `crate::query::search`'s.

use axum::http::StatusCode;

use crate::api::error::ApiError;
use crate::query::search::SearchError;
use crate::state::Reads;

/// The most hits one search answers.
const SEARCH_LIMIT_MAX: usize = 200;

/// Whether a search text holds a word: a character that is neither NUL nor white space (what
/// `schema::SEARCH_TEXT_PATTERN` says in the document).
fn has_a_word(text: &str) -> bool {
    text.chars().any(|c| c != '\0' && !c.is_whitespace())
}

/// Runs a search on the live index; `filter` carries the caller's scope.
pub(crate) async fn run_search(
    st: &Reads,
    text: String,
    filter: custodian_projections::search::SearchFilter,
    limit: Option<usize>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if !has_a_word(&text) {
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

#[cfg(test)]
mod tests {
    use super::has_a_word;

    /// The document's pattern and the check agree on every character, alone and between spaces.
    #[test]
    fn the_documented_pattern_is_the_check() {
        let pattern = regex::Regex::new(crate::api::schema::SEARCH_TEXT_PATTERN).unwrap();
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            for text in [c.to_string(), format!(" {c}\u{85}")] {
                assert_eq!(
                    pattern.is_match(&text),
                    has_a_word(&text),
                    "U+{:04X} in {text:?}",
                    c as u32
                );
            }
        }
        assert!(!has_a_word("\u{85}\u{3000} \t"));
        assert!(has_a_word("\u{feff}"));
    }
}

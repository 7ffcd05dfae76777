//! The reads of the full-text index (written by `custodian_projections::text`): the caller's scope is
//! part of the index query's filter, so counts and hits never include what the caller may not see.

use std::sync::Arc;

use crate::state::Reads;
use crate::tokens::Scope;

pub use custodian_projections::search::{SearchFilter, SearchHit, SearchIndex};

/// The live index, if it is running.
pub fn index(st: &Reads) -> Option<Arc<SearchIndex>> {
    st.models
        .live_model("search", custodian_projections::text::TextProjection::index)
}

/// The filter of a search in `scope`, of documents of `kind` (any without).
pub fn scoped(scope: &Scope, kind: Option<String>) -> SearchFilter {
    let (province, enterprise) = scope.binds();
    SearchFilter {
        enterprise_ids: enterprise.map(|e| vec![e]),
        province_code: province,
        kind,
    }
}

/// Why a search found nothing to answer.
pub enum SearchError {
    /// The search did not run to its end (its task failed).
    Failed(String),
    /// The index refused the query.
    Query(anyhow::Error),
}

/// The best `limit` hits of `text` that `filter` keeps (`filter` made by [`scoped`]), best first.
pub async fn hits(
    index: Arc<SearchIndex>,
    text: String,
    filter: SearchFilter,
    limit: usize,
) -> Result<Vec<SearchHit>, SearchError> {
    tokio::task::spawn_blocking(move || index.search(&text, &filter, limit))
        .await
        .map_err(|e| SearchError::Failed(e.to_string()))?
        .map_err(SearchError::Query)
}

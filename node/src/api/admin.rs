//! Administration: data-key rotation, the read models' status and rebuilds, search over everything.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use crate::api::auth::{require_admin, require_admin_caller};
use crate::api::error::ApiError;
use crate::api::query;
use crate::api::search::run_search;
use crate::state::{Access, Reads, Sealer};

/// `POST /v1/admin/data-keys/{scope}/rotate`: new events of `scope` are sealed with a new data key.
#[utoipa::path(
    post,
    path = "/v1/admin/data-keys/{scope}/rotate",
    operation_id = "rotate_data_key",
    tag = "admin",
    summary = "Rotate a data key",
    params(crate::api::schema::DataKeyPath),
    responses(
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403,
        (status = 404, description = "No such scope: neither `platform` nor a registered enterprise (`unknown_scope`)", body = crate::api::schema::ErrorBody),
        crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn rotate_data_key(
    State(access): State<Access>,
    State(sealer): State<Sealer>,
    axum::extract::Path(scope): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let caller = require_admin_caller(&access, &headers)?;
    custodian_events::ids::check_id(&scope).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            format!("scope {scope:?}: {e}"),
        )
    })?;
    // A data key belongs to the platform or to a registered enterprise; any other would seal nothing.
    let known = scope == custodian_events::keyring::PLATFORM_SCOPE
        || match custodian_events::ids::EnterpriseId::parse(&scope) {
            Ok(id) => sealer
                .log
                .lookup(&custodian_events::event::dedupe_key_enterprise(&id))?
                .is_some(),
            Err(_) => false,
        };
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_scope",
            format!(
                "no data key scope {scope:?}: a scope is `platform` or a registered enterprise's id"
            ),
        ));
    }
    let key = crate::sealing::rotate(&sealer, &scope, Some(&caller.token_id)).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(
            serde_json::json!({ "scope": scope, "key_id": key.id, "generation": key.generation }),
        ),
    ))
}

/// `GET /v1/admin/projections`: checkpoint, lag, state and any rebuild of each read model.
#[utoipa::path(
    get,
    path = "/v1/admin/projections",
    operation_id = "projections_status",
    tag = "admin",
    summary = "Status of each read model",
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E503,
    ),
)]
pub async fn projections_status(
    State(st): State<Reads>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st.access, &headers)?;
    let list = st.models.statuses();
    Ok(axum::Json(serde_json::json!({
        "last_seq": st.log.last_seq(),
        "projections": list,
    })))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (Chinese too).
    #[param(value_type = crate::api::schema::SearchText, inline)]
    q: String,
    /// Only documents of this enterprise.
    #[serde(default)]
    #[param(value_type = Option<custodian_events::openapi::Id>, inline)]
    enterprise_id: Option<String>,
    /// Only documents of this province.
    #[serde(default)]
    #[param(value_type = Option<custodian_events::openapi::ProvinceCode>, inline)]
    province_code: Option<String>,
    /// Only documents of this kind.
    #[serde(default)]
    #[param(value_type = Option<crate::api::schema::SearchKind>, inline)]
    kind: Option<String>,
    /// Hits to answer.
    #[serde(default)]
    #[param(minimum = 1, maximum = 200, default = 20)]
    limit: Option<usize>,
}

/// `GET /v1/admin/search?q=…&enterprise_id=…&province_code=…&kind=…&limit=…` (admin): full-text search of
/// anomaly descriptions, manifest notes and inspection notes, Chinese words included. Regulators' scoped
/// search is part of the query API.
#[utoipa::path(
    get,
    path = "/v1/admin/search",
    operation_id = "admin_search",
    tag = "admin",
    summary = "Full-text search over everything",
    params(SearchQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E503,
    ),
)]
pub async fn search(
    State(st): State<Reads>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st.access, &headers)?;
    let q = query::query_of(query)?;
    query::filter(
        "enterprise_id",
        &q.enterprise_id,
        query::is_id,
        "an enterprise id",
    )?;
    query::filter(
        "province_code",
        &q.province_code,
        custodian_events::event::is_province_code,
        query::PROVINCE,
    )?;
    run_search(
        &st,
        q.q,
        custodian_projections::search::SearchFilter {
            enterprise_ids: q.enterprise_id.map(|e| vec![e]),
            province_code: q.province_code,
            kind: q.kind,
        },
        q.limit,
    )
    .await
}

/// `POST /v1/admin/projections/{name}/rebuild`: 202 with the new generation; it fills a shadow copy from
/// sequence 0 and replaces the live model once caught up. 404 for an unknown or disabled model, 409 while a
/// rebuild of it runs.
#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    operation_id = "rebuild_projection",
    tag = "admin",
    summary = "Rebuild a read model into a shadow copy, then swap",
    params(crate::api::schema::ProjectionPath),
    responses(
        (status = 202, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E409, crate::api::schema::E503,
    ),
)]
pub async fn rebuild_projection(
    State(st): State<Reads>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&st.access, &headers)?;
    let all = st.models.runners.get().map(Vec::as_slice).unwrap_or(&[]);
    let Some(p) = all.iter().find(|p| p.name() == name) else {
        let names: Vec<String> = all.iter().map(|p| p.name()).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_projection",
            format!(
                "no running projection is called {name:?}; this node runs {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ));
    };
    let generation = p
        .rebuild()
        .await
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "rebuild_running", m))?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "projection": name, "generation": generation })),
    ))
}

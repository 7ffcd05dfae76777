//! The regulators' side: tokens (`POST /v1/admin/tokens`, revoke) and the scoped read endpoints over the
//! read models. The reads themselves are `crate::query`'s (this module checks the parameters and writes the
//! JSON): every query carries the caller's scope inside its SQL (or the InfluxQL, or the search filter), so
//! a row out of scope is never read at all; an object out of scope answers exactly like one that does not
//! exist.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use custodian_events::Event;
use custodian_events::event::{TokenIssued, TokenRevoked};
use custodian_events::openapi as schema;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use crate::api::auth::caller;
use crate::api::auth::require_admin_caller;
use crate::api::body::read_json;
use crate::api::error::ApiError;
use crate::api::schema::{AGGREGATES, ANOMALY_STATES};
use crate::query::influx::{self, SERIES_POINTS_MAX};
use crate::query::postgres as db;
use crate::state::Reads;
use crate::tokens::{Caller, Claims, Scope, TTL_S_MAX, Tier, check_scope};

/// Default and largest page of a list.
const PAGE_DEFAULT: i64 = 50;
const PAGE_MAX: i64 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    tier: String,
    #[serde(default)]
    scope: Option<String>,
    /// Seconds; default 8 h, at most 30 days.
    #[serde(default, deserialize_with = "custodian_events::json_int::option_u64")]
    ttl_s: Option<u64>,
}

/// One branch per tier, as `check_scope` takes them; an enterprise scope must be registered too
/// (`unknown_enterprise`), which no schema can say.
impl utoipa::PartialSchema for RawToken {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, AnyOfBuilder, ObjectBuilder, Type};
        let ttl = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(TTL_S_MAX))
            .description(Some("Seconds; default 8 h (28800), at most 30 days"))
            .build();
        let branch = |tiers: &[&str], scope: Option<utoipa::openapi::schema::Object>| {
            let mut o = ObjectBuilder::new()
                .property(
                    "tier",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(tiers.iter().copied())),
                )
                .property("ttl_s", schema::or_null(ttl.clone()))
                .required("tier")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            o = match scope {
                Some(s) => o.property("scope", s).required("scope"),
                None => o.property("scope", ObjectBuilder::new().schema_type(Type::Null)),
            };
            o.build()
        };
        AnyOfBuilder::new()
            .item(branch(&["national", "admin"], None))
            .item(branch(&["province"], Some(schema::province_code())))
            .item(branch(&["enterprise"], Some(schema::id())))
            .description(Some(
                "A token's tier and scope: none for national and admin, a province code for province, an enterprise id for enterprise",
            ))
            .into()
    }
}

impl utoipa::ToSchema for RawToken {}

/// `POST /v1/admin/tokens` (admin): issues a token; 201 `{"token", "id", "tier", "scope", "expires_at"}`.
#[utoipa::path(
    post,
    path = "/v1/admin/tokens",
    operation_id = "issue_token",
    tag = "admin",
    summary = "Issue a regulator's or admin's token",
    request_body = RawToken,
    responses(
        (status = 201, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn issue_token(
    State(st): State<Reads>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let by = require_admin_caller(&st.access, &headers)?;
    let raw: RawToken = read_json(&headers, body, 4096).await?;
    let bad =
        |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_token_request", m);
    let tier = Tier::parse(&raw.tier).ok_or_else(|| {
        bad(format!(
            "tier {:?} is not one of national, province, enterprise, admin",
            raw.tier
        ))
    })?;
    check_scope(tier, raw.scope.as_deref()).map_err(bad)?;
    if tier == Tier::Enterprise {
        let id = custodian_events::ids::EnterpriseId::parse(raw.scope.as_deref().unwrap_or(""))
            .map_err(|e| bad(e.to_string()))?;
        if st
            .log
            .lookup(&custodian_events::event::dedupe_key_enterprise(&id))?
            .is_none()
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_enterprise",
                format!("enterprise {id} is not registered"),
            ));
        }
    }
    let ttl = raw.ttl_s.unwrap_or(8 * 3600);
    if ttl == 0 || ttl > TTL_S_MAX {
        return Err(bad(format!("ttl_s must lie in 1 ..= {TTL_S_MAX}")));
    }
    let now = st.clock.now_ns();
    let mut id_bytes = [0u8; 8];
    st.entropy.fill(&mut id_bytes);
    let id = format!("tok-{}", hex::encode(id_bytes));
    let claims = Claims {
        v: 1,
        id: id.clone(),
        tier,
        scope: raw.scope.clone(),
        iat: now.div_euclid(1_000_000_000),
        exp: now.div_euclid(1_000_000_000) + ttl as i64,
    };
    let expires_at_ns = claims.exp * 1_000_000_000;
    let event = Event::TokenIssued(TokenIssued {
        id: id.clone(),
        tier: tier.name().into(),
        scope: raw.scope.clone(),
        issued_at_ns: now,
        expires_at_ns,
        issued_by: by.token_id.clone(),
    });
    let p = crate::sealing::sealed(
        &st.sealer,
        custodian_events::keyring::PLATFORM_SCOPE,
        event,
        Some(&by.token_id),
    )
    .await?;
    st.log.append(vec![p]).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "token": st.access.tokens.issue(&claims),
            "id": id,
            "tier": tier.name(),
            "scope": raw.scope,
            "expires_at": custodian_events::reading::format_utc_ns(expires_at_ns),
        })),
    ))
}

/// `POST /v1/admin/tokens/{id}/revoke` (admin): the token opens nothing from now on.
#[utoipa::path(
    post,
    path = "/v1/admin/tokens/{id}/revoke",
    operation_id = "revoke_token",
    tag = "admin",
    summary = "Revoke a token",
    params(crate::api::schema::TokenPath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E403, crate::api::schema::E404, crate::api::schema::E422, crate::api::schema::E503,
    ),
)]
pub async fn revoke_token(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let by = require_admin_caller(&st.access, &headers)?;
    custodian_events::ids::check_id(&id).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_id",
            format!("{id:?}: {e}"),
        )
    })?;
    let issued = st.log.lookup(&custodian_events::event::DedupeKey {
        space: [b"token/".as_slice(), id.as_bytes(), b"/"].concat(),
        slot: 0,
    })?;
    if issued.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_token",
            format!("no token {id} was issued by this platform"),
        ));
    }
    let event = Event::TokenRevoked(TokenRevoked {
        id: id.clone(),
        revoked_at_ns: st.clock.now_ns(),
        revoked_by: by.token_id.clone(),
    });
    let p = crate::sealing::sealed(
        &st.sealer,
        custodian_events::keyring::PLATFORM_SCOPE,
        event,
        Some(&by.token_id),
    )
    .await?;
    st.log.append(vec![p]).await?;
    st.access.tokens.revoke(&id);
    Ok(axum::Json(json!({ "id": id, "status": "revoked" })))
}

/// The live PostgreSQL model's pool.
pub(crate) fn pg(st: &Reads) -> Result<sqlx::PgPool, ApiError> {
    db::pool(st).ok_or_else(|| {
        st.models.unavailable(
            "postgres",
            "PostgreSQL read model",
            "read_model_unavailable",
        )
    })
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "read_model_unavailable",
        format!("the PostgreSQL read model did not answer: {e}"),
    )
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m)
}

fn page(limit: Option<i64>) -> Result<i64, ApiError> {
    let l = limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&l) {
        return Err(invalid(format!("limit must lie in 1 ..= {PAGE_MAX}")));
    }
    Ok(l)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no {what} {id:?} here"),
    )
}

pub(crate) fn query_of<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| invalid(e.body_text()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EnterprisesQuery {
    /// Only the enterprises of this province.
    #[param(value_type = Option<schema::ProvinceCode>, inline)]
    province_code: Option<String>,
    /// Only the enterprises of this city.
    #[param(value_type = Option<schema::CityCode>, inline)]
    city_code: Option<String>,
    /// Enterprises per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before (an enterprise id).
    #[param(value_type = Option<schema::Id>, inline)]
    cursor: Option<String>,
}

/// A filter's value checked as the document states it.
pub(crate) fn filter<'a>(
    name: &str,
    value: &'a Option<String>,
    ok: fn(&str) -> bool,
    what: &str,
) -> Result<Option<&'a str>, ApiError> {
    match value.as_deref() {
        Some(v) if !ok(v) => Err(invalid(format!("{name} {v:?} is not {what}"))),
        v => Ok(v),
    }
}

pub(crate) fn is_id(s: &str) -> bool {
    custodian_events::ids::check_id(s).is_ok()
}

pub(crate) const PROVINCE: &str = "a province's 6-digit code ending in 0000 (e.g. 440000)";
const CITY: &str = "a city's 6-digit code (e.g. 440100)";

fn enterprise_json(e: &db::Enterprise) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "province_code": e.province_code,
        "city_code": e.city_code,
        "storage_capacity_kg": e.storage_capacity_mg as f64 / 1e6,
        "registered_seq": e.registered_seq,
    })
}

/// `GET /v1/enterprises?province_code=&city_code=&limit=&cursor=`: the enterprises in the caller's scope.
#[utoipa::path(
    get,
    path = "/v1/enterprises",
    operation_id = "enterprises",
    tag = "query",
    summary = "Enterprises in the caller's scope",
    params(EnterprisesQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E503,
    ),
)]
pub async fn enterprises(
    State(st): State<Reads>,
    headers: HeaderMap,
    q: Result<Query<EnterprisesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let q = query_of(q)?;
    let limit = page(q.limit)?;
    filter(
        "province_code",
        &q.province_code,
        custodian_events::event::is_province_code,
        PROVINCE,
    )?;
    filter(
        "city_code",
        &q.city_code,
        custodian_events::event::is_city_code,
        CITY,
    )?;
    filter("cursor", &q.cursor, is_id, "one this API gave")?;
    let f = db::EnterpriseFilter {
        province_code: q.province_code.as_deref(),
        city_code: q.city_code.as_deref(),
        after: q.cursor.as_deref(),
    };
    let rows = db::enterprises(&pg(&st)?, &who.scope, &f, limit + 1)
        .await
        .map_err(db_error)?;
    Ok(axum::Json(paged(&rows, limit, enterprise_json, |e| {
        e.id.clone()
    })))
}

/// A page of `rows` (read with `limit + 1`, to know whether more follow) as `{"items", "next_cursor"}`.
fn paged<T>(
    rows: &[T],
    limit: i64,
    item: impl Fn(&T) -> Value,
    key: impl Fn(&T) -> String,
) -> Value {
    let more = rows.len() as i64 > limit;
    let shown = &rows[..rows.len().min(limit as usize)];
    json!({
        "items": shown.iter().map(item).collect::<Vec<_>>(),
        "next_cursor": if more { shown.last().map(key) } else { None },
    })
}

/// Enterprise `id` in `scope`, else 404 `not_found` (alike for unknown and out of scope).
async fn enterprise_in_scope(
    pool: &sqlx::PgPool,
    scope: &Scope,
    id: &str,
) -> Result<db::Enterprise, ApiError> {
    db::enterprise(pool, scope, id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| not_found("enterprise", id))
}

/// `GET /v1/enterprises/{id}`: 404 alike for unknown and out of scope.
#[utoipa::path(
    get,
    path = "/v1/enterprises/{id}",
    operation_id = "enterprise",
    tag = "query",
    summary = "One enterprise (404 when out of scope)",
    params(crate::api::schema::EnterprisePath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn enterprise(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let pool = pg(&st)?;
    Ok(axum::Json(enterprise_json(
        &enterprise_in_scope(&pool, &who.scope, &id).await?,
    )))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KpisQuery {
    /// The first day: `YYYY-MM-DD`, or the China Standard Time day of an RFC 3339 instant.
    #[param(value_type = Option<crate::api::schema::Day>, inline)]
    from: Option<String>,
    /// The last day (included), as `from`.
    #[param(value_type = Option<crate::api::schema::Day>, inline)]
    to: Option<String>,
}

/// The first and last day the KPIs are kept for: `from` and `to` beyond them are taken as them.
const KPI_DAY_FIRST: time::Date = time::macros::date!(1970 - 01 - 01);
const KPI_DAY_LAST: time::Date = time::macros::date!(9999 - 12 - 31);

/// A `YYYY-MM-DD` day, or the China Standard Time day of an RFC 3339 instant.
fn day(s: &str) -> Result<time::Date, ApiError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(s, &fmt) {
        return Ok(d);
    }
    // `time` parses years of 4 digits only; an instant's day may still be out of the read model's range,
    // checked by the caller.
    // An instant whose CST day lies beyond what `time` holds is beyond the kept days too.
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| {
            t.checked_to_offset(time::macros::offset!(+8))
                .map_or(KPI_DAY_LAST, |t| t.date())
        })
        .ok_or_else(|| {
            invalid(format!(
                "{s:?} is neither YYYY-MM-DD nor an RFC 3339 instant"
            ))
        })
}

/// `GET /v1/enterprises/{id}/kpis?from=&to=`: the enterprise's daily KPIs (CST days, both ends included).
#[utoipa::path(
    get,
    path = "/v1/enterprises/{id}/kpis",
    operation_id = "enterprise_kpis",
    tag = "query",
    summary = "Daily KPIs of an enterprise (China Standard Time days)",
    params(crate::api::schema::EnterprisePath, KpisQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn enterprise_kpis(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<KpisQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let q = query_of(q)?;
    let clamp = |d: time::Date| d.clamp(KPI_DAY_FIRST, KPI_DAY_LAST);
    let from = q.from.as_deref().map(day).transpose()?.map(clamp);
    let to = q.to.as_deref().map(day).transpose()?.map(clamp);
    let pool = pg(&st)?;
    enterprise_in_scope(&pool, &who.scope, &id).await?;
    let rows = db::daily_kpis(&pool, &id, from, to)
        .await
        .map_err(db_error)?;
    let kg = |mg: i64| mg as f64 / 1e6;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "day": r.day,
                "readings": r.readings,
                "weighings": r.weighings,
                "weighed_kg": kg(r.weighed_mg),
                "storage_in_kg": kg(r.storage_in_mg),
                "storage_out_kg": kg(r.storage_out_mg),
                "transfer_out_kg": kg(r.transfer_out_mg),
                "transfer_in_kg": kg(r.transfer_in_mg),
                "suspect_readings": r.suspect_readings,
                "anomalies": r.anomalies,
                "manifests_opened": r.manifests_opened,
                "manifests_received": r.manifests_received,
                "notes": r.notes,
            })
        })
        .collect();
    Ok(axum::Json(
        json!({ "enterprise_id": id, "timezone": "+08:00", "items": items }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnomaliesQuery {
    /// Only anomalies of this kind.
    #[param(value_type = Option<crate::api::schema::AnomalyKindName>, inline)]
    kind: Option<String>,
    /// Only anomalies in this state.
    #[param(value_type = Option<crate::api::schema::AnomalyStateName>, inline)]
    state: Option<String>,
    /// Only anomalies of this province.
    #[param(value_type = Option<schema::ProvinceCode>, inline)]
    province_code: Option<String>,
    /// Only anomalies of this enterprise.
    #[param(value_type = Option<schema::Id>, inline)]
    enterprise_id: Option<String>,
    /// Detected at or after this instant.
    #[param(value_type = Option<schema::Instant>, inline)]
    from: Option<String>,
    /// Detected before this instant.
    #[param(value_type = Option<schema::Instant>, inline)]
    to: Option<String>,
    /// Anomalies per page.
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    /// The `next_cursor` of the page before.
    #[param(value_type = Option<crate::api::schema::AnomalyCursor>, inline)]
    cursor: Option<String>,
}

fn is_anomaly_kind(s: &str) -> bool {
    use custodian_events::anomaly::AnomalyKind;
    AnomalyKind::ALL.iter().any(|k| k.name() == s)
}

/// An RFC 3339 instant as Unix nanoseconds. Instants beyond what 64 bits of them hold (1677-09-21 ..
/// 2262-04-11) bound a range exactly as its ends do: no event lies beyond them.
fn instant_ns(s: &str) -> Result<i64, ApiError> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| invalid(format!("{s:?} is not an RFC 3339 instant")))?;
    let ns = t.unix_timestamp_nanos();
    Ok(ns.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// `GET /v1/anomalies?kind=&province_code=&enterprise_id=&from=&to=&limit=&cursor=`: newest first, in scope.
#[utoipa::path(
    get,
    path = "/v1/anomalies",
    operation_id = "anomalies",
    tag = "query",
    summary = "Anomalies in scope, newest first",
    params(AnomaliesQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E503,
    ),
)]
pub async fn anomalies(
    State(st): State<Reads>,
    headers: HeaderMap,
    q: Result<Query<AnomaliesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let q = query_of(q)?;
    let limit = page(q.limit)?;
    filter("kind", &q.kind, is_anomaly_kind, "an anomaly kind")?;
    filter(
        "province_code",
        &q.province_code,
        custodian_events::event::is_province_code,
        PROVINCE,
    )?;
    filter("enterprise_id", &q.enterprise_id, is_id, "an enterprise id")?;
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            crate::api::schema::decimal(c, 18)
                .map(|n| n as i64)
                .ok_or_else(|| invalid("cursor is not one this API gave"))
        })
        .transpose()?;
    let from = q.from.as_deref().map(instant_ns).transpose()?;
    let to = q.to.as_deref().map(instant_ns).transpose()?;
    if let Some(edge) = st.edge.get() {
        // An edge has no read models: it answers from the anomalies it detected itself.
        return Ok(axum::Json(crate::edge::api::local_anomalies(
            &st.directory,
            edge,
            &who.scope,
            limit as usize,
            cursor.map(|c| c as u64),
        )?));
    }
    let state = q.state;
    if let Some(s) = &state
        && !ANOMALY_STATES.contains(&s.as_str())
    {
        return Err(invalid(format!(
            "state {s:?} is not one of open, acknowledged, resolved"
        )));
    }
    let f = db::AnomalyFilter {
        kind: q.kind.as_deref(),
        state: state.as_deref(),
        province_code: q.province_code.as_deref(),
        enterprise_id: q.enterprise_id.as_deref(),
        from_ns: from,
        to_ns: to,
        before_seq: cursor,
    };
    let rows = db::anomalies(&pg(&st)?, &who.scope, &f, limit + 1)
        .await
        .map_err(db_error)?;
    Ok(axum::Json(paged(
        &rows,
        limit,
        |a| {
            json!({
                "anomaly_id": a.anomaly_id,
                "event_seq": a.event_seq,
                "kind": a.kind,
                "severity": a.severity,
                "subject": a.subject,
                "enterprise_id": a.enterprise_id,
                "province_code": a.province_code,
                "terminal_id": a.terminal_id,
                "container_id": a.container_id,
                "manifest_id": a.manifest_id,
                "previous_value": a.previous_value,
                "current_value": a.current_value,
                "change_ratio_ppm": a.change_ratio_ppm,
                "limit_value": a.limit_value,
                "cause_seq": a.cause_seq,
                "detected_at": a.detected_at,
                "description": a.description,
                "state": a.state,
                "state_note": a.state_note,
                "state_by": a.state_by,
                "state_at": a.state_at,
            })
        },
        |a| a.event_seq.to_string(),
    )))
}

/// `GET /v1/containers/{id}`: the container and its custody chain, if its enterprise is in scope.
#[utoipa::path(
    get,
    path = "/v1/containers/{id}",
    operation_id = "container",
    tag = "query",
    summary = "A container and its custody chain",
    params(crate::api::schema::ContainerPath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn container(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let pool = pg(&st)?;
    let Some(c) = db::container(&pool, &who.scope, &id)
        .await
        .map_err(db_error)?
    else {
        return Err(not_found("container", &id));
    };
    let chain = db::custody(&pool, &c, 10_000).await.map_err(db_error)?;
    Ok(axum::Json(json!({
        "id": c.id,
        "enterprise_id": c.enterprise_id,
        "waste_code": c.waste_code,
        "stage": c.stage,
        "last_weight_kg": c.last_weight_mg as f64 / 1e6,
        "last_measured_at": c.last_measured_at,
        "weighings": c.weighings,
        "custody": chain.iter().map(|r| json!({
            "event_seq": r.event_seq,
            "stage": r.stage,
            "terminal_id": r.terminal_id,
            "weight_kg": r.weight_mg as f64 / 1e6,
            "measured_at": r.measured_at,
            "manifest_id": r.manifest_id,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words to find (Chinese too).
    #[param(value_type = crate::api::schema::SearchText, inline)]
    q: String,
    /// Only documents of this kind.
    #[param(value_type = Option<crate::api::schema::SearchKind>, inline)]
    kind: Option<String>,
    /// Hits to answer.
    #[param(minimum = 1, maximum = 200, default = 20)]
    limit: Option<usize>,
}

/// `GET /v1/search?q=&kind=&limit=`: full text, within the caller's scope (the filter is part of the
/// index query, so counts and hits never include what the caller may not see).
#[utoipa::path(
    get,
    path = "/v1/search",
    operation_id = "search",
    tag = "query",
    summary = "Full-text search in scope (Chinese words too)",
    params(SearchQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E503,
    ),
)]
pub async fn search(
    State(st): State<Reads>,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who: Caller = caller(&st.access, &headers)?;
    let q = query_of(q)?;
    crate::api::search::run_search(
        &st,
        q.q,
        crate::query::search::scoped(&who.scope, q.kind),
        q.limit,
    )
    .await
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadingsQuery {
    /// The range's start (included). At most 10,000 points a range: minutes raw, else `every`s
    /// (`range_too_large`); `to` after `from` (`empty_range`).
    #[param(value_type = schema::Instant, inline)]
    pub(crate) from: String,
    /// The range's end (excluded).
    #[param(value_type = schema::Instant, inline)]
    pub(crate) to: String,
    /// Aggregate per interval (days in China Standard Time); raw readings without.
    #[param(value_type = Option<crate::api::schema::Every>, inline)]
    pub(crate) every: Option<String>,
    /// The aggregate, with `every` (default mean).
    #[param(value_type = Option<crate::api::schema::Aggregate>, inline)]
    pub(crate) agg: Option<String>,
    /// The reading kind (default weight).
    #[param(value_type = Option<schema::ReadingKindName>, inline)]
    pub(crate) kind: Option<String>,
}

/// `GET /v1/terminals/{id}/readings?from=&to=&every=1m|1h|1d&agg=mean|min|max|sum|count&kind=` (InfluxDB):
/// the terminal's readings, raw or aggregated per interval (days in China Standard Time). The scope is part
/// of the InfluxQL query (`enterprise_id`, `province_code` tags) as well as of the terminal check.
#[utoipa::path(
    get,
    path = "/v1/terminals/{id}/readings",
    operation_id = "terminal_readings",
    tag = "query",
    summary = "A terminal's readings from InfluxDB, raw or per 1m/1h/1d",
    params(crate::api::schema::TerminalPath, ReadingsQuery),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn terminal_readings(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Result<Query<ReadingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let q = query_of(q)?;
    Ok(axum::Json(readings(&st, &who, &id, &q).await?))
}

/// Terminal `id`'s readings for `who`, as `GET /v1/terminals/{id}/readings` answers them: the API's and
/// the dashboard's one way to read them.
pub(crate) async fn readings(
    st: &Reads,
    who: &crate::tokens::Caller,
    id: &str,
    q: &ReadingsQuery,
) -> Result<Value, ApiError> {
    custodian_events::ids::check_id(id).map_err(|e| invalid(format!("terminal id: {e}")))?;
    let (from, to) = (instant_ns(&q.from)?, instant_ns(&q.to)?);
    if to <= from {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_range",
            "to must be after from",
        ));
    }
    let every_ns: Option<(i64, &str)> = match q.every.as_deref() {
        None => None,
        Some("1m") => Some((60_000_000_000, "1m")),
        Some("1h") => Some((3_600_000_000_000, "1h")),
        Some("1d") => Some((86_400_000_000_000, "1d")),
        Some(other) => return Err(invalid(format!("every {other:?} is not one of 1m, 1h, 1d"))),
    };
    let agg = q.agg.as_deref().unwrap_or("mean");
    if !AGGREGATES.contains(&agg) {
        return Err(invalid(format!(
            "agg {agg:?} is not one of mean, min, max, sum, count"
        )));
    }
    let kind = q.kind.as_deref().unwrap_or("weight");
    if custodian_events::ReadingKind::parse(kind).is_none() {
        return Err(invalid(format!("kind {kind:?} is not a reading kind")));
    }
    let step = every_ns.map_or(60_000_000_000, |(ns, _)| ns);
    let points = ((to as i128 - from as i128 + step as i128 - 1) / step as i128)
        .try_into()
        .unwrap_or(i64::MAX);
    if points > SERIES_POINTS_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "range_too_large",
            format!(
                "{from}..{to} at {} would be {points} points, more than {SERIES_POINTS_MAX}; narrow the range or use a coarser every (raw readings: at most {SERIES_POINTS_MAX} minutes)",
                q.every.as_deref().unwrap_or("raw")
            ),
        ));
    }
    // The terminal and its enterprise, in scope.
    let pool = pg(st)?;
    let Some(t) = db::terminal(&pool, &who.scope, id)
        .await
        .map_err(db_error)?
    else {
        return Err(not_found("terminal", id));
    };
    let client = influx::client(st).ok_or_else(|| {
        st.models
            .unavailable("influx", "InfluxDB read model", "read_model_unavailable")
    })?;
    let r = influx::Readings {
        kind,
        from_ns: from,
        to_ns: to,
        every: every_ns.map(|(_, every)| every),
        agg,
    };
    let points = influx::readings(&client, &who.scope, &t, &r)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "read_model_unavailable",
                format!("the InfluxDB read model did not answer: {e}"),
            )
        })?;
    let items: Vec<Value> = points
        .into_iter()
        .map(|influx::Point(mut item)| {
            if let Some(ns) = item.get("time").and_then(Value::as_i64) {
                item.insert(
                    "time".to_owned(),
                    json!(custodian_events::reading::format_utc_ns(ns)),
                );
            }
            Value::Object(item)
        })
        .collect();
    Ok(json!({
        "terminal_id": id,
        "kind": kind,
        "unit": custodian_events::ReadingKind::parse(kind).map(|k| k.base_unit()),
        "every": q.every,
        "agg": every_ns.map(|_| agg),
        "items": items,
    }))
}

/// `GET /v1/overview`: the landing view of the caller's scope — enterprises, terminals (and how many
/// reported within three of their intervals), anomalies by kind, kg in storage.
/// `GET /v1/overview` takes no parameters; any given is refused like the lists' unknown ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {}

#[utoipa::path(
    get,
    path = "/v1/overview",
    operation_id = "overview",
    tag = "query",
    summary = "The landing view of the caller's scope",
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E503,
    ),
)]
pub async fn overview(
    State(st): State<Reads>,
    headers: HeaderMap,
    q: Result<Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    query_of(q)?;
    let pool = pg(&st)?;
    let o = db::overview_counts(&pool, &who.scope, st.clock.now_ns())
        .await
        .map_err(db_error)?;
    let by_kind: serde_json::Map<String, Value> = o
        .open_by_kind
        .iter()
        .map(|(kind, n)| (kind.clone(), json!(n)))
        .collect();
    Ok(axum::Json(json!({
        "scope": match &who.scope {
            Scope::All => json!({"tier": who.tier.name()}),
            Scope::Province(p) => json!({"tier": "province", "province_code": p}),
            Scope::Enterprise(e) => json!({"tier": "enterprise", "enterprise_id": e}),
        },
        "enterprises": o.enterprises,
        "terminals": o.terminals,
        "terminals_online": o.online,
        "open_anomalies_by_kind": by_kind,
        "kg_in_storage": o.in_storage_mg as f64 / 1e6,
    })))
}

/// The regulators' reads the cache keeps (GET only).
fn cacheable(path: &str) -> bool {
    path == "/v1/overview"
        || path == "/v1/anomalies"
        || path == "/v1/search"
        || path.starts_with("/v1/enterprises")
        || path.starts_with("/v1/containers/")
        || path.starts_with("/v1/manifests/")
        || (path.starts_with("/v1/terminals/") && path.ends_with("/readings"))
}

/// Largest answer the cache keeps.
const CACHED_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How many rows an answer holds: the length of its `items` or `hits`, else 1.
fn rows_of(body: &[u8]) -> i64 {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v["items"]
            .as_array()
            .or_else(|| v["hits"].as_array())
            .map_or(1, |a| a.len() as i64),
        Err(_) => 0,
    }
}

/// Middleware for the regulators' reads:
/// - a successful answer is kept for `query.cache_ttl_ms`, keyed by the caller's tier and scope and the whole
///   URI, so callers of one scope share answers and no answer crosses scopes; the token is checked before
///   the cache is (a revoked token gets nothing, cached or not);
/// - every read, answered or refused, cached or not, is recorded in the audit trail (see `crate::audit`);
///   with no room in its queue the read answers 503 `audit_unavailable` instead of its data.
pub async fn cache(
    State(st): State<Reads>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use std::sync::atomic::Ordering;
    if req.method() != axum::http::Method::GET || !cacheable(req.uri().path()) {
        return next.run(req).await;
    }
    let started = std::time::Instant::now();
    let uri = req.uri().to_string();
    let who = match caller(&st.access, req.headers()) {
        Ok(c) => c,
        Err(e) => {
            st.metrics
                .query_unauthorized
                .fetch_add(1, Ordering::Relaxed);
            if let Some(audit) = &st.audit {
                let entry = crate::audit::AuditEntry {
                    at_ns: st.clock.now_ns(),
                    token_id: "-".into(),
                    tier: "none",
                    scope: None,
                    method: "GET".into(),
                    uri,
                    status: e.status.as_u16(),
                    rows: 0,
                    cached: false,
                    duration_us: started.elapsed().as_micros() as i64,
                };
                if !audit.try_record(entry) {
                    st.metrics
                        .audit_refusals_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            return e.into_response();
        }
    };
    let key = format!("{}|{:?}|{uri}", who.tier.name(), who.scope);
    let cached = if st.config.query.cache_ttl_ms > 0 {
        st.query_cache.get(&key)
    } else {
        None
    };
    let (response, status, rows, hit) = match cached {
        Some((body, rows)) => {
            st.metrics.query_cache_hits.fetch_add(1, Ordering::Relaxed);
            (
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response(),
                200,
                rows,
                true,
            )
        }
        None => {
            st.metrics
                .query_cache_misses
                .fetch_add(1, Ordering::Relaxed);
            let resp = next.run(req).await;
            let status = resp.status().as_u16();
            if status != 200 {
                (resp, status, 0, false)
            } else {
                let (parts, body) = resp.into_parts();
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => {
                        let rows = rows_of(&bytes);
                        if st.config.query.cache_ttl_ms > 0 && bytes.len() <= CACHED_BODY_BYTES_MAX
                        {
                            st.query_cache.insert(key, (bytes.clone(), rows));
                        }
                        (
                            axum::response::Response::from_parts(parts, Body::from(bytes)),
                            200,
                            rows,
                            false,
                        )
                    }
                    Err(e) => {
                        return ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal",
                            format!("the answer could not be read back: {e}"),
                        )
                        .into_response();
                    }
                }
            }
        }
    };
    if let Some(audit) = &st.audit {
        let (province, enterprise) = who.scope.binds();
        let entry = crate::audit::AuditEntry {
            at_ns: st.clock.now_ns(),
            token_id: who.token_id.clone(),
            tier: who.tier.name(),
            scope: province.or(enterprise),
            method: "GET".into(),
            uri,
            status,
            rows,
            cached: hit,
            duration_us: started.elapsed().as_micros() as i64,
        };
        if !audit.record(entry).await {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail cannot keep up (its database is slow or down); the read is refused rather than left unrecorded — retry shortly",
            )
            .into_response();
        }
    }
    response
}

/// `GET /v1/manifests/{id}`: a transfer order, if its generator or its receiver is in scope.
#[utoipa::path(
    get,
    path = "/v1/manifests/{id}",
    operation_id = "manifest",
    tag = "query",
    summary = "A manifest, if either party is in scope",
    params(crate::api::schema::ManifestPath),
    responses(
        (status = 200, description = "OK", body = serde_json::Value),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E503,
    ),
)]
pub async fn manifest(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let Some(m) = db::manifest(&pg(&st)?, &who.scope, &id)
        .await
        .map_err(db_error)?
    else {
        return Err(not_found("manifest", &id));
    };
    let kg = |mg: Option<i64>| mg.map(|v| v as f64 / 1e6);
    Ok(axum::Json(json!({
        "id": m.id,
        "generator_id": m.generator_id,
        "receiver_id": m.receiver_id,
        "waste_code": m.waste_code,
        "container_ids": m.container_ids,
        "declared_kg": m.declared_mg as f64 / 1e6,
        "notes": m.notes,
        "status": m.status,
        "dispatched_kg": kg(m.dispatched_mg),
        "received_kg": kg(m.received_mg),
        "opened_at": m.opened_at,
        "dispatched_at": m.dispatched_at,
        "received_at": m.received_at,
    })))
}

/// Anomalies read from the log per step of the feed.
const STREAM_STEP: usize = 500;

struct Feed {
    st: Reads,
    scope: Scope,
    from: u64,
    durable: tokio::sync::watch::Receiver<u64>,
    pending: std::collections::VecDeque<axum::response::sse::Event>,
}

/// `GET /v1/anomalies/stream`: a server-sent-events feed of new anomalies in the caller's scope, straight
/// from the log as they become durable (no polling; a bureau sees an alarm within a second). Each event is
/// `event: anomaly`, `id: <event_seq>`, `data: {"event_seq", "recorded_at", "enterprise_id",
/// "province_code", "description", "anomaly": <canonical payload>}`. A reconnecting client sends
/// `Last-Event-ID` and resumes after it. Comments keep the connection alive.
#[utoipa::path(
    get,
    path = "/v1/anomalies/stream",
    operation_id = "anomaly_stream",
    tag = "query",
    summary = "Server-sent events: new anomalies in scope (Last-Event-ID resumes)",
    params(crate::api::schema::StreamHeaders),
    responses(
        (status = 200, description = "OK: one event per anomaly, comments to keep the connection alive", body = crate::api::schema::AnomalyFeedEvent, content_type = "text/event-stream"),
        crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E503,
    ),
)]
pub async fn anomaly_stream(
    State(st): State<Reads>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    let who = caller(&st.access, &headers)?;
    let from = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(crate::api::schema::sequence_header_value)
            .map(|seq| seq + 1)
            .ok_or_else(|| invalid("Last-Event-ID must be an event sequence this feed sent"))?,
        None => st.log.last_seq() + 1,
    };
    let feed = Feed {
        durable: st.log.subscribe(),
        st,
        scope: who.scope,
        from,
        pending: Default::default(),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(e), f));
            }
            if f.from <= f.st.log.last_seq() {
                let (log, from) = (f.st.log.clone(), f.from);
                let read = tokio::task::spawn_blocking(move || {
                    log.read_where(from, STREAM_STEP, &|t| {
                        matches!(
                            t,
                            "AnomalyDetected" | "EnterpriseRegistered" | "TerminalRegistered"
                        )
                    })
                })
                .await;
                let Ok(Ok((events, last))) = read else {
                    tracing::warn!("the anomaly feed cannot read the log; closing it");
                    return None;
                };
                if last == 0 {
                    continue;
                }
                f.from = last + 1;
                f.st.directory
                    .write()
                    .expect("directory lock")
                    .learn_all(&events);
                for e in events {
                    let Event::AnomalyDetected(a) = &e.event else {
                        continue;
                    };
                    let (enterprise, province) = place(&f.st, a);
                    let visible = match &f.scope {
                        Scope::All => true,
                        Scope::Province(p) => province.as_deref() == Some(p.as_str()),
                        Scope::Enterprise(x) => enterprise.as_deref() == Some(x.as_str()),
                    };
                    if !visible {
                        continue;
                    }
                    let data = json!({
                        "event_seq": e.seq,
                        "recorded_at": custodian_events::reading::format_utc_ns(e.recorded_at_ns),
                        "enterprise_id": enterprise,
                        "province_code": province,
                        "description": custodian_projections::describe::anomaly_description(a),
                        "anomaly": e.event.canonical().to_value(),
                    });
                    f.pending.push_back(
                        axum::response::sse::Event::default()
                            .event("anomaly")
                            .id(e.seq.to_string())
                            .data(data.to_string()),
                    );
                }
                continue;
            }
            if f.durable.changed().await.is_err() {
                return None;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The enterprise and province an anomaly belongs to, from the directory, else from the registrations in
/// the log (which the directory then learns).
fn place(
    st: &Reads,
    a: &custodian_events::domain::AnomalyDetected,
) -> (Option<String>, Option<String>) {
    let known = |st: &Reads| {
        st.directory
            .read()
            .expect("directory lock")
            .scope_of_anomaly(a)
    };
    let (enterprise, province) = known(st);
    if province.is_some() {
        return (enterprise, province);
    }
    // Not yet learnt (the projections are off, or behind): read the registrations themselves.
    let learn = |key: custodian_events::event::DedupeKey| {
        if let Ok(Some(entry)) = st.log.lookup(&key)
            && let Ok(events) = st.log.read(entry.seq, 1)
        {
            st.directory
                .write()
                .expect("directory lock")
                .learn_all(&events);
        }
    };
    if enterprise.is_none()
        && let Some(t) = &a.terminal_id
    {
        learn(custodian_events::event::dedupe_key_terminal(t));
    }
    let (enterprise, _) = known(st);
    if let Some(e) = &enterprise
        && let Ok(id) = custodian_events::ids::EnterpriseId::parse(e)
    {
        learn(custodian_events::event::dedupe_key_enterprise(&id));
    }
    known(st)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHandling {
    /// What was done or found (1 ..= 4,000 characters).
    #[schema(schema_with = schema::note)]
    note: String,
}

/// The two handlers of an anomaly, alike but for their path, summary and the state they hand it into
/// (each one operation of the document, named after its function).
macro_rules! handling {
    ($(#[$doc:meta])* $name:ident, $path:tt, $summary:tt, $state:ident) => {
        $(#[$doc])*
        #[utoipa::path(
            post,
            path = $path,
            tag = "query",
            summary = $summary,
            params(crate::api::schema::AnomalyPath),
            request_body = RawHandling,
            responses(
                (status = 202, description = "OK", body = serde_json::Value),
                crate::api::schema::E400, crate::api::schema::E401, crate::api::schema::E404, crate::api::schema::E409, crate::api::schema::E413, crate::api::schema::E415, crate::api::schema::E422, crate::api::schema::E503,
            ),
        )]
        pub async fn $name(
            st: State<Reads>,
            id: Path<String>,
            headers: HeaderMap,
            body: Body,
        ) -> Result<impl IntoResponse, ApiError> {
            handle_anomaly(
                st,
                id,
                headers,
                body,
                custodian_events::event::AnomalyState::$state,
            )
            .await
        }
    };
}

handling!(
    /// `POST /v1/anomalies/{id}/acknowledge` and `/resolve` with `{"note"}`: by anyone whose scope holds the
    /// anomaly (regulators included). 202 with the event's sequence: the read models show the new state once
    /// they have caught up. 404 out of scope or unknown, 409 `already_resolved`.
    acknowledge_anomaly,
    "/v1/anomalies/{id}/acknowledge",
    "Acknowledge an anomaly",
    Acknowledged
);

handling!(
    resolve_anomaly,
    "/v1/anomalies/{id}/resolve",
    "Resolve an anomaly (final)",
    Resolved
);

async fn handle_anomaly(
    State(st): State<Reads>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
    state: custodian_events::event::AnomalyState,
) -> Result<impl IntoResponse, ApiError> {
    let who = caller(&st.access, &headers)?;
    let raw: RawHandling = read_json(&headers, body, 32 * 1024).await?;
    // Not idempotent: every call is recorded, so `Some` always.
    let seq = handle(&st, &who, &id, &raw.note, state, false)
        .await?
        .unwrap_or_default();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "anomaly_id": id, "state": state.name(), "event_seq": seq })),
    ))
}

/// Acknowledges or resolves anomaly `id` for `who` with `note` (the API's and the dashboard's one way to
/// do it): 404 out of scope or unknown, 409 when it is resolved already, 422 for an empty or long note.
/// The sequence of the `AnomalyHandled` it appended. With `idempotent` (the dashboard's forms, which a
/// browser may post twice), an alarm already in `state`, or resolved, is left as it is and answers `None`
/// whatever the note.
pub(crate) async fn handle(
    st: &Reads,
    who: &crate::tokens::Caller,
    id: &str,
    note: &str,
    state: custodian_events::event::AnomalyState,
    idempotent: bool,
) -> Result<Option<u64>, ApiError> {
    use custodian_events::event::{AnomalyHandled, NOTE_CHARS_MAX, check_text};
    let id = id.to_owned();
    let note = note.trim();
    let bad_note = check_text(note, NOTE_CHARS_MAX, false).err().map(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "value_out_of_range",
            format!("note {e}"),
        )
    });
    if let Some(e) = bad_note.clone()
        && !idempotent
    {
        return Err(e);
    }
    let Some(anomaly) = db::anomaly(&pg(st)?, &who.scope, &id)
        .await
        .map_err(db_error)?
    else {
        return Err(not_found("anomaly", &id));
    };
    let current = anomaly.state;
    if idempotent && (current == state.name() || current == "resolved") {
        return Ok(None);
    }
    if let Some(e) = bad_note {
        return Err(e);
    }
    if current == "resolved" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_resolved",
            format!("anomaly {id} is resolved; a resolution is final"),
        ));
    }
    let enterprise = anomaly.enterprise_id;
    let event = Event::AnomalyHandled(AnomalyHandled {
        anomaly_id: id.clone(),
        enterprise_id: enterprise
            .as_deref()
            .and_then(|e| custodian_events::ids::EnterpriseId::parse(e).ok()),
        state,
        note: note.to_owned(),
        by: who.token_id.clone(),
        at_ns: st.clock.now_ns(),
    });
    let scope = enterprise.unwrap_or_else(|| custodian_events::keyring::PLATFORM_SCOPE.to_owned());
    let p = crate::sealing::sealed(&st.sealer, &scope, event, Some(&who.token_id)).await?;
    let outcome = st.log.append(vec![p]).await?;
    Ok(Some(match outcome.first() {
        Some(custodian_log::AppendOutcome::Appended { seq }) => *seq,
        _ => 0,
    }))
}

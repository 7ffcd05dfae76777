//! Who is asking: the bearer token of a request, checked.

use axum::http::{HeaderMap, StatusCode, header};

use crate::api::error::ApiError;
use crate::state::Access;

/// Checks `Authorization: Bearer <admin token>`, in constant time.
pub fn require_admin(access: &Access, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin_caller(access, headers).map(|_| ())
}

/// The caller, who must hold the `admin` role: the node's bootstrap admin token or an admin token issued
/// with it. A regulator's token gets 403 `admin_only`.
pub fn require_admin_caller(
    access: &Access,
    headers: &HeaderMap,
) -> Result<crate::tokens::Caller, ApiError> {
    let c = caller(access, headers)?;
    if !c.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_only",
            "this endpoint needs the admin role; regulators' tokens only read",
        ));
    }
    Ok(c)
}

/// Who is asking: the bootstrap admin token, or a token the platform issued (checked: signature, expiry,
/// revocation).
pub fn caller(access: &Access, headers: &HeaderMap) -> Result<crate::tokens::Caller, ApiError> {
    use crate::tokens::{Caller, Scope, Tier};
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "this endpoint needs `Authorization: Bearer <token>`",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), access.admin_token.as_bytes()) {
        return Ok(Caller {
            token_id: "bootstrap".into(),
            tier: Tier::Admin,
            scope: Scope::All,
        });
    }
    let now_s = access.clock.now_ns().div_euclid(1_000_000_000);
    let claims = access.tokens.verify(given, now_s).map_err(|e| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("the bearer token is not valid here: {e}"),
        )
    })?;
    let scope = crate::tokens::check_scope(claims.tier, claims.scope.as_deref())
        .map_err(|m| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", m))?;
    Ok(Caller {
        token_id: claims.id.clone(),
        tier: claims.tier,
        scope,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

//! The HTTP server API under `/api/v1/` for backends, authenticated with API keys
//! (`Authorization: apikey <key>`, compared in constant time). Errors use the protocol's codes.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_proto::ErrorCode;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::app::{AppState, json_error};

/// Largest accepted API request body.
pub const MAX_BODY: usize = 64 * 1024;

/// Whether the request carries one of the configured API keys.
pub fn authorized(headers: &HeaderMap, keys: &[String]) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .and_then(|(scheme, k)| scheme.eq_ignore_ascii_case("apikey").then(|| k.trim()))
    else {
        return false;
    };
    // Check every key (no early exit) so timing does not tell which one matched.
    keys.iter().fold(false, |ok, k| {
        ok | bool::from(k.as_bytes().ct_eq(given.as_bytes()))
    })
}

/// The 401 response for a request without a valid API key (`None` = the key is valid).
pub fn key_rejection(app: &AppState, headers: &HeaderMap) -> Option<Response> {
    let keys = &app.node.config().auth.api_keys;
    if keys.is_empty() {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "the server API is disabled: no auth.api_keys configured",
        ));
    }
    if !authorized(headers, keys) {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong API key",
        ));
    }
    None
}

/// `POST /api/v1/revoke` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Revoke every token of this user issued up to now.
    #[serde(default)]
    pub user: Option<String>,
    /// Revoke the token with this `jti`.
    #[serde(default)]
    pub token_id: Option<String>,
    /// Keep the revocation until this Unix time in seconds (default: 24 hours from now; set it
    /// to the longest lifetime of the tokens you issue).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// Revoke tokens by user or id and close the connections using them.
pub async fn revoke(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(r) = key_rejection(&app, &headers) {
        return r;
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &e.body_text(),
            );
        }
    };
    let now = herald_core::publication::now_ms() / 1000;
    let expires_at = req.expires_at.unwrap_or(now + 24 * 3600);
    let closed = match (&req.user, &req.token_id) {
        (Some(u), None) if !u.is_empty() => app.node.revoke_user(u, expires_at),
        (None, Some(t)) if !t.is_empty() => app.node.revoke_token(t, expires_at),
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                "give exactly one of `user` or `token_id`",
            );
        }
    };
    Json(serde_json::json!({ "closed": closed })).into_response()
}

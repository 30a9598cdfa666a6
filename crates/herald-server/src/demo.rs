//! The demo chat served at `/` when `[debug] demo` is on (`herald serve --dev` turns it on): a
//! page built from `clients/js/demo` with the TypeScript client, and a token endpoint that hands
//! out connection tokens for any user name. Development only: anyone who can reach the endpoint
//! can be anyone.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_proto::ErrorCode;

use crate::state::AppState;

/// Mints a connection token for a user name (the binary signs with the configured key).
pub use crate::state::TokenMinter;

const INDEX: &str = include_str!("../assets/demo/index.html");
const STYLE: &str = include_str!("../assets/demo/style.css");
/// Built by `npm run build:demo` in `clients/js` (checked by `scripts/test.sh`).
const APP: &str = include_str!("../assets/demo/app.js");

/// The page may only talk to this server.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The demo's routes.
pub fn routes(router: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    router
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/demo/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/demo/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route("/demo/token", get(token))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    user: String,
}

/// Whether `name` is a usable demo user name: 1–24 of `A–Z a–z 0–9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=24).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

async fn token(
    State(app): State<Arc<AppState>>,
    q: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(mint) = app.demo.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(Query(q)) = q.ok().filter(|q| valid_name(&q.user)) else {
        return crate::state::json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "user must be 1-24 characters of A-Z a-z 0-9 _ -",
        );
    };
    match mint(&q.user) {
        Ok(t) => Json(serde_json::json!({ "token": t, "user": q.user })).into_response(),
        Err(e) => crate::state::json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            &e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names_are_short_and_plain() {
        assert!(valid_name("alice_2-b"));
        for bad in ["", "a b", "é", "x#y", &"a".repeat(25)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}

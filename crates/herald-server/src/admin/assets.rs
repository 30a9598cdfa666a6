//! The admin page: HTML, CSS and the script built from `clients/js/admin` (`npm run
//! build:admin`; `scripts/test-js.sh` checks the committed build is current). The page holds no
//! data: everything it shows comes from `/admin/api/*` after login.

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

const INDEX: &str = include_str!("../../assets/admin/index.html");
const STYLE: &str = include_str!("../../assets/admin/style.css");
const APP: &str = include_str!("../../assets/admin/app.js");

/// Only this server; no inline script or style.
const CSP: &str = "default-src 'none'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

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
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `/admin`, `/admin/`, `/admin/style.css`, `/admin/app.js`.
pub fn routes(router: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    let index = || async { asset("text/html; charset=utf-8", INDEX) };
    router
        .route("/admin", get(index))
        .route("/admin/", get(index))
        .route(
            "/admin/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/admin/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
}

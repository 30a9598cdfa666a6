//! The admin web UI and its API at `/admin` (`[admin]`; off unless `admin.secret` is set).
//!
//! - [`auth`]: login, logout, the session cookie, the session and CSRF checks.
//! - [`crate::admin_sessions`]: admin sessions (bounded, expiring) and failed logins per IP.
//! - [`data`]: the admin API, running the server API's own functions.
//! - [`stats`]: the overview's numbers from the Prometheus recorder.
//! - [`assets`]: the page, built from `clients/js/admin`.

pub mod assets;
pub mod auth;
pub mod data;
pub mod stats;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::state::AppState;

/// Largest admin request body (the server API's limit).
pub const MAX_BODY: usize = crate::api::MAX_BODY;

pub use crate::admin_sessions::Admin;

/// Every admin API route: method and path (documented in docs/openapi.json).
pub const API_ROUTES: [(&str, &str); 9] = [
    ("GET", "/admin/api/overview"),
    ("GET", "/admin/api/channels"),
    ("GET", "/admin/api/channel"),
    ("GET", "/admin/api/connections"),
    ("POST", "/admin/api/disconnect"),
    ("POST", "/admin/api/revoke"),
    ("POST", "/admin/api/publish"),
    ("GET", "/admin/api/dead_letters"),
    ("GET", "/admin/api/events"),
];

/// The admin routes (only when `[admin]` is on).
pub fn routes(
    router: axum::Router<Arc<AppState>>,
    state: &Arc<AppState>,
) -> axum::Router<Arc<AppState>> {
    let api = axum::Router::new()
        .route("/overview", get(data::overview))
        .route("/channels", get(data::channels))
        .route("/channel", get(data::channel))
        .route("/connections", get(data::connections))
        .route("/disconnect", post(data::disconnect))
        .route("/revoke", post(data::revoke))
        .route("/publish", post(data::publish))
        .route("/dead_letters", get(data::dead_letters))
        .route("/events", get(data::events))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ));
    let router = assets::routes(router)
        .route(
            "/admin/login",
            post(auth::login).layer(DefaultBodyLimit::max(1024)),
        )
        .route(
            "/admin/logout",
            post(auth::logout).layer(DefaultBodyLimit::max(1024)),
        );
    router.nest("/admin/api", api)
}

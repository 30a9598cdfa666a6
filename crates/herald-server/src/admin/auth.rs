//! Login, logout, the session cookie and the checks in front of every admin route: a valid
//! session (401 otherwise) and, on state-changing requests, the CSRF defences (403 otherwise).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_proto::ErrorCode;
use subtle::ConstantTimeEq;

use crate::state::{AppState, json_error};

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";
/// The header every state-changing admin request must carry (a cross-site form cannot set it).
pub const CSRF_HEADER: &str = "x-herald-admin";

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(id: &str, max_age_secs: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn cleared_cookie(secure: bool) -> String {
    session_cookie("", 0, secure)
}

/// The session id in the request's cookies.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    crate::handshake::cookie(headers, COOKIE).filter(|id| !id.is_empty())
}

/// Whether a state-changing request passes the CSRF checks: the custom header is `1`, and an
/// `Origin`, when sent, names this very host.
pub fn csrf_ok(headers: &HeaderMap) -> bool {
    let marked = headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let Some(origin) = headers.get(header::ORIGIN) else {
        return marked;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same = origin
        .to_str()
        .ok()
        .and_then(|o| {
            o.strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
        })
        .zip(host)
        .is_some_and(|(o, h)| o.eq_ignore_ascii_case(h));
    marked && same
}

fn forbidden_csrf() -> Response {
    json_error(
        StatusCode::FORBIDDEN,
        ErrorCode::PermissionDenied,
        "cross-site request refused: send X-Herald-Admin: 1 from this origin",
    )
}

fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such path")
}

/// In front of `/admin/api/*`: 401 without a live session, 403 when a state-changing request
/// fails the CSRF checks.
pub async fn guard(
    State(app): State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let Some(admin) = app.admin.as_ref() else {
        return not_found();
    };
    if !session_id(req.headers()).is_some_and(|id| admin.sessions.valid(id)) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "log in first: POST /admin/login",
        );
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe && !csrf_ok(req.headers()) {
        return forbidden_csrf();
    }
    next.run(req).await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    secret: String,
}

/// `POST /admin/login` `{"secret": "..."}`: 204 with the session cookie; 401 wrong secret; 429
/// after too many failures from this IP; 403 without the CSRF header.
pub async fn login(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(admin) = app.admin.as_ref() else {
        return not_found();
    };
    if !csrf_ok(&headers) {
        return forbidden_csrf();
    }
    let ip = crate::handshake::client_ip(peer, &headers, &app.server.trusted_proxies);
    if !admin.failed.allowed(ip) {
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many failed logins from this address: wait and try again",
        );
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => return json_error(e.status(), ErrorCode::TooLarge, &e.body_text()),
    };
    let Ok(Login { secret }) = serde_json::from_slice::<Login>(&body) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "body must be {\"secret\": \"...\"}",
        );
    };
    let expected = admin.config.secret.as_deref().unwrap_or_default();
    let right = !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(secret.as_bytes()));
    if !right {
        admin.failed.failed(ip);
        tracing::warn!(%ip, "admin login failed");
        return json_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "wrong admin secret",
        );
    }
    let id = admin.sessions.create();
    tracing::info!(%ip, "admin logged in");
    with_cookie(
        StatusCode::NO_CONTENT,
        &session_cookie(&id, admin.config.session_ttl.as_secs(), admin.secure),
    )
}

/// `POST /admin/logout`: ends the session (if any) and clears the cookie; 204.
pub async fn logout(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(admin) = app.admin.as_ref() else {
        return not_found();
    };
    if !csrf_ok(&headers) {
        return forbidden_csrf();
    }
    if let Some(id) = session_id(&headers) {
        admin.sessions.remove(id);
    }
    with_cookie(StatusCode::NO_CONTENT, &cleared_cookie(admin.secure))
}

fn with_cookie(status: StatusCode, cookie: &str) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn finds_the_session_among_cookies() {
        let h = headers(&[("cookie", "a=1; herald_admin=abc; b=2")]);
        assert_eq!(session_id(&h), Some("abc"));
        assert_eq!(session_id(&headers(&[("cookie", "herald_adminx=1")])), None);
        assert_eq!(session_id(&headers(&[("cookie", "herald_admin=")])), None);
    }

    #[test]
    fn csrf_needs_the_header_and_a_same_origin() {
        assert!(csrf_ok(&headers(&[("x-herald-admin", "1")])));
        assert!(!csrf_ok(&headers(&[])));
        let same = [
            ("x-herald-admin", "1"),
            ("host", "a.example:8000"),
            ("origin", "http://a.example:8000"),
        ];
        assert!(csrf_ok(&headers(&same)));
        let foreign = [
            ("x-herald-admin", "1"),
            ("host", "a.example:8000"),
            ("origin", "http://evil.example"),
        ];
        assert!(!csrf_ok(&headers(&foreign)));
        assert!(!csrf_ok(&headers(&[
            ("x-herald-admin", "1"),
            ("host", "a"),
            ("origin", "null")
        ])));
    }

    #[test]
    fn cookie_attributes() {
        assert_eq!(
            session_cookie("x", 60, true),
            "herald_admin=x; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
    }
}

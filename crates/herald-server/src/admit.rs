//! Admission of a new connection, whatever carries it (a WebSocket upgrade or an HTTP transport
//! session): shutdown, the per-IP connect rate, the `Origin` allowlist, the per-IP connection
//! slot, the handshake token (or the connect proxy) and the per-user connection slot.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use herald_proto::ErrorCode;

use crate::handshake::{self, Offer};
use crate::state::{AppState, Handshake, Held, json_error};

/// A connection that passed admission.
pub(crate) struct Admitted {
    /// The client IP (behind trusted proxies).
    pub ip: IpAddr,
    /// How it authenticates.
    pub hs: Handshake,
    /// Slots and forwarded headers held while it lives.
    pub held: Held,
}

/// Why a connection was not admitted.
pub(crate) enum Refusal {
    /// The node admits no more new connections this instant (`limits.connect_per_second`):
    /// come back after this long (random, so refused clients spread out).
    Busy(std::time::Duration),
    /// Any other refusal: the HTTP answer.
    Answer(Response),
}

impl From<Response> for Refusal {
    fn from(r: Response) -> Self {
        Refusal::Answer(r)
    }
}

impl Refusal {
    /// As an HTTP answer: `Busy` is `503 unavailable` with `Retry-After` (whole seconds).
    pub(crate) fn into_response(self) -> Response {
        match self {
            Refusal::Answer(r) => r,
            Refusal::Busy(after) => {
                let mut r = json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "too many new connections on this node: retry later",
                );
                let secs = after.as_millis().div_ceil(1000).max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        }
    }
}

/// Most connections refused with 1013 at once (upgraded, advised, lingering up to 2 s for the
/// client's close); beyond it the refusal is a plain `503` that holds nothing.
pub(crate) const MAX_BUSY: usize = 1024;

/// One of the [`MAX_BUSY`] refused sockets, given back when dropped.
pub(crate) struct BusyGuard(Arc<AppState>);

impl BusyGuard {
    pub(crate) fn take(app: &Arc<AppState>) -> Option<BusyGuard> {
        use std::sync::atomic::Ordering;
        if app.busy.fetch_add(1, Ordering::AcqRel) >= MAX_BUSY {
            app.busy.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(BusyGuard(app.clone()))
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A random retry hint in 1 s ..= `max` (at least 1 s).
pub(crate) fn retry_hint(max: std::time::Duration) -> std::time::Duration {
    let lo = 1_000u64;
    let hi = (max.as_millis() as u64).max(lo);
    std::time::Duration::from_millis(lo + rand::random::<u64>() % (hi - lo + 1))
}

/// `429` with `Retry-After: 1`.
pub(crate) fn too_many(message: &str) -> Response {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        message,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Count a refused handshake by reason.
pub(crate) fn rejected(reason: &'static str) {
    metrics::counter!("herald_handshake_rejected_total", "reason" => reason).increment(1);
}

/// The per-user connection slot of `identity` (none for anonymous users); `Err` when the user
/// already has `limits.max_connections_per_user` connections (across the cluster).
pub(crate) async fn user_slot(
    app: &AppState,
    identity: &herald_core::Identity,
) -> Result<Option<crate::slots::UserSlot>, ()> {
    let max = app.node.config().limits.max_connections_per_user;
    match &*identity.user_id {
        "" => Ok(None),
        user => crate::slots::acquire_user(&app.user_slots, &app.node, user, max)
            .await
            .map(Some)
            .ok_or(()),
    }
}

/// The answer to a connection over the per-user cap (counted as a refused handshake).
pub(crate) fn user_limit() -> Response {
    rejected("user_connections");
    too_many("too many open connections for this user")
}

/// Run the checks; the error is the HTTP answer to give instead.
pub(crate) async fn admit(
    app: &Arc<AppState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    uri: &Uri,
    offer: &Offer,
) -> Result<Admitted, Refusal> {
    if app.shutdown.is_cancelled() {
        return Err(Refusal::Answer(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "shutting down",
        )));
    }
    let limits = &app.node.config().limits;
    let ip = handshake::client_ip(peer, headers, &app.server.trusted_proxies);
    if let Some(l) = &app.connect_limiter
        && !l.allow(&ip)
    {
        rejected("connect_rate");
        return Err(too_many("too many new connections from this address").into());
    }
    if !handshake::origin_allowed(
        headers,
        &app.server.allowed_origins,
        app.server.allow_missing_origin,
    ) {
        rejected("origin");
        return Err(json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "origin not allowed",
        )
        .into());
    }
    // After the per-IP rate and the Origin check, so that one address's excess or a foreign
    // page does not use the node's budget (and gets its own answer).
    if app.accepts.as_ref().is_some_and(|a| !a.allow()) {
        rejected("node_connect_rate");
        return Err(Refusal::Busy(retry_hint(limits.connect_retry_jitter)));
    }
    let Some(ip_slot) = app
        .ip_slots
        .acquire(crate::slots::ip_key(ip), limits.max_connections_per_ip)
    else {
        rejected("ip_connections");
        return Err(too_many("too many open connections from this address").into());
    };
    let auth = &app.node.config().auth;
    let token = handshake::token(headers, uri, offer, auth);
    // A session waiting for `resume` that the proxy already vouched for: its resume token at the
    // handshake stands for the proxy's answer (a reconnect storm costs the backend nothing).
    let resuming = match (&token, app.connect_proxy.as_ref()) {
        (None, Some(_)) => handshake::resume_token(headers, uri).and_then(|t| {
            let identity = app.node.resume_identity(&t)?;
            metrics::counter!("herald_proxy_skipped_total").increment(1);
            Some((identity, t))
        }),
        _ => None,
    };
    let proxied = match (&token, app.connect_proxy.as_ref()) {
        (None, Some(_)) if resuming.is_some() => None,
        (None, Some(p)) => match p.connect(ip, headers).await {
            Ok(p) => Some(p),
            Err(e) => {
                rejected("auth");
                let status = match e.code {
                    ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
                    _ => {
                        app.node.dead_letters().push(
                            herald_core::journal::DeadLetterKind::BackendFailed,
                            serde_json::json!({"proxy": "connect", "client_ip": ip.to_string(),
                                "code": e.code, "error": e.message}),
                        );
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                return Err(json_error(status, e.code, &e.message).into());
            }
        },
        _ => None,
    };
    let (authenticated, channels, resume_only) = match (proxied, resuming) {
        (_, Some((identity, t))) => (Some(Ok(identity)), Vec::new(), Some(t)),
        (Some(p), None) => (Some(Ok(p.identity)), p.channels, None),
        (None, None) => (None, Vec::new(), None),
    };
    let hs = match token {
        None if authenticated.is_none() && !auth.anonymous => Handshake::FirstMessage,
        token => match authenticated.unwrap_or_else(|| app.node.authenticate(token.as_deref())) {
            Ok(identity) => {
                let Ok(slot) = user_slot(app, &identity).await else {
                    return Err(user_limit().into());
                };
                Handshake::Done(Box::new(identity), slot, channels, resume_only)
            }
            Err(e) => {
                rejected("auth");
                return Err(json_error(StatusCode::UNAUTHORIZED, e.code, &e.message).into());
            }
        },
    };
    let held = Held {
        _ip: Some(ip_slot),
        forwarded: (!app.forward_headers.is_empty()).then(|| {
            Arc::new(crate::proxy::forwarded_headers(
                headers,
                &app.forward_headers,
            ))
        }),
    };
    Ok(Admitted { ip, hs, held })
}

//! No sticky sessions: a command POST, a long-poll or a close that reaches a node which does not hold its
//! session is relayed over the engine's control bus to the node named in the session id, served
//! there exactly as if it had arrived directly, and its answer relayed back.
//!
//! The bus is best effort and at most once: a relayed request whose answer does not come back in
//! time is answered `503 unavailable` (retryable). A long-poll retried with the same `Herald-Ack`
//! gets the same batch; a command POST retried may run twice (use `idempotency_key` on publishes).

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::http_sessions::RelayWaits;
use crate::state::{AppState, json_error};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use herald_proto::ErrorCode;
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Relayed {
    /// `POST /http/send` for a session held by the receiving node.
    Send { req: u64, key: String, body: String },
    /// `POST /http/poll` for a session held by the receiving node.
    Poll { req: u64, key: String, ack: u64 },
    /// `POST /http/close` for a session held by the receiving node.
    Close { req: u64, key: String },
    /// The answer to request `req`.
    Answer {
        req: u64,
        status: u16,
        content_type: Option<String>,
        seq: Option<u64>,
        session: Option<String>,
        body: String,
    },
}

/// A relayed request, for [`Relay::forward`].
pub enum Request {
    /// Commands (the raw body).
    Send(Bytes),
    /// A long-poll with its acknowledgement.
    Poll(u64),
    /// Ending the session.
    Close,
}

/// Serves the requests other nodes relay here (the node's relay handler).
struct Server {
    app: Weak<AppState>,
}

/// Serve relayed requests with `app` (once, when the server is built).
pub fn install(app: &Arc<AppState>) {
    app.node.set_relay_handler(Arc::new(Server {
        app: Arc::downgrade(app),
    }));
}

/// Relay a request for session `key` to `node` and wait up to `timeout` for the answer.
pub async fn forward(
    app: &AppState,
    node: &str,
    key: u128,
    request: Request,
    timeout: Duration,
) -> Response {
    let waits = &app.relay_waits;
    let (req, rx) = waits.wait();
    /// Forgets the request however this future ends.
    struct Forget<'a>(&'a RelayWaits, u64);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.forget(self.1);
        }
    }
    let _forget = Forget(waits, req);
    let key = format!("{key:032x}");
    let msg = match request {
        Request::Send(body) => Relayed::Send {
            req,
            key,
            body: B64.encode(&body),
        },
        Request::Poll(ack) => Relayed::Poll { req, key, ack },
        Request::Close => Relayed::Close { req, key },
    };
    let Ok(payload) = serde_json::to_string(&msg) else {
        return unavailable();
    };
    metrics::counter!("herald_http_relayed_total").increment(1);
    tracing::debug!(node, req, "relaying an HTTP transport request");
    let relayed = async {
        app.node.relay(node, payload).await.ok()?;
        rx.await.ok()
    };
    match tokio::time::timeout(timeout, relayed).await {
        Ok(Some(resp)) => resp,
        Ok(None) => unavailable(),
        Err(_) => {
            metrics::counter!("herald_http_relay_timeouts_total").increment(1);
            tracing::debug!(node, req, "no answer to a relayed HTTP transport request");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    let mut r = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Unavailable,
        "the node that holds this session did not answer: retry",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// Serve a request relayed from `from` and send the answer back.
async fn serve(app: Arc<AppState>, from: String, msg: Relayed) {
    let (req, resp) = match msg {
        Relayed::Send { req, key, body } => {
            let resp = match (u128::from_str_radix(&key, 16), B64.decode(body)) {
                (Ok(key), Ok(body)) => super::send_to(&app, key, Bytes::from(body)).await,
                _ => StatusCode::BAD_REQUEST.into_response(),
            };
            (req, resp)
        }
        Relayed::Poll { req, key, ack } => {
            let resp = match u128::from_str_radix(&key, 16) {
                Ok(key) => super::poll_on(&app, key, ack).await,
                Err(_) => StatusCode::BAD_REQUEST.into_response(),
            };
            (req, resp)
        }
        Relayed::Close { req, key } => {
            let resp = match u128::from_str_radix(&key, 16) {
                Ok(key) => super::close_on(&app, key),
                Err(_) => StatusCode::BAD_REQUEST.into_response(),
            };
            (req, resp)
        }
        Relayed::Answer { .. } => return,
    };
    let (parts, body) = resp.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return;
    };
    let text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let answer = Relayed::Answer {
        req,
        status: parts.status.as_u16(),
        content_type: text("content-type"),
        seq: text(super::SEQ_HEADER).and_then(|s| s.parse().ok()),
        session: text(super::SESSION_HEADER),
        body: B64.encode(&body),
    };
    tracing::debug!(to = %from, req, "answering a relayed HTTP transport request");
    if let Ok(payload) = serde_json::to_string(&answer) {
        let _ = app.node.relay(&from, payload).await;
    }
}

/// Rebuild a relayed answer.
fn response(
    status: u16,
    content_type: Option<String>,
    seq: Option<u64>,
    session: Option<String>,
    body: String,
) -> Response {
    let Ok(body) = B64.decode(body) else {
        return unavailable();
    };
    let mut resp = Response::new(axum::body::Body::from(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(seq) = seq {
        h.insert(super::SEQ_HEADER, HeaderValue::from(seq));
    }
    if let Some(s) = session.and_then(|s| HeaderValue::from_str(&s).ok()) {
        h.insert(super::SESSION_HEADER, s);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    resp
}

impl herald_core::cluster::RelayHandler for Server {
    fn on_relay(&self, from: &str, payload: &str) {
        let Ok(msg) = serde_json::from_str::<Relayed>(payload) else {
            tracing::debug!(from, "unreadable relayed HTTP request");
            return;
        };
        match msg {
            Relayed::Answer {
                req,
                status,
                content_type,
                seq,
                session,
                body,
            } => {
                tracing::debug!(from, req, "relayed answer");
                if let Some(app) = self.app.upgrade() {
                    let resp = response(status, content_type, seq, session, body);
                    app.relay_waits.answered(req, resp);
                }
            }
            request => {
                let Some(app) = self.app.upgrade() else {
                    return;
                };
                let from = from.to_owned();
                app.tracker.clone().spawn(serve(app, from, request));
            }
        }
    }
}

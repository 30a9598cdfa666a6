//! The HTTP application's shared state, complete before the router is built (`Server::builder`),
//! and the JSON error body every route answers with.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::limits::KeyedLimiter;
use herald_core::{Identity, Node};
use herald_proto::ErrorCode;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConnectionConfig, HttpConfig, ServerConfig};
use crate::slots::{Slot, Slots};
use crate::writer::WriterSettings;

/// Mints a token for a user name (the demo chat's sign-in; development only).
pub type TokenMinter = Arc<dyn Fn(&str) -> Result<String, BoxError> + Send + Sync>;

/// An application callback's failure (any error type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shared state of the HTTP application.
pub struct AppState {
    /// The engine.
    pub node: Arc<Node>,
    /// `[server]` settings.
    pub server: ServerConfig,
    /// `[connection]` settings.
    pub conn: ConnectionConfig,
    /// What goes out compressed on connections that negotiated permessage-deflate
    /// (`connection.compression`).
    pub(crate) deflate: Option<Arc<herald_core::compression::DeflatePolicy>>,
    /// `[http]` settings.
    pub http: HttpConfig,
    /// The HTTP transport sessions on this node.
    pub(crate) http_sessions: crate::http_sessions::Registry,
    /// HTTP transport requests this node relayed to others, waiting for answers.
    pub(crate) relay_waits: crate::http_sessions::RelayWaits,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, for the shutdown drain.
    pub tracker: TaskTracker,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// New connections per client IP.
    pub connect_limiter: Option<KeyedLimiter<IpAddr>>,
    /// New connections on this node (`limits.connect_per_second`).
    pub(crate) accepts: Option<herald_core::limits::SharedLimiter>,
    /// Connections being refused with 1013 right now (bounded by `admit::MAX_BUSY`).
    pub(crate) busy: AtomicUsize,
    /// Open connections per client IP.
    pub ip_slots: Arc<Slots<Ipv6Addr>>,
    /// Open connections per user.
    pub user_slots: Arc<Slots<String>>,
    /// TLS, when configured.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// When the server was bound.
    pub started: std::time::Instant,
    /// The connect proxy, when configured.
    pub connect_proxy: Option<Arc<crate::proxy::HttpConnectProxy>>,
    /// Handshake headers kept for backend proxies (lower-case names).
    pub forward_headers: Vec<String>,
    /// The demo chat's token minter, when the demo is on.
    pub demo: Option<TokenMinter>,
    /// The admin UI, when `[admin]` is on.
    pub admin: Option<Arc<crate::admin_sessions::Admin>>,
    pub(crate) metrics: Option<PrometheusHandle>,
    /// How `/ws` connections write (with `disconnect` advisories), and the heartbeat wheel
    /// (pings and pong deadlines of every connection).
    pub(crate) ws_writes: Arc<WriterSettings>,
    /// How `/echo` connections write (no advisories).
    pub(crate) echo_writes: Arc<WriterSettings>,
    /// What `/ws` connections' readers accept (`connection` limits), shared by them all.
    pub(crate) read_limits: Arc<crate::reader::SharedLimits>,
}

/// How a `/ws` connection authenticates.
pub enum Handshake {
    /// Authenticated (or admitted anonymously) at the handshake; channels to subscribe
    /// server-side (from the connect proxy); the resume token that admitted it instead of the
    /// connect proxy (its first command must be that `resume`).
    Done(
        Box<Identity>,
        Option<crate::slots::UserSlot>,
        Vec<String>,
        Option<String>,
    ),
    /// No token at the handshake and anonymous connections are off: `auth` must come first.
    FirstMessage,
}

/// Connection slots held for the lifetime of a connection.
pub struct Held {
    /// The client IP slot.
    pub _ip: Option<Slot<Ipv6Addr>>,
    /// Handshake headers kept for backend proxies.
    pub forwarded: Option<herald_core::rpc::Headers>,
}

impl AppState {
    pub(crate) fn writer_settings(
        conn: &ConnectionConfig,
        server: &ServerConfig,
        advisory: bool,
        wheel: &Arc<crate::heartbeat::Heartbeats>,
    ) -> Arc<WriterSettings> {
        Arc::new(WriterSettings {
            wheel: wheel.clone(),
            conn: conn.clone(),
            shutdown_timeout: server.shutdown_timeout,
            reconnect_jitter: server.shutdown_reconnect_jitter,
            advisory,
        })
    }
}

/// A JSON error body `{"code": ..., "message": ...}` with the protocol's error codes.
pub(crate) fn json_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({ "code": code.as_str(), "message": message });
    (status, axum::Json(body)).into_response()
}

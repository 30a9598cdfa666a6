//! Herald's transports and HTTP surface.
//!
//! # Layout
//! - [`app`]: routes (`/ws`, `/echo`, `/metrics`, `/healthz`, `/readyz`), upgrade and lifecycle.
//! - [`connection`]: one `/ws` connection's task: session dispatch; the `/echo` loop.
//! - [`link`]: a connection's socket, read and written by its one task (vectored writes, closing).
//! - [`heartbeat`]: pings and pong deadlines for every connection from one timer wheel.
//! - [`reader`]: whole messages from client frames (fragments, size bound, UTF-8).
//! - [`writer`]: how a connection ended, write settings, closing frames, write metrics.
//! - [`handshake`]: checks before the upgrade (client IP, Origin, subprotocols, token carriers).
//! - [`preauth`]: first-message authentication (`auth` before anything else).
//! - [`http`]: the HTTP transports (SSE, HTTP streaming, long-polling) on the same sessions.
//! - [`http_sessions`]: the HTTP transport sessions a node holds, and relayed requests.
//! - [`api`]: the HTTP server API for backends (API keys).
//! - [`admin`]: the admin web UI and its API at `/admin` (`[admin]`).
//! - [`admin_sessions`]: admin sessions and failed logins.
//! - [`http_client`]: a small outbound HTTP client (JWKS, CLI API calls).
//! - [`jwks`]: loading and refreshing the JWKS document (file or URL).
//! - [`proxy`]: the RPC proxy to the application backend.
//! - [`listener`]: the accept loop, HTTP/1 with a header timeout, caps on pending connections.
//! - [`tls`]: rustls configuration and reloadable certificate.
//! - [`webhook`]: lifecycle events delivered to a webhook (batched, signed, retried).
//! - [`slots`]: connection counts per IP and per user.
//! - [`config`]: `[server]`, `[connection]` and `[tls]` settings.
//! - [`metrics`]: the Prometheus recorder.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admin_sessions;
mod admit;
pub mod api;
pub mod app;
pub mod config;
pub mod connection;
pub mod demo;
pub mod handshake;
pub mod heartbeat;
pub mod http;
pub mod http_client;
pub mod http_sessions;
pub mod jwks;
pub mod link;
pub mod listener;
pub mod metrics;
pub mod preauth;
pub mod proxy;
pub mod reader;
pub mod slots;
pub mod state;
pub mod tcp;
pub mod tls;
pub mod webhook;
pub mod writer;

pub use app::{Handle, Server};
pub use config::{AdminConfig, ConnectionConfig, HttpConfig, ServerConfig, TlsConfig};
pub use proxy::{
    ChannelProxyConfig, HttpChannelProxy, HttpConnectProxy, HttpRpc, ProxyIdentity, RpcProxyConfig,
};
pub use webhook::WebhookConfig;

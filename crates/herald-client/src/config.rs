//! Client settings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;

/// A future yielding a fresh token (or an error message).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// The token callback's failure (any error type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where tokens come from.
#[derive(Clone, Default)]
pub enum TokenSource {
    /// Connect anonymously.
    #[default]
    None,
    /// One token for the life of the client (no refresh: the connection ends at its `exp`).
    Static(String),
    /// Asked on every (re)connect and on every server `refresh` request.
    Callback(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::None => "None",
            TokenSource::Static(_) => "Static(<redacted>)",
            TokenSource::Callback(_) => "Callback",
        })
    }
}

/// How the token is presented (see `docs/protocol.md` §1a).
#[derive(Debug, Clone, PartialEq)]
pub enum Carrier {
    /// `Authorization: Bearer` at the handshake.
    Header,
    /// A `herald.auth.<token>` subprotocol entry at the handshake.
    Subprotocol,
    /// A cookie with this name at the handshake.
    Cookie(String),
    /// An `auth` command as the first message.
    FirstMessage,
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A WebSocket to `url`.
    #[default]
    WebSocket,
    /// An HTTP transport beside it (`…/ws` → `…/http/stream` or `…/http/sse`), for networks that
    /// block WebSockets (docs/protocol.md §10). The `Subprotocol` carrier becomes the header.
    Http(crate::http::HttpStyle),
}

/// Client settings; `ClientConfig::new(url)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws` or `wss://…`.
    pub url: String,
    /// Token source.
    pub token: TokenSource,
    /// Token carrier.
    pub carrier: Carrier,
    /// WebSocket (default) or an HTTP transport.
    pub transport: Transport,
    /// Extra request headers (e.g. `Origin`).
    pub headers: Vec<(String, String)>,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Default timeout of requests (subscribe, publish, history, ...).
    pub request_timeout: Duration,
    /// Timeout of one connection attempt (TCP + TLS + upgrade + `connected`).
    pub connect_timeout: Duration,
    /// Publishes kept while disconnected (0 = fail at once when disconnected).
    pub offline_queue: usize,
    /// How long a publish may wait in the offline queue.
    pub offline_deadline: Duration,
    /// Extra silence tolerated beyond the server's ping interval + pong timeout before the
    /// connection is considered dead (half-open detection).
    pub watchdog_margin: Duration,
    /// Events buffered for the application before the client stops reading the socket.
    pub event_buffer: usize,
    /// Extra trusted root certificates (DER), e.g. a private CA; the Mozilla roots are always in.
    pub extra_roots: Vec<Vec<u8>>,
    /// At-least-once subscriptions: who acknowledges (`docs/protocol.md` §8a).
    pub ack: AckMode,
}

/// Who acknowledges the messages of at-least-once subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// A message counts as processed when the application asks [`crate::Events`] for the next
    /// event (it finished with this one).
    #[default]
    Auto,
    /// The application calls [`crate::Client::ack`] when it has processed a message (for
    /// example after committing it to its own store).
    Manual,
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            token: TokenSource::None,
            carrier: Carrier::Header,
            transport: Transport::WebSocket,
            headers: Vec::new(),
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            offline_queue: 1000,
            offline_deadline: Duration::from_secs(60),
            watchdog_margin: Duration::from_secs(5),
            event_buffer: 4096,
            extra_roots: Vec::new(),
            ack: AckMode::Auto,
        }
    }

    /// Use a fixed token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenSource::Static(token.into());
        self
    }

    /// Ask `f` for a token on every connect and refresh.
    /// (Inside an `async` block, `?` turns any error into the [`BoxError`] it returns.)
    pub fn token_callback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        self.token = TokenSource::Callback(Arc::new(move || Box::pin(f())));
        self
    }
}

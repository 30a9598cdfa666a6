//! The HTTP application: routes, the WebSocket upgrade, health and metrics, and the server's
//! lifecycle (bind, run, graceful shutdown).

use futures_util::FutureExt;
use futures_util::future::Either;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herald_core::Node;
use herald_core::limits::KeyedLimiter;
use herald_proto::{ErrorCode, Format};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admit::{Admitted, Refusal, admit, rejected};
use crate::config::{AdminConfig, ConnectionConfig, HttpConfig, ServerConfig, TlsConfig};
use crate::handshake;
use crate::state::json_error;
pub use crate::state::{AppState, BoxError, Handshake, Held, TokenMinter};

/// Observe or stop a running server.
#[derive(Clone)]
pub struct Handle {
    state: Arc<AppState>,
}

impl Handle {
    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// This node's load for its cluster announcement (from the Prometheus recorder; `None`
    /// without one).
    pub fn load(&self) -> Option<herald_core::cluster::NodeLoad> {
        let h = self.state.metrics.as_ref()?;
        let mut load = crate::admin::stats::parse(&crate::writer::exposition(h)).load();
        load.channels = self.state.node.hub().channels() as u64;
        Some(load)
    }

    /// Start a graceful shutdown.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// The engine node.
    pub fn node(&self) -> &Arc<Node> {
        &self.state.node
    }

    /// Periodic upkeep: forget idle per-IP rate-limit state and the engine's expired entries.
    pub fn upkeep(&self) {
        if let Some(l) = &self.state.connect_limiter {
            l.retain_recent();
        }
        self.state.node.upkeep();
    }

    /// Re-read the TLS certificate and key now (SIGHUP). No-op without TLS.
    pub fn reload_tls(&self) -> std::io::Result<()> {
        match &self.state.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }
}

/// A bound, not yet running Herald server.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn ws_handler(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    if let Err(bad) = handshake::check_upgrade(req.version(), req.headers()) {
        return bad_upgrade(bad);
    }
    let offer = handshake::offer(req.headers());
    if offer.offered && offer.format.is_none() {
        return json_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "unsupported subprotocol: use herald.v1.json or herald.v1.msgpack",
        );
    }
    // The server answers with the format only, never echoing a token entry.
    let protocol = offer.format.map(Format::subprotocol);
    let format = offer.format.unwrap_or(Format::Json);
    let deflate = negotiate_deflate(&app, req.headers());
    let admitted = match admit(&app, peer, req.headers(), req.uri(), &offer).await {
        Ok(a) => a,
        // Refused for the node's connect rate: upgraded and closed with 1013 and a retry hint,
        // which browsers can read (a refused upgrade shows them nothing but 1006).
        Err(Refusal::Busy(after)) => {
            // At most `MAX_BUSY` refused sockets at once (each lingers up to 2 s): beyond, a
            // plain 503 that holds nothing.
            let Some(guard) = crate::admit::BusyGuard::take(&app) else {
                return Refusal::Busy(after).into_response();
            };
            return upgrade(&app, &mut req, protocol, None, move |ws, app| {
                crate::connection::serve_busy(ws, format, app, after, guard)
            });
        }
        Err(Refusal::Answer(resp)) => return resp,
    };
    let Admitted { ip, hs, held } = admitted;
    let (agreed, extensions) = deflate.unzip();
    let (resp, fut) = accept_upgrade(&mut req, protocol, extensions);
    if let Some(fut) = fut {
        let app2 = app.clone();
        app.tracker.spawn(crate::connection::task(
            fut, format, app2, ip, hs, held, agreed,
        ));
    }
    resp
}

/// permessage-deflate for this upgrade, when `connection.compression` is on and the client
/// offers parameters the server can honour: the agreement and the response header value.
fn negotiate_deflate(
    app: &AppState,
    headers: &axum::http::HeaderMap,
) -> Option<(herald_proto::deflate::Agreed, String)> {
    if !app.conn.compression {
        return None;
    }
    herald_proto::deflate::negotiate(
        headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

type Ws = fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Answer the upgrade and run `serve` on the socket in a tracked task.
fn upgrade<F, Fut>(
    app: &Arc<AppState>,
    req: &mut Request<Body>,
    protocol: Option<&'static str>,
    extensions: Option<String>,
    serve: F,
) -> Response
where
    F: FnOnce(Ws, Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (resp, fut) = accept_upgrade(req, protocol, extensions);
    let Some(fut) = fut else {
        return resp;
    };
    let app2 = app.clone();
    // `then`, not an `async` block: the task holds either the upgrade or the connection, never
    // both, nor a copy of the closure's captures beside the connection.
    app.tracker.spawn(fut.then(move |r| match r {
        Ok(ws) => Either::Left(serve(ws, app2)),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            Either::Right(std::future::ready(()))
        }
    }));
    resp
}

/// The `101` response (with the agreed subprotocol and extensions) and the upgrade to await;
/// or the refusal (and no upgrade) when the request cannot be upgraded.
fn accept_upgrade(
    req: &mut Request<Body>,
    protocol: Option<&'static str>,
    extensions: Option<String>,
) -> (Response, Option<fastwebsockets::upgrade::UpgradeFut>) {
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(x) => x,
        Err(_) => return (bad_upgrade(handshake::BadUpgrade::NotWebSocket), None),
    };
    let (mut parts, _) = resp.into_parts();
    if let Some(p) = protocol {
        parts
            .headers
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    if let Some(v) = extensions.and_then(|e| HeaderValue::from_str(&e).ok()) {
        parts.headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    (Response::from_parts(parts, Body::empty()), Some(fut))
}

async fn echo_handler(State(app): State<Arc<AppState>>, mut req: Request<Body>) -> Response {
    if let Err(bad) = handshake::check_upgrade(req.version(), req.headers()) {
        return bad_upgrade(bad);
    }
    let (agreed, extensions) = negotiate_deflate(&app, req.headers()).unzip();
    upgrade(&app, &mut req, None, extensions, move |ws, app| {
        crate::connection::serve_echo(ws, app, agreed)
    })
}

/// 426 (with the headers a client needs to retry right) or 400, with a JSON error body.
fn bad_upgrade(bad: handshake::BadUpgrade) -> Response {
    use handshake::BadUpgrade;
    rejected("bad_upgrade");
    let status = match bad {
        BadUpgrade::NotWebSocket | BadUpgrade::WsVersion => StatusCode::UPGRADE_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut r = json_error(status, ErrorCode::BadRequest, bad.message());
    if status == StatusCode::UPGRADE_REQUIRED {
        let h = r.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    r
}

/// Every route: refuse a `Host` this server does not answer to (DNS rebinding).
async fn host_check(
    State(app): State<Arc<AppState>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let loopback = app.server.listen.ip().is_loopback();
    if !handshake::host_allowed(req.headers(), &app.server.allowed_hosts, loopback) {
        rejected("host");
        return json_error(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "host not allowed: add it to server.allowed_hosts",
        );
    }
    next.run(req).await
}
async fn metrics_handler(State(app): State<Arc<AppState>>) -> Response {
    let Some(handle) = &app.metrics else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n",
        );
    };
    metrics::gauge!("herald_channels").set(app.node.hub().channels() as f64);
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::writer::exposition(handle),
    )
        .into_response()
}

/// The server API's OpenAPI 3 document (`docs/openapi.json`).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../../docs/openapi.json"),
    )
        .into_response()
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.shutdown.is_cancelled() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !app.node.ready() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "engine unavailable\n")
    } else {
        plain(StatusCode::OK, "ready\n")
    }
}

/// A server's settings and optional parts, all given before it binds (nothing is set later).
pub struct ServerBuilder {
    server: ServerConfig,
    conn: ConnectionConfig,
    tls: TlsConfig,
    node: Arc<Node>,
    http: HttpConfig,
    connect_proxy: Option<Arc<crate::proxy::HttpConnectProxy>>,
    forward_headers: Vec<String>,
    demo: Option<TokenMinter>,
    admin: AdminConfig,
}

impl ServerBuilder {
    /// Serve the admin UI at `/admin` (`[admin]`; off unless `admin.secret` is set).
    pub fn admin(mut self, admin: AdminConfig) -> Self {
        self.admin = admin;
        self
    }

    /// Settings of the HTTP transports (`[http]`; on by default).
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// Authenticate tokenless connections through this connect proxy.
    pub fn connect_proxy(mut self, proxy: Arc<crate::proxy::HttpConnectProxy>) -> Self {
        self.connect_proxy = Some(proxy);
        self
    }

    /// Keep these handshake headers of every connection for the backend proxies and `rpc`
    /// (names are case-insensitive).
    pub fn forward_headers(mut self, names: &[String]) -> Self {
        self.forward_headers = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        self
    }

    /// Serve the demo chat at `/` with this token minter (development only: the minter hands
    /// out tokens for any user name).
    pub fn demo(mut self, mint: TokenMinter) -> Self {
        self.demo = Some(mint);
        self
    }

    /// Bind the listener. Installs the Prometheus recorder on first use in the process.
    pub async fn bind(self) -> std::io::Result<Server> {
        let ServerBuilder {
            server,
            conn,
            tls,
            node,
            http,
            connect_proxy,
            forward_headers,
            demo,
            admin,
        } = self;
        let tls = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::tls::Tls::load(cert, key)?)),
            _ => None,
        };
        let listener = TcpListener::bind(server.listen).await?;
        let l = &node.config().limits;
        let connect_limiter =
            KeyedLimiter::new(l.connect_per_second_per_ip, l.connect_burst_per_ip);
        let heartbeats = crate::heartbeat::Heartbeats::new(conn.ping_interval, conn.pong_timeout);
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::heartbeat::Heartbeats::run(
            Arc::downgrade(&heartbeats),
            shutdown.clone(),
        ));
        let deflate = conn
            .compression
            .then(|| Arc::new(node.config().deflate_policy(conn.compression_threshold)));
        let state = Arc::new(AppState {
            deflate,
            ws_writes: AppState::writer_settings(&conn, &server, true, &heartbeats),
            echo_writes: AppState::writer_settings(&conn, &server, false, &heartbeats),
            read_limits: crate::reader::SharedLimits::new(conn.read_limits()),
            connect_limiter,
            accepts: herald_core::limits::SharedLimiter::new(l.connect_per_second, l.connect_burst),
            busy: AtomicUsize::new(0),
            ip_slots: Arc::default(),
            user_slots: Arc::default(),
            started: std::time::Instant::now(),
            connect_proxy,
            forward_headers,
            demo,
            admin: crate::admin_sessions::Admin::new(admin, tls.is_some()),
            tls,
            node,
            server,
            conn,
            http,
            http_sessions: Default::default(),
            relay_waits: Default::default(),
            shutdown,
            tracker: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            metrics: crate::metrics::install(),
        });
        crate::http::relay::install(&state);
        Ok(Server { state, listener })
    }
}

impl Server {
    /// The server's state (for the crate's tests that serve a connection on their own stream).
    #[cfg(test)]
    pub(crate) fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// A server to configure, then bind.
    pub fn builder(
        server: ServerConfig,
        conn: ConnectionConfig,
        tls: TlsConfig,
        node: Arc<Node>,
    ) -> ServerBuilder {
        ServerBuilder {
            server,
            conn,
            tls,
            node,
            http: HttpConfig::default(),
            connect_proxy: None,
            forward_headers: Vec::new(),
            demo: None,
            admin: AdminConfig::default(),
        }
    }

    /// Bind with no connect proxy, forwarded headers or demo.
    pub async fn bind(
        server: ServerConfig,
        conn: ConnectionConfig,
        tls: TlsConfig,
        node: Arc<Node>,
    ) -> std::io::Result<Server> {
        Server::builder(server, conn, tls, node).bind().await
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Cancel this token to shut the server down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// A handle to observe and stop the server after `run` took it.
    pub fn handle(&self) -> Handle {
        Handle {
            state: self.state.clone(),
        }
    }

    /// Serve until the shutdown token is cancelled, then advise and close every client (1001),
    /// flushing queues up to `shutdown_timeout`.
    pub async fn run(self) -> std::io::Result<()> {
        let state = self.state.clone();
        let mut router = Router::new()
            .route("/ws", get(ws_handler))
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
        if state.server.echo {
            router = router.route("/echo", get(echo_handler));
        }
        if state.demo.is_some() {
            router = crate::demo::routes(router);
        }
        if state.admin.is_some() {
            router = crate::admin::routes(router, &state);
        }
        if state.http.enabled {
            router = crate::http::routes(router, &state);
        }
        let router = router
            .route("/api/openapi.json", get(openapi))
            .route(
                "/api/v1/dead_letters",
                get(crate::api::dead_letters_get)
                    .post(crate::api::dead_letters_post)
                    .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY)),
            )
            .route(
                "/api/v1/{method}",
                axum::routing::post(crate::api::handler)
                    .layer(axum::extract::DefaultBodyLimit::max(crate::api::MAX_BODY)),
            )
            .fallback(|| async {
                json_error(StatusCode::NOT_FOUND, ErrorCode::BadRequest, "no such path")
            })
            .method_not_allowed_fallback(|| async {
                json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::BadRequest,
                    "method not allowed on this path",
                )
            })
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                host_check,
            ))
            .with_state(state.clone());
        let token = state.shutdown.clone();
        if let Some(tls) = state.tls.clone() {
            let stop = token.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tokio::select! {
                        _ = tick.tick() => tls.reload_if_changed(),
                        _ = stop.cancelled() => break,
                    }
                }
            });
        }
        let limits = crate::listener::HttpLimits {
            header_read_timeout: state.server.header_read_timeout,
            max_http_connections: state.server.max_http_connections,
            max_http_connections_per_ip: state.server.max_http_connections_per_ip,
            trusted_proxies: state.server.trusted_proxies.clone(),
            request_timeout: state.server.request_timeout,
            // Longer than the WebSocket writer's own timeout, which must fire first (4003).
            write_timeout: state.conn.write_timeout + std::time::Duration::from_secs(5),
        };
        crate::listener::serve(self.listener, state.tls.clone(), router, limits, token).await?;
        state.tracker.close();
        let drain = state.server.shutdown_timeout + std::time::Duration::from_secs(2);
        if tokio::time::timeout(drain, state.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within the shutdown timeout");
        }
        state.node.end_waiting_sessions().await;
        Ok(())
    }
}

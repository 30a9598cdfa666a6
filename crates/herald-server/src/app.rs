//! The HTTP application: routes, the WebSocket upgrade, health and metrics, and the server's
//! lifecycle (bind, run, graceful shutdown).

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
use herald_proto::Format;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConnectionConfig, ServerConfig};
use crate::writer::WriterSettings;

/// Shared state of the HTTP application.
pub struct AppState {
    /// The engine.
    pub node: Arc<Node>,
    /// `[server]` settings.
    pub server: ServerConfig,
    /// `[connection]` settings.
    pub conn: ConnectionConfig,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, for the shutdown drain.
    pub tracker: TaskTracker,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    metrics: Option<PrometheusHandle>,
}

impl AppState {
    pub(crate) fn writer_settings(&self, advisory: bool) -> WriterSettings {
        WriterSettings {
            conn: self.conn.clone(),
            shutdown_timeout: self.server.shutdown_timeout,
            reconnect_jitter: self.server.shutdown_reconnect_jitter,
            advisory,
        }
    }
}

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

    /// Start a graceful shutdown.
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// The engine node.
    pub fn node(&self) -> &Arc<Node> {
        &self.state.node
    }
}

/// A bound, not yet running Herald server.
pub struct Server {
    state: Arc<AppState>,
    listener: TcpListener,
}

/// Pick the wire format from the offered subprotocols: the first one Herald knows.
/// `Ok(None)` = nothing offered (JSON v1); `Err` = offers, none supported.
fn negotiate(req: &Request<Body>) -> Result<Option<Format>, ()> {
    let mut offered = false;
    for value in req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(list) = value.to_str() else { continue };
        for name in list.split(',') {
            offered = true;
            if let Some(f) = Format::from_subprotocol(name) {
                return Ok(Some(f));
            }
        }
    }
    if offered { Err(()) } else { Ok(None) }
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
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: Request<Body>,
) -> Response {
    if app.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let format = match negotiate(&req) {
        Ok(f) => f,
        Err(()) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "unsupported subprotocol: use herald.v1.json or herald.v1.msgpack\n",
            );
        }
    };
    let protocol = format.map(Format::subprotocol);
    let format = format.unwrap_or(Format::Json);
    upgrade(&app, &mut req, protocol, move |ws, app| {
        crate::connection::serve(ws, format, app, remote)
    })
}

type Ws = fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Answer the upgrade and run `serve` on the socket in a tracked task.
fn upgrade<F, Fut>(
    app: &Arc<AppState>,
    req: &mut Request<Body>,
    protocol: Option<&'static str>,
    serve: F,
) -> Response
where
    F: FnOnce(Ws, Arc<AppState>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(req) {
        Ok(x) => x,
        Err(_) => {
            return plain(
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request\n",
            );
        }
    };
    let app2 = app.clone();
    app.tracker.spawn(async move {
        match fut.await {
            Ok(ws) => serve(ws, app2).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    if let Some(p) = protocol {
        parts
            .headers
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Response::from_parts(parts, Body::empty())
}

async fn echo_handler(State(app): State<Arc<AppState>>, mut req: Request<Body>) -> Response {
    upgrade(&app, &mut req, None, crate::connection::serve_echo)
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
        handle.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    plain(StatusCode::OK, "ok\n")
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    if app.shutdown.is_cancelled() {
        plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else {
        plain(StatusCode::OK, "ready\n")
    }
}

impl Server {
    /// Bind the listener. Installs the Prometheus recorder on first use in the process.
    pub async fn bind(
        server: ServerConfig,
        conn: ConnectionConfig,
        node: Arc<Node>,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(server.listen).await?;
        let state = Arc::new(AppState {
            node,
            server,
            conn,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            metrics: crate::metrics::install(),
        });
        Ok(Server { state, listener })
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
        let router = router.with_state(state.clone());
        use axum::serve::ListenerExt;
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let token = state.shutdown.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;
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

//! Accepting connections: the accept loop, HTTP/1 with a timer (so a request head that trickles
//! in is cut off after `header_read_timeout`), TLS handshakes in their own tasks, and the bound on
//! HTTP connections that are not (yet) WebSockets, node-wide and per client IP.
//!
//! A request must be answered within `request_timeout` (its body included: a body trickled in is
//! cut off with 408), and a write that makes no progress for `write_timeout` fails (a client that
//! pipelines requests and never reads the answers cannot hold its slot either).
//!
//! A connection counts as an HTTP connection from `accept` until it is upgraded to a WebSocket
//! (then `max_connections` and the per-IP WebSocket cap apply) or closed. Over either cap the
//! connection is answered `503` at once (plain HTTP; TLS connections are just closed) and dropped,
//! so held-open handshakes cannot take the node's file descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::slots::{Slot, Slots};

/// Most header lines in a request head (more: `431`).
pub const MAX_HEADERS: usize = 64;
/// Largest request head, and the connection's read buffer (more: `431`).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// How long a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: 65\r\n\r\n{\"code\":\"unavailable\",\"message\":\"too many pending connections\"}\n";

/// Bounds on connections before they become WebSockets.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to receive a whole request head (and between requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// HTTP connections on this node (0 = unlimited).
    pub max_http_connections: usize,
    /// HTTP connections per client IP (0 = unlimited); trusted proxies are exempt.
    pub max_http_connections_per_ip: usize,
    /// Peers exempt from the per-IP cap (reverse proxies).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Time to read a request (body included) and produce its response.
    pub request_timeout: Duration,
    /// A write to an HTTP (not yet upgraded) connection that makes no progress this long fails.
    pub write_timeout: Duration,
}

struct Accepting {
    limits: HttpLimits,
    node_wide: Arc<Slots<()>>,
    per_ip: Arc<Slots<IpAddr>>,
    rejected: AtomicU64,
    last_warn: std::sync::Mutex<Option<Instant>>,
}

/// The slots an HTTP connection holds until it is upgraded or closed.
struct Held {
    _node: Slot<()>,
    _ip: Option<Slot<IpAddr>>,
}

/// An HTTP connection's slots, as an extension of each of its requests. A handler whose answer
/// holds the connection for a whole session (an HTTP transport stream) releases them: from then
/// on the session counts as a connection (`max_connections`, the per-IP and per-user caps), like
/// an upgraded WebSocket. Such answers carry `Connection: close`, so nothing follows on the
/// released connection.
#[derive(Clone)]
pub struct HttpSlot(Arc<std::sync::Mutex<Option<Held>>>);

impl HttpSlot {
    /// Stop counting this connection as an HTTP connection.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Accepting {
    fn admit(&self, ip: IpAddr) -> Option<Held> {
        let node = self
            .node_wide
            .acquire((), self.limits.max_http_connections)
            .or_else(|| self.reject("max_http_connections"))?;
        let exempt = self.limits.trusted_proxies.iter().any(|n| n.contains(&ip));
        let ip = match exempt {
            true => None,
            false => Some(
                self.per_ip
                    .acquire(ip, self.limits.max_http_connections_per_ip)
                    .or_else(|| self.reject("max_http_connections_per_ip"))?,
            ),
        };
        Some(Held {
            _node: node,
            _ip: ip,
        })
    }

    fn reject<T>(&self, reason: &'static str) -> Option<T> {
        metrics::counter!("herald_http_connections_rejected_total", "reason" => reason)
            .increment(1);
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        self.warn_every(Duration::from_secs(10), || {
            tracing::warn!(
                reason,
                rejected_so_far = n,
                "HTTP connection refused: too many pending connections"
            )
        });
        None
    }

    fn warn_every(&self, period: Duration, warn: impl FnOnce()) {
        let mut last = self.last_warn.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= period) {
            *last = Some(Instant::now());
            warn();
        }
    }
}

/// Serve `router` on `listener` (TLS when `tls` is set) until `stop` is cancelled; returns when
/// every HTTP connection has finished (upgraded WebSockets are tracked elsewhere).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let acc = Arc::new(Accepting {
        limits,
        node_wide: Arc::default(),
        per_ip: Arc::default(),
        rejected: AtomicU64::new(0),
        last_warn: std::sync::Mutex::new(None),
    });
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors (EMFILE) or similar: back off, say so.
                    metrics::counter!("herald_accept_errors_total").increment(1);
                    acc.warn_every(Duration::from_secs(10), || {
                        tracing::warn!(error = %e, "accept failed");
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(held) = acc.admit(peer.ip()) else {
            if tls.is_none() {
                let _ = tcp.try_write(BUSY);
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (router, stop, tls, limits) = (
            router.clone(),
            stop.clone(),
            tls.clone(),
            acc.limits.clone(),
        );
        let held = HttpSlot(Arc::new(std::sync::Mutex::new(Some(held))));
        // Corked: what an API publish (or an HTTP transport's command) queues for idle
        // WebSocket subscribers is written at the end of the request's poll, by this task.
        tracker.spawn(herald_core::outlet::Corked::new(async move {
            match tls {
                None => serve_http(tcp, peer, held, router, &limits, stop).await,
                Some(tls) => {
                    let Some(s) = handshake(&tls, tcp, peer).await else {
                        return;
                    };
                    serve_http(s, peer, held, router, &limits, stop).await
                }
            }
        }));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn handshake(
    tls: &crate::tls::Tls,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            metrics::counter!("herald_tls_handshake_failures_total").increment(1);
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("herald_tls_handshake_failures_total").increment(1);
            None
        }
    }
}

/// One HTTP/1 connection: requests until it closes, is upgraded, or the server stops.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    slot: HttpSlot,
    router: Router,
    limits: &HttpLimits,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(slot.clone());
            let mut router = router.clone();
            async move {
                let res: Result<_, Infallible> =
                    match tokio::time::timeout(request_timeout, router.call(req.map(Body::new)))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            metrics::counter!("herald_http_request_timeouts_total").increment(1);
                            Ok(crate::state::json_error(
                                axum::http::StatusCode::REQUEST_TIMEOUT,
                                herald_proto::ErrorCode::BadRequest,
                                "the request took longer than server.request_timeout",
                            ))
                        }
                    };
                res
            }
        });
    let io = WriteTimeout::new(io, limits.write_timeout);
    let header_read_timeout = limits.header_read_timeout;
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics::counter!("herald_http_header_timeouts_total").increment(1);
                }
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The TCP stream under a plain (not TLS) upgraded connection, and the bytes hyper read past
/// the handshake; `Err` gives anything else back unchanged.
pub(crate) fn plain_tcp(
    up: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, bytes::Bytes), hyper::upgrade::Upgraded> {
    up.downcast::<TokioIo<WriteTimeout<TcpStream>>>()
        .map(|parts| (parts.io.into_inner().io, parts.read_buf))
}

/// Writes that make no progress for `timeout` fail with `TimedOut` (reads are bounded by the
/// header and request timeouts). After an upgrade the WebSocket writer's own `write_timeout`
/// (4003) is shorter and fires first.
struct WriteTimeout<I> {
    io: I,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteTimeout<I> {
    fn new(io: I, timeout: Duration) -> Self {
        WriteTimeout {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After an inner `Pending`: fail once the stall has lasted `timeout`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.progress(r, cx)
    }
}

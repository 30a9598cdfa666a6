//! The connection driver: one task that owns the socket and the clock. It opens connections
//! (token carriers, TLS, the first `connected`), reconnects with backoff, watches for a silent
//! server, and shuttles between the socket, the application's commands and the protocol state
//! (`state/`), which makes every protocol decision. Nothing here blocks on the application
//! except the bounded event channel.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_proto::envelope::Connected;
use herald_proto::{CloseCode, Format, ServerMessage};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{Carrier, ClientConfig, TokenFuture, TokenSource};
use crate::event::{Event, State};
use crate::state::{ClientState, Cmd, Disconnected, Output, Settings};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long giving a connection up waits for its close frame to be written.
const GIVE_UP_CLOSE: Duration = Duration::from_millis(500);

/// Why connecting failed.
#[derive(Default)]
struct ConnectFailure {
    message: String,
    terminal: bool,
    /// The close code, when the server closed the connection before `connected`.
    code: Option<u16>,
    /// The `reconnect_after_ms` of its `disconnect` advisory (1013: the node is busy).
    after: Option<Duration>,
}

/// How one connection ended.
enum Ended {
    /// The connection is over (reconnect or not, as it says).
    Link(Disconnected),
    /// The application closed the client (or dropped every handle).
    Closed(Option<oneshot::Sender<()>>),
}

pub(crate) struct Driver {
    cfg: ClientConfig,
    cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
    state: ClientState,
    connector: Connector,
    acks: Arc<crate::acks::AckBoard>,
}

/// The open connection: a WebSocket or an HTTP transport session.
enum Link {
    Ws(Box<Ws>),
    Http(Box<crate::http::HttpLink>, Option<u16>),
}

/// What the link produced next.
enum LinkEvent {
    Text(String),
    /// Something arrived (a ping, a keepalive): the server is alive.
    Alive,
    /// The server closed (code, reason).
    Closed(u16, String),
    /// The connection failed.
    Lost(String),
}

impl Link {
    async fn next(&mut self) -> LinkEvent {
        match self {
            Link::Ws(ws) => match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => LinkEvent::Text(t.to_string()),
                Some(Ok(WsMessage::Close(c))) => {
                    let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                    LinkEvent::Closed(code, c.map(|c| c.reason.to_string()).unwrap_or_default())
                }
                Some(Ok(_)) => LinkEvent::Alive,
                Some(Err(e)) => LinkEvent::Lost(format!("connection lost: {e}")),
                None => LinkEvent::Lost("connection lost".into()),
            },
            Link::Http(h, advised) => match h.next().await {
                crate::http::Down::Message(t) => {
                    // The `disconnect` advisory stands for the close frame: the stream ends next.
                    if t.contains(r#""disconnect""#)
                        && let Ok(ServerMessage::Disconnect(d)) =
                            ServerMessage::decode(Format::Json, t.as_bytes())
                    {
                        *advised = Some(d.code);
                    }
                    LinkEvent::Text(t)
                }
                crate::http::Down::Alive => LinkEvent::Alive,
                crate::http::Down::Ended(why) => match advised {
                    Some(code) => LinkEvent::Closed(*code, String::new()),
                    None => LinkEvent::Lost(why),
                },
            },
        }
    }

    async fn send(&mut self, texts: Vec<String>) -> bool {
        match self {
            Link::Ws(ws) => {
                for t in texts {
                    if ws.send(WsMessage::Text(t.into())).await.is_err() {
                        return false;
                    }
                }
                true
            }
            Link::Http(h, _) => match h.send(&texts).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %e, "sending over HTTP failed");
                    false
                }
            },
        }
    }

    /// The application closed the client: close cleanly.
    async fn close(&mut self) {
        match self {
            Link::Ws(ws) => {
                let frame = CloseFrame {
                    code: WsCloseCode::Normal,
                    reason: "client closed".into(),
                };
                let _ = Ws::close(ws, Some(frame)).await;
                // Wait briefly for the server's close so the close is clean.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
            }
            Link::Http(h, _) => h.close().await,
        }
    }

    /// When an HTTP session must send a `ping` to stay alive (never for a WebSocket).
    fn ping_at(&self, interval: Duration) -> Option<Instant> {
        match self {
            Link::Ws(_) => None,
            Link::Http(h, _) => Some(h.ping_at(interval)),
        }
    }
}

fn connector(extra_roots: &[Vec<u8>]) -> Connector {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        if let Err(e) = roots.add(rustls::pki_types::CertificateDer::from(der.clone())) {
            tracing::warn!(error = %e, "ignoring an extra root certificate");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => Connector::Rustls(Arc::new(
            b.with_root_certificates(roots).with_no_client_auth(),
        )),
        Err(_) => Connector::Plain,
    }
}

fn describe(e: &WsError) -> ConnectFailure {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let detail = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .map(|v| {
                    format!(
                        " {}: {}",
                        v["code"].as_str().unwrap_or(""),
                        v["message"].as_str().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            let what = match status {
                401 => "unauthorized (bad or missing token)",
                403 => "forbidden (Origin not allowed)",
                429 => "rate limited",
                503 => "server unavailable",
                _ => "refused",
            };
            ConnectFailure {
                message: format!("HTTP {status} {what}{detail}"),
                terminal: matches!(status, 400 | 403),
                // A busy node (503) or a rate limit (429) may say when to come back.
                after: crate::http::retry_after(resp.headers()),
                ..Default::default()
            }
        }
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => ConnectFailure {
            message: "connection refused (is the server running?)".into(),
            terminal: false,
            ..Default::default()
        },
        WsError::Tls(t) => ConnectFailure {
            message: format!("TLS: {t}"),
            terminal: false,
            ..Default::default()
        },
        WsError::Url(u) => ConnectFailure {
            message: format!("bad URL: {u}"),
            terminal: true,
            ..Default::default()
        },
        other => ConnectFailure {
            message: other.to_string(),
            terminal: false,
            ..Default::default()
        },
    }
}

impl Driver {
    pub(crate) fn new(
        cfg: ClientConfig,
        cmds: mpsc::Receiver<Cmd>,
        events: mpsc::Sender<Event>,
        acks: Arc<crate::acks::AckBoard>,
    ) -> Driver {
        let connector = connector(&cfg.extra_roots);
        let state = ClientState::new(Settings {
            request_timeout: cfg.request_timeout,
            offline_queue: cfg.offline_queue,
            offline_deadline: cfg.offline_deadline,
            backoff: cfg.backoff.clone(),
            refreshable: matches!(cfg.token, TokenSource::Callback(_)),
        });
        Driver {
            cfg,
            cmds,
            events,
            state,
            connector,
            acks,
        }
    }

    async fn emit(&self, e: Event) {
        // The application may have dropped its event stream; the client still works.
        let _ = self.events.send(e).await;
    }

    async fn token(&self) -> Result<Option<String>, crate::config::BoxError> {
        match &self.cfg.token {
            TokenSource::None => Ok(None),
            TokenSource::Static(t) => Ok(Some(t.clone())),
            TokenSource::Callback(f) => f().await.map(Some),
        }
    }

    /// Run until closed by the application or a terminal condition.
    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let reason = loop {
            self.emit(Event::State(State::Connecting { attempt })).await;
            let ended = match self.connect().await {
                Ok((link, info)) => {
                    attempt = 0;
                    self.connected(link, info).await
                }
                Err(f) => {
                    let mut d = self.state.lost(&f.message, !f.terminal);
                    // Closed before `connected` (1013: the node is busy): its code and hint.
                    d.code = f.code.unwrap_or(d.code);
                    d.after = f.after;
                    Ended::Link(d)
                }
            };
            let d = match ended {
                Ended::Closed(done) => {
                    self.state.lost("closed", false);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    break "closed by the application".to_owned();
                }
                Ended::Link(d) => d,
            };
            self.emit(Event::State(State::Disconnected {
                code: d.code,
                reason: d.reason.clone(),
                reconnect: d.reconnect,
            }))
            .await;
            if !d.reconnect {
                break d.reason;
            }
            attempt += 1;
            if self.cfg.backoff.max_attempts.is_some_and(|m| attempt >= m) {
                break format!("gave up after {attempt} attempts: {}", d.reason);
            }
            let mut delay = self.cfg.backoff.delay(attempt - 1, &mut rand::rng());
            // Rotation (4005): the server asks for a new connection now; the session waits.
            if d.code == herald_proto::CloseCode::Rotate.code() {
                delay = Duration::ZERO;
            }
            if let Some(after) = d.after {
                delay = delay.max(after);
            }
            self.emit(Event::State(State::Reconnecting { delay, attempt }))
                .await;
            if let Some(done) = self.wait_offline(delay).await {
                let _ = done.send(());
                break "closed by the application".to_owned();
            }
        };
        self.state.fail_all(&reason);
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Close { tx } => drop(tx.send(())),
                other => self.state.command(other, Instant::now()),
            }
        }
        self.state.fail_all(&reason);
        self.emit(Event::State(State::Closed { reason })).await;
    }

    /// Serve commands while disconnected for `delay`. Returns the close request, if any.
    async fn wait_offline(&mut self, delay: Duration) -> Option<oneshot::Sender<()>> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                _ = sleep_opt(self.state.next_deadline()) => self.state.tick(Instant::now()),
                cmd = self.cmds.recv() => match cmd {
                    None => return None,
                    Some(Cmd::Close { tx }) => return Some(tx),
                    Some(cmd) => self.state.command(cmd, Instant::now()),
                },
            }
            // Offline, nothing is sent; events (none expected) are still delivered.
            while let Some(o) = self.state.poll_output() {
                if let Output::Event(e) = o {
                    self.emit(e).await;
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<(Link, Connected), ConnectFailure> {
        let token = self.token().await.map_err(|e| ConnectFailure {
            message: format!("token callback failed: {e}"),
            terminal: false,
            ..Default::default()
        })?;
        if let crate::config::Transport::Http(style) = self.cfg.transport {
            let timeout = self.cfg.connect_timeout;
            return match tokio::time::timeout(timeout, self.connect_http(style, token)).await {
                Ok(r) => r,
                Err(_) => Err(ConnectFailure {
                    message: format!("connect timed out after {timeout:?}"),
                    terminal: false,
                    ..Default::default()
                }),
            };
        }
        let mut req = self
            .cfg
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| describe(&e))?;
        let mut protocols = Format::Json.subprotocol().to_owned();
        let h = req.headers_mut();
        let header = |v: String| {
            v.parse().map_err(|_| ConnectFailure {
                message: "a header value has invalid characters".into(),
                terminal: true,
                ..Default::default()
            })
        };
        if let Some(t) = &token {
            match &self.cfg.carrier {
                Carrier::Header => {
                    h.insert("authorization", header(format!("Bearer {t}"))?);
                }
                Carrier::Subprotocol => protocols.push_str(&format!(", herald.auth.{t}")),
                Carrier::Cookie(name) => {
                    h.insert("cookie", header(format!("{name}={t}"))?);
                }
                Carrier::FirstMessage => {}
            }
        }
        h.insert("sec-websocket-protocol", header(protocols)?);
        if token.is_none()
            && let Some(r) = self.state.resume_token()
        {
            // Without a token of its own (a connect proxy reads its cookies), a resuming client
            // is admitted by its resume token: the backend is not asked again (protocol §8).
            h.insert("herald-resume", header(r.to_owned())?);
        }
        for (k, v) in &self.cfg.headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                k.parse().map_err(|_| ConnectFailure {
                    message: format!("bad header name {k:?}"),
                    terminal: true,
                    ..Default::default()
                })?;
            h.insert(name, header(v.clone())?);
        }
        let timeout = self.cfg.connect_timeout;
        let open = async {
            let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
                req,
                None,
                true,
                Some(self.connector.clone()),
            )
            .await
            .map_err(|e| describe(&e))?;
            if self.cfg.carrier == Carrier::FirstMessage {
                let auth = json!({"type": "auth", "id": 0, "payload": {"token": token}});
                ws.send(WsMessage::Text(auth.to_string().into()))
                    .await
                    .map_err(|e| describe(&e))?;
            }
            let mut hint = None;
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        match ServerMessage::decode(Format::Json, t.as_bytes()) {
                            Ok(ServerMessage::Connected { info, .. }) => {
                                return Ok((Link::Ws(Box::new(ws)), info));
                            }
                            Ok(ServerMessage::Disconnect(d)) => {
                                hint = d.reconnect_after_ms.map(Duration::from_millis);
                            }
                            Ok(ServerMessage::Error {
                                error, code_name, ..
                            }) => {
                                return Err(ConnectFailure {
                                    message: format!(
                                        "authentication failed: {}: {}",
                                        code_name, error.message
                                    ),
                                    terminal: matches!(self.cfg.token, TokenSource::Static(_)),
                                    ..Default::default()
                                });
                            }
                            Ok(_) => continue,
                            Err(e) => {
                                return Err(ConnectFailure {
                                    message: format!("bad first frame: {e}"),
                                    terminal: false,
                                    ..Default::default()
                                });
                            }
                        }
                    }
                    Some(Ok(WsMessage::Close(c))) => {
                        let code = c.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
                        return Err(ConnectFailure {
                            message: format!(
                                "closed during connect: {}",
                                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                                    .unwrap_or_default()
                            ),
                            terminal: !herald_proto::codes::reconnect_after_close(code),
                            code: Some(code),
                            after: hint,
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(describe(&e)),
                    None => {
                        return Err(ConnectFailure {
                            message: "connection closed during connect".into(),
                            terminal: false,
                            ..Default::default()
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(ConnectFailure {
                message: format!("connect timed out after {timeout:?}"),
                terminal: false,
                ..Default::default()
            }),
        }
    }

    /// Open an HTTP transport session and read its `connected`.
    async fn connect_http(
        &self,
        style: crate::http::HttpStyle,
        token: Option<String>,
    ) -> Result<(Link, Connected), ConnectFailure> {
        let base =
            crate::http::Base::from_ws_url(&self.cfg.url).map_err(|message| ConnectFailure {
                message,
                terminal: true,
                ..Default::default()
            })?;
        let mut headers = self.cfg.headers.clone();
        if token.is_none()
            && let Some(r) = self.state.resume_token()
        {
            headers.push(("herald-resume".into(), r.to_owned()));
        }
        let mut commands = Vec::new();
        if let Some(t) = &token {
            match &self.cfg.carrier {
                Carrier::Header | Carrier::Subprotocol => {
                    headers.push(("authorization".into(), format!("Bearer {t}")));
                }
                Carrier::Cookie(name) => headers.push(("cookie".into(), format!("{name}={t}"))),
                Carrier::FirstMessage => {}
            }
        }
        if self.cfg.carrier == Carrier::FirstMessage {
            commands
                .push(json!({"type": "auth", "id": 0, "payload": {"token": token}}).to_string());
        }
        let tls = match &self.connector {
            Connector::Rustls(cfg) => Some(cfg.clone()),
            _ => None,
        };
        let mut link = crate::http::HttpLink::open(base, tls, headers, style, commands)
            .await
            .map_err(|f| ConnectFailure {
                terminal: f.auth && matches!(self.cfg.token, TokenSource::Static(_)),
                message: f.message,
                after: f.retry_after,
                ..Default::default()
            })?;
        loop {
            match link.next().await {
                crate::http::Down::Message(t) => {
                    match ServerMessage::decode(Format::Json, t.as_bytes()) {
                        Ok(ServerMessage::Connected { info, .. }) => {
                            return Ok((Link::Http(Box::new(link), None), info));
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            return Err(ConnectFailure {
                                message: format!("bad first message: {e}"),
                                terminal: false,
                                ..Default::default()
                            });
                        }
                    }
                }
                crate::http::Down::Alive => continue,
                crate::http::Down::Ended(why) => {
                    return Err(ConnectFailure {
                        message: format!("closed during connect: {why}"),
                        terminal: false,
                        ..Default::default()
                    });
                }
            }
        }
    }

    /// Carry out what the state asked for. Returns how the connection ended, if it did.
    async fn flush(
        &mut self,
        link: &mut Link,
        refreshing: &mut Option<TokenFuture>,
    ) -> Option<Ended> {
        // Commands go up in one batch (one POST on HTTP), in order.
        let mut batch = Vec::new();
        while let Some(o) = self.state.poll_output() {
            match o {
                Output::Send(text) => batch.push(text),
                Output::Event(e) => self.emit(e).await,
                Output::FetchToken => {
                    if let TokenSource::Callback(f) = &self.cfg.token {
                        *refreshing = Some(f());
                    }
                }
                Output::Drop(why) => {
                    if !batch.is_empty() && !link.send(std::mem::take(&mut batch)).await {
                        return Some(Ended::Link(self.state.lost("send failed", true)));
                    }
                    return Some(Ended::Link(give_up(link, &mut self.state, &why).await));
                }
            }
        }
        if !batch.is_empty() && !link.send(batch).await {
            return Some(Ended::Link(self.state.lost("send failed", true)));
        }
        None
    }

    /// Serve one connection until it ends.
    async fn connected(&mut self, mut link: Link, info: Connected) -> Ended {
        let window = Duration::from_millis(info.ping_interval_ms + info.pong_timeout_ms)
            + self.cfg.watchdog_margin;
        let ping_interval = Duration::from_millis(info.ping_interval_ms);
        let mut refreshing: Option<TokenFuture> = None;
        self.state.opened(info, Instant::now());
        let mut last_seen = Instant::now();
        loop {
            if let Some(end) = self.flush(&mut link, &mut refreshing).await {
                return end;
            }
            let accepting = self.state.accepts_commands();
            let ping_at = link.ping_at(ping_interval);
            tokio::select! {
                event = link.next() => {
                    last_seen = Instant::now();
                    match event {
                        LinkEvent::Text(t) => self.state.frame(t.as_bytes(), last_seen),
                        LinkEvent::Closed(code, reason) => {
                            return Ended::Link(self.state.closed(code, &reason));
                        }
                        LinkEvent::Alive => {}
                        LinkEvent::Lost(why) => return Ended::Link(self.state.lost(&why, true)),
                    }
                }
                cmd = self.cmds.recv(), if accepting => match cmd {
                    None => {
                        link.close().await;
                        return Ended::Closed(None);
                    }
                    Some(Cmd::Close { tx }) => {
                        link.close().await;
                        return Ended::Closed(Some(tx));
                    }
                    Some(cmd) => self.state.command(cmd, Instant::now()),
                },
                _ = tokio::time::sleep_until(last_seen + window) => {
                    tracing::debug!("no frame from the server within {window:?}: reconnecting");
                    return Ended::Link(give_up(&mut link, &mut self.state, "heartbeat watchdog: the server went silent").await);
                }
                _ = sleep_opt(ping_at) => {
                    // An HTTP session shows it is alive (the server ends silent ones with 4000).
                    if !link.send(vec![json!({"type": "ping"}).to_string()]).await {
                        return Ended::Link(self.state.lost("send failed", true));
                    }
                }
                _ = sleep_opt(self.state.next_deadline()) => self.state.tick(Instant::now()),
                _ = self.acks.notify.notified() => {
                    let now = Instant::now();
                    for (channel, offset) in self.acks.take() {
                        self.state.processed(&channel, offset, now);
                    }
                }
                token = async { match refreshing.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    refreshing = None;
                    match token {
                        Ok(t) => self.state.refresh(t, Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "token refresh failed"),
                    }
                }
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Give the connection up: close it with 4000 (the server keeps the session for a resume),
/// waiting briefly only, since the peer may be gone. An HTTP stream is just dropped: its end is
/// the same signal to the server.
async fn give_up(link: &mut Link, state: &mut ClientState, why: &str) -> Disconnected {
    if let Link::Ws(ws) = link {
        let frame = CloseFrame {
            code: WsCloseCode::from(CloseCode::HeartbeatTimeout.code()),
            reason: why.chars().take(100).collect::<String>().into(),
        };
        let _ = tokio::time::timeout(GIVE_UP_CLOSE, Ws::close(ws, Some(frame))).await;
    }
    state.gave_up(why)
}

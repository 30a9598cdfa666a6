//! The connection driver: one task that owns the socket, reconnects with backoff, resumes the
//! session or resubscribes with recovery, detects dead connections, and serves the handle's
//! commands. Nothing here blocks on the application except the bounded event channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_proto::{ErrorCode, Format, Id};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::config::{Carrier, ClientConfig, TokenFuture, TokenSource};
use crate::error::ClientError;
use crate::event::{Event, Message, State};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub(crate) type Reply = oneshot::Sender<Result<Value, ClientError>>;

/// A command from a `Client` handle.
pub(crate) enum Cmd {
    Request {
        kind: String,
        payload: Value,
        timeout: Duration,
        tx: Reply,
    },
    Publish {
        channel: String,
        data: Value,
        key: String,
        tx: Reply,
    },
    Subscribe {
        channel: String,
        tx: Reply,
    },
    Unsubscribe {
        channel: String,
        tx: Reply,
    },
    Close {
        tx: oneshot::Sender<()>,
    },
}

struct Sub {
    /// Last offset received (or the stream top at subscribe time).
    offset: u64,
    epoch: String,
    /// Confirmed by the server at least once (so `offset`/`epoch` are a recovery position).
    positioned: bool,
    /// `subscribe` calls waiting for the server's confirmation.
    waiters: Vec<Reply>,
}

struct QueuedPublish {
    channel: String,
    data: Value,
    key: String,
    deadline: Instant,
    tx: Reply,
}

enum Pending {
    Plain(Reply),
    Publish(QueuedPublish),
    Subscribe(String),
    Refresh,
}

/// How a connection ended.
struct Ended {
    code: u16,
    reason: String,
    reconnect: bool,
    /// Server hint: wait at least this long.
    after: Option<Duration>,
    /// The application asked to close.
    closing: Option<oneshot::Sender<()>>,
}

/// Why connecting failed.
struct ConnectFailure {
    message: String,
    terminal: bool,
}

pub(crate) struct Driver {
    cfg: ClientConfig,
    cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
    subs: BTreeMap<String, Sub>,
    pending: HashMap<u64, (Pending, Instant)>,
    offline: VecDeque<QueuedPublish>,
    resume_token: Option<String>,
    next_id: u64,
    connector: Connector,
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

fn server_error(payload: &Value) -> ClientError {
    let code =
        serde_json::from_value::<ErrorCode>(payload["code"].clone()).unwrap_or(ErrorCode::Internal);
    ClientError::Server {
        code,
        message: payload["message"].as_str().unwrap_or("").to_owned(),
    }
}

fn describe(e: &WsError) -> ConnectFailure {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            let detail = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
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
            }
        }
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => ConnectFailure {
            message: "connection refused (is the server running?)".into(),
            terminal: false,
        },
        WsError::Tls(t) => ConnectFailure {
            message: format!("TLS: {t}"),
            terminal: false,
        },
        WsError::Url(u) => ConnectFailure {
            message: format!("bad URL: {u}"),
            terminal: true,
        },
        other => ConnectFailure {
            message: other.to_string(),
            terminal: false,
        },
    }
}

impl Driver {
    pub(crate) fn new(
        cfg: ClientConfig,
        cmds: mpsc::Receiver<Cmd>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let connector = connector(&cfg.extra_roots);
        Driver {
            cfg,
            cmds,
            events,
            subs: BTreeMap::new(),
            pending: HashMap::new(),
            offline: VecDeque::new(),
            resume_token: None,
            next_id: 1,
            connector,
        }
    }

    async fn emit(&self, e: Event) {
        // The application may have dropped its event stream; the client still works.
        let _ = self.events.send(e).await;
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn token(&self) -> Result<Option<String>, String> {
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
                Ok((ws, welcome)) => {
                    attempt = 0;
                    self.connected(ws, welcome).await
                }
                Err(f) => Ended {
                    code: 1006,
                    reason: f.message,
                    reconnect: !f.terminal,
                    after: None,
                    closing: None,
                },
            };
            self.requeue_in_flight();
            if let Some(done) = ended.closing {
                let _ = done.send(());
                break "closed by the application".to_owned();
            }
            self.emit(Event::State(State::Disconnected {
                code: ended.code,
                reason: ended.reason.clone(),
                reconnect: ended.reconnect,
            }))
            .await;
            if !ended.reconnect {
                break ended.reason;
            }
            attempt += 1;
            if self.cfg.backoff.max_attempts.is_some_and(|m| attempt >= m) {
                break format!("gave up after {attempt} attempts: {}", ended.reason);
            }
            let mut delay = self.cfg.backoff.delay(attempt - 1, &mut rand::rng());
            if let Some(after) = ended.after {
                delay = delay.max(after);
            }
            self.emit(Event::State(State::Reconnecting { delay, attempt }))
                .await;
            if let Some(done) = self.wait_offline(delay).await {
                let _ = done.send(());
                break "closed by the application".to_owned();
            }
        };
        self.fail_all(&reason);
        self.emit(Event::State(State::Closed { reason })).await;
    }

    /// Everything still waiting fails: the client is done.
    fn fail_all(&mut self, reason: &str) {
        let err = || Err(ClientError::Closed(reason.to_owned()));
        for (_, (p, _)) in self.pending.drain() {
            match p {
                Pending::Plain(tx) => drop(tx.send(err())),
                Pending::Publish(q) => drop(q.tx.send(err())),
                Pending::Subscribe(_) | Pending::Refresh => {}
            }
        }
        for q in self.offline.drain(..) {
            let _ = q.tx.send(err());
        }
        for s in self.subs.values_mut() {
            for w in s.waiters.drain(..) {
                let _ = w.send(err());
            }
        }
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Request { tx, .. }
                | Cmd::Publish { tx, .. }
                | Cmd::Subscribe { tx, .. }
                | Cmd::Unsubscribe { tx, .. } => drop(tx.send(err())),
                Cmd::Close { tx } => drop(tx.send(())),
            }
        }
    }

    /// After a connection ends: publishes in flight go back to the front of the offline queue (to
    /// be retried with the same idempotency key), other requests fail with `Disconnected`.
    fn requeue_in_flight(&mut self) {
        let mut inflight: Vec<(u64, Pending)> =
            self.pending.drain().map(|(id, (p, _))| (id, p)).collect();
        inflight.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, p) in inflight {
            match p {
                Pending::Publish(q) => self.offline.push_front(q),
                Pending::Plain(tx) => drop(tx.send(Err(ClientError::Disconnected))),
                Pending::Subscribe(_) | Pending::Refresh => {}
            }
        }
    }

    fn expire_offline(&mut self) {
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.offline.len());
        for q in self.offline.drain(..) {
            if q.deadline <= now {
                let _ = q.tx.send(Err(ClientError::Expired));
            } else {
                kept.push_back(q);
            }
        }
        self.offline = kept;
    }

    /// Serve commands while disconnected for `delay`. Returns the close request, if any.
    async fn wait_offline(&mut self, delay: Duration) -> Option<oneshot::Sender<()>> {
        let until = Instant::now() + delay;
        loop {
            let next_expiry = self.offline.iter().map(|q| q.deadline).min();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                _ = sleep_opt(next_expiry) => self.expire_offline(),
                cmd = self.cmds.recv() => match cmd {
                    None => return None,
                    Some(Cmd::Close { tx }) => return Some(tx),
                    Some(cmd) => self.offline_cmd(cmd),
                },
            }
        }
    }

    fn offline_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Publish {
                channel,
                data,
                key,
                tx,
            } => {
                if self.cfg.offline_queue == 0 {
                    let _ = tx.send(Err(ClientError::Disconnected));
                } else if self.offline.len() >= self.cfg.offline_queue {
                    let _ = tx.send(Err(ClientError::QueueFull));
                } else {
                    self.offline.push_back(QueuedPublish {
                        channel,
                        data,
                        key,
                        deadline: Instant::now() + self.cfg.offline_deadline,
                        tx,
                    });
                }
            }
            Cmd::Subscribe { channel, tx } => {
                self.subs
                    .entry(channel)
                    .or_insert_with(|| Sub {
                        offset: 0,
                        epoch: String::new(),
                        positioned: false,
                        waiters: Vec::new(),
                    })
                    .waiters
                    .push(tx);
            }
            Cmd::Unsubscribe { channel, tx } => {
                self.subs.remove(&channel);
                let _ = tx.send(Ok(json!({})));
            }
            Cmd::Request { tx, .. } => drop(tx.send(Err(ClientError::Disconnected))),
            Cmd::Close { tx } => drop(tx.send(())),
        }
    }

    async fn connect(&mut self) -> Result<(Ws, Value), ConnectFailure> {
        let token = self.token().await.map_err(|e| ConnectFailure {
            message: format!("token callback failed: {e}"),
            terminal: false,
        })?;
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
        for (k, v) in &self.cfg.headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                k.parse().map_err(|_| ConnectFailure {
                    message: format!("bad header name {k:?}"),
                    terminal: true,
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
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        let (kind, _, payload) =
                            herald_proto::codec::decode_server_frame(Format::Json, t.as_bytes())
                                .map_err(|e| ConnectFailure {
                                    message: format!("bad first frame: {e}"),
                                    terminal: false,
                                })?;
                        match kind.as_str() {
                            "connected" => return Ok((ws, payload)),
                            "error" => {
                                return Err(ConnectFailure {
                                    message: format!(
                                        "authentication failed: {}: {}",
                                        payload["code"].as_str().unwrap_or(""),
                                        payload["message"].as_str().unwrap_or("")
                                    ),
                                    terminal: matches!(self.cfg.token, TokenSource::Static(_)),
                                });
                            }
                            _ => continue,
                        }
                    }
                    Some(Ok(WsMessage::Close(c))) => {
                        return Err(ConnectFailure {
                            message: format!(
                                "closed during connect: {}",
                                c.map(|c| format!("{} {}", u16::from(c.code), c.reason))
                                    .unwrap_or_default()
                            ),
                            terminal: false,
                        });
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(describe(&e)),
                    None => {
                        return Err(ConnectFailure {
                            message: "connection closed during connect".into(),
                            terminal: false,
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
            }),
        }
    }

    async fn send(&mut self, ws: &mut Ws, kind: &str, id: Option<u64>, payload: Value) -> bool {
        let mut frame = json!({"type": kind, "payload": payload});
        if let Some(id) = id {
            frame["id"] = json!(id);
        }
        ws.send(WsMessage::Text(frame.to_string().into()))
            .await
            .is_ok()
    }

    async fn send_publish(&mut self, ws: &mut Ws, q: QueuedPublish) -> bool {
        let id = self.id();
        let payload = json!({"channel": q.channel, "data": q.data, "idempotency_key": q.key});
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.pending.insert(id, (Pending::Publish(q), deadline));
        self.send(ws, "publish", Some(id), payload).await
    }

    async fn send_subscribe(&mut self, ws: &mut Ws, channel: &str) -> bool {
        let Some(sub) = self.subs.get(channel) else {
            return true;
        };
        let mut payload = json!({"channel": channel});
        if sub.positioned {
            payload["recover"] = json!({"offset": sub.offset, "epoch": sub.epoch});
        }
        let id = self.id();
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.pending
            .insert(id, (Pending::Subscribe(channel.to_owned()), deadline));
        self.send(ws, "subscribe", Some(id), payload).await
    }

    /// Try to resume the previous session; returns whether it worked.
    async fn resume(&mut self, ws: &mut Ws) -> Result<bool, Ended> {
        let Some(token) = self.resume_token.clone() else {
            return Ok(false);
        };
        let positions: serde_json::Map<String, Value> = self
            .subs
            .iter()
            .filter(|(_, s)| s.positioned)
            .map(|(c, s)| (c.clone(), json!({"offset": s.offset, "epoch": s.epoch})))
            .collect();
        let id = self.id();
        if !self
            .send(
                ws,
                "resume",
                Some(id),
                json!({"token": token, "positions": positions}),
            )
            .await
        {
            return Err(self.gone("send failed"));
        }
        let deadline = Instant::now() + self.cfg.request_timeout;
        loop {
            let frame = tokio::select! {
                f = ws.next() => f,
                _ = tokio::time::sleep_until(deadline) => return Err(self.gone("resume timed out")),
            };
            let text = match frame {
                Some(Ok(WsMessage::Text(t))) => t,
                Some(Ok(WsMessage::Close(c))) => return Err(closed(c, None)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(self.gone("connection lost during resume")),
            };
            let Ok((kind, rid, payload)) =
                herald_proto::codec::decode_server_frame(Format::Json, text.as_bytes())
            else {
                continue;
            };
            if rid != Some(Id::Num(id)) {
                continue;
            }
            if kind == "error" {
                return Ok(false);
            }
            self.resume_token = payload["resume_token"].as_str().map(str::to_owned);
            let restored: Vec<(String, Option<bool>)> = payload["channels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| {
                            Some((c["channel"].as_str()?.to_owned(), c["recovered"].as_bool()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            for (channel, recovered) in &restored {
                if *recovered == Some(false)
                    && let Some(s) = self.subs.get(channel)
                {
                    let last = s.offset;
                    self.emit(Event::Gap {
                        channel: channel.clone(),
                        last_offset: last,
                        resumed_at: last,
                    })
                    .await;
                }
            }
            // Channels the application added or dropped while disconnected.
            let local: Vec<String> = self.subs.keys().cloned().collect();
            for c in &local {
                if !restored.iter().any(|(r, _)| r == c) && !self.send_subscribe(ws, c).await {
                    return Err(self.gone("send failed"));
                }
            }
            for (c, _) in &restored {
                if !self.subs.contains_key(c) {
                    let id = self.id();
                    if !self
                        .send(ws, "unsubscribe", Some(id), json!({"channel": c}))
                        .await
                    {
                        return Err(self.gone("send failed"));
                    }
                }
            }
            return Ok(true);
        }
    }

    fn gone(&self, why: &str) -> Ended {
        Ended {
            code: 1006,
            reason: why.to_owned(),
            reconnect: true,
            after: None,
            closing: None,
        }
    }

    /// Serve one connection until it ends.
    async fn connected(&mut self, mut ws: Ws, welcome: Value) -> Ended {
        let resumed = match self.resume(&mut ws).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        if !resumed {
            let channels: Vec<String> = self.subs.keys().cloned().collect();
            for c in channels {
                if !self.send_subscribe(&mut ws, &c).await {
                    return self.gone("send failed");
                }
            }
        }
        if !resumed || self.resume_token.is_none() {
            self.resume_token = welcome["resume_token"].as_str().map(str::to_owned);
        }
        self.expire_offline();
        while let Some(q) = self.offline.pop_front() {
            if !self.send_publish(&mut ws, q).await {
                return self.gone("send failed");
            }
        }
        self.emit(Event::State(State::Connected {
            client_id: welcome["client_id"].as_str().unwrap_or("").to_owned(),
            user_id: welcome["user_id"].as_str().unwrap_or("").to_owned(),
            resumed,
        }))
        .await;
        let window = Duration::from_millis(
            welcome["ping_interval_ms"].as_u64().unwrap_or(25_000)
                + welcome["pong_timeout_ms"].as_u64().unwrap_or(10_000),
        ) + self.cfg.watchdog_margin;
        let mut last_seen = Instant::now();
        let mut advisory: Option<(u16, String, bool, Option<Duration>)> = None;
        let mut refreshing: Option<TokenFuture> = None;
        loop {
            let next_deadline = self.pending.values().map(|(_, d)| *d).min();
            tokio::select! {
                frame = ws.next() => {
                    last_seen = Instant::now();
                    match frame {
                        Some(Ok(WsMessage::Text(t))) => {
                            if let Some(f) = self.on_text(t.as_bytes(), &mut advisory).await {
                                refreshing = Some(f);
                            }
                        }
                        Some(Ok(WsMessage::Close(c))) => return closed(c, advisory),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return self.gone(&format!("connection lost: {e}")),
                        None => return self.gone("connection lost"),
                    }
                }
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else {
                        let _ = ws.close(None).await;
                        return Ended { code: 1000, reason: "all handles dropped".into(), reconnect: false, after: None, closing: None };
                    };
                    if let Cmd::Close { tx } = cmd {
                        let _ = ws.close(Some(CloseFrame { code: WsCloseCode::Normal, reason: "client closed".into() })).await;
                        // Wait briefly for the server's close so the close is clean.
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        }).await;
                        return Ended { code: 1000, reason: "closed".into(), reconnect: false, after: None, closing: Some(tx) };
                    }
                    if !self.online_cmd(&mut ws, cmd).await {
                        return self.gone("send failed");
                    }
                }
                _ = tokio::time::sleep_until(last_seen + window) => {
                    tracing::debug!("no frame from the server within {window:?}: reconnecting");
                    return self.gone("heartbeat watchdog: the server went silent");
                }
                _ = sleep_opt(next_deadline) => self.expire_pending(),
                token = async { match refreshing.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    refreshing = None;
                    match token {
                        Ok(t) => {
                            let id = self.id();
                            let deadline = Instant::now() + self.cfg.request_timeout;
                            self.pending.insert(id, (Pending::Refresh, deadline));
                            if !self.send(&mut ws, "refresh", Some(id), json!({"token": t})).await {
                                return self.gone("send failed");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "token refresh failed"),
                    }
                }
            }
        }
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some((p, _)) = self.pending.remove(&id) else {
                continue;
            };
            match p {
                Pending::Plain(tx) => drop(tx.send(Err(ClientError::Timeout))),
                Pending::Publish(q) => drop(q.tx.send(Err(ClientError::Timeout))),
                Pending::Subscribe(c) => {
                    if let Some(s) = self.subs.get_mut(&c) {
                        for w in s.waiters.drain(..) {
                            let _ = w.send(Err(ClientError::Timeout));
                        }
                    }
                }
                Pending::Refresh => {}
            }
        }
    }

    /// Returns false when the socket failed.
    async fn online_cmd(&mut self, ws: &mut Ws, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Request {
                kind,
                payload,
                timeout,
                tx,
            } => {
                let id = self.id();
                self.pending
                    .insert(id, (Pending::Plain(tx), Instant::now() + timeout));
                self.send(ws, &kind, Some(id), payload).await
            }
            Cmd::Publish {
                channel,
                data,
                key,
                tx,
            } => {
                let q = QueuedPublish {
                    channel,
                    data,
                    key,
                    deadline: Instant::now() + self.cfg.offline_deadline,
                    tx,
                };
                self.send_publish(ws, q).await
            }
            Cmd::Subscribe { channel, tx } => {
                if let Some(s) = self.subs.get_mut(&channel) {
                    if s.waiters.is_empty() && s.positioned {
                        let _ = tx.send(Err(ClientError::Server {
                            code: ErrorCode::AlreadySubscribed,
                            message: "already subscribed".into(),
                        }));
                    } else {
                        s.waiters.push(tx);
                    }
                    return true;
                }
                self.subs.insert(
                    channel.clone(),
                    Sub {
                        offset: 0,
                        epoch: String::new(),
                        positioned: false,
                        waiters: vec![tx],
                    },
                );
                self.send_subscribe(ws, &channel).await
            }
            Cmd::Unsubscribe { channel, tx } => {
                if self.subs.remove(&channel).is_none() {
                    let _ = tx.send(Err(ClientError::Server {
                        code: ErrorCode::NotSubscribed,
                        message: "not subscribed".into(),
                    }));
                    return true;
                }
                let id = self.id();
                let deadline = Instant::now() + self.cfg.request_timeout;
                self.pending.insert(id, (Pending::Plain(tx), deadline));
                self.send(ws, "unsubscribe", Some(id), json!({"channel": channel}))
                    .await
            }
            Cmd::Close { tx } => {
                let _ = tx.send(());
                true
            }
        }
    }

    /// Handle a text frame; returns a token future when the server asked for a refresh.
    async fn on_text(
        &mut self,
        bytes: &[u8],
        advisory: &mut Option<(u16, String, bool, Option<Duration>)>,
    ) -> Option<TokenFuture> {
        let (kind, id, payload) =
            match herald_proto::codec::decode_server_frame(Format::Json, bytes) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "undecodable server frame");
                    return None;
                }
            };
        match kind.as_str() {
            "message" => self.on_message(payload).await,
            "join" | "leave" => {
                let channel = payload["channel"].as_str().unwrap_or("").to_owned();
                let e = if kind == "join" {
                    Event::Join {
                        channel,
                        who: payload,
                    }
                } else {
                    Event::Leave {
                        channel,
                        who: payload,
                    }
                };
                self.emit(e).await;
            }
            "subscribed" => {
                // A server-side subscription (server API or connect proxy).
                if let Some(channel) = payload["channel"].as_str() {
                    self.subs.entry(channel.to_owned()).or_insert_with(|| Sub {
                        offset: payload["offset"].as_u64().unwrap_or(0),
                        epoch: payload["epoch"].as_str().unwrap_or("").to_owned(),
                        positioned: true,
                        waiters: Vec::new(),
                    });
                    self.emit(Event::Subscribed {
                        channel: channel.to_owned(),
                    })
                    .await;
                }
            }
            "unsubscribed" => {
                if let Some(channel) = payload["channel"].as_str() {
                    self.subs.remove(channel);
                    self.emit(Event::Unsubscribed {
                        channel: channel.to_owned(),
                    })
                    .await;
                }
            }
            "disconnect" => {
                *advisory = Some((
                    payload["code"].as_u64().unwrap_or(1000) as u16,
                    payload["reason"].as_str().unwrap_or("").to_owned(),
                    payload["reconnect"].as_bool().unwrap_or(true),
                    payload["reconnect_after_ms"]
                        .as_u64()
                        .map(Duration::from_millis),
                ));
            }
            "refresh" => {
                if let TokenSource::Callback(f) = &self.cfg.token {
                    return Some(f());
                }
            }
            "reply" | "pong" | "error" => {
                if let Some(Id::Num(n)) = id {
                    self.on_reply(n, kind == "error", payload).await;
                }
            }
            _ => {}
        }
        None
    }

    async fn on_message(&mut self, mut p: Value) {
        let (Some(channel), Some(offset), Some(epoch)) = (
            p["channel"].as_str().map(str::to_owned),
            p["offset"].as_u64(),
            p["epoch"].as_str().map(str::to_owned),
        ) else {
            return;
        };
        let (channel, epoch) = (channel.as_str(), epoch.as_str());
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let mut gap = None;
        if sub.positioned && sub.epoch == epoch {
            if offset <= sub.offset {
                tracing::debug!(channel, offset, "duplicate message dropped");
                return;
            }
            if offset > sub.offset + 1 {
                gap = Some(sub.offset);
            }
        }
        sub.offset = offset;
        sub.epoch = epoch.to_owned();
        sub.positioned = true;
        if let Some(last) = gap {
            self.emit(Event::Gap {
                channel: channel.to_owned(),
                last_offset: last,
                resumed_at: offset - 1,
            })
            .await;
        }
        let msg = Message {
            channel: channel.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            data: p["data"].take(),
            info: p.get_mut("info").map(Value::take),
        };
        self.emit(Event::Message(msg)).await;
    }

    async fn on_reply(&mut self, id: u64, is_error: bool, payload: Value) {
        let Some((p, _)) = self.pending.remove(&id) else {
            return;
        };
        let result = if is_error {
            Err(server_error(&payload))
        } else {
            Ok(payload)
        };
        match p {
            Pending::Plain(tx) => drop(tx.send(result)),
            Pending::Publish(q) => drop(q.tx.send(result)),
            Pending::Refresh => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "refresh rejected");
                }
            }
            Pending::Subscribe(channel) => self.on_subscribed(&channel, result).await,
        }
    }

    async fn on_subscribed(&mut self, channel: &str, result: Result<Value, ClientError>) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let reply = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(s) = self.subs.remove(channel) {
                    for w in s.waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
                tracing::warn!(channel, error = %e, "subscribe refused");
                return;
            }
        };
        let top = reply["offset"].as_u64().unwrap_or(0);
        let epoch = reply["epoch"].as_str().unwrap_or("").to_owned();
        let missed = reply["missed"].as_u64().unwrap_or(0);
        let mut gap = None;
        match reply["recovered"].as_bool() {
            None => {
                sub.offset = top;
            }
            Some(true) => {}
            Some(false) => {
                gap = Some(sub.offset);
                sub.offset = top.saturating_sub(missed);
            }
        }
        sub.epoch = epoch;
        sub.positioned = true;
        let resumed_at = sub.offset;
        for w in sub.waiters.drain(..) {
            let _ = w.send(Ok(reply.clone()));
        }
        if let Some(last) = gap {
            self.emit(Event::Gap {
                channel: channel.to_owned(),
                last_offset: last,
                resumed_at,
            })
            .await;
        }
    }
}

fn closed(
    frame: Option<CloseFrame>,
    advisory: Option<(u16, String, bool, Option<Duration>)>,
) -> Ended {
    let code = frame.as_ref().map(|c| u16::from(c.code)).unwrap_or(1005);
    let reason = frame.map(|c| c.reason.to_string()).unwrap_or_default();
    let reconnect_by_code = !matches!(code, 1000 | 1002 | 1003 | 1007 | 1008 | 1009 | 4500..=4999);
    match advisory {
        Some((_, reason, reconnect, after)) => Ended {
            code,
            reason,
            reconnect,
            after,
            closing: None,
        },
        None => Ended {
            code,
            reason,
            reconnect: reconnect_by_code,
            after: None,
            closing: None,
        },
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

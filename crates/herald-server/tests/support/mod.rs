//! Test support: start a real server on 127.0.0.1:0 and talk to it with real WebSocket clients.
#![allow(dead_code)]

pub mod http;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::memory::{MemoryBroker, MemoryPresence};
use herald_core::{EngineConfig, Heartbeat, LimitsConfig, NamespaceOptions, Node, Verifier};
use herald_server::{ConnectionConfig, Handle, Server, ServerConfig, TlsConfig};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub handle: Handle,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub struct Setup {
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub conn: ConnectionConfig,
    pub tls: TlsConfig,
    pub http: herald_server::HttpConfig,
}

impl Default for Setup {
    fn default() -> Self {
        let engine = EngineConfig {
            default_namespace: Some(NamespaceOptions::dev()),
            limits: LimitsConfig::unlimited(),
            ..Default::default()
        };
        let server = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            echo: true,
            ..Default::default()
        };
        Setup {
            engine,
            server,
            conn: ConnectionConfig::default(),
            tls: TlsConfig::default(),
            http: herald_server::HttpConfig::default(),
        }
    }
}

pub async fn start(setup: Setup) -> TestServer {
    start_with(setup, |b| b).await
}

/// Start with optional parts (connect proxy, forwarded headers) given to the builder.
pub async fn start_with(
    setup: Setup,
    build: impl FnOnce(herald_server::app::ServerBuilder) -> herald_server::app::ServerBuilder,
) -> TestServer {
    let hb = Heartbeat {
        ping_interval_ms: setup.conn.ping_interval.as_millis() as u64,
        pong_timeout_ms: setup.conn.pong_timeout.as_millis() as u64,
    };
    let verifier = Arc::new(Verifier::from_config(&setup.engine.auth).expect("auth config"));
    let node = Node::new(
        setup.engine,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        hb,
        verifier,
    );
    let server = build(Server::builder(setup.server, setup.conn, setup.tls, node).http(setup.http))
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let handle = server.handle();
    let task = tokio::spawn(server.run());
    TestServer { addr, handle, task }
}

pub async fn start_default() -> TestServer {
    start(Setup::default()).await
}

/// Wait until `cond` holds, checking on every tick, failing after `WAIT`.
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub msgpack: bool,
    pub welcome: Value,
    next_id: u64,
    /// Pushes read while waiting for a reply, returned by `next` first.
    pending: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(server: &TestServer) -> Client {
        Self::connect_with(server, None).await
    }

    pub async fn connect_with(server: &TestServer, protocol: Option<&str>) -> Client {
        let mut req = format!("ws://{}/ws", server.addr)
            .into_client_request()
            .expect("req");
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("hdr"));
        }
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        if let Some(p) = protocol {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some(p)
            );
        }
        let mut c = Client {
            ws,
            msgpack: protocol == Some("herald.v1.msgpack"),
            welcome: Value::Null,
            next_id: 1,
            pending: Default::default(),
        };
        let w = c.next().await;
        assert_eq!(w["type"], "connected", "{w}");
        c.welcome = w["payload"].clone();
        c
    }

    /// Connect with a custom request. `Err((status, body))` when the server refused the upgrade.
    pub async fn open(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, (u16, Value)> {
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client::from_stream(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err((resp.status().as_u16(), body))
            }
            Err(e) => panic!("connect: {e}"),
        }
    }

    /// `open`, then read the `connected` message.
    pub async fn open_welcomed(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, (u16, Value)> {
        let mut c = Self::open(req).await?;
        let w = c.next().await;
        assert_eq!(w["type"], "connected", "{w}");
        c.welcome = w["payload"].clone();
        Ok(c)
    }

    /// Wrap a connected socket without reading the `connected` message.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            msgpack: false,
            welcome: Value::Null,
            next_id: 1,
            pending: Default::default(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&v).expect("mp").into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.ws.send(msg).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next protocol frame (skipping WebSocket pings/pongs).
    pub async fn next(&mut self) -> Value {
        self.try_next().await.expect("connection ended")
    }

    pub async fn try_next(&mut self) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match m {
                Ok(Message::Text(t)) => {
                    assert!(!self.msgpack, "text frame on msgpack connection");
                    return Some(serde_json::from_str(&t).expect("json"));
                }
                Ok(Message::Binary(b)) => {
                    assert!(self.msgpack, "binary frame on json connection");
                    let v: rmpv::Value = rmp_serde::from_slice(&b).expect("mp");
                    return Some(serde_json::to_value(v).expect("value"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Read until the close frame; returns (frames before it, close code).
    pub async fn until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match m {
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).expect("json")),
                Some(Ok(Message::Binary(b))) => {
                    let v: rmpv::Value = rmp_serde::from_slice(&b).expect("mp");
                    frames.push(serde_json::to_value(v).expect("value"));
                }
                Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (frames, None),
            }
        }
    }

    /// Read until the `connected` welcome (then `None`: the connection was admitted) or the
    /// close frame (its code); returns the frames read.
    pub async fn until_close_or_welcome(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut frames = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for the welcome or a close");
            match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    let welcome = v["type"] == "connected";
                    frames.push(v);
                    if welcome {
                        return (frames, None);
                    }
                }
                Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => panic!("connection ended without a close frame: {frames:?}"),
            }
        }
    }

    /// Read until the close frame, check its code, and return the payload of the `disconnect`
    /// advisory that must precede it (with the same code). Also returns the frames before it.
    pub async fn closed_with(&mut self, code: u16) -> (Value, Vec<Value>) {
        let (frames, got) = self.until_close().await;
        assert_eq!(got, Some(code), "close code; frames: {frames:?}");
        let adv = frames
            .iter()
            .find(|f| f["type"] == "disconnect")
            .expect("disconnect advisory");
        assert_eq!(adv["payload"]["code"], code);
        (adv["payload"].clone(), frames)
    }

    /// Send a command with a fresh id and return its reply, plus the pushes that came before it
    /// (which `next` will still return afterwards).
    pub async fn call(&mut self, kind: &str, payload: Value) -> (Value, Vec<Value>) {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(json!({"type": kind, "id": id, "payload": payload}))
            .await;
        let mut pushes = Vec::new();
        let mut skipped = std::mem::take(&mut self.pending);
        loop {
            let f = self.next().await;
            if f["id"] == json!(id) {
                skipped.extend(pushes.iter().cloned());
                self.pending = skipped;
                return (f, pushes);
            }
            pushes.push(f);
        }
    }

    /// `call` that must succeed; returns the reply payload.
    pub async fn ok(&mut self, kind: &str, payload: Value) -> Value {
        let (r, _) = self.call(kind, payload).await;
        assert_ne!(r["type"], "error", "{kind} failed: {r}");
        r["payload"].clone()
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.ok("subscribe", json!({"channel": channel})).await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.ok("publish", json!({"channel": channel, "data": data}))
            .await
    }

    /// Next `message` push (skipping other pushes).
    pub async fn next_message(&mut self) -> Value {
        loop {
            let f = self.next().await;
            if f["type"] == "message" {
                return f["payload"].clone();
            }
        }
    }
}

/// A local port with nothing listening on it (a backend that is down).
/// Serve `app` (a test's backend) on a free 127.0.0.1 port; returns its address.
pub async fn serve_backend(app: axum::Router) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

pub fn closed_port() -> u16 {
    // Bound but not listening, and kept so for the rest of the test process: a connection gets
    // refused, and nobody else can take the port meanwhile. (A listener bound then dropped left
    // the port free: on a busy machine another test's server or client took it, and the
    // "backend down" got an answer — seen once in CI as `rpc_error` instead of `unavailable`.)
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    socket.bind(&addr.into()).expect("bind");
    let port = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    std::mem::forget(socket);
    port
}

/// A `/ws` request to customise (headers) before `Client::open`.
pub fn ws_request(
    server: &TestServer,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("req")
}

/// A raw TCP client that completes the handshake and then only does what the test says: it never
/// answers pings and reads only when asked (for half-open and slow-consumer tests).
pub async fn raw_client(addr: std::net::SocketAddr, rcvbuf: Option<u32>) -> TcpStream {
    raw_client_with(addr, rcvbuf, "").await
}

/// `raw_client` with extra request header lines (each ending in `\r\n`).
pub async fn raw_client_with(
    addr: std::net::SocketAddr,
    rcvbuf: Option<u32>,
    extra_headers: &str,
) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("rcvbuf");
    }
    let mut s = sock.connect(addr).await.expect("connect");
    s.write_all(upgrade_request(addr, extra_headers).as_bytes())
        .await
        .expect("write");
    let buf = read_head(&mut s).await;
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    s
}

/// A `/ws` upgrade request with `extra_headers` (each line ending in `\r\n`).
pub fn upgrade_request(addr: std::net::SocketAddr, extra_headers: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// The response head, read byte by byte (nothing after it is consumed).
pub async fn read_head(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut b).await.expect("read");
        assert!(n == 1, "eof during handshake");
        head.push(b[0]);
    }
    head
}

/// Encode a masked client text frame.
pub fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81u8];
    let mask = [1u8, 2, 3, 4];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Read raw server frames until EOF; returns (opcode, payload) pairs.
pub async fn read_raw_frames(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("timed out reading raw frames")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let mut frames = Vec::new();
    let mut rest = &all[..];
    while let Some((payload, op)) = herald_proto::frame::parse_unmasked(rest) {
        let total = payload.as_ptr() as usize - rest.as_ptr() as usize + payload.len();
        frames.push((op as u8, payload.to_vec()));
        rest = &rest[total..];
    }
    frames
}

//! The client against a real Herald server (in-process, on real sockets): reconnect and recovery
//! across a server restart, the heartbeat watchdog behind a frozen proxy, idempotent retry after a
//! lost ack, the bounded offline queue, `reconnect: false`, and token refresh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use herald_client::{
    Backoff, Client, ClientConfig, ClientError, Event, Events, GapReason, HistoryQuery, State,
};
use herald_core::memory::{MemoryBroker, MemoryPresence};
use herald_core::{
    AuthConfig, EngineConfig, Heartbeat, LimitsConfig, NamespaceOptions, Node, Verifier,
};
use herald_proto::{Data, ErrorCode};
use herald_server::{ConnectionConfig, Handle, Server, ServerConfig, TlsConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "client-test-secret-client-test-secret";

struct Running {
    handle: Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

fn conn_config() -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Duration::from_millis(500),
        pong_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

fn node() -> Arc<Node> {
    node_with(|_| {})
}

/// A node whose engine configuration `f` adjusts.
fn node_with(f: impl FnOnce(&mut EngineConfig)) -> Arc<Node> {
    let mut engine = EngineConfig {
        default_namespace: Some(NamespaceOptions::dev()),
        limits: LimitsConfig::unlimited(),
        auth: AuthConfig {
            hmac_secret: Some(SECRET.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    f(&mut engine);
    let verifier = Arc::new(Verifier::from_config(&engine.auth).expect("auth"));
    let c = conn_config();
    Node::new(
        engine,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        Heartbeat {
            ping_interval_ms: c.ping_interval.as_millis() as u64,
            pong_timeout_ms: c.pong_timeout.as_millis() as u64,
        },
        verifier,
    )
}

/// Serve `node` on `addr` (port 0 = any).
async fn serve(node: Arc<Node>, addr: SocketAddr) -> (SocketAddr, Running) {
    let server = ServerConfig {
        listen: addr,
        shutdown_reconnect_jitter: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = Server::bind(server, conn_config(), TlsConfig::default(), node)
        .await
        .expect("bind");
    let addr = s.local_addr().expect("addr");
    let handle = s.handle();
    let task = tokio::spawn(s.run());
    (addr, Running { handle, task })
}

async fn stop(r: Running) {
    r.handle.shutdown();
    r.task.await.expect("join").expect("run");
}

fn fast_backoff() -> Backoff {
    Backoff {
        min: Duration::from_millis(20),
        first_max: Duration::from_millis(60),
        cap: Duration::from_millis(200),
        ..Default::default()
    }
}

fn config(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(format!("ws://{addr}/ws"));
    c.backoff = fast_backoff();
    c.watchdog_margin = Duration::from_millis(300);
    c
}

fn token(user: &str, ttl: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": now + ttl, "iat": now, "channels": ["*"], "publish": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

/// Wait for an event matching `pred`, returning it; fails after `WAIT`.
async fn until_event(
    events: &mut Events,
    what: &str,
    mut pred: impl FnMut(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("event stream ended waiting for {what}"));
        if pred(&e) {
            return e;
        }
    }
}

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::State(State::Connected { .. }))
}

#[tokio::test]
async fn subscribe_publish_and_receive() {
    let (addr, _srv) = serve(node(), "127.0.0.1:0".parse().expect("addr")).await;
    let (c, mut ev) = Client::connect(config(addr));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("news").await.expect("subscribe");
    let ack = c.publish("news", json!({"n": 1})).await.expect("publish");
    assert_eq!(ack["offset"], 1);
    let Event::Message(m) =
        until_event(&mut ev, "message", |e| matches!(e, Event::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(
        (m.channel.as_str(), m.offset, m.data.clone()),
        ("news", 1, json!({"n": 1}))
    );
    let h = c
        .history("news", HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(1));
    let e = c.subscribe("news").await.expect_err("twice");
    assert!(
        matches!(
            e,
            ClientError::Server {
                code: ErrorCode::AlreadySubscribed,
                ..
            }
        ),
        "{e:?}"
    );
    c.close().await;
    until_event(&mut ev, "closed", |e| {
        matches!(e, Event::State(State::Closed { .. }))
    })
    .await;
}

/// Collect message offsets of `channel` until `n` arrived; any gap event fails the test.
async fn collect(events: &mut Events, channel: &str, n: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        match until_event(events, "messages", |e| {
            matches!(e, Event::Message(_) | Event::Gap { .. })
        })
        .await
        {
            Event::Message(m) if m.channel == channel => got.push(m.offset),
            Event::Gap { .. } => panic!("unexpected gap after {got:?}"),
            _ => {}
        }
    }
    got
}

#[tokio::test]
async fn server_restart_reconnects_and_recovers_without_gap_or_duplicate() {
    let node = node();
    let (addr, srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (c, mut ev) = Client::connect(config(addr));
    c.subscribe("feed").await.expect("subscribe");
    let publish = |i: u64| {
        let node = node.clone();
        async move {
            node.publish(
                "feed",
                Data::json(&i.to_string()).expect("data"),
                None,
                None,
            )
            .await
            .expect("publish");
        }
    };
    for i in 1..=20 {
        publish(i).await;
    }
    assert_eq!(
        collect(&mut ev, "feed", 20).await,
        (1..=20).collect::<Vec<_>>()
    );
    // The server goes away; the stream goes on (history survives, as with a shared broker).
    stop(srv).await;
    until_event(&mut ev, "disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    for i in 21..=50 {
        publish(i).await;
    }
    let (_, srv2) = serve(node.clone(), addr).await;
    until_event(&mut ev, "reconnected", is_connected).await;
    for i in 51..=60 {
        publish(i).await;
    }
    assert_eq!(
        collect(&mut ev, "feed", 40).await,
        (21..=60).collect::<Vec<_>>()
    );
    c.close().await;
    stop(srv2).await;
}

/// A TCP proxy whose forwarding can be frozen (per direction) and whose connections can be cut.
struct Proxy {
    addr: SocketAddr,
    freeze_down: Arc<AtomicBool>,
    freeze_up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let p = Proxy {
            addr: l.local_addr().expect("addr"),
            freeze_down: Arc::default(),
            freeze_up: Arc::default(),
            generation: Arc::default(),
            accepted: Arc::default(),
        };
        let (down, up, generation, accepted) = (
            p.freeze_down.clone(),
            p.freeze_up.clone(),
            p.generation.clone(),
            p.accepted.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let my_gen = generation.load(Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, up.clone(), generation.clone(), my_gen));
                tokio::spawn(pump(sr, cw, down.clone(), generation.clone(), my_gen));
            }
        });
        p
    }

    /// Close every current connection (new ones are forwarded normally).
    fn cut(&self) {
        self.freeze_down.store(false, Ordering::SeqCst);
        self.freeze_up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    mine: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let cut = || async {
        while generation.load(Ordering::SeqCst) == mine {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    loop {
        let n = tokio::select! {
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    // A frozen path passes no FIN either: hold the other side open until cut.
                    if frozen.load(Ordering::SeqCst) {
                        cut().await;
                    }
                    return;
                }
                Ok(n) => n,
            },
            _ = cut() => return,
        };
        if generation.load(Ordering::SeqCst) != mine {
            return;
        }
        if frozen.load(Ordering::SeqCst) {
            continue; // swallowed: the peer sees silence, not a close
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn watchdog_reconnects_when_the_path_goes_silent() {
    let (addr, _srv) = serve(node(), "127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(addr).await;
    let (c, mut ev) = Client::connect(config(proxy.addr));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("x").await.expect("subscribe");
    // Half-open: nothing flows either way, but no socket is closed.
    proxy.freeze_down.store(true, Ordering::SeqCst);
    proxy.freeze_up.store(true, Ordering::SeqCst);
    let e = until_event(&mut ev, "watchdog disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    let Event::State(State::Disconnected {
        reason, reconnect, ..
    }) = e
    else {
        unreachable!()
    };
    assert!(reason.contains("watchdog"), "{reason}");
    assert!(reconnect);
    proxy.cut();
    until_event(&mut ev, "reconnected", is_connected).await;
    assert!(proxy.accepted.load(Ordering::SeqCst) >= 2);
    // The subscription came back.
    c.publish("x", json!("after")).await.expect("publish");
    let m = until_event(&mut ev, "message", |e| matches!(e, Event::Message(_))).await;
    assert!(matches!(m, Event::Message(m) if m.data == json!("after")));
}

#[tokio::test]
async fn publish_retried_after_a_lost_ack_is_applied_once() {
    let node = node();
    let (addr, _srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(addr).await;
    let (c, mut ev) = Client::connect(config(proxy.addr));
    until_event(&mut ev, "connected", is_connected).await;
    // Acks cannot come back.
    proxy.freeze_down.store(true, Ordering::SeqCst);
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.publish("orders", json!({"id": 981})).await }
    });
    // Wait until the server applied it (the ack is lost), then cut the connection.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let top = herald_core::broker::HistoryQuery {
            since: None,
            limit: 0,
            reverse: false,
        };
        let page = node.history("orders", top).await.expect("history");
        if page.top == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut();
    let ack = pending.await.expect("join").expect("publish after retry");
    assert_eq!(ack["offset"], 1);
    assert_eq!(ack["duplicate"], true, "{ack}");
    let h = c
        .history("orders", HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(1), "{h}");
}

#[tokio::test]
async fn offline_queue_is_bounded_and_flushed_after_reconnect() {
    let node = node();
    let (addr, srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let mut cfg = config(addr);
    cfg.offline_queue = 2;
    let (c, mut ev) = Client::connect(cfg);
    until_event(&mut ev, "connected", is_connected).await;
    stop(srv).await;
    until_event(&mut ev, "reconnecting", |e| {
        matches!(e, Event::State(State::Reconnecting { .. }))
    })
    .await;
    // Three publishes while down: two wait in the queue, one finds it full at once.
    let (tx, mut rx) = tokio::sync::mpsc::channel(3);
    for i in 1..=3 {
        let (c, tx) = (c.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(c.publish("q", json!(i)).await).await;
        });
    }
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("in time")
        .expect("result");
    assert!(matches!(first, Err(ClientError::QueueFull)), "{first:?}");
    let (_, srv2) = serve(node.clone(), addr).await;
    let mut offsets = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("in time")
            .expect("result");
        offsets.push(
            r.expect("queued publish")["offset"]
                .as_u64()
                .expect("offset"),
        );
    }
    offsets.sort();
    assert_eq!(offsets, vec![1, 2]);
    let h = c
        .history("q", HistoryQuery::default())
        .await
        .expect("history");
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(2));
    stop(srv2).await;
}

#[tokio::test]
async fn reconnect_false_advisory_stops_the_client() {
    let node = node();
    let (addr, _srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (c, mut ev) = Client::connect(config(addr).token(token("alice", 3600)));
    let e = until_event(&mut ev, "connected", is_connected).await;
    assert!(matches!(e, Event::State(State::Connected { ref user_id, .. }) if user_id == "alice"));
    assert_eq!(node.revoke_user("alice", u64::MAX / 2), 1);
    let e = until_event(&mut ev, "disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    assert!(
        matches!(
            e,
            Event::State(State::Disconnected {
                code: 4503,
                reconnect: false,
                ..
            })
        ),
        "{e:?}"
    );
    let e = until_event(&mut ev, "closed", |e| matches!(e, Event::State(_))).await;
    assert!(
        matches!(e, Event::State(State::Closed { .. })),
        "no reconnect attempt after reconnect:false, got {e:?}"
    );
    assert!(ev.next().await.is_none(), "the client task ended");
    assert!(matches!(
        c.publish("x", json!(1)).await,
        Err(ClientError::Closed(_))
    ));
}

#[tokio::test]
async fn token_callback_refreshes_before_expiry() {
    let (addr, _srv) = serve(node(), "127.0.0.1:0".parse().expect("addr")).await;
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let cfg = config(addr).token_callback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        // The first token lives 3 s; refreshed ones an hour.
        async move { Ok(token("bob", if n == 0 { 3 } else { 3600 })) }
    });
    let (c, mut ev) = Client::connect(cfg);
    until_event(&mut ev, "connected", is_connected).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh was asked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well past the first token's expiry, the same connection still works.
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        c.request("ping", Value::Null).await.expect("ping");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(10), ev.next()).await {
        assert!(
            !matches!(e, Event::State(State::Disconnected { .. })),
            "{e:?}"
        );
    }
}

#[tokio::test]
async fn a_dropped_connection_resumes_the_session_with_what_was_missed() {
    let node = node();
    let (addr, _srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(addr).await;
    let (c, mut ev) = Client::connect(config(proxy.addr));
    c.subscribe("room").await.expect("subscribe");
    c.publish("room", json!(1)).await.expect("publish");
    assert_eq!(collect(&mut ev, "room", 1).await, vec![1]);
    // Freeze first so nothing is in flight, then cut: an unexpected disconnect.
    proxy.freeze_down.store(true, Ordering::SeqCst);
    proxy.freeze_up.store(true, Ordering::SeqCst);
    proxy.cut();
    until_event(&mut ev, "disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    for i in 2..=5 {
        node.publish(
            "room",
            Data::json(&i.to_string()).expect("data"),
            None,
            None,
        )
        .await
        .expect("publish");
    }
    let e = until_event(&mut ev, "reconnected", is_connected).await;
    assert!(
        matches!(e, Event::State(State::Connected { resumed: true, .. })),
        "{e:?}"
    );
    assert_eq!(collect(&mut ev, "room", 4).await, vec![2, 3, 4, 5]);
}

#[tokio::test]
async fn loss_beyond_the_history_window_is_reported_as_a_gap() {
    let node = node();
    let (addr, srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (c, mut ev) = Client::connect(config(addr));
    c.subscribe("busy").await.expect("subscribe");
    stop(srv).await;
    until_event(&mut ev, "disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    // 150 publications while away; history keeps the last 100.
    for i in 1..=150 {
        node.publish(
            "busy",
            Data::json(&i.to_string()).expect("data"),
            None,
            None,
        )
        .await
        .expect("publish");
    }
    let (_, _srv2) = serve(node.clone(), addr).await;
    let e = until_event(&mut ev, "gap", |e| matches!(e, Event::Gap { .. })).await;
    assert_eq!(
        e,
        Event::Gap {
            channel: "busy".into(),
            reason: GapReason::Trimmed,
            last_offset: 0,
            resumed_at: 50
        }
    );
    let Event::Message(m) =
        until_event(&mut ev, "message", |e| matches!(e, Event::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(m.offset, 51);
}

#[tokio::test]
async fn server_side_subscriptions_deliver_messages() {
    let node = node();
    let (addr, _srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (_c, mut ev) = Client::connect(config(addr).token(token("erin", 3600)));
    until_event(&mut ev, "connected", is_connected).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while node.command_user(
        "erin",
        herald_core::ServerCommand::Subscribe("inbox".into()),
    ) == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session not registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let e = until_event(&mut ev, "subscribed", |e| {
        matches!(e, Event::Subscribed { .. })
    })
    .await;
    assert_eq!(
        e,
        Event::Subscribed {
            channel: "inbox".into()
        }
    );
    node.publish("inbox", Data::json("\"mail\"").expect("data"), None, None)
        .await
        .expect("publish");
    let Event::Message(m) =
        until_event(&mut ev, "message", |e| matches!(e, Event::Message(_))).await
    else {
        unreachable!()
    };
    assert_eq!(
        (m.channel.as_str(), m.data.clone()),
        ("inbox", json!("mail"))
    );
}

fn http_config(addr: SocketAddr, style: herald_client::HttpStyle) -> ClientConfig {
    let mut c = config(addr);
    c.transport = herald_client::Transport::Http(style);
    c
}

/// Over HTTP streaming and SSE (protocol §10), with a token in the header: subscribe, publish,
/// receive, history, and a clean close that ends the session on the server at once.
#[tokio::test]
async fn over_http_the_client_subscribes_publishes_and_closes_cleanly() {
    for style in [
        herald_client::HttpStyle::Stream,
        herald_client::HttpStyle::Sse,
    ] {
        let (addr, srv) = serve(node(), "127.0.0.1:0".parse().expect("addr")).await;
        let (c, mut ev) = Client::connect(http_config(addr, style).token(token("alice", 3600)));
        until_event(&mut ev, "connected", is_connected).await;
        c.subscribe("news").await.expect("subscribe");
        let ack = c.publish("news", json!({"n": 1})).await.expect("publish");
        assert_eq!(ack["offset"], 1, "{style:?}");
        let Event::Message(m) =
            until_event(&mut ev, "message", |e| matches!(e, Event::Message(_))).await
        else {
            unreachable!()
        };
        assert_eq!(
            (m.channel.as_str(), m.data.clone()),
            ("news", json!({"n": 1}))
        );
        let h = c
            .history("news", HistoryQuery::default())
            .await
            .expect("history");
        assert_eq!(h["publications"].as_array().map(Vec::len), Some(1));
        assert_eq!(srv.handle.connections(), 1);
        c.close().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while srv.handle.connections() != 0 || srv.handle.node().waiting_sessions() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{style:?}: the session did not end"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop(srv).await;
    }
}

/// An idle HTTP session stays up (the client pings; the server's keepalives feed the watchdog)
/// and a server restart is recovered without a gap or a duplicate, as over a WebSocket.
#[tokio::test]
async fn over_http_an_idle_session_lives_and_a_restart_is_recovered() {
    let node = node();
    let (addr, srv) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (c, mut ev) = Client::connect(http_config(addr, herald_client::HttpStyle::Stream));
    c.subscribe("feed").await.expect("subscribe");
    // Three heartbeat windows (500 ms + 500 ms) without a command: no disconnect.
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        until_event(&mut ev, "a disconnect", |e| {
            matches!(e, Event::State(State::Disconnected { .. }))
        })
        .await
    })
    .await;
    assert!(
        quiet.is_err(),
        "an idle HTTP session was dropped: {quiet:?}"
    );
    let publish = |i: u64| {
        let node = node.clone();
        async move {
            node.publish(
                "feed",
                Data::json(&i.to_string()).expect("data"),
                None,
                None,
            )
            .await
            .expect("publish");
        }
    };
    for i in 1..=10 {
        publish(i).await;
    }
    assert_eq!(
        collect(&mut ev, "feed", 10).await,
        (1..=10).collect::<Vec<_>>()
    );
    stop(srv).await;
    until_event(&mut ev, "disconnect", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    for i in 11..=20 {
        publish(i).await;
    }
    let (_, srv2) = serve(node.clone(), addr).await;
    until_event(&mut ev, "reconnected", is_connected).await;
    assert_eq!(
        collect(&mut ev, "feed", 10).await,
        (11..=20).collect::<Vec<_>>()
    );
    c.close().await;
    stop(srv2).await;
}

/// Issue 16: connections rotated every ~2 s (`connection.max_lifetime = "2s"`) for 20 s: the
/// client resumes each time at once, its application gets every publication exactly once and in order, and a
/// watcher on the channel sees no leave/join of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_connections_lose_nothing_repeat_nothing_and_do_not_flap_presence() {
    let node = node();
    let conn = ConnectionConfig {
        max_lifetime: Duration::from_millis(2_000),
        ping_interval: Duration::from_millis(100),
        ..conn_config()
    };
    let server = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    let s = Server::bind(server, conn, TlsConfig::default(), node.clone())
        .await
        .expect("bind");
    let addr = s.local_addr().expect("addr");
    let handle = s.handle();
    tokio::spawn(s.run());
    let (watcher, mut wev) = Client::connect(config(addr));
    until_event(&mut wev, "watcher connected", is_connected).await;
    watcher.subscribe("room").await.expect("watcher subscribe");
    let (sub, mut ev) = Client::connect(config(addr));
    until_event(&mut ev, "connected", is_connected).await;
    sub.subscribe("room").await.expect("subscribe");
    let Event::Join { who, .. } =
        until_event(&mut wev, "the join", |e| matches!(e, Event::Join { .. })).await
    else {
        unreachable!()
    };
    let sub_id = who["client_id"].clone();
    // Publish for ~20 s (about ten rotations of each connection) from the server side.
    const N: u64 = 1000;
    let publisher = tokio::spawn(async move {
        for n in 1..=N {
            let data = Data::json(&n.to_string()).expect("json");
            node.publish("room", data, None, None)
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut got = Vec::new();
    let mut resumed = 0;
    while got.len() < N as usize {
        match until_event(&mut ev, "the next message", |e| {
            matches!(
                e,
                Event::Message(_)
                    | Event::Gap { .. }
                    | Event::State(State::Connected { .. } | State::Disconnected { .. })
            )
        })
        .await
        {
            Event::Message(m) => got.push(m.data.as_u64().expect("n")),
            Event::State(State::Connected { resumed: r, .. }) => {
                assert!(r, "a rotation must resume the session");
                resumed += 1;
            }
            Event::State(State::Disconnected { code, .. }) => {
                assert_eq!(code, 4005, "only rotations end connections here")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.expect("publisher");
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "every publication once, in order"
    );
    assert!(
        resumed >= 5,
        "only {resumed} rotations in 20 s of 2 s lifetimes"
    );
    // The watcher (rotated too) saw the subscriber neither leave nor join again.
    while let Ok(Some(e)) = tokio::time::timeout(Duration::ZERO, wev.next()).await {
        if let Event::Join { who, .. } | Event::Leave { who, .. } = &e {
            assert_ne!(who["client_id"], sub_id, "presence flapped: {e:?}");
        }
    }
    let presence = watcher.presence("room").await.expect("presence");
    assert_eq!(
        presence["clients"].as_array().map(Vec::len),
        Some(2),
        "{presence}"
    );
    handle.shutdown();
}

/// Issue 16, reconnect storms: clients cut at once come back against `limits.connect_per_second`;
/// the excess is refused with 1013 and a retry hint, which the client waits (its own backoff
/// here is 20–200 ms), keeping its session: every one resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_admitted_at_the_node_rate_and_every_client_resumes() {
    // The bucket refills one per second between the first connections and the cut: with eight
    // clients a slow machine still sees refusals.
    const N: usize = 8;
    let engine = EngineConfig {
        default_namespace: Some(NamespaceOptions::dev()),
        limits: LimitsConfig {
            connect_per_second: 1,
            connect_burst: N as u32,
            connect_retry_jitter: Duration::from_secs(2),
            ..LimitsConfig::unlimited()
        },
        ..Default::default()
    };
    let verifier = Arc::new(Verifier::from_config(&engine.auth).expect("auth"));
    let node = Node::new(
        engine,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        Heartbeat {
            ping_interval_ms: 500,
            pong_timeout_ms: 500,
        },
        verifier,
    );
    let (addr, _srv) = serve(node, "127.0.0.1:0".parse().expect("addr")).await;
    let proxy = Proxy::start(addr).await;
    let mut clients = Vec::new();
    for i in 0..N {
        let (c, mut ev) = Client::connect(config(proxy.addr));
        until_event(&mut ev, "connected", is_connected).await;
        c.subscribe(&format!("storm:{i}")).await.expect("subscribe");
        clients.push((c, ev));
    }
    proxy.freeze_down.store(true, Ordering::SeqCst);
    proxy.freeze_up.store(true, Ordering::SeqCst);
    proxy.cut();
    let mut refused = 0;
    for (_, ev) in &mut clients {
        loop {
            match until_event(ev, "the client back", |e| matches!(e, Event::State(_))).await {
                Event::State(State::Connected { resumed, .. }) => {
                    assert!(resumed, "the session was not resumed");
                    break;
                }
                Event::State(State::Disconnected { code: 1013, .. }) => {
                    refused += 1;
                    let Event::State(State::Reconnecting { delay, .. }) =
                        until_event(ev, "the retry", |e| matches!(e, Event::State(_))).await
                    else {
                        panic!("no retry after a refusal");
                    };
                    assert!(
                        delay >= Duration::from_secs(1),
                        "the hint was not waited: {delay:?}"
                    );
                }
                _ => {}
            }
        }
    }
    assert!(refused > 0, "{N} clients at 1/s were all admitted at once");
}

/// An at-least-once namespace `orders` with a small window.
fn orders(window: u32, ack_timeout: Duration) -> Arc<Node> {
    node_with(|e| {
        e.namespaces.insert(
            "orders".into(),
            NamespaceOptions {
                delivery: herald_core::Delivery::AtLeastOnce,
                ack_window: window,
                ack_timeout,
                ..NamespaceOptions::dev()
            },
        );
    })
}

/// Issue 16: automatic acks. An application slower than the publisher gets every message of an
/// at-least-once channel once, in order: the window (4) holds the rest back in history and the
/// client's acks, sent as the application asks for the next event, bring them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_application_gets_every_at_least_once_message_once_paced_by_acks() {
    let node = orders(4, Duration::from_secs(30));
    let (addr, running) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let (client, mut events) = Client::connect(config(addr));
    let r = client.subscribe("orders:eu").await.expect("subscribe");
    assert_eq!(
        (r["delivery"].as_str(), r["ack_window"].as_u64()),
        (Some("at_least_once"), Some(4))
    );
    for n in 1..=40u64 {
        node.publish(
            "orders:eu",
            Data::json(&n.to_string()).expect("json"),
            None,
            None,
        )
        .await
        .expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < 40 {
        match tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event")
        {
            Some(Event::Message(m)) => {
                assert_eq!(m.data, json!(m.offset));
                got.push(m.offset);
                if m.offset % 5 == 0 {
                    // The application is busy; acks wait for it.
                    tokio::task::yield_now().await;
                }
            }
            Some(Event::Gap { .. }) => panic!("no gap expected"),
            Some(_) => {}
            None => panic!("client closed"),
        }
    }
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    client.close().await;
    stop(running).await;
}

/// Manual acks: the application acknowledges when it is done; without acks the window (3) is all
/// it gets, and redeliveries of what it holds are dropped as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_acks_drive_the_window_and_redeliveries_are_not_seen_twice() {
    let node = orders(3, Duration::from_millis(100));
    let (addr, running) = serve(node.clone(), "127.0.0.1:0".parse().expect("addr")).await;
    let mut cfg = config(addr);
    cfg.ack = herald_client::AckMode::Manual;
    let (client, mut events) = Client::connect(cfg);
    client.subscribe("orders:eu").await.expect("subscribe");
    for n in 1..=9u64 {
        node.publish(
            "orders:eu",
            Data::json(&n.to_string()).expect("json"),
            None,
            None,
        )
        .await
        .expect("publish");
    }
    let mut got = Vec::new();
    for batch in 1..=3u64 {
        while got.len() < (batch * 3) as usize {
            match tokio::time::timeout(WAIT, events.next())
                .await
                .expect("an event")
            {
                Some(Event::Message(m)) => got.push(m.offset),
                Some(Event::Gap { .. }) => panic!("no gap expected"),
                Some(_) => {}
                None => panic!("client closed"),
            }
        }
        // Done with this batch: the server sends the next one only now.
        client.ack("orders:eu", batch * 3);
    }
    assert_eq!(got, (1..=9).collect::<Vec<_>>(), "each once, in order");
    client.close().await;
    stop(running).await;
}

/// Issue 16: a node that refuses a new connection with 503 and `Retry-After` (reconnect-storm
/// control, before the upgrade) is not asked again before that — over a WebSocket and over an
/// HTTP transport.
#[tokio::test]
async fn a_503_with_retry_after_delays_the_next_attempt() {
    for http in [false, true] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let body = r#"{"code":"unavailable","message":"busy","retryable":true}"#;
                    let answer = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        let cfg = if http {
            http_config(addr, herald_client::HttpStyle::Stream)
        } else {
            config(addr)
        };
        let (client, mut events) = Client::connect(cfg);
        let delay = loop {
            match tokio::time::timeout(WAIT, events.next())
                .await
                .expect("an event")
            {
                Some(Event::State(State::Reconnecting { delay, .. })) => break delay,
                Some(_) => {}
                None => panic!("client closed"),
            }
        };
        assert!(
            delay >= Duration::from_secs(7),
            "http={http}: the next attempt comes after {delay:?}, before Retry-After"
        );
        drop(client);
    }
}

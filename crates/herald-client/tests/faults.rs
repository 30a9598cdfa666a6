//! The client under simulated network conditions (herald-testkit's fault proxy) against an
//! in-process Herald server on real sockets: a reset mid-stream under 200 ms RTT with jitter, a
//! 64 kbit/s link, a blackholed path (both directions silent, sockets open), a connection cut in
//! the middle of a frame, and a real-network blackhole (nftables drop rules in a network
//! namespace). Every wait is for an event or a condition, with generous deadlines; timings are
//! printed (`--nocapture`) and summarized in docs/fault-harness.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_client::{Backoff, Client, ClientConfig, Event, Events, State};
use herald_core::memory::{MemoryBroker, MemoryPresence};
use herald_core::{
    AuthConfig, EngineConfig, Heartbeat, LimitsConfig, NamespaceOptions, Node, Verifier,
};
use herald_proto::Data;
use herald_server::{ConnectionConfig, Handle, Server, ServerConfig, TlsConfig};
use herald_testkit::faults::{Direction, FaultProxy};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);
const SECRET: &str = "faults-test-secret-faults-test-secret";

/// An in-process server with the memory engine; shut down on drop.
struct Herald {
    node: Arc<Node>,
    addr: SocketAddr,
    handle: Handle,
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Serve on 127.0.0.1 with these heartbeat settings and a 1000-message history.
async fn herald(ping_interval: Duration, pong_timeout: Duration) -> Herald {
    herald_announcing(ping_interval, pong_timeout, ping_interval, pong_timeout).await
}

/// [`herald`], telling clients (`connected`) other heartbeat values than the server enforces.
async fn herald_announcing(
    ping_interval: Duration,
    pong_timeout: Duration,
    announced_ping_interval: Duration,
    announced_pong_timeout: Duration,
) -> Herald {
    let engine = EngineConfig {
        default_namespace: Some(NamespaceOptions {
            history_size: 1000,
            ..NamespaceOptions::dev()
        }),
        limits: LimitsConfig::unlimited(),
        auth: AuthConfig {
            hmac_secret: Some(SECRET.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let verifier = Arc::new(Verifier::from_config(&engine.auth).expect("auth"));
    let node = Node::new(
        engine,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        Heartbeat {
            ping_interval_ms: announced_ping_interval.as_millis() as u64,
            pong_timeout_ms: announced_pong_timeout.as_millis() as u64,
        },
        verifier,
    );
    let conn = ConnectionConfig {
        ping_interval,
        pong_timeout,
        ..Default::default()
    };
    let server = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        shutdown_reconnect_jitter: Duration::from_millis(50),
        shutdown_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let s = Server::bind(server, conn, TlsConfig::default(), node.clone())
        .await
        .expect("bind");
    let addr = s.local_addr().expect("addr");
    let handle = s.handle();
    tokio::spawn(s.run());
    Herald { node, addr, handle }
}

fn client_config(addr: SocketAddr) -> ClientConfig {
    let mut c = ClientConfig::new(format!("ws://{addr}/ws"));
    c.backoff = Backoff {
        min: Duration::from_millis(20),
        first_max: Duration::from_millis(60),
        cap: Duration::from_millis(200),
        ..Default::default()
    };
    c.watchdog_margin = Duration::from_millis(300);
    c
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Publish `{"n": n, "t": <ms>, "pad": …}` from the server side (`pad` bytes of padding).
async fn publish(node: &Node, channel: &str, n: u64, pad: usize) {
    let data = json!({"n": n, "t": now_ms(), "pad": "x".repeat(pad)});
    node.publish(
        channel,
        Data::json(&data.to_string()).expect("data"),
        None,
        None,
    )
    .await
    .expect("publish");
}

/// The next event, or a panic naming `what` at `deadline`.
async fn next(events: &mut Events, what: &str, deadline: tokio::time::Instant) -> Event {
    tokio::time::timeout_at(deadline, events.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("event stream ended waiting for {what}"))
}

/// Wait for an event matching `pred`; fails after `WAIT`. Messages and gaps must not be skipped
/// silently: use `Log` where they matter.
async fn until_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = next(events, what, deadline).await;
        assert!(
            !matches!(e, Event::Message(_) | Event::Gap { .. }),
            "unexpected {e:?} while waiting for {what}"
        );
        if pred(&e) {
            return e;
        }
    }
}

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::State(State::Connected { .. }))
}

/// Poll `cond` every 5 ms until it holds; fails after `WAIT`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a client reported, with times.
#[derive(Default)]
struct Log {
    /// (offset, data) of every message, in arrival order.
    messages: Vec<(u64, Value)>,
    gaps: Vec<Event>,
    /// (when, code, reason)
    disconnects: Vec<(Instant, u16, String)>,
    /// (when, resumed)
    connects: Vec<(Instant, bool)>,
}

impl Log {
    fn record(&mut self, e: Event) {
        match e {
            Event::Message(m) => self.messages.push((m.offset, m.data)),
            Event::Gap { .. } => self.gaps.push(e),
            Event::State(State::Disconnected { code, reason, .. }) => {
                self.disconnects.push((Instant::now(), code, reason))
            }
            Event::State(State::Connected { resumed, .. }) => {
                self.connects.push((Instant::now(), resumed))
            }
            _ => {}
        }
    }

    /// Record events until `n` messages arrived (or `stop` says so).
    async fn until_messages(&mut self, events: &mut Events, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.messages.len() < n {
            let e = next(
                events,
                &format!("message {}", self.messages.len() + 1),
                deadline,
            )
            .await;
            self.record(e);
        }
    }

    /// Offsets must be exactly `from..=to`, in order, each once, and the data must match.
    fn assert_exactly(&self, from: u64, to: u64) {
        let offsets: Vec<u64> = self.messages.iter().map(|(o, _)| *o).collect();
        assert_eq!(
            offsets,
            (from..=to).collect::<Vec<_>>(),
            "gap, duplicate or reorder"
        );
        for (o, d) in &self.messages {
            assert_eq!(d["n"], json!(o), "message {o} carries {d}");
        }
        assert!(self.gaps.is_empty(), "gaps: {:?}", self.gaps);
    }
}

/// `herald_close_codes_total{code="…"}` in this process (every server here shares the recorder).
fn close_code_count(code: u16) -> u64 {
    let handle = herald_server::metrics::install().expect("the Prometheus recorder");
    let label = format!("code=\"{code}\"");
    handle
        .render()
        .lines()
        .filter(|l| l.starts_with("herald_close_codes_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn reset_mid_stream_under_200ms_rtt_resumes_without_gap_or_duplicate() {
    let h = herald(Duration::from_secs(1), Duration::from_secs(2)).await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    // 100 ms + U(0, 20 ms) each way: RTT 200–240 ms.
    proxy.set_rtt(Duration::from_millis(200), Duration::from_millis(20));
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("feed").await.expect("subscribe");
    let total = 150u64;
    let node = h.node.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=total {
            publish(&node, "feed", i, 16).await;
            // Pacing (a stream over time), not synchronization.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut log = Log::default();
    let started = Instant::now();
    let mut resets = vec![40usize, 100];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while (log.messages.len() as u64) < total {
        if resets.first() == Some(&log.messages.len()) {
            resets.remove(0);
            assert_eq!(proxy.reset(), 1, "one connection to reset");
        }
        let e = next(&mut ev, "the stream", deadline).await;
        log.record(e);
    }
    publisher.await.expect("publisher");
    log.assert_exactly(1, total);
    assert_eq!(log.disconnects.len(), 2, "{:?}", log.disconnects);
    assert_eq!(log.connects.len(), 2);
    for ((down, code, reason), (up, resumed)) in log.disconnects.iter().zip(&log.connects) {
        assert_eq!(*code, 1006, "{reason}");
        assert!(*resumed, "the session was not resumed after a reset");
        eprintln!(
            "reset under 200 ms RTT: reconnected and resumed in {} ms ({reason})",
            ms(up.duration_since(*down))
        );
    }
    assert_eq!(proxy.accepted(), 3);
    eprintln!(
        "reset under 200 ms RTT: {total} messages in {} ms",
        ms(started.elapsed())
    );
    c.close().await;
}

#[tokio::test]
async fn publishes_in_flight_across_a_reset_under_200ms_rtt_are_applied_once() {
    let h = herald(Duration::from_secs(1), Duration::from_secs(2)).await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    proxy.set_rtt(Duration::from_millis(200), Duration::from_millis(20));
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("pubs").await.expect("subscribe");
    // 60 publishes, one every 10 ms without waiting for acks: ~20 in flight at any time.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let publisher = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 1..=60u64 {
                let (c, tx) = (c.clone(), tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send((i, c.publish("pubs", json!({"n": i})).await)).await;
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut log = Log::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut reset = false;
    while log.messages.len() < 60 {
        if !reset && log.messages.len() >= 15 {
            reset = true;
            assert_eq!(proxy.reset(), 1);
        }
        let e = next(&mut ev, "published messages", deadline).await;
        log.record(e);
    }
    publisher.await.expect("publisher");
    let mut acks = Vec::new();
    for _ in 0..60 {
        let (i, r) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("every publish resolves")
            .expect("result");
        acks.push((i, r.unwrap_or_else(|e| panic!("publish {i}: {e}"))));
    }
    // Each publish applied once: 60 offsets, every value once.
    let offsets: Vec<u64> = log.messages.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=60).collect::<Vec<_>>());
    let mut values: Vec<u64> = log
        .messages
        .iter()
        .map(|(_, d)| d["n"].as_u64().expect("n"))
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=60).collect::<Vec<_>>(),
        "a publish applied twice or lost"
    );
    for (i, ack) in &acks {
        let o = ack["offset"].as_u64().expect("offset");
        assert_eq!(
            log.messages[o as usize - 1].1["n"],
            json!(i),
            "the ack of publish {i} names offset {o}"
        );
    }
    assert!(log.gaps.is_empty(), "{:?}", log.gaps);
    let retried = acks.iter().filter(|(_, a)| a["duplicate"] == true).count();
    eprintln!(
        "publishes across a reset: 60 applied once ({retried} acks were for a retry of an applied one)"
    );
    c.close().await;
}

#[tokio::test]
async fn a_64_kbit_link_keeps_order_heartbeats_and_publishes() {
    // 8000 bytes/s each way. A ping waits behind whatever is queued for the link, so the pong
    // timeout must exceed the worst queueing delay (here a 10 KB burst ≈ 1.3 s) plus the RTT.
    let h = herald(Duration::from_secs(1), Duration::from_secs(4)).await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    for d in Direction::BOTH {
        proxy.set_bandwidth(d, Some(8000));
    }
    proxy.set_rtt(Duration::from_millis(40), Duration::ZERO);
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("slow").await.expect("subscribe");
    let started = Instant::now();
    let node = h.node.clone();
    let publisher = tokio::spawn(async move {
        // ≈250-byte frames: 20/s ≈ 5 KB/s (60 % of the link), a 40-message burst, 20/s again.
        for i in 1..=120u64 {
            publish(&node, "slow", i, 100).await;
            if !(61..100).contains(&i) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // Publishes from the client go up the same link (and their acks come down behind the data).
    let up = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..10 {
                let ack = c.publish("slow-up", json!({"i": i})).await;
                acks.push(ack.expect("publish over the slow link")["offset"].clone());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            acks
        })
    };
    let mut log = Log::default();
    let mut worst = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.messages.len() < 120 {
        let e = next(&mut ev, "slow messages", deadline).await;
        if let Event::Message(m) = &e {
            worst = worst.max(now_ms().saturating_sub(m.data["t"].as_u64().unwrap_or(0)));
        }
        log.record(e);
    }
    publisher.await.expect("publisher");
    let acks = up.await.expect("publishes");
    assert_eq!(acks, (1..=10).map(|i| json!(i)).collect::<Vec<_>>());
    let took = started.elapsed();
    log.assert_exactly(1, 120);
    assert!(
        log.disconnects.is_empty(),
        "the connection was dropped: {:?}",
        log.disconnects
    );
    assert_eq!(proxy.accepted(), 1, "the client reconnected");
    assert_eq!(h.handle.connections(), 1);
    // The cap was really in force: no more than rate × time (+ one burst) went down.
    let down = proxy.forwarded(Direction::Down);
    let allowed = 8000.0 * took.as_secs_f64() + 2000.0;
    assert!(
        (down as f64) <= allowed,
        "{down} bytes in {took:?} through 64 kbit/s"
    );
    assert!(
        took >= Duration::from_secs(4),
        "several ping intervals passed"
    );
    eprintln!(
        "64 kbit/s: 120 messages + 10 publishes in {} ms, {down} bytes down ({:.0} B/s), worst delivery latency {worst} ms",
        ms(took),
        down as f64 / took.as_secs_f64()
    );
    c.close().await;
}

#[tokio::test]
async fn blackhole_server_heartbeat_closes_client_watchdog_reconnects_and_recovers() {
    let h = herald(Duration::from_millis(500), Duration::from_millis(1000)).await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("bh").await.expect("subscribe");
    for i in 1..=5 {
        publish(&h.node, "bh", i, 16).await;
    }
    let mut log = Log::default();
    log.until_messages(&mut ev, 5).await;
    until("one server connection", || h.handle.connections() == 1).await;
    let timeouts_before = close_code_count(4000);

    let t0 = Instant::now();
    proxy.blackhole();
    // Published while the path is dead: into the old socket, then into the waiting session.
    for i in 6..=15 {
        publish(&h.node, "bh", i, 16).await;
    }
    until("the server to close the blackholed connection", || {
        h.handle.connections() == 0
    })
    .await;
    let server_detected = t0.elapsed();
    // Its FIN (after the 4000 close frame) reached the proxy, which holds it.
    proxy
        .wait_for("the server's FIN", WAIT, |p| p.fins(Direction::Down) >= 1)
        .await;
    assert!(
        close_code_count(4000) > timeouts_before,
        "no 4000 (heartbeat timeout) close was recorded"
    );
    let e = until_event(&mut ev, "the watchdog", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    let client_detected = t0.elapsed();
    let Event::State(State::Disconnected {
        reason, reconnect, ..
    }) = e
    else {
        unreachable!()
    };
    assert!(reason.contains("watchdog"), "{reason}");
    assert!(reconnect);
    for i in 16..=20 {
        publish(&h.node, "bh", i, 16).await;
    }
    // The client is trying again: the proxy holds its new connection.
    proxy
        .wait_for("a reconnect attempt", WAIT, |p| p.accepted() >= 2)
        .await;
    assert_eq!(
        h.handle.connections(),
        0,
        "a held attempt reached the server"
    );
    let lifted = Instant::now();
    proxy.lift_blackhole();
    let e = until_event(&mut ev, "reconnected", is_connected).await;
    let reconnected = lifted.elapsed();
    assert!(
        matches!(e, Event::State(State::Connected { resumed: true, .. })),
        "a session closed by the heartbeat (4000) must be resumable: {e:?}"
    );
    log.messages.clear();
    log.until_messages(&mut ev, 15).await;
    log.assert_exactly(6, 20);
    eprintln!(
        "blackhole (ping 500 ms, pong 1000 ms, margin 300 ms): server closed it after {} ms, client watchdog after {} ms, reconnected {} ms after the blackhole lifted",
        ms(server_detected),
        ms(client_detected),
        ms(reconnected)
    );
    c.close().await;
}

/// The path heals after the client gave up but before the server noticed: the client's new
/// connection arrives while the server still holds the old one (a client whose watchdog is
/// tighter than the server's heartbeat, modelled by announcing a shorter heartbeat than the
/// server enforces). Whether the session resumes or the client recovers on a new one, nothing is
/// lost or doubled.
#[tokio::test]
async fn blackhole_healing_before_the_server_notices_loses_nothing() {
    // Clients are told ping 500 ms + pong 500 ms, so the watchdog fires after 1.3 s of
    // silence; the server's heartbeat gives up only after 4–4.5 s.
    let h = herald_announcing(
        Duration::from_millis(500),
        Duration::from_secs(4),
        Duration::from_millis(500),
        Duration::from_millis(500),
    )
    .await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("heal").await.expect("subscribe");
    for i in 1..=5 {
        publish(&h.node, "heal", i, 16).await;
    }
    let mut log = Log::default();
    log.until_messages(&mut ev, 5).await;
    let t0 = Instant::now();
    proxy.blackhole();
    for i in 6..=10 {
        publish(&h.node, "heal", i, 16).await;
    }
    until_event(&mut ev, "the watchdog", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    let client_detected = t0.elapsed();
    assert_eq!(
        h.handle.connections(),
        1,
        "the server already noticed: the race this test is about did not happen"
    );
    for i in 11..=15 {
        publish(&h.node, "heal", i, 16).await;
    }
    proxy.lift_blackhole();
    let e = until_event(&mut ev, "reconnected", is_connected).await;
    let Event::State(State::Connected { resumed, .. }) = e else {
        unreachable!()
    };
    for i in 16..=20 {
        publish(&h.node, "heal", i, 16).await;
    }
    log.messages.clear();
    log.until_messages(&mut ev, 15).await;
    log.assert_exactly(6, 20);
    eprintln!(
        "healed before the server noticed: client gave up after {} ms, then {} (server connections now {})",
        ms(client_detected),
        if resumed {
            "resumed the session"
        } else {
            "recovered on a new session"
        },
        h.handle.connections()
    );
    c.close().await;
}

/// A network switch: the old path dies silently for good while a new one works, so the client's
/// new connection (its watchdog is tighter than the server's heartbeat, as above) asks to resume
/// a session the server still holds on the dead connection. It cannot resume; it must recover
/// on a new session — and the old session, parked when the server's heartbeat finally fires,
/// must not deliver anything twice.
#[tokio::test]
async fn a_network_switch_while_the_server_holds_the_dead_connection_loses_nothing() {
    let h = herald_announcing(
        Duration::from_millis(500),
        Duration::from_secs(3),
        Duration::from_millis(500),
        Duration::from_millis(500),
    )
    .await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("switch").await.expect("subscribe");
    for i in 1..=5 {
        publish(&h.node, "switch", i, 16).await;
    }
    let mut log = Log::default();
    log.until_messages(&mut ev, 5).await;
    let timeouts_before = close_code_count(4000);
    let t0 = Instant::now();
    assert_eq!(proxy.freeze_current(), 1);
    for i in 6..=10 {
        publish(&h.node, "switch", i, 16).await;
    }
    until_event(&mut ev, "the watchdog", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    let e = until_event(&mut ev, "reconnected", is_connected).await;
    let reconnected = t0.elapsed();
    let Event::State(State::Connected { resumed, .. }) = e else {
        unreachable!()
    };
    assert_eq!(
        h.handle.connections(),
        2,
        "the server should still hold the dead connection"
    );
    assert!(
        !resumed,
        "resumed a session that the server still held on another connection"
    );
    for i in 11..=15 {
        publish(&h.node, "switch", i, 16).await;
    }
    log.messages.clear();
    log.until_messages(&mut ev, 10).await;
    log.assert_exactly(6, 15);
    // The server's heartbeat ends the dead connection; its session is parked and never resumed.
    until("the server to drop the dead connection", || {
        h.handle.connections() == 1
    })
    .await;
    let server_detected = t0.elapsed();
    assert!(close_code_count(4000) > timeouts_before, "no 4000 recorded");
    for i in 16..=20 {
        publish(&h.node, "switch", i, 16).await;
    }
    log.messages.clear();
    log.until_messages(&mut ev, 5).await;
    log.assert_exactly(16, 20);
    // Nothing else arrives (no late duplicates from the old session): one more message is the
    // very next event of that kind.
    publish(&h.node, "switch", 21, 16).await;
    log.messages.clear();
    log.until_messages(&mut ev, 1).await;
    log.assert_exactly(21, 21);
    assert!(log.disconnects.is_empty(), "{:?}", log.disconnects);
    eprintln!(
        "network switch: client recovered on a new session {} ms after the old path died; the server dropped the dead connection after {} ms",
        ms(reconnected),
        ms(server_detected)
    );
    c.close().await;
}

#[tokio::test]
async fn cut_mid_frame_client_sees_eof_reconnects_and_recovers() {
    let h = herald(Duration::from_secs(1), Duration::from_secs(2)).await;
    let proxy = FaultProxy::start(h.addr).await.expect("proxy");
    let (c, mut ev) = Client::connect(client_config(proxy.addr()));
    until_event(&mut ev, "connected", is_connected).await;
    c.subscribe("cut").await.expect("subscribe");
    for i in 1..=3 {
        publish(&h.node, "cut", i, 16).await;
    }
    let mut log = Log::default();
    log.until_messages(&mut ev, 3).await;
    // The next frame is a 20 KB message: 100 bytes of it get through, then FIN.
    let before = proxy.forwarded(Direction::Down);
    assert_eq!(proxy.cut_after(Direction::Down, 100), 1);
    let t0 = Instant::now();
    publish(&h.node, "cut", 4, 20_000).await;
    let e = until_event(&mut ev, "the broken frame", |e| {
        matches!(e, Event::State(State::Disconnected { .. }))
    })
    .await;
    let detected = t0.elapsed();
    let Event::State(State::Disconnected { code, reason, .. }) = e else {
        unreachable!()
    };
    assert_eq!(code, 1006, "{reason}");
    assert!(reason.starts_with("connection lost"), "{reason}");
    assert!(
        proxy.forwarded(Direction::Down) - before <= 100,
        "more than the cut went through"
    );
    publish(&h.node, "cut", 5, 16).await;
    let e = until_event(&mut ev, "reconnected", is_connected).await;
    let reconnected = t0.elapsed();
    assert!(
        matches!(e, Event::State(State::Connected { resumed: true, .. })),
        "{e:?}"
    );
    publish(&h.node, "cut", 6, 16).await;
    log.messages.clear();
    log.until_messages(&mut ev, 3).await;
    log.assert_exactly(4, 6);
    assert_eq!(
        log.messages[0].1["pad"].as_str().map(str::len),
        Some(20_000),
        "the truncated message came back whole"
    );
    eprintln!(
        "cut mid-frame: client saw `{reason}` after {} ms, resumed at {} ms",
        ms(detected),
        ms(reconnected)
    );
    c.close().await;
}

/// The same blackhole on the real network stack: the client and the server in a network
/// namespace of their own, every packet of the server's port dropped by nftables (input hook:
/// no RST, no ICMP, TCP retransmits into the void), then the rules removed.
#[cfg(target_os = "linux")]
#[test]
fn real_network_blackhole_in_a_network_namespace() {
    let Some(ns) = herald_testkit::faults::netns::NetNs::create() else {
        return;
    };
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let h = herald(Duration::from_millis(500), Duration::from_millis(1000)).await;
            let mut cfg = client_config(h.addr);
            // A SYN into the blackhole is retried by the kernel at 1 s, 3 s, 7 s: time out
            // attempts quickly so that one starts soon after the path comes back.
            cfg.connect_timeout = Duration::from_secs(1);
            let (c, mut ev) = Client::connect(cfg);
            until_event(&mut ev, "connected", is_connected).await;
            c.subscribe("real").await.expect("subscribe");
            for i in 1..=5 {
                publish(&h.node, "real", i, 16).await;
            }
            let mut log = Log::default();
            log.until_messages(&mut ev, 5).await;
            let timeouts_before = close_code_count(4000);
            let t0 = Instant::now();
            ns.drop_port(h.addr.port()).expect("nft drop rules");
            for i in 6..=15 {
                publish(&h.node, "real", i, 16).await;
            }
            until("the server to close the blackholed connection", || {
                h.handle.connections() == 0
            })
            .await;
            let server_detected = t0.elapsed();
            assert!(close_code_count(4000) > timeouts_before, "no 4000 recorded");
            let e = until_event(&mut ev, "the watchdog", |e| {
                matches!(e, Event::State(State::Disconnected { .. }))
            })
            .await;
            let client_detected = t0.elapsed();
            assert!(
                matches!(&e, Event::State(State::Disconnected { reason, .. }) if reason.contains("watchdog")),
                "{e:?}"
            );
            for i in 16..=20 {
                publish(&h.node, "real", i, 16).await;
            }
            let lifted = Instant::now();
            ns.clear_rules().expect("remove the rules");
            let e = until_event(&mut ev, "reconnected", is_connected).await;
            let reconnected = lifted.elapsed();
            assert!(
                matches!(e, Event::State(State::Connected { resumed: true, .. })),
                "{e:?} (rules: {})",
                ns.rules()
            );
            log.messages.clear();
            log.until_messages(&mut ev, 15).await;
            log.assert_exactly(6, 20);
            eprintln!(
                "real blackhole (nftables in netns {}): server closed it after {} ms, client watchdog after {} ms, reconnected {} ms after the rules were removed",
                ns.name(),
                ms(server_detected),
                ms(client_detected),
                ms(reconnected)
            );
            c.close().await;
        });
    });
}

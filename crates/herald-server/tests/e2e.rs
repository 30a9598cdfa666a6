//! End-to-end tests: a real server on 127.0.0.1:0, real WebSocket clients.

mod support;

use std::time::Duration;

use herald_core::{NamespaceOptions, SlowConsumerPolicy};
use serde_json::json;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn publish_reaches_json_and_msgpack_subscribers_in_order() {
    let s = start_default().await;
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect_with(&s, Some("herald.v1.msgpack")).await;
    let mut p = Client::connect_with(&s, Some("herald.v1.json")).await;
    assert_eq!(a.welcome["protocol"], "herald.v1.json");
    assert!(
        a.welcome["resume_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    a.subscribe("news").await;
    b.subscribe("news").await;
    for i in 1..=3 {
        let ack = p.publish("news", json!({"n": i, "text": "héllo"})).await;
        assert_eq!(ack["offset"], i);
    }
    for c in [&mut a, &mut b] {
        for i in 1..=3 {
            let m = c.next_message().await;
            assert_eq!(
                (
                    m["channel"].clone(),
                    m["offset"].clone(),
                    m["data"]["n"].clone()
                ),
                (json!("news"), json!(i), json!(i))
            );
            assert_eq!(m["data"]["text"], "héllo");
            assert!(m["epoch"].as_str().is_some());
            assert!(m["time"].as_u64().is_some());
            assert_eq!(m["info"]["client_id"], p.welcome["client_id"]);
        }
    }
}

#[tokio::test]
async fn every_command_with_an_id_gets_one_reply() {
    let s = start_default().await;
    let mut c = Client::connect(&s).await;
    let (r, _) = c.call("ping", json!({})).await;
    assert_eq!(r["type"], "pong");
    let (r, _) = c.call("teleport", json!({"x": 1})).await;
    assert_eq!(
        (r["type"].clone(), r["payload"]["code"].clone()),
        (json!("error"), json!("unknown_type"))
    );
    assert_eq!(r["payload"]["retryable"], false);
    let (r, _) = c.call("subscribe", json!({"channel": "bad channel"})).await;
    assert_eq!(r["payload"]["code"], "invalid_channel");
    let (r, _) = c.call("subscribe", json!({"channel": 42})).await;
    assert_eq!(r["payload"]["code"], "bad_request");
    let (r, _) = c.call("unsubscribe", json!({"channel": "x"})).await;
    assert_eq!(r["payload"]["code"], "not_subscribed");
    c.subscribe("x").await;
    let (r, _) = c.call("subscribe", json!({"channel": "x"})).await;
    assert_eq!(r["payload"]["code"], "already_subscribed");
    // Still connected and serving.
    c.publish("x", json!(1)).await;
    assert_eq!(c.next_message().await["offset"], 1);
}

#[tokio::test]
async fn namespace_rules_are_enforced() {
    let mut setup = Setup::default();
    setup.engine.default_namespace = None;
    let open = NamespaceOptions {
        anonymous: true,
        allow_subscribe: true,
        ..Default::default()
    };
    setup.engine.namespaces.insert("feed".into(), open);
    setup
        .engine
        .namespaces
        .insert("locked".into(), NamespaceOptions::default());
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    let (r, _) = c.call("subscribe", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["code"], "unknown_namespace");
    // Secure defaults: a namespace admits no anonymous client unless it says so.
    let (r, _) = c.call("subscribe", json!({"channel": "locked:1"})).await;
    assert_eq!(r["payload"]["code"], "unauthorized");
    c.subscribe("feed:1").await;
    let (r, _) = c
        .call("publish", json!({"channel": "feed:1", "data": 1}))
        .await;
    assert_eq!(r["payload"]["code"], "permission_denied");
    let (r, _) = c.call("history", json!({"channel": "feed:1"})).await;
    assert_eq!(r["payload"]["code"], "history_disabled");
    let (r, _) = c.call("presence", json!({"channel": "feed:1"})).await;
    assert_eq!(r["payload"]["code"], "presence_disabled");
}

#[tokio::test]
async fn malformed_frames_get_errors_then_close_after_too_many() {
    let mut setup = Setup::default();
    setup.engine.session.max_violations = 3;
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    c.send_raw(Message::Text("{not json".into())).await;
    let e = c.next().await;
    assert_eq!(
        (e["type"].clone(), e["payload"]["code"].clone()),
        (json!("error"), json!("malformed"))
    );
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(c.next().await["payload"]["code"], "wrong_frame_type");
    c.send_raw(Message::Text(
        r#"{"type":"publish","id":"p","payload":{"channel":"c"}}"#.into(),
    ))
    .await;
    let e = c.next().await;
    assert_eq!(
        (e["id"].clone(), e["payload"]["code"].clone()),
        (json!("p"), json!("bad_request"))
    );
    c.send_raw(Message::Text("[]".into())).await;
    let (advisory, _) = c.closed_with(4500).await;
    assert_eq!(advisory["reconnect"], false);
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let mut setup = Setup::default();
    setup.conn.max_message_size = 1024;
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    let big = format!(
        r#"{{"type":"publish","payload":{{"channel":"c","data":"{}"}}}}"#,
        "x".repeat(2000)
    );
    c.send_raw(Message::Text(big.into())).await;
    let (_, code) = c.until_close().await;
    assert_eq!(code, Some(1009));
}

#[tokio::test]
async fn unsupported_subprotocol_is_refused_before_upgrade() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = start_default().await;
    let mut req = format!("ws://{}/ws", s.addr)
        .into_client_request()
        .expect("req");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("hdr"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
}

#[tokio::test]
async fn recovery_delivers_exactly_the_missed_messages_in_order() {
    let s = start_default().await;
    let mut p = Client::connect(&s).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("room").await;
    for i in 1..=3 {
        p.publish("room", json!(i)).await;
    }
    let mut last = json!(null);
    for _ in 0..3 {
        last = c.next_message().await;
    }
    let (offset, epoch) = (last["offset"].clone(), last["epoch"].clone());
    assert_eq!(offset, 3);
    drop(c);
    for i in 4..=8 {
        p.publish("room", json!(i)).await;
    }
    let mut c = Client::connect(&s).await;
    let (reply, _) = c
        .call(
            "subscribe",
            json!({"channel": "room", "recover": {"offset": offset, "epoch": epoch}}),
        )
        .await;
    assert_eq!(reply["payload"]["recovered"], true, "{reply}");
    assert_eq!(reply["payload"]["missed"], 5);
    assert_eq!(reply["payload"]["offset"], 8);
    p.publish("room", json!(9)).await;
    for i in 4..=9 {
        let m = c.next_message().await;
        assert_eq!(
            (m["offset"].clone(), m["data"].clone()),
            (json!(i), json!(i))
        );
    }
}

#[tokio::test]
async fn recovery_past_the_history_window_says_not_recovered() {
    let mut setup = Setup::default();
    let mut small = NamespaceOptions::dev();
    small.history_size = 3;
    setup.engine.namespaces.insert("small".into(), small);
    let s = start(setup).await;
    let mut p = Client::connect(&s).await;
    let mut epoch = json!(null);
    for i in 1..=10 {
        epoch = p.publish("small:c", json!(i)).await["epoch"].clone();
    }
    let mut c = Client::connect(&s).await;
    let (r, _) = c
        .call(
            "subscribe",
            json!({"channel": "small:c", "recover": {"offset": 2, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        (
            r["payload"]["recovered"].clone(),
            r["payload"]["missed"].clone()
        ),
        (json!(false), json!(3))
    );
    for i in 8..=10 {
        assert_eq!(c.next_message().await["offset"], i);
    }
    let (r, _) = c
        .call(
            "subscribe",
            json!({"channel": "small:d", "recover": {"offset": 2, "epoch": "nope"}}),
        )
        .await;
    assert_eq!(r["payload"]["recovered"], false);
    // History paging.
    let h = c
        .ok(
            "history",
            json!({"channel": "small:c", "limit": 2, "reverse": true}),
        )
        .await;
    let offs: Vec<_> = h["publications"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["offset"].clone())
        .collect();
    assert_eq!(offs, vec![json!(10), json!(9)]);
    assert_eq!(h["offset"], 10);
}

#[tokio::test]
async fn resume_within_grace_restores_subscriptions_without_leave_or_join() {
    let s = start_default().await;
    let mut watcher = Client::connect(&s).await;
    watcher.subscribe("chat:lobby").await;
    let mut a = Client::connect(&s).await;
    a.subscribe("chat:lobby").await;
    let a_id = a.welcome["client_id"].clone();
    let token = a.welcome["resume_token"].clone();
    let join = watcher.next().await;
    assert_eq!(
        (join["type"].clone(), join["payload"]["client_id"].clone()),
        (json!("join"), a_id.clone())
    );
    drop(a); // no close frame: an unexpected disconnect
    until("session to wait for resume", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    for i in 1..=3 {
        watcher.publish("chat:lobby", json!(i)).await;
    }
    let mut a = Client::connect(&s).await;
    let (r, pushes) = a.call("resume", json!({"token": token})).await;
    assert!(pushes.is_empty(), "{pushes:?}");
    assert_eq!(r["payload"]["client_id"], a_id);
    assert_eq!(r["payload"]["buffered"], 3);
    assert_ne!(r["payload"]["resume_token"], token);
    for i in 1..=3 {
        assert_eq!(a.next_message().await["data"], i);
    }
    // The subscription is live again.
    watcher.publish("chat:lobby", json!(4)).await;
    assert_eq!(a.next_message().await["data"], 4);
    let presence = watcher
        .ok("presence", json!({"channel": "chat:lobby"}))
        .await;
    assert_eq!(presence["clients"].as_array().expect("clients").len(), 2);
    // The watcher saw only its own messages: no leave/join for the resumed client.
    for _ in 1..=4 {
        let f = watcher.next().await;
        assert_eq!(f["type"], "message", "unexpected push {f}");
    }
    let (r, _) = a.call("resume", json!({"token": token})).await;
    assert_eq!(r["payload"]["code"], "resume_not_allowed");
}

#[tokio::test]
async fn resume_fills_frames_lost_in_flight_from_history() {
    let s = start_default().await;
    let mut p = Client::connect(&s).await;
    let mut a = Client::connect(&s).await;
    a.subscribe("room").await;
    let token = a.welcome["resume_token"].clone();
    for i in 1..=4 {
        p.publish("room", json!(i)).await;
    }
    // The client read only the first message; 2..4 were "lost in flight" when the socket died.
    let first = a.next_message().await;
    drop(a);
    until("session to wait for resume", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    p.publish("room", json!(5)).await;
    let mut a = Client::connect(&s).await;
    let (r, _) = a
        .call(
            "resume",
            json!({"token": token, "positions": {"room": {"offset": 1, "epoch": first["epoch"]}}}),
        )
        .await;
    assert_eq!(r["payload"]["channels"][0]["recovered"], true, "{r}");
    for i in 2..=5 {
        assert_eq!(a.next_message().await["offset"], i);
    }
}

/// A watcher and a member subscribed to `channel`; the watcher has seen the member's join.
async fn watched_member(s: &TestServer, channel: &str) -> (Client, Client) {
    let mut watcher = Client::connect(s).await;
    watcher.subscribe(channel).await;
    let mut member = Client::connect(s).await;
    member.subscribe(channel).await;
    let join = watcher.next().await;
    assert_eq!(
        (join["type"].clone(), join["payload"]["client_id"].clone()),
        (json!("join"), member.welcome["client_id"].clone())
    );
    (watcher, member)
}

#[tokio::test]
async fn expired_session_leaves_and_cannot_resume() {
    let mut setup = Setup::default();
    setup.engine.session.resume_grace = Duration::from_millis(200);
    let s = start(setup).await;
    let (mut watcher, a) = watched_member(&s, "chat:x").await;
    let token = a.welcome["resume_token"].clone();
    drop(a);
    let leave = watcher.next().await;
    assert_eq!(leave["type"], "leave");
    let mut b = Client::connect(&s).await;
    let (r, _) = b.call("resume", json!({"token": token})).await;
    assert_eq!(r["payload"]["code"], "session_not_found");
}

#[tokio::test]
async fn clean_close_ends_the_session_at_once() {
    let s = start_default().await;
    let (mut watcher, mut a) = watched_member(&s, "chat:y").await;
    a.ws.close(None).await.expect("close");
    let leave = watcher.next().await;
    assert_eq!(leave["type"], "leave");
    assert_eq!(s.handle.node().waiting_sessions(), 0);
}

#[tokio::test]
async fn half_open_connections_are_detected() {
    let mut setup = Setup::default();
    setup.conn.ping_interval = Duration::from_millis(200);
    setup.conn.pong_timeout = Duration::from_millis(300);
    let s = start(setup).await;
    let mut raw = raw_client(s.addr, None).await;
    let frames = read_raw_frames(&mut raw).await;
    let ops: Vec<u8> = frames.iter().map(|f| f.0).collect();
    assert!(ops.contains(&0x9), "expected a ping: {ops:?}");
    let close = frames.iter().find(|f| f.0 == 0x8).expect("close frame");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 4000);
    let advisory = frames
        .iter()
        .find(|f| f.0 == 0x1 && f.1.windows(10).any(|w| w == b"disconnect"))
        .expect("advisory");
    assert!(String::from_utf8_lossy(&advisory.1).contains("4000"));
    until("server to drop the connection", || {
        s.handle.connections() == 0
    })
    .await;
}

/// Heartbeats come from one wheel per server, not a timer per connection: a client that answers
/// keeps getting pings, interval after interval (a lost wake-up would stop them silently), and
/// is never closed.
#[tokio::test]
async fn answered_pings_keep_coming_and_the_connection_stays_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut setup = Setup::default();
    setup.conn.ping_interval = Duration::from_millis(100);
    setup.conn.pong_timeout = Duration::from_millis(300);
    let s = start(setup).await;
    let mut raw = raw_client(s.addr, None).await;
    let (mut pings, mut buf, mut chunk) = (0, Vec::new(), vec![0u8; 4096]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while pings < 6 {
        let n = tokio::time::timeout_at(deadline, raw.read(&mut chunk))
            .await
            .expect("pings keep coming")
            .expect("read");
        assert!(n > 0, "the server closed an answering connection");
        buf.extend_from_slice(&chunk[..n]);
        while let Some((payload, op)) = herald_proto::frame::parse_unmasked(&buf) {
            let total = payload.as_ptr() as usize - buf.as_ptr() as usize + payload.len();
            assert_ne!(op as u8, 0x8, "closed: {:?}", payload);
            if op as u8 == 0x9 {
                pings += 1;
                raw.write_all(&[0x8a, 0x80, 1, 2, 3, 4])
                    .await
                    .expect("pong");
            }
            buf.drain(..total);
        }
    }
    assert_eq!(s.handle.connections(), 1);
}

#[tokio::test]
async fn app_level_ping_is_answered() {
    let s = start_default().await;
    let mut c = Client::connect(&s).await;
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.next().await["type"], "pong");
}

async fn slow_consumer_case(policy: SlowConsumerPolicy) -> (TestServer, tokio::net::TcpStream) {
    let mut setup = Setup::default();
    setup.engine.session.queue_max_messages = 256;
    setup.engine.session.queue_max_bytes = 1024 * 1024;
    // Only the namespace's policy may act on the client that never reads: on a busy machine
    // the 10 000 publications can outlast the write timeout (4003) and the heartbeat (4000),
    // which closed the `drop_oldest` client in a CI run.
    setup.conn.write_timeout = Duration::from_secs(600);
    setup.conn.ping_interval = Duration::from_secs(3600);
    let mut ns = NamespaceOptions::dev();
    ns.history_size = 0;
    ns.slow_consumer = policy;
    setup.engine.namespaces.insert("feed".into(), ns);
    let s = start(setup).await;
    let mut raw = raw_client(s.addr, Some(4096)).await;
    raw.write_all(&masked_text(
        br#"{"type":"subscribe","payload":{"channel":"feed:x"}}"#,
    ))
    .await
    .expect("write");
    let mut fast = Client::connect(&s).await;
    fast.subscribe("feed:x").await;
    until("raw subscription", || {
        s.handle.node().hub().count("feed:x") == 2
    })
    .await;
    let mut p = Client::connect(&s).await;
    let data = json!("x".repeat(1000));
    let reader = tokio::spawn(async move {
        for i in 1..=10_000u64 {
            let m = fast.next_message().await;
            assert_eq!(m["offset"], i);
        }
    });
    // Paced by acks (one in 50) so that a client which reads keeps up with its 256-frame queue.
    for i in 1..=10_000 {
        if i % 50 == 0 {
            p.publish("feed:x", data.clone()).await;
        } else {
            p.send(json!({"type": "publish", "payload": {"channel": "feed:x", "data": data}}))
                .await;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast reader")
        .expect("fast reader ok");
    (s, raw)
}

#[tokio::test]
async fn slow_consumer_is_disconnected_and_others_get_everything() {
    let (s, raw) = slow_consumer_case(SlowConsumerPolicy::Disconnect).await;
    until("slow consumer to be closed", || s.handle.connections() == 2).await;
    drop(raw);
}

#[tokio::test]
async fn drop_oldest_keeps_a_slow_consumer_connected_with_bounded_queue() {
    let (s, raw) = slow_consumer_case(SlowConsumerPolicy::DropOldest).await;
    assert_eq!(s.handle.connections(), 3, "slow client stays connected");
    drop(raw);
}

#[tokio::test]
async fn idempotent_publish_is_applied_once() {
    let s = start_default().await;
    let mut sub = Client::connect(&s).await;
    sub.subscribe("orders").await;
    let mut p = Client::connect(&s).await;
    let first = p
        .ok(
            "publish",
            json!({"channel": "orders", "data": {"id": 1}, "idempotency_key": "k1"}),
        )
        .await;
    let again = p
        .ok(
            "publish",
            json!({"channel": "orders", "data": {"id": 1}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(
        (first["offset"].clone(), again["offset"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(again["duplicate"], true);
    p.publish("orders", json!({"id": 2})).await;
    assert_eq!(sub.next_message().await["data"]["id"], 1);
    assert_eq!(
        sub.next_message().await["data"]["id"],
        2,
        "the duplicate was not delivered"
    );
}

#[tokio::test]
async fn presence_and_stats() {
    let s = start_default().await;
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect(&s).await;
    a.subscribe("chat:p").await;
    b.subscribe("chat:p").await;
    let st = a.ok("presence_stats", json!({"channel": "chat:p"})).await;
    assert_eq!(
        (st["clients"].clone(), st["users"].clone()),
        (json!(2), json!(1))
    );
    let p = a.ok("presence", json!({"channel": "chat:p"})).await;
    let mut ids: Vec<String> = p["clients"]
        .as_array()
        .expect("a")
        .iter()
        .map(|c| c["client_id"].as_str().expect("s").to_owned())
        .collect();
    ids.sort();
    let mut want = vec![
        a.welcome["client_id"].as_str().expect("s").to_owned(),
        b.welcome["client_id"].as_str().expect("s").to_owned(),
    ];
    want.sort();
    assert_eq!(ids, want);
    b.ok("unsubscribe", json!({"channel": "chat:p"})).await;
    let st = a.ok("presence_stats", json!({"channel": "chat:p"})).await;
    assert_eq!(st["clients"], 1);
}

#[tokio::test]
async fn msgpack_clients_get_errors_and_replies_in_msgpack() {
    let s = start_default().await;
    let mut c = Client::connect_with(&s, Some("herald.v1.msgpack")).await;
    let (r, _) = c.call("nope", json!({})).await;
    assert_eq!(r["payload"]["code"], "unknown_type");
    c.send_raw(Message::Text("{}".into())).await;
    assert_eq!(c.next().await["payload"]["code"], "wrong_frame_type");
    c.subscribe("m").await;
    c.publish("m", json!({"k": [1, 2]})).await;
    assert_eq!(c.next_message().await["data"]["k"][1], 2);
}

#[tokio::test]
async fn graceful_shutdown_advises_and_closes_with_1001() {
    let s = start_default().await;
    let mut a = Client::connect(&s).await;
    let mut b = Client::connect(&s).await;
    a.subscribe("n").await;
    s.handle.shutdown();
    for c in [&mut a, &mut b] {
        let (adv, _) = c.closed_with(1001).await;
        assert_eq!(adv["reconnect"], true);
        assert!(
            adv["reconnect_after_ms"]
                .as_u64()
                .is_some_and(|ms| ms <= 5000)
        );
    }
    tokio::time::timeout(WAIT, s.task)
        .await
        .expect("server stops")
        .expect("join")
        .expect("run ok");
}

#[tokio::test]
async fn connections_over_the_node_limit_are_closed_with_4002() {
    let mut setup = Setup::default();
    setup.server.max_connections = 1;
    let s = start(setup).await;
    let _first = Client::connect(&s).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", s.addr))
        .await
        .expect("connect");
    let mut second = Client::from_stream(ws);
    let (adv, frames) = second.closed_with(4002).await;
    assert_eq!(adv["reconnect"], true);
    assert!(
        frames.iter().all(|f| f["type"] != "connected"),
        "no session for a refused connection"
    );
    until("refused connection to be gone", || {
        s.handle.connections() == 1
    })
    .await;
}

/// Issue 16: with `connection.max_lifetime` a connection is rotated (advisory + close 4005)
/// within 90–100 % of its lifetime; its session waits, so a `resume` on a new connection gets
/// what was published meanwhile, once, and the session never ended (no `disconnect` or
/// `unsubscribe` event, hence no `leave`; the Rust client's test watches for leave/join).
#[tokio::test]
async fn a_rotated_connection_resumes_with_nothing_lost_and_no_leave() {
    let mut setup = Setup {
        conn: herald_server::ConnectionConfig {
            max_lifetime: Duration::from_millis(1_000),
            ping_interval: Duration::from_millis(100),
            ..herald_server::ConnectionConfig::default()
        },
        ..Setup::default()
    };
    // One connection per IP: the old connection's slot must be free for the resume at once
    // (it was held through the closing linger, and the reconnect got 429).
    setup.engine.limits.max_connections_per_ip = 1;
    let s = start(setup).await;
    let node = s.handle.node().clone();
    let publish = |n: u32| {
        let node = node.clone();
        async move {
            let data = herald_proto::Data::json(&n.to_string()).expect("json");
            node.publish("chat:lobby", data, None, None)
                .await
                .expect("publish");
        }
    };
    // Before the connection exists, so that its lifetime is not overstated on a slow machine.
    let opened = std::time::Instant::now();
    let mut a = Client::connect(&s).await;
    a.subscribe("chat:lobby").await;
    let a_id = a.welcome["client_id"].clone();
    let token = a.welcome["resume_token"].clone();
    publish(1).await;
    assert_eq!(a.next_message().await["data"], 1);
    let (advisory, _) = a.closed_with(4005).await;
    let lived = opened.elapsed();
    assert_eq!(advisory["reconnect"], true, "{advisory}");
    assert!(
        lived >= Duration::from_millis(900),
        "rotated after {lived:?}, before 90 % of the lifetime"
    );
    until("session to wait for resume", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    publish(2).await;
    let mut a = Client::connect(&s).await;
    let (r, _) = a.call("resume", json!({"token": token})).await;
    assert_eq!(r["payload"]["client_id"], a_id, "{r}");
    assert_eq!(r["payload"]["buffered"], 1, "{r}");
    assert_eq!(a.next_message().await["data"], 2);
    publish(3).await;
    assert_eq!(a.next_message().await["data"], 3);
    let (events, _) = s.handle.node().events().since(0, 1000);
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.client_id.as_deref() == a_id.as_str())
        .filter(|e| {
            matches!(
                e.kind,
                herald_core::journal::EventKind::Disconnect
                    | herald_core::journal::EventKind::Unsubscribe
            )
        })
        .collect();
    assert!(ended.is_empty(), "the rotated session ended: {ended:?}");
}

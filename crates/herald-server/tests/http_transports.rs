//! The HTTP transports (docs/protocol.md §10) over real TCP: HTTP streaming, SSE and
//! long-polling carry the same sessions as `/ws` — subscribe, publish, resume with recovery,
//! limits, auth and Origin checks, and clients that go away.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::http::{self, post, request};
use support::*;

fn sub(id: &str, channel: &str) -> Value {
    json!({"type": "subscribe", "id": id, "payload": {"channel": channel}})
}

fn publish(id: &str, channel: &str, data: Value) -> Value {
    json!({"type": "publish", "id": id, "payload": {"channel": channel, "data": data}})
}

#[tokio::test]
async fn a_streamed_session_subscribes_publishes_and_receives() {
    let s = start_default().await;
    let mut st = post(s.addr, "/http/stream", &[], &json!([sub("1", "news")])).await;
    assert_eq!(st.status, 200);
    assert_eq!(
        st.header("content-type"),
        Some("application/x-ndjson; charset=utf-8")
    );
    assert_eq!(st.header("x-accel-buffering"), Some("no"));
    assert!(
        st.header("cache-control")
            .is_some_and(|v| v.contains("no-cache"))
    );
    let session = st.session();
    let welcome = st.line().await.expect("connected");
    assert_eq!(welcome["type"], "connected", "{welcome}");
    let r = st.line().await.expect("reply");
    assert_eq!(
        (r["type"].clone(), r["id"].clone()),
        (json!("reply"), json!("1")),
        "{r}"
    );

    // A WebSocket client and the HTTP session see each other's publications.
    let mut ws = Client::connect(&s).await;
    ws.subscribe("news").await;
    ws.publish("news", json!({"from": "ws"})).await;
    let m = st.app_line().await.expect("message");
    assert_eq!(
        (m["type"].clone(), m["payload"]["data"].clone()),
        (json!("message"), json!({"from": "ws"}))
    );
    assert_eq!(
        http::send(
            s.addr,
            &session,
            &json!(publish("2", "news", json!({"from": "http"})))
        )
        .await,
        204
    );
    // The ack, and the session's own publication (it is a subscriber), in either order.
    let mut two = [
        st.app_line().await.expect("ack"),
        st.app_line().await.expect("own message"),
    ];
    two.sort_by_key(|m| m["type"].to_string());
    assert_eq!(
        (two[0]["type"].clone(), two[0]["payload"]["offset"].clone()),
        (json!("message"), json!(2))
    );
    assert_eq!(
        (two[1]["id"].clone(), two[1]["payload"]["offset"].clone()),
        (json!("2"), json!(2)),
        "{two:?}"
    );
    assert_eq!(ws.next_message().await["data"], json!({"from": "ws"}));
    assert_eq!(ws.next_message().await["data"], json!({"from": "http"}));
    assert_eq!(s.handle.connections(), 2);
}

#[tokio::test]
async fn sse_names_the_session_first_and_carries_json_events() {
    let s = start_default().await;
    let mut st = request(
        s.addr,
        "GET",
        "/http/sse",
        &[("accept", "text/event-stream")],
        "",
    )
    .await;
    assert_eq!(st.status, 200);
    assert_eq!(
        st.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let (event, data) = st.event().await.expect("session event");
    assert_eq!(event, "session");
    let session = serde_json::from_str::<Value>(&data).expect("json")["session"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(session, st.session());
    let (event, data) = st.event().await.expect("connected");
    assert_eq!(event, "message");
    assert_eq!(
        serde_json::from_str::<Value>(&data).expect("json")["type"],
        "connected"
    );
    assert_eq!(http::send(s.addr, &session, &sub("1", "feed")).await, 204);
    let (_, reply) = st.event().await.expect("reply");
    assert!(reply.contains(r#""type":"reply""#), "{reply}");
    let mut ws = Client::connect(&s).await;
    // Data with line breaks still arrives whole (split into `data:` lines, joined by the reader).
    let body = json!({"channel": "feed", "data": {"text": "two\nlines"}});
    ws.publish("feed", body["data"].clone()).await;
    let (_, msg) = st.event().await.expect("message");
    let msg: Value = serde_json::from_str(&msg).expect("json");
    assert_eq!(msg["payload"]["data"]["text"], "two\nlines");
    // SSE carries JSON only.
    let mp = request(
        s.addr,
        "GET",
        "/http/sse",
        &[("herald-protocol", "herald.v1.msgpack")],
        "",
    )
    .await;
    assert_eq!(mp.status, 400);
}

#[tokio::test]
async fn long_polls_deliver_batches_and_resend_one_that_was_not_acknowledged() {
    let s = start_default().await;
    let first = post(s.addr, "/http/poll", &[], &json!([sub("1", "news")])).await;
    assert_eq!(first.status, 200);
    let session = first.session();
    let seq1 = first.header("herald-seq").expect("seq").to_owned();
    let batch = first.json().await;
    assert_eq!(batch[0]["type"], "connected", "{batch}");
    let poll = |ack: String| {
        let session = session.clone();
        async move {
            post(
                s.addr,
                "/http/poll",
                &[("herald-session", &session), ("herald-ack", &ack)],
                &json!(null),
            )
            .await
        }
    };
    // The subscribe reply may have come with `connected` or come next.
    let mut seen: Vec<Value> = batch.as_array().expect("array").clone();
    let mut ack = seq1;
    while !seen.iter().any(|m| m["id"] == "1") {
        let r = poll(ack.clone()).await;
        ack = r.header("herald-seq").expect("seq").to_owned();
        seen.extend(r.json().await.as_array().expect("array").clone());
    }
    let mut ws = Client::connect(&s).await;
    ws.publish("news", json!(1)).await;
    let r = poll(ack.clone()).await;
    let seq = r.header("herald-seq").expect("seq").to_owned();
    let b = r.json().await;
    assert_eq!(
        (b[0]["type"].clone(), b[0]["payload"]["offset"].clone()),
        (json!("message"), json!(1)),
        "{b}"
    );
    // The answer was "lost": polling with the old ack gets the same batch again.
    let again = poll(ack.clone()).await;
    assert_eq!(again.header("herald-seq"), Some(seq.as_str()));
    assert_eq!(again.json().await, b);
    // Acknowledged: nothing is sent twice; the next publication comes next.
    ws.publish("news", json!(2)).await;
    let r = poll(seq.clone()).await;
    let b2 = r.json().await;
    assert_eq!(b2[0]["payload"]["offset"], 2, "{b2}");
}

#[tokio::test]
async fn a_second_poll_ends_the_first_with_an_empty_answer() {
    let s = start_default().await;
    let first = post(s.addr, "/http/poll", &[], &json!(null)).await;
    let session = first.session();
    let ack = first.header("herald-seq").expect("seq").to_owned();
    first.json().await;
    let h = [
        ("herald-session", session.as_str()),
        ("herald-ack", ack.as_str()),
    ];
    let waiting = tokio::spawn({
        let (addr, session, ack) = (s.addr, session.clone(), ack.clone());
        async move {
            let r = post(
                addr,
                "/http/poll",
                &[("herald-session", &session), ("herald-ack", &ack)],
                &json!(null),
            )
            .await;
            (r.header("herald-seq").map(str::to_owned), r.json().await)
        }
    });
    // Wait until the first poll is attached, then replace it.
    until("the first poll", || s.handle.connections() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut ws = Client::connect(&s).await;
    let second = tokio::spawn({
        let addr = s.addr;
        let h: Vec<(String, String)> = h
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            post(addr, "/http/poll", &h, &json!(null))
                .await
                .json()
                .await
        }
    });
    let (seq, body) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("first poll ended")
        .expect("task");
    assert_eq!((seq, body), (None, json!([])));
    ws.ok("ping", json!({})).await;
    let _ = http::send(s.addr, &session, &json!({"type": "ping", "id": "p"})).await;
    let b = tokio::time::timeout(WAIT, second)
        .await
        .expect("second poll")
        .expect("task");
    assert_eq!(b[0]["id"], "p", "{b}");
}

#[tokio::test]
async fn msgpack_streams_are_length_prefixed_both_ways() {
    let s = start_default().await;
    let cmd = rmp_serde::to_vec_named(&sub("1", "news")).expect("mp");
    let mut body = (cmd.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&cmd);
    let mut st = request(
        s.addr,
        "POST",
        "/http/stream",
        &[("herald-protocol", "herald.v1.msgpack")],
        body,
    )
    .await;
    assert_eq!(st.status, 200);
    assert_eq!(
        st.header("content-type"),
        Some("application/vnd.herald.v1.msgpack-stream")
    );
    assert_eq!(st.msgpack().await.expect("connected")["type"], "connected");
    assert_eq!(st.msgpack().await.expect("reply")["id"], "1");
    let mut ws = Client::connect(&s).await;
    ws.publish("news", json!({"n": 1})).await;
    let m = st.msgpack().await.expect("message");
    assert_eq!(m["payload"]["data"], json!({"n": 1}));
}

#[tokio::test]
async fn a_cut_stream_resumes_on_a_new_one_with_every_missed_message() {
    let s = start_default().await;
    let mut st = post(s.addr, "/http/stream", &[], &json!([sub("1", "news")])).await;
    let welcome = st.line().await.expect("connected");
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    st.until_line("reply").await;
    let mut ws = Client::connect(&s).await;
    ws.publish("news", json!(1)).await;
    let first = st.app_line().await.expect("message");
    assert_eq!(first["payload"]["offset"], 1);
    let epoch = first["payload"]["epoch"].clone();
    drop(st);
    // The session waits for `resume` (no leave); messages published meanwhile are kept.
    until("the stream to be lost", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    for i in 2..=4 {
        ws.publish("news", json!(i)).await;
    }
    let resume = json!({"type": "resume", "id": "r", "payload": {"token": token, "positions": {"news": {"offset": 1, "epoch": epoch}}}});
    let mut st = post(s.addr, "/http/stream", &[], &json!([resume])).await;
    assert_eq!(st.line().await.expect("connected")["type"], "connected");
    let (reply, _) = st.until_line("reply").await;
    assert_eq!(
        reply["payload"]["channels"][0]["recovered"], true,
        "{reply}"
    );
    let mut offsets = Vec::new();
    while offsets.len() < 3 {
        let m = st.line().await.expect("message");
        if m["type"] == "message" {
            offsets.push(m["payload"]["offset"].as_u64().expect("offset"));
        }
    }
    assert_eq!(offsets, vec![2, 3, 4]);
}

#[tokio::test]
async fn requests_over_the_limits_get_their_documented_errors() {
    let s = start_default().await;
    let big = json!({"type": "ping", "pad": "x".repeat(70 * 1024)});
    let r = post(s.addr, "/http/stream", &[], &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json().await["code"], "too_large");
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"type": "ping", "id": i.to_string()}))
        .collect();
    let r = post(s.addr, "/http/stream", &[], &json!(many)).await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (413, json!("too_large"))
    );
    let r = request(s.addr, "POST", "/http/stream", &[], "[{").await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (400, json!("malformed"))
    );
    let r = post(
        s.addr,
        "/http/send",
        &[("herald-session", &format!("{}.x", "0".repeat(32)))],
        &json!({}),
    )
    .await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (404, json!("session_not_found"))
    );
    let r = post(
        s.addr,
        "/http/send",
        &[("herald-session", "nonsense")],
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 400);
    // A session's requests are rate limited.
    let mut st = post(s.addr, "/http/stream", &[], &json!(null)).await;
    let session = st.session();
    st.line().await.expect("connected");
    let mut statuses = Vec::new();
    for i in 0..60 {
        statuses.push(
            http::send(
                s.addr,
                &session,
                &json!({"type": "ping", "id": i.to_string()}),
            )
            .await,
        );
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses[0], 204);
}

#[tokio::test]
async fn origins_and_preflights_follow_the_allowlist() {
    let mut setup = Setup::default();
    setup.server.allowed_origins = vec!["https://app.example".into()];
    let s = start(setup).await;
    let r = post(
        s.addr,
        "/http/stream",
        &[("origin", "https://evil.example")],
        &json!(null),
    )
    .await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (403, json!("permission_denied"))
    );
    let r = request(
        s.addr,
        "OPTIONS",
        "/http/send",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "herald-session, content-type",
            ),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|h| h.contains("herald-session") && h.contains("herald-resume"))
    );
    let mut st = post(
        s.addr,
        "/http/stream",
        &[("origin", "https://app.example")],
        &json!(null),
    )
    .await;
    assert_eq!(st.status, 200);
    assert_eq!(
        st.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        st.header("access-control-expose-headers")
            .is_some_and(|h| h.contains("herald-session") && h.contains("retry-after"))
    );
    assert_eq!(st.line().await.expect("connected")["type"], "connected");
}

#[tokio::test]
async fn abandoned_poll_sessions_are_reclaimed_after_the_session_timeout() {
    let mut setup = Setup::default();
    setup.http.session_timeout = Duration::from_millis(300);
    setup.engine.session.resume_grace = Duration::from_millis(300);
    let s = start(setup).await;
    for _ in 0..20 {
        let r = post(s.addr, "/http/poll", &[], &json!([sub("1", "news")])).await;
        assert_eq!(r.status, 200);
        r.json().await;
    }
    assert_eq!(s.handle.connections(), 20);
    until("abandoned sessions to be lost", || {
        s.handle.connections() == 0
    })
    .await;
    until("their grace to end", || {
        s.handle.node().waiting_sessions() == 0
    })
    .await;
}

#[tokio::test]
async fn a_stream_whose_client_sends_nothing_gets_a_heartbeat_timeout() {
    let mut setup = Setup::default();
    setup.conn.ping_interval = Duration::from_millis(200);
    setup.conn.pong_timeout = Duration::from_millis(200);
    let s = start(setup).await;
    let mut st = post(s.addr, "/http/stream", &[], &json!(null)).await;
    let session = st.session();
    st.line().await.expect("connected");
    // Requests keep it alive…
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            http::send(
                s.addr,
                &session,
                &json!({"type": "ping", "id": i.to_string()})
            )
            .await,
            204
        );
        assert_eq!(st.line().await.expect("pong")["type"], "pong");
    }
    // …silence ends it with the heartbeat advisory, and the session waits for `resume`.
    let (d, _) = st.until_line("disconnect").await;
    assert_eq!(d["payload"]["code"], 4000, "{d}");
    assert!(
        st.line().await.is_none(),
        "the stream ends after the advisory"
    );
    until("the session to wait for resume", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
}

#[tokio::test]
async fn first_message_auth_and_token_failures() {
    let mut setup = Setup::default();
    setup.engine.auth.anonymous = false;
    setup.engine.auth.hmac_secret = Some("test-secret-test-secret-test-secret!".into());
    let s = start(setup).await;
    let r = post(s.addr, "/http/stream", &[], &json!(null)).await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (401, json!("unauthorized"))
    );
    let r = post(
        s.addr,
        "/http/stream",
        &[],
        &json!([{"type": "auth", "id": "a", "payload": {"token": "x.y.z"}}]),
    )
    .await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (401, json!("token_invalid"))
    );
    let r = post(
        s.addr,
        "/http/stream",
        &[("authorization", "Bearer nope")],
        &json!(null),
    )
    .await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (401, json!("token_invalid"))
    );
    let r = post(s.addr, "/http/poll", &[], &json!([{"type": "ping"}])).await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (401, json!("unauthorized"))
    );
    assert_eq!(s.handle.connections(), 0);
}

#[tokio::test]
async fn shutdown_ends_http_sessions_with_the_going_away_advisory() {
    let s = start_default().await;
    let mut st = post(s.addr, "/http/stream", &[], &json!(null)).await;
    st.line().await.expect("connected");
    s.handle.shutdown();
    let (d, _) = st.until_line("disconnect").await;
    assert_eq!(d["payload"]["code"], 1001, "{d}");
    assert_eq!(d["payload"]["reconnect"], true);
    assert!(st.line().await.is_none());
    tokio::time::timeout(WAIT, s.task)
        .await
        .expect("server stops")
        .expect("join")
        .expect("run");
}

#[tokio::test]
async fn a_stream_that_is_not_read_meets_the_slow_consumer_policy() {
    use tokio::io::AsyncWriteExt;
    let mut setup = Setup::default();
    setup.engine.session.queue_max_messages = 64;
    setup.conn.write_timeout = Duration::from_millis(500);
    let s = start(setup).await;
    // A client with a tiny receive buffer that never reads its stream.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = sock.connect(s.addr).await.expect("connect");
    let body = json!([sub("1", "flood")]).to_string();
    let req = format!(
        "POST /http/stream HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    until("the session", || s.handle.connections() == 1).await;
    let mut ws = Client::connect(&s).await;
    // Far more than the queue (64) and the socket buffers hold.
    let big = "x".repeat(16 * 1024);
    for _ in 0..600 {
        ws.publish("flood", json!(big)).await;
    }
    // The queue overflowed (disconnect policy): the session ends — not kept for `resume`, as a
    // lost client's would be — once the stuck write times out; the publisher is unharmed.
    until("the slow session to end", || s.handle.connections() == 1).await;
    assert_eq!(
        s.handle.node().waiting_sessions(),
        0,
        "ended as a slow consumer"
    );
    assert_eq!(ws.call("ping", json!({})).await.0["type"], "pong");
    assert_eq!(
        s.handle.node().waiting_sessions(),
        0,
        "a slow consumer is not resumable"
    );
}

#[tokio::test]
async fn streams_count_as_connections_not_as_pending_http_connections() {
    let mut setup = Setup::default();
    setup.server.max_http_connections_per_ip = 2;
    setup.engine.limits.max_connections_per_ip = 5;
    let s = start(setup).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut st = post(s.addr, "/http/stream", &[], &json!(null)).await;
        assert_eq!(st.status, 200);
        assert_eq!(st.line().await.expect("connected")["type"], "connected");
        streams.push(st);
    }
    // The HTTP cap still leaves room for requests; the per-IP connection cap applies.
    let r = post(s.addr, "/http/stream", &[], &json!(null)).await;
    assert_eq!(
        (r.status, r.json().await["code"].clone()),
        (429, json!("rate_limited"))
    );
    assert_eq!(s.handle.connections(), 5);
}

/// Read feed events until `n` `message` events came: (all events, the messages' data).
async fn feed_messages(st: &mut http::Reply, n: usize) -> (Vec<(String, String)>, Vec<Value>) {
    let (mut all, mut msgs) = (Vec::new(), Vec::new());
    while msgs.len() < n {
        let (event, data) = st.event().await.expect("feed event");
        if event == "message" {
            msgs.push(serde_json::from_str::<Value>(&data).expect("json")["payload"].clone());
        }
        all.push((event, data));
    }
    (all, msgs)
}

#[tokio::test]
async fn the_one_way_feed_recovers_exactly_what_a_cut_missed_from_last_event_id() {
    let s = start_default().await;
    let path = "/http/subscribe?channel=news&channel=sport";
    let mut st = request(s.addr, "GET", path, &[("accept", "text/event-stream")], "").await;
    assert_eq!(st.status, 200);
    assert_eq!(
        st.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    for _ in 0..2 {
        let (event, data) = st.event().await.expect("subscribed");
        assert_eq!(event, "subscribed", "{data}");
    }
    let mut ws = Client::connect(&s).await;
    ws.publish("news", json!("n1")).await;
    ws.publish("sport", json!("s1")).await;
    let (_, msgs) = feed_messages(&mut st, 2).await;
    assert_eq!(
        (msgs[0]["data"].clone(), msgs[1]["data"].clone()),
        (json!("n1"), json!("s1"))
    );
    // The raw event carries the position in both channels.
    let last_id = {
        ws.publish("news", json!("n2")).await;
        let raw = loop {
            let (event, data) = st.event_with_id().await.expect("event");
            if event == "message" {
                break data;
            }
        };
        raw.0
    };
    let epochs: Vec<&str> = last_id
        .split(',')
        .map(|p| p.rsplit_once(':').expect("pos").0)
        .collect();
    assert_eq!(last_id, format!("{}:2,{}:1", epochs[0], epochs[1]));
    drop(st);
    until("the feed to end", || s.handle.connections() == 1).await;
    for d in ["n3", "n4"] {
        ws.publish("news", json!(d)).await;
    }
    ws.publish("sport", json!("s2")).await;
    let mut st = request(s.addr, "GET", path, &[("last-event-id", &last_id)], "").await;
    assert_eq!(st.status, 200);
    let (all, msgs) = feed_messages(&mut st, 3).await;
    let got: Vec<(Value, Value)> = msgs
        .iter()
        .map(|m| (m["channel"].clone(), m["data"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("news"), json!("n3")),
            (json!("news"), json!("n4")),
            (json!("sport"), json!("s2"))
        ]
    );
    assert!(all.iter().all(|(e, _)| e != "gap"), "{all:?}");
    assert_eq!(
        all.iter()
            .filter(|(e, d)| e == "subscribed" && d.contains(r#""recovered":true"#))
            .count(),
        2,
        "{all:?}"
    );
}

#[tokio::test]
async fn the_feed_reports_a_gap_history_cannot_fill_and_refuses_what_it_may_not_follow() {
    let mut setup = Setup::default();
    let mut ns = herald_core::NamespaceOptions::dev();
    ns.history_size = 2;
    setup.engine.namespaces.insert("short".into(), ns);
    let mut private = herald_core::NamespaceOptions::dev();
    private.allow_subscribe = false;
    setup.engine.namespaces.insert("closed".into(), private);
    let s = start(setup).await;
    let mut ws = Client::connect(&s).await;
    let r = ws.publish("short:x", json!(1)).await;
    let epoch = r["epoch"].as_str().expect("epoch").to_owned();
    for i in 2..=6 {
        ws.publish("short:x", json!(i)).await;
    }
    let id = format!("{epoch}:1");
    let mut st = request(
        s.addr,
        "GET",
        "/http/subscribe?channel=short:x",
        &[("last-event-id", &id)],
        "",
    )
    .await;
    assert_eq!(st.status, 200);
    let (event, data) = st.event().await.expect("gap");
    assert_eq!(
        (event.as_str(), data.as_str()),
        ("gap", r#"{"channel":"short:x"}"#)
    );
    let (event, _) = st.event().await.expect("subscribed");
    assert_eq!(event, "subscribed");
    for (path, want) in [
        ("/http/subscribe?channel=closed:x", 403),
        ("/http/subscribe?channel=a%20b", 400),
        ("/http/subscribe", 400),
        ("/http/subscribe?channel=a&channel=a", 400),
    ] {
        let r = request(s.addr, "GET", path, &[], "").await;
        assert_eq!(r.status, want, "{path}");
    }
    let r = request(
        s.addr,
        "GET",
        "/http/subscribe?channel=a",
        &[("last-event-id", "x:1,y:2")],
        "",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(s.handle.connections(), 2);
}

#[tokio::test]
async fn a_client_close_ends_the_session_at_once_with_leave_not_resume() {
    let s = start_default().await;
    let mut watcher = Client::connect(&s).await;
    watcher.subscribe("room").await;
    let mut st = post(s.addr, "/http/stream", &[], &json!([sub("1", "room")])).await;
    let session = st.session();
    st.until_line("reply").await;
    let join = watcher.next().await;
    assert_eq!(join["type"], "join", "{join}");
    let r = post(
        s.addr,
        "/http/close",
        &[("herald-session", &session)],
        &json!(null),
    )
    .await;
    assert_eq!(r.status, 204);
    assert!(
        st.line().await.is_none(),
        "the stream ends without an advisory"
    );
    let leave = watcher.next().await;
    assert_eq!(leave["type"], "leave", "{leave}");
    assert_eq!(s.handle.node().waiting_sessions(), 0);
    let r = post(
        s.addr,
        "/http/close",
        &[("herald-session", &session)],
        &json!(null),
    )
    .await;
    assert_eq!(r.status, 404);
}

//! Unit tests of the protocol state beyond the shared scenarios: limits, timeouts, the end.

use super::*;

fn state(offline_queue: usize) -> ClientState {
    ClientState::new(Settings {
        request_timeout: Duration::from_secs(10),
        offline_queue,
        offline_deadline: Duration::from_secs(60),
        backoff: Backoff::default(),
        refreshable: false,
    })
}

fn connected(n: u32) -> Connected {
    serde_json::from_value(json!({
        "client_id": "c1", "session_id": "s1", "user_id": "", "resume_token": format!("rt-{n}"),
        "resume_grace_ms": 30000, "ping_interval_ms": 25000, "pong_timeout_ms": 10000,
        "server": "t", "protocol": "herald.v1.json",
    }))
    .expect("connected")
}

fn sent(s: &mut ClientState) -> Vec<Value> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        if let Output::Send(t) = o {
            v.push(serde_json::from_str(&t).expect("json"));
        }
    }
    v
}

fn publish(
    s: &mut ClientState,
    key: &str,
    now: Instant,
) -> oneshot::Receiver<Result<Value, ClientError>> {
    let (tx, rx) = oneshot::channel();
    let cmd = Cmd::Publish {
        channel: "news".into(),
        data: json!(1),
        key: key.into(),
        tx,
    };
    s.command(cmd, now);
    rx
}

#[test]
fn the_offline_queue_is_bounded_and_expires() {
    let now = Instant::now();
    let mut s = state(2);
    let mut a = publish(&mut s, "a", now);
    let _b = publish(&mut s, "b", now);
    let mut c = publish(&mut s, "c", now);
    assert_eq!(c.try_recv().ok(), Some(Err(ClientError::QueueFull)));
    assert!(a.try_recv().is_err(), "still queued");
    assert_eq!(s.next_deadline(), Some(now + Duration::from_secs(60)));
    s.tick(now + Duration::from_secs(61));
    assert_eq!(a.try_recv().ok(), Some(Err(ClientError::Expired)));
    // Without a queue, a publish while disconnected fails at once.
    let mut s = state(0);
    let mut d = publish(&mut s, "d", now);
    assert_eq!(d.try_recv().ok(), Some(Err(ClientError::Disconnected)));
}

#[test]
fn requests_time_out_and_fail_when_the_link_drops() {
    let now = Instant::now();
    let mut s = state(10);
    s.opened(connected(1), now);
    let (tx, mut rx) = oneshot::channel();
    let cmd = Cmd::Request {
        kind: "history".into(),
        payload: json!({"channel": "news"}),
        timeout: Duration::from_secs(3),
        tx,
    };
    s.command(cmd, now);
    assert_eq!(sent(&mut s)[0]["type"], "history");
    s.tick(now + Duration::from_secs(4));
    assert_eq!(rx.try_recv().ok(), Some(Err(ClientError::Timeout)));
    let (tx, mut rx) = oneshot::channel();
    let cmd = Cmd::Request {
        kind: "presence".into(),
        payload: json!({"channel": "news"}),
        timeout: Duration::from_secs(3),
        tx,
    };
    s.command(cmd, now);
    s.lost("gone", true);
    assert_eq!(rx.try_recv().ok(), Some(Err(ClientError::Disconnected)));
}

#[test]
fn a_resume_without_a_reply_drops_the_connection_and_holds_commands_back() {
    let now = Instant::now();
    let mut s = state(10);
    s.opened(connected(1), now);
    s.lost("gone", true);
    s.opened(connected(2), now);
    assert!(
        !s.accepts_commands(),
        "the resume must be the first command"
    );
    assert_eq!(sent(&mut s)[0]["type"], "resume");
    s.tick(now + Duration::from_secs(11));
    assert!(matches!(s.poll_output(), Some(Output::Drop(why)) if why.contains("resume")));
}

#[test]
fn closing_fails_everything_that_waits() {
    let now = Instant::now();
    let mut s = state(10);
    let mut queued = publish(&mut s, "q", now);
    let (tx, mut sub) = oneshot::channel();
    s.command(
        Cmd::Subscribe {
            channel: "news".into(),
            tx,
        },
        now,
    );
    s.fail_all("bye");
    assert_eq!(
        queued.try_recv().ok(),
        Some(Err(ClientError::Closed("bye".into())))
    );
    assert_eq!(
        sub.try_recv().ok(),
        Some(Err(ClientError::Closed("bye".into())))
    );
}

#[test]
fn unreadable_frames_are_ignored() {
    let now = Instant::now();
    let mut s = state(10);
    s.opened(connected(1), now);
    let _ = sent(&mut s);
    for f in [
        &b"{"[..],
        b"[]",
        br#"{"type":"message","payload":{"channel":1}}"#,
        b"\xff",
    ] {
        s.frame(f, now);
    }
    assert!(s.poll_output().is_none());
}

/// Review finding: frames queued for a socket that died (a failed write, a drop mid-flush) were
/// sent first on the next connection, ahead of `resume`, so the server refused the resume.
#[test]
fn frames_for_a_dead_socket_are_not_sent_on_the_next_one() {
    let now = Instant::now();
    let mut s = state(10);
    s.opened(connected(1), now);
    let _ = sent(&mut s);
    let (tx, _rx) = oneshot::channel();
    s.command(
        Cmd::Subscribe {
            channel: "news".into(),
            tx,
        },
        now,
    );
    let _queued = publish(&mut s, "k", now);
    // The socket dies before the driver wrote them.
    s.lost("gone", true);
    s.opened(connected(2), now);
    let frames = sent(&mut s);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "resume");
}

const V1: &str = r#"{"a":1,"b":"hello world hello world hello world","c":3}"#;
const V2: &str = r#"{"a":2,"b":"hello world hello world hello world","c":4}"#;
const V3: &str = r#"{"a":3,"b":"hello world hello world hello world","c":5}"#;

fn fossil(from: &str, to: &str) -> String {
    String::from_utf8(fossil_delta::delta(to, from)).expect("utf-8")
}

/// Connected, subscribed to `dash` with a `"delta":"fossil"` reply at offset 0 of `e1`.
fn delta_subscription(now: Instant) -> ClientState {
    let mut s = state(10);
    s.opened(connected(1), now);
    let (tx, _rx) = oneshot::channel();
    let cmd = Cmd::Subscribe {
        channel: "dash".into(),
        tx,
    };
    s.command(cmd, now);
    let frames = sent(&mut s);
    let id = &frames.last().expect("subscribe")["id"];
    let reply = json!({"type": "reply", "id": id,
        "payload": {"channel": "dash", "offset": 0, "epoch": "e1", "delta": "fossil"}});
    s.frame(reply.to_string().as_bytes(), now);
    let _ = sent(&mut s);
    s
}

fn message(s: &mut ClientState, offset: u64, data: &str, delta: bool, now: Instant) {
    let mut p =
        json!({"channel": "dash", "offset": offset, "epoch": "e1", "time": 1, "data": data});
    if delta {
        p["delta"] = json!(true);
    }
    s.frame(
        json!({"type": "message", "payload": p})
            .to_string()
            .as_bytes(),
        now,
    );
}

/// What came out since the last call: the data of the messages, the frames sent.
fn outputs(s: &mut ClientState) -> (Vec<(u64, Value)>, Vec<Value>) {
    let (mut messages, mut frames) = (Vec::new(), Vec::new());
    while let Some(o) = s.poll_output() {
        match o {
            Output::Event(Event::Message(m)) => messages.push((m.offset, m.data)),
            Output::Event(Event::State(_)) => {}
            Output::Event(e) => panic!("unexpected event {e:?}"),
            Output::Send(t) => frames.push(serde_json::from_str(&t).expect("json")),
            o => panic!("unexpected output {o:?}"),
        }
    }
    (messages, frames)
}

/// The resync frames: `unsubscribe`, then `subscribe` recovering from `offset`.
fn assert_resync(frames: &[Value], offset: u64) {
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["type"], "unsubscribe");
    assert_eq!(frames[0]["payload"], json!({"channel": "dash"}));
    assert_eq!(frames[1]["type"], "subscribe");
    assert_eq!(
        frames[1]["payload"],
        json!({"channel": "dash", "recover": {"offset": offset, "epoch": "e1"}})
    );
}

fn reply(s: &mut ClientState, to: &Value, payload: Value, now: Instant) {
    let f = json!({"type": "reply", "id": to["id"], "payload": payload});
    s.frame(f.to_string().as_bytes(), now);
}

#[test]
fn a_delta_subscription_reports_whole_data() {
    let now = Instant::now();
    let mut s = delta_subscription(now);
    message(&mut s, 1, V1, false, now);
    message(&mut s, 2, &fossil(V1, V2), true, now);
    message(&mut s, 3, &fossil(V2, V3), true, now);
    let (messages, frames) = outputs(&mut s);
    let want: Vec<(u64, Value)> = [(1, V1), (2, V2), (3, V3)]
        .into_iter()
        .map(|(o, t)| (o, serde_json::from_str(t).expect("json")))
        .collect();
    assert_eq!(messages, want);
    assert!(frames.is_empty(), "{frames:?}");
    // A whole message restarts the chain.
    message(&mut s, 4, V1, false, now);
    message(&mut s, 5, &fossil(V1, V3), true, now);
    let (messages, _) = outputs(&mut s);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].1["a"], 3);
}

#[test]
fn a_bad_delta_resyncs_from_the_last_offset_applied() {
    let now = Instant::now();
    let mut s = delta_subscription(now);
    message(&mut s, 1, V1, false, now);
    message(&mut s, 2, &fossil(V1, V2), true, now);
    let _ = outputs(&mut s);
    // A delta whose result is not what it was made for: its checksum fails.
    let good = fossil(V2, V3);
    let bad = good.replacen(r#""a":3"#, r#""a":9"#, 1);
    assert_ne!(good, bad);
    message(&mut s, 3, &bad, true, now);
    let (messages, frames) = outputs(&mut s);
    assert!(messages.is_empty(), "not shown: {messages:?}");
    assert_resync(&frames, 2);
    // Until the subscribe reply, the channel's messages are ignored (even a good delta).
    message(&mut s, 3, &good, true, now);
    // The unsubscribe's reply is the client's own: no event, the subscription stays.
    reply(&mut s, &frames[0], json!({}), now);
    assert_eq!(outputs(&mut s), (vec![], vec![]));
    reply(
        &mut s,
        &frames[1],
        json!({"channel": "dash", "offset": 3, "epoch": "e1", "recovered": true, "missed": 1, "delta": "fossil"}),
        now,
    );
    message(&mut s, 3, V3, false, now);
    message(&mut s, 4, &fossil(V3, V1), true, now);
    let (messages, frames) = outputs(&mut s);
    assert_eq!(
        messages
            .iter()
            .map(|(o, d)| (*o, d["a"].clone()))
            .collect::<Vec<_>>(),
        vec![(3, json!(3)), (4, json!(1))]
    );
    assert!(frames.is_empty(), "{frames:?}");
    // Still subscribed: the application's subscribe is refused as a duplicate.
    let (tx, mut rx) = oneshot::channel();
    let cmd = Cmd::Subscribe {
        channel: "dash".into(),
        tx,
    };
    s.command(cmd, now);
    assert!(matches!(rx.try_recv(), Ok(Err(e)) if e.code() == "already_subscribed"));
}

#[test]
fn an_out_of_order_or_baseless_delta_resyncs() {
    let now = Instant::now();
    // No previous text at all.
    let mut s = delta_subscription(now);
    message(&mut s, 1, &fossil(V1, V2), true, now);
    let (messages, frames) = outputs(&mut s);
    assert!(messages.is_empty());
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        frames[1]["payload"]["recover"],
        json!({"offset": 0, "epoch": "e1"})
    );
    // An offset that is not the previous one + 1, even though the delta would apply.
    let mut s = delta_subscription(now);
    message(&mut s, 1, V1, false, now);
    let _ = outputs(&mut s);
    message(&mut s, 3, &fossil(V1, V2), true, now);
    let (messages, frames) = outputs(&mut s);
    assert!(messages.is_empty(), "no gap, no message: {messages:?}");
    assert_resync(&frames, 1);
    // A connection closed mid-resync: the next one subscribes from the last offset applied and
    // the channel's messages flow again after its reply.
    s.closed(4001, "");
    s.opened(connected(2), now);
    let (_, frames) = outputs(&mut s);
    let sub = frames
        .iter()
        .find(|f| f["type"] == "subscribe")
        .expect("subscribe");
    assert_eq!(
        sub["payload"]["recover"],
        json!({"offset": 1, "epoch": "e1"})
    );
    reply(
        &mut s,
        sub,
        json!({"channel": "dash", "offset": 2, "epoch": "e1", "recovered": true, "missed": 1, "delta": "fossil"}),
        now,
    );
    message(&mut s, 2, V2, false, now);
    let (messages, _) = outputs(&mut s);
    assert_eq!(messages.len(), 1);
}

#[test]
fn a_delta_on_a_plain_subscription_resyncs_and_plain_data_passes() {
    let now = Instant::now();
    let mut s = state(10);
    s.opened(connected(1), now);
    let (tx, _rx) = oneshot::channel();
    let cmd = Cmd::Subscribe {
        channel: "dash".into(),
        tx,
    };
    s.command(cmd, now);
    let frames = sent(&mut s);
    reply(
        &mut s,
        &frames[0],
        json!({"channel": "dash", "offset": 0, "epoch": "e1"}),
        now,
    );
    // Not a delta subscription: a string is data like any other.
    message(&mut s, 1, V1, false, now);
    let (messages, _) = outputs(&mut s);
    assert_eq!(messages, vec![(1, json!(V1))]);
    // A delta the client was not told about (e.g. a subscription adopted on resume).
    message(&mut s, 2, &fossil(V1, V2), true, now);
    let (messages, frames) = outputs(&mut s);
    assert!(messages.is_empty());
    assert_resync(&frames, 1);
}

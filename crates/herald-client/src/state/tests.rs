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

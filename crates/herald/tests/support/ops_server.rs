//! Servers for `tests/ops_kit.rs`: raw HTTP requests with a chosen `Host`, scrapes of
//! `/metrics` that wait for an event, and the traffic that makes a node register the metrics the
//! dashboard and the alert rules read.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::ops_checks::{exposed_series, sample_value};
use crate::support::{Served, Ws, token};

/// An HTTP answer: status, head (status line and headers) and body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request with `Connection: close`; the whole answer.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
    body: &str,
) -> Answer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 20 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub async fn scrape(addr: &str, host: &str) -> String {
    let a = request(addr, "GET", "/metrics", host, "", "").await;
    assert_eq!(a.status, 200, "/metrics: {}", a.body);
    a.body
}

/// Scrape until `done(text)` holds (the event it waits for has happened), at most 30 s.
pub async fn scrape_until(
    addr: &str,
    host: &str,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr, host).await;
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {what} within 30 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node A's traffic; returns its /metrics afterwards.
pub async fn traffic_on(a: &Served) -> String {
    let addr = a.addr.as_str();
    let mut sub = Ws::open(addr, &token("alice")).await;
    sub.call("subscribe", json!({"channel": "news"})).await;
    let mut publisher = Ws::open(addr, &token("bob")).await;
    publisher
        .call(
            "publish",
            json!({"channel": "news", "data": {"text": "hi"}}),
        )
        .await;
    let m = sub.push().await;
    assert_eq!(m["payload"]["data"]["text"], "hi", "{m}");
    // An error reply (herald_protocol_errors_total).
    let e = publisher
        .try_call("subscribe", json!({"channel": "no spaces allowed"}))
        .await;
    assert_eq!(e["type"], "error", "{e}");
    // A refused handshake (herald_handshake_rejected_total{reason="auth"}).
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("req");
        req.headers_mut()
            .insert("Authorization", "Bearer not-a-token".parse().expect("hdr"));
        assert!(tokio_tungstenite::connect_async(req).await.is_err());
    }
    // A long-polling session (herald_http_sessions{transport="poll"}).
    let poll = request(addr, "POST", "/http/poll", addr, "", "").await;
    assert_eq!(poll.status, 200, "{} {}", poll.head, poll.body);
    assert!(poll.header("herald-session").is_some(), "{}", poll.head);

    // Two subscribers that never read: the default namespace disconnects its slow consumer
    // (4001), `feed:` (drop_oldest) drops from its queue. Publish 60 KB messages until the
    // socket buffers and the queues are full and both have happened.
    let _stalled_disconnect = {
        let mut w = Ws::open(addr, &token("carol")).await;
        w.call("subscribe", json!({"channel": "big"})).await;
        w
    };
    let _stalled_drop = {
        let mut w = Ws::open(addr, &token("dave")).await;
        w.call("subscribe", json!({"channel": "feed:big"})).await;
        w
    };
    let data = "x".repeat(60_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..16 {
            for channel in ["big", "feed:big"] {
                publisher
                    .call("publish", json!({"channel": channel, "data": data}))
                    .await;
            }
        }
        let text = scrape(addr, addr).await;
        let series = exposed_series(&text);
        if series.contains("herald_slow_consumer_disconnects_total")
            && series.contains("herald_queue_dropped_total")
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no slow-consumer disconnect and queue drop within 60 s:\n{text}"
        );
    }
}

/// Node B's limits and heartbeats; returns its /metrics afterwards.
pub async fn limits_and_heartbeats_on(b: &Served) -> String {
    use tokio::io::AsyncReadExt;
    let addr = b.addr.as_str();
    // One HTTP connection per IP: a second is refused at accept (503); the first, which sends
    // nothing, is closed after header_read_timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Answered at accept, before reading: send nothing (unread bytes would make the close a reset).
    let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut refused = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), second.read_to_end(&mut refused))
        .await
        .expect("an answer within 20 s")
        .expect("read");
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection closed by the header timeout")
        .expect("read");
    drop(idle);

    // One command per second, burst 1: the second of two quick pings is rate limited.
    let mut quick = Ws::open(addr, &token("erin")).await;
    let mut limited = false;
    for _ in 0..10 {
        let r = quick.try_call("ping", json!({})).await;
        if r["type"] == "error" {
            assert_eq!(r["payload"]["code"], "rate_limited", "{r}");
            limited = true;
            break;
        }
    }
    assert!(limited, "no rate_limited reply");
    drop(quick);

    // A client that never answers pings: closed with 4000 after ping 1 s + pong 1 s, and its
    // session waits for resume; a new connection resumes it.
    let mut frozen = Ws::open(addr, &token("frank")).await;
    frozen.call("subscribe", json!({"channel": "news"})).await;
    let resume_token = frozen.welcome["payload"]["resume_token"]
        .as_str()
        .expect("resume_token")
        .to_owned();
    scrape_until(addr, addr, "heartbeat timeout and waiting session", |t| {
        sample_value(t, "herald_heartbeat_timeouts_total").is_some_and(|v| v >= 1.0)
            && sample_value(t, "herald_sessions_waiting").is_some_and(|v| v >= 1.0)
    })
    .await;
    drop(frozen);
    let mut back = Ws::open(addr, &token("frank")).await;
    let r = back
        .try_call("resume", json!({"token": resume_token}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    scrape_until(addr, addr, "a resume", |t| {
        sample_value(t, "herald_sessions_resumed_total").is_some_and(|v| v >= 1.0)
    })
    .await
}

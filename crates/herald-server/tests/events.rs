//! Lifecycle events (API polling and a real webhook receiver: batching, HMAC signatures, retries,
//! unique ids), "offline only after the grace period", and dead letters.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald_server::WebhookConfig;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "events-test-key-0123456789";

async fn api(s: &TestServer, method: &str, params: Value) -> Value {
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let body = params.to_string();
    let req = format!(
        "POST /api/v1/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    serde_json::from_str(out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")).expect("json")
}

fn setup(grace: Duration) -> Setup {
    let mut s = Setup::default();
    s.engine.auth.api_keys = vec![KEY.into()];
    s.engine.session.resume_grace = grace;
    s
}

/// Poll `events` until `pred` holds on the list of event types.
async fn events_until(s: &TestServer, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = api(s, "events", json!({"limit": 1000})).await;
        let events = r["events"].as_array().cloned().unwrap_or_default();
        if pred(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_session_produces_its_lifecycle_and_goes_offline_only_after_the_grace_period() {
    let s = start(setup(Duration::from_millis(600))).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("room").await;
    c.ok("unsubscribe", json!({"channel": "room"})).await;
    c.subscribe("room").await;
    let token = c.welcome["resume_token"].clone();
    drop(c); // unexpected disconnect: the session waits for resume
    until("session to wait", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    // Resumed within the grace period: no disconnect, no new connect.
    let mut c = Client::connect(&s).await;
    c.ok("resume", json!({"token": token})).await;
    let events = api(&s, "events", json!({})).await["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        kinds(&events),
        [
            "connect",
            "channel_occupied",
            "subscribe",
            "unsubscribe",
            "channel_vacated",
            "channel_occupied",
            "subscribe"
        ],
        "{events:?}"
    );
    // Now gone for good: disconnect comes once the grace period ends.
    drop(c);
    let events = events_until(&s, "disconnect", |e| {
        kinds(e).last().map(String::as_str) == Some("disconnect")
    })
    .await;
    let k = kinds(&events);
    assert_eq!(
        &k[7..],
        ["unsubscribe", "channel_vacated", "disconnect"],
        "{events:?}"
    );
    let d = events.last().expect("disconnect");
    assert!(
        d["reason"].as_str().is_some_and(|r| r.contains("grace")),
        "{d}"
    );
    assert!(d["duration_ms"].as_u64().is_some_and(|ms| ms >= 600), "{d}");
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[derive(Default)]
struct Received {
    bodies: Vec<(HeaderMap, Vec<u8>)>,
    failures_left: u32,
}

#[tokio::test]
async fn webhooks_are_batched_signed_retried_and_carry_unique_ids() {
    let received = Arc::new(Mutex::new(Received {
        failures_left: 2,
        ..Default::default()
    }));
    let r2 = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let r = r2.clone();
            async move {
                let mut g = r.lock().expect("lock");
                g.bodies.push((headers, body.to_vec()));
                if g.failures_left > 0 {
                    g.failures_left -= 1;
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                StatusCode::OK
            }
        }),
    );
    let hook = serve_backend(app).await;

    let s = start(setup(Duration::ZERO)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let secret = "webhook-secret";
    herald_server::webhook::spawn(
        s.handle.node().clone(),
        WebhookConfig {
            url: Some(format!("http://{hook}/hook")),
            secret: Some(secret.into()),
            batch_wait: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(20),
            ..Default::default()
        },
        stop,
    );
    let mut c = Client::connect(&s).await;
    c.subscribe("a").await;
    c.send_raw(Message::Close(None)).await;
    // Wait for a successful delivery containing the disconnect.
    let deadline = tokio::time::Instant::now() + WAIT;
    let bodies = loop {
        let done = {
            let g = received.lock().expect("lock");
            g.failures_left == 0
                && g.bodies
                    .iter()
                    .skip(2)
                    .any(|(_, b)| String::from_utf8_lossy(b).contains("\"disconnect\""))
        };
        if done {
            break received.lock().expect("lock").bodies.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no successful delivery"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The first batch was retried twice with the same delivery id and the same events.
    let delivery = |i: usize| {
        bodies[i].0["x-herald-delivery"]
            .to_str()
            .expect("hdr")
            .to_owned()
    };
    assert_eq!(delivery(0), delivery(1));
    assert_eq!(delivery(1), delivery(2));
    assert_eq!(bodies[0].1, bodies[2].1);
    assert_eq!(bodies[2].0["x-herald-attempt"], "3");
    let mut ids = std::collections::HashSet::new();
    let mut types = Vec::new();
    for (headers, body) in bodies.iter().skip(2) {
        assert_eq!(
            headers["x-herald-signature"].to_str().expect("sig"),
            herald_server::webhook::signature(secret, body),
            "signature"
        );
        let v: Value = serde_json::from_slice(body).expect("json");
        for e in v["events"].as_array().expect("events") {
            assert!(
                ids.insert(e["id"].as_str().expect("id").to_owned()),
                "duplicate id {e}"
            );
            types.push(e["type"].as_str().expect("type").to_owned());
        }
    }
    assert_eq!(
        types,
        [
            "connect",
            "channel_occupied",
            "subscribe",
            "unsubscribe",
            "channel_vacated",
            "disconnect"
        ]
    );
}

#[tokio::test]
async fn undeliverable_webhooks_and_bad_frames_become_dead_letters() {
    let s = start(setup(Duration::ZERO)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let port = closed_port();
    herald_server::webhook::spawn(
        s.handle.node().clone(),
        WebhookConfig {
            url: Some(format!("http://127.0.0.1:{port}/hook")),
            batch_wait: Duration::from_millis(10),
            retry_backoff: Duration::from_millis(10),
            max_attempts: 2,
            ..Default::default()
        },
        stop,
    );
    let mut c = Client::connect(&s).await;
    c.ok("ping", json!({})).await; // a first command: the `connect` event the webhook cannot deliver
    c.send_raw(Message::Text("{not json".into())).await;
    assert_eq!(c.next().await["payload"]["code"], "malformed");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let d = api(&s, "dead_letters", json!({})).await;
        let reasons: Vec<String> = d["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["reason"].as_str().unwrap_or("").to_owned())
            .collect();
        if reasons.contains(&"malformed".to_owned()) && reasons.contains(&"webhook".to_owned()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "dead letters: {d}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Also readable with GET.
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /api/v1/dead_letters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: apikey {KEY}\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("read");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("\"malformed\""),
        "{out}"
    );
}

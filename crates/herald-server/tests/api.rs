//! The HTTP server API (`POST /api/v1/{method}`) over real sockets: every method, API-key
//! checks, bad and oversized bodies.

mod support;

use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "api-test-key-0123456789";

async fn post_raw(s: &TestServer, path: &str, auth: Option<&str>, body: &[u8]) -> (u16, Value) {
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    // The server may answer (413) before reading a large body; ignore a reset while writing it.
    let _ = tcp.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("response in time");
    let text = String::from_utf8_lossy(&out);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn api(s: &TestServer, method: &str, params: Value) -> (u16, Value) {
    post_raw(
        s,
        &format!("/api/v1/{method}"),
        Some(&format!("apikey {KEY}")),
        params.to_string().as_bytes(),
    )
    .await
}

async fn ok(s: &TestServer, method: &str, params: Value) -> Value {
    let (status, body) = api(s, method, params).await;
    assert_eq!(status, 200, "{method}: {body}");
    body
}

async fn server() -> TestServer {
    let mut setup = Setup::default();
    setup.engine.auth.api_keys = vec![KEY.into()];
    start(setup).await
}

#[tokio::test]
async fn api_keys_are_required_and_checked() {
    let s = server().await;
    for auth in [
        None,
        Some("apikey wrong-key-wrong-key"),
        Some("Bearer x"),
        Some(KEY),
    ] {
        let (status, body) = post_raw(&s, "/api/v1/info", auth, b"{}").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{auth:?}"
        );
    }
    assert_eq!(ok(&s, "info", json!({})).await["connections"], 0);
    // Without configured keys the API is off.
    let plain = start_default().await;
    let (status, _) = post_raw(
        &plain,
        "/api/v1/info",
        Some(&format!("apikey {KEY}")),
        b"{}",
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn publish_reaches_socket_subscribers_with_idempotency() {
    let s = server().await;
    let mut c = Client::connect(&s).await;
    c.subscribe("news").await;
    let r = ok(
        &s,
        "publish",
        json!({"channel": "news", "data": {"text": "from backend"}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(r["offset"], 1);
    assert_eq!(c.next_message().await["data"]["text"], "from backend");
    let again = ok(
        &s,
        "publish",
        json!({"channel": "news", "data": {"text": "x"}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(
        (again["offset"].clone(), again["duplicate"].clone()),
        (json!(1), json!(true))
    );

    // A bad channel name refuses the whole broadcast: nothing is published.
    let (status, body) = api(
        &s,
        "broadcast",
        json!({"channels": ["news", "bad channel"], "data": 0}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_channel"))
    );
    let r = ok(
        &s,
        "broadcast",
        json!({"channels": ["news", "sport"], "data": 7}),
    )
    .await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(
        (results[0]["channel"].clone(), results[0]["offset"].clone()),
        (json!("news"), json!(2))
    );
    assert_eq!(
        (results[1]["channel"].clone(), results[1]["offset"].clone()),
        (json!("sport"), json!(1))
    );
    assert_eq!(c.next_message().await["data"], 7);
}

#[tokio::test]
async fn history_presence_channels_and_removal() {
    let s = server().await;
    let mut c = Client::connect(&s).await;
    c.subscribe("room").await;
    for i in 1..=3 {
        ok(&s, "publish", json!({"channel": "room", "data": i})).await;
    }
    let h = ok(
        &s,
        "history",
        json!({"channel": "room", "limit": 2, "reverse": true}),
    )
    .await;
    let pubs = h["publications"].as_array().expect("pubs");
    assert_eq!((pubs.len(), pubs[0]["data"].clone()), (2, json!(3)));
    let epoch = h["epoch"].clone();
    let h = ok(
        &s,
        "history",
        json!({"channel": "room", "since": {"offset": 1, "epoch": epoch}}),
    )
    .await;
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(2));
    let p = ok(&s, "presence", json!({"channel": "room"})).await;
    assert_eq!(p["clients"][0]["client_id"], c.welcome["client_id"]);
    assert_eq!(
        ok(&s, "presence_stats", json!({"channel": "room"})).await["clients"],
        1
    );
    let ch = ok(&s, "channels", json!({"pattern": "ro*"})).await;
    assert_eq!(
        ch["channels"],
        json!([{"channel": "room", "subscribers": 1}])
    );
    assert_eq!(
        ok(&s, "channels", json!({"pattern": "x*"})).await["channels"],
        json!([])
    );
    ok(&s, "history_remove", json!({"channel": "room"})).await;
    let h = ok(&s, "history", json!({"channel": "room"})).await;
    assert_eq!(
        (h["publications"].clone(), h["offset"].clone()),
        (json!([]), json!(3))
    );
    let info = ok(&s, "info", json!({})).await;
    assert_eq!(
        (info["connections"].clone(), info["channels"].clone()),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn batch_runs_each_command_and_reports_errors_in_place() {
    let s = server().await;
    let r = ok(
        &s,
        "batch",
        json!({"commands": [
            {"method": "publish", "params": {"channel": "a", "data": 1}},
            {"method": "nope", "params": {}},
            {"method": "publish", "params": {"channel": "a"}},
            {"method": "info"},
        ]}),
    )
    .await;
    let r = r["results"].as_array().expect("results");
    assert_eq!(r[0]["result"]["offset"], 1);
    assert_eq!(r[1]["error"]["code"], "unknown_type");
    assert_eq!(r[2]["error"]["code"], "bad_request");
    assert!(r[3]["result"]["node"].is_string());
}

#[tokio::test]
async fn bad_requests_get_codes_never_panics() {
    let s = server().await;
    let auth = format!("apikey {KEY}");
    assert_eq!(api(&s, "nope", json!({})).await.0, 404);
    let (status, body) = post_raw(&s, "/api/v1/publish", Some(&auth), b"{not json").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = api(
        &s,
        "publish",
        json!({"channel": "a", "data": 1, "extra": true}),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = api(&s, "publish", json!({"channel": "", "data": 1})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_channel"))
    );
    let (status, _) = api(&s, "history", json!({"channel": "a", "limit": 1000})).await;
    assert_eq!(status, 400);
    let (status, _) = api(&s, "disconnect", json!({})).await;
    assert_eq!(status, 400);
    let big = vec![b' '; herald_server::api::MAX_BODY + 1];
    let (status, _) = post_raw(&s, "/api/v1/publish", Some(&auth), &big).await;
    assert_eq!(status, 413);
}

const SECRET: &str = "api-test-secret-api-test-secret-0123";

async fn server_with_users() -> TestServer {
    let mut setup = Setup::default();
    setup.engine.auth.api_keys = vec![KEY.into()];
    setup.engine.auth.hmac_secret = Some(SECRET.into());
    start(setup).await
}

async fn connect_user(s: &TestServer, user: &str) -> Client {
    use jsonwebtoken::{EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    let mut req = ws_request(s);
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("hdr"),
    );
    Client::open_welcomed(req).await.expect("connect")
}

#[tokio::test]
async fn disconnect_closes_a_users_connections_with_4501() {
    let s = server_with_users().await;
    let mut carol = connect_user(&s, "carol").await;
    let r = ok(&s, "disconnect", json!({"user": "carol"})).await;
    assert_eq!(r["disconnected"], 1);
    let (adv, _) = carol.closed_with(4501).await;
    assert_eq!(adv["reconnect"], false);
}

#[tokio::test]
async fn server_side_subscribe_and_unsubscribe_reach_every_session_of_a_user() {
    let s = server_with_users().await;
    let mut a = connect_user(&s, "dave").await;
    let mut b = connect_user(&s, "dave").await;
    let r = ok(
        &s,
        "subscribe",
        json!({"user": "dave", "channel": "alerts"}),
    )
    .await;
    assert_eq!(r["sessions"], 2);
    for c in [&mut a, &mut b] {
        let p = c.next().await;
        assert_eq!(
            (p["type"].clone(), p["payload"]["channel"].clone()),
            (json!("subscribed"), json!("alerts")),
            "{p}"
        );
    }
    ok(&s, "publish", json!({"channel": "alerts", "data": "fire"})).await;
    assert_eq!(a.next_message().await["data"], "fire");
    assert_eq!(b.next_message().await["data"], "fire");
    ok(
        &s,
        "unsubscribe",
        json!({"user": "dave", "channel": "alerts"}),
    )
    .await;
    let p = a.next().await;
    assert_eq!(
        (p["type"].clone(), p["payload"]["channel"].clone()),
        (json!("unsubscribed"), json!("alerts"))
    );
    until("both sessions to leave", || {
        s.handle.node().hub().count("alerts") == 0
    })
    .await;
    assert_eq!(
        ok(
            &s,
            "subscribe",
            json!({"user": "nobody", "channel": "alerts"})
        )
        .await["sessions"],
        0
    );
}

/// Regression (issue 12): a 2.9 KB `batch` of history reads produced a 300 MB response. A batch's
/// response is bounded; the commands past the bound are not executed and say so.
#[tokio::test]
async fn a_batch_response_is_bounded() {
    let s = server().await;
    let big = "x".repeat(20_000);
    for _ in 0..100 {
        ok(&s, "publish", json!({"channel": "big", "data": big})).await;
    }
    let commands: Vec<Value> = (0..20)
        .map(|_| json!({"method": "history", "params": {"channel": "big", "limit": 100}}))
        .collect();
    let body = json!({ "commands": commands }).to_string();
    let (status, reply) = post_raw(
        &s,
        "/api/v1/batch",
        Some(&format!("apikey {KEY}")),
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results.len(), 20);
    assert_eq!(
        results[0]["result"]["publications"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    let executed = results.iter().filter(|r| r.get("result").is_some()).count();
    assert!(executed <= 4, "at most 8 MiB of 2 MB pages: {executed}");
    let last = &results[19]["error"];
    assert_eq!(last["code"], "too_large", "{last}");
    assert!(reply.to_string().len() <= herald_server::api::MAX_BATCH_RESPONSE + 4096);
}

//! `rpc` over the socket: the HTTP proxy to a real local backend (result, backend error,
//! timeout, backend down, 5xx retried), and a handler registered in code; the subscribe, publish,
//! connect and refresh proxies; forwarded headers; backend failures as dead letters.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use herald_core::EngineError;
use herald_core::rpc::{RpcContext, RpcHandler};
use herald_server::{HttpRpc, RpcProxyConfig};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A backend on 127.0.0.1: `echo`, `fail`, `slow`, `flaky` (500 on the first attempt).
async fn backend() -> (std::net::SocketAddr, Arc<AtomicU32>) {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = axum::Router::new().route(
        "/rpc",
        post(move |Json(req): Json<Value>| {
            let h = h.clone();
            async move {
                let n = h.fetch_add(1, Ordering::SeqCst);
                match req["method"].as_str().unwrap_or("") {
                    "echo" => Ok(Json(
                        json!({"result": {"you_sent": req["data"], "user": req["user_id"], "headers": req["headers"]}}),
                    )),
                    "fail" => Ok(Json(json!({"error": {"message": "no such order"}}))),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        Ok(Json(json!({"result": null})))
                    }
                    "flaky" if n.is_multiple_of(2) => {
                        Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR)
                    }
                    _ => Ok(Json(json!({"result": "ok"}))),
                }
            }
        }),
    );
    let addr = serve_backend(app).await;
    (addr, hits)
}

fn proxy(url: String) -> Arc<HttpRpc> {
    Arc::new(
        HttpRpc::new(&RpcProxyConfig {
            url: Some(url),
            timeout: Duration::from_millis(500),
            retries: 1,
            ..Default::default()
        })
        .expect("proxy"),
    )
}

#[tokio::test]
async fn rpc_round_trips_through_the_backend_with_documented_errors() {
    let (addr, _) = backend().await;
    let s = start_with(Setup::default(), |b| b.forward_headers(&["X-Team".into()])).await;
    s.handle
        .node()
        .set_rpc_handler(proxy(format!("http://{addr}/rpc")));
    let mut c = Client::open_welcomed(with_headers(&s, &[("X-Team", "blue"), ("X-Private", "no")]))
        .await
        .expect("connect");
    let r = c
        .ok("rpc", json!({"method": "echo", "data": {"order": 7}}))
        .await;
    assert_eq!(r["data"]["you_sent"]["order"], 7);
    assert_eq!(
        r["data"]["headers"],
        json!({"x-team": "blue"}),
        "only allowlisted headers reach the backend"
    );
    let (e, _) = c.call("rpc", json!({"method": "fail"})).await;
    assert_eq!(
        (e["type"].clone(), e["payload"]["code"].clone()),
        (json!("error"), json!("rpc_error"))
    );
    assert_eq!(e["payload"]["message"], "no such order");
    // A 500 is retried once; the second attempt succeeds.
    assert_eq!(c.ok("rpc", json!({"method": "flaky"})).await["data"], "ok");
    let started = std::time::Instant::now();
    let (e, _) = c.call("rpc", json!({"method": "slow"})).await;
    assert_eq!(e["payload"]["code"], "timeout");
    assert_eq!(e["payload"]["retryable"], true);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timed out by the proxy, not the backend"
    );
    // The connection kept working while the call was pending.
    let (pong, _) = c.call("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn a_backend_that_is_down_gives_a_retryable_error_quickly() {
    // Bind and drop: nothing listens on this port.
    let port = closed_port();
    let s = start_default().await;
    s.handle
        .node()
        .set_rpc_handler(proxy(format!("http://127.0.0.1:{port}/rpc")));
    let mut c = Client::connect(&s).await;
    let (e, _) = c.call("rpc", json!({"method": "echo"})).await;
    assert_eq!(e["payload"]["code"], "unavailable");
    assert_eq!(e["payload"]["retryable"], true);
    let letters = s.handle.node().dead_letters().list(10);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].reason.as_str(), "backend_failed");
    assert_eq!(
        (
            letters[0].context["proxy"].clone(),
            letters[0].context["target"].clone()
        ),
        (json!("rpc"), json!("echo"))
    );
}

struct InCode;

#[async_trait::async_trait]
impl RpcHandler for InCode {
    async fn call(
        &self,
        ctx: RpcContext,
        method: String,
        data: Value,
    ) -> Result<Value, EngineError> {
        Ok(json!({"method": method, "data": data, "client": ctx.client_id}))
    }
}

#[tokio::test]
async fn handlers_registered_in_code_answer_and_rpc_without_handler_is_refused() {
    let s = start_default().await;
    let mut c = Client::connect(&s).await;
    let (e, _) = c.call("rpc", json!({"method": "x"})).await;
    assert_eq!(e["payload"]["code"], "unavailable");
    assert!(s.handle.node().set_rpc_handler(Arc::new(InCode)));
    let r = c.ok("rpc", json!({"method": "sum", "data": [1, 2]})).await;
    assert_eq!(r["data"]["method"], "sum");
    assert_eq!(r["data"]["client"], c.welcome["client_id"]);
    let (e, _) = c.call("rpc", json!({"method": ""})).await;
    assert_eq!(e["payload"]["code"], "bad_request");
}

/// A backend deciding subscribes (`px:ok*` allowed, `px:slow*` slow, others refused) and
/// publishes (`blocked` data refused, strings upper-cased).
async fn channel_backend() -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/subscribe",
            post(|Json(req): Json<Value>| async move {
                let ch = req["channel"].as_str().unwrap_or("").to_owned();
                if ch.starts_with("px:slow") {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                if ch.starts_with("px:ok-room") {
                    Json(json!({"result": {"info": {"role": "member", "team": req["headers"]["x-team"]}}}))
                } else if ch.starts_with("px:ok") {
                    Json(json!({"result": {}}))
                } else {
                    Json(json!({"error": {"message": format!("{} may not join {ch}", req["client_id"])}}))
                }
            }),
        )
        .route(
            "/publish",
            post(|Json(req): Json<Value>| async move {
                match &req["data"] {
                    Value::String(s) if s == "blocked" => Json(json!({"error": {"message": "moderated"}})),
                    Value::String(s) => Json(json!({"result": {"data": s.to_uppercase()}})),
                    _ => Json(json!({"result": {}})),
                }
            }),
        );
    serve_backend(app).await
}

fn proxied_setup() -> Setup {
    let mut s = Setup::default();
    s.engine.namespaces.insert(
        "px".into(),
        herald_core::NamespaceOptions {
            anonymous: true,
            subscribe_proxy: true,
            publish_proxy: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            presence: true,
            ..Default::default()
        },
    );
    s
}

#[tokio::test]
async fn subscribe_and_publish_proxies_allow_deny_and_transform() {
    let b = channel_backend().await;
    let s = start_with(proxied_setup(), |s| s.forward_headers(&["x-team".into()])).await;
    let proxy = herald_server::HttpChannelProxy::new(&herald_server::ChannelProxyConfig {
        subscribe_url: Some(format!("http://{b}/subscribe")),
        publish_url: Some(format!("http://{b}/publish")),
        timeout: Duration::from_millis(500),
        retries: 0,
        ..Default::default()
    })
    .expect("proxy");
    assert!(s.handle.node().set_channel_proxy(Arc::new(proxy)));
    let mut c = Client::open_welcomed(with_headers(&s, &[("X-Team", "red")]))
        .await
        .expect("connect");
    c.subscribe("px:ok-room").await;
    // The channel info the backend granted shows in presence (and join/leave).
    let presence = c.ok("presence", json!({"channel": "px:ok-room"})).await;
    assert_eq!(
        presence["clients"][0]["chan_info"],
        json!({"role": "member", "team": "red"}),
        "{presence}"
    );
    c.subscribe("px:ok-plain").await;
    let presence = c.ok("presence", json!({"channel": "px:ok-plain"})).await;
    assert!(
        presence["clients"][0].get("chan_info").is_none(),
        "{presence}"
    );
    let (e, _) = c.call("subscribe", json!({"channel": "px:secret"})).await;
    assert_eq!(e["payload"]["code"], "permission_denied");
    assert!(
        e["payload"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("may not join px:secret")),
        "{e}"
    );
    c.publish("px:ok-room", json!("hello")).await;
    assert_eq!(
        c.next_message().await["data"],
        "HELLO",
        "data replaced by the backend"
    );
    c.publish("px:ok-room", json!({"n": 1})).await;
    assert_eq!(
        c.next_message().await["data"],
        json!({"n": 1}),
        "allowed unchanged"
    );
    let (e, _) = c
        .call(
            "publish",
            json!({"channel": "px:ok-room", "data": "blocked"}),
        )
        .await;
    assert_eq!(
        (
            e["payload"]["code"].clone(),
            e["payload"]["message"].clone()
        ),
        (json!("permission_denied"), json!("moderated"))
    );
    let started = std::time::Instant::now();
    let (e, _) = c.call("subscribe", json!({"channel": "px:slow"})).await;
    assert_eq!(e["payload"]["code"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn proxied_namespaces_fail_with_a_retryable_error_when_the_backend_is_down() {
    let port = closed_port();
    let s = start(proxied_setup()).await;
    let mut c = Client::connect(&s).await;
    // No proxy registered at all.
    let (e, _) = c.call("subscribe", json!({"channel": "px:ok"})).await;
    assert_eq!(e["payload"]["code"], "unavailable");
    let proxy = herald_server::HttpChannelProxy::new(&herald_server::ChannelProxyConfig {
        subscribe_url: Some(format!("http://127.0.0.1:{port}/subscribe")),
        publish_url: Some(format!("http://127.0.0.1:{port}/publish")),
        timeout: Duration::from_millis(500),
        retries: 1,
        ..Default::default()
    })
    .expect("proxy");
    s.handle.node().set_channel_proxy(Arc::new(proxy));
    for (kind, payload) in [
        ("subscribe", json!({"channel": "px:ok"})),
        ("publish", json!({"channel": "px:ok", "data": 1})),
    ] {
        let (e, _) = c.call(kind, payload).await;
        assert_eq!(
            (
                e["payload"]["code"].clone(),
                e["payload"]["retryable"].clone()
            ),
            (json!("unavailable"), json!(true)),
            "{kind}"
        );
    }
    // Both backend failures are dead letters (the first call, with no proxy at all, is a
    // configuration error, not a failed delivery).
    let letters = s.handle.node().dead_letters().list(10);
    let proxies: Vec<_> = letters
        .iter()
        .filter(|l| l.reason.as_str() == "backend_failed")
        .map(|l| (l.context["proxy"].clone(), l.context["target"].clone()))
        .collect();
    assert_eq!(
        proxies,
        [
            (json!("subscribe"), json!("px:ok")),
            (json!("publish"), json!("px:ok")),
        ]
    );
}

async fn connect_backend() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/connect",
        post(|Json(req): Json<Value>| async move {
            let cookie = req["headers"]["cookie"].as_str().unwrap_or("");
            if req["headers"].get("x-secret").is_some() {
                return Json(json!({"error": {"message": "unexpected header forwarded"}}));
            }
            if cookie.contains("session=good") {
                Json(json!({"result": {"user": "frank", "info": {"name": "Frank"}, "channels": ["news"]}}))
            } else {
                Json(json!({"error": {"message": "bad session"}}))
            }
        }),
    );
    serve_backend(app).await
}

fn connect_proxy(url: String) -> Arc<herald_server::HttpConnectProxy> {
    Arc::new(
        herald_server::HttpConnectProxy::new(&herald_server::ChannelProxyConfig {
            connect_url: Some(url),
            forward_headers: vec!["Cookie".into()],
            timeout: Duration::from_millis(500),
            retries: 0,
            ..Default::default()
        })
        .expect("proxy"),
    )
}

fn with_headers(
    s: &TestServer,
    headers: &[(&'static str, &'static str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = ws_request(s);
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().expect("hdr"));
    }
    req
}

#[tokio::test]
async fn the_connect_proxy_authenticates_and_subscribes_server_side() {
    let b = connect_backend().await;
    let s = start_with(Setup::default(), |s| {
        s.connect_proxy(connect_proxy(format!("http://{b}/connect")))
    })
    .await;
    let mut c = Client::open_welcomed(with_headers(
        &s,
        &[("Cookie", "theme=x; session=good"), ("X-Secret", "no")],
    ))
    .await
    .expect("connect");
    assert_eq!(c.welcome["user_id"], "frank");
    let p = c.next().await;
    assert_eq!(
        (p["type"].clone(), p["payload"]["channel"].clone()),
        (json!("subscribed"), json!("news")),
        "{p}"
    );
    let (status, body) = Client::open(with_headers(&s, &[("Cookie", "session=bad")]))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, body["code"].as_str(), body["message"].as_str()),
        (401, Some("unauthorized"), Some("bad session"))
    );
    // The presence list shows the backend's user info.
    let presence = c.ok("presence", json!({"channel": "news"})).await;
    assert_eq!(presence["clients"][0]["info"]["name"], "Frank");
}

#[tokio::test]
async fn a_connect_proxy_that_is_down_answers_503() {
    let port = closed_port();
    let s = start_with(Setup::default(), |s| {
        s.connect_proxy(connect_proxy(format!("http://127.0.0.1:{port}/connect")))
    })
    .await;
    let (status, body) = Client::open(ws_request(&s)).await.err().expect("refused");
    assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")));
    let letters = s.handle.node().dead_letters().list(10);
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.reason.as_str(), l.context["proxy"].as_str()))
            .collect::<Vec<_>>(),
        [("backend_failed", Some("connect"))]
    );
}

/// Connect: `session=good` → frank, expiring at E (3 s after the backend starts), `session=stale`
/// → sam, expiring at E + 1 s. Refresh: frank is extended by an hour with new info, sam is
/// refused. Each refresh request is reported.
async fn refreshing_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let now = || herald_core::publication::now_ms() / 1000;
    let e = now() + 3;
    let app = axum::Router::new()
        .route(
            "/connect",
            post(move |Json(req): Json<Value>| async move {
                let cookie = req["headers"]["cookie"].as_str().unwrap_or("");
                let (user, exp) = if cookie.contains("session=good") {
                    ("frank", e)
                } else {
                    ("sam", e + 1)
                };
                Json(json!({"result": {"user": user, "expire_at": exp}}))
            }),
        )
        .route(
            "/refresh",
            post(move |Json(req): Json<Value>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(req.clone());
                    if req["user_id"] == "frank" {
                        Json(json!({"result": {"expire_at": now() + 3600, "info": {"v": 2}}}))
                    } else {
                        Json(json!({"error": {"message": "session ended"}}))
                    }
                }
            }),
        );
    let addr = serve_backend(app).await;
    (addr, rx)
}

#[tokio::test]
async fn the_refresh_proxy_extends_proxy_authenticated_connections() {
    let (b, mut refreshes) = refreshing_backend().await;
    let mut setup = Setup::default();
    setup.engine.auth.refresh_before = Duration::from_millis(500);
    let cfg = herald_server::ChannelProxyConfig {
        connect_url: Some(format!("http://{b}/connect")),
        refresh_url: Some(format!("http://{b}/refresh")),
        forward_headers: vec!["cookie".into()],
        timeout: Duration::from_millis(500),
        retries: 0,
        ..Default::default()
    };
    let connect = Arc::new(herald_server::HttpConnectProxy::new(&cfg).expect("connect proxy"));
    let s = start_with(setup, |s| {
        s.connect_proxy(connect)
            .forward_headers(&cfg.forward_headers)
    })
    .await;
    s.handle.node().set_channel_proxy(Arc::new(
        herald_server::HttpChannelProxy::new(&cfg).expect("refresh proxy"),
    ));
    let mut frank = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=good")]))
        .await
        .expect("frank");
    let mut sam = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=stale")]))
        .await
        .expect("sam");
    assert!(
        frank.welcome["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 3000)
    );
    // The backend is asked for both, with the forwarded cookie; neither client is.
    let mut asked = Vec::new();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_secs(10), refreshes.recv())
            .await
            .expect("the backend is asked before expiry")
            .expect("refresh request");
        assert!(
            r["headers"]["cookie"]
                .as_str()
                .is_some_and(|c| c.starts_with("session="))
        );
        asked.push(r["user_id"].as_str().unwrap_or("").to_owned());
    }
    asked.sort();
    assert_eq!(asked, ["frank", "sam"]);
    // Refused: sam's connection ends at its expiry with 4010, without a `refresh` push.
    let (_, before) = sam.closed_with(4010).await;
    assert!(before.iter().all(|f| f["type"] != "refresh"), "{before:?}");
    // Extended: frank's connection, due to expire a second before sam's, is still open.
    let (pong, pushes) = frank.call("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
    assert!(pushes.iter().all(|f| f["type"] != "refresh"), "{pushes:?}");
}

/// Issue 16: a resuming client is cheap. Its resume token at the handshake (`Herald-Resume`
/// header or `resume` query parameter) admits it as the waiting session's user without a
/// connect-proxy call; the first command must then be that `resume` (else 4502). An unknown
/// token changes nothing: the proxy decides.
#[tokio::test]
async fn a_resume_token_at_the_handshake_skips_the_connect_proxy() {
    let (s, calls) = counting_proxy_server().await;
    let mut c = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=good")]))
        .await
        .expect("connect");
    c.subscribe("news").await;
    let id = c.welcome["client_id"].clone();
    let token = c.welcome["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    cut(&s, c).await;
    // Header: no cookie needed, no proxy call.
    let mut req = ws_request(&s);
    req.headers_mut()
        .insert("Herald-Resume", token.parse().expect("hdr"));
    let mut c = Client::open_welcomed(req)
        .await
        .expect("admitted by the token");
    assert_eq!(c.welcome["user_id"], "frank");
    let r = c.ok("resume", json!({ "token": token })).await;
    assert_eq!(r["client_id"], id, "{r}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the proxy was not asked");
    let token = r["resume_token"].as_str().expect("token").to_owned();
    cut(&s, c).await;
    // Query parameter (browsers), but a first command that is not the resume: 4502.
    let url = format!("ws://{}/ws?resume={token}", s.addr);
    let mut c = Client::open_welcomed(url.into_client_request().expect("req"))
        .await
        .expect("admitted by the token");
    c.send(json!({"type": "subscribe", "id": 1, "payload": {"channel": "other"}}))
        .await;
    let (frames, code) = c.until_close().await;
    assert_eq!(code, Some(4502), "{frames:?}");
    // The session still waits; a token nobody holds goes to the proxy, which refuses.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let url = format!("ws://{}/ws?resume=0123456789abcdef", s.addr);
    let (status, _) = Client::open(url.into_client_request().expect("req"))
        .await
        .err()
        .expect("refused");
    assert_eq!((status, calls.load(Ordering::SeqCst)), (401, 2));
    // The token was claimed by the closed connection: the session is resumed through the proxy.
    let mut c = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=good")]))
        .await
        .expect("connect");
    let r = c.ok("resume", json!({ "token": token })).await;
    assert_eq!(r["client_id"], id, "{r}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Drop the socket without a close frame and wait until its session waits for `resume`.
async fn cut(s: &TestServer, c: Client) {
    let waiting = s.handle.node().waiting_sessions();
    drop(c);
    until("the session to wait", || {
        s.handle.node().waiting_sessions() == waiting + 1
    })
    .await;
}

/// Regressions (review of issue 16): a handshake resume token admitted any number of
/// connections, a connection it admitted stayed open (as the user) when its resume failed, and
/// one that never resumed parked under its own fresh token, which admitted the next connection:
/// a login that outlived the proxy's refusal. Now a token admits one connection, which closes
/// with 4502 when its resume fails, and ends (not parks) when it drops before resuming.
#[tokio::test]
async fn a_handshake_resume_token_admits_one_connection_only_for_its_resume() {
    let (s, calls) = counting_proxy_server().await;
    let by_token = |t: &str| {
        let mut req = ws_request(&s);
        req.headers_mut()
            .insert("Herald-Resume", t.parse().expect("hdr"));
        req
    };
    let c = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=good")]))
        .await
        .expect("connect");
    let token = c.welcome["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    cut(&s, c).await;
    // One connection per token: the second goes to the proxy, which refuses it (no cookie).
    let mut admitted = Client::open_welcomed(by_token(&token))
        .await
        .expect("admitted");
    let (status, _) = Client::open(by_token(&token)).await.err().expect("refused");
    assert_eq!((status, calls.load(Ordering::SeqCst)), (401, 2));
    // The real client resumes through the proxy first; the admitted connection's resume then
    // fails, and it is closed instead of staying open as frank.
    let mut real = Client::open_welcomed(with_headers(&s, &[("Cookie", "session=good")]))
        .await
        .expect("connect");
    let r = real.ok("resume", json!({ "token": token })).await;
    let token = r["resume_token"].as_str().expect("token").to_owned();
    admitted
        .send(json!({"type": "resume", "id": 1, "payload": {"token": token}}))
        .await;
    let (frames, code) = admitted.until_close().await;
    assert_eq!(code, Some(4502), "{frames:?}");
    // After a good handshake resume the connection is an ordinary one.
    cut(&s, real).await;
    let mut c = Client::open_welcomed(by_token(&token))
        .await
        .expect("admitted");
    let r = c.ok("resume", json!({ "token": token })).await;
    c.subscribe("more").await;
    let token = r["resume_token"].as_str().expect("token").to_owned();
    // A connection admitted by a token that drops before resuming does not park: its own fresh
    // token admits nothing.
    cut(&s, c).await;
    let fresh = Client::open_welcomed(by_token(&token))
        .await
        .expect("admitted");
    let fresh_token = fresh.welcome["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let waiting = s.handle.node().waiting_sessions();
    drop(fresh);
    until("the admitted connection to be gone", || {
        s.handle.connections() == 0
    })
    .await;
    assert_eq!(
        s.handle.node().waiting_sessions(),
        waiting,
        "it did not park"
    );
    let calls_before = calls.load(Ordering::SeqCst);
    let (status, _) = Client::open(by_token(&fresh_token))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, calls.load(Ordering::SeqCst)),
        (401, calls_before + 1)
    );
}

/// A server whose connect proxy admits `session=good` as frank, and the count of proxy calls.
async fn counting_proxy_server() -> (TestServer, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/connect",
        post(move |Json(req): Json<Value>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                if req["headers"]["cookie"].as_str() == Some("session=good") {
                    Json(json!({"result": {"user": "frank"}}))
                } else {
                    Json(json!({"error": {"message": "bad session"}}))
                }
            }
        }),
    );
    let b = serve_backend(app).await;
    let s = start_with(Setup::default(), |s| {
        s.connect_proxy(connect_proxy(format!("http://{b}/connect")))
    })
    .await;
    (s, calls)
}

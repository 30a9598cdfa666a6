//! Security over real sockets: token verification and carriers, first-message auth, per-command
//! authorization, refresh/expiry, revocation, Origin checks, rate and connection limits.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::SinkExt;
use herald_core::{AuthConfig, NamespaceOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-test-secret-test-secret!";

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims for `user`, valid for an hour, plus `extra`.
fn claims(user: &str, extra: Value) -> Value {
    let mut c = json!({"sub": user, "exp": now() + 3600, "iat": now()});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

fn hs(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn signed(alg: Algorithm, key_file: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = std::fs::read(key_path(key_file)).expect("key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .expect("parse key");
    let mut h = Header::new(alg);
    h.kid = kid.map(Into::into);
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

/// A token with a hand-made header and no valid signature (`alg: none`, confusion).
fn unsigned(header: &Value, claims: &Value, sig: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        b.encode(header.to_string()),
        b.encode(claims.to_string()),
        b.encode(sig)
    )
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = EncodingKey::from_secret(key);
    let t = jsonwebtoken::crypto::sign(msg, &k, Algorithm::HS256).expect("sign");
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .expect("b64")
}

/// Namespaces: `public` (anonymous ok, anyone subscribes), `chat` (users; token claims decide),
/// `dm` (user-limited channels), `secret` (private: channel tokens only).
fn secure_setup() -> Setup {
    let mut s = Setup::default();
    s.engine.auth = AuthConfig {
        hmac_secret: Some(SECRET.into()),
        public_keys: vec![key_path("rsa.pub"), key_path("ec.pub"), key_path("ed.pub")],
        ..Default::default()
    };
    s.engine.default_namespace = None;
    let history = |mut ns: NamespaceOptions| {
        ns.history_size = 10;
        ns.history_ttl = Duration::from_secs(60);
        ns.presence = true;
        ns
    };
    s.engine.namespaces.insert(
        "public".into(),
        history(NamespaceOptions {
            anonymous: true,
            allow_subscribe: true,
            ..Default::default()
        }),
    );
    s.engine
        .namespaces
        .insert("chat".into(), history(NamespaceOptions::default()));
    s.engine.namespaces.insert(
        "dm".into(),
        history(NamespaceOptions {
            allow_publish: true,
            ..Default::default()
        }),
    );
    s.engine.namespaces.insert(
        "secret".into(),
        NamespaceOptions {
            private: true,
            allow_subscribe: true,
            ..Default::default()
        },
    );
    s
}

fn bearer(
    s: &TestServer,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = ws_request(s);
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("hdr"),
    );
    req
}

async fn connect_as(s: &TestServer, token: &str) -> Client {
    Client::open_welcomed(bearer(s, token))
        .await
        .expect("authenticated connect")
}

async fn refused(s: &TestServer, token: &str) -> (u16, String) {
    match Client::open(bearer(s, token)).await {
        Ok(_) => panic!("token {token:?} was accepted"),
        Err((status, body)) => (status, body["code"].as_str().unwrap_or("").to_owned()),
    }
}

#[tokio::test]
async fn tokens_of_every_supported_algorithm_authenticate() {
    let s = start(secure_setup()).await;
    let c = connect_as(&s, &hs(&claims("alice", json!({})))).await;
    assert_eq!(c.welcome["user_id"], "alice");
    assert!(
        c.welcome["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 3_000_000)
    );
    for (alg, key) in [
        (Algorithm::RS256, "rsa.key"),
        (Algorithm::ES256, "ec.key"),
        (Algorithm::EdDSA, "ed.key"),
    ] {
        let c = connect_as(&s, &signed(alg, key, None, &claims("bob", json!({})))).await;
        assert_eq!(c.welcome["user_id"], "bob", "{alg:?}");
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_documented_codes() {
    let mut setup = secure_setup();
    setup.engine.auth.audience = Some("herald".into());
    setup.engine.auth.issuer = Some("https://auth.example".into());
    let s = start(setup).await;
    let good = json!({"aud": "herald", "iss": "https://auth.example"});
    connect_as(&s, &hs(&claims("alice", good.clone()))).await;

    let with = |extra: Value| {
        let mut c = claims("alice", good.clone());
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        c
    };
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &with(json!({})),
        &EncodingKey::from_secret(b"not-the-server-secret-not-the-server"),
    )
    .expect("sign");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            hs(&with(json!({"exp": now() - 120}))),
            "token_expired",
        ),
        (
            "not yet valid",
            hs(&with(json!({"nbf": now() + 600}))),
            "token_invalid",
        ),
        (
            "wrong aud",
            hs(&with(json!({"aud": "other"}))),
            "token_invalid",
        ),
        (
            "wrong iss",
            hs(&with(json!({"iss": "https://evil.example"}))),
            "token_invalid",
        ),
        (
            "no aud",
            hs(&claims("alice", json!({"iss": "https://auth.example"}))),
            "token_invalid",
        ),
        ("bad signature", forged, "token_invalid"),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &with(json!({})), b""),
            "token_invalid",
        ),
        (
            "alg confusion",
            confused_token(&with(json!({}))),
            "token_invalid",
        ),
        (
            "channel token",
            hs(&with(json!({"channel": "chat:x"}))),
            "token_invalid",
        ),
        ("junk", "x".into(), "token_invalid"),
        ("junk parts", "a.b.c".into(), "token_invalid"),
        ("empty parts", "....".into(), "token_invalid"),
        ("too large", "A".repeat(20_000), "token_invalid"),
    ];
    for (what, token, code) in cases {
        assert_eq!(refused(&s, &token).await, (401, code.to_owned()), "{what}");
    }
}

/// Algorithm confusion: HS256 "signed" with the server's RSA *public* key as the secret.
fn confused_token(body: &Value) -> String {
    let rsa_pub = std::fs::read(key_path("rsa.pub")).expect("pub");
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let t = unsigned(&header, body, b"");
    let part = t.rsplit_once('.').expect("dot").0;
    unsigned(&header, body, &hmac_sha256(&rsa_pub, part.as_bytes()))
}

#[tokio::test]
async fn algorithm_confusion_is_rejected_without_an_hmac_key() {
    let mut setup = secure_setup();
    setup.engine.auth.hmac_secret = None;
    let s = start(setup).await;
    let confused = confused_token(&claims("mallory", json!({})));
    assert_eq!(refused(&s, &confused).await, (401, "token_invalid".into()));
    let ok = signed(Algorithm::RS256, "rsa.key", None, &claims("bob", json!({})));
    connect_as(&s, &ok).await;
}

#[tokio::test]
async fn jwks_keys_are_found_by_kid_and_symmetric_jwks_keys_are_ignored() {
    let mut setup = secure_setup();
    setup.engine.auth.hmac_secret = None;
    setup.engine.auth.public_keys.clear();
    setup.engine.auth.jwks = Some(key_path("jwks.json").display().to_string());
    let s = start(setup).await;
    let doc = herald_server::jwks::fetch(&key_path("jwks.json").display().to_string())
        .await
        .expect("read jwks");
    assert_eq!(s.handle.node().verifier().set_jwks(&doc).expect("jwks"), 1);
    let t = signed(
        Algorithm::RS256,
        "rsa.key",
        Some("rsa-1"),
        &claims("carol", json!({})),
    );
    assert_eq!(connect_as(&s, &t).await.welcome["user_id"], "carol");
    // The JWKS `oct` key "sym" must not become an HMAC key.
    let forged = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("sym".into());
        jsonwebtoken::encode(
            &h,
            &claims("mallory", json!({})),
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .expect("sign")
    };
    assert_eq!(refused(&s, &forged).await, (401, "token_invalid".into()));
}

#[tokio::test]
async fn token_carriers_cookie_subprotocol_and_query_are_configurable() {
    let mut setup = secure_setup();
    setup.engine.auth.cookie = Some("herald_token".into());
    let s = start(setup).await;
    let t = hs(&claims("alice", json!({})));

    let mut req = ws_request(&s);
    req.headers_mut().insert(
        "Cookie",
        format!("theme=dark; herald_token={t}")
            .parse()
            .expect("hdr"),
    );
    let c = Client::open_welcomed(req).await.expect("cookie");
    assert_eq!(c.welcome["user_id"], "alice");

    let mut req = ws_request(&s);
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("herald.v1.json, herald.auth.{t}")
            .parse()
            .expect("hdr"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("subprotocol");
    // The server selects the format only; the token entry is never echoed.
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("herald.v1.json")
    );
    let mut c = Client::from_stream(ws);
    assert_eq!(c.next().await["payload"]["user_id"], "alice");

    // Query-string tokens are off by default: the connection stays anonymous.
    let req = format!("ws://{}/ws?token={t}", s.addr);
    let c = Client::open_welcomed(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(req)
            .expect("req"),
    )
    .await
    .expect("anonymous");
    assert_eq!(c.welcome["user_id"], "");

    let mut setup = secure_setup();
    setup.engine.auth.query_param = Some("token".into());
    let s2 = start(setup).await;
    let req = format!("ws://{}/ws?token={t}", s2.addr);
    let c = Client::open_welcomed(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(req)
            .expect("req"),
    )
    .await
    .expect("query");
    assert_eq!(c.welcome["user_id"], "alice");
}

fn first_message_setup() -> Setup {
    let mut s = secure_setup();
    s.engine.auth.anonymous = false;
    s.engine.auth.auth_timeout = Duration::from_millis(500);
    s
}

#[tokio::test]
async fn first_message_auth_accepts_only_auth_and_ping() {
    let s = start(first_message_setup()).await;
    let mut c = Client::open(ws_request(&s)).await.expect("upgrade");
    c.send(json!({"type": "ping", "id": "p"})).await;
    let pong = c.next().await;
    assert_eq!(
        (pong["type"].clone(), pong["id"].clone()),
        (json!("pong"), json!("p"))
    );
    c.send(
        json!({"type": "auth", "id": "a", "payload": {"token": hs(&claims("alice", json!({})))}}),
    )
    .await;
    let w = c.next().await;
    assert_eq!(w["type"], "connected");
    assert_eq!(w["payload"]["user_id"], "alice");
    // §2: every command with an `id` gets one reply with it; for `auth` that is `connected`.
    assert_eq!(w["id"], "a");

    // Anything else first: an error, then close 4502.
    let mut c = Client::open(ws_request(&s)).await.expect("upgrade");
    c.send(json!({"type": "subscribe", "id": "s", "payload": {"channel": "public:x"}}))
        .await;
    let (_, frames) = c.closed_with(4502).await;
    assert_eq!(frames[0]["payload"]["code"], "unauthorized");
    assert_eq!(frames[0]["id"], "s");

    // A bad token in `auth`: the token's code, then 4502.
    let mut c = Client::open(ws_request(&s)).await.expect("upgrade");
    c.send(json!({"type": "auth", "id": "a", "payload": {"token": "nope"}}))
        .await;
    let (adv, frames) = c.closed_with(4502).await;
    assert_eq!(frames[0]["payload"]["code"], "token_invalid");
    assert_eq!(adv["reconnect"], false);

    // No token at all while anonymous connections are off.
    let mut c = Client::open(ws_request(&s)).await.expect("upgrade");
    c.send(json!({"type": "auth", "id": "a", "payload": {}}))
        .await;
    let (_, frames) = c.closed_with(4502).await;
    assert_eq!(frames[0]["payload"]["code"], "unauthorized");
}

#[tokio::test]
async fn first_message_auth_times_out_with_4011() {
    let s = start(first_message_setup()).await;
    let mut c = Client::open(ws_request(&s)).await.expect("upgrade");
    let (adv, frames) = c.closed_with(4011).await;
    assert_eq!(adv["reconnect"], true);
    assert!(
        frames.iter().all(|f| f["type"] != "connected"),
        "{frames:?}"
    );
    // The handshake path still works on the same server.
    connect_as(&s, &hs(&claims("alice", json!({})))).await;
}

#[tokio::test]
async fn every_command_is_authorized_against_namespace_and_claims() {
    let s = start(secure_setup()).await;
    let t = hs(&claims(
        "alice",
        json!({"channels": ["chat:team-*"], "publish": ["chat:team-a"], "info": {"name": "Alice"}}),
    ));
    let mut alice = connect_as(&s, &t).await;
    alice.subscribe("chat:team-a").await;
    alice.subscribe("chat:team-b").await;
    for (kind, channel) in [
        ("subscribe", "chat:general"),
        ("history", "chat:general"),
        ("presence", "chat:general"),
        ("presence_stats", "chat:general"),
        ("publish", "chat:team-b"),
    ] {
        let mut p = json!({"channel": channel});
        if kind == "publish" {
            p["data"] = json!(1);
        }
        let (r, _) = alice.call(kind, p).await;
        assert_eq!(
            r["payload"]["code"], "permission_denied",
            "{kind} {channel}: {r}"
        );
    }
    alice.publish("chat:team-a", json!("hi")).await;
    let m = alice.next_message().await;
    assert_eq!(m["info"]["info"]["name"], "Alice", "{m}");
    let p = alice
        .ok("presence", json!({"channel": "chat:team-a"}))
        .await;
    assert_eq!(p["clients"][0]["info"]["name"], "Alice");

    // Anonymous clients: only namespaces that admit them.
    let mut anon = Client::connect(&s).await;
    anon.subscribe("public:news").await;
    let (r, _) = anon
        .call("subscribe", json!({"channel": "chat:team-a"}))
        .await;
    assert_eq!(r["payload"]["code"], "unauthorized");
    let (r, _) = anon
        .call("publish", json!({"channel": "public:news", "data": 1}))
        .await;
    assert_eq!(r["payload"]["code"], "permission_denied");
}

#[tokio::test]
async fn user_limited_channels_admit_only_their_users() {
    let s = start(secure_setup()).await;
    let mut alice = connect_as(&s, &hs(&claims("alice", json!({})))).await;
    let mut mallory = connect_as(&s, &hs(&claims("mallory", json!({"channels": ["*"]})))).await;
    alice.subscribe("dm:#alice,bob").await;
    alice.subscribe("dm:#alice").await;
    for ch in ["dm:#alice,bob", "dm:#alice", "dm:#bob#alice"] {
        let (r, _) = mallory.call("subscribe", json!({"channel": ch})).await;
        assert_eq!(r["payload"]["code"], "permission_denied", "{ch}");
        let (r, _) = mallory
            .call("publish", json!({"channel": ch, "data": 1}))
            .await;
        assert_eq!(r["payload"]["code"], "permission_denied", "{ch}");
    }
    alice.publish("dm:#alice,bob", json!("hello bob")).await;
    assert_eq!(alice.next_message().await["data"], "hello bob");
}

#[tokio::test]
async fn private_channels_need_a_channel_token_for_this_user_and_channel() {
    let s = start(secure_setup()).await;
    let mut alice = connect_as(&s, &hs(&claims("alice", json!({"channels": ["*"]})))).await;
    let (r, _) = alice
        .call("subscribe", json!({"channel": "secret:plans"}))
        .await;
    assert_eq!(r["payload"]["code"], "permission_denied");
    let for_bob = hs(&claims("bob", json!({"channel": "secret:plans"})));
    let (r, _) = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": for_bob}),
        )
        .await;
    assert_eq!(r["payload"]["code"], "token_invalid");
    let other = hs(&claims("alice", json!({"channel": "secret:other"})));
    let (r, _) = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": other}),
        )
        .await;
    assert_eq!(r["payload"]["code"], "token_invalid");
    let mut expired = claims("alice", json!({"channel": "secret:plans"}));
    expired["exp"] = json!(now() - 120);
    let (r, _) = alice
        .call(
            "subscribe",
            json!({"channel": "secret:plans", "token": hs(&expired)}),
        )
        .await;
    assert_eq!(r["payload"]["code"], "token_expired");
    let good = hs(&claims("alice", json!({"channel": "secret:plans"})));
    alice
        .ok(
            "subscribe",
            json!({"channel": "secret:plans", "token": good}),
        )
        .await;
}

fn short_lived(user: &str, secs: u64) -> String {
    let mut c = claims(user, json!({"channels": ["chat:*"]}));
    c["exp"] = json!(now() + secs);
    hs(&c)
}

#[tokio::test]
async fn refresh_keeps_the_connection_past_the_first_expiry() {
    let s = start(secure_setup()).await;
    let mut c = connect_as(&s, &short_lived("alice", 3)).await;
    // The server asks for a fresh token before expiry (halfway through a short lifetime).
    let push = c.next().await;
    assert_eq!(push["type"], "refresh", "{push}");
    assert!(
        push["payload"]["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 3000)
    );
    let (r, _) = c
        .call("refresh", json!({"token": hs(&claims("bob", json!({})))}))
        .await;
    assert_eq!(
        r["payload"]["code"], "token_invalid",
        "another user's token"
    );
    let r = c
        .ok("refresh", json!({"token": short_lived("alice", 3600)}))
        .await;
    assert!(r["expires_in_ms"].as_u64().is_some_and(|ms| ms > 3_000_000));
    // Until well past the first token's expiry, the connection keeps answering.
    let past = now() + 4;
    while now() < past {
        let (pong, _) = c.call("ping", json!({})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn expiry_without_refresh_closes_with_4010() {
    let s = start(secure_setup()).await;
    let mut c = connect_as(&s, &short_lived("alice", 2)).await;
    let (adv, frames) = c.closed_with(4010).await;
    assert_eq!(adv["reconnect"], true);
    assert!(frames.iter().any(|f| f["type"] == "refresh"), "{frames:?}");
}

async fn api_post(s: &TestServer, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    let body = body.to_string();
    let auth = key
        .map(|k| format!("Authorization: apikey {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let status = out[9..12].parse().expect("status");
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

const API_KEY: &str = "api-key-0123456789abcdef";

#[tokio::test]
async fn revocation_closes_live_connections_and_rejects_the_token() {
    let mut setup = secure_setup();
    setup.engine.auth.api_keys = vec![API_KEY.into()];
    let s = start(setup).await;
    let t = hs(&claims("alice", json!({})));
    let mut a1 = connect_as(&s, &t).await;
    let mut a2 = connect_as(&s, &t).await;
    let mut bob = connect_as(&s, &hs(&claims("bob", json!({"jti": "bob-1"})))).await;

    assert_eq!(
        api_post(&s, "/api/v1/revoke", None, json!({"user": "alice"}))
            .await
            .0,
        401
    );
    assert_eq!(
        api_post(
            &s,
            "/api/v1/revoke",
            Some("wrong-key-wrong-key"),
            json!({"user": "alice"})
        )
        .await
        .0,
        401
    );
    let (status, body) = api_post(
        &s,
        "/api/v1/revoke",
        Some(API_KEY),
        json!({"user": "alice"}),
    )
    .await;
    assert_eq!((status, body["closed"].clone()), (200, json!(2)));
    for c in [&mut a1, &mut a2] {
        let (adv, _) = c.closed_with(4503).await;
        assert_eq!(adv["reconnect"], false);
    }
    assert_eq!(refused(&s, &t).await, (401, "token_revoked".into()));

    let (status, body) = api_post(
        &s,
        "/api/v1/revoke",
        Some(API_KEY),
        json!({"token_id": "bob-1"}),
    )
    .await;
    assert_eq!((status, body["closed"].clone()), (200, json!(1)));
    bob.closed_with(4503).await;
    assert_eq!(
        api_post(&s, "/api/v1/revoke", Some(API_KEY), json!({"nobody": 1}))
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn disallowed_origin_gets_403_before_the_upgrade() {
    let mut setup = secure_setup();
    setup.server.allowed_origins = vec![
        "https://app.example.com".into(),
        "https://*.example.org".into(),
    ];
    setup.server.allow_missing_origin = false;
    let s = start(setup).await;
    let with_origin = |o: &str| {
        let mut r = ws_request(&s);
        r.headers_mut().insert("Origin", o.parse().expect("hdr"));
        r
    };
    for o in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let e = Client::open(with_origin(o)).await.err().expect("refused");
        assert_eq!(e.0, 403, "{o}");
    }
    assert_eq!(
        Client::open(ws_request(&s))
            .await
            .err()
            .expect("no origin")
            .0,
        403
    );
    Client::open_welcomed(with_origin("https://app.example.com"))
        .await
        .expect("allowed");
    Client::open_welcomed(with_origin("https://eu.example.org"))
        .await
        .expect("allowed");
}

#[tokio::test]
async fn command_rate_limit_answers_rate_limited_recovers_then_closes_when_sustained() {
    let mut setup = secure_setup();
    setup.engine.limits.commands_per_second = 5;
    setup.engine.limits.commands_burst = 5;
    setup.engine.limits.rate_limited_close_after = 50;
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    for i in 0..10 {
        c.send(json!({"type": "ping", "id": i})).await;
    }
    let mut limited = 0;
    for _ in 0..10 {
        let f = c.next().await;
        if f["payload"]["code"] == "rate_limited" {
            assert_eq!(f["payload"]["retryable"], true);
            limited += 1;
        }
    }
    assert!(limited >= 4, "{limited} of 10 limited");
    // The bucket refills: a ping is answered again (polled, not slept).
    until_pong(&mut c).await;
    // Sustained excess closes the socket with 4004.
    for i in 0..200 {
        if c.ws
            .send(Message::Text(
                json!({"type": "ping", "id": i}).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    c.closed_with(4004).await;
}

async fn until_pong(c: &mut Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (r, _) = c.call("ping", json!({})).await;
        if r["type"] == "pong" {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn per_user_publish_rate_is_limited() {
    let mut setup = secure_setup();
    setup.engine.limits.publish_per_second_per_user = 2;
    setup.engine.limits.publish_burst_per_user = 2;
    let s = start(setup).await;
    let t = hs(&claims("alice", json!({"publish": ["chat:*"]})));
    let mut a = connect_as(&s, &t).await;
    let mut b = connect_as(&s, &t).await;
    a.ok("publish", json!({"channel": "chat:x", "data": 1}))
        .await;
    b.ok("publish", json!({"channel": "chat:x", "data": 2}))
        .await;
    // The third publish of the same user, on another connection, is over the per-user limit.
    let (r, _) = a
        .call("publish", json!({"channel": "chat:x", "data": 3}))
        .await;
    assert_eq!(r["payload"]["code"], "rate_limited");
}

#[tokio::test]
async fn per_ip_connect_rate_and_connection_caps_answer_429() {
    let mut setup = secure_setup();
    setup.engine.limits.connect_per_second_per_ip = 1;
    setup.engine.limits.connect_burst_per_ip = 2;
    let s = start(setup).await;
    let _a = Client::connect(&s).await;
    let _b = Client::connect(&s).await;
    let (status, body) = Client::open(ws_request(&s)).await.err().expect("429");
    assert_eq!((status, body["code"].as_str()), (429, Some("rate_limited")));

    let mut setup = secure_setup();
    setup.engine.limits.max_connections_per_ip = 2;
    setup.engine.limits.max_connections_per_user = 1;
    let s = start(setup).await;
    let t = hs(&claims("alice", json!({})));
    let a = connect_as(&s, &t).await;
    assert_eq!(refused(&s, &t).await.0, 429, "second connection of alice");
    let _b = Client::connect(&s).await;
    assert_eq!(
        Client::open(ws_request(&s)).await.err().expect("cap").0,
        429
    );
    drop(a);
    // The slot frees when the server sees the socket close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::open(bearer(&s, &t)).await {
            Ok(_) => break,
            Err((429, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test]
async fn forwarded_client_ips_count_only_behind_trusted_proxies() {
    let mut setup = secure_setup();
    setup.engine.limits.max_connections_per_ip = 1;
    setup.server.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    let s = start(setup).await;
    let from = |ip: &str| {
        let mut r = ws_request(&s);
        r.headers_mut()
            .insert("X-Forwarded-For", ip.parse().expect("hdr"));
        r
    };
    let _a = Client::open_welcomed(from("203.0.113.1")).await.expect("a");
    let _b = Client::open_welcomed(from("203.0.113.2")).await.expect("b");
    assert_eq!(
        Client::open(from("203.0.113.1"))
            .await
            .err()
            .expect("same ip")
            .0,
        429
    );

    // Without the proxy being trusted, the header is ignored: every client is 127.0.0.1.
    let mut setup = secure_setup();
    setup.engine.limits.max_connections_per_ip = 1;
    let s = start(setup).await;
    let mut r = ws_request(&s);
    r.headers_mut()
        .insert("X-Forwarded-For", "203.0.113.1".parse().expect("hdr"));
    let _a = Client::open_welcomed(r).await.expect("a");
    let mut r = ws_request(&s);
    r.headers_mut()
        .insert("X-Forwarded-For", "203.0.113.2".parse().expect("hdr"));
    assert_eq!(Client::open(r).await.err().expect("spoofed").0, 429);
}

#[tokio::test]
async fn without_keys_anonymous_namespaces_work_and_tokens_are_refused() {
    let mut setup = secure_setup();
    setup.engine.auth = AuthConfig::default();
    let s = start(setup).await;
    let mut anon = Client::connect(&s).await;
    anon.subscribe("public:news").await;
    let (r, _) = anon.call("subscribe", json!({"channel": "chat:x"})).await;
    assert_eq!(r["payload"]["code"], "unauthorized");
    assert_eq!(
        refused(&s, &hs(&claims("alice", json!({})))).await,
        (401, "token_invalid".into())
    );
}

#[tokio::test]
async fn a_resume_token_cannot_switch_users() {
    let s = start(secure_setup()).await;
    let alice_token = hs(&claims("alice", json!({"channels": ["chat:*"]})));
    let mut alice = connect_as(&s, &alice_token).await;
    alice.subscribe("chat:a").await;
    let resume = alice.welcome["resume_token"].clone();
    drop(alice); // no close frame: the session waits for resume
    until("session to wait for resume", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    let mut mallory = connect_as(&s, &hs(&claims("mallory", json!({})))).await;
    let (r, _) = mallory.call("resume", json!({"token": resume})).await;
    assert_eq!(r["payload"]["code"], "session_not_found");
    let mut anon = Client::connect(&s).await;
    let (r, _) = anon.call("resume", json!({"token": resume})).await;
    assert_eq!(r["payload"]["code"], "session_not_found");
    // The rightful user still resumes.
    let mut alice = connect_as(&s, &alice_token).await;
    let r = alice.ok("resume", json!({"token": resume})).await;
    assert_eq!(r["channels"][0]["channel"], "chat:a");
}

/// Serve one file over plain HTTP on 127.0.0.1 (a stand-in identity provider), re-reading it on
/// every request.
async fn serve_file(path: PathBuf) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let body = std::fs::read(&path).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        }
    });
    addr
}

#[tokio::test]
async fn jwks_is_fetched_over_http_and_refreshed() {
    let dir = std::env::temp_dir().join(format!("herald-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("jwks.json");
    std::fs::write(&file, r#"{"keys":[]}"#).expect("write");
    let idp = serve_file(file.clone()).await;
    let url = format!("http://{idp}/.well-known/jwks.json");

    let mut setup = secure_setup();
    setup.engine.auth.hmac_secret = None;
    setup.engine.auth.public_keys.clear();
    setup.engine.auth.jwks = Some(url.clone());
    let s = start(setup).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let n = herald_server::jwks::start(
        s.handle.node().verifier().clone(),
        url,
        Duration::from_millis(100),
        stop,
    )
    .await
    .expect("initial fetch");
    assert_eq!(n, 0);
    let t = signed(
        Algorithm::RS256,
        "rsa.key",
        Some("rsa-1"),
        &claims("dora", json!({})),
    );
    assert_eq!(refused(&s, &t).await.0, 401);
    // The identity provider publishes the key; the next refresh picks it up.
    std::fs::copy(key_path("jwks.json"), &file).expect("publish key");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::open_welcomed(bearer(&s, &t)).await {
            Ok(c) => {
                assert_eq!(c.welcome["user_id"], "dora");
                break;
            }
            Err((401, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Regression: the refresh timer fired while a client frame was half-read, and the read was
/// cancelled, losing the frame's first bytes (clients then missed pongs and got 4000).
#[tokio::test]
async fn a_refresh_tick_never_cuts_a_half_read_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(secure_setup()).await;
    let auth = format!("Authorization: Bearer {}\r\n", short_lived("alice", 2));
    let mut tcp = raw_client_with(s.addr, None, &auth).await;
    let frame = masked_text(br#"{"type":"ping","id":"half"}"#);
    let (first, second) = frame.split_at(frame.len() / 2);
    tcp.write_all(first).await.expect("first half");
    // Wait for the refresh push: the timer has fired while the frame was half-read.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"refresh\"") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("refresh push in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    tcp.write_all(second).await.expect("second half");
    while !String::from_utf8_lossy(&seen).contains("\"pong\"") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("pong in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("\"half\""));
}

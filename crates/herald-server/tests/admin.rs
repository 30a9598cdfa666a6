//! The admin UI's server side (`/admin`, `[admin]`) over real sockets: off by default, every
//! API route behind a session, the login (secret, rate limit, cookie), CSRF defences, and the
//! actions reaching real WebSocket clients.

mod support;

use herald_server::AdminConfig;
use serde_json::{Value, json};
use support::*;

const ADMIN_SECRET: &str = "admin-test-secret-0123456789";
const HMAC: &str = "admin-test-hmac-secret-admin-test-0123";
const CSRF: (&str, &str) = ("x-herald-admin", "1");

fn admin_config() -> AdminConfig {
    AdminConfig {
        secret: Some(ADMIN_SECRET.into()),
        max_failed_logins: 3,
        ..AdminConfig::default()
    }
}

async fn admin_server() -> TestServer {
    let mut setup = Setup::default();
    setup.engine.auth.hmac_secret = Some(HMAC.into());
    start_with(setup, |b| b.admin(admin_config())).await
}

struct Answer {
    status: u16,
    set_cookie: Option<String>,
    body: Value,
}

async fn send(
    s: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let r = http::request(s.addr, method, path, &h, body.to_owned()).await;
    let status = r.status;
    let set_cookie = r.header("set-cookie").map(str::to_owned);
    let bytes = r.bytes().await;
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        set_cookie,
        body,
    }
}

async fn login(s: &TestServer) -> String {
    let a = send(
        s,
        "POST",
        "/admin/login",
        &[CSRF],
        &json!({"secret": ADMIN_SECRET}).to_string(),
    )
    .await;
    assert_eq!(a.status, 204, "{}", a.body);
    let c = a.set_cookie.expect("set-cookie");
    let id = c
        .strip_prefix("herald_admin=")
        .and_then(|r| r.split(';').next())
        .expect("session id");
    format!("herald_admin={id}")
}

async fn get(s: &TestServer, cookie: &str, path: &str) -> Answer {
    send(s, "GET", path, &[("cookie", cookie)], "").await
}

async fn post(s: &TestServer, cookie: &str, path: &str, body: Value) -> Answer {
    send(
        s,
        "POST",
        path,
        &[("cookie", cookie), CSRF],
        &body.to_string(),
    )
    .await
}

fn user_token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(HMAC.as_bytes()),
    )
    .expect("sign")
}

async fn connect_user(s: &TestServer, user: &str) -> Client {
    let token = user_token(user);
    let mut req = ws_request(s);
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("hdr"),
    );
    Client::open_welcomed(req).await.expect("connect")
}

#[tokio::test]
async fn admin_is_off_by_default() {
    let s = start_default().await;
    for (method, path) in [
        ("GET", "/admin"),
        ("GET", "/admin/app.js"),
        ("POST", "/admin/login"),
    ]
    .into_iter()
    .chain(herald_server::admin::API_ROUTES)
    {
        let a = send(&s, method, path, &[CSRF], "{}").await;
        assert_eq!(a.status, 404, "{method} {path}");
    }
}

#[tokio::test]
async fn every_api_route_needs_a_session() {
    let s = admin_server().await;
    let paths: Vec<&str> = herald_server::admin::API_ROUTES
        .iter()
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(
        paths,
        [
            "/admin/api/overview",
            "/admin/api/channels",
            "/admin/api/channel",
            "/admin/api/connections",
            "/admin/api/disconnect",
            "/admin/api/revoke",
            "/admin/api/publish",
            "/admin/api/dead_letters",
            "/admin/api/events",
        ]
    );
    let cookie = login(&s).await;
    for (method, path) in herald_server::admin::API_ROUTES {
        for headers in [vec![CSRF], vec![CSRF, ("cookie", "herald_admin=forged")]] {
            let a = send(&s, method, path, &headers, "{}").await;
            assert_eq!(a.status, 401, "{method} {path}: {}", a.body);
            assert_eq!(a.body["code"], "unauthorized");
        }
        // The same request with the session is routed (not 401, not 404).
        let a = send(&s, method, path, &[CSRF, ("cookie", &cookie)], "{}").await;
        assert!(
            ![401, 404].contains(&a.status),
            "{method} {path}: {}",
            a.status
        );
    }
    // The page itself holds no data and is served without a session.
    let page = send(&s, "GET", "/admin", &[], "").await;
    assert_eq!(page.status, 200);
}

#[tokio::test]
async fn wrong_secret_is_refused_and_failures_are_rate_limited() {
    let s = admin_server().await;
    for _ in 0..3 {
        let a = send(
            &s,
            "POST",
            "/admin/login",
            &[CSRF],
            r#"{"secret":"wrong-secret-0123456789"}"#,
        )
        .await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.body["code"], "unauthorized");
        assert_eq!(a.set_cookie, None);
    }
    // Over the limit even the right secret is refused from this address.
    let body = json!({"secret": ADMIN_SECRET}).to_string();
    let a = send(&s, "POST", "/admin/login", &[CSRF], &body).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["code"], "rate_limited");
    assert_eq!(a.set_cookie, None);
    // Malformed bodies are 400.
    let a = send(&s, "POST", "/admin/login", &[CSRF], "not json").await;
    assert!([400, 429].contains(&a.status));
}

#[tokio::test]
async fn login_sets_an_httponly_strict_cookie() {
    let s = admin_server().await;
    let body = json!({"secret": ADMIN_SECRET}).to_string();
    let a = send(&s, "POST", "/admin/login", &[CSRF], &body).await;
    assert_eq!(a.status, 204);
    let c = a.set_cookie.expect("set-cookie");
    let (id, attrs) = c
        .strip_prefix("herald_admin=")
        .and_then(|r| r.split_once(';'))
        .expect("cookie");
    assert_eq!(id.len(), 43, "256 random bits, base64url");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(
        attrs,
        " Path=/admin; HttpOnly; SameSite=Strict; Max-Age=28800"
    );
    // Two logins, two sessions.
    assert_ne!(login(&s).await, login(&s).await);
}

#[tokio::test]
async fn overview_counts_a_connected_client() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let a = get(&s, &cookie, "/admin/api/overview").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["info"]["connections"], 0);
    assert!(a.body["stats"]["messages_in"].is_number(), "{}", a.body);
    assert!(a.body["time_ms"].as_u64().is_some_and(|t| t > 0));
    // A single node has no cluster (and the UI no per-node section); the per-node figures are
    // tested on two real nodes in crates/herald/tests/cluster.rs.
    assert!(a.body["info"].get("cluster").is_none(), "{}", a.body);
    let _c = Client::connect(&s).await;
    let a = get(&s, &cookie, "/admin/api/overview").await;
    assert_eq!(a.body["info"]["connections"], 1, "{}", a.body);
}

#[tokio::test]
async fn disconnect_closes_the_client_with_4501() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let mut carol = connect_user(&s, "carol").await;
    carol.subscribe("ops").await;
    carol.subscribe("alerts").await;
    let a = get(&s, &cookie, "/admin/api/connections?user=carol").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let sessions = a.body["sessions"].as_array().expect("sessions").clone();
    assert_eq!(sessions.len(), 1, "{}", a.body);
    assert_eq!(sessions[0]["user"], "carol");
    assert_eq!(sessions[0]["live"], true);
    assert_eq!(sessions[0]["format"], "herald.v1.json");
    assert_eq!(sessions[0]["channels"], json!(["alerts", "ops"]));
    let client_id = sessions[0]["client_id"]
        .as_str()
        .expect("client id")
        .to_owned();
    assert_eq!(json!(client_id), carol.welcome["client_id"]);
    let by_id = get(
        &s,
        &cookie,
        &format!("/admin/api/connections?client_id={client_id}"),
    )
    .await;
    assert_eq!(by_id.body["sessions"][0]["user"], "carol");
    let none = get(&s, &cookie, "/admin/api/connections").await;
    assert_eq!(none.status, 400);

    let a = post(
        &s,
        &cookie,
        "/admin/api/disconnect",
        json!({"client_id": client_id}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["disconnected"], 1);
    carol.closed_with(4501).await;
    // Validated like the server API.
    let a = post(&s, &cookie, "/admin/api/disconnect", json!({})).await;
    assert_eq!(
        (a.status, a.body["code"].clone()),
        (400, json!("bad_request"))
    );
}

#[tokio::test]
async fn publish_reaches_a_subscriber_and_the_channel_pages_show_it() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let mut sub = connect_user(&s, "dave").await;
    sub.subscribe("news").await;
    let a = post(
        &s,
        &cookie,
        "/admin/api/publish",
        json!({"channel": "news", "data": {"hello": 1}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["offset"].is_u64());
    let m = sub.next_message().await;
    assert_eq!(m["data"], json!({"hello": 1}));

    let a = get(&s, &cookie, "/admin/api/channels?prefix=ne").await;
    assert_eq!(
        a.body["channels"],
        json!([{"channel": "news", "subscribers": 1}]),
        "{}",
        a.body
    );
    let a = get(&s, &cookie, "/admin/api/channels?prefix=zz").await;
    assert_eq!(a.body["total"], 0);
    let a = get(&s, &cookie, "/admin/api/channel?channel=news").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let clients = a.body["presence"]["clients"].as_array().expect("presence");
    assert!(clients.iter().any(|c| c["user_id"] == "dave"), "{}", a.body);
    assert_eq!(
        a.body["history"]["publications"][0]["data"],
        json!({"hello": 1})
    );

    // Bad input is refused with the server API's errors.
    let a = post(
        &s,
        &cookie,
        "/admin/api/publish",
        json!({"channel": "news"}),
    )
    .await;
    assert_eq!(a.status, 400);
    let a = send(
        &s,
        "POST",
        "/admin/api/publish",
        &[("cookie", &cookie), CSRF],
        "{oops",
    )
    .await;
    assert_eq!(a.status, 400);
    let a = get(&s, &cookie, "/admin/api/channels?limit=0").await;
    assert_eq!(a.status, 400);
    let a = get(&s, &cookie, "/admin/api/events?limit=5").await;
    assert!(a.body["events"].is_array(), "{}", a.body);
    let a = get(&s, &cookie, "/admin/api/dead_letters").await;
    assert!(a.body["dead_letters"].is_array(), "{}", a.body);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    assert_eq!(get(&s, &cookie, "/admin/api/overview").await.status, 200);
    let a = send(
        &s,
        "POST",
        "/admin/logout",
        &[("cookie", &cookie), CSRF],
        "",
    )
    .await;
    assert_eq!(a.status, 204);
    assert_eq!(
        a.set_cookie.as_deref(),
        Some("herald_admin=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")
    );
    assert_eq!(get(&s, &cookie, "/admin/api/overview").await.status, 401);
}

#[tokio::test]
async fn state_changing_requests_need_the_csrf_header_and_a_same_origin() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let publish = json!({"channel": "news", "data": 1}).to_string();
    let host = s.addr.to_string();
    let same_origin = format!("http://{host}");
    let cases: [(&[(&str, &str)], u16); 4] = [
        (&[("cookie", &cookie)], 403),
        (
            &[("cookie", &cookie), CSRF, ("origin", "http://evil.example")],
            403,
        ),
        (&[("cookie", &cookie), CSRF, ("origin", "null")], 403),
        (&[("cookie", &cookie), CSRF, ("origin", &same_origin)], 200),
    ];
    for (headers, want) in cases {
        let a = send(&s, "POST", "/admin/api/publish", headers, &publish).await;
        assert_eq!(a.status, want, "{headers:?}: {}", a.body);
        if want == 403 {
            assert_eq!(a.body["code"], "permission_denied");
        }
    }
    let login_body = json!({"secret": ADMIN_SECRET}).to_string();
    let a = send(&s, "POST", "/admin/login", &[], &login_body).await;
    assert_eq!((a.status, a.set_cookie), (403, None));
    let a = send(&s, "POST", "/admin/logout", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, 403);
    // The session survived the refused logout.
    assert_eq!(get(&s, &cookie, "/admin/api/overview").await.status, 200);
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let s = admin_server().await;
    let big_login = json!({"secret": "x".repeat(2048)}).to_string();
    let a = send(&s, "POST", "/admin/login", &[CSRF], &big_login).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let cookie = login(&s).await;
    let big = json!({"channel": "news", "data": "x".repeat(70 * 1024)});
    let a = post(&s, &cookie, "/admin/api/publish", big).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.body["code"], "too_large");
}

#[tokio::test]
async fn revoke_closes_the_users_sessions_with_4503_and_refuses_the_token() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let mut erin = connect_user(&s, "erin").await;
    let a = post(&s, &cookie, "/admin/api/revoke", json!({"user": "erin"})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["closed"], 1);
    erin.closed_with(4503).await;
    let a = get(&s, &cookie, "/admin/api/connections?user=erin").await;
    assert_eq!(a.body["sessions"], json!([]), "{}", a.body);
    let a = post(
        &s,
        &cookie,
        "/admin/api/revoke",
        json!({"user": "erin", "token_id": "x"}),
    )
    .await;
    assert_eq!(a.status, 400);
}

/// The session with this client id in a `connections` answer.
fn session_of<'a>(a: &'a Answer, client_id: &Value) -> &'a Value {
    a.body["sessions"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["client_id"] == *client_id))
        .unwrap_or_else(|| panic!("no session {client_id} in {}", a.body))
}

#[tokio::test]
async fn connections_show_transport_age_and_address_and_waiting_sessions() {
    let s = admin_server().await;
    let cookie = login(&s).await;
    let ws = connect_user(&s, "dave").await;
    let ws_id = ws.welcome["client_id"].clone();
    let bearer = format!("Bearer {}", user_token("dave"));
    let mut st = http::post(
        s.addr,
        "/http/stream",
        &[("authorization", bearer.as_str())],
        &Value::Null,
    )
    .await;
    assert_eq!(st.status, 200);
    let welcome = st.line().await.expect("connected");
    assert_eq!(welcome["type"], "connected", "{welcome}");
    let st_id = welcome["payload"]["client_id"].clone();
    // A long-poll session lives between its polls.
    let poll = http::post(
        s.addr,
        "/http/poll",
        &[("authorization", bearer.as_str())],
        &Value::Null,
    )
    .await;
    assert_eq!(poll.status, 200);
    let batch = poll.json().await;
    assert_eq!(batch[0]["type"], "connected", "{batch}");
    let poll_id = batch[0]["payload"]["client_id"].clone();

    let a = get(&s, &cookie, "/admin/api/connections?user=dave").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["sessions"].as_array().map(Vec::len),
        Some(3),
        "{}",
        a.body
    );
    for (id, transport) in [
        (&ws_id, "websocket"),
        (&st_id, "stream"),
        (&poll_id, "poll"),
    ] {
        let x = session_of(&a, id);
        assert_eq!(x["live"], true, "{x}");
        assert_eq!(x["transport"], transport, "{x}");
        assert_eq!(x["address"], "127.0.0.1", "{x}");
        assert!(x["age_ms"].as_u64().is_some(), "{x}");
    }
    let age = |a: &Answer, id: &Value| session_of(a, id)["age_ms"].as_u64().expect("age");
    let (ws_age, st_age) = (age(&a, &ws_id), age(&a, &st_id));
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let b = get(
        &s,
        &cookie,
        &format!(
            "/admin/api/connections?client_id={}",
            ws_id.as_str().expect("id")
        ),
    )
    .await;
    assert_eq!(
        b.body["sessions"].as_array().map(Vec::len),
        Some(1),
        "{}",
        b.body
    );
    assert!(
        age(&b, &ws_id) >= ws_age + 100,
        "{} then {}",
        a.body,
        b.body
    );
    let c = get(&s, &cookie, "/admin/api/connections?user=dave").await;
    assert!(
        age(&c, &st_id) >= st_age + 100,
        "{} then {}",
        a.body,
        c.body
    );

    // Cut without a close frame: the session waits for `resume`, with its age and last address.
    drop(ws);
    let mut waiting = Value::Null;
    for _ in 0..100 {
        let a = get(&s, &cookie, "/admin/api/connections?user=dave").await;
        let x = session_of(&a, &ws_id).clone();
        if x["live"] == false {
            waiting = x;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(waiting["live"], false, "still live: {waiting}");
    assert_eq!(waiting["transport"], Value::Null, "{waiting}");
    assert_eq!(waiting["address"], "127.0.0.1", "{waiting}");
    assert!(
        waiting["age_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= ws_age + 100),
        "{waiting}"
    );
    drop(st);
}

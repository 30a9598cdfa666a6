//! `Session` without a socket: commands go in through `handle`, and the tests read what the
//! session queued on its `Outlet`, over the in-memory engine (the model: centrifuge's
//! `client_test.go` on a fake transport).

use std::sync::Arc;
use std::time::Duration;

use herald_proto::{Format, frame};
use serde_json::{Value, json};

use super::*;
use crate::config::{LimitsConfig, NamespaceOptions, SlowConsumerPolicy};
use crate::outlet::Drained;
use crate::testing::node_with;

fn node() -> Arc<Node> {
    node_with(|_| {})
}

fn session(node: &Arc<Node>) -> Session {
    Session::new(node, Format::Json, Identity::anonymous())
}

/// Everything queued on the session's outlet, as JSON messages.
fn queued(s: &Session) -> Vec<Value> {
    let mut d = Drained::default();
    s.outlet().drain(usize::MAX, &mut d);
    d.frames
        .iter()
        .map(|f| {
            let (payload, _) = frame::parse_unmasked(f).expect("a frame");
            serde_json::from_slice(payload).expect("JSON")
        })
        .collect()
}

async fn send(s: &mut Session, v: Value) -> Flow {
    let bytes = v.to_string();
    match herald_proto::decode(Format::Json, bytes.as_bytes()) {
        Ok(req) => s.handle(req).await,
        Err(e) => s.decode_error(e),
    }
}

/// Send a command with `id` "1": its reply (or error) first, then what was queued after it.
async fn call_all(s: &mut Session, kind: &str, payload: Value) -> Vec<Value> {
    let flow = send(s, json!({"type": kind, "id": "1", "payload": payload})).await;
    assert_eq!(flow, Flow::Continue);
    let got = queued(s);
    assert!(!got.is_empty(), "{kind}: nothing queued");
    assert_eq!(got[0]["id"], "1", "{}", got[0]);
    got
}

/// Send a command with `id` "1" and return its reply (or error), checking nothing else came.
async fn call(s: &mut Session, kind: &str, payload: Value) -> Value {
    let mut got = call_all(s, kind, payload).await;
    assert_eq!(got.len(), 1, "{kind}: more than the reply: {got:?}");
    got.remove(0)
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["payload"]["code"].as_str().unwrap_or("")
}

async fn publish(node: &Arc<Node>, channel: &str, n: usize) {
    let mut p = session(node);
    for i in 0..n {
        let r = call(&mut p, "publish", json!({"channel": channel, "data": i})).await;
        assert_eq!(r["type"], "reply", "{r}");
    }
}

#[tokio::test]
async fn subscribe_publish_and_the_error_codes_of_each_command() {
    let node = node();
    let mut a = session(&node);
    a.welcome(None);
    assert_eq!(queued(&a)[0]["type"], "connected");
    let r = call(&mut a, "subscribe", json!({"channel": "news"})).await;
    assert_eq!(r["payload"]["offset"], 0, "{r}");
    assert_eq!(
        code(&call(&mut a, "subscribe", json!({"channel": "news"})).await),
        "already_subscribed"
    );
    publish(&node, "news", 2).await;
    let got = queued(&a);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (
            got[0]["type"].as_str(),
            got[1]["payload"]["offset"].as_u64()
        ),
        (Some("message"), Some(2))
    );
    assert_eq!(
        code(&call(&mut a, "unsubscribe", json!({"channel": "other"})).await),
        "not_subscribed"
    );
    assert_eq!(
        code(&call(&mut a, "subscribe", json!({"channel": "bad channel!"})).await),
        "invalid_channel"
    );
    assert_eq!(
        code(&call(&mut a, "nonsense", json!({})).await),
        "unknown_type"
    );
    assert_eq!(code(&call(&mut a, "auth", json!({})).await), "bad_request");
    let h = call(&mut a, "history", json!({"channel": "news", "limit": 10})).await;
    assert_eq!(
        h["payload"]["publications"].as_array().map(Vec::len),
        Some(2)
    );
    let pong = call(&mut a, "ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn namespaces_decide_who_may_do_what() {
    let node = node_with(|c| {
        c.default_namespace = None;
        c.namespaces.insert(
            "locked".into(),
            NamespaceOptions {
                anonymous: false,
                ..NamespaceOptions::dev()
            },
        );
        c.namespaces.insert(
            "quiet".into(),
            NamespaceOptions {
                allow_publish: false,
                history_size: 0,
                presence: false,
                ..NamespaceOptions::dev()
            },
        );
    });
    let mut a = session(&node);
    let sub = |ch: &str| json!({"channel": ch});
    assert_eq!(
        code(&call(&mut a, "subscribe", sub("locked:x")).await),
        "unauthorized"
    );
    assert_eq!(
        code(&call(&mut a, "subscribe", sub("nowhere")).await),
        "unknown_namespace"
    );
    assert_eq!(
        code(&call(&mut a, "publish", json!({"channel": "quiet:x", "data": 1})).await),
        "permission_denied"
    );
    assert_eq!(
        code(&call(&mut a, "history", sub("quiet:x")).await),
        "history_disabled"
    );
    assert_eq!(
        code(&call(&mut a, "presence", sub("quiet:x")).await),
        "presence_disabled"
    );
}

#[tokio::test]
async fn recovery_fills_the_gap_pages_through_long_ones_and_reports_what_it_cannot() {
    let node = node_with(|c| {
        if let Some(ns) = &mut c.default_namespace {
            ns.history_size = 250;
        }
        c.namespaces.insert(
            "short".into(),
            NamespaceOptions {
                history_size: 3,
                ..NamespaceOptions::dev()
            },
        );
    });
    publish(&node, "long", 250).await;
    let epoch = {
        let mut p = session(&node);
        let r = call(&mut p, "history", json!({"channel": "long", "limit": 1})).await;
        r["payload"]["epoch"].as_str().expect("epoch").to_owned()
    };
    // A gap larger than one history page (100): every publication, in order, once.
    let mut a = session(&node);
    let flow = send(
        &mut a,
        json!({"type": "subscribe", "id": "1", "payload": {"channel": "long",
            "recover": {"offset": 10, "epoch": epoch}}}),
    )
    .await;
    assert_eq!(flow, Flow::Continue);
    let got = queued(&a);
    assert_eq!(got[0]["payload"]["recovered"], true, "{}", got[0]);
    assert_eq!(got[0]["payload"]["missed"], 240);
    let offsets: Vec<u64> = got[1..]
        .iter()
        .map(|m| m["payload"]["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (11..=250).collect::<Vec<_>>());

    // An epoch change: nothing replayed, the new position, recovered: false.
    let r = call(
        &mut a,
        "subscribe",
        json!({"channel": "short:x", "recover": {"offset": 3, "epoch": "gone"}}),
    )
    .await;
    assert_eq!(
        (
            r["payload"]["recovered"].clone(),
            r["payload"]["missed"].clone()
        ),
        (json!(false), json!(0)),
        "{r}"
    );

    // Trimmed history: what is kept is replayed, recovered: false.
    publish(&node, "short:y", 10).await;
    let mut b = session(&node);
    let epoch =
        call(&mut b, "history", json!({"channel": "short:y"})).await["payload"]["epoch"].clone();
    let r = send(
        &mut b,
        json!({"type": "subscribe", "id": "2", "payload": {"channel": "short:y",
            "recover": {"offset": 2, "epoch": epoch}}}),
    )
    .await;
    assert_eq!(r, Flow::Continue);
    let got = queued(&b);
    assert_eq!(
        (
            got[0]["payload"]["recovered"].clone(),
            got[0]["payload"]["missed"].clone()
        ),
        (json!(false), json!(3))
    );
    assert_eq!(got[1]["payload"]["offset"], 8);
}

#[tokio::test(start_paused = true)]
async fn resume_inside_the_grace_period_keeps_subscriptions_and_buffers_after_it_is_refused() {
    let node = node_with(|c| c.session.resume_grace = Duration::from_secs(30));
    let mut a = session(&node);
    call(&mut a, "subscribe", json!({"channel": "room"})).await;
    let token = a.resume_token().to_owned();
    a.disconnected(false).await;
    assert_eq!(node.waiting_sessions(), 1);
    publish(&node, "room", 2).await;
    let mut b = session(&node);
    let mut got = call_all(&mut b, "resume", json!({"token": token})).await;
    let r = got.remove(0);
    assert_eq!(r["payload"]["channels"][0]["channel"], "room", "{r}");
    assert_eq!(r["payload"]["buffered"], 2);
    assert_eq!(got.len(), 2, "the buffered messages follow: {got:?}");
    assert_eq!(got[1]["payload"]["offset"], 2);
    assert_eq!(
        code(&call(&mut session(&node), "resume", json!({"token": token})).await),
        "session_not_found",
        "a resume token works once"
    );

    // After the grace period the session is gone.
    let new_token = r["payload"]["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    b.disconnected(false).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(node.waiting_sessions(), 0);
    let mut c = session(&node);
    assert_eq!(
        code(&call(&mut c, "resume", json!({"token": new_token})).await),
        "session_not_found"
    );
    // Resume after a subscribe is refused.
    call(&mut c, "subscribe", json!({"channel": "x"})).await;
    assert_eq!(
        code(&call(&mut c, "resume", json!({"token": "t"})).await),
        "resume_not_allowed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_session_keeps_its_ids_and_takes_the_new_connections_token() {
    let node = node_with(|c| c.session.resume_grace = Duration::from_secs(30));
    let alice = |jti: &str| {
        Identity::from_claims(crate::auth::Claims {
            sub: "alice".into(),
            jti: Some(jti.into()),
            ..Default::default()
        })
    };
    let mut a = Session::new(&node, Format::Json, alice("old"));
    call(&mut a, "subscribe", json!({"channel": "room"})).await;
    let (client_id, token) = (a.client_id().to_owned(), a.resume_token().to_owned());
    a.disconnected(false).await;
    let mut b = Session::new(&node, Format::Json, alice("new"));
    let r = call(&mut b, "resume", json!({"token": token})).await;
    assert_eq!(r["payload"]["channels"][0]["channel"], "room", "{r}");
    assert_eq!(b.client_id(), client_id, "the session keeps its client id");
    assert_eq!(b.subscriptions(), 1);
    // Another user cannot take it over with its resume token; its own user can.
    let token = r["payload"]["resume_token"]
        .as_str()
        .expect("token")
        .to_owned();
    b.disconnected(false).await;
    let mut mallory = Session::new(
        &node,
        Format::Json,
        Identity::from_claims(crate::auth::Claims {
            sub: "mallory".into(),
            ..Default::default()
        }),
    );
    assert_eq!(
        code(&call(&mut mallory, "resume", json!({"token": token})).await),
        "session_not_found"
    );
    assert_eq!(
        node.waiting_sessions(),
        1,
        "the failed attempt left it waiting"
    );
    let mut c = Session::new(&node, Format::Json, alice("newer"));
    call(&mut c, "resume", json!({"token": token})).await;
    assert_eq!(c.client_id(), client_id);
    // The registry knows the session by the latest connection's token only.
    assert_eq!(node.revoke_token("old", u64::MAX), 0);
    assert_eq!(node.revoke_token("new", u64::MAX), 0);
    assert_eq!(node.revoke_token("newer", u64::MAX), 1);
    assert_eq!(c.outlet().close_requested(), Some(CloseCode::TokenRevoked));
}

#[tokio::test]
async fn violations_and_the_rate_limit_end_the_connection_with_their_codes() {
    let node = node_with(|c| {
        c.session.max_violations = 2;
        c.limits = LimitsConfig {
            commands_per_second: 1,
            commands_burst: 3,
            rate_limited_close_after: 2,
            ..LimitsConfig::unlimited()
        };
    });
    let mut a = session(&node);
    let bad = |s: &mut Session| {
        s.decode_error(herald_proto::decode(Format::Json, b"{").expect_err("malformed"))
    };
    assert_eq!(bad(&mut a), Flow::Continue);
    assert_eq!(bad(&mut a), Flow::Continue);
    assert_eq!(bad(&mut a), Flow::Close(CloseCode::ProtocolViolations));
    let mut b = session(&node);
    for _ in 0..3 {
        assert_eq!(send(&mut b, json!({"type": "ping"})).await, Flow::Continue);
    }
    assert_eq!(send(&mut b, json!({"type": "ping"})).await, Flow::Continue);
    assert_eq!(code(queued(&b).last().expect("an answer")), "rate_limited");
    assert_eq!(
        send(&mut b, json!({"type": "ping"})).await,
        Flow::Close(CloseCode::RateLimited)
    );
}

/// Issue 13: the subscribe reply tells the client when the namespace drops messages for slow
/// readers, so a client can tell an offset skip by policy (`dropped`) from a loss (`skipped`).
#[tokio::test]
async fn the_subscribe_reply_names_a_lossy_slow_consumer_policy() {
    let node = node_with(|c| {
        for (ns, policy) in [
            ("feed", SlowConsumerPolicy::Latest),
            ("ticks", SlowConsumerPolicy::DropOldest),
        ] {
            c.namespaces.insert(
                ns.into(),
                NamespaceOptions {
                    slow_consumer: policy,
                    ..NamespaceOptions::dev()
                },
            );
        }
    });
    let mut s = session(&node);
    for (channel, want) in [
        ("feed:a", json!("latest")),
        ("ticks:a", json!("drop_oldest")),
        ("news", Value::Null),
    ] {
        let r = call(&mut s, "subscribe", json!({ "channel": channel })).await;
        assert_eq!(r["type"], "reply", "{r}");
        assert_eq!(r["payload"]["slow_consumer"], want, "{channel}: {r}");
    }
}

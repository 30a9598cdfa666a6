//! At-least-once delivery over real sockets (`docs/protocol.md` §8a): the window, redelivery on a
//! live socket, dead letters with the `gap` push, and what a cut, a resume or a new session
//! redeliver.

mod support;

use std::time::Duration;

use herald_core::journal::EventKind;
use herald_core::{Delivery, NamespaceOptions};
use serde_json::{Value, json};
use support::*;

fn at_least_once(window: u32, timeout_ms: u64, attempts: u32) -> Setup {
    let mut setup = Setup::default();
    setup.engine.namespaces.insert(
        "orders".into(),
        NamespaceOptions {
            delivery: Delivery::AtLeastOnce,
            ack_window: window,
            ack_timeout: Duration::from_millis(timeout_ms),
            ack_max_attempts: attempts,
            ..NamespaceOptions::dev()
        },
    );
    setup
}

async fn publish(s: &TestServer, channel: &str, n: u64) {
    let data = herald_proto::Data::json(&n.to_string()).expect("json");
    s.handle
        .node()
        .publish(channel, data, None, None)
        .await
        .expect("publish");
}

/// The next frame after the `message` pushes already queued: a `pong` proves nothing else was
/// queued before it (publishes on the embedded engine are queued before `publish` returns).
async fn nothing_queued(c: &mut Client) {
    let (pong, pushes) = c.call("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
    assert!(pushes.is_empty(), "unexpected frames: {pushes:?}");
}

async fn offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(c.next_message().await["offset"].as_u64().expect("offset"));
    }
    got
}

async fn ack(c: &mut Client, channel: &str, offset: u64) {
    c.ok("ack", json!({"channel": channel, "offset": offset}))
        .await;
}

#[tokio::test]
async fn the_subscribe_reply_announces_it_and_a_client_that_never_acks_gets_the_window() {
    let s = start(at_least_once(3, 30_000, 5)).await;
    let mut c = Client::connect(&s).await;
    let r = c.subscribe("orders:eu").await;
    assert_eq!(r["delivery"], "at_least_once", "{r}");
    assert_eq!(r["ack_window"], 3);
    assert_eq!(r["ack_timeout_ms"], 30_000);
    for n in 1..=10 {
        publish(&s, "orders:eu", n).await;
    }
    assert_eq!(offsets(&mut c, 3).await, [1, 2, 3]);
    nothing_queued(&mut c).await;
    // Acks free the window: the held-back publications follow from history, in order.
    ack(&mut c, "orders:eu", 2).await;
    assert_eq!(offsets(&mut c, 2).await, [4, 5]);
    ack(&mut c, "orders:eu", 5).await;
    assert_eq!(offsets(&mut c, 3).await, [6, 7, 8]);
    publish(&s, "orders:eu", 11).await;
    ack(&mut c, "orders:eu", 8).await;
    assert_eq!(offsets(&mut c, 3).await, [9, 10, 11]);
    ack(&mut c, "orders:eu", 11).await;
    // Caught up: live publications go out directly again.
    publish(&s, "orders:eu", 12).await;
    assert_eq!(offsets(&mut c, 1).await, [12]);
    nothing_queued(&mut c).await;
}

#[tokio::test]
async fn bad_acks_get_error_codes() {
    let s = start(at_least_once(3, 30_000, 5)).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("orders:eu").await;
    c.subscribe("news").await;
    publish(&s, "orders:eu", 1).await;
    assert_eq!(offsets(&mut c, 1).await, [1]);
    for (payload, code) in [
        (json!({"channel": "orders:eu", "offset": 2}), "bad_request"),
        (json!({"channel": "news", "offset": 0}), "bad_request"),
        (
            json!({"channel": "orders:us", "offset": 1}),
            "not_subscribed",
        ),
        (json!({"channel": "orders:eu"}), "bad_request"),
    ] {
        let (r, _) = c.call("ack", payload.clone()).await;
        assert_eq!(r["payload"]["code"], code, "{payload}: {r}");
    }
    // An ack without an id gets no reply; the connection goes on.
    c.send(json!({"type": "ack", "payload": {"channel": "orders:eu", "offset": 1}}))
        .await;
    nothing_queued(&mut c).await;
}

#[tokio::test]
async fn a_client_that_forgets_to_ack_gets_the_messages_again_on_the_same_socket() {
    let s = start(at_least_once(10, 1_000, 5)).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("orders:eu").await;
    for n in 1..=3 {
        publish(&s, "orders:eu", n).await;
    }
    assert_eq!(offsets(&mut c, 3).await, [1, 2, 3]);
    ack(&mut c, "orders:eu", 1).await;
    // After ack_timeout: 2 and 3 again, same offsets and data.
    let again = c.next_message().await;
    assert_eq!(
        (again["offset"].as_u64(), &again["data"]),
        (Some(2), &json!(2))
    );
    assert_eq!(offsets(&mut c, 1).await, [3]);
    ack(&mut c, "orders:eu", 3).await;
    publish(&s, "orders:eu", 4).await;
    assert_eq!(offsets(&mut c, 1).await, [4], "nothing acked comes again");
}

#[tokio::test]
async fn exhausted_redeliveries_become_a_dead_letter_an_event_and_a_gap() {
    let s = start(at_least_once(10, 100, 2)).await;
    let mut c = Client::connect(&s).await;
    let client_id = c.welcome["client_id"].as_str().expect("id").to_owned();
    c.subscribe("orders:eu").await;
    publish(&s, "orders:eu", 1).await;
    assert_eq!(offsets(&mut c, 2).await, [1, 1], "sent, then sent again");
    let gap = loop {
        let f = c.next().await;
        if f["type"] == "gap" {
            break f["payload"].clone();
        }
        assert_eq!(f["type"], "message", "{f}");
    };
    assert_eq!(
        gap,
        json!({"channel": "orders:eu", "epoch": gap["epoch"], "from": 1, "to": 1, "reason": "unacknowledged"})
    );
    let letters = s.handle.node().dead_letters().list(10);
    let letter = letters
        .iter()
        .find(|l| l.reason.as_str() == "undelivered")
        .expect("a dead letter");
    assert_eq!(letter.context["client_id"], client_id.as_str());
    assert_eq!(letter.context["channel"], "orders:eu");
    assert_eq!(
        (&letter.context["from"], &letter.context["attempts"]),
        (&json!(1), &json!(2))
    );
    let (events, _) = s.handle.node().events().since(0, 100);
    assert!(
        events.iter().any(|e| e.kind == EventKind::Undelivered
            && e.client_id.as_deref() == Some(client_id.as_str())
            && e.reason.as_deref() == Some("ack_attempts_exhausted")),
        "{events:?}"
    );
    // The subscription goes on after the gap.
    publish(&s, "orders:eu", 2).await;
    assert_eq!(offsets(&mut c, 1).await, [2]);
    ack(&mut c, "orders:eu", 2).await;
}

/// Unacknowledged at a cut: sent again after `resume`, from the server's ack position (no
/// `positions`) or from the client's (`positions`); acknowledged ones are not.
#[tokio::test]
async fn unacked_messages_at_a_cut_come_again_after_resume_and_acked_ones_do_not() {
    let s = start(at_least_once(10, 30_000, 5)).await;
    for positions in [None, Some(4)] {
        let mut c = Client::connect(&s).await;
        let channel = format!("orders:{}", positions.is_some());
        let epoch = c.subscribe(&channel).await["epoch"].clone();
        for n in 1..=5 {
            publish(&s, &channel, n).await;
        }
        assert_eq!(offsets(&mut c, 5).await, [1, 2, 3, 4, 5]);
        ack(&mut c, &channel, 2).await;
        let token = c.welcome["resume_token"].clone();
        let waiting = s.handle.node().waiting_sessions();
        drop(c); // no close frame: the socket is cut
        until("the session to wait", || {
            s.handle.node().waiting_sessions() == waiting + 1
        })
        .await;
        publish(&s, &channel, 6).await;
        let mut c = Client::connect(&s).await;
        let mut payload = json!({"token": token});
        if let Some(p) = positions {
            payload["positions"] = json!({ &channel: {"offset": p, "epoch": epoch} });
        }
        let r = c.ok("resume", payload).await;
        assert_eq!(r["channels"][0]["channel"], channel.as_str(), "{r}");
        let expected: Vec<u64> = match positions {
            None => vec![3, 4, 5, 6],
            Some(_) => vec![5, 6],
        };
        assert_eq!(offsets(&mut c, expected.len()).await, expected);
        nothing_queued(&mut c).await;
        ack(&mut c, &channel, 6).await;
    }
}

/// A new session (the old one gone, or on another node): the client recovers from the last
/// offset it processed; what follows is paced by the window.
#[tokio::test]
async fn a_new_session_recovers_from_the_last_processed_offset_paced_by_the_window() {
    let s = start(at_least_once(2, 30_000, 5)).await;
    let mut c = Client::connect(&s).await;
    let r = c.subscribe("orders:eu").await;
    let epoch = r["epoch"].clone();
    for n in 1..=6 {
        publish(&s, "orders:eu", n).await;
    }
    assert_eq!(offsets(&mut c, 2).await, [1, 2]);
    drop(c);
    let mut c = Client::connect(&s).await;
    let r = c
        .ok(
            "subscribe",
            json!({"channel": "orders:eu", "recover": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(true), Some(5)),
        "{r}"
    );
    assert_eq!(offsets(&mut c, 2).await, [2, 3]);
    nothing_queued(&mut c).await;
    ack(&mut c, "orders:eu", 3).await;
    assert_eq!(offsets(&mut c, 2).await, [4, 5]);
    ack(&mut c, "orders:eu", 5).await;
    assert_eq!(offsets(&mut c, 1).await, [6]);
}

/// Held back by the window longer than history keeps them: given up with a `trimmed` gap.
#[tokio::test]
async fn held_back_publications_that_leave_history_become_a_trimmed_gap() {
    let mut setup = at_least_once(1, 30_000, 5);
    if let Some(ns) = setup.engine.namespaces.get_mut("orders") {
        ns.history_size = 3;
    }
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("orders:eu").await;
    for n in 1..=6 {
        publish(&s, "orders:eu", n).await;
    }
    assert_eq!(offsets(&mut c, 1).await, [1]);
    ack(&mut c, "orders:eu", 1).await;
    let gap = c.next().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(
        (
            &gap["payload"]["from"],
            &gap["payload"]["to"],
            &gap["payload"]["reason"]
        ),
        (&json!(2), &json!(3), &json!("trimmed"))
    );
    assert_eq!(offsets(&mut c, 1).await, [4]);
    ack(&mut c, "orders:eu", 4).await;
    assert_eq!(offsets(&mut c, 1).await, [5]);
    let letters: Vec<Value> = s
        .handle
        .node()
        .dead_letters()
        .list(10)
        .into_iter()
        .map(|l| l.context)
        .collect();
    assert!(
        letters
            .iter()
            .any(|l| l["why"] == "trimmed" && l["from"] == 2 && l["to"] == 3),
        "{letters:?}"
    );
}

/// Regression (review of issue 16): redelivering every window of a client that reads promptly
/// but acks slowly overflowed its queue (4 channels × window 4 > 8 queued frames) and closed it
/// as a slow consumer. Redeliveries now fill only the queue's free room.
#[tokio::test]
async fn a_prompt_reader_that_acks_slowly_on_many_channels_is_never_a_slow_consumer() {
    let mut setup = at_least_once(4, 200, 100);
    setup.engine.session.queue_max_messages = 8;
    let s = start(setup).await;
    let mut c = Client::connect(&s).await;
    let channels = ["orders:a", "orders:b", "orders:c", "orders:d"];
    for ch in channels {
        c.subscribe(ch).await;
    }
    for ch in channels {
        for n in 1..=4 {
            publish(&s, ch, n).await;
        }
    }
    // 16 first sends, then at least one full round of redeliveries, all read at once.
    let mut seen = 0;
    while seen < 40 {
        let f = c.next().await;
        assert_eq!(f["type"], "message", "{f}");
        seen += 1;
    }
    nothing_closed(&mut c).await;
}

/// The connection still answers (a `ping` gets its `pong`, whatever is queued before it).
async fn nothing_closed(c: &mut Client) {
    let (pong, _) = c.call("ping", json!({})).await;
    assert_eq!(pong["type"], "pong");
}

/// Regression (review of issue 16): a `resume` whose position is the largest offset overflowed
/// (`offset + 1`, a panic in debug builds) and leaked the session's subscriptions and the
/// connection count. Positions are clamped.
#[tokio::test]
async fn resume_positions_at_the_largest_offset_are_harmless() {
    let s = start(at_least_once(4, 30_000, 5)).await;
    let mut c = Client::connect(&s).await;
    let news_epoch = c.subscribe("news").await["epoch"].clone();
    let orders_epoch = c.subscribe("orders:eu").await["epoch"].clone();
    publish(&s, "news", 1).await;
    publish(&s, "orders:eu", 1).await;
    assert_eq!(offsets(&mut c, 2).await.len(), 2);
    let token = c.welcome["resume_token"].clone();
    drop(c);
    until("the session to wait", || {
        s.handle.node().waiting_sessions() == 1
    })
    .await;
    let mut c = Client::connect(&s).await;
    let max = |epoch: &Value| json!({"offset": u64::MAX, "epoch": epoch});
    let positions = json!({"news": max(&news_epoch), "orders:eu": max(&orders_epoch)});
    let r = c
        .ok("resume", json!({"token": token, "positions": positions}))
        .await;
    assert_eq!(r["channels"].as_array().map(Vec::len), Some(2), "{r}");
    nothing_closed(&mut c).await;
    publish(&s, "news", 2).await;
    assert_eq!(offsets(&mut c, 1).await, [2]);
    drop(c);
    until("the connection to be counted out", || {
        s.handle.connections() == 0
    })
    .await;
}

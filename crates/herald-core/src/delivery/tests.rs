use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::{Data, Format, StreamPosition};

use super::*;
use crate::hub::Subscriber;
use crate::outlet::{Drained, Outlet, QueueLimits};

fn setup(window: usize, max_attempts: u32) -> (Arc<Outlet>, Arc<Subscriber>) {
    let outlet = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        },
    );
    let settings = AckSettings {
        timeout: Duration::from_secs(1),
        window,
        max_attempts,
    };
    let owner = Owner {
        user_id: "u".into(),
        client_ip: None,
    };
    let sub = Subscriber::acknowledged(
        outlet.clone(),
        Arc::from("c1"),
        false,
        Tracker::new(settings, "orders", owner),
    );
    let t = sub.tracker().expect("tracker");
    t.begin(&Arc::from("e"), 0);
    (outlet, sub)
}

fn publication(offset: u64) -> Arc<Publication> {
    Arc::new(Publication::new(
        Arc::from("orders"),
        offset,
        Arc::from("e"),
        0,
        Data::json("1").expect("json"),
        None,
    ))
}

/// What the outlet holds: `m<offset>` for messages, `gap<from>-<to>` for gap pushes.
fn written(outlet: &Outlet) -> Vec<String> {
    let mut d = Drained::default();
    outlet.drain(1000, &mut d);
    d.frames
        .iter()
        .map(|f| {
            let (payload, _) = herald_proto::frame::parse_unmasked(f).expect("frame");
            let v: serde_json::Value = serde_json::from_slice(payload).expect("json");
            match v["type"].as_str() {
                Some("message") => format!("m{}", v["payload"]["offset"]),
                Some("gap") => format!("gap{}-{}", v["payload"]["from"], v["payload"]["to"]),
                other => format!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn the_window_holds_back_what_does_not_fit_and_acks_make_room() {
    let (outlet, sub) = setup(3, 5);
    let t = sub.tracker().expect("tracker");
    for o in 1..=5 {
        t.offer(&*sub, &publication(o));
    }
    assert_eq!(written(&outlet), ["m1", "m2", "m3"]);
    assert_eq!(t.in_flight(), 3);
    assert_eq!(
        t.ack(7),
        Err(AckBeyondSent { sent: 3 }),
        "4 and 5 were not sent"
    );
    assert_eq!(
        t.ack(2),
        Ok(true),
        "room, and publications held back: catch up"
    );
    assert_eq!((t.in_flight(), t.acked()), (1, 2));
    assert_eq!(t.ack(1), Ok(false), "an older ack changes nothing");
    assert_eq!(t.acked(), 2);
}

#[test]
fn unacknowledged_publications_are_sent_again_with_backoff_then_given_up() {
    let (outlet, sub) = setup(10, 3);
    let t = sub.tracker().expect("tracker");
    let start = Instant::now();
    for o in 1..=3 {
        t.offer(&*sub, &publication(o));
    }
    assert_eq!(written(&outlet), ["m1", "m2", "m3"]);
    assert_eq!(t.ack(1), Ok(false));
    // Not due yet.
    assert_eq!(
        t.sweep(&*sub, start + Duration::from_millis(500)),
        (None, false)
    );
    assert!(written(&outlet).is_empty());
    // Due after 1 s: 2 and 3 again (attempt 2), next wait 2 s.
    let at = start + Duration::from_millis(1100);
    assert_eq!(t.sweep(&*sub, at), (None, false));
    assert_eq!(written(&outlet), ["m2", "m3"]);
    assert_eq!(
        t.sweep(&*sub, at + Duration::from_millis(1500)),
        (None, false)
    );
    assert!(
        written(&outlet).is_empty(),
        "the second wait is twice as long"
    );
    // A copy still queued is not queued twice.
    let at = at + Duration::from_millis(2100);
    t.offer(&*sub, &publication(4));
    assert_eq!(t.sweep(&*sub, at), (None, false));
    assert_eq!(written(&outlet), ["m4", "m2", "m3"]);
    // Attempt 3 was the last: 2 is given up; the rest goes again at once, attempts anew.
    let (given_up, _) = t.sweep(&*sub, at + Duration::from_secs(5));
    let g = given_up.expect("given up");
    assert_eq!(
        (g.from, g.to, g.why, g.attempts),
        (2, 2, GiveUp::Unacknowledged, 3)
    );
    assert_eq!(written(&outlet), ["gap2-2", "m3", "m4"]);
    assert_eq!(t.acked(), 2);
    assert_eq!(t.in_flight(), 2);
}

#[test]
fn nothing_is_redelivered_while_paused_and_resume_sends_everything_after_the_position_in_order() {
    let (outlet, sub) = setup(10, 2);
    let t = sub.tracker().expect("tracker");
    for o in 1..=4 {
        t.offer(&*sub, &publication(o));
    }
    // 1 and 2 were written; a redelivery queued 1 and 2 again behind 3 and 4; the socket dies.
    let mut d = Drained::default();
    outlet.drain(2, &mut d);
    let due = Instant::now() + Duration::from_millis(1100);
    t.sweep(&*sub, due);
    assert_eq!(outlet.queued_offsets("orders"), [3, 4, 1, 2]);
    t.pause();
    let later = Instant::now() + Duration::from_secs(60);
    assert_eq!(t.sweep(&*sub, later), (None, false));
    assert_eq!(outlet.queued_offsets("orders"), [3, 4, 1, 2]);
    // Regression (review of issue 16): resuming sent 2 (lost) in front of the queued 3, 4, 1,
    // 2 — out of order. Now the queued copies go and everything after the position is sent
    // once, in order.
    let pos = StreamPosition {
        offset: 1,
        epoch: "e".into(),
    };
    assert_eq!(outlet.remove_publications("orders"), 4);
    let (resend, catch) = t.resume(Some(&pos));
    let offsets: Vec<u64> = resend.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [2, 3, 4], "1 is acked by the position");
    assert!(!catch);
    assert_eq!((t.acked(), t.in_flight()), (1, 3));
    assert!(t.covers(&pos));
    let other_epoch = StreamPosition {
        offset: 9,
        epoch: "x".into(),
    };
    assert!(
        !t.covers(&other_epoch),
        "a position of another epoch covers nothing"
    );
}

/// Regression (review of issue 16): a redelivery pass pushed every window at once with the
/// disconnect policy, so a client that read promptly but acked slowly on many channels was
/// closed as a slow consumer; and publications still queued (never written) counted attempts,
/// so an unread message could be given up.
#[test]
fn redelivery_fills_only_free_room_and_counts_only_what_it_sends() {
    let outlet = Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 4,
            max_bytes: 1 << 20,
        },
    );
    let settings = AckSettings {
        timeout: Duration::from_secs(1),
        window: 4,
        max_attempts: 2,
    };
    let sub = Subscriber::acknowledged(
        outlet.clone(),
        Arc::from("c1"),
        false,
        Tracker::new(
            settings,
            "orders",
            Owner {
                user_id: "u".into(),
                client_ip: None,
            },
        ),
    );
    let t = sub.tracker().expect("tracker");
    t.begin(&Arc::from("e"), 0);
    let start = Instant::now();
    for o in 1..=4 {
        t.offer(&*sub, &publication(o));
    }
    // Nothing written yet: at the first due time nothing is sent again, nothing counted.
    let at = start + Duration::from_millis(1100);
    assert_eq!(t.sweep(&*sub, at), (None, false));
    assert_eq!(outlet.queued_offsets("orders"), [1, 2, 3, 4]);
    assert_eq!(outlet.close_requested(), None);
    // The client reads 1..3; 4 is still queued. Room for 3: 1..3 go again, no close.
    let mut d = Drained::default();
    outlet.drain(3, &mut d);
    let at = at + Duration::from_millis(1100);
    assert_eq!(t.sweep(&*sub, at), (None, false));
    assert_eq!(outlet.queued_offsets("orders"), [4, 1, 2, 3]);
    assert_eq!(outlet.close_requested(), None, "never a slow consumer");
    // A full queue: the next pass sends nothing and gives nothing up (1 was sent twice, but
    // its second copy is still queued: not an attempt until written and waited for).
    let at = at + Duration::from_secs(5);
    assert_eq!(t.sweep(&*sub, at), (None, false));
    assert_eq!(outlet.queued_offsets("orders"), [4, 1, 2, 3]);
    // Written and waited for: now 1 is given up (2 attempts).
    outlet.drain(4, &mut d);
    let at = at + Duration::from_secs(5);
    let (given_up, _) = t.sweep(&*sub, at);
    assert_eq!(given_up.map(|g| (g.from, g.attempts)), Some((1, 2)));
}

/// Regression (review of issue 16): an offer of an offset already sent (the live stream racing a
/// catch-up page) was sent twice and moved `sent` backwards, so valid acks were refused.
#[test]
fn an_offset_already_sent_is_never_sent_again_and_sent_never_goes_back() {
    let (outlet, sub) = setup(10, 5);
    let t = sub.tracker().expect("tracker");
    for o in [1, 2, 3, 2, 3, 1] {
        t.offer(&*sub, &publication(o));
    }
    assert_eq!(written(&outlet), ["m1", "m2", "m3"]);
    assert_eq!(t.ack(3), Ok(false), "3 was sent: its ack is valid");
}

#[test]
fn a_new_epoch_ends_what_was_in_flight() {
    let (outlet, sub) = setup(2, 2);
    let t = sub.tracker().expect("tracker");
    t.offer(&*sub, &publication(1));
    t.offer(&*sub, &publication(2));
    t.offer(&*sub, &publication(3));
    assert_eq!(written(&outlet), ["m1", "m2"]);
    let p = Arc::new(Publication::new(
        Arc::from("orders"),
        1,
        Arc::from("f"),
        0,
        Data::json("1").expect("json"),
        None,
    ));
    t.offer(&*sub, &p);
    assert_eq!(written(&outlet), ["m1"]);
    assert_eq!((t.acked(), t.in_flight()), (0, 1));
}

#[test]
fn the_configuration_refuses_what_cannot_be_at_least_once() {
    use crate::config::{Delivery, EngineConfig, NamespaceOptions, SlowConsumerPolicy};
    let with = |ns: NamespaceOptions| {
        let mut cfg = EngineConfig::default();
        cfg.namespaces.insert("orders".into(), ns);
        cfg.validate().map_err(|e| e.to_string())
    };
    let good = NamespaceOptions {
        delivery: Delivery::AtLeastOnce,
        ..NamespaceOptions::dev()
    };
    assert_eq!(with(good.clone()), Ok(()));
    for (bad, why) in [
        (
            NamespaceOptions {
                history_size: 0,
                ..good.clone()
            },
            "needs history",
        ),
        (
            NamespaceOptions {
                slow_consumer: SlowConsumerPolicy::DropOldest,
                ..good.clone()
            },
            "disconnect",
        ),
        (
            NamespaceOptions {
                ack_window: 5000,
                ..good.clone()
            },
            "ack_window",
        ),
        (
            NamespaceOptions {
                ack_timeout: Duration::from_millis(10),
                ..good.clone()
            },
            "ack_timeout",
        ),
        (
            NamespaceOptions {
                ack_max_attempts: 0,
                ..good.clone()
            },
            "ack_max_attempts",
        ),
    ] {
        let e = with(bad).expect_err(why);
        assert!(e.contains(why), "{e}");
    }
    // At most once, the ack keys are not checked.
    assert_eq!(
        with(NamespaceOptions {
            ack_window: 0,
            ..NamespaceOptions::dev()
        }),
        Ok(())
    );
}

#[test]
fn delta_namespaces_need_the_disconnect_policy_and_at_most_once() {
    use crate::config::{DeltaFormat, EngineConfig, NamespaceOptions, SlowConsumerPolicy};
    let with = |ns: NamespaceOptions| {
        let mut cfg = EngineConfig::default();
        cfg.namespaces.insert("dash".into(), ns);
        cfg.validate().map_err(|e| e.to_string())
    };
    let good = NamespaceOptions {
        delta: DeltaFormat::Fossil,
        ..NamespaceOptions::dev()
    };
    assert_eq!(with(good.clone()), Ok(()));
    let e = with(NamespaceOptions {
        slow_consumer: SlowConsumerPolicy::Latest,
        ..good.clone()
    })
    .expect_err("latest breaks the chain");
    assert!(e.contains("disconnect"), "{e}");
    let e = with(NamespaceOptions {
        delivery: crate::config::Delivery::AtLeastOnce,
        ..good
    })
    .expect_err("not with at-least-once");
    assert!(e.contains("at_least_once"), "{e}");
}

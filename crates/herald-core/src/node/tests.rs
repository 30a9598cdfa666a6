//! `Node` without sockets: the session registry (revocation, per-user commands) and the sessions
//! waiting for resume, read from the sessions' outlets.

use std::time::Duration;

use herald_proto::{CloseCode, Format};

use crate::auth::{Claims, Identity};
use crate::session::Session;
use crate::testing::node_with;

fn user(name: &str, jti: &str) -> Identity {
    Identity::from_claims(Claims {
        sub: name.to_owned(),
        jti: Some(jti.to_owned()),
        ..Default::default()
    })
}

#[tokio::test]
async fn revocation_and_disconnects_reach_exactly_the_sessions_they_name() {
    let node = node_with(|_| {});
    let a1 = Session::new(&node, Format::Json, user("alice", "t1"));
    let a2 = Session::new(&node, Format::Json, user("alice", "t2"));
    let b = Session::new(&node, Format::Json, user("bob", "t3"));
    assert_eq!(node.revoke_token("t2", u64::MAX), 1);
    assert_eq!(a2.outlet().close_requested(), Some(CloseCode::TokenRevoked));
    assert_eq!(a1.outlet().close_requested(), None);
    assert_eq!(node.disconnect_user("alice", CloseCode::ForceDisconnect), 2);
    assert_eq!(
        a1.outlet().close_requested(),
        Some(CloseCode::ForceDisconnect)
    );
    assert!(node.disconnect_client(b.client_id(), CloseCode::ForceDisconnect));
    assert!(!node.disconnect_client("nobody", CloseCode::ForceDisconnect));
    assert_eq!(
        b.outlet().close_requested(),
        Some(CloseCode::ForceDisconnect)
    );
    // A token presented later is refused once its user was revoked.
    assert_eq!(node.revoke_user("carol", u64::MAX), 0);
}

#[tokio::test(start_paused = true)]
async fn waiting_sessions_are_bounded_and_expire_after_the_grace_period() {
    let node = node_with(|c| {
        c.session.max_waiting_sessions = 2;
        c.session.resume_grace = Duration::from_secs(5);
    });
    let mut tokens = Vec::new();
    for i in 0..3 {
        let s = Session::new(
            &node,
            Format::Json,
            user(&format!("u{i}"), &format!("j{i}")),
        );
        tokens.push(s.resume_token().to_owned());
        s.disconnected(false).await;
    }
    assert_eq!(node.waiting_sessions(), 2, "the oldest was ended");
    assert!(node.take_parked(&tokens[0], "u0").is_none());
    assert!(
        node.take_parked(&tokens[2], "u1").is_none(),
        "another user's token"
    );
    let s = node
        .take_parked(&tokens[2], "u2")
        .expect("the newest waits");
    drop(s);
    // A clean close ends at once; the rest expire after the grace period.
    let clean = Session::new(&node, Format::Json, Identity::anonymous());
    clean.disconnected(true).await;
    assert_eq!(node.waiting_sessions(), 1);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(node.waiting_sessions(), 0);
}

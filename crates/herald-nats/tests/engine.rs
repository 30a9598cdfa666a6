//! NATS-specific behaviour: fan-out without JetStream, kept revocations, catch-up after a reconnect.

use std::sync::Arc;
use std::time::Duration;

use herald_core::broker::{Broker, BrokerError, HistoryQuery, PublishRequest};
use herald_core::conformance::{Recorder, channel};
use herald_nats::{NatsBroker, NatsConfig};
use herald_proto::Data;

fn req(n: u64) -> PublishRequest {
    PublishRequest {
        data: Data::json(&n.to_string()).expect("json"),
        info: None,
        idempotency_key: None,
        history_size: 0,
        history_ttl: Duration::ZERO,
        idempotency_window: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_fans_out_across_nodes_without_history() {
    let Some(url) = herald_testkit::nats_url() else {
        return;
    };
    let cfg = NatsConfig {
        url,
        prefix: format!("herald-core-{}", herald_testkit::unique()),
        jetstream: false,
        ..Default::default()
    };
    let a = NatsBroker::connect(cfg.clone()).await.expect("a");
    let b = NatsBroker::connect(cfg.clone()).await.expect("b");
    assert!(!a.has_history());
    assert!(a.ready());
    let rec = Arc::new(Recorder::default());
    a.set_handler(rec.clone());
    let ch = channel("core");
    a.subscribe(&ch).await.expect("subscribe");
    for i in 1..=10 {
        let out = b.publish(&ch, req(i)).await.expect("publish");
        assert_eq!(out.offset, i, "the publishing node's own counter");
    }
    rec.until("ten publications", |r| r.offsets(&ch).len() >= 10)
        .await;
    assert_eq!(rec.offsets(&ch), (1..=10).collect::<Vec<_>>());
    // No history: positions only, and a foreign epoch is refused.
    let h = a
        .history(
            &ch,
            HistoryQuery {
                since: None,
                limit: 10,
                reverse: false,
            },
        )
        .await
        .expect("position");
    assert!(h.publications.is_empty());
    let other = b
        .history(
            &ch,
            HistoryQuery {
                since: Some(herald_proto::StreamPosition {
                    offset: 1,
                    epoch: h.epoch.to_string(),
                }),
                limit: 10,
                reverse: false,
            },
        )
        .await;
    assert!(
        matches!(other, Err(BrokerError::EpochMismatch)),
        "nodes have epochs of their own: {other:?}"
    );
}

/// Issue 13: without JetStream nothing can be kept; `keep` used to answer `Ok` without storing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_refuses_to_keep_revocations_instead_of_pretending() {
    use herald_core::cluster::{ControlEnvelope, ControlMessage, RevocationStore};
    let Some(url) = herald_testkit::nats_url() else {
        return;
    };
    let cfg = NatsConfig {
        url,
        prefix: format!("herald-core-{}", herald_testkit::unique()),
        jetstream: false,
        ..Default::default()
    };
    let a = NatsBroker::connect(cfg).await.expect("a");
    let env = ControlEnvelope {
        from: "a".into(),
        msg: ControlMessage::RevokeUser {
            user: "u".into(),
            expires_at: u64::MAX,
        },
    };
    let r = a.keep(&env, u64::MAX).await;
    assert!(matches!(r, Err(BrokerError::Unsupported(_))), "{r:?}");
    assert!(a.kept().await.expect("kept").is_empty());
}

/// Issue 13: a node whose NATS connection dropped missed what core NATS sent meanwhile, and got
/// it only when the channel's next publication showed the gap; now it catches up on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_node_catches_up_without_waiting_for_the_next_publication() {
    use herald_testkit::faults::FaultProxy;
    let Some(url) = herald_testkit::nats_url() else {
        return;
    };
    let upstream = url
        .trim_start_matches("nats://")
        .parse()
        .expect("a host:port NATS url");
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let faults = proxy.handle();
    let id = herald_testkit::unique();
    let cfg = NatsConfig {
        url,
        prefix: format!("herald-test-{id}"),
        stream: format!("HERALD_TEST_{id}"),
        storage: herald_nats::config::Storage::Memory,
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let publisher = NatsBroker::connect(cfg.clone()).await.expect("publisher");
    let node = NatsBroker::connect(NatsConfig {
        url: format!("nats://{}", proxy.addr()),
        ..cfg.clone()
    })
    .await
    .expect("node through the proxy");
    let rec = Arc::new(Recorder::default());
    node.set_handler(rec.clone());
    let ch = channel("outage");
    let kept = |n| PublishRequest {
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        ..req(n)
    };
    node.subscribe(&ch).await.expect("subscribe");
    publisher.publish(&ch, kept(1)).await.expect("publish 1");
    rec.until("the first publication", |r| r.offsets(&ch) == [1])
        .await;

    // The node's connection dies and it cannot get back while the publication is made.
    faults.blackhole();
    faults.reset();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while node.ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publisher.publish(&ch, kept(2)).await.expect("publish 2");
    faults.lift_blackhole();
    rec.until("the publication made during the outage", |r| {
        r.offsets(&ch) == [1, 2]
    })
    .await;
    if let Ok(c) = async_nats::connect(cfg.url.as_str()).await {
        let _ = async_nats::jetstream::new(c)
            .delete_stream(&cfg.stream)
            .await;
    }
}

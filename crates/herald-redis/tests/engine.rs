//! Redis-specific behaviour: gap filling, outages, presence leases.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::broker::{Broker, BrokerError, PublishRequest};
use herald_core::conformance::{Recorder, channel};
use herald_core::presence::PresenceStore;
use herald_proto::Data;
use herald_proto::envelope::ClientInfo;
use herald_redis::{RedisBroker, RedisConfig, RedisPresence};
use herald_testkit::OwnServer;
use support::redis_config;

fn req(n: u64) -> PublishRequest {
    PublishRequest {
        data: Data::json(&n.to_string()).expect("json"),
        info: None,
        idempotency_key: None,
        history_size: 100,
        history_ttl: Duration::from_secs(60),
        idempotency_window: Duration::from_secs(60),
    }
}

async fn until(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_lost_on_pubsub_is_filled_from_history_in_order() {
    let Some(cfg) = redis_config().await else {
        return;
    };
    let a = RedisBroker::connect(cfg.clone()).await.expect("a");
    let b = RedisBroker::connect(cfg.clone()).await.expect("b");
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = channel("gap");
    b.subscribe(&ch).await.expect("subscribe");
    a.publish(&ch, req(1)).await.expect("publish 1");
    rec.until("offset 1", |r| r.offsets(&ch) == [1]).await;
    // Offset 2 is stored the way the script stores it, but its Pub/Sub message never goes out.
    let client = redis::Client::open(cfg.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let meta = format!("{}:{{{ch}}}:meta", cfg.prefix);
    let hist = format!("{}:{{{ch}}}:hist", cfg.prefix);
    let top: u64 = redis::cmd("HINCRBY")
        .arg(&meta)
        .arg("top")
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("hincrby");
    assert_eq!(top, 2);
    let mut entry = format!("2:{}:", herald_core::publication::now_ms()).into_bytes();
    entry.extend(herald_redis::wire::body(
        &Data::json("2").expect("json"),
        None,
    ));
    let _: i64 = redis::cmd("ZADD")
        .arg(&hist)
        .arg(2)
        .arg(entry)
        .query_async(&mut conn)
        .await
        .expect("zadd");
    a.publish(&ch, req(3)).await.expect("publish 3");
    rec.until("offsets 1-3", |r| r.offsets(&ch).len() >= 3)
        .await;
    assert_eq!(rec.offsets(&ch), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_reports_not_ready_and_recovers() {
    let Some(mut redis) = OwnServer::redis(0).await else {
        return;
    };
    let cfg = RedisConfig {
        url: redis.url(),
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let pubr = Arc::new(RedisBroker::connect(cfg.clone()).await.expect("connect"));
    let sub = RedisBroker::connect(cfg.clone()).await.expect("connect");
    let rec = Arc::new(Recorder::default());
    sub.set_handler(rec.clone());
    let ch = channel("outage");
    sub.subscribe(&ch).await.expect("subscribe");
    until("ready", Duration::from_secs(5), async || {
        sub.is_ready() && pubr.is_ready()
    })
    .await;
    pubr.publish(&ch, req(1)).await.expect("publish");
    rec.until("the first", |r| r.offsets(&ch) == [1]).await;

    redis.stop();
    let started = Instant::now();
    let err = pubr.publish(&ch, req(2)).await.expect_err("Redis is down");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed fast: {:?}",
        started.elapsed()
    );
    until("not ready", Duration::from_secs(5), async || {
        !sub.is_ready() && !pubr.is_ready()
    })
    .await;

    redis.restart().await;
    until("ready again", Duration::from_secs(15), async || {
        sub.is_ready() && pubr.is_ready()
    })
    .await;
    // A fresh Redis: the stream starts over in a new epoch, and the subscription still works.
    let mut published = None;
    until(
        "a publish after the restart",
        Duration::from_secs(10),
        async || {
            published = pubr.publish(&ch, req(3)).await.ok();
            published.is_some()
        },
    )
    .await;
    let out = published.expect("published");
    assert_eq!(out.offset, 1);
    rec.until("the publication after the restart", |r| {
        r.offsets(&ch).len() >= 2
    })
    .await;
    assert_eq!(rec.offsets(&ch), [1, 1]);
}

fn who(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client_id: client.into(),
        user_id: user.into(),
        info: None,
        chan_info: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_node_that_stopped_refreshing_expires_with_its_lease() {
    let Some(cfg) = redis_config().await else {
        return;
    };
    let cfg = RedisConfig {
        presence_lease: Duration::from_secs(1),
        ..cfg
    };
    let ch = channel("lease");
    let live_broker = RedisBroker::connect(cfg.clone()).await.expect("connect");
    let live = RedisPresence::new(&live_broker);
    live.add(&ch, who("live-1", "alice")).await.expect("add");
    {
        let dead_broker = RedisBroker::connect(cfg.clone()).await.expect("connect");
        let dead = RedisPresence::new(&dead_broker);
        dead.add(&ch, who("dead-1", "bob")).await.expect("add");
        assert_eq!(live.stats(&ch).await.expect("stats").clients, 2);
        // Dropped: this "node" stops refreshing, as a crashed one would.
    }
    let started = Instant::now();
    until(
        "the dead node's entry to expire",
        Duration::from_secs(5),
        async || live.stats(&ch).await.expect("stats").clients == 1,
    )
    .await;
    assert!(
        started.elapsed() <= Duration::from_millis(2_500),
        "{:?}",
        started.elapsed()
    );
    // The live node's entry, added at the same time, was refreshed and is still there.
    let list = live.list(&ch).await.expect("list");
    assert_eq!(list, [who("live-1", "alice")]);
    let stats = live.stats(&ch).await.expect("stats");
    assert_eq!((stats.clients, stats.users), (1, 1));
}

//! Several `herald serve` processes on one Redis, and on one NATS with JetStream: shared channels,
//! presence and server API commands; a node crash with clients moving to another node and
//! recovering; Redis outages. Each engine-independent test runs on both engines.

#[allow(dead_code)] // shared with herald-server's tests
#[path = "../../herald-server/tests/support/http.rs"]
mod http;
#[macro_use]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

on_both_engines!(three_nodes_share_channels_presence_and_commands);
on_both_engines!(clients_of_a_crashed_node_recover_on_another_and_its_presence_expires);
on_both_engines!(revocations_reach_every_node_including_later_ones);
on_both_engines!(the_per_user_connection_limit_is_cluster_wide);
on_both_engines!(bench_fanout_across_two_nodes_loses_nothing);
on_both_engines!(a_subscriber_hopping_between_nodes_gets_each_publication_once);
on_both_engines!(http_sessions_work_behind_a_round_robin_balancer);
on_both_engines!(the_admin_overview_shows_each_nodes_load);

/// Subscribers on nodes 2 and 3 get what a client on node 1 publishes, in the same order;
/// presence on any node lists everyone; the API of node 3 disconnects a user on node 1.
async fn three_nodes_share_channels_presence_and_commands(engine: Engine) {
    let nodes = Cluster::new(&engine, &[]).nodes(3);
    let mut alice = Ws::open(&nodes[0].addr, &token("alice")).await;
    let mut bob = Ws::open(&nodes[1].addr, &token("bob")).await;
    let mut carol = Ws::open(&nodes[2].addr, &token("carol")).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.call("subscribe", json!({"channel": "chat:room"})).await;
    }
    for i in 1..=20 {
        let r = alice
            .call("publish", json!({"channel": "chat:room", "data": {"n": i}}))
            .await;
        assert_eq!(r["offset"], i);
    }
    for c in [&mut bob, &mut carol] {
        let mut got = Vec::new();
        while got.len() < 20 {
            let p = c.push().await;
            if p["type"] == "message" {
                got.push((
                    p["payload"]["offset"].as_u64(),
                    p["payload"]["data"]["n"].as_u64(),
                ));
            }
        }
        let want: Vec<_> = (1..=20u64).map(|i| (Some(i), Some(i))).collect();
        assert_eq!(got, want);
    }
    // Each node records presence right after its subscribe reply: wait until all three show.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let who = carol
            .call("presence", json!({"channel": "chat:room"}))
            .await;
        let mut users: Vec<&str> = who["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .filter_map(|c| c["user_id"].as_str())
            .collect();
        users.sort();
        if users == ["alice", "bob", "carol"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence across nodes: {users:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = bob
        .call("presence_stats", json!({"channel": "chat:room"}))
        .await;
    assert_eq!(
        (stats["clients"].as_u64(), stats["users"].as_u64()),
        (Some(3), Some(3))
    );

    // The cluster shows up in `info`.
    let (status, info) = http_post(&nodes[2].addr, "/api/v1/info", API_KEY, &json!({})).await;
    assert_eq!(status, 200, "{info}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, info) = http_post(&nodes[2].addr, "/api/v1/info", API_KEY, &json!({})).await;
        let info: Value = serde_json::from_str(&info).expect("json");
        if info["cluster"].as_array().is_some_and(|n| n.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "three nodes in info: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = http_post(
        &nodes[2].addr,
        "/api/v1/disconnect",
        API_KEY,
        &json!({"user": "alice"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.closed().await, Some(4501));
    // Server-side subscribe through node 3 reaches bob on node 2.
    let (status, body) = http_post(
        &nodes[2].addr,
        "/api/v1/subscribe",
        API_KEY,
        &json!({"user": "bob", "channel": "news"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    loop {
        let p = bob.push().await;
        if p["type"] == "subscribed" {
            assert_eq!(p["payload"]["channel"], "news");
            break;
        }
    }
}

/// A TCP load balancer: each connection goes to the first backend that accepts it.
async fn balancer(backends: Vec<String>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in &backends {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A TCP load balancer with no stickiness: each new connection goes to the next backend.
async fn round_robin(backends: Vec<String>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut next = 0usize;
        while let Ok((mut inbound, _)) = l.accept().await {
            let b = backends[next % backends.len()].clone();
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    addr
}

/// Behind a round-robin balancer every request of an HTTP session may reach either node: a
/// long-polling session and a streamed one subscribe, publish and receive everything once, in
/// order, through commands and polls relayed to the node that holds them.
async fn http_sessions_work_behind_a_round_robin_balancer(engine: Engine) {
    let nodes = Cluster::new(&engine, &[]).nodes(2);
    // Relays travel on the control bus: each node must be subscribed to it (ready) first.
    for n in &nodes {
        wait_ready(&n.addr, 200).await;
    }
    let lb = round_robin(nodes.iter().map(|n| n.addr.clone()).collect()).await;
    let auth = format!("Bearer {}", token("polly"));
    let h = [("authorization", auth.as_str())];
    let sub = json!([{"type": "subscribe", "id": "s", "payload": {"channel": "chat:rr"}}]);
    let mut st = http::post(lb, "/http/stream", &h, &sub).await;
    assert_eq!(st.status, 200);
    let stream_session = st.session();
    st.until_line("reply").await;
    let first = http::post(lb, "/http/poll", &h, &sub).await;
    assert_eq!(first.status, 200);
    let session = first.session();
    let mut ack = first.header("herald-seq").expect("seq").to_owned();
    let mut got: Vec<Value> = first.json().await.as_array().expect("batch").clone();
    let poll_h = |ack: &str| {
        [
            ("herald-session", session.clone()),
            ("herald-ack", ack.to_owned()),
        ]
    };
    // The subscription is in place once its reply comes (it may follow `connected`).
    while !got.iter().any(|m| m["id"] == "s") {
        let h = poll_h(&ack);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http::post(lb, "/http/poll", &h, &Value::Null).await;
        if let Some(seq) = r.header("herald-seq") {
            ack = seq.to_owned();
        }
        got.extend(r.json().await.as_array().expect("batch").clone());
    }
    // Each send and poll opens a new connection: they alternate between the nodes, so about
    // half of them reach the node that does not hold their session.
    for i in 1..=10 {
        let (s, id) = if i <= 5 {
            (&stream_session, format!("q{i}"))
        } else {
            (&session, format!("p{i}"))
        };
        let cmd =
            json!({"type": "publish", "id": id, "payload": {"channel": "chat:rr", "data": i}});
        assert_eq!(http::send(lb, s, &cmd).await, 204, "send {i}");
    }
    let offsets = |msgs: &[Value]| -> Vec<u64> {
        msgs.iter()
            .filter(|m| m["type"] == "message")
            .map(|m| m["payload"]["offset"].as_u64().expect("offset"))
            .collect()
    };
    let mut polls = 0;
    let acks_of = |msgs: &[Value], prefix: char| {
        msgs.iter()
            .filter(|m| {
                m["type"] == "reply" && m["id"].as_str().is_some_and(|i| i.starts_with(prefix))
            })
            .count()
    };
    // A publish's own message may come before its ack: wait for both.
    while offsets(&got).len() < 10 || acks_of(&got, 'p') < 5 {
        let r = http::post(
            lb,
            "/http/poll",
            &[("herald-session", &session), ("herald-ack", &ack)],
            &Value::Null,
        )
        .await;
        assert_eq!(r.status, 200, "poll {polls}");
        if let Some(seq) = r.header("herald-seq") {
            ack = seq.to_owned();
        }
        got.extend(r.json().await.as_array().expect("batch").clone());
        polls += 1;
    }
    let mut relayed = 0;
    for n in &nodes {
        let (_, text) = http_get(&n.addr, "/metrics").await;
        relayed += text
            .lines()
            .find_map(|l| l.strip_prefix("herald_http_relayed_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(
        relayed >= 3,
        "requests reached the node without the session: {relayed} relayed"
    );
    assert_eq!(offsets(&got), (1..=10).collect::<Vec<u64>>());
    let acks = got
        .iter()
        .filter(|m| m["type"] == "reply" && m["id"].as_str().is_some_and(|i| i.starts_with('p')))
        .count();
    assert_eq!(acks, 5, "{got:?}");
    let mut streamed = Vec::new();
    while offsets(&streamed).len() < 10 || acks_of(&streamed, 'q') < 5 {
        streamed.push(st.line().await.expect("stream message"));
    }
    assert_eq!(offsets(&streamed), (1..=10).collect::<Vec<u64>>());
    let acks = streamed
        .iter()
        .filter(|m| m["type"] == "reply" && m["id"].as_str().is_some_and(|i| i.starts_with('q')))
        .count();
    assert_eq!(acks, 5, "{streamed:?}");
    let _ = polls;
}

async fn presence_clients(addr: &str, channel: &str) -> Vec<String> {
    let (status, body) = http_post(
        addr,
        "/api/v1/presence",
        API_KEY,
        &json!({"channel": channel}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str().map(str::to_owned))
        .collect()
}

/// A node dies (SIGKILL) while messages flow: its client reconnects through the balancer to the
/// other node and recovers from Redis with no loss and no duplicate; the dead node's presence
/// entry disappears within the lease.
async fn clients_of_a_crashed_node_recover_on_another_and_its_presence_expires(engine: Engine) {
    use herald_client::{Backoff, Client, ClientConfig, Event, TokenSource};
    let mut nodes = Cluster::new(
        &engine,
        &[
            ("HERALD_REDIS__PRESENCE_LEASE", "2s"),
            ("HERALD_DEFAULT_NAMESPACE__HISTORY_SIZE", "1000"),
            ("HERALD_LIMITS__PUBLISH_PER_SECOND_PER_USER", "10000"),
            ("HERALD_LIMITS__PUBLISH_BURST_PER_USER", "10000"),
        ],
    )
    .nodes(2);
    let lb = balancer(vec![nodes[0].addr.clone(), nodes[1].addr.clone()]).await;
    let mut cfg = ClientConfig::new(format!("ws://{lb}/ws"));
    cfg.token = TokenSource::Static(token("dave"));
    cfg.backoff = Backoff {
        min: Duration::from_millis(50),
        first_max: Duration::from_millis(100),
        factor: 2.0,
        cap: Duration::from_millis(500),
        max_attempts: None,
    };
    let (client, mut events) = Client::connect(cfg);
    client.subscribe("feed:crash").await.expect("subscribe");
    // Presence is recorded right after the subscribe reply: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_id = loop {
        let ids = presence_clients(&nodes[1].addr, "feed:crash").await;
        if ids.len() == 1 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "dave, on node 0, is seen from node 1: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let mut publisher = Ws::open(&nodes[1].addr, &token("pub")).await;
    let feeder = tokio::spawn(async move {
        for i in 1..=200u64 {
            publisher
                .call("publish", json!({"channel": "feed:crash", "data": i}))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        publisher
    });
    let mut got: Vec<u64> = Vec::new();
    let mut killed = None;
    while got.len() < 200 {
        let ev = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("an event")
            .expect("events");
        match ev {
            Event::Message(m) => {
                assert_eq!(m.data, json!(m.offset));
                got.push(m.offset);
                if got.len() == 50 && killed.is_none() {
                    let _ = nodes[0].child.kill();
                    let _ = nodes[0].child.wait();
                    killed = Some(Instant::now());
                }
            }
            Event::Gap { .. } => panic!("nothing may be lost: {ev:?}"),
            _ => {}
        }
    }
    assert_eq!(got, (1..=200).collect::<Vec<_>>(), "in order, once each");
    let _publisher = feeder.await.expect("feeder");
    // dave is back (on node 1) under a new client id; the dead node's entry expires.
    let started = killed.expect("node 0 was killed");
    loop {
        let now = presence_clients(&nodes[1].addr, "feed:crash").await;
        if !now.contains(&first_id[0]) && now.len() == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "stale presence: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await;
}

async fn ready(addr: &str) -> u16 {
    http_get(addr, "/readyz").await.0
}

async fn wait_ready(addr: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready(addr).await != want {
        assert!(Instant::now() < deadline, "/readyz never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis stops during traffic: publishes fail with a retryable error, `/readyz` says not ready;
/// when Redis is back (empty: a new epoch) the node reconnects, subscriptions keep working and a
/// client recovering from the old epoch is told `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_fails_publishes_visibly_then_recovers() {
    let Some(mut redis) = herald_testkit::OwnServer::redis(0).await else {
        return;
    };
    let nodes = Cluster::new(
        &Engine::Redis(redis.url()),
        &[("HERALD_REDIS__TIMEOUT", "500ms")],
    )
    .nodes(1);
    let node = &nodes[0].addr;
    wait_ready(node, 200).await;
    let mut sub = Ws::open(node, &token("sue")).await;
    sub.call("subscribe", json!({"channel": "live:1"})).await;
    let mut publisher = Ws::open(node, &token("pat")).await;
    let mut epoch = String::new();
    for i in 1..=3 {
        let r = publisher
            .call("publish", json!({"channel": "live:1", "data": i}))
            .await;
        epoch = r["epoch"].as_str().expect("epoch").to_owned();
    }
    for i in 1..=3 {
        let p = sub.push().await;
        assert_eq!(p["payload"]["offset"], i, "{p}");
    }

    redis.stop();
    let started = Instant::now();
    let e = publisher
        .try_call("publish", json!({"channel": "live:1", "data": 4}))
        .await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["payload"]["code"].as_str(),
            e["payload"]["retryable"].as_bool()
        ),
        (Some("error"), Some("unavailable"), Some(true)),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_ready(node, 503).await;

    redis.restart().await;
    wait_ready(node, 200).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = publisher
            .try_call("publish", json!({"channel": "live:1", "data": 5}))
            .await;
        if r["type"] == "reply" {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "publishes never worked again: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        r["payload"]["offset"], 1,
        "a fresh Redis starts a new stream"
    );
    assert_ne!(r["payload"]["epoch"].as_str(), Some(epoch.as_str()));
    let p = sub.push().await;
    assert_eq!(
        (
            p["payload"]["offset"].as_u64(),
            p["payload"]["data"].as_u64()
        ),
        (Some(1), Some(5)),
        "{p}"
    );
    // A client recovering from the old epoch learns that the gap cannot be filled.
    let mut late = Ws::open(node, &token("lou")).await;
    let r = late
        .call(
            "subscribe",
            json!({"channel": "live:1", "recover": {"offset": 3, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["recovered"], false, "{r}");
}

/// `herald bench fanout` with subscribers on one node and the publisher on another: every
/// publication crosses Redis, none is lost or duplicated.
async fn bench_fanout_across_two_nodes_loses_nothing(engine: Engine) {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/herald.toml");
    let cluster = Cluster::new(&engine, &[]);
    let nodes = [
        cluster.node(&["--dev", "--config", cfg]),
        cluster.node(&["--dev", "--config", cfg]),
    ];
    let (p0, p1) = (
        nodes[0].child.id().to_string(),
        nodes[1].child.id().to_string(),
    );
    let publish_url = format!("ws://{}/ws", nodes[1].addr);
    let r = bench(
        &nodes[0].addr,
        &[
            "fanout",
            "--subscribers",
            "40",
            "--channels",
            "2",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--publish-url",
            &publish_url,
            "--pid",
            &p0,
            "--pid",
            &p1,
        ],
    );
    assert_eq!(
        (r["lost"].clone(), r["duplicates"].clone()),
        (json!(0), json!(0)),
        "{r}"
    );
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert!(
        r["server_cpu_seconds"].as_f64().is_some_and(|c| c > 0.0),
        "{r}"
    );
}

/// Issue 13, found from outside: a subscriber that recovers on another node while publications
/// flow must get each offset exactly once, in order. Read on raw sockets: the clients drop
/// duplicates, so only the wire shows whether the server sent the boundary publication twice.
async fn a_subscriber_hopping_between_nodes_gets_each_publication_once(engine: Engine) {
    const TOTAL: u64 = 300;
    let nodes = Cluster::new(
        &engine,
        &[
            ("HERALD_DEFAULT_NAMESPACE__HISTORY_SIZE", "1000"),
            ("HERALD_LIMITS__PUBLISH_PER_SECOND_PER_USER", "10000"),
            ("HERALD_LIMITS__PUBLISH_BURST_PER_USER", "10000"),
            ("HERALD_LIMITS__COMMANDS_PER_SECOND", "10000"),
            ("HERALD_LIMITS__COMMANDS_BURST", "10000"),
        ],
    )
    .nodes(3);
    // The first subscription is in place before anything is published: every hop reads 25.
    let mut first = Ws::open(&nodes[0].addr, &token("hopper")).await;
    let r = first
        .call("subscribe", json!({"channel": "feed:hop"}))
        .await;
    assert_eq!(r["offset"], 0, "{r}");
    let (mut last, epoch, mut hops) = (0u64, r["epoch"].clone(), 0usize);
    let mut first = Some(first);
    let mut publisher = Ws::open(&nodes[0].addr, &token("pub")).await;
    let feeder = tokio::spawn(async move {
        for i in 1..=TOTAL {
            publisher
                .call("publish", json!({"channel": "feed:hop", "data": i}))
                .await;
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publisher
    });
    let take = |m: &Value, last: &mut u64| {
        let o = m["offset"].as_u64().expect("offset");
        assert_eq!(
            o,
            *last + 1,
            "after {last}: offset {o} (a duplicate or a skip): {m}"
        );
        assert_eq!(m["data"], json!(o));
        *last = o;
    };
    while last < TOTAL {
        let node = &nodes[hops % nodes.len()];
        hops += 1;
        let mut sub = match first.take() {
            Some(sub) => sub,
            None => {
                let mut sub = Ws::open(&node.addr, &token("hopper")).await;
                let cmd =
                    json!({"channel": "feed:hop", "recover": {"offset": last, "epoch": epoch}});
                let r = sub.call("subscribe", cmd).await;
                assert_eq!(r["recovered"], true, "{r}");
                sub
            }
        };

        // A few messages on this node (or everything, once the feeder is done), then hop on.
        let stay = last + 25;
        while last < stay.min(TOTAL) {
            let p = sub.push().await;
            if p["type"] == "message" {
                take(&p["payload"], &mut last);
            }
        }
        let _ = futures_util::SinkExt::close(&mut sub.ws).await;
    }
    assert_eq!(hops, (TOTAL / 25) as usize, "25 messages per hop");
    let _publisher = feeder.await.expect("feeder");
}

/// The HTTP status of a refused WebSocket handshake (101 when it succeeds).
async fn handshake_status(addr: &str, token: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}/ws")
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("hdr"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// A revocation made through one node holds on the others, and on nodes started afterwards.
async fn revocations_reach_every_node_including_later_ones(engine: Engine) {
    let cluster = Cluster::new(&engine, &[]);
    let nodes = cluster.nodes(2);
    let rex = token("rex");
    let mut live = Ws::open(&nodes[1].addr, &rex).await;
    let (status, body) = http_post(
        &nodes[0].addr,
        "/api/v1/revoke",
        API_KEY,
        &json!({"user": "rex"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live.closed().await, Some(4503), "closed on the other node");
    assert_eq!(handshake_status(&nodes[1].addr, &rex).await, 401);
    let later = cluster.nodes(1);
    assert_eq!(
        handshake_status(&later[0].addr, &rex).await,
        401,
        "a node started afterwards knows"
    );
    // Other users are not affected.
    assert_eq!(handshake_status(&later[0].addr, &token("amy")).await, 101);
}

/// `limits.max_connections_per_user` counts a user's connections on all nodes.
async fn the_per_user_connection_limit_is_cluster_wide(engine: Engine) {
    let nodes = Cluster::new(&engine, &[("HERALD_LIMITS__MAX_CONNECTIONS_PER_USER", "2")]).nodes(2);
    let max = token("max");
    let first = Ws::open(&nodes[0].addr, &max).await;
    let _second = Ws::open(&nodes[1].addr, &max).await;
    assert_eq!(
        handshake_status(&nodes[0].addr, &max).await,
        429,
        "third on node 0"
    );
    assert_eq!(
        handshake_status(&nodes[1].addr, &max).await,
        429,
        "third on node 1"
    );
    assert_eq!(handshake_status(&nodes[1].addr, &token("other")).await, 101);
    drop(first);
    // The slot is released when node 0 sees the connection end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handshake_status(&nodes[1].addr, &max).await != 101 {
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ADMIN_SECRET: &str = "cluster-admin-secret-0123456789";

/// Log in to node `addr`'s admin UI: the session cookie.
async fn admin_login(addr: &str) -> String {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let r = http::post(
        addr,
        "/admin/login",
        &[("x-herald-admin", "1")],
        &json!({"secret": ADMIN_SECRET}),
    )
    .await;
    assert_eq!(r.status, 204);
    let c = r.header("set-cookie").expect("set-cookie");
    c.split(';').next().expect("cookie").to_owned()
}

/// Node `addr`'s admin overview.
async fn admin_overview(addr: &str, cookie: &str) -> Value {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let r = http::request(
        addr,
        "GET",
        "/admin/api/overview",
        &[("cookie", cookie)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    r.json().await
}

/// Node `id`'s entry in an overview's cluster list.
fn listed<'a>(overview: &'a Value, id: &str) -> Option<&'a Value> {
    overview["info"]["cluster"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
}

/// A figure of a node's announced load.
fn load(node: &Value, key: &str) -> u64 {
    node["load"][key].as_u64().unwrap_or(0)
}

/// The admin overview of node 2 shows both nodes with their load (what the per-node charts
/// draw), and load put on node 1 moves node 1's figures there, not node 2's.
async fn the_admin_overview_shows_each_nodes_load(engine: Engine) {
    let nodes = Cluster::new(&engine, &[("HERALD_ADMIN__SECRET", ADMIN_SECRET)]).nodes(2);
    let mut ids = Vec::new();
    for n in &nodes {
        let (_, info) = http_post(&n.addr, "/api/v1/info", API_KEY, &json!({})).await;
        let info: Value = serde_json::from_str(&info).expect("json");
        ids.push(info["node"].as_str().expect("node id").to_owned());
    }
    let cookie = admin_login(&nodes[1].addr).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let o = admin_overview(&nodes[1].addr, &cookie).await;
        if ids
            .iter()
            .all(|id| listed(&o, id).is_some_and(|n| n["load"].is_object()))
        {
            break o;
        }
        assert!(Instant::now() < deadline, "both nodes with a load: {o}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (a0, b0) = (
        listed(&before, &ids[0]).expect("node 1").clone(),
        listed(&before, &ids[1]).expect("node 2").clone(),
    );

    // Load on node 1: three subscribers, twenty publications each delivered three times.
    let mut clients = Vec::new();
    for user in ["ann", "ben", "cid"] {
        let mut c = Ws::open(&nodes[0].addr, &token(user)).await;
        c.call("subscribe", json!({"channel": "load:room"})).await;
        clients.push(c);
    }
    for i in 1..=20 {
        clients[0]
            .call("publish", json!({"channel": "load:room", "data": {"n": i}}))
            .await;
    }
    for c in &mut clients {
        let mut got = 0;
        while got < 20 {
            if c.push().await["type"] == "message" {
                got += 1;
            }
        }
    }

    // Node 2 sees node 1's figures move with its next announcements.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (a1, b1) = loop {
        let o = admin_overview(&nodes[1].addr, &cookie).await;
        let (a, b) = (
            listed(&o, &ids[0]).expect("node 1").clone(),
            listed(&o, &ids[1]).expect("node 2").clone(),
        );
        // Node 2 announced since too (its figures are compared with what it said before).
        if a["connections"] == 3
            && load(&a, "published") >= load(&a0, "published") + 20
            && load(&a, "messages_out") >= load(&a0, "messages_out") + 60
            && b["updated_ms"].as_u64() > b0["updated_ms"].as_u64()
        {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "node 1's load moves and node 2 announces again: {a} {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(load(&a1, "subscriptions"), 3, "{a1}");
    assert!(load(&a1, "channels") >= 1, "{a1}");
    assert!(
        load(&a1, "messages_in") >= load(&a0, "messages_in") + 23,
        "{a0} -> {a1}"
    );
    let count = |n: &Value| {
        n["load"]["publish_to_send"]
            .as_array()
            .and_then(|b| b.last())
            .and_then(|b| b[1].as_u64())
            .unwrap_or(0)
    };
    // One observation per batch written: at least one per subscriber.
    assert!(count(&a1) >= count(&a0) + 3, "latency observed: {a1}");
    assert_eq!(
        a1["load"]["publish_to_send"].as_array().map(Vec::len),
        Some(14),
        "the latency buckets: {a1}"
    );
    // Node 2 carried none of it.
    assert_eq!(b1["connections"], 0, "{b1}");
    assert_eq!(load(&b1, "subscriptions"), 0, "{b1}");
    assert_eq!(load(&b1, "published"), load(&b0, "published"), "{b1}");
}

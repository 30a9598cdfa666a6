//! At-least-once delivery under churn (issue 16): real clients on an at-least-once namespace
//! behind a TCP switch, their sockets cut at random and a node killed and replaced while a
//! publisher keeps publishing. Every client's application must see every message exactly once,
//! in order, with no gap — on Redis and on NATS. And, on the wire, a subscriber that moves to
//! another node mid-stream with unacknowledged messages gets them again from the new node.

#[macro_use]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_client::{AckMode, Client, ClientConfig, Event};
use serde_json::json;
use support::*;

on_both_engines!(clients_under_churn_see_every_message_once_in_order);
on_both_engines!(a_subscriber_moving_nodes_gets_what_it_had_not_acknowledged);

fn at_least_once_cluster(engine: &Engine) -> Cluster {
    Cluster::new(
        engine,
        &[
            ("HERALD_DEFAULT_NAMESPACE__DELIVERY", "at_least_once"),
            ("HERALD_DEFAULT_NAMESPACE__ACK_WINDOW", "16"),
            ("HERALD_DEFAULT_NAMESPACE__ACK_TIMEOUT", "1s"),
            ("HERALD_DEFAULT_NAMESPACE__HISTORY_SIZE", "2000"),
            ("HERALD_LIMITS__PUBLISH_PER_SECOND_PER_USER", "10000"),
            ("HERALD_LIMITS__PUBLISH_BURST_PER_USER", "10000"),
            ("HERALD_LIMITS__COMMANDS_PER_SECOND", "10000"),
            ("HERALD_LIMITS__COMMANDS_BURST", "10000"),
            ("HERALD_LIMITS__CONNECT_PER_SECOND_PER_IP", "10000"),
            ("HERALD_LIMITS__CONNECT_BURST_PER_IP", "10000"),
        ],
    )
}

/// A TCP switch in front of the nodes: each new connection goes to the first live backend,
/// starting from a rotating one; [`Switch::cut`] kills every connection it carries (no close
/// frame: the clients see 1006).
#[derive(Clone)]
struct Switch {
    backends: Arc<Mutex<Vec<String>>>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Switch {
    async fn start(backends: Vec<String>) -> (Switch, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let sw = Switch {
            backends: Arc::new(Mutex::new(backends)),
            live: Arc::default(),
        };
        let s = sw.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut inbound, _)) = l.accept().await {
                let backends = s.backends.lock().expect("lock").clone();
                next += 1;
                let start = next;
                let task = tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let b = &backends[(start + i) % backends.len()];
                        if let Ok(mut out) = tokio::net::TcpStream::connect(b).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
                let mut live = s.live.lock().expect("lock");
                live.retain(|h| !h.is_finished());
                live.push(task.abort_handle());
            }
        });
        (sw, addr)
    }

    fn cut(&self) {
        for h in self.live.lock().expect("lock").drain(..) {
            h.abort();
        }
    }

    fn replace(&self, old: &str, new: &str) {
        for b in self.backends.lock().expect("lock").iter_mut() {
            if b == old {
                *b = new.to_owned();
            }
        }
    }
}

const CLIENTS: usize = 4;
const TOTAL: u64 = 240;

/// N clients (automatic acks) through a switch over two nodes; the publisher publishes through
/// a third node that stays up. Sockets are cut at random points, and one node is killed and
/// replaced by a new one mid-stream.
async fn clients_under_churn_see_every_message_once_in_order(engine: Engine) {
    let cluster = at_least_once_cluster(&engine);
    let mut nodes = cluster.nodes(3);
    let publisher_node = nodes.pop().expect("node");
    let (switch, addr) = Switch::start(nodes.iter().map(|n| n.addr.clone()).collect()).await;
    let channel = format!("churn{}", herald_testkit::unique());
    let mut apps = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(CLIENTS);
    for i in 0..CLIENTS {
        let mut cfg = ClientConfig::new(format!("ws://{addr}/ws")).token(token(&format!("u{i}")));
        cfg.ack = AckMode::Auto;
        cfg.backoff.min = Duration::from_millis(20);
        cfg.backoff.first_max = Duration::from_millis(100);
        cfg.backoff.cap = Duration::from_millis(300);
        let (client, mut events) = Client::connect(cfg);
        let (channel, ready) = (channel.clone(), ready_tx.clone());
        apps.push(tokio::spawn(async move {
            let r = client.subscribe(&channel).await.expect("subscribe");
            assert_eq!(r["delivery"], "at_least_once", "{r}");
            ready.send(()).await.expect("ready");
            let mut connections = 0;
            // The application: every message once, in order, no gap.
            let mut next = 1u64;
            while next <= TOTAL {
                let e = tokio::time::timeout(Duration::from_secs(30), events.next())
                    .await
                    .unwrap_or_else(|_| panic!("client {i} stalled waiting for {next}"))
                    .expect("events");
                match e {
                    Event::Message(m) => {
                        assert_eq!(m.channel, channel);
                        assert_eq!(
                            (m.offset, m.data["n"].as_u64()),
                            (next, Some(next)),
                            "client {i}: expected {next}"
                        );
                        next += 1;
                        if next % 8 == i as u64 {
                            // A slow application: the window holds the rest back meanwhile.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    Event::Gap { .. } => panic!("client {i}: {e:?}"),
                    Event::State(herald_client::State::Connected { .. }) => connections += 1,
                    _ => {}
                }
            }
            client.close().await;
            connections
        }));
    }
    for _ in 0..CLIENTS {
        ready_rx.recv().await.expect("ready");
    }
    let mut publisher = Ws::open(&publisher_node.addr, &token("publisher")).await;
    let mut replaced = None;
    for n in 1..=TOTAL {
        let r = publisher
            .call("publish", json!({"channel": channel, "data": {"n": n}}))
            .await;
        assert_eq!(r["offset"], n, "{r}");
        if n % 40 == 0 {
            switch.cut();
        }
        if n == TOTAL / 2 {
            // Kill a node; a new one takes its place behind the switch.
            let dead = nodes.remove(0);
            let old = dead.addr.clone();
            drop(dead);
            let fresh = cluster.node(&["--dev"]);
            switch.replace(&old, &fresh.addr);
            replaced = Some(fresh);
        }
        if n % 7 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    for app in apps {
        let reconnections = app
            .await
            .expect("every client saw every message once, in order");
        // Every client was connected at the first cut (all had subscribed): one reconnection at
        // least; later cuts may find a client still reconnecting.
        assert!(
            reconnections >= 2,
            "the cuts reached the client: {reconnections} reconnections"
        );
    }
    drop(replaced);
}

/// On the wire: a subscriber takes 10 messages on node 1 and acknowledges 6; its socket is cut.
/// On node 2 it recovers from its last processed offset (6): 7..10 come again (they were never
/// acknowledged), then the rest, each once, paced by the window as it acknowledges.
async fn a_subscriber_moving_nodes_gets_what_it_had_not_acknowledged(engine: Engine) {
    let cluster = at_least_once_cluster(&engine);
    let nodes = cluster.nodes(2);
    let channel = format!("move{}", herald_testkit::unique());
    let mut sub = Ws::open(&nodes[0].addr, &token("mover")).await;
    let r = sub.call("subscribe", json!({"channel": channel})).await;
    assert_eq!(r["delivery"], "at_least_once", "{r}");
    let epoch = r["epoch"].clone();
    let mut publisher = Ws::open(&nodes[1].addr, &token("publisher")).await;
    for n in 1..=40 {
        publisher
            .call("publish", json!({"channel": channel, "data": n}))
            .await;
    }
    let mut offsets = Vec::new();
    while offsets.len() < 10 {
        let p = sub.push().await;
        if p["type"] == "message" {
            offsets.push(p["payload"]["offset"].as_u64().expect("offset"));
        }
    }
    assert_eq!(offsets, (1..=10).collect::<Vec<_>>());
    sub.call("ack", json!({"channel": channel, "offset": 6}))
        .await;
    drop(sub); // cut
    let mut sub = Ws::open(&nodes[1].addr, &token("mover")).await;
    let r = sub
        .call(
            "subscribe",
            json!({"channel": channel, "recover": {"offset": 6, "epoch": epoch}}),
        )
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["missed"].as_u64()),
        (Some(true), Some(34)),
        "{r}"
    );
    let mut last = 6;
    while last < 40 {
        let p = sub.push().await;
        if p["type"] != "message" {
            continue;
        }
        let o = p["payload"]["offset"].as_u64().expect("offset");
        assert_eq!(o, last + 1, "after {last}: {p}");
        assert_eq!(p["payload"]["data"], json!(o));
        last = o;
        if last % 4 == 0 || last == 40 {
            sub.call("ack", json!({"channel": channel, "offset": last}))
                .await;
        }
    }
}

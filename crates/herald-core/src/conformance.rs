//! The engine conformance suite: one set of checks of the [`Broker`] and [`PresenceStore`]
//! contracts, run against every engine (memory here; Redis and NATS in their crates' tests).
//!
//! An engine provides a [`Backend`]: each call of [`Backend::node`] is a new node on the same
//! backing store (for a single-node engine, `shared()` is false and the multi-node checks run on
//! one node). Channel names carry a random suffix so runs against a persistent server never meet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::Data;
use herald_proto::envelope::{ClientInfo, StreamPosition};

use crate::broker::{
    Broker, BrokerError, BrokerHandler, ChannelEvent, HistoryQuery, PublishRequest,
};
use crate::cluster::{ControlEnvelope, ControlHandler, ControlMessage, ControlPlane, NodeInfo};
use crate::presence::PresenceStore;
use crate::publication::Publication;

/// An engine under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A new node (broker with its handler not yet set) on the shared backing store.
    async fn node(&self) -> Arc<dyn Broker>;
    /// A presence store on the shared backing store.
    async fn presence(&self) -> Arc<dyn PresenceStore>;
    /// Whether nodes share state (false: a single-node engine).
    fn shared(&self) -> bool;
    /// The control plane of a new node on the shared store (`None`: the engine has none).
    async fn control(&self) -> Option<Arc<dyn ControlPlane>> {
        None
    }
}

/// Records what a node receives.
#[derive(Default)]
pub struct Recorder {
    got: Mutex<Vec<(String, u64, String, serde_json::Value)>>,
    events: Mutex<Vec<(String, ChannelEvent)>>,
    notify: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, p: Arc<Publication>) {
        lock(&self.got).push((
            p.channel.to_string(),
            p.offset,
            p.epoch.to_string(),
            p.data.to_json_value(),
        ));
        self.notify.notify_waiters();
    }
    fn on_event(&self, channel: &str, event: ChannelEvent) {
        lock(&self.events).push((channel.to_owned(), event));
        self.notify.notify_waiters();
    }
}

impl Recorder {
    /// Offsets received on `channel`, in arrival order.
    pub fn offsets(&self, channel: &str) -> Vec<u64> {
        lock(&self.got)
            .iter()
            .filter(|(c, ..)| c == channel)
            .map(|(_, o, ..)| *o)
            .collect()
    }

    /// Wait until `cond` holds (10 s at most, then panic with `what`).
    pub async fn until(&self, what: &str, cond: impl Fn(&Recorder) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.notify.notified();
            if cond(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() && !cond(self) {
                panic!("timed out waiting for {what}");
            }
        }
    }
}

/// A channel name unique to this run.
pub fn channel(name: &str) -> String {
    format!("conf:{name}-{:08x}", rand::random::<u32>())
}

fn req(
    data: serde_json::Value,
    history: usize,
    ttl: Duration,
    key: Option<&str>,
) -> PublishRequest {
    PublishRequest {
        data: Data::json(&data.to_string()).expect("serde_json writes valid JSON"),
        info: None,
        idempotency_key: key.map(str::to_owned),
        history_size: history,
        history_ttl: ttl,
        idempotency_window: Duration::from_secs(60),
    }
}

const MINUTE: Duration = Duration::from_secs(60);

async fn node_with(b: &dyn Backend) -> (Arc<dyn Broker>, Arc<Recorder>) {
    let n = b.node().await;
    let r = Arc::new(Recorder::default());
    n.set_handler(r.clone());
    (n, r)
}

/// Offsets start at 1 and increase by one; the epoch is stable; a position read before the first
/// publish stays valid after it.
pub async fn offsets_and_epochs(b: &dyn Backend) {
    let (n, _) = node_with(b).await;
    let ch = channel("offsets");
    let before = n
        .history(
            &ch,
            HistoryQuery {
                since: None,
                limit: 0,
                reverse: false,
            },
        )
        .await
        .expect("position");
    assert_eq!(before.top, 0);
    let mut epoch = None;
    for i in 1..=5u64 {
        let o = n
            .publish(&ch, req(i.into(), 10, MINUTE, None))
            .await
            .expect("publish");
        assert_eq!(o.offset, i);
        assert!(!o.duplicate);
        assert_eq!(
            *o.epoch, *before.epoch,
            "the epoch of an empty stream is kept"
        );
        epoch.get_or_insert(o.epoch.clone());
    }
}

/// Every subscribed node gets a channel's publications in offset order, without gaps, even when
/// several nodes publish concurrently.
pub async fn ordered_fanout(b: &dyn Backend) {
    let (a, ra) = node_with(b).await;
    let (c, rc) = if b.shared() {
        node_with(b).await
    } else {
        (a.clone(), ra.clone())
    };
    let ch = channel("fanout");
    a.subscribe(&ch).await.expect("subscribe a");
    c.subscribe(&ch).await.expect("subscribe c");
    let mut tasks = Vec::new();
    for w in 0..4 {
        let n = if w % 2 == 0 { a.clone() } else { c.clone() };
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                n.publish(&ch, req(serde_json::json!([w, i]), 0, Duration::ZERO, None))
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let want: Vec<u64> = (1..=100).collect();
    for r in [&ra, &rc] {
        r.until("100 publications", |r| r.offsets(&ch).len() >= 100)
            .await;
        assert_eq!(r.offsets(&ch), want);
    }
    // After unsubscribing, a node gets nothing more of the channel (checked with a marker on a
    // second channel published afterwards by the same node, so it arrives later).
    if b.shared() {
        c.unsubscribe(&ch).await.expect("unsubscribe");
        let marker = channel("marker");
        c.subscribe(&marker).await.expect("subscribe marker");
        a.publish(&ch, req(1.into(), 0, Duration::ZERO, None))
            .await
            .expect("publish");
        ra.until("the 101st", |r| r.offsets(&ch).len() == 101).await;
        a.publish(&marker, req(1.into(), 0, Duration::ZERO, None))
            .await
            .expect("marker");
        rc.until("the marker", |r| r.offsets(&marker).len() == 1)
            .await;
        assert_eq!(rc.offsets(&ch).len(), 100);
    }
}

/// History: forward and reverse pages, `since`, limits, size trimming, epoch mismatch.
pub async fn history_pages(b: &dyn Backend) {
    let (n, _) = node_with(b).await;
    let ch = channel("history");
    let mut epoch = String::new();
    for i in 1..=8u64 {
        epoch = n
            .publish(&ch, req(i.into(), 5, MINUTE, None))
            .await
            .expect("publish")
            .epoch
            .to_string();
    }
    let all = n
        .history(
            &ch,
            HistoryQuery {
                since: None,
                limit: 100,
                reverse: false,
            },
        )
        .await
        .expect("history");
    let offs: Vec<u64> = all.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, [4, 5, 6, 7, 8], "trimmed to history_size");
    assert_eq!((all.top, all.first_kept), (8, 4));
    assert_eq!(
        all.publications[0].data.to_json_value(),
        serde_json::json!(4)
    );
    let pos = |offset| {
        Some(StreamPosition {
            offset,
            epoch: epoch.clone(),
        })
    };
    let fwd = n
        .history(
            &ch,
            HistoryQuery {
                since: pos(5),
                limit: 2,
                reverse: false,
            },
        )
        .await
        .expect("fwd");
    assert_eq!(
        fwd.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [6, 7]
    );
    let rev = n
        .history(
            &ch,
            HistoryQuery {
                since: pos(7),
                limit: 2,
                reverse: true,
            },
        )
        .await
        .expect("rev");
    assert_eq!(
        rev.publications
            .iter()
            .map(|p| p.offset)
            .collect::<Vec<_>>(),
        [6, 5]
    );
    let newest = n
        .history(
            &ch,
            HistoryQuery {
                since: None,
                limit: 1,
                reverse: true,
            },
        )
        .await
        .expect("newest");
    assert_eq!(newest.publications[0].offset, 8);
    let wrong = n
        .history(
            &ch,
            HistoryQuery {
                since: Some(StreamPosition {
                    offset: 1,
                    epoch: "nope".into(),
                }),
                limit: 10,
                reverse: false,
            },
        )
        .await;
    assert!(
        matches!(wrong, Err(BrokerError::EpochMismatch)),
        "{wrong:?}"
    );
    // Removing history keeps offsets and the epoch.
    n.remove_history(&ch).await.expect("remove");
    let empty = n
        .history(
            &ch,
            HistoryQuery {
                since: None,
                limit: 10,
                reverse: false,
            },
        )
        .await
        .expect("history");
    assert!(empty.publications.is_empty());
    assert_eq!((empty.top, &*empty.epoch), (8, epoch.as_str()));
    let next = n
        .publish(&ch, req(9.into(), 5, MINUTE, None))
        .await
        .expect("publish");
    assert_eq!(next.offset, 9);
}

/// History entries older than the TTL disappear.
pub async fn history_ttl(b: &dyn Backend) {
    let (n, _) = node_with(b).await;
    let ch = channel("ttl");
    n.publish(&ch, req(1.into(), 10, Duration::from_millis(300), None))
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = n
            .history(
                &ch,
                HistoryQuery {
                    since: None,
                    limit: 10,
                    reverse: false,
                },
            )
            .await
            .expect("history");
        if h.publications.is_empty() {
            assert_eq!((h.top, h.first_kept), (1, 2));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history outlived its TTL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A publish with a known idempotency key returns the first outcome and publishes nothing.
pub async fn idempotency(b: &dyn Backend) {
    let (n, r) = node_with(b).await;
    let ch = channel("idem");
    n.subscribe(&ch).await.expect("subscribe");
    let first = n
        .publish(&ch, req(1.into(), 10, MINUTE, Some("k1")))
        .await
        .expect("publish");
    let again = n
        .publish(&ch, req(2.into(), 10, MINUTE, Some("k1")))
        .await
        .expect("publish");
    assert_eq!((again.offset, again.duplicate), (first.offset, true));
    let other = n
        .publish(&ch, req(3.into(), 10, MINUTE, Some("k2")))
        .await
        .expect("publish");
    assert_eq!(other.offset, first.offset + 1);
    r.until("two publications", |r| r.offsets(&ch).len() >= 2)
        .await;
    assert_eq!(r.offsets(&ch), [1, 2]);
}

fn who(client: &str, user: &str) -> ClientInfo {
    ClientInfo {
        client_id: client.into(),
        user_id: user.into(),
        info: Some(serde_json::json!({"c": client})),
        chan_info: None,
    }
}

/// Join/leave events reach subscribed nodes.
pub async fn events(b: &dyn Backend) {
    let (c, rc) = node_with(b).await;
    let a = if b.shared() {
        node_with(b).await.0
    } else {
        c.clone()
    };
    let ch = channel("events");
    c.subscribe(&ch).await.expect("subscribe");
    a.publish_event(&ch, ChannelEvent::Join(who("c1", "alice")))
        .await
        .expect("event");
    rc.until("the join", |r| !lock(&r.events).is_empty()).await;
    assert_eq!(
        lock(&rc.events)[0],
        (ch.clone(), ChannelEvent::Join(who("c1", "alice")))
    );
}

/// Presence: idempotent add, remove, list, and counts of clients and distinct users.
pub async fn presence(b: &dyn Backend) {
    let p = b.presence().await;
    let q = if b.shared() {
        b.presence().await
    } else {
        p.clone()
    };
    let ch = channel("presence");
    p.add(&ch, who("c1", "alice")).await.expect("add");
    p.add(&ch, who("c1", "alice")).await.expect("add again");
    q.add(&ch, who("c2", "alice")).await.expect("add");
    q.add(&ch, who("c3", "bob")).await.expect("add");
    p.add(&ch, who("c4", "")).await.expect("add");
    p.add(&ch, who("c5", "")).await.expect("add");
    let stats = p.stats(&ch).await.expect("stats");
    assert_eq!((stats.clients, stats.users), (5, 3));
    let mut list: Vec<String> = q
        .list(&ch)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    list.sort();
    assert_eq!(list, ["c1", "c2", "c3", "c4", "c5"]);
    p.remove(&ch, "c1").await.expect("remove");
    p.remove(&ch, "nobody").await.expect("remove absent");
    q.remove(&ch, "c3").await.expect("remove");
    let stats = q.stats(&ch).await.expect("stats");
    assert_eq!((stats.clients, stats.users), (3, 2));
    let list = p.list(&ch).await.expect("list");
    let c2 = list
        .iter()
        .find(|c| c.client_id == "c2")
        .expect("c2 listed");
    assert_eq!(c2, &who("c2", "alice"));
}

/// Gap filling (`cursor`) over the engine's own history: a gap larger than one page is read in
/// bounded pages and delivered in order; the live publication that revealed it and a duplicate
/// racing it are delivered once; a position in another epoch moves to the stream's top; a gap
/// partly trimmed from history delivers what is kept and counts the rest as lost.
pub async fn gap_filling(b: &dyn Backend) {
    use crate::cursor::{BrokerHistory, ChannelCursor, FILL_PAGE, Fill};
    let (n, _) = node_with(b).await;
    let ch = channel("gaps");
    let total = 2 * FILL_PAGE as u64 + 100;
    let mut epoch = None;
    for i in 1..=total {
        let o = n
            .publish(&ch, req(i.into(), 2 * total as usize, MINUTE, None))
            .await
            .expect("publish");
        epoch.get_or_insert(o.epoch);
    }
    let epoch = epoch.expect("published");
    let mut history = BrokerHistory {
        broker: &*n,
        channel: &ch,
        reads: 0,
    };
    let mut got = Vec::new();
    let mut cursor = ChannelCursor::new(epoch.clone(), 0);
    let fill = cursor
        .catch_up(&mut history, &mut |p| got.push(p.offset))
        .await;
    assert_eq!(fill, Fill::Complete);
    assert_run(&got, 1, total);
    assert_eq!(history.reads, 3, "pages of at most {FILL_PAGE}");
    // The live stream skipped 11..=total-1; then the publication arrives again.
    let last = n
        .history(
            &ch,
            HistoryQuery {
                since: Some(StreamPosition {
                    offset: total - 1,
                    epoch: epoch.to_string(),
                }),
                limit: 1,
                reverse: false,
            },
        )
        .await
        .expect("history")
        .publications
        .remove(0);
    let mut cursor = ChannelCursor::new(epoch.clone(), 10);
    got.clear();
    for p in [last.clone(), last] {
        cursor
            .live(p, &mut history, &mut |p| got.push(p.offset))
            .await;
    }
    assert_run(&got, 11, total);
    // A position in an epoch the stream no longer has.
    let mut cursor = ChannelCursor::new(Arc::from("not-this-epoch"), 5);
    got.clear();
    let fill = cursor
        .catch_up(&mut history, &mut |p| got.push(p.offset))
        .await;
    assert_eq!(fill, Fill::EpochChanged);
    assert!(got.is_empty());
    assert_eq!(cursor.position(), (&epoch, total));
    // History keeps 50: most of a gap from 10 is gone.
    let ch = channel("trimmed");
    for i in 1..=100u64 {
        n.publish(&ch, req(i.into(), 50, MINUTE, None))
            .await
            .expect("publish");
    }
    let mut history = BrokerHistory {
        broker: &*n,
        channel: &ch,
        reads: 0,
    };
    let mut cursor = ChannelCursor::new(epoch_of(&*n, &ch).await, 10);
    got.clear();
    let fill = cursor
        .catch_up(&mut history, &mut |p| got.push(p.offset))
        .await;
    let Fill::Trimmed { lost } = fill else {
        panic!("a trimmed gap: {fill:?}")
    };
    assert_eq!(got.last(), Some(&100));
    assert_eq!(
        lost + got.len() as u64,
        90,
        "every offset after 10 delivered or counted"
    );
    assert!(got.windows(2).all(|w| w[0] + 1 == w[1]), "{got:?}");
}

/// `got` is exactly `from..=to`.
fn assert_run(got: &[u64], from: u64, to: u64) {
    let want = to - from + 1;
    assert_eq!(
        (got.len() as u64, got.first(), got.last()),
        (want, Some(&from), Some(&to)),
        "delivered {} offsets from {:?} to {:?}",
        got.len(),
        got.first(),
        got.last()
    );
    assert!(got.windows(2).all(|w| w[0] + 1 == w[1]), "out of order");
}

async fn epoch_of(n: &dyn Broker, ch: &str) -> Arc<str> {
    let q = HistoryQuery {
        since: None,
        limit: 0,
        reverse: false,
    };
    n.history(ch, q).await.expect("position").epoch
}

/// Records control messages a node receives.
#[derive(Default)]
struct Controls {
    got: Mutex<Vec<ControlEnvelope>>,
    notify: tokio::sync::Notify,
}

impl ControlHandler for Controls {
    fn on_control(&self, env: ControlEnvelope) {
        lock(&self.got).push(env);
        self.notify.notify_waiters();
    }
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The control-plane traits (`cluster`): a broadcast reaches the other node as sent; an
/// announced node is listed by the others; a kept revocation is returned to a node that starts
/// later and an expired one is not; the per-user connection count holds `max` across nodes and
/// frees a slot on release.
pub async fn control_plane(b: &dyn Backend) {
    let (Some(a), Some(c)) = (b.control().await, b.control().await) else {
        return;
    };
    let (ha, hc) = (Arc::new(Controls::default()), Arc::new(Controls::default()));
    a.set_control_handler(ha.clone());
    c.set_control_handler(hc.clone());
    let tag = format!("{:08x}", rand::random::<u32>());
    let env = ControlEnvelope {
        from: format!("node-a-{tag}"),
        msg: ControlMessage::DisconnectUser {
            user: format!("u-{tag}"),
        },
    };
    // A broadcast right after subscribing may race the subscription on some engines: resend
    // until it arrives (the bus is best effort), then check what arrived is what was sent.
    eventually("a broadcast to reach the other node", || async {
        a.broadcast(&env).await.expect("broadcast");
        tokio::time::sleep(Duration::from_millis(50)).await;
        lock(&hc.got).contains(&env)
    })
    .await;
    let node = NodeInfo {
        id: format!("node-a-{tag}"),
        address: "127.0.0.1:1".into(),
        connections: 3,
        uptime_ms: 1,
        version: "test".into(),
        updated_ms: crate::publication::now_ms(),
        load: Some(crate::cluster::NodeLoad {
            subscriptions: 2,
            publish_to_send: vec![(Some(0.001), 1), (None, 1)],
            ..Default::default()
        }),
    };
    eventually("an announced node to be listed", || async {
        a.announce(&node).await.expect("announce");
        c.nodes().await.expect("nodes").contains(&node)
    })
    .await;
    let now = crate::publication::now_ms() / 1000;
    let revoke = |jti: &str, expires_at| ControlEnvelope {
        from: format!("node-a-{tag}"),
        msg: ControlMessage::RevokeToken {
            jti: format!("{jti}-{tag}"),
            expires_at,
        },
    };
    let (live, gone) = (
        revoke("live", now + 600),
        revoke("gone", now.saturating_sub(5)),
    );
    a.keep(&live, now + 600).await.expect("keep");
    a.keep(&gone, now.saturating_sub(5)).await.expect("keep");
    let later = b.control().await.expect("a third node");
    let kept = later.kept().await.expect("kept");
    assert!(
        kept.contains(&live),
        "a kept revocation reaches a later node: {kept:?}"
    );
    assert!(!kept.contains(&gone), "an expired one does not");
    let user = format!("user-{tag}");
    assert!(a.acquire_connection(&user, "c1", 2).await.expect("acquire"));
    assert!(c.acquire_connection(&user, "c2", 2).await.expect("acquire"));
    assert!(
        !a.acquire_connection(&user, "c3", 2).await.expect("acquire"),
        "a third connection over max 2 across the nodes"
    );
    a.release_connection(&user, "c1").await.expect("release");
    assert!(c.acquire_connection(&user, "c3", 2).await.expect("acquire"));
    for (n, id) in [(&c, "c2"), (&c, "c3")] {
        n.release_connection(&user, id).await.expect("release");
    }
}

/// Run every check.
pub async fn run_all(b: &dyn Backend) {
    offsets_and_epochs(b).await;
    ordered_fanout(b).await;
    history_pages(b).await;
    history_ttl(b).await;
    idempotency(b).await;
    events(b).await;
    presence(b).await;
    gap_filling(b).await;
    control_plane(b).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryBroker, MemoryPresence};

    struct Memory {
        presence: Arc<MemoryPresence>,
        cluster: crate::memory_cluster::MemoryCluster,
    }

    #[async_trait]
    impl Backend for Memory {
        async fn node(&self) -> Arc<dyn Broker> {
            Arc::new(MemoryBroker::new())
        }
        async fn presence(&self) -> Arc<dyn PresenceStore> {
            self.presence.clone()
        }
        fn shared(&self) -> bool {
            false
        }
        async fn control(&self) -> Option<Arc<dyn ControlPlane>> {
            Some(Arc::new(self.cluster.node()))
        }
    }

    #[tokio::test]
    async fn the_memory_engine_conforms() {
        run_all(&Memory {
            presence: Arc::new(MemoryPresence::new()),
            cluster: crate::memory_cluster::MemoryCluster::new(),
        })
        .await;
    }
}

//! The hub: this node's index of subscriptions by channel, and the local fan-out.
//!
//! Fan-out takes a read lock on one shard, and for each subscriber pushes the shared
//! `Arc<Publication>` into its outlet: no encoding and no allocation per subscriber (the frame is
//! encoded once per format, on first write). A subscription that is still being set up (its
//! subscribe reply and recovered history not yet queued) buffers live publications instead, so
//! nothing published during recovery is lost or reordered.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use herald_proto::Format;

use crate::config::SlowConsumerPolicy;
use crate::outlet::{Out, Outlet};
use crate::publication::Publication;
use crate::sync::{lock, read, write};

const SHARDS: usize = 64;

/// One connection's subscription to one channel, as seen by the fan-out.
#[derive(Debug)]
pub struct Subscriber {
    /// Where frames go.
    pub outlet: Arc<Outlet>,
    /// The connection's id.
    pub client_id: Arc<str>,
    /// The namespace's slow consumer policy.
    pub policy: SlowConsumerPolicy,
    /// Whether this subscriber also gets join/leave pushes.
    pub join_leave: bool,
    buffering: AtomicBool,
    /// Publications that arrived while buffering (made at the first; 16 bytes instead of 32 in
    /// every subscription, which keeps none once live).
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every subscription, see above"
    )]
    buffer: Mutex<Option<Box<Vec<Arc<Publication>>>>>,
    last_offset: AtomicU64,
    /// `epoch_tag` of the epoch `last_offset` belongs to.
    last_epoch: AtomicU64,
    /// At-least-once delivery state (namespaces with `delivery = "at_least_once"`).
    tracker: Option<Box<crate::delivery::Tracker>>,
    /// Delta updates (namespaces with `delta`, JSON connections): the last publication this
    /// subscriber was sent, the base of the next delta (`None`: the next one goes whole).
    delta_base: Option<Box<Mutex<Option<Arc<Publication>>>>>,
}

impl Subscriber {
    /// A subscriber that buffers publications until [`Subscriber::go_live`].
    pub fn new(
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        policy: SlowConsumerPolicy,
        join_leave: bool,
    ) -> Arc<Self> {
        Self::build(outlet, client_id, policy, join_leave, None)
    }

    /// A subscriber that gets delta updates: a whole first message, then each publication as a
    /// delta against the previous one it was sent.
    pub(crate) fn with_deltas(
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        policy: SlowConsumerPolicy,
        join_leave: bool,
    ) -> Arc<Self> {
        let mut s = Self::unwrapped(outlet, client_id, policy, join_leave, None);
        s.delta_base = Some(Box::new(Mutex::new(None)));
        Arc::new(s)
    }

    /// Whether this subscriber gets delta updates.
    pub fn gets_deltas(&self) -> bool {
        self.delta_base.is_some()
    }

    /// What to queue for `p` when it is sent whole (recovery, a gap filled at resume): a delta
    /// subscriber's format, and the base of its next delta.
    pub(crate) fn whole(&self, p: &Arc<Publication>) -> Out {
        match &self.delta_base {
            Some(base) => {
                let mut base = lock(base);
                // Never move the base back (a resume fills in older messages in front of what
                // is queued): the next live message is a delta only against the newest.
                if base
                    .as_ref()
                    .is_none_or(|b| b.epoch_tag != p.epoch_tag || b.offset < p.offset)
                {
                    *base = Some(p.clone());
                }
                Out::Whole(p.clone())
            }
            None => Out::Pub(p.clone()),
        }
    }

    /// An at-least-once subscriber: what it is sent stays in flight in `tracker` until acked.
    pub(crate) fn acknowledged(
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        join_leave: bool,
        tracker: crate::delivery::Tracker,
    ) -> Arc<Self> {
        Self::build(
            outlet,
            client_id,
            SlowConsumerPolicy::Disconnect,
            join_leave,
            Some(Box::new(tracker)),
        )
    }

    fn build(
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        policy: SlowConsumerPolicy,
        join_leave: bool,
        tracker: Option<Box<crate::delivery::Tracker>>,
    ) -> Arc<Self> {
        Arc::new(Self::unwrapped(
            outlet, client_id, policy, join_leave, tracker,
        ))
    }

    fn unwrapped(
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        policy: SlowConsumerPolicy,
        join_leave: bool,
        tracker: Option<Box<crate::delivery::Tracker>>,
    ) -> Self {
        Subscriber {
            outlet,
            client_id,
            policy,
            join_leave,
            buffering: AtomicBool::new(true),
            buffer: Mutex::new(None),
            last_offset: AtomicU64::new(0),
            last_epoch: AtomicU64::new(0),
            tracker,
            delta_base: None,
        }
    }

    /// The at-least-once state, when the namespace acknowledges deliveries.
    pub fn tracker(&self) -> Option<&crate::delivery::Tracker> {
        self.tracker.as_deref()
    }

    /// `p` was queued for this subscriber (by its tracker).
    pub(crate) fn mark_sent(&self, p: &Publication) {
        self.last_offset.store(p.offset, Ordering::Relaxed);
        self.last_epoch.store(p.epoch_tag, Ordering::Relaxed);
    }

    /// Queue a publication that is not a duplicate: through the tracker (at-least-once), or
    /// under the slow consumer policy.
    fn enqueue(&self, p: &Arc<Publication>) {
        match &self.tracker {
            Some(t) => t.offer(self, p),
            None => {
                self.mark_sent(p);
                let item = match &self.delta_base {
                    Some(base) => {
                        let mut base = lock(base);
                        let item = match base.as_ref() {
                            Some(b) if b.epoch_tag == p.epoch_tag && b.offset + 1 == p.offset => {
                                Out::Delta(p.clone(), b.clone())
                            }
                            _ => Out::Whole(p.clone()),
                        };
                        *base = Some(p.clone());
                        item
                    }
                    None => Out::Pub(p.clone()),
                };
                self.outlet.push(item, self.policy);
            }
        }
    }

    fn deliver(&self, p: &Arc<Publication>) {
        if self.buffering.load(Ordering::Acquire) {
            let mut buf = lock(&self.buffer);
            if self.buffering.load(Ordering::Acquire) {
                let buf = buf.get_or_insert_with(Box::default);
                if buf.len() >= self.outlet.limits().max_messages {
                    // Recovery is slower than the channel: treat as a slow consumer.
                    buf.clear();
                    self.outlet.close(herald_proto::CloseCode::SlowConsumer);
                    metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
                    return;
                }
                buf.push(p.clone());
                return;
            }
        }
        // An engine may deliver, live, a publication the recovery already queued (it was in
        // flight while history was read): offsets only grow within an epoch, so drop it.
        if self.is_duplicate(p) {
            metrics::counter!("herald_duplicates_dropped_total").increment(1);
            return;
        }
        self.enqueue(p);
    }

    fn is_duplicate(&self, p: &Publication) -> bool {
        self.last_epoch.load(Ordering::Relaxed) == p.epoch_tag
            && p.offset <= self.last_offset.load(Ordering::Relaxed)
    }

    /// Finish setup: run `before` (which queues the reply and recovered history and returns the
    /// last offset it queued), then queue the publications buffered meanwhile that come after it,
    /// and switch to direct delivery — all while holding the buffer lock, so the order is exact.
    /// `epoch` is the stream epoch of that last offset.
    pub fn go_live(&self, epoch: &str, before: impl FnOnce() -> u64) {
        let mut buf = lock(&self.buffer);
        self.last_offset.store(before(), Ordering::Relaxed);
        self.last_epoch
            .store(crate::publication::epoch_tag(epoch), Ordering::Relaxed);
        for p in buf.take().map(|b| *b).unwrap_or_default() {
            if !self.is_duplicate(&p) {
                self.enqueue(&p);
            }
        }
        self.buffering.store(false, Ordering::Release);
    }

    /// Offset of the last publication queued for this subscriber.
    pub fn last_offset(&self) -> u64 {
        self.last_offset.load(Ordering::Relaxed)
    }

    /// Publications buffered while setting up (for limits).
    pub fn buffered(&self) -> usize {
        lock(&self.buffer).as_ref().map_or(0, |b| b.len())
    }
}

impl crate::delivery::Sink for Subscriber {
    fn outlet(&self) -> &Outlet {
        &self.outlet
    }

    fn mark_sent(&self, p: &Publication) {
        Subscriber::mark_sent(self, p);
    }

    fn mark_offset(&self, offset: u64, epoch: &str) {
        self.last_offset.store(offset, Ordering::Relaxed);
        self.last_epoch
            .store(crate::publication::epoch_tag(epoch), Ordering::Relaxed);
    }
}

type Shard = RwLock<HashMap<Arc<str>, Vec<Arc<Subscriber>>>>;

impl crate::broker::BrokerHandler for Hub {
    fn on_publication(&self, publication: Arc<Publication>) {
        self.fanout(&publication);
    }

    fn on_event(&self, channel: &str, event: crate::broker::ChannelEvent) {
        use crate::broker::ChannelEvent;
        let (kind, info) = match &event {
            ChannelEvent::Join(i) => (herald_proto::ServerKind::Join, i),
            ChannelEvent::Leave(i) => (herald_proto::ServerKind::Leave, i),
        };
        #[derive(serde::Serialize)]
        struct Ev<'a> {
            channel: &'a str,
            client_id: &'a str,
            user_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            info: Option<&'a serde_json::Value>,
        }
        let ev = Ev {
            channel,
            client_id: &info.client_id,
            user_id: &info.user_id,
            info: info.info.as_ref(),
        };
        self.broadcast_event(channel, &info.client_id, |f| {
            herald_proto::encode(f, kind, None, &ev).ok()
        });
    }
}

/// Subscriptions of this node, sharded by channel.
pub struct Hub {
    shards: Vec<Shard>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }
}

impl Hub {
    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Add a subscriber. Returns `(first_on_node, subscribers_now)` or `None` when `max` (non-zero)
    /// is reached.
    pub fn add(&self, channel: &str, sub: Arc<Subscriber>, max: usize) -> Option<(bool, usize)> {
        let mut shard = write(self.shard(channel));
        let list = shard.entry(Arc::from(channel)).or_default();
        if max > 0 && list.len() >= max {
            if list.is_empty() {
                shard.remove(channel);
            }
            return None;
        }
        list.push(sub);
        Some((list.len() == 1, list.len()))
    }

    /// Remove a connection's subscription. Returns `Some(last_on_node)` when it was present.
    pub fn remove(&self, channel: &str, client_id: &str) -> Option<bool> {
        let mut shard = write(self.shard(channel));
        let list = shard.get_mut(channel)?;
        let pos = list.iter().position(|s| &*s.client_id == client_id)?;
        let gone = list.swap_remove(pos);
        if let Some(t) = gone.tracker() {
            t.close();
        }
        let last = list.is_empty();
        if last {
            shard.remove(channel);
        }
        Some(last)
    }

    /// Deliver a publication to every local subscriber of its channel.
    pub fn fanout(&self, p: &Arc<Publication>) -> usize {
        let shard = read(self.shard(&p.channel));
        let Some(list) = shard.get(&*p.channel) else {
            return 0;
        };
        for sub in list {
            sub.deliver(p);
        }
        list.len()
    }

    /// Deliver a join/leave push, encoded at most once per format, to subscribers that want it.
    /// The client the event is about does not get it.
    pub fn broadcast_event(
        &self,
        channel: &str,
        about: &str,
        encode: impl Fn(Format) -> Option<Bytes>,
    ) {
        let shard = read(self.shard(channel));
        let Some(list) = shard.get(channel) else {
            return;
        };
        let frames: [OnceLock<Option<Bytes>>; 2] = [OnceLock::new(), OnceLock::new()];
        for sub in list.iter().filter(|s| {
            s.join_leave && &*s.client_id != about && !s.buffering.load(Ordering::Acquire)
        }) {
            let f = sub.outlet.format;
            if let Some(frame) = frames[f.index()].get_or_init(|| encode(f)) {
                sub.outlet.push(Out::Event(frame.clone()), sub.policy);
            }
        }
    }

    /// Local subscribers of a channel.
    pub fn count(&self, channel: &str) -> usize {
        read(self.shard(channel))
            .get(channel)
            .map(Vec::len)
            .unwrap_or(0)
    }

    /// Channels with at least one local subscriber.
    pub fn channels(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Channels with local subscribers whose name passes `keep`, with their subscriber counts,
    /// sorted by name.
    pub fn channel_counts(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|s| {
                read(s)
                    .iter()
                    .filter(|(c, _)| keep(c))
                    .map(|(c, l)| (c.to_string(), l.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }

    /// The channels each of `client_ids` is subscribed to on this node, by name, at most `max`
    /// each. One pass over every subscription: for admin lookups of a few clients, not for the
    /// hot path.
    pub fn channels_of(&self, client_ids: &[&str], max: usize) -> Vec<Vec<String>> {
        let mut out = vec![Vec::new(); client_ids.len()];
        for shard in &self.shards {
            for (channel, subs) in read(shard).iter() {
                for s in subs {
                    if let Some(i) = client_ids.iter().position(|c| *c == &*s.client_id)
                        && let Some(list) = out.get_mut(i)
                        && list.len() < max
                    {
                        list.push(channel.to_string());
                    }
                }
            }
        }
        out.iter_mut().for_each(|l| l.sort());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outlet::{Drained, QueueLimits};
    use herald_proto::Data;

    fn publication(offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            Arc::from("c"),
            offset,
            Arc::from("e"),
            0,
            Data::json("1").expect("j"),
            None,
        ))
    }

    /// Regression (issue 12, #14): on Redis, a subscriber recovering on another node while
    /// publications flowed sometimes got the boundary publication twice: once at the end of the
    /// recovery, once live (it was in flight while history was read).
    #[test]
    fn a_live_duplicate_of_a_recovered_publication_is_dropped_but_a_new_epoch_is_not() {
        let hub = Hub::default();
        let outlet = Outlet::new(
            Format::Json,
            QueueLimits {
                max_messages: 100,
                max_bytes: 1 << 20,
            },
        );
        let sub = Subscriber::new(
            outlet.clone(),
            Arc::from("c1"),
            SlowConsumerPolicy::Disconnect,
            false,
        );
        hub.add("c", sub.clone(), 0).expect("add");
        let p = |offset, epoch: &str| {
            Arc::new(Publication::new(
                Arc::from("c"),
                offset,
                Arc::from(epoch),
                0,
                Data::json("1").expect("j"),
                None,
            ))
        };
        // The recovery queued up to offset 5 of epoch "e"; then 5 arrives live, then 6.
        sub.go_live("e", || 5);
        for pub_ in [p(5, "e"), p(6, "e"), p(6, "e"), p(1, "f"), p(2, "f")] {
            hub.fanout(&pub_);
        }
        let mut d = Drained::default();
        outlet.drain(10, &mut d);
        let offsets: Vec<String> = d
            .frames
            .iter()
            .map(|f| {
                let (payload, _) = herald_proto::frame::parse_unmasked(f).expect("frame");
                let v: serde_json::Value = serde_json::from_slice(payload).expect("json");
                format!(
                    "{}{}",
                    v["payload"]["epoch"].as_str().unwrap_or(""),
                    v["payload"]["offset"]
                )
            })
            .collect();
        assert_eq!(offsets, ["e6", "f1", "f2"]);
    }

    /// Issue 17: delta subscribers get a whole first message, then a Fossil delta against the
    /// previous publication, each computed once and shared; plain subscribers are unaffected.
    #[test]
    fn delta_subscribers_share_one_whole_frame_then_one_delta() {
        let hub = Hub::default();
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        };
        let outlets: Vec<_> = (0..3).map(|_| Outlet::new(Format::Json, limits)).collect();
        for (i, o) in outlets.iter().enumerate() {
            let id: Arc<str> = Arc::from(i.to_string());
            let s = if i < 2 {
                Subscriber::with_deltas(o.clone(), id, SlowConsumerPolicy::Disconnect, false)
            } else {
                Subscriber::new(o.clone(), id, SlowConsumerPolicy::Disconnect, false)
            };
            s.go_live("e", || 0);
            hub.add("c", s, 0).expect("add");
        }
        let texts = [
            r#"{"a":1,"b":"hello world hello world hello world","c":3}"#,
            r#"{"a":2,"b":"hello world hello world hello world","c":4}"#,
        ];
        for (i, t) in texts.iter().enumerate() {
            hub.fanout(&Arc::new(Publication::new(
                Arc::from("c"),
                i as u64 + 1,
                Arc::from("e"),
                0,
                Data::json(t).expect("json"),
                None,
            )));
        }
        let frames: Vec<Vec<Bytes>> = outlets
            .iter()
            .map(|o| {
                let mut d = Drained::default();
                o.drain(10, &mut d);
                d.frames
            })
            .collect();
        let payload = |f: &Bytes| -> serde_json::Value {
            let (p, _) = herald_proto::frame::parse_unmasked(f).expect("frame");
            serde_json::from_slice::<serde_json::Value>(p).expect("json")["payload"].clone()
        };
        // Whole first message: data is the JSON text in a string; shared.
        assert_eq!(frames[0][0].as_ptr(), frames[1][0].as_ptr());
        assert_eq!(payload(&frames[0][0])["data"], texts[0]);
        // Then one delta, shared, that turns the first text into the second.
        assert_eq!(frames[0][1].as_ptr(), frames[1][1].as_ptr());
        let d = payload(&frames[0][1]);
        assert_eq!(d["delta"], true);
        let delta = d["data"].as_str().expect("a string");
        assert!(delta.len() < texts[1].len(), "{delta}");
        let applied = fossil_delta::apply(texts[0].as_bytes(), delta.as_bytes()).expect("applies");
        assert_eq!(applied, texts[1].as_bytes());
        // A plain subscriber gets plain messages.
        assert_eq!(payload(&frames[2][1])["data"]["a"], 2);
    }

    /// Issue 17: with permessage-deflate a publication is compressed once, and every subscriber
    /// that negotiated it gets the same bytes; MessagePack connections get it uncompressed unless
    /// the namespace says `compress_binary`.
    #[test]
    fn fanout_shares_one_compressed_frame() {
        use crate::compression::DeflatePolicy;
        use crate::config::{EngineConfig, NamespaceOptions};
        let hub = Hub::default();
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        };
        let cfg = EngineConfig {
            default_namespace: Some(NamespaceOptions {
                compression: true,
                ..NamespaceOptions::default()
            }),
            ..Default::default()
        };
        let policy: Arc<DeflatePolicy> = Arc::new(cfg.deflate_policy(64));
        let formats = [Format::Json, Format::Json, Format::Msgpack, Format::Json];
        let outlets: Vec<_> = formats.iter().map(|f| Outlet::new(*f, limits)).collect();
        for o in &outlets[..3] {
            o.set_deflate(Some(policy.clone()));
        }
        for (i, o) in outlets.iter().enumerate() {
            let s = Subscriber::new(
                o.clone(),
                Arc::from(i.to_string()),
                SlowConsumerPolicy::Disconnect,
                false,
            );
            s.go_live("e", || 0);
            hub.add("c", s, 0).expect("add");
        }
        let text = format!("{{\"text\":\"{}\"}}", "hello herald ".repeat(40));
        hub.fanout(&Arc::new(Publication::new(
            Arc::from("c"),
            1,
            Arc::from("e"),
            0,
            Data::json(&text).expect("json"),
            None,
        )));
        let frames: Vec<Bytes> = outlets
            .iter()
            .map(|o| {
                let mut d = Drained::default();
                o.drain(10, &mut d);
                d.frames.into_iter().next().expect("a frame")
            })
            .collect();
        assert!(herald_proto::frame::is_deflated(&frames[0]));
        assert!(
            frames[0].len() < frames[3].len() / 3,
            "{} vs {}",
            frames[0].len(),
            frames[3].len()
        );
        assert_eq!(
            frames[0].as_ptr(),
            frames[1].as_ptr(),
            "one compressed frame, shared"
        );
        assert!(
            !herald_proto::frame::is_deflated(&frames[2]),
            "MessagePack: not by default"
        );
        assert!(
            !herald_proto::frame::is_deflated(&frames[3]),
            "not negotiated"
        );
        // What the compressed frame carries is the plain frame's payload.
        let (z, _) = herald_proto::frame::parse_unmasked(&frames[0]).expect("frame");
        let (plain, _) = herald_proto::frame::parse_unmasked(&frames[3]).expect("frame");
        assert_eq!(
            herald_proto::deflate::inflate(z, 1 << 20).expect("inflates"),
            plain
        );
    }

    #[test]
    fn fanout_shares_one_encoding_and_buffers_during_setup() {
        let hub = Hub::default();
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        };
        let outlets: Vec<_> = (0..3).map(|_| Outlet::new(Format::Json, limits)).collect();
        let subs: Vec<_> = outlets
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Subscriber::new(
                    o.clone(),
                    Arc::from(i.to_string()),
                    SlowConsumerPolicy::Disconnect,
                    false,
                )
            })
            .collect();
        for s in &subs {
            hub.add("c", s.clone(), 0).expect("add");
        }
        subs[0].go_live("e", || 0);
        subs[1].go_live("e", || 0);
        // subs[2] is still recovering: buffers 1 and 2; history covers up to 1.
        hub.fanout(&publication(1));
        hub.fanout(&publication(2));
        subs[2].go_live("e", || 1);
        let mut frames = Vec::new();
        for o in &outlets {
            let mut d = Drained::default();
            o.drain(10, &mut d);
            frames.push(d.frames);
        }
        assert_eq!(frames[0].len(), 2);
        assert_eq!(
            frames[2].len(),
            1,
            "offset 1 came from history, only 2 from the buffer"
        );
        // Same bytes, same allocation, for every subscriber.
        assert_eq!(frames[0][1].as_ptr(), frames[1][1].as_ptr());
        assert_eq!(frames[0][1].as_ptr(), frames[2][0].as_ptr());
        assert_eq!(hub.remove("c", "0"), Some(false));
        assert_eq!(hub.count("c"), 2);
    }
}

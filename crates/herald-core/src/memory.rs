//! The embedded in-memory engine: a [`Broker`] and a [`PresenceStore`] for a single node.
//!
//! Each channel stream sits behind its own `std::sync::Mutex` (nothing is awaited while it is
//! held), and delivery to the node happens inside that lock, which is what makes "assign offset,
//! append, fan out" one atomic step per channel. The epoch of a stream is random and chosen when
//! the stream is created, so a restart (or a stream dropped after inactivity) is a new epoch.
//!
//! Reads never create streams: a read of a channel nobody published to answers an empty page
//! with an epoch remembered in a bounded table ([`MAX_UNPUBLISHED`] names, oldest forgotten
//! first), which the stream adopts if it is created later. So `history` on 20 000 fresh names
//! costs a few hundred kilobytes, not a stream each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_proto::envelope::{ClientInfo, PresenceStats};

use crate::broker::{
    Broker, BrokerError, BrokerHandler, ChannelEvent, HistoryPage, HistoryQuery, PublishOutcome,
    PublishRequest,
};
use crate::presence::PresenceStore;
use crate::publication::{Publication, now_ms};
use crate::sync::{lock, read, write};

/// Streams idle longer than this (and past their history TTL) are dropped by [`MemoryBroker::sweep`].
const MIN_IDLE_KEEP: Duration = Duration::from_secs(300);

/// Channel names read before anyone published to them whose epochs are remembered.
pub const MAX_UNPUBLISHED: usize = 16_384;

/// Epochs handed out for channels without a stream (FIFO-bounded).
#[derive(Default)]
struct Unpublished {
    epochs: HashMap<Arc<str>, Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl Unpublished {
    fn epoch(&mut self, channel: &str) -> Arc<str> {
        if let Some(e) = self.epochs.get(channel) {
            return e.clone();
        }
        let name: Arc<str> = Arc::from(channel);
        let epoch: Arc<str> = Arc::from(new_epoch().as_str());
        if self.order.len() >= MAX_UNPUBLISHED
            && let Some(old) = self.order.pop_front()
        {
            self.epochs.remove(&old);
        }
        self.order.push_back(name.clone());
        self.epochs.insert(name, epoch.clone());
        epoch
    }

    /// The epoch already handed out for `channel`, forgotten here (its stream now exists).
    fn take(&mut self, channel: &str) -> Option<Arc<str>> {
        let e = self.epochs.remove(channel)?;
        self.order.retain(|n| &**n != channel);
        Some(e)
    }
}

struct Stream {
    name: Arc<str>,
    epoch: Arc<str>,
    top: u64,
    history: VecDeque<(Instant, Arc<Publication>)>,
    history_ttl: Duration,
    keys: HashMap<String, (u64, Instant)>,
    last_publish: Instant,
}

impl Stream {
    fn new(name: &str) -> Self {
        Stream {
            name: Arc::from(name),
            epoch: Arc::from(new_epoch().as_str()),
            top: 0,
            history: VecDeque::new(),
            history_ttl: Duration::ZERO,
            keys: HashMap::new(),
            last_publish: Instant::now(),
        }
    }

    fn trim(&mut self, now: Instant) {
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) > self.history_ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn first_kept(&self) -> u64 {
        self.history
            .front()
            .map(|(_, p)| p.offset)
            .unwrap_or(self.top + 1)
    }
}

fn new_epoch() -> String {
    let n: u64 = rand::random();
    format!("{:08x}", n as u32)
}

/// In-memory broker for one node.
#[derive(Default)]
pub struct MemoryBroker {
    streams: RwLock<HashMap<Arc<str>, Arc<Mutex<Stream>>>>,
    unpublished: Mutex<Unpublished>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl MemoryBroker {
    /// A new, empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn stream(&self, channel: &str) -> Arc<Mutex<Stream>> {
        if let Some(s) = read(&self.streams).get(channel) {
            return s.clone();
        }
        let mut map = write(&self.streams);
        map.entry(Arc::from(channel))
            .or_insert_with(|| {
                let mut s = Stream::new(channel);
                if let Some(epoch) = lock(&self.unpublished).take(channel) {
                    s.epoch = epoch;
                }
                Arc::new(Mutex::new(s))
            })
            .clone()
    }

    fn existing(&self, channel: &str) -> Option<Arc<Mutex<Stream>>> {
        read(&self.streams).get(channel).cloned()
    }

    /// Drop expired history, idempotency keys and idle streams. Call periodically.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut map = write(&self.streams);
        map.retain(|_, s| {
            let mut s = lock(s);
            s.trim(now);
            s.keys.retain(|_, (_, exp)| *exp > now);
            let idle = now.duration_since(s.last_publish);
            !(s.history.is_empty() && s.keys.is_empty() && idle > MIN_IDLE_KEEP.max(s.history_ttl))
        });
    }

    /// Channel names whose epochs are remembered without a stream.
    pub fn unpublished_count(&self) -> usize {
        lock(&self.unpublished).order.len()
    }

    /// Number of streams currently held.
    pub fn stream_count(&self) -> usize {
        read(&self.streams).len()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        req: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        let stream = self.stream(channel);
        let mut s = lock(&stream);
        let now = Instant::now();
        if let Some(key) = &req.idempotency_key
            && let Some((offset, exp)) = s.keys.get(key)
            && *exp > now
        {
            return Ok(PublishOutcome {
                offset: *offset,
                epoch: s.epoch.clone(),
                duplicate: true,
            });
        }
        s.top += 1;
        s.last_publish = now;
        let publication = Arc::new(Publication::new(
            s.name.clone(),
            s.top,
            s.epoch.clone(),
            now_ms(),
            req.data,
            req.info,
        ));
        if req.history_size > 0 && !req.history_ttl.is_zero() {
            s.history_ttl = req.history_ttl;
            s.history.push_back((now, publication.clone()));
            while s.history.len() > req.history_size {
                s.history.pop_front();
            }
            s.trim(now);
        }
        if let Some(key) = req.idempotency_key {
            let top = s.top;
            s.keys.insert(key, (top, now + req.idempotency_window));
        }
        let outcome = PublishOutcome {
            offset: s.top,
            epoch: s.epoch.clone(),
            duplicate: false,
        };
        if let Some(h) = self.handler.get() {
            // Inside the stream lock: delivery order equals offset order.
            h.on_publication(publication);
        }
        Ok(outcome)
    }

    async fn publish_event(&self, channel: &str, event: ChannelEvent) -> Result<(), BrokerError> {
        if let Some(h) = self.handler.get() {
            h.on_event(channel, event);
        }
        Ok(())
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn history(&self, channel: &str, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let Some(stream) = self.existing(channel) else {
            let epoch = lock(&self.unpublished).epoch(channel);
            if q.since.as_ref().is_some_and(|since| *since.epoch != *epoch) {
                return Err(BrokerError::EpochMismatch);
            }
            return Ok(HistoryPage {
                publications: Vec::new(),
                top: 0,
                epoch,
                first_kept: 1,
            });
        };
        let mut s = lock(&stream);
        s.trim(Instant::now());
        if let Some(since) = &q.since
            && *since.epoch != *s.epoch
        {
            return Err(BrokerError::EpochMismatch);
        }
        let mut page = Vec::with_capacity(q.limit.min(s.history.len()));
        if q.limit > 0 {
            if q.reverse {
                let before = q.since.as_ref().map(|p| p.offset).unwrap_or(u64::MAX);
                for (_, p) in s.history.iter().rev().filter(|(_, p)| p.offset < before) {
                    if page.len() == q.limit {
                        break;
                    }
                    page.push(p.clone());
                }
            } else {
                let after = q.since.as_ref().map(|p| p.offset).unwrap_or(0);
                let first = s.first_kept();
                let skip = after.saturating_sub(first.saturating_sub(1)) as usize;
                for (_, p) in s.history.iter().skip(skip) {
                    if page.len() == q.limit {
                        break;
                    }
                    if p.offset > after {
                        page.push(p.clone());
                    }
                }
            }
        }
        Ok(HistoryPage {
            publications: page,
            top: s.top,
            epoch: s.epoch.clone(),
            first_kept: s.first_kept(),
        })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        if let Some(stream) = self.existing(channel) {
            lock(&stream).history.clear();
        }
        Ok(())
    }
}

#[derive(Default)]
struct ChannelPresence {
    clients: HashMap<String, ClientInfo>,
    users: HashMap<String, u64>,
}

/// In-memory presence for one node.
#[derive(Default)]
pub struct MemoryPresence {
    channels: Mutex<HashMap<String, ChannelPresence>>,
}

impl MemoryPresence {
    /// A new, empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let mut map = lock(&self.channels);
        let ch = map.entry(channel.to_owned()).or_default();
        if !ch.clients.contains_key(&client.client_id) {
            *ch.users.entry(client.user_id.clone()).or_default() += 1;
            ch.clients.insert(client.client_id.clone(), client);
        }
        Ok(())
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), BrokerError> {
        let mut map = lock(&self.channels);
        let Some(ch) = map.get_mut(channel) else {
            return Ok(());
        };
        if let Some(info) = ch.clients.remove(client_id)
            && let Some(n) = ch.users.get_mut(&info.user_id)
        {
            *n -= 1;
            if *n == 0 {
                ch.users.remove(&info.user_id);
            }
        }
        if ch.clients.is_empty() {
            map.remove(channel);
        }
        Ok(())
    }

    async fn list(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let map = lock(&self.channels);
        Ok(map
            .get(channel)
            .map(|c| c.clients.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        let map = lock(&self.channels);
        Ok(map
            .get(channel)
            .map(|c| PresenceStats {
                clients: c.clients.len() as u64,
                users: c.users.len() as u64,
            })
            .unwrap_or(PresenceStats {
                clients: 0,
                users: 0,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::{Data, StreamPosition};

    fn req(n: i32, key: Option<&str>) -> PublishRequest {
        PublishRequest {
            data: Data::json(&n.to_string()).expect("json"),
            info: None,
            idempotency_key: key.map(str::to_owned),
            history_size: 3,
            history_ttl: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(60),
        }
    }

    /// Regression (issue 12): `history` on 20 000 fresh channel names kept 15 MB for 5 minutes.
    #[tokio::test]
    async fn reads_do_not_create_streams_and_the_epoch_they_saw_holds() {
        let b = MemoryBroker::new();
        let q = || HistoryQuery {
            since: None,
            limit: 10,
            reverse: false,
        };
        let seen = b.history("fresh", q()).await.expect("read");
        assert_eq!((seen.top, seen.publications.len()), (0, 0));
        for i in 0..20_000 {
            b.history(&format!("x{i}"), q()).await.expect("read");
        }
        assert_eq!(b.stream_count(), 0);
        assert_eq!(b.unpublished_count(), MAX_UNPUBLISHED);
        // Evicted: a later stream simply gets a new epoch.
        let out = b.publish("fresh", req(1, None)).await.expect("publish");
        assert_ne!(out.epoch, seen.epoch);
        // Not evicted: the stream adopts the epoch the reader saw, so its position stays valid.
        let seen = b.history("late", q()).await.expect("read");
        let since = StreamPosition {
            offset: 0,
            epoch: seen.epoch.to_string(),
        };
        let out = b.publish("late", req(1, None)).await.expect("publish");
        assert_eq!(out.epoch, seen.epoch);
        let page = b
            .history(
                "late",
                HistoryQuery {
                    since: Some(since),
                    ..q()
                },
            )
            .await
            .expect("recover from the position the read gave");
        assert_eq!(page.publications.len(), 1);
        assert_eq!(b.unpublished_count(), MAX_UNPUBLISHED - 1);
    }

    #[tokio::test]
    async fn offsets_history_trim_and_idempotency() {
        let b = MemoryBroker::new();
        for i in 1..=5 {
            let o = b.publish("c", req(i, None)).await.expect("publish");
            assert_eq!(o.offset, i as u64);
        }
        let page = b
            .history(
                "c",
                HistoryQuery {
                    since: None,
                    limit: 10,
                    reverse: false,
                },
            )
            .await
            .expect("history");
        let offs: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(offs, vec![3, 4, 5]);
        assert_eq!((page.top, page.first_kept), (5, 3));
        let since = StreamPosition {
            offset: 3,
            epoch: page.epoch.to_string(),
        };
        let page2 = b
            .history(
                "c",
                HistoryQuery {
                    since: Some(since.clone()),
                    limit: 10,
                    reverse: false,
                },
            )
            .await
            .expect("history");
        assert_eq!(
            page2
                .publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
        let rev = b
            .history(
                "c",
                HistoryQuery {
                    since: None,
                    limit: 2,
                    reverse: true,
                },
            )
            .await
            .expect("history");
        assert_eq!(
            rev.publications
                .iter()
                .map(|p| p.offset)
                .collect::<Vec<_>>(),
            vec![5, 4]
        );
        let bad = StreamPosition {
            offset: 3,
            epoch: "other".into(),
        };
        assert!(matches!(
            b.history(
                "c",
                HistoryQuery {
                    since: Some(bad),
                    limit: 1,
                    reverse: false
                }
            )
            .await,
            Err(BrokerError::EpochMismatch)
        ));
        let a = b.publish("c", req(9, Some("k"))).await.expect("publish");
        let d = b.publish("c", req(9, Some("k"))).await.expect("publish");
        assert_eq!(
            (a.offset, a.duplicate, d.offset, d.duplicate),
            (6, false, 6, true)
        );
    }

    #[tokio::test]
    async fn presence_stats_count_users() {
        let p = MemoryPresence::new();
        let ci = |c: &str, u: &str| ClientInfo {
            client_id: c.into(),
            user_id: u.into(),
            info: None,
            chan_info: None,
        };
        p.add("ch", ci("1", "alice")).await.expect("add");
        p.add("ch", ci("2", "alice")).await.expect("add");
        p.add("ch", ci("3", "bob")).await.expect("add");
        p.add("ch", ci("3", "bob")).await.expect("add");
        assert_eq!(
            p.stats("ch").await.expect("stats"),
            PresenceStats {
                clients: 3,
                users: 2
            }
        );
        p.remove("ch", "1").await.expect("rm");
        p.remove("ch", "3").await.expect("rm");
        assert_eq!(
            p.stats("ch").await.expect("stats"),
            PresenceStats {
                clients: 1,
                users: 1
            }
        );
        assert_eq!(p.list("ch").await.expect("list").len(), 1);
    }
}

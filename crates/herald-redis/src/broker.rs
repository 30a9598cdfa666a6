//! [`RedisBroker`]: publications fan out through Redis Pub/Sub; offsets, history and idempotency
//! keys live in Redis and change in one Lua step per channel, so every node sees the same order.
//!
//! Each node subscribes to a channel's topic only while it has local subscribers, over a few
//! Pub/Sub connections (sharded by channel hash). A shard remembers the last offset it delivered
//! per channel: a publication that skips offsets (a message lost while a connection was down) is
//! preceded by the missing ones, read from history, and after a reconnect every channel is caught
//! up the same way, so local subscribers never see a hole that history could fill.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{
    Broker, BrokerError, BrokerHandler, ChannelEvent, HistoryPage, HistoryQuery, PublishOutcome,
    PublishRequest,
};
use herald_core::cluster::{ControlEnvelope, ControlHandler};
use herald_core::cursor::{ChannelCursor, PageReader};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::config::RedisConfig;
use crate::wire;

/// How long a stream's offset counter and epoch outlive its last publish (at least).
const META_KEEP: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

fn new_epoch() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Key and topic names.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) prefix: String,
}

impl Names {
    /// A key of a channel; the `{channel}` hash tag keeps a channel's keys in one cluster slot.
    pub(crate) fn key(&self, channel: &str, what: &str) -> String {
        format!("{}:{{{channel}}}:{what}", self.prefix)
    }
    fn topic(&self, channel: &str) -> String {
        format!("{}:ch:{channel}", self.prefix)
    }
    fn channel_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":ch:")
    }
    pub(crate) fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

/// Health of the connections, for `/readyz`.
#[derive(Default)]
struct Health {
    shards_up: AtomicUsize,
    commands_ok: AtomicBool,
}

enum ShardCmd {
    Subscribe(String, oneshot::Sender<Result<(), BrokerError>>),
    Unsubscribe(String),
}

type Handler = Arc<OnceLock<Arc<dyn BrokerHandler>>>;
pub(crate) type Control = Arc<OnceLock<Arc<dyn ControlHandler>>>;

/// The Redis broker. Cheap to share (`Arc`).
pub struct RedisBroker {
    cfg: RedisConfig,
    pub(crate) names: Names,
    pub(crate) conn: ConnectionManager,
    publish: redis::Script,
    history: Arc<redis::Script>,
    shards: Vec<mpsc::Sender<ShardCmd>>,
    handler: Handler,
    pub(crate) control: Control,
    health: Arc<Health>,
    pub(crate) conns: Arc<Connections>,
}

/// This node's connections counted against cluster-wide per-user limits, re-leased every quarter
/// of `presence_lease`: (user, connection id) → max.
pub(crate) struct Connections {
    pub(crate) live: std::sync::Mutex<HashMap<(String, String), usize>>,
    script: redis::Script,
    lease_ms: u64,
    names: Names,
    conn: ConnectionManager,
}

impl Connections {
    pub(crate) async fn acquire(
        &self,
        user: &str,
        id: &str,
        max: usize,
    ) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let ok: i64 = self
            .script
            .key(format!("{}:user:{{{user}}}:conns", self.names.prefix))
            .arg(id)
            .arg(max)
            .arg(self.lease_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(ok == 1)
    }
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renew the leases of this node's connections while the broker lives.
async fn renew_connections(c: std::sync::Weak<Connections>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(c) = c.upgrade() else { return };
        let live: Vec<_> = lock(&c.live)
            .iter()
            .map(|((u, i), m)| (u.clone(), i.clone(), *m))
            .collect();
        for (user, id, max) in live {
            // `max` only matters for new connections: a known one is always renewed.
            if let Err(e) = c.acquire(&user, &id, max).await {
                tracing::warn!(error = %e, "connection lease renewal failed");
                break;
            }
        }
    }
}

impl RedisBroker {
    /// Connect (fails when Redis cannot be reached now) and start the Pub/Sub shards.
    pub async fn connect(cfg: RedisConfig) -> Result<RedisBroker, BrokerError> {
        cfg.validate()?;
        let client = redis::Client::open(cfg.url.as_str()).map_err(unavailable)?;
        let conn = connection_manager(&client, &cfg).await?;
        let names = Names {
            prefix: cfg.prefix.clone(),
        };
        let handler: Handler = Arc::new(OnceLock::new());
        let control: Control = Arc::new(OnceLock::new());
        let health = Arc::new(Health::default());
        health.commands_ok.store(true, Ordering::Relaxed);
        let history = Arc::new(crate::scripts::history());
        let mut shards = Vec::new();
        for index in 0..cfg.pubsub_connections {
            let (tx, rx) = mpsc::channel(1024);
            let shard = Shard {
                index,
                client: client.clone(),
                conn: conn.clone(),
                names: names.clone(),
                history: history.clone(),
                handler: handler.clone(),
                control: control.clone(),
                health: health.clone(),
                timeout: cfg.timeout,
                channels: HashMap::new(),
            };
            // Corked: a delivery to idle local subscribers is written at the end of the
            // shard's poll, by this task, without waking theirs.
            tokio::spawn(herald_core::outlet::Corked::new(shard.run(rx)));
            shards.push(tx);
        }
        tokio::spawn(watch_commands(
            conn.clone(),
            Arc::downgrade(&health),
            cfg.timeout,
        ));
        let conns = Arc::new(Connections {
            live: std::sync::Mutex::new(HashMap::new()),
            script: crate::scripts::acquire_connection(),
            lease_ms: cfg.presence_lease.as_millis() as u64,
            names: names.clone(),
            conn: conn.clone(),
        });
        tokio::spawn(renew_connections(
            Arc::downgrade(&conns),
            cfg.presence_lease / 4,
        ));
        Ok(RedisBroker {
            cfg,
            names,
            conn,
            publish: crate::scripts::publish(),
            history,
            shards,
            handler,
            control,
            health,
            conns,
        })
    }

    /// Whether every Pub/Sub connection is up and commands succeed.
    pub fn is_ready(&self) -> bool {
        self.health.shards_up.load(Ordering::Relaxed) == self.shards.len()
            && self.health.commands_ok.load(Ordering::Relaxed)
    }

    /// Send a control message to every node (this one included).
    pub(crate) async fn broadcast_control(&self, payload: &[u8]) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let r: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(self.names.control())
            .arg(payload)
            .query_async(&mut conn)
            .await;
        self.checked(r).map(|_| ())
    }

    /// A connection for other Redis-backed parts (presence, registry).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    fn shard(&self, channel: &str) -> &mpsc::Sender<ShardCmd> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        channel.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    pub(crate) fn checked<T>(&self, r: redis::RedisResult<T>) -> Result<T, BrokerError> {
        self.health.commands_ok.store(r.is_ok(), Ordering::Relaxed);
        r.map_err(unavailable)
    }
}

pub(crate) async fn connection_manager(
    client: &redis::Client,
    cfg: &RedisConfig,
) -> Result<ConnectionManager, BrokerError> {
    let mcfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(cfg.timeout))
        .set_connection_timeout(Some(cfg.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    client
        .get_connection_manager_with_config(mcfg)
        .await
        .map_err(unavailable)
}

/// PING every second while the broker lives, so `/readyz` notices an outage without traffic.
async fn watch_commands(
    mut conn: ConnectionManager,
    health: std::sync::Weak<Health>,
    timeout: Duration,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(h) = health.upgrade() else { return };
        let ok = tokio::time::timeout(timeout, redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok_and(|r| r.is_ok());
        if ok != h.commands_ok.swap(ok, Ordering::Relaxed) {
            if ok {
                tracing::info!("redis commands work again");
            } else {
                tracing::warn!("redis commands fail");
            }
        }
    }
}

/// One history read through the script.
pub(crate) async fn read_history(
    script: &redis::Script,
    conn: &mut ConnectionManager,
    names: &Names,
    channel: &str,
    q: &HistoryQuery,
) -> Result<HistoryPage, BrokerError> {
    let (since_offset, since_epoch) = match &q.since {
        Some(p) => (p.offset.to_string(), p.epoch.clone()),
        None => (String::new(), String::new()),
    };
    let (epoch, top, first_kept, entries, mismatch): (String, u64, u64, Vec<Vec<u8>>, u8) = script
        .key(names.key(channel, "meta"))
        .key(names.key(channel, "hist"))
        .arg(new_epoch())
        .arg(since_offset)
        .arg(since_epoch)
        .arg(q.limit)
        .arg(if q.reverse { "1" } else { "0" })
        .arg(META_KEEP.as_millis() as u64)
        .invoke_async(conn)
        .await
        .map_err(unavailable)?;
    if mismatch == 1 {
        return Err(BrokerError::EpochMismatch);
    }
    let (ch, ep): (Arc<str>, Arc<str>) = (Arc::from(channel), Arc::from(epoch.as_str()));
    let mut publications = Vec::with_capacity(entries.len());
    for e in &entries {
        match wire::entry(&ch, &ep, e) {
            Ok(p) => publications.push(Arc::new(p)),
            Err(err) => tracing::warn!(channel, error = %err, "skipping a history entry"),
        }
    }
    Ok(HistoryPage {
        publications,
        top,
        epoch: ep,
        first_kept,
    })
}

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        req: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        let body = wire::body(&req.data, req.info.as_ref());
        let idem = req
            .idempotency_key
            .as_ref()
            .map(|k| self.names.key(channel, &format!("idem:{k}")))
            .unwrap_or_default();
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<(u64, String, u8)> = self
            .publish
            .key(self.names.key(channel, "meta"))
            .key(self.names.key(channel, "hist"))
            .key(idem)
            .arg(body)
            .arg(req.history_size)
            .arg(req.history_ttl.as_millis() as u64)
            .arg(req.idempotency_window.as_millis().max(1) as u64)
            .arg(self.names.topic(channel))
            .arg(new_epoch())
            .arg(META_KEEP.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        let (offset, epoch, duplicate) = self.checked(r)?;
        Ok(PublishOutcome {
            offset,
            epoch: Arc::from(epoch.as_str()),
            duplicate: duplicate == 1,
        })
    }

    async fn publish_event(&self, channel: &str, event: ChannelEvent) -> Result<(), BrokerError> {
        let mut payload = vec![b'e'];
        payload.extend(event.to_json());
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(self.names.topic(channel))
            .arg(payload)
            .query_async(&mut conn)
            .await;
        self.checked(r).map(|_| ())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        self.shard(channel)
            .send(ShardCmd::Subscribe(channel.to_owned(), tx))
            .await
            .map_err(|_| unavailable("pub/sub shard stopped"))?;
        match tokio::time::timeout(self.cfg.timeout * 2, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(unavailable("pub/sub shard stopped")),
            Err(_) => Err(unavailable("pub/sub subscribe timed out")),
        }
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.shard(channel)
            .send(ShardCmd::Unsubscribe(channel.to_owned()))
            .await
            .map_err(|_| unavailable("pub/sub shard stopped"))
    }

    async fn history(&self, channel: &str, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        let mut conn = self.conn.clone();
        let r = read_history(&self.history, &mut conn, &self.names, channel, &q).await;
        if let Err(BrokerError::Unavailable(_)) = &r {
            self.health.commands_ok.store(false, Ordering::Relaxed);
        }
        r
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<i64> = redis::cmd("DEL")
            .arg(self.names.key(channel, "hist"))
            .query_async(&mut conn)
            .await;
        self.checked(r).map(|_| ())
    }

    fn ready(&self) -> bool {
        self.is_ready()
    }
}

/// One channel's history on Redis, read by the gap-filling cursor.
struct ShardHistory<'a> {
    script: &'a redis::Script,
    conn: ConnectionManager,
    names: &'a Names,
    channel: &'a str,
}

impl PageReader for ShardHistory<'_> {
    async fn read(&mut self, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        read_history(self.script, &mut self.conn, self.names, self.channel, &q).await
    }
}

/// One Pub/Sub connection and the channels it carries.
struct Shard {
    index: usize,
    client: redis::Client,
    conn: ConnectionManager,
    names: Names,
    history: Arc<redis::Script>,
    handler: Handler,
    control: Control,
    health: Arc<Health>,
    timeout: Duration,
    /// Subscribed channels → what was last delivered to this node.
    channels: HashMap<String, ChannelCursor>,
}

impl Shard {
    async fn run(mut self, mut rx: mpsc::Receiver<ShardCmd>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let pubsub = tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await;
            let mut pubsub = match pubsub {
                Ok(Ok(p)) => p,
                other => {
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".into(),
                    };
                    tracing::warn!(shard = self.index, error = %why, "redis pub/sub unavailable; retrying");
                    // Refuse subscribes while down, keep waiting for Redis.
                    let sleep = tokio::time::sleep(delay);
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            _ = &mut sleep => break,
                            cmd = rx.recv() => match cmd {
                                None => return,
                                Some(ShardCmd::Subscribe(_, ack)) => {
                                    let _ = ack.send(Err(unavailable("pub/sub connection is down")));
                                }
                                Some(ShardCmd::Unsubscribe(ch)) => {
                                    self.channels.remove(&ch);
                                }
                            },
                        }
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut topics: Vec<String> =
                self.channels.keys().map(|c| self.names.topic(c)).collect();
            if self.index == 0 {
                topics.push(self.names.control());
            }
            if !topics.is_empty()
                && let Err(e) = pubsub.subscribe(&topics).await
            {
                tracing::warn!(shard = self.index, error = %e, "redis resubscribe failed");
                continue;
            }
            let (mut sink, mut stream) = pubsub.split();
            delay = Duration::from_millis(100);
            self.health.shards_up.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                shard = self.index,
                channels = self.channels.len(),
                "redis pub/sub connected"
            );
            // Publications missed while the connection was down come from history.
            let channels: Vec<String> = self.channels.keys().cloned().collect();
            for ch in channels {
                self.catch_up(&ch).await;
            }
            loop {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        None => {
                            self.health.shards_up.fetch_sub(1, Ordering::Relaxed);
                            return;
                        }
                        Some(ShardCmd::Subscribe(ch, ack)) => {
                            let r = sink.subscribe(self.names.topic(&ch)).await.map_err(unavailable);
                            let r = match r {
                                Ok(()) => self.position(&ch).await.map(|(epoch, top)| {
                                    self.channels.insert(ch, ChannelCursor::new(epoch, top));
                                }),
                                Err(e) => Err(e),
                            };
                            let _ = ack.send(r);
                        }
                        Some(ShardCmd::Unsubscribe(ch)) => {
                            self.channels.remove(&ch);
                            if let Err(e) = sink.unsubscribe(self.names.topic(&ch)).await {
                                tracing::debug!(channel = %ch, error = %e, "redis unsubscribe failed");
                            }
                        }
                    },
                    msg = stream.next() => match msg {
                        Some(m) => self.on_message(m.get_channel_name(), m.get_payload_bytes()).await,
                        None => break,
                    },
                }
            }
            self.health.shards_up.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                shard = self.index,
                "redis pub/sub connection lost; reconnecting"
            );
        }
    }

    /// The stream's current position (taken right after subscribing: later publications arrive
    /// on the topic).
    async fn position(&self, channel: &str) -> Result<(Arc<str>, u64), BrokerError> {
        let mut conn = self.conn.clone();
        let q = HistoryQuery {
            since: None,
            limit: 0,
            reverse: false,
        };
        let page = read_history(&self.history, &mut conn, &self.names, channel, &q).await?;
        Ok((page.epoch, page.top))
    }

    /// This channel's history, for the cursor.
    fn history<'a>(&'a self, channel: &'a str) -> ShardHistory<'a> {
        ShardHistory {
            script: &self.history,
            conn: self.conn.clone(),
            names: &self.names,
            channel,
        }
    }

    /// Deliver what history holds after the last delivered offset (after the Pub/Sub
    /// connection was down).
    async fn catch_up(&mut self, channel: &str) {
        let Some(mut cursor) = self.channels.get(channel).cloned() else {
            return;
        };
        let handler = self.handler.get().cloned();
        let mut deliver = |p| {
            if let Some(h) = &handler {
                h.on_publication(p);
            }
        };
        cursor
            .catch_up(&mut self.history(channel), &mut deliver)
            .await;
        self.channels.insert(channel.to_owned(), cursor);
    }

    async fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if self.index == 0 && topic == self.names.control() {
            match (
                self.control.get(),
                serde_json::from_slice::<ControlEnvelope>(payload),
            ) {
                (Some(c), Ok(env)) => c.on_control(env),
                (_, Err(e)) => tracing::warn!(error = %e, "ignoring a malformed control message"),
                (None, Ok(_)) => {}
            }
            return;
        }
        let Some(channel) = self.names.channel_of(topic).map(str::to_owned) else {
            return;
        };
        let Some(mut cursor) = self.channels.get(&channel).cloned() else {
            return; // unsubscribed meanwhile
        };
        match wire::message(payload) {
            Ok(wire::Message::Publication { epoch, entry }) => {
                let ch: Arc<str> = Arc::from(channel.as_str());
                let ep: Arc<str> = match cursor.position().0 {
                    e if &**e == epoch => e.clone(),
                    _ => Arc::from(epoch),
                };
                let p = match wire::entry(&ch, &ep, entry) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "dropping a malformed publication");
                        return;
                    }
                };
                let handler = self.handler.get().cloned();
                let mut deliver = |p| {
                    if let Some(h) = &handler {
                        h.on_publication(p);
                    }
                };
                cursor
                    .live(Arc::new(p), &mut self.history(&channel), &mut deliver)
                    .await;
                self.channels.insert(channel, cursor);
            }
            Ok(wire::Message::Event(json)) => {
                if let (Some(ev), Some(h)) = (ChannelEvent::from_json(json), self.handler.get()) {
                    h.on_event(&channel, ev);
                }
            }
            Err(e) => tracing::warn!(channel, error = %e, "dropping a malformed pub/sub message"),
        }
    }
}

//! [`NatsBroker`]: with JetStream, one stream keeps every channel (`PREFIX.in.CHANNEL`). A publish
//! carries its channel offset in a header and is accepted only if the channel's last stored
//! message is still the one the offset was computed from (`Nats-Expected-Last-Subject-Sequence`;
//! on a race the publisher reads again and retries), so offsets are contiguous and ordered per
//! channel across nodes. The stream republishes what it stored to `PREFIX.out.CHANNEL`, which
//! nodes subscribe to while they have local subscribers: nothing reaches a subscriber before it is
//! in history. Core NATS is at-most-once, so each node tracks the last offset it delivered per
//! channel and fills any skipped offset from the stream before delivering the next one.
//!
//! Without JetStream, publications go straight to `PREFIX.out.CHANNEL` with this node's epoch
//! and counter (history-less namespaces only).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use herald_core::broker::{
    Broker, BrokerError, BrokerHandler, ChannelEvent, HistoryPage, HistoryQuery, PublishOutcome,
    PublishRequest,
};
use herald_core::cursor::{ChannelCursor, PageReader};
use herald_core::publication::{Publication, body_bytes, now_ms, parse_body};

use crate::config::{NatsConfig, Storage};
pub(crate) use crate::plumbing::{lock, sync, unavailable};
use crate::subject::token;

const H_OFFSET: &str = "Herald-Offset";
const H_TIME: &str = "Herald-Time";
const H_KEEP: &str = "Herald-Keep";
const H_TTL: &str = "Herald-Ttl";
/// On the message `remove_history` leaves: it carries the offset counter, not a publication.
const H_MARKER: &str = "Herald-Marker";
/// Publish attempts when other nodes keep winning the race for a channel's next offset.
const PUBLISH_ATTEMPTS: usize = 64;

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.as_str().parse().ok()
}

/// A stored publication as read from the stream.
struct Stored {
    seq: u64,
    offset: u64,
    time: u64,
    keep: u64,
    ttl: u64,
    marker: bool,
    payload: bytes::Bytes,
}

impl Stored {
    fn from(m: &jetstream::message::StreamMessage) -> Option<Stored> {
        Stored::parse(m.sequence, &m.headers, &m.payload)
    }

    fn parse(seq: u64, headers: &HeaderMap, payload: &bytes::Bytes) -> Option<Stored> {
        Some(Stored {
            seq,
            offset: header_u64(headers, H_OFFSET)?,
            time: header_u64(headers, H_TIME).unwrap_or(0),
            keep: header_u64(headers, H_KEEP).unwrap_or(0),
            ttl: header_u64(headers, H_TTL).unwrap_or(0),
            marker: headers.get(H_MARKER).is_some(),
            payload: payload.clone(),
        })
    }

    fn publication(&self, channel: &Arc<str>, epoch: &Arc<str>) -> Option<Publication> {
        let (data, info) = parse_body(&self.payload).ok()?;
        Some(Publication::new(
            channel.clone(),
            self.offset,
            epoch.clone(),
            self.time,
            data,
            info,
        ))
    }
}

/// Shared by the broker and its per-channel delivery tasks.
pub(crate) struct Shared {
    pub(crate) cfg: NatsConfig,
    pub(crate) client: async_nats::Client,
    js: Option<(jetstream::Context, stream::Stream)>,
    pub(crate) epoch: Arc<str>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Counts reconnects of the NATS client: what core NATS sent meanwhile is lost, so every
    /// channel task catches up from the stream.
    reconnects: tokio::sync::watch::Sender<u64>,
}

/// The NATS broker.
pub struct NatsBroker {
    pub(crate) shared: Arc<Shared>,
    /// Channel → its delivery task.
    subs: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Channel → (stream sequence, offset) of the last publish seen by this node (a guess: a
    /// stale one costs one retry).
    last: Mutex<HashMap<String, (u64, u64)>>,
    /// Offsets of this node's publications without JetStream.
    counter: AtomicU64,
    pub(crate) cluster: crate::control::Cluster,
}

impl NatsBroker {
    /// Connect, create or update the stream (JetStream), and start the cluster subscriptions.
    pub async fn connect(cfg: NatsConfig) -> Result<NatsBroker, BrokerError> {
        cfg.validate()?;
        let reconnects = tokio::sync::watch::Sender::new(0u64);
        let on_event = reconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    on_event.send_modify(|n| *n += 1);
                }
                std::future::ready(())
            })
            .connection_timeout(cfg.timeout)
            .request_timeout(Some(cfg.timeout))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(cfg.url.as_str());
        let client = tokio::time::timeout(cfg.timeout * 2, client)
            .await
            .map_err(|_| unavailable(format!("cannot reach {}", cfg.url)))?
            .map_err(unavailable)?;
        client.flush().await.map_err(unavailable)?;
        let (js, epoch) = if cfg.jetstream {
            // Acks and API requests fail (retryably) after `nats.timeout`, never hang.
            let ctx = jetstream::ContextBuilder::new()
                .timeout(cfg.timeout)
                .build(client.clone());
            let config = stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![format!("{}.in.>", cfg.prefix)],
                max_messages_per_subject: cfg.max_history as i64,
                storage: match cfg.storage {
                    Storage::File => stream::StorageType::File,
                    Storage::Memory => stream::StorageType::Memory,
                },
                num_replicas: cfg.replicas,
                duplicate_window: cfg.duplicate_window,
                republish: Some(stream::Republish {
                    source: format!("{}.in.>", cfg.prefix),
                    destination: format!("{}.out.>", cfg.prefix),
                    headers_only: false,
                }),
                ..Default::default()
            };
            let mut s = ctx
                .get_or_create_stream(config)
                .await
                .map_err(|e| unavailable(format!("stream {}: {e}", cfg.stream)))?;
            let created = s.info().await.map_err(unavailable)?.created;
            let nanos = created.unix_timestamp_nanos() as u64;
            // A stream created again (deleted, purged with the server) is a new epoch.
            let epoch = format!("{:08x}", (nanos ^ (nanos >> 32)) as u32);
            (Some((ctx, s)), epoch)
        } else {
            (None, format!("{:08x}", rand::random::<u32>()))
        };
        let shared = Arc::new(Shared {
            cfg,
            client,
            js,
            epoch: Arc::from(epoch.as_str()),
            handler: OnceLock::new(),
            reconnects,
        });
        let cluster = crate::control::Cluster::start(&shared.cfg, shared.client.clone()).await?;
        Ok(NatsBroker {
            shared,
            subs: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            cluster,
        })
    }

    /// Whether JetStream is in use (history and recovery available).
    pub fn has_history(&self) -> bool {
        self.shared.js.is_some()
    }

    /// The settings.
    pub fn config(&self) -> &NatsConfig {
        &self.shared.cfg
    }

    fn subject(&self, kind: &str, channel: &str) -> String {
        format!("{}.{kind}.{}", self.shared.cfg.prefix, token(channel))
    }

    async fn publish_core(
        &self,
        channel: &str,
        req: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        let offset = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let mut h = HeaderMap::new();
        h.insert(H_OFFSET, offset.to_string().as_str());
        h.insert(H_TIME, now_ms().to_string().as_str());
        h.insert("Herald-Epoch", &*self.shared.epoch);
        let body = body_bytes(&req.data, req.info.as_ref());
        self.shared
            .client
            .publish_with_headers(self.subject("out", channel), h, body.into())
            .await
            .map_err(unavailable)?;
        Ok(PublishOutcome {
            offset,
            epoch: self.shared.epoch.clone(),
            duplicate: false,
        })
    }
}

impl Shared {
    fn stream(&self) -> Result<&stream::Stream, BrokerError> {
        self.js
            .as_ref()
            .map(|(_, s)| s)
            .ok_or_else(|| unavailable("history needs JetStream (nats.jetstream = true)"))
    }

    /// The last stored message of a channel subject, if any.
    async fn last(&self, subject: &str) -> Result<Option<Stored>, BrokerError> {
        match self
            .stream()?
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(m) => Ok(Stored::from(&m)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The stored messages of a channel subject up to stream sequence `upto` that pass `keep`,
    /// oldest first, read with one ordered consumer (a request per batch, not per message) until
    /// `enough` says the caller has what it needs.
    async fn read_kept(
        &self,
        subject: &str,
        upto: u64,
        keep: impl Fn(&Stored) -> bool,
        enough: impl Fn(&[Stored]) -> bool,
    ) -> Result<Vec<Stored>, BrokerError> {
        use jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let consumer = self
            .stream()?
            .create_consumer(OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(self.cfg.timeout, messages.next())
                .await
                .map_err(|_| unavailable("history read timed out"))?;
            let Some(m) = next else { break };
            let m = m.map_err(unavailable)?;
            let info = m.info().map_err(unavailable)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if let Some(s) = m
                .message
                .headers
                .as_ref()
                .and_then(|h| Stored::parse(seq, h, &m.message.payload))
                .filter(|s| !s.marker && keep(s))
                && seq <= upto
            {
                out.push(s);
                if enough(&out) {
                    break;
                }
            }
            if seq >= upto || pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// History of a channel, kept per the newest message's `keep`/`ttl`.
    pub(crate) async fn history(
        &self,
        channel: &str,
        q: &HistoryQuery,
    ) -> Result<HistoryPage, BrokerError> {
        if let Some(since) = &q.since
            && *since.epoch != *self.epoch
        {
            return Err(BrokerError::EpochMismatch);
        }
        if self.js.is_none() {
            return Ok(HistoryPage {
                publications: Vec::new(),
                top: 0,
                epoch: self.epoch.clone(),
                first_kept: 1,
            });
        }
        let subject = format!("{}.in.{}", self.cfg.prefix, token(channel));
        let Some(last) = self.last(&subject).await? else {
            return Ok(HistoryPage {
                publications: Vec::new(),
                top: 0,
                epoch: self.epoch.clone(),
                first_kept: 1,
            });
        };
        let top = last.offset;
        let cutoff = now_ms().saturating_sub(last.ttl);
        let oldest = top.saturating_sub(last.keep);
        let wants = q.limit > 0 || last.keep > 0;
        let kept: Vec<Stored> = if wants && last.keep > 0 && last.ttl > 0 {
            // A forward page stops at its `limit`th publication after `since`, a position query
            // at the first kept one (it names `first_kept`); only a reverse page reads to the top.
            let after = q.since.as_ref().map_or(0, |p| p.offset);
            let enough = |out: &[Stored]| match (q.limit, q.reverse) {
                (0, _) => true,
                (_, true) => false,
                (n, false) => out.len() >= n && out[out.len() - n].offset > after,
            };
            let keep = |s: &Stored| s.offset > oldest && s.time >= cutoff;
            self.read_kept(&subject, last.seq, keep, enough).await?
        } else {
            Vec::new()
        };
        let first_kept = kept.first().map(|s| s.offset).unwrap_or(top + 1);
        let (ch, ep) = (Arc::<str>::from(channel), self.epoch.clone());
        let mut pubs: Vec<Arc<Publication>> = Vec::new();
        if q.limit > 0 {
            let since = q.since.as_ref().map(|p| p.offset);
            let chosen: Vec<&Stored> = if q.reverse {
                let before = since.unwrap_or(u64::MAX);
                kept.iter()
                    .rev()
                    .filter(|s| s.offset < before)
                    .take(q.limit)
                    .collect()
            } else {
                let after = since.unwrap_or(0);
                kept.iter()
                    .filter(|s| s.offset > after)
                    .take(q.limit)
                    .collect()
            };
            pubs = chosen
                .into_iter()
                .filter_map(|s| s.publication(&ch, &ep).map(Arc::new))
                .collect();
        }
        Ok(HistoryPage {
            publications: pubs,
            top,
            epoch: ep,
            first_kept,
        })
    }

    fn deliver(&self, p: Arc<Publication>) {
        if let Some(h) = self.handler.get() {
            h.on_publication(p);
        }
    }
}

/// One channel's history in the JetStream stream, read by the gap-filling cursor.
struct StreamHistory<'a> {
    shared: &'a Shared,
    channel: &'a str,
}

impl PageReader for StreamHistory<'_> {
    async fn read(&mut self, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.shared.history(self.channel, &q).await
    }
}

/// Deliver one channel's publications and events to this node, filling skipped offsets.
async fn deliver_channel(
    shared: Arc<Shared>,
    channel: String,
    mut out: async_nats::Subscriber,
    mut events: async_nats::Subscriber,
    last: u64,
) {
    let ch: Arc<str> = Arc::from(channel.as_str());
    let mut cursor = ChannelCursor::new(shared.epoch.clone(), last);
    let mut reconnected = shared.reconnects.subscribe();
    loop {
        tokio::select! {
            Ok(()) = reconnected.changed(), if shared.js.is_some() => {
                // Once the server has our subscriptions again, read what the outage swallowed
                // (live messages racing it are dropped by the cursor as already delivered).
                if let Err(e) = sync(&shared.client, &shared.cfg.prefix).await {
                    tracing::debug!(error = %e, "no round trip after a reconnect");
                }
                let mut history = StreamHistory { shared: &shared, channel: &channel };
                cursor.catch_up(&mut history, &mut |p| shared.deliver(p)).await;
            }
            m = out.next() => {
                let Some(m) = m else { return };
                let Some(h) = &m.headers else { continue };
                let Some(offset) = header_u64(h, H_OFFSET) else { continue };
                if h.get(H_MARKER).is_some() {
                    cursor.advance(offset);
                    continue;
                }
                let time = header_u64(h, H_TIME).unwrap_or(0);
                let epoch: Arc<str> = match h.get("Herald-Epoch") {
                    Some(e) => Arc::from(e.as_str()),
                    None => shared.epoch.clone(),
                };
                let Ok((data, info)) = parse_body(&m.payload) else { continue };
                let p = Arc::new(Publication::new(ch.clone(), offset, epoch, time, data, info));
                if shared.js.is_some() {
                    // Missed on core NATS: the cursor reads them from the stream first.
                    let mut history = StreamHistory { shared: &shared, channel: &channel };
                    cursor.live(p, &mut history, &mut |p| shared.deliver(p)).await;
                } else {
                    shared.deliver(p);
                }
            }
            e = events.next() => {
                let Some(e) = e else { return };
                if let (Some(ev), Some(h)) = (ChannelEvent::from_json(&e.payload), shared.handler.get()) {
                    h.on_event(&channel, ev);
                }
            }
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.shared.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        req: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        let Some((ctx, stream)) = &self.shared.js else {
            return self.publish_core(channel, req).await;
        };
        let subject = self.subject("in", channel);
        let body: bytes::Bytes = body_bytes(&req.data, req.info.as_ref()).into();
        let msg_id = req
            .idempotency_key
            .as_ref()
            .map(|k| format!("{channel}\u{1f}{k}"));
        for _ in 0..PUBLISH_ATTEMPTS {
            let guess = lock(&self.last).get(channel).copied();
            let (seq, offset) = match guess {
                Some(g) => g,
                None => match self.shared.last(&subject).await? {
                    Some(s) => (s.seq, s.offset),
                    None => (0, 0),
                },
            };
            let mut p = jetstream::message::PublishMessage::build()
                .payload(body.clone())
                .header(H_OFFSET, (offset + 1).to_string().as_str())
                .header(H_TIME, now_ms().to_string().as_str())
                .header(H_KEEP, req.history_size.to_string().as_str())
                .header(
                    H_TTL,
                    (req.history_ttl.as_millis() as u64).to_string().as_str(),
                )
                .expected_last_subject_sequence(seq);
            if let Some(id) = &msg_id {
                p = p.message_id(id);
            }
            let ack = match ctx.send_publish(subject.clone(), p).await {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            match ack {
                Ok(ack) if ack.duplicate => {
                    let m = stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(unavailable)?;
                    let original = Stored::from(&m).map(|s| s.offset).unwrap_or(0);
                    return Ok(PublishOutcome {
                        offset: original,
                        epoch: self.shared.epoch.clone(),
                        duplicate: true,
                    });
                }
                Ok(ack) => {
                    lock(&self.last).insert(channel.to_owned(), (ack.sequence, offset + 1));
                    return Ok(PublishOutcome {
                        offset: offset + 1,
                        epoch: self.shared.epoch.clone(),
                        duplicate: false,
                    });
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    lock(&self.last).remove(channel);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(unavailable(format!(
            "too much contention publishing to {channel}"
        )))
    }

    async fn publish_event(&self, channel: &str, event: ChannelEvent) -> Result<(), BrokerError> {
        self.shared
            .client
            .publish(self.subject("ev", channel), event.to_json().into())
            .await
            .map_err(unavailable)
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let out = self
            .shared
            .client
            .subscribe(self.subject("out", channel))
            .await
            .map_err(unavailable)?;
        let events = self
            .shared
            .client
            .subscribe(self.subject("ev", channel))
            .await
            .map_err(unavailable)?;
        // Make sure the subscriptions are in place before reading the position.
        sync(&self.shared.client, &self.shared.cfg.prefix).await?;
        let last = match self.shared.js {
            Some(_) => self
                .shared
                .last(&self.subject("in", channel))
                .await?
                .map(|s| s.offset)
                .unwrap_or(0),
            None => 0,
        };
        // Corked: a delivery to idle local subscribers is written at the end of the task's poll,
        // by this task, without waking theirs.
        let task = tokio::spawn(herald_core::outlet::Corked::new(deliver_channel(
            self.shared.clone(),
            channel.to_owned(),
            out,
            events,
            last,
        )));
        if let Some(old) = lock(&self.subs).insert(channel.to_owned(), task) {
            old.abort();
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if let Some(t) = lock(&self.subs).remove(channel) {
            t.abort();
        }
        Ok(())
    }

    async fn history(&self, channel: &str, q: HistoryQuery) -> Result<HistoryPage, BrokerError> {
        self.shared.history(channel, &q).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let Some((ctx, stream)) = &self.shared.js else {
            return Ok(());
        };
        let subject = self.subject("in", channel);
        let Some(last) = self.shared.last(&subject).await? else {
            return Ok(());
        };
        // A marker with the current offset (the counter must survive), then purge all but the
        // newest message: the marker, or a publication that came after it.
        let p = jetstream::message::PublishMessage::build()
            .header(H_OFFSET, last.offset.to_string().as_str())
            .header(H_MARKER, "removed")
            .expected_last_subject_sequence(last.seq);
        ctx.send_publish(subject.clone(), p)
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        lock(&self.last).remove(channel);
        stream
            .purge()
            .filter(subject)
            .keep(1)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn ready(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        for (_, t) in lock(&self.subs).drain() {
            t.abort();
        }
    }
}

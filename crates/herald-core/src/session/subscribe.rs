//! Subscribing: permission checks, joining the hub, recovery from history (paged, bounded by the
//! client's reading), leaving.

use std::sync::Arc;

use herald_proto::envelope::{MAX_HISTORY_LIMIT, Subscribe, Subscribed};
use herald_proto::{CloseCode, ErrorCode, Id, StreamPosition};

use crate::auth::permissions;
use crate::broker::{BrokerError, ChannelEvent, HistoryQuery};
use crate::config::{NamespaceOptions, SlowConsumerPolicy};
use crate::error::EngineError;
use crate::hub::Subscriber;
use crate::journal::EventKind;
use crate::publication::Publication;

use super::backend::backend_failed;
use super::*;

impl Session {
    pub(super) fn forget_chan_info(&mut self, channel: &str) {
        if self
            .rare
            .as_ref()
            .and_then(|r| r.chan_info.as_ref())
            .is_some_and(|m| m.contains_key(channel))
        {
            self.rare_with(|r| {
                if let Some(m) = &mut r.chan_info {
                    m.remove(channel);
                    if m.is_empty() {
                        r.chan_info = None;
                    }
                }
            });
        }
    }

    pub(super) async fn subscribe(
        &mut self,
        id: &Option<Id>,
        s: Subscribe,
    ) -> Result<(), EngineError> {
        let node = self.node.clone();
        let ns = node.namespace(&s.channel)?.clone();
        let chan_info = self.check_subscribe(&s, &ns).await?;
        let channel = s.channel.clone();
        if let Some(ci) = chan_info
            && !self.subs.contains_key(&channel)
        {
            self.rare_with(|r| {
                r.chan_info
                    .get_or_insert_with(Box::default)
                    .insert(channel.clone(), ci)
            });
        }
        let r = self.join(id, s, &ns, false).await;
        if !self.subs.contains_key(&channel) {
            self.forget_chan_info(&channel);
        }
        r
    }

    /// Whether this session may subscribe to `channel` as far as the server decides alone: a
    /// valid channel of a configured namespace, and the permission rules (or, in a namespace
    /// with a subscribe proxy, permission to ask the backend, which decides at `subscribe`).
    pub fn may_subscribe(&self, channel: &str) -> Result<(), EngineError> {
        let ns = self.node.namespace(channel)?;
        if ns.subscribe_proxy {
            permissions::may_ask_backend(&self.identity, channel, ns.rules())
        } else {
            permissions::may_subscribe(
                &self.identity,
                self.node.verifier(),
                channel,
                ns.rules(),
                None,
            )
        }
    }

    /// Permission to subscribe; the subscribe proxy may grant channel info.
    pub(super) async fn check_subscribe(
        &self,
        s: &Subscribe,
        ns: &NamespaceOptions,
    ) -> Result<Option<serde_json::Value>, EngineError> {
        let node = &self.node;
        if ns.subscribe_proxy && s.token.is_none() {
            permissions::may_ask_backend(&self.identity, &s.channel, ns.rules())?;
            let ctx = self.rpc_context();
            node.channel_proxy()?
                .subscribe(&ctx, &s.channel)
                .await
                .inspect_err(|e| backend_failed(node, "subscribe", &ctx, Some(&s.channel), e))
        } else {
            permissions::may_subscribe(
                &self.identity,
                self.node.verifier(),
                &s.channel,
                ns.rules(),
                s.token.as_deref(),
            )?;
            Ok(None)
        }
    }

    /// Subscribe after the permission checks. `server`: a server-side subscription, announced to
    /// the client with a `subscribed` push instead of a reply.
    pub(super) async fn join(
        &mut self,
        id: &Option<Id>,
        s: Subscribe,
        ns: &NamespaceOptions,
        server: bool,
    ) -> Result<(), EngineError> {
        let node = self.node.clone();
        let ns = ns.clone();
        if self.subs.contains_key(&s.channel) {
            return Err(EngineError::new(
                ErrorCode::AlreadySubscribed,
                "already subscribed",
            ));
        }
        if self.subs.len() >= node.config().session.max_channels {
            return Err(EngineError::new(
                ErrorCode::TooManyChannels,
                "max_channels reached",
            ));
        }
        let acks = ns.acks();
        let sub = match acks {
            Some(settings) => {
                let owner = crate::delivery::Owner {
                    user_id: self.identity.user_id.to_string(),
                    client_ip: self.client_ip,
                };
                Subscriber::acknowledged(
                    self.outlet.clone(),
                    self.client_id.clone(),
                    ns.join_leave,
                    crate::delivery::Tracker::new(settings, &s.channel, owner),
                )
            }
            // Deltas go to JSON connections (the delta is text in a JSON string).
            None if ns.delta != crate::config::DeltaFormat::Off
                && self.outlet.format == herald_proto::Format::Json =>
            {
                Subscriber::with_deltas(
                    self.outlet.clone(),
                    self.client_id.clone(),
                    ns.slow_consumer,
                    ns.join_leave,
                )
            }
            None => Subscriber::new(
                self.outlet.clone(),
                self.client_id.clone(),
                ns.slow_consumer,
                ns.join_leave,
            ),
        };
        let (first, _) = node
            .hub()
            .add(&s.channel, sub.clone(), ns.max_subscribers)
            .ok_or_else(|| EngineError::new(ErrorCode::ChannelFull, "channel is full"))?;
        if first {
            self.event(EventKind::ChannelOccupied, Some(&s.channel), None);
            if let Err(e) = node.broker.subscribe(&s.channel).await {
                self.drop_sub(&s.channel).await;
                return Err(e.into());
            }
        }
        let (mut reply, pubs) = match self.fetch_recovery(&s, ns.history_enabled()).await {
            Ok(r) => r,
            Err(e) => {
                self.drop_sub(&s.channel).await;
                return Err(e);
            }
        };
        reply.slow_consumer = match ns.slow_consumer {
            SlowConsumerPolicy::Disconnect => None,
            SlowConsumerPolicy::DropOldest => Some("drop_oldest".into()),
            SlowConsumerPolicy::Latest => Some("latest".into()),
        };
        let mut pubs = pubs;
        if sub.gets_deltas() {
            reply.delta = Some("fossil".into());
        }
        if let (Some(a), Some(t)) = (acks, sub.tracker()) {
            reply.delivery = Some("at_least_once".into());
            reply.ack_window = Some(a.window as u32);
            reply.ack_timeout_ms = Some(a.timeout.as_millis() as u64);
            let base = pubs.first().map_or(reply.offset, |p| p.offset - 1);
            t.begin(&Arc::from(reply.epoch.as_str()), base);
            // The window's worth follows the reply; the rest waits in history for acks.
            let n = t.recovered(&*sub, &pubs);
            pubs.truncate(n);
        }
        if server {
            if let Some(b) = self.encode(ServerKind::Subscribed, None, &reply) {
                self.outlet.push_reply(b);
            }
        } else {
            self.reply(id, &reply);
        }
        if !self.queue_recovered(&sub, &pubs).await {
            // The client stopped reading during recovery; the outlet is closing.
            self.drop_sub(&s.channel).await;
            return Ok(());
        }
        sub.go_live(&reply.epoch, || reply.offset);
        if sub.tracker().is_some() {
            // Only now: the recovered publications are queued, so a redelivery cannot overtake
            // them.
            node.sweeper().watch(&node, &sub);
        }
        self.subs.insert(s.channel.clone(), sub);
        metrics::gauge!("herald_subscriptions").increment(1.0);
        self.event(EventKind::Subscribe, Some(&s.channel), None);
        if ns.presence
            && let Err(e) = node.presence.add(&s.channel, self.info(&s.channel)).await
        {
            tracing::warn!(channel = %s.channel, error = %e, "presence add failed");
        }
        if ns.join_leave {
            node.emit(&s.channel, ChannelEvent::Join(self.info(&s.channel)))
                .await;
        }
        Ok(())
    }

    /// The subscribe reply and the publications to replay.
    pub(super) async fn fetch_recovery(
        &self,
        s: &Subscribe,
        history: bool,
    ) -> Result<(Subscribed, Vec<Arc<Publication>>), EngineError> {
        let broker = &self.node.broker;
        let position = |since| HistoryQuery {
            since,
            limit: 0,
            reverse: false,
        };
        let Some(pos) = &s.recover else {
            let top = broker.history(&s.channel, position(None)).await?;
            return Ok((
                subscribed(&s.channel, top.top, &top.epoch, None, None),
                Vec::new(),
            ));
        };
        if !history {
            let top = broker.history(&s.channel, position(None)).await?;
            let ok = *top.epoch == *pos.epoch && top.top == pos.offset;
            return Ok((
                subscribed(&s.channel, top.top, &top.epoch, Some(ok), Some(0)),
                Vec::new(),
            ));
        }
        let mut since = pos.clone();
        let mut pubs: Vec<Arc<Publication>> = Vec::new();
        let page_query = |since: &StreamPosition| HistoryQuery {
            since: Some(since.clone()),
            limit: MAX_HISTORY_LIMIT,
            reverse: false,
        };
        let first = match broker.history(&s.channel, page_query(&since)).await {
            Ok(p) => p,
            Err(BrokerError::EpochMismatch) => {
                let top = broker.history(&s.channel, position(None)).await?;
                return Ok((
                    subscribed(&s.channel, top.top, &top.epoch, Some(false), Some(0)),
                    Vec::new(),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let (top, epoch) = (first.top, first.epoch.clone());
        let recovered = pos.offset <= top && first.first_kept <= pos.offset + 1;
        let mut page = first;
        loop {
            let n = page.publications.len();
            pubs.extend(page.publications.into_iter().filter(|p| p.offset <= top));
            match pubs.last() {
                Some(last) if n == MAX_HISTORY_LIMIT && last.offset < top => {
                    since.offset = last.offset;
                    page = broker.history(&s.channel, page_query(&since)).await?;
                }
                _ => break,
            }
        }
        let missed = pubs.len() as u64;
        Ok((
            subscribed(&s.channel, top, &epoch, Some(recovered), Some(missed)),
            pubs,
        ))
    }

    /// Queue recovered publications page by page, waiting for the client to read between pages.
    pub(super) async fn queue_recovered(
        &self,
        sub: &Subscriber,
        pubs: &[Arc<Publication>],
    ) -> bool {
        let limits = self.outlet.limits();
        let page = (limits.max_messages / 2).clamp(1, MAX_HISTORY_LIMIT);
        for chunk in pubs.chunks(page) {
            if !self.outlet.wait_for_room(chunk.len(), RECOVERY_STALL).await {
                self.outlet.close(CloseCode::SlowConsumer);
                metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
                return false;
            }
            for p in chunk {
                self.outlet.push_reply_item(sub.whole(p));
            }
        }
        true
    }

    pub(super) async fn drop_sub(&self, channel: &str) {
        if self.node.hub().remove(channel, &self.client_id) == Some(true) {
            self.event(EventKind::ChannelVacated, Some(channel), None);
            if let Err(e) = self.node.broker.unsubscribe(channel).await {
                tracing::warn!(channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    pub(super) async fn leave(&self, channel: &str) {
        self.event(EventKind::Unsubscribe, Some(channel), None);
        self.drop_sub(channel).await;
        metrics::gauge!("herald_subscriptions").decrement(1.0);
        let Ok(ns) = self.node.namespace(channel) else {
            return;
        };
        if ns.presence
            && let Err(e) = self.node.presence.remove(channel, &self.client_id).await
        {
            tracing::warn!(channel, error = %e, "presence remove failed");
        }
        if ns.join_leave {
            self.node
                .emit(channel, ChannelEvent::Leave(self.info(channel)))
                .await;
        }
    }
}

pub(super) fn subscribed(
    channel: &str,
    offset: u64,
    epoch: &str,
    recovered: Option<bool>,
    missed: Option<u64>,
) -> Subscribed {
    Subscribed {
        channel: channel.to_owned(),
        offset,
        epoch: epoch.to_owned(),
        recovered,
        missed,
        slow_consumer: None,
        delivery: None,
        ack_window: None,
        ack_timeout_ms: None,
        delta: None,
    }
}

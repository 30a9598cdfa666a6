//! The per-connection protocol state machine: `handle(request)` queues replies and pushes on the
//! connection's outlet. It knows nothing about sockets, so it is tested without one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::codec::HistoryOut;
use herald_proto::envelope::{
    ChannelOnly, ClientInfo, Connected, DecodeError, ErrorPayload, History, MAX_HISTORY_LIMIT,
    Published, Resume, Resumed, ResumedChannel, Subscribe, Subscribed,
};
use herald_proto::{CloseCode, Command, ErrorCode, Id, Request, StreamPosition};
use serde::Serialize;

use crate::auth::{TokenKind, patterns};
use crate::broker::{BrokerError, ChannelEvent, HistoryQuery};
use crate::config::NamespaceOptions;
use crate::hub::Subscriber;
use crate::journal::EventKind;
use crate::limits::{CommandLimiter, Verdict};
use crate::node::{EngineError, Identity, Node};
use crate::outlet::{Out, Outlet};
use crate::publication::Publication;
use crate::rpc::{Headers, Refreshed, RpcContext};

/// Server-side commands queued per session.
const SERVER_COMMANDS: usize = 64;

/// A command from the server side (API, connect proxy) for a user's sessions.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerCommand {
    /// Subscribe to this channel (the client gets a `subscribed` push).
    Subscribe(String),
    /// Leave this channel (the client gets an `unsubscribed` push).
    Unsubscribe(String),
    /// The refresh proxy extended this (proxy-authenticated) connection.
    Refreshed(Refreshed),
}

/// How long recovery waits for the client to read a page before giving up.
const RECOVERY_STALL: Duration = Duration::from_secs(10);

/// What the transport should do after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Close the connection with this code (after sending what is queued).
    Close(CloseCode),
}

/// A client session: identity, subscriptions and the outlet its frames go to.
pub struct Session {
    node: Arc<Node>,
    outlet: Arc<Outlet>,
    id: String,
    client_id: Arc<str>,
    identity: Identity,
    expiry: Option<Expiry>,
    limiter: Option<CommandLimiter>,
    /// What this connection may add to the node's journals (dead letters; subscribe-churn events).
    quota: Box<JournalQuota>,
    resume_token: String,
    subs: HashMap<String, Arc<Subscriber>>,
    violations: u32,
    /// `rpc` calls in flight (created on the first call).
    rpc_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The `connect` event was emitted (at the first command that is not `resume`).
    announced: bool,
    /// Server-side commands for this session (users only).
    server_cmds: Option<(
        tokio::sync::mpsc::Sender<ServerCommand>,
        tokio::sync::mpsc::Receiver<ServerCommand>,
    )>,
    started: std::time::Instant,
    /// Forwarded handshake headers for backend proxies.
    forwarded: Option<Headers>,
    /// Channel info the subscribe proxy returned, by channel (boxed: rarely used, and every
    /// connection task carries its session).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of a 48-byte empty map in every connection task"
    )]
    chan_info: Option<Box<HashMap<String, serde_json::Value>>>,
}

/// One connection's share of the node's bounded journals, so that one noisy client cannot push
/// everyone else's dead letters and events out (counters stay exact: what is not kept is counted).
struct JournalQuota {
    dead_letters: crate::limits::Allowance,
    events: crate::limits::Allowance,
}

impl JournalQuota {
    fn new(cfg: &crate::config::SessionConfig) -> Self {
        let minute = Duration::from_secs(60);
        JournalQuota {
            dead_letters: crate::limits::Allowance::new(
                cfg.dead_letters_per_connection,
                minute,
                cfg.dead_letters_per_connection,
            ),
            events: crate::limits::Allowance::new(
                cfg.events_per_connection,
                minute,
                cfg.events_per_connection,
            ),
        }
    }
}

/// When the connection token expires and when to ask for a fresh one.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    refresh_at: tokio::time::Instant,
    expire_at: tokio::time::Instant,
    refresh_sent: bool,
}

fn expiry(identity: &Identity, refresh_before: Duration) -> Option<Expiry> {
    let exp_ms = identity.claims.as_ref()?.exp.saturating_mul(1000);
    let left = Duration::from_millis(exp_ms.saturating_sub(crate::publication::now_ms()));
    let now = tokio::time::Instant::now();
    Some(Expiry {
        refresh_at: now + left.saturating_sub(refresh_before.min(left / 2)),
        expire_at: now + left,
        refresh_sent: false,
    })
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Session {
    pub(crate) fn new(
        node: Arc<Node>,
        outlet: Arc<Outlet>,
        client_id: Arc<str>,
        identity: Identity,
    ) -> Self {
        let jti = identity.claims.as_ref().and_then(|c| c.jti.clone());
        let server_cmds =
            (!identity.user_id.is_empty()).then(|| tokio::sync::mpsc::channel(SERVER_COMMANDS));
        node.register(
            &identity.user_id,
            &client_id,
            &outlet,
            jti,
            server_cmds.as_ref().map(|(tx, _)| tx.clone()),
        );
        let cfg = node.config();
        let l = &cfg.limits;
        let limiter = CommandLimiter::new(
            l.commands_per_second,
            l.commands_burst,
            l.rate_limited_close_after,
        );
        let expiry = expiry(&identity, cfg.auth.refresh_before);
        let quota = Box::new(JournalQuota::new(&cfg.session));
        Session {
            node,
            outlet,
            id: token(),
            client_id,
            identity,
            expiry,
            limiter,
            quota,
            resume_token: token(),
            subs: HashMap::new(),
            violations: 0,
            rpc_slots: None,
            announced: false,
            started: std::time::Instant::now(),
            server_cmds,
            forwarded: None,
            chan_info: None,
        }
    }

    /// The outlet the transport's writer drains.
    pub fn outlet(&self) -> &Arc<Outlet> {
        &self.outlet
    }

    /// This connection's client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The user id ("" = anonymous).
    pub fn user_id(&self) -> &str {
        &self.identity.user_id
    }

    /// When [`Session::on_auth_timer`] must run next (token refresh request or expiry).
    pub fn auth_deadline(&self) -> Option<tokio::time::Instant> {
        self.expiry.map(|e| {
            if e.refresh_sent {
                e.expire_at
            } else {
                e.refresh_at
            }
        })
    }

    /// The auth deadline passed: ask for a fresh token, or close with 4010 once it expired.
    pub fn on_auth_timer(&mut self) -> Flow {
        let Some(e) = &mut self.expiry else {
            return Flow::Continue;
        };
        let now = tokio::time::Instant::now();
        if now >= e.expire_at {
            metrics::counter!("herald_token_expired_total").increment(1);
            self.expiry = None;
            return Flow::Close(CloseCode::TokenExpired);
        }
        if !e.refresh_sent && now >= e.refresh_at {
            e.refresh_sent = true;
            if self.identity.proxied
                && let Ok(proxy) = self.node.channel_proxy()
                && proxy.refreshes()
            {
                self.refresh_through_proxy(proxy.clone());
                return Flow::Continue;
            }
            let left = e.expire_at.saturating_duration_since(now).as_millis() as u64;
            let p = herald_proto::envelope::RefreshInfo {
                expires_in_ms: left,
            };
            if let Some(b) = self.encode("refresh", None, &p) {
                self.outlet.push_reply(b);
            }
        }
        Flow::Continue
    }

    /// Ask the refresh proxy to extend this connection, in a task of its own; the answer comes
    /// back as [`ServerCommand::Refreshed`]. On failure the connection expires as it would.
    fn refresh_through_proxy(&self, proxy: Arc<dyn crate::rpc::ChannelProxy>) {
        let Some((tx, _)) = &self.server_cmds else {
            return;
        };
        let (tx, ctx, node) = (tx.clone(), self.rpc_context(), self.node.clone());
        tokio::spawn(async move {
            match proxy.refresh(&ctx).await {
                Ok(r) => {
                    let _ = tx.send(ServerCommand::Refreshed(r)).await;
                }
                Err(e) => {
                    backend_failed(&node, "refresh", &ctx, None, &e);
                    tracing::info!(client = %ctx.client_id, error = %e, "refresh proxy refused");
                }
            }
        });
    }

    fn forget_chan_info(&mut self, channel: &str) {
        if let Some(m) = &mut self.chan_info {
            m.remove(channel);
            if m.is_empty() {
                self.chan_info = None;
            }
        }
    }

    /// Keep these handshake headers for backend proxies (`rpc`, subscribe, publish, refresh).
    pub fn set_forwarded_headers(&mut self, headers: Option<Headers>) {
        self.forwarded = headers;
    }

    /// The current resume token.
    pub fn resume_token(&self) -> &str {
        &self.resume_token
    }

    /// Number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Who this client is, as shown on `channel` (presence, join/leave, publications).
    fn info(&self, channel: &str) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.to_string(),
            user_id: self.identity.user_id.clone(),
            info: self.identity.claims.as_ref().and_then(|c| c.info.clone()),
            chan_info: self
                .chan_info
                .as_ref()
                .and_then(|m| m.get(channel).cloned()),
        }
    }

    fn encode<P: Serialize>(&self, kind: &str, id: Option<&Id>, payload: &P) -> Option<Bytes> {
        match herald_proto::encode(self.outlet.format, kind, id, payload) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(client = %self.client_id, error = %e, "cannot encode reply");
                None
            }
        }
    }

    fn reply<P: Serialize>(&self, id: &Option<Id>, payload: &P) {
        if let Some(id) = id
            && let Some(b) = self.encode("reply", Some(id), payload)
        {
            self.outlet.push_reply(b);
        }
    }

    fn error(&self, id: &Option<Id>, code: ErrorCode, message: &str) {
        metrics::counter!("herald_protocol_errors_total", "code" => code.as_str()).increment(1);
        let p = ErrorPayload::new(code, message);
        if let Some(b) = self.encode("error", id.as_ref(), &p) {
            self.outlet.push_reply(b);
        }
    }

    /// Queue the `connected` message.
    /// Push `connected`; after a first-message `auth`, it is that command's reply and carries its
    /// `id` (`reply_to`).
    pub fn welcome(&self, reply_to: Option<&Id>) {
        let hb = self.node.heartbeat;
        let c = Connected {
            client_id: self.client_id.to_string(),
            session_id: self.id.clone(),
            resume_token: self.resume_token.clone(),
            resume_grace_ms: self.node.config().session.resume_grace.as_millis() as u64,
            ping_interval_ms: hb.ping_interval_ms,
            pong_timeout_ms: hb.pong_timeout_ms,
            server: concat!("herald/", env!("CARGO_PKG_VERSION")).to_owned(),
            protocol: self.outlet.format.subprotocol().to_owned(),
            user_id: self.identity.user_id.clone(),
            expires_in_ms: self.expires_in_ms(),
        };
        if let Some(b) = self.encode("connected", reply_to, &c) {
            self.outlet.push_reply(b);
        }
    }

    fn expires_in_ms(&self) -> Option<u64> {
        self.expiry.map(|e| {
            e.expire_at
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis() as u64
        })
    }

    /// Count a protocol violation; past `max_violations` the connection must close with 4500.
    pub fn violation(&mut self) -> Flow {
        self.violations += 1;
        if self.violations > self.node.config().session.max_violations {
            Flow::Close(CloseCode::ProtocolViolations)
        } else {
            Flow::Continue
        }
    }

    /// Record a dead letter this connection caused, within its quota (always counted).
    fn dead_letter(&self, reason: &str, context: impl FnOnce() -> serde_json::Value) {
        if self.quota.dead_letters.take() {
            self.node.dead_letters().push(reason, context());
        } else {
            self.node.dead_letters().suppressed(reason);
        }
    }

    /// Charge one inbound message to the command rate limiter, whatever it turns out to be.
    /// `Some` = answered (`rate_limited`) or closing; the message must not be processed.
    fn charge(&mut self, id: &Option<Id>) -> Option<Flow> {
        let l = self.limiter.as_mut()?;
        match l.check() {
            Verdict::Allow => None,
            Verdict::Limited => {
                metrics::counter!("herald_rate_limited_total", "kind" => "command").increment(1);
                self.error(id, ErrorCode::RateLimited, "command rate limit exceeded");
                Some(Flow::Continue)
            }
            Verdict::Close => Some(Flow::Close(CloseCode::RateLimited)),
        }
    }

    /// Answer a frame that could not be decoded (unknown `type` included: it is not a violation,
    /// for forward compatibility, but it costs a command like any other).
    pub fn decode_error(&mut self, e: DecodeError) -> Flow {
        if let Some(flow) = self.charge(&e.id) {
            return flow;
        }
        tracing::debug!(client = %self.client_id, code = e.code.as_str(), message = %e.message, "bad frame");
        self.dead_letter(e.code.as_str(), || {
            serde_json::json!({"client_id": &*self.client_id, "user_id": self.identity.user_id, "message": e.message})
        });
        self.error(&e.id, e.code, &e.message);
        if e.code.is_violation() {
            self.violation()
        } else {
            Flow::Continue
        }
    }

    /// Answer a frame of the wrong kind (text on MessagePack, binary on JSON).
    pub fn wrong_frame_type(&mut self) -> Flow {
        if let Some(flow) = self.charge(&None) {
            return flow;
        }
        self.dead_letter(
            "wrong_frame_type",
            || serde_json::json!({"client_id": &*self.client_id, "user_id": self.identity.user_id}),
        );
        self.error(
            &None,
            ErrorCode::WrongFrameType,
            "frame type does not match the negotiated subprotocol",
        );
        self.violation()
    }

    /// Handle one decoded command.
    pub async fn handle(&mut self, req: Request) -> Flow {
        let Request { id, command } = req;
        if let Some(flow) = self.charge(&id) {
            return flow;
        }
        if !self.announced && !matches!(command, Command::Resume(_)) {
            self.announced = true;
            self.event(EventKind::Connect, None, None);
        }
        let result = match command {
            Command::Ping => {
                if let Some(b) = self.encode("pong", id.as_ref(), &serde_json::Map::new()) {
                    self.outlet.push_reply(b);
                }
                Ok(())
            }
            Command::Subscribe(s) => self.subscribe(&id, s).await,
            Command::Unsubscribe(c) => self.unsubscribe(&id, c).await,
            Command::Publish(p) => self.publish(&id, p).await,
            Command::History(h) => self.history(&id, h).await,
            Command::Presence(c) => self.presence(&id, c).await,
            Command::PresenceStats(c) => self.presence_stats(&id, c).await,
            Command::Resume(r) => self.resume(&id, r).await,
            Command::Refresh(r) => self.refresh(&id, &r.token),
            Command::Rpc(r) => self.rpc(&id, r),
            Command::Auth(_) => Err(EngineError::new(
                ErrorCode::BadRequest,
                "already authenticated: use `refresh` to replace the token",
            )),
        };
        match result {
            Ok(()) => Flow::Continue,
            Err(e) => {
                self.error(&id, e.code, &e.message);
                if e.code.is_violation() {
                    self.violation()
                } else {
                    Flow::Continue
                }
            }
        }
    }

    async fn subscribe(&mut self, id: &Option<Id>, s: Subscribe) -> Result<(), EngineError> {
        let node = self.node.clone();
        let ns = node.namespace(&s.channel)?.clone();
        let chan_info = self.check_subscribe(&s, &ns).await?;
        let channel = s.channel.clone();
        if let Some(ci) = chan_info
            && !self.subs.contains_key(&channel)
        {
            self.chan_info
                .get_or_insert_with(Default::default)
                .insert(channel.clone(), ci);
        }
        let r = self.join(id, s, &ns, false).await;
        if !self.subs.contains_key(&channel) {
            self.forget_chan_info(&channel);
        }
        r
    }

    /// Permission to subscribe; the subscribe proxy may grant channel info.
    async fn check_subscribe(
        &self,
        s: &Subscribe,
        ns: &NamespaceOptions,
    ) -> Result<Option<serde_json::Value>, EngineError> {
        let node = &self.node;
        if ns.subscribe_proxy && s.token.is_none() {
            self.admitted(ns)?;
            if patterns::user_allowed(&s.channel, &self.identity.user_id) == Some(false) {
                return Err(not_listed());
            }
            let ctx = self.rpc_context();
            node.channel_proxy()?
                .subscribe(&ctx, &s.channel)
                .await
                .inspect_err(|e| backend_failed(node, "subscribe", &ctx, Some(&s.channel), e))
        } else {
            self.may_subscribe(&s.channel, ns, s.token.as_deref())?;
            Ok(None)
        }
    }

    /// Subscribe after the permission checks. `server`: a server-side subscription, announced to
    /// the client with a `subscribed` push instead of a reply.
    async fn join(
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
        let sub = Subscriber::new(
            self.outlet.clone(),
            self.client_id.clone(),
            ns.slow_consumer,
            ns.join_leave,
        );
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
        let (reply, pubs) = match self.fetch_recovery(&s, ns.history_enabled()).await {
            Ok(r) => r,
            Err(e) => {
                self.drop_sub(&s.channel).await;
                return Err(e);
            }
        };
        if server {
            if let Some(b) = self.encode("subscribed", None, &reply) {
                self.outlet.push_reply(b);
            }
        } else {
            self.reply(id, &reply);
        }
        if !self.queue_recovered(&pubs).await {
            // The client stopped reading during recovery; the outlet is closing.
            self.drop_sub(&s.channel).await;
            return Ok(());
        }
        sub.go_live(&reply.epoch, || reply.offset);
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
    async fn fetch_recovery(
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
    async fn queue_recovered(&self, pubs: &[Arc<Publication>]) -> bool {
        let limits = self.outlet.limits();
        let page = (limits.max_messages / 2).clamp(1, MAX_HISTORY_LIMIT);
        for chunk in pubs.chunks(page) {
            if !self.outlet.wait_for_room(chunk.len(), RECOVERY_STALL).await {
                self.outlet.close(CloseCode::SlowConsumer);
                metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
                return false;
            }
            for p in chunk {
                self.outlet.push_reply_item(Out::Pub(p.clone()));
            }
        }
        true
    }

    async fn drop_sub(&self, channel: &str) {
        if self.node.hub().remove(channel, &self.client_id) == Some(true) {
            self.event(EventKind::ChannelVacated, Some(channel), None);
            if let Err(e) = self.node.broker.unsubscribe(channel).await {
                tracing::warn!(channel, error = %e, "broker unsubscribe failed");
            }
        }
    }

    fn event(&self, kind: EventKind, channel: Option<&str>, reason: Option<&str>) {
        // Session starts and ends are always kept; subscription churn is within the quota.
        let churn = !matches!(kind, EventKind::Connect | EventKind::Disconnect);
        if churn && !self.quota.events.take() {
            self.node.events().suppressed(kind);
            return;
        }
        let duration =
            (kind == EventKind::Disconnect).then(|| self.started.elapsed().as_millis() as u64);
        let (client, user) = match kind {
            EventKind::ChannelOccupied | EventKind::ChannelVacated => (None, None),
            _ => (Some(&*self.client_id), Some(self.identity.user_id.as_str())),
        };
        self.node
            .events()
            .push(kind, client, user, channel, reason, duration);
    }

    async fn leave(&self, channel: &str) {
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

    /// Wait for the next server-side command (never resolves for sessions without a user).
    pub async fn next_server_command(&mut self) -> ServerCommand {
        match &mut self.server_cmds {
            Some((_, rx)) => match rx.recv().await {
                Some(c) => c,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Apply a server-side command (from the server API or a connect proxy): subscribe or
    /// unsubscribe without permission checks, telling the client with a push.
    pub async fn server_command(&mut self, cmd: ServerCommand) {
        match cmd {
            ServerCommand::Subscribe(channel) => {
                if self.subs.contains_key(&channel) {
                    return;
                }
                let ns = match self.node.namespace(&channel) {
                    Ok(ns) => ns.clone(),
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "server-side subscribe refused");
                        return;
                    }
                };
                let s = Subscribe {
                    channel: channel.clone(),
                    recover: None,
                    token: None,
                };
                if let Err(e) = self.join(&None, s, &ns, true).await {
                    tracing::warn!(channel, error = %e, "server-side subscribe failed");
                }
            }
            ServerCommand::Unsubscribe(channel) => {
                if self.subs.remove(&channel).is_some() {
                    self.leave(&channel).await;
                    self.forget_chan_info(&channel);
                    if let Some(b) = self.encode(
                        "unsubscribed",
                        None,
                        &serde_json::json!({ "channel": channel }),
                    ) {
                        self.outlet.push_reply(b);
                    }
                }
            }
            ServerCommand::Refreshed(r) => {
                let Some(claims) = &mut self.identity.claims else {
                    return;
                };
                claims.exp = r.expire_at;
                if let Some(info) = r.info {
                    claims.info = Some(info);
                }
                self.expiry = expiry(&self.identity, self.node.config().auth.refresh_before);
                metrics::counter!("herald_proxy_refreshes_total").increment(1);
            }
        }
    }

    async fn unsubscribe(&mut self, id: &Option<Id>, c: ChannelOnly) -> Result<(), EngineError> {
        if self.subs.remove(&c.channel).is_none() {
            return Err(EngineError::new(ErrorCode::NotSubscribed, "not subscribed"));
        }
        self.leave(&c.channel).await;
        self.forget_chan_info(&c.channel);
        self.reply(id, &serde_json::Map::new());
        Ok(())
    }

    async fn publish(
        &mut self,
        id: &Option<Id>,
        p: herald_proto::envelope::Publish,
    ) -> Result<(), EngineError> {
        let mut p = p;
        let node = self.node.clone();
        let ns = node.namespace(&p.channel)?;
        if ns.publish_proxy {
            self.admitted(ns)?;
            if patterns::user_allowed(&p.channel, &self.identity.user_id) == Some(false) {
                return Err(not_listed());
            }
            let ctx = self.rpc_context();
            let data = p.data.to_json_value();
            if let Some(new) = node
                .channel_proxy()?
                .publish(&ctx, &p.channel, data)
                .await
                .inspect_err(|e| backend_failed(&node, "publish", &ctx, Some(&p.channel), e))?
            {
                p.data = herald_proto::Data::json(&new.to_string())
                    .map_err(|e| EngineError::new(ErrorCode::Internal, e.to_string()))?;
            }
        } else {
            self.may_publish(&p.channel, ns)?;
        }
        let key = match self.identity.user_id.as_str() {
            "" => &*self.client_id,
            user => user,
        };
        if !self.node.publish_allowed(key) {
            metrics::counter!("herald_rate_limited_total", "kind" => "publish").increment(1);
            return Err(EngineError::new(
                ErrorCode::RateLimited,
                "publish rate limit exceeded for this user",
            ));
        }
        let max = self.node.config().session.max_data_size;
        if p.data.encoded_len() > max {
            return Err(EngineError::new(
                ErrorCode::TooLarge,
                format!("data is larger than {max} bytes"),
            ));
        }
        let out = self
            .node
            .publish(
                &p.channel,
                p.data,
                Some(self.info(&p.channel)),
                p.idempotency_key,
            )
            .await?;
        self.reply(
            id,
            &Published {
                offset: out.offset,
                epoch: out.epoch.to_string(),
                duplicate: out.duplicate,
            },
        );
        Ok(())
    }

    async fn history(&mut self, id: &Option<Id>, h: History) -> Result<(), EngineError> {
        let ns = self.node.namespace(&h.channel)?;
        self.may_read(&h.channel, ns)?;
        if !ns.history_enabled() {
            return Err(EngineError::new(
                ErrorCode::HistoryDisabled,
                "history is disabled in this namespace",
            ));
        }
        let limit = h.limit.unwrap_or(MAX_HISTORY_LIMIT);
        if limit > MAX_HISTORY_LIMIT {
            return Err(EngineError::new(
                ErrorCode::BadRequest,
                "limit must be at most 100",
            ));
        }
        let q = HistoryQuery {
            since: h.since,
            limit,
            reverse: h.reverse,
        };
        let page = self.node.broker.history(&h.channel, q).await?;
        // Bound the reply frame: stop adding publications past PAGE_BYTES (at least one).
        const PAGE_BYTES: usize = 256 * 1024;
        let mut size = 0;
        let format = self.outlet.format;
        let mut publications = Vec::with_capacity(page.publications.len());
        for p in &page.publications {
            size += p.queued_len();
            if size > PAGE_BYTES && !publications.is_empty() {
                break;
            }
            publications.push(p.out(format));
        }
        self.reply(
            id,
            &HistoryOut {
                offset: page.top,
                epoch: &page.epoch,
                publications,
            },
        );
        Ok(())
    }

    async fn presence(&mut self, id: &Option<Id>, c: ChannelOnly) -> Result<(), EngineError> {
        self.may_read(&c.channel, self.node.namespace(&c.channel)?)?;
        #[derive(Serialize)]
        struct Clients {
            clients: Vec<ClientInfo>,
        }
        let clients = self.node.presence(&c.channel).await?;
        self.reply(id, &Clients { clients });
        Ok(())
    }

    async fn presence_stats(&mut self, id: &Option<Id>, c: ChannelOnly) -> Result<(), EngineError> {
        self.may_read(&c.channel, self.node.namespace(&c.channel)?)?;
        let stats = self.node.presence_stats(&c.channel).await?;
        self.reply(id, &stats);
        Ok(())
    }

    async fn resume(&mut self, id: &Option<Id>, r: Resume) -> Result<(), EngineError> {
        if !self.subs.is_empty() {
            return Err(EngineError::new(
                ErrorCode::ResumeNotAllowed,
                "resume must come before any subscribe",
            ));
        }
        let Some(mut old) = self.node.take_parked(&r.token, &self.identity.user_id) else {
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "no session for this resume token",
            ));
        };
        if old.outlet.close_requested().is_some() {
            old.end("session overflowed while disconnected").await;
            return Err(EngineError::new(
                ErrorCode::SessionNotFound,
                "the session overflowed while disconnected",
            ));
        }
        let fresh_outlet = self.outlet.clone();
        std::mem::swap(self, &mut old);
        // The resumed session takes the new connection's (fresher) token and rate limiter.
        std::mem::swap(&mut self.identity, &mut old.identity);
        std::mem::swap(&mut self.expiry, &mut old.expiry);
        std::mem::swap(&mut self.limiter, &mut old.limiter);
        std::mem::swap(&mut self.forwarded, &mut old.forwarded);
        self.reregister();
        drop(old); // the fresh session has no subscriptions: nothing to clean up
        self.resume_token = token();
        self.violations = 0;
        let mut channels = Vec::with_capacity(self.subs.len());
        let mut front: Vec<Out> = Vec::new();
        for (channel, sub) in &self.subs {
            let recovered = match r.positions.get(channel) {
                None => None,
                Some(pos) => Some(self.fill_gap(channel, sub, pos, &mut front).await),
            };
            channels.push(ResumedChannel {
                channel: channel.clone(),
                recovered,
            });
        }
        let reply = Resumed {
            session_id: self.id.clone(),
            client_id: self.client_id.to_string(),
            resume_token: self.resume_token.clone(),
            channels,
            buffered: self.outlet.len() as u64,
        };
        if let Some(b) = id
            .as_ref()
            .and_then(|id| self.encode("reply", Some(id), &reply))
        {
            front.insert(0, Out::Reply(b));
        }
        self.outlet.push_front(front);
        fresh_outlet.redirect(self.outlet.clone());
        metrics::counter!("herald_sessions_resumed_total").increment(1);
        Ok(())
    }

    /// Publications the client missed before what is buffered (e.g. frames lost in flight when the
    /// socket died): fetched from history and queued in front. Returns whether the gap is closed.
    async fn fill_gap(
        &self,
        channel: &str,
        sub: &Subscriber,
        pos: &StreamPosition,
        front: &mut Vec<Out>,
    ) -> bool {
        let next = self
            .outlet
            .queued_offsets(channel)
            .first()
            .copied()
            .unwrap_or(sub.last_offset() + 1);
        if pos.offset + 1 >= next {
            return true;
        }
        let want = (next - 1 - pos.offset) as usize;
        let q = HistoryQuery {
            since: Some(pos.clone()),
            limit: want.min(MAX_HISTORY_LIMIT * 10),
            reverse: false,
        };
        match self.node.broker.history(channel, q).await {
            Ok(page) => {
                let got: Vec<_> = page
                    .publications
                    .into_iter()
                    .filter(|p| p.offset < next)
                    .collect();
                let complete =
                    got.len() == want && got.first().is_some_and(|p| p.offset == pos.offset + 1);
                front.extend(got.into_iter().map(Out::Pub));
                complete
            }
            Err(_) => false,
        }
    }

    /// Update the node's registry entry after the identity or token changed (refresh, resume).
    fn reregister(&self) {
        let jti = self.identity.claims.as_ref().and_then(|c| c.jti.clone());
        self.node.register(
            &self.identity.user_id,
            &self.client_id,
            &self.outlet,
            jti,
            self.server_cmds.as_ref().map(|(tx, _)| tx.clone()),
        );
    }

    fn rpc_context(&self) -> RpcContext {
        RpcContext {
            client_id: self.client_id.to_string(),
            user_id: self.identity.user_id.clone(),
            info: self.identity.claims.as_ref().and_then(|c| c.info.clone()),
            headers: self.forwarded.clone(),
        }
    }

    /// `rpc`: ask the handler in a task of its own (the connection keeps reading); exactly one
    /// reply or error follows, `timeout` after `session.rpc_timeout`.
    fn rpc(&mut self, id: &Option<Id>, r: herald_proto::envelope::Rpc) -> Result<(), EngineError> {
        if r.method.is_empty() || r.method.len() > 128 {
            return Err(EngineError::new(
                ErrorCode::BadRequest,
                "method must be 1-128 bytes",
            ));
        }
        let Some(handler) = self.node.rpc_handler().cloned() else {
            return Err(EngineError::new(
                ErrorCode::Unavailable,
                "rpc is not enabled on this server",
            ));
        };
        let cfg = &self.node.config().session;
        let slots = self
            .rpc_slots
            .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(cfg.rpc_max_inflight)))
            .clone();
        let Ok(permit) = slots.try_acquire_owned() else {
            return Err(EngineError::new(
                ErrorCode::RateLimited,
                "too many rpc calls in flight on this connection",
            ));
        };
        let ctx = self.rpc_context();
        let (outlet, id, timeout) = (self.outlet.clone(), id.clone(), cfg.rpc_timeout);
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let call = handler.call(ctx.clone(), r.method.clone(), r.data);
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::new(
                    ErrorCode::Timeout,
                    "the backend did not answer in time",
                )),
            };
            if let Err(e) = &result {
                backend_failed(&node, "rpc", &ctx, Some(&r.method), e);
            }
            metrics::counter!("herald_rpc_total", "result" => if result.is_ok() { "ok" } else { "error" })
                .increment(1);
            let frame = match result {
                Ok(data) => match &id {
                    Some(id) => herald_proto::encode(
                        outlet.format,
                        "reply",
                        Some(id),
                        &serde_json::json!({ "data": data }),
                    )
                    .ok(),
                    None => None,
                },
                Err(e) => herald_proto::encode(
                    outlet.format,
                    "error",
                    id.as_ref(),
                    &ErrorPayload::new(e.code, e.message),
                )
                .ok(),
            };
            if let Some(f) = frame {
                outlet.push_reply(f);
            }
        });
        Ok(())
    }

    /// `refresh`: replace the connection token with a fresh one for the same user.
    fn refresh(&mut self, id: &Option<Id>, token: &str) -> Result<(), EngineError> {
        let claims = self.node.verifier().verify(token, TokenKind::Connection)?;
        if claims.sub != self.identity.user_id {
            return Err(EngineError::new(
                ErrorCode::TokenInvalid,
                "the new token is for another user",
            ));
        }
        self.identity = Identity::from_claims(claims);
        self.expiry = expiry(&self.identity, self.node.config().auth.refresh_before);
        self.reregister();
        let expires_in_ms = self.expires_in_ms().unwrap_or(0);
        self.reply(id, &herald_proto::envelope::RefreshInfo { expires_in_ms });
        Ok(())
    }

    fn admitted(&self, ns: &NamespaceOptions) -> Result<(), EngineError> {
        if self.identity.user_id.is_empty() && !ns.anonymous {
            return Err(EngineError::new(
                ErrorCode::Unauthorized,
                "anonymous clients may not use this namespace",
            ));
        }
        Ok(())
    }

    fn claim_patterns(&self, publish: bool) -> &[String] {
        match &self.identity.claims {
            Some(c) if publish => &c.publish,
            Some(c) => &c.channels,
            None => &[],
        }
    }

    /// Subscribe permission: user-limited channels admit their listed users; a channel token
    /// grants its channel; otherwise the namespace (`private`, `allow_subscribe`) and the token's
    /// `channels` patterns decide.
    fn may_subscribe(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        channel_token: Option<&str>,
    ) -> Result<(), EngineError> {
        self.admitted(ns)?;
        let user = &self.identity.user_id;
        if let Some(listed) = patterns::user_allowed(channel, user) {
            return if listed { Ok(()) } else { Err(not_listed()) };
        }
        if let Some(t) = channel_token {
            let c = self.node.verifier().verify(t, TokenKind::Channel)?;
            if c.channel.as_deref() != Some(channel) {
                return Err(EngineError::new(
                    ErrorCode::TokenInvalid,
                    "the channel token is for another channel",
                ));
            }
            if c.sub != *user {
                return Err(EngineError::new(
                    ErrorCode::TokenInvalid,
                    "the channel token is for another user",
                ));
            }
            return Ok(());
        }
        if ns.private {
            return Err(EngineError::new(
                ErrorCode::PermissionDenied,
                "private channel: a channel token is required",
            ));
        }
        if ns.allow_subscribe || patterns::any_matches(self.claim_patterns(false), channel) {
            return Ok(());
        }
        Err(EngineError::new(
            ErrorCode::PermissionDenied,
            "your token does not grant this channel",
        ))
    }

    /// History and presence: allowed to subscribers and to whoever may subscribe.
    fn may_read(&self, channel: &str, ns: &NamespaceOptions) -> Result<(), EngineError> {
        if self.subs.contains_key(channel) {
            return Ok(());
        }
        self.may_subscribe(channel, ns, None)
    }

    /// Publish permission: `allow_publish` or a `publish` pattern; on user-limited channels the
    /// user must also be listed.
    fn may_publish(&self, channel: &str, ns: &NamespaceOptions) -> Result<(), EngineError> {
        self.admitted(ns)?;
        if patterns::user_allowed(channel, &self.identity.user_id) == Some(false) {
            return Err(not_listed());
        }
        if ns.allow_publish || patterns::any_matches(self.claim_patterns(true), channel) {
            return Ok(());
        }
        Err(EngineError::new(
            ErrorCode::PermissionDenied,
            "you may not publish to this channel",
        ))
    }

    /// End the session: leave every channel (presence, `leave` pushes, node unsubscribe) and
    /// emit the `disconnect` event with `reason`.
    pub async fn end(mut self, reason: &str) {
        let subs: Vec<String> = self.subs.drain().map(|(c, _)| c).collect();
        for channel in subs {
            self.leave(&channel).await;
        }
        if self.announced {
            self.event(EventKind::Disconnect, None, Some(reason));
        }
    }
}

/// Record a backend that could not answer (down, 5xx after the retries, too slow) as a dead
/// letter; refusals are answers, not failures.
fn backend_failed(
    node: &Node,
    kind: &str,
    ctx: &RpcContext,
    target: Option<&str>,
    e: &EngineError,
) {
    if !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout) {
        return;
    }
    node.dead_letters().push(
        "backend_failed",
        serde_json::json!({
            "proxy": kind,
            "target": target,
            "client_id": ctx.client_id,
            "user_id": ctx.user_id,
            "code": e.code,
            "error": e.message,
        }),
    );
}

fn not_listed() -> EngineError {
    EngineError::new(
        ErrorCode::PermissionDenied,
        "this user-limited channel does not list you",
    )
}

impl Drop for Session {
    fn drop(&mut self) {
        self.node
            .deregister(&self.identity.user_id, &self.client_id);
    }
}

fn subscribed(
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
    }
}

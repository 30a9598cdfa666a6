//! The per-connection protocol state machine: `handle(request)` queues replies and pushes on the
//! connection's outlet. It knows nothing about sockets, so it is tested without one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_proto::envelope::{ClientInfo, Connected, DecodeError, ErrorPayload};
use herald_proto::{CloseCode, ErrorCode, Format, Id, ServerKind};
use serde::Serialize;

use crate::auth::Identity;
use crate::journal::{DeadLetterKind, EventKind};
use crate::limits::{Bucket, CommandLimiter, CommandRate, Rate, Verdict};
use crate::node::{Node, ServerCommand};
use crate::outlet::{Outlet, QueueLimits};
use crate::rpc::Headers;

mod backend;
mod dispatch;
mod resume;
mod subs;
mod subscribe;

/// Server-side commands queued per session.
const SERVER_COMMANDS: usize = 64;

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
    id: Token,
    client_id: Arc<str>,
    identity: Identity,
    expiry: Option<Expiry>,
    limiter: Option<CommandLimiter>,
    /// What this connection may add to the node's journals (dead letters; subscribe-churn events).
    quota: JournalQuota,
    /// The client's IP (for its per-IP share of the journals), when the transport knows it.
    client_ip: Option<std::net::IpAddr>,
    resume_token: Token,
    subs: subs::Subs,
    violations: u32,
    /// The `connect` event was emitted (at the first command that is not `resume`).
    announced: bool,
    /// Server-side commands for this session (users only).
    server_cmds: Option<(
        tokio::sync::mpsc::Sender<ServerCommand>,
        tokio::sync::mpsc::Receiver<ServerCommand>,
    )>,
    /// When the session began (milliseconds on [`crate::limits::clock_ms`]).
    started_ms: u64,
    /// What few sessions use, made on first use: every connection task carries its session.
    rare: Option<Box<Rare>>,
}

/// The parts of a session that most never use (each connection task holds 8 bytes for them,
/// not 40).
#[derive(Default)]
struct Rare {
    /// `rpc` calls in flight (created on the first call).
    rpc_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Admitted at the handshake by this resume token (instead of the connect proxy): the first
    /// command must be the `resume` that uses it.
    resume_only: Option<Box<str>>,
    /// Forwarded handshake headers for backend proxies.
    forwarded: Option<Headers>,
    /// Channel info the subscribe proxy returned, by channel (boxed again: forwarded headers
    /// alone, on every connection when `forward_headers` is set, should not carry an empty map).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of a 48-byte empty map in every box of forwarded headers"
    )]
    chan_info: Option<Box<HashMap<String, serde_json::Value>>>,
}

impl crate::occasional::Occasional for Rare {
    fn is_empty(&self) -> bool {
        self.rpc_slots.is_none()
            && self.resume_only.is_none()
            && self.forwarded.is_none()
            && self.chan_info.is_none()
    }
}

/// One connection's share of the node's bounded journals, so that one noisy client cannot push
/// everyone else's dead letters and events out (counters stay exact: what is not kept is counted).
struct JournalQuota {
    dead_letters: Bucket,
    events: Bucket,
}

impl JournalQuota {
    /// Per minute, as the node's config says (the rates are not kept: 16 bytes, not 40).
    fn rates(cfg: &crate::config::SessionConfig) -> (Rate, Rate) {
        let minute = Duration::from_secs(60);
        let per_minute = |n| Rate::new(n, minute, n);
        (
            per_minute(cfg.dead_letters_per_connection),
            per_minute(cfg.events_per_connection),
        )
    }

    fn new(cfg: &crate::config::SessionConfig) -> Self {
        let (dead_letters, events) = Self::rates(cfg);
        JournalQuota {
            dead_letters: Bucket::new(dead_letters),
            events: Bucket::new(events),
        }
    }

    fn take_dead_letter(&self, cfg: &crate::config::SessionConfig) -> bool {
        self.dead_letters.take(Self::rates(cfg).0)
    }

    fn take_event(&self, cfg: &crate::config::SessionConfig) -> bool {
        self.events.take(Self::rates(cfg).1)
    }
}

/// The node's command rate limit, if any.
fn command_rate(cfg: &crate::config::EngineConfig) -> Option<CommandRate> {
    let l = &cfg.limits;
    CommandRate::new(
        l.commands_per_second,
        l.commands_burst,
        l.rate_limited_close_after,
    )
}

/// When the connection token expires and when to ask for a fresh one.
#[derive(Debug, Clone, Copy)]
struct Expiry {
    expire_at: tokio::time::Instant,
    /// How long before `expire_at` to ask for a fresh token, in milliseconds (24 bytes in every
    /// connection task instead of a second 16-byte instant; at most ~49 days).
    refresh_lead_ms: u32,
    refresh_sent: bool,
}

impl Expiry {
    fn refresh_at(&self) -> tokio::time::Instant {
        let lead = Duration::from_millis(self.refresh_lead_ms.into());
        self.expire_at.checked_sub(lead).unwrap_or(self.expire_at)
    }
}

fn expiry(identity: &Identity, refresh_before: Duration) -> Option<Expiry> {
    let exp_ms = identity.claims.as_ref()?.exp.saturating_mul(1000);
    let left = Duration::from_millis(exp_ms.saturating_sub(crate::publication::now_ms()));
    let lead = refresh_before.min(left / 2).as_millis();
    Some(Expiry {
        expire_at: tokio::time::Instant::now() + left,
        refresh_lead_ms: u32::try_from(lead).unwrap_or(u32::MAX),
        refresh_sent: false,
    })
}

/// A random 128-bit id (session id, resume token), kept as bytes and written as 32 lowercase
/// hex digits: 16 bytes in the session instead of a 32-byte string on the heap (bytes, not a
/// `u128`, whose 16-byte alignment would pad the session and every connection task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token([u8; 16]);

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", u128::from_be_bytes(self.0))
    }
}

fn token() -> Token {
    Token(uuid::Uuid::new_v4().into_bytes())
}

impl Session {
    /// Start a session for a new connection on `node`, speaking `format`.
    pub fn new(node: &Arc<Node>, format: Format, identity: Identity) -> Self {
        let s = &node.config().session;
        let outlet = Outlet::new(
            format,
            QueueLimits {
                max_messages: s.queue_max_messages,
                max_bytes: s.queue_max_bytes,
            },
        );
        let client_id = node.next_client_id();
        let node = node.clone();
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
        let limiter = command_rate(cfg).map(CommandLimiter::new);
        let expiry = expiry(&identity, cfg.auth.refresh_before);
        let quota = JournalQuota::new(&cfg.session);
        Session {
            node,
            outlet,
            id: token(),
            client_id,
            identity,
            expiry,
            limiter,
            quota,
            client_ip: None,
            resume_token: token(),
            subs: subs::Subs::default(),
            violations: 0,
            announced: false,
            started_ms: crate::limits::clock_ms(),
            server_cmds,
            rare: None,
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

    /// Keep these handshake headers for backend proxies (`rpc`, subscribe, publish, refresh).
    pub fn set_forwarded_headers(&mut self, headers: Option<Headers>) {
        if headers.is_some() || self.forwarded().is_some() {
            self.rare_with(|r| r.forwarded = headers);
        }
    }

    /// Change the rarely used parts (made on first use, dropped again once empty).
    fn rare_with<T>(&mut self, f: impl FnOnce(&mut Rare) -> T) -> T {
        crate::occasional::with(&mut self.rare, f)
    }

    /// Forwarded handshake headers for backend proxies.
    fn forwarded(&self) -> Option<&Headers> {
        self.rare.as_ref()?.forwarded.as_ref()
    }

    /// This connection was admitted by a waiting session's resume token (no connect-proxy call):
    /// its first command must be the `resume` with that token, or it is closed with 4502.
    pub fn require_resume(&mut self, token: &str) {
        self.rare_with(|r| r.resume_only = Some(token.into()));
    }

    /// The client's IP: its connections share a per-IP quota of journal entries.
    pub fn set_client_ip(&mut self, ip: std::net::IpAddr) {
        self.client_ip = Some(ip);
    }

    /// The client's IP, when the transport told it.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.client_ip
    }

    /// What the session is, for the admin UI: its age and address, with the `transport` the
    /// caller (the task that owns it) knows.
    pub fn details(&self, transport: Option<&'static str>) -> crate::node::SessionDetails {
        crate::node::SessionDetails {
            client_id: self.client_id.to_string(),
            transport,
            age: Duration::from_millis(crate::limits::clock_ms().saturating_sub(self.started_ms)),
            address: self.client_ip,
        }
    }

    /// The current resume token.
    pub fn resume_token(&self) -> String {
        self.resume_token.to_string()
    }

    /// Number of subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// Who this client is, as shown on `channel` (presence, join/leave, publications).
    fn info(&self, channel: &str) -> ClientInfo {
        ClientInfo {
            client_id: self.client_id.to_string(),
            user_id: self.identity.user_id.to_string(),
            info: self.identity.claims.as_ref().and_then(|c| c.info.clone()),
            chan_info: self
                .rare
                .as_ref()
                .and_then(|r| r.chan_info.as_ref()?.get(channel).cloned()),
        }
    }

    fn encode<P: Serialize>(
        &self,
        kind: ServerKind,
        id: Option<&Id>,
        payload: &P,
    ) -> Option<Bytes> {
        self.encoded(herald_proto::encode(self.outlet.format, kind, id, payload))
    }

    /// An encoded frame, or `None` (logged) when the payload could not be encoded.
    fn encoded(&self, r: Result<Bytes, herald_proto::codec::EncodeError>) -> Option<Bytes> {
        r.inspect_err(
            |e| tracing::error!(client = %self.client_id, error = %e, "cannot encode reply"),
        )
        .ok()
    }

    fn reply<P: Serialize>(&self, id: &Option<Id>, payload: &P) {
        if let Some(id) = id
            && let Some(b) = self.encode(ServerKind::Reply, Some(id), payload)
        {
            self.outlet.push_reply(b);
        }
    }

    fn error(&self, id: &Option<Id>, code: ErrorCode, message: &str) {
        metrics::counter!("herald_protocol_errors_total", "code" => code.as_str()).increment(1);
        let p = ErrorPayload::new(code, message);
        if let Some(b) = self.encode(ServerKind::Error, id.as_ref(), &p) {
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
            session_id: self.id.to_string(),
            resume_token: self.resume_token.to_string(),
            resume_grace_ms: self.node.config().session.resume_grace.as_millis() as u64,
            ping_interval_ms: hb.ping_interval_ms,
            pong_timeout_ms: hb.pong_timeout_ms,
            server: concat!("herald/", env!("CARGO_PKG_VERSION")).to_owned(),
            protocol: self.outlet.format.subprotocol().to_owned(),
            user_id: self.identity.user_id.to_string(),
            expires_in_ms: self.expires_in_ms(),
        };
        if let Some(b) = self.encode(ServerKind::Connected, reply_to, &c) {
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
    fn dead_letter(&self, reason: DeadLetterKind, context: impl FnOnce() -> serde_json::Value) {
        if self.quota.take_dead_letter(&self.node.config().session)
            && self.node.journal_allowed(self.client_ip)
        {
            self.node.dead_letters().push(reason, context());
        } else {
            self.node.dead_letters().suppressed(reason);
        }
    }

    /// Charge one inbound message to the command rate limiter, whatever it turns out to be.
    /// `Some` = answered (`rate_limited`) or closing; the message must not be processed.
    fn charge(&mut self, id: &Option<Id>) -> Option<Flow> {
        let l = self.limiter.as_mut()?;
        // Without a limit now (a limiter exists only where there was one), everything passes.
        let rate = command_rate(self.node.config())?;
        match l.check(rate) {
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
        self.dead_letter(DeadLetterKind::Frame(e.code), || {
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
            DeadLetterKind::Frame(ErrorCode::WrongFrameType),
            || serde_json::json!({"client_id": &*self.client_id, "user_id": self.identity.user_id}),
        );
        self.error(
            &None,
            ErrorCode::WrongFrameType,
            "frame type does not match the negotiated subprotocol",
        );
        self.violation()
    }

    fn event(&self, kind: EventKind, channel: Option<&str>, reason: Option<&'static str>) {
        // Session starts and ends are always kept; subscription churn is within the quota.
        let churn = !matches!(kind, EventKind::Connect | EventKind::Disconnect);
        if churn
            && !(self.quota.take_event(&self.node.config().session)
                && self.node.journal_allowed(self.client_ip))
        {
            self.node.events().suppressed(kind);
            return;
        }
        let duration = (kind == EventKind::Disconnect)
            .then(|| crate::limits::clock_ms().saturating_sub(self.started_ms));
        let (client, user) = match kind {
            EventKind::ChannelOccupied | EventKind::ChannelVacated => (None, None),
            _ => (Some(&*self.client_id), Some(&*self.identity.user_id)),
        };
        self.node
            .events()
            .push(kind, client, user, channel, reason, duration);
    }

    /// End the session: leave every channel (presence, `leave` pushes, node unsubscribe) and
    /// emit the `disconnect` event with `reason`.
    pub async fn end(mut self, reason: &'static str) {
        let subs: Vec<String> = self.subs.drain().map(|(c, _)| c).collect();
        for channel in subs {
            self.leave(&channel).await;
        }
        if self.announced {
            self.event(EventKind::Disconnect, None, Some(reason));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.node
            .deregister(&self.identity.user_id, &self.client_id);
        // Dropped without `end` (its task panicked): at least no ghost subscriber stays in the
        // hub (presence and the engine's subscription need `end`, which cannot run here).
        let subs: Vec<(String, _)> = self.subs.drain().collect();
        for (channel, _) in subs {
            tracing::error!(client = %self.client_id, channel, "session dropped without ending");
            // (The engine subscription, undone asynchronously by `end`, stays.)
            let _ = self.node.hub().remove(&channel, &self.client_id);
            metrics::gauge!("herald_subscriptions").decrement(1.0);
        }
    }
}

#[cfg(test)]
mod tests;

//! The node: the façade for engine operations and the owner of sessions waiting for `resume`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_proto::envelope::ClientInfo;
use herald_proto::{CloseCode, Data, ErrorCode, Format};

use crate::auth::{Identity, TokenKind, Verifier};
use crate::broker::{Broker, ChannelEvent, PublishOutcome, PublishRequest};
use crate::config::{EngineConfig, NamespaceOptions};
use crate::error::EngineError;
use crate::hub::Hub;
use crate::limits::KeyedLimiter;
use crate::outlet::{Outlet, QueueLimits};
use crate::presence::PresenceStore;
use crate::session::Session;
use crate::sync::lock;

/// A live session of a user, for revocation and per-user disconnects.
struct Registered {
    client_id: Arc<str>,
    outlet: std::sync::Weak<Outlet>,
    jti: Option<String>,
    commands: Option<tokio::sync::mpsc::Sender<crate::session::ServerCommand>>,
}

/// Heartbeat settings announced in the `connected` message.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// Server ping interval, ms.
    pub ping_interval_ms: u64,
    /// Pong timeout, ms.
    pub pong_timeout_ms: u64,
}

struct Parked {
    session: Session,
    generation: u64,
}

/// Sessions waiting for `resume`, by token, and their parking order (oldest first).
#[derive(Default)]
struct Parking {
    by_token: HashMap<String, Parked>,
    order: std::collections::BTreeMap<u64, String>,
}

impl Parking {
    fn remove(&mut self, token: &str) -> Option<Parked> {
        let p = self.by_token.remove(token)?;
        self.order.remove(&p.generation);
        Some(p)
    }

    fn oldest(&mut self) -> Option<Parked> {
        let (_, token) = self.order.pop_first()?;
        self.by_token.remove(&token)
    }

    fn len(&self) -> usize {
        self.by_token.len()
    }
}

/// One Herald node.
pub struct Node {
    config: EngineConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) presence: Arc<dyn PresenceStore>,
    hub: Arc<Hub>,
    parked: Mutex<Parking>,
    next_client: AtomicU64,
    generation: AtomicU64,
    node_id: String,
    verifier: Arc<Verifier>,
    users: Mutex<HashMap<String, Vec<Registered>>>,
    publish_limiter: Option<KeyedLimiter<String>>,
    rpc: std::sync::OnceLock<Arc<dyn crate::rpc::RpcHandler>>,
    channel_proxy: std::sync::OnceLock<Arc<dyn crate::rpc::ChannelProxy>>,
    control: std::sync::OnceLock<Arc<dyn crate::cluster::ControlBus>>,
    events: crate::journal::EventLog,
    dead_letters: crate::journal::DeadLetters,
    /// Heartbeat settings announced to clients.
    pub heartbeat: Heartbeat,
}

impl Node {
    /// Build a node over a broker and a presence store, verifying tokens with `verifier`.
    pub fn new(
        config: EngineConfig,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        heartbeat: Heartbeat,
        verifier: Arc<Verifier>,
    ) -> Arc<Node> {
        let hub = Arc::new(Hub::default());
        broker.set_handler(hub.clone());
        let node_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let l = &config.limits;
        let publish_limiter =
            KeyedLimiter::new(l.publish_per_second_per_user, l.publish_burst_per_user);
        Arc::new(Node {
            verifier,
            users: Mutex::new(HashMap::new()),
            publish_limiter,
            rpc: std::sync::OnceLock::new(),
            channel_proxy: std::sync::OnceLock::new(),
            control: std::sync::OnceLock::new(),
            events: crate::journal::EventLog::new(&node_id, config.session.event_log_size),
            dead_letters: crate::journal::DeadLetters::new(config.session.dead_letter_size),
            config,
            broker,
            presence,
            hub,
            parked: Mutex::new(Parking::default()),
            next_client: AtomicU64::new(1),
            generation: AtomicU64::new(1),
            node_id,
            heartbeat,
        })
    }

    /// Join a cluster: server API commands are broadcast over `bus` (once).
    pub fn set_control_bus(&self, bus: Arc<dyn crate::cluster::ControlBus>) -> bool {
        self.control.set(bus).is_ok()
    }

    /// The cluster's control bus, when this node is part of one.
    pub fn control_bus(&self) -> Option<&Arc<dyn crate::cluster::ControlBus>> {
        self.control.get()
    }

    /// Apply a command here and broadcast it to the other nodes. Returns how many sessions it
    /// touched on this node; fails (after applying it here) when the broadcast fails.
    pub async fn cluster(&self, msg: crate::cluster::ControlMessage) -> Result<usize, EngineError> {
        let here = self.apply_control(&msg);
        if let Some(bus) = self.control.get() {
            let env = crate::cluster::ControlEnvelope {
                from: self.node_id.clone(),
                msg,
            };
            let payload = serde_json::to_vec(&env)
                .map_err(|e| EngineError::new(ErrorCode::Internal, e.to_string()))?;
            use crate::cluster::ControlMessage as M;
            if let M::RevokeUser { expires_at, .. } | M::RevokeToken { expires_at, .. } = &env.msg {
                bus.keep(&payload, *expires_at).await?;
            }
            bus.broadcast(payload).await?;
        }
        Ok(here)
    }

    /// Apply the kept cluster commands (revocations) that are still in force: call once when
    /// joining a cluster, before serving. Returns how many were applied.
    pub async fn replay_kept(&self) -> Result<usize, EngineError> {
        let Some(bus) = self.control.get() else {
            return Ok(0);
        };
        let kept = bus.kept().await?;
        for payload in &kept {
            match serde_json::from_slice::<crate::cluster::ControlEnvelope>(payload) {
                Ok(env) => {
                    self.apply_control(&env.msg);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed kept control message"),
            }
        }
        Ok(kept.len())
    }

    /// A control message from the bus: apply it unless this node sent it.
    pub fn on_control(&self, payload: &[u8]) {
        match serde_json::from_slice::<crate::cluster::ControlEnvelope>(payload) {
            Ok(env) if env.from != self.node_id => {
                let n = self.apply_control(&env.msg);
                tracing::debug!(from = %env.from, sessions = n, "applied a cluster command");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed control message"),
        }
    }

    fn apply_control(&self, msg: &crate::cluster::ControlMessage) -> usize {
        use crate::cluster::ControlMessage as M;
        match msg {
            M::DisconnectUser { user } => self.disconnect_user(user, CloseCode::ForceDisconnect),
            M::DisconnectClient { client } => {
                usize::from(self.disconnect_client(client, CloseCode::ForceDisconnect))
            }
            M::RevokeUser { user, expires_at } => self.revoke_user(user, *expires_at),
            M::RevokeToken { jti, expires_at } => self.revoke_token(jti, *expires_at),
            M::Subscribe { user, channel } => self.command_user(
                user,
                crate::session::ServerCommand::Subscribe(channel.clone()),
            ),
            M::Unsubscribe { user, channel } => self.command_user(
                user,
                crate::session::ServerCommand::Unsubscribe(channel.clone()),
            ),
        }
    }

    /// Whether the engine's backing services are reachable (for `/readyz`).
    pub fn ready(&self) -> bool {
        self.broker.ready()
    }

    /// The engine configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The local subscription index.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// This node's random id.
    pub fn id(&self) -> &str {
        &self.node_id
    }

    /// Namespace options for a channel, validating its name.
    pub fn namespace(&self, channel: &str) -> Result<&NamespaceOptions, EngineError> {
        herald_proto::channel::validate_channel(channel)
            .map_err(|m| EngineError::new(ErrorCode::InvalidChannel, m))?;
        let ns = herald_proto::channel::namespace_of(channel);
        self.config.namespace(ns).ok_or_else(|| {
            EngineError::new(
                ErrorCode::UnknownNamespace,
                format!("namespace {ns:?} is not configured"),
            )
        })
    }

    /// Lifecycle events.
    pub fn events(&self) -> &crate::journal::EventLog {
        &self.events
    }

    /// Dead letters.
    pub fn dead_letters(&self) -> &crate::journal::DeadLetters {
        &self.dead_letters
    }

    /// Register the handler of `rpc` commands (once; later calls return false).
    pub fn set_rpc_handler(&self, handler: Arc<dyn crate::rpc::RpcHandler>) -> bool {
        self.rpc.set(handler).is_ok()
    }

    /// Register the subscribe/publish proxy (once; later calls return false).
    pub fn set_channel_proxy(&self, proxy: Arc<dyn crate::rpc::ChannelProxy>) -> bool {
        self.channel_proxy.set(proxy).is_ok()
    }

    /// The subscribe/publish proxy, or `unavailable` when none is registered.
    pub(crate) fn channel_proxy(&self) -> Result<&Arc<dyn crate::rpc::ChannelProxy>, EngineError> {
        self.channel_proxy.get().ok_or_else(|| {
            EngineError::new(
                ErrorCode::Unavailable,
                "the namespace asks for a backend proxy but none is configured",
            )
        })
    }

    /// The registered `rpc` handler.
    pub fn rpc_handler(&self) -> Option<&Arc<dyn crate::rpc::RpcHandler>> {
        self.rpc.get()
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// Authenticate a new connection: with a connection token, or anonymously when none is
    /// given and `auth.anonymous` allows it.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, EngineError> {
        match token {
            Some(t) => Ok(Identity::from_claims(
                self.verifier.verify(t, TokenKind::Connection)?,
            )),
            None if self.config.auth.anonymous => Ok(Identity::anonymous()),
            None => Err(EngineError::new(
                ErrorCode::Unauthorized,
                "a connection token is required",
            )),
        }
    }

    /// Whether `key` (a user id, or a client id for anonymous clients) may publish now.
    pub(crate) fn publish_allowed(&self, key: &str) -> bool {
        self.publish_limiter
            .as_ref()
            .is_none_or(|l| l.allow(&key.to_owned()))
    }

    /// Periodic upkeep: forget idle rate-limit keys and expired revocations.
    pub fn upkeep(&self) {
        if let Some(l) = &self.publish_limiter {
            l.retain_recent();
        }
        self.verifier.revocations().sweep();
    }

    pub(crate) fn register(
        &self,
        user: &str,
        client_id: &Arc<str>,
        outlet: &Arc<Outlet>,
        jti: Option<String>,
        commands: Option<tokio::sync::mpsc::Sender<crate::session::ServerCommand>>,
    ) {
        if user.is_empty() {
            return;
        }
        let mut users = lock(&self.users);
        let list = users.entry(user.to_owned()).or_default();
        list.retain(|r| r.client_id != *client_id);
        list.push(Registered {
            client_id: client_id.clone(),
            outlet: Arc::downgrade(outlet),
            jti,
            commands,
        });
    }

    pub(crate) fn deregister(&self, user: &str, client_id: &str) {
        if user.is_empty() {
            return;
        }
        let mut users = lock(&self.users);
        if let Some(list) = users.get_mut(user) {
            list.retain(|r| &*r.client_id != client_id);
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    fn close_where(&self, code: CloseCode, user: Option<&str>, jti: Option<&str>) -> usize {
        let users = lock(&self.users);
        let mut closed = 0;
        let lists: Vec<&Vec<Registered>> = match user {
            Some(u) => users.get(u).into_iter().collect(),
            None => users.values().collect(),
        };
        for r in lists.into_iter().flatten() {
            if jti.is_some_and(|j| r.jti.as_deref() != Some(j)) {
                continue;
            }
            if let Some(o) = r.outlet.upgrade() {
                o.close(code);
                closed += 1;
            }
        }
        closed
    }

    /// Revoke every token of `user` issued up to now, until `expires_at` (Unix seconds), and close
    /// the user's connections (4503; waiting sessions can no longer be resumed). Returns the number
    /// of sessions closed.
    pub fn revoke_user(&self, user: &str, expires_at: u64) -> usize {
        self.verifier.revocations().revoke_user(user, expires_at);
        self.close_where(CloseCode::TokenRevoked, Some(user), None)
    }

    /// Revoke one token by `jti` until `expires_at` and close the sessions using it.
    pub fn revoke_token(&self, jti: &str, expires_at: u64) -> usize {
        self.verifier.revocations().revoke_token(jti, expires_at);
        self.close_where(CloseCode::TokenRevoked, None, Some(jti))
    }

    /// Send a server-side command to every session of `user` (live or waiting for resume).
    /// Returns the number of sessions it was queued for.
    pub fn command_user(&self, user: &str, cmd: crate::session::ServerCommand) -> usize {
        let users = lock(&self.users);
        users
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|r| r.commands.as_ref())
            .filter(|tx| tx.try_send(cmd.clone()).is_ok())
            .count()
    }

    /// Close every session of `user` with `code`. Returns the number closed.
    pub fn disconnect_user(&self, user: &str, code: CloseCode) -> usize {
        self.close_where(code, Some(user), None)
    }

    /// Start a session for a new connection.
    pub fn new_session(self: &Arc<Self>, format: Format, identity: Identity) -> Session {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = Arc::from(format!("{}-{n}", self.node_id).as_str());
        let s = &self.config.session;
        let outlet = Outlet::new(
            format,
            QueueLimits {
                max_messages: s.queue_max_messages,
                max_bytes: s.queue_max_bytes,
            },
        );
        Session::new(self.clone(), outlet, client_id, identity)
    }

    /// Publish on behalf of a client or the application (history, idempotency and fan-out).
    pub async fn publish(
        &self,
        channel: &str,
        data: Data,
        info: Option<ClientInfo>,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, EngineError> {
        let ns = self.namespace(channel)?;
        let (history_size, history_ttl) = if ns.history_enabled() {
            (ns.history_size, ns.history_ttl)
        } else {
            (0, Default::default())
        };
        let req = PublishRequest {
            data,
            info,
            idempotency_key,
            history_size,
            history_ttl,
            idempotency_window: self.config.session.idempotency_window,
        };
        let out = self.broker.publish(channel, req).await?;
        if !out.duplicate {
            metrics::counter!("herald_messages_published_total").increment(1);
        }
        Ok(out)
    }

    /// Drop a channel's history (server API).
    pub async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        self.namespace(channel)?;
        Ok(self.broker.remove_history(channel).await?)
    }

    /// Clients subscribed to a channel, cluster-wide (server API; no permission checks).
    pub async fn presence(&self, channel: &str) -> Result<Vec<ClientInfo>, EngineError> {
        if !self.namespace(channel)?.presence {
            return Err(EngineError::new(
                ErrorCode::PresenceDisabled,
                "presence is disabled in this namespace",
            ));
        }
        Ok(self.presence.list(channel).await?)
    }

    /// Client and user counts of a channel (server API).
    pub async fn presence_stats(
        &self,
        channel: &str,
    ) -> Result<herald_proto::envelope::PresenceStats, EngineError> {
        if !self.namespace(channel)?.presence {
            return Err(EngineError::new(
                ErrorCode::PresenceDisabled,
                "presence is disabled in this namespace",
            ));
        }
        Ok(self.presence.stats(channel).await?)
    }

    /// Close the session with this client id (authenticated users only). Returns whether found.
    pub fn disconnect_client(&self, client_id: &str, code: CloseCode) -> bool {
        let users = lock(&self.users);
        for r in users.values().flatten() {
            if &*r.client_id == client_id
                && let Some(o) = r.outlet.upgrade()
            {
                o.close(code);
                return true;
            }
        }
        false
    }

    /// Read a channel's history (for the server API and tests; no permission checks).
    pub async fn history(
        &self,
        channel: &str,
        query: crate::broker::HistoryQuery,
    ) -> Result<crate::broker::HistoryPage, EngineError> {
        self.namespace(channel)?;
        Ok(self.broker.history(channel, query).await?)
    }

    pub(crate) async fn emit(&self, channel: &str, event: ChannelEvent) {
        if let Err(e) = self.broker.publish_event(channel, event).await {
            tracing::warn!(channel, error = %e, "join/leave event lost");
        }
    }

    /// A connection ended. `clean` (close 1000, or an error that forbids resuming) ends the session
    /// at once; otherwise it waits `resume_grace` for a `resume`.
    pub async fn disconnected(self: &Arc<Self>, session: Session, clean: bool) {
        let grace = self.config.session.resume_grace;
        if clean || grace.is_zero() || session.outlet().close_requested().is_some() {
            let reason = match session.outlet().close_requested() {
                Some(code) => code.reason(),
                None if clean => "closed",
                None => "connection lost (resume disabled)",
            };
            session.end(reason).await;
            return;
        }
        let token = session.resume_token().to_owned();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let max = self.config.session.max_waiting_sessions;
        let evicted = {
            let mut parked = lock(&self.parked);
            let evicted = (max > 0 && parked.len() >= max)
                .then(|| parked.oldest())
                .flatten();
            parked.order.insert(generation, token.clone());
            parked.by_token.insert(
                token.clone(),
                Parked {
                    session,
                    generation,
                },
            );
            evicted
        };
        metrics::gauge!("herald_sessions_waiting").increment(1.0);
        if let Some(old) = evicted {
            metrics::gauge!("herald_sessions_waiting").decrement(1.0);
            metrics::counter!("herald_sessions_evicted_total").increment(1);
            old.session
                .end("too many sessions waiting for resume on this node")
                .await;
        }
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let expired = {
                let mut parked = lock(&node.parked);
                match parked.by_token.get(&token) {
                    Some(p) if p.generation == generation => parked.remove(&token),
                    _ => None,
                }
            };
            if let Some(p) = expired {
                metrics::gauge!("herald_sessions_waiting").decrement(1.0);
                p.session
                    .end("connection lost; resume grace period ended")
                    .await;
            }
        });
    }

    /// Take a waiting session by its resume token, if it belongs to `user` (a resume token alone
    /// must not switch users).
    pub(crate) fn take_parked(&self, token: &str, user: &str) -> Option<Session> {
        let p = {
            let mut parked = lock(&self.parked);
            if parked.by_token.get(token)?.session.user_id() != user {
                return None;
            }
            parked.remove(token)?
        };
        metrics::gauge!("herald_sessions_waiting").decrement(1.0);
        Some(p.session)
    }

    /// End every waiting session now (shutdown).
    pub async fn end_waiting_sessions(&self) {
        let all: Vec<Parked> = {
            let mut parked = lock(&self.parked);
            parked.order.clear();
            parked.by_token.drain().map(|(_, p)| p).collect()
        };
        for p in all {
            metrics::gauge!("herald_sessions_waiting").decrement(1.0);
            p.session.end("server shutdown").await;
        }
    }

    /// Sessions currently waiting for `resume`.
    pub fn waiting_sessions(&self) -> usize {
        lock(&self.parked).len()
    }
}

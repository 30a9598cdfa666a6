//! The node: the façade for engine operations, the registry of live sessions and the owner of
//! sessions waiting for `resume` (kept as [`Waiting`]: the node does not know the session type).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_proto::envelope::ClientInfo;
use herald_proto::{Data, ErrorCode};

use crate::auth::{Identity, TokenKind, Verifier};
use crate::broker::{Broker, ChannelEvent, PublishOutcome, PublishRequest};
use crate::config::{EngineConfig, NamespaceOptions};
use crate::error::EngineError;
use crate::hub::Hub;
use crate::limits::KeyedLimiter;
use crate::presence::PresenceStore;

mod cluster;
mod parked;
mod redelivery;
mod registry;

use crate::sync::lock;
use parked::Parking;
pub use parked::Waiting;
pub use redelivery::Sweeper;
pub(crate) use redelivery::catch_up;
use registry::Registered;
pub use registry::{DescribeReply, ServerCommand, SessionDetails, SessionInfo};

/// Heartbeat settings announced in the `connected` message.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// Server ping interval, ms.
    pub ping_interval_ms: u64,
    /// Pong timeout, ms.
    pub pong_timeout_ms: u64,
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
    /// Journal entries (dead letters, subscription events) per client IP.
    journal_limiter: Option<KeyedLimiter<std::net::IpAddr>>,
    rpc: std::sync::OnceLock<Arc<dyn crate::rpc::RpcHandler>>,
    channel_proxy: std::sync::OnceLock<Arc<dyn crate::rpc::ChannelProxy>>,
    control: std::sync::OnceLock<Arc<dyn crate::cluster::ControlPlane>>,
    relay: std::sync::OnceLock<Arc<dyn crate::cluster::RelayHandler>>,
    events: crate::journal::EventLog,
    dead_letters: crate::journal::DeadLetters,
    sweeper: Sweeper,
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
            journal_limiter: KeyedLimiter::new(
                config.session.journal_per_ip_per_second,
                config.session.journal_per_ip_per_second.saturating_mul(60),
            ),
            rpc: std::sync::OnceLock::new(),
            channel_proxy: std::sync::OnceLock::new(),
            control: std::sync::OnceLock::new(),
            relay: std::sync::OnceLock::new(),
            events: crate::journal::EventLog::new(&node_id, config.session.event_log_size),
            dead_letters: crate::journal::DeadLetters::new(config.session.dead_letter_size),
            sweeper: Sweeper::default(),
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

    /// The at-least-once subscriptions' redelivery clock.
    pub fn sweeper(&self) -> &Sweeper {
        &self.sweeper
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
        if let Some(l) = &self.journal_limiter {
            l.retain_recent();
        }
        self.verifier.revocations().sweep();
    }

    /// Whether a connection from `ip` may add one more journal entry (per-IP share).
    pub(crate) fn journal_allowed(&self, ip: Option<std::net::IpAddr>) -> bool {
        match (&self.journal_limiter, ip) {
            (Some(l), Some(ip)) => l.allow(&ip),
            _ => true,
        }
    }

    /// A fresh client id for a new connection on this node (`<node id>-<n>`).
    pub(crate) fn next_client_id(&self) -> Arc<str> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}-{n}", self.node_id).as_str())
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
        self.publish_in(channel, ns, data, info, idempotency_key)
            .await
    }

    /// [`Node::publish`] to a channel whose name was validated and whose namespace `ns` was
    /// looked up already (a session's `publish` needs it first for the permission check).
    pub(crate) async fn publish_in(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        data: Data,
        info: Option<ClientInfo>,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, EngineError> {
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
}

#[cfg(test)]
mod tests;

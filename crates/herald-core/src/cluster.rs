//! Cluster-wide commands and node discovery. What the server API does to users and clients
//! (disconnect, revoke, server-side subscribe) is applied on this node and broadcast to the
//! others over a [`ControlBus`] (the Redis engine's control topic); nodes announce themselves so
//! `info` and `/metrics` can show the cluster. A single node has no bus and needs none.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::broker::BrokerError;

/// A command every node applies to its own sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Close every session of a user (4501).
    DisconnectUser {
        /// User id.
        user: String,
    },
    /// Close one client (4501).
    DisconnectClient {
        /// Client id.
        client: String,
    },
    /// Revoke a user's tokens issued so far, closing their sessions.
    RevokeUser {
        /// User id.
        user: String,
        /// Until when (Unix seconds).
        expires_at: u64,
    },
    /// Revoke one token by `jti`.
    RevokeToken {
        /// Token id.
        jti: String,
        /// Until when (Unix seconds).
        expires_at: u64,
    },
    /// Subscribe a user's sessions to a channel.
    Subscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
    },
    /// Unsubscribe a user's sessions from a channel.
    Unsubscribe {
        /// User id.
        user: String,
        /// Channel.
        channel: String,
    },
    /// A message for the transport layer of one node (an HTTP transport request routed to the
    /// node that holds its session, or the answer routed back); other nodes ignore it.
    Relay {
        /// The node it is for.
        to: String,
        /// Opaque to the engine (the transport's own JSON).
        payload: String,
    },
}

/// Receives [`ControlMessage::Relay`] payloads addressed to this node (the transport layer
/// installs one with [`crate::Node::set_relay_handler`]).
pub trait RelayHandler: Send + Sync + 'static {
    /// A payload from node `from`.
    fn on_relay(&self, from: &str, payload: &str);
}

/// A control message with the node it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEnvelope {
    /// Sender node id (a node ignores its own messages: it applied them already).
    pub from: String,
    /// The command.
    pub msg: ControlMessage,
}

/// A node as it announces itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: String,
    /// Where clients reach it (`host:port`).
    pub address: String,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Server version.
    pub version: String,
    /// When this announcement was made (ms since the Unix epoch).
    pub updated_ms: u64,
    /// What the node is doing, for per-node charts (absent from nodes that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// Most publish-to-send buckets a [`NodeLoad`] carries (Herald records 14).
pub const MAX_LOAD_BUCKETS: usize = 32;

/// A node's load as it announces it: gauges now and counters since the node started (the
/// reader turns two announcements into rates). Every field defaults, so an announcement with
/// fewer fields (an older or newer node) still parses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeLoad {
    /// Subscriptions of the node's sessions.
    pub subscriptions: u64,
    /// Channels with a subscriber on the node.
    pub channels: u64,
    /// Client messages received (every type).
    pub messages_in: u64,
    /// Frames sent to clients.
    pub messages_out: u64,
    /// Publications accepted by the node.
    pub published: u64,
    /// Sessions closed as slow consumers.
    pub slow_consumer_disconnects: u64,
    /// Messages dropped from outbound queues.
    pub queue_dropped: u64,
    /// Protocol errors answered (every code).
    pub errors: u64,
    /// Cumulative publish-to-send latency buckets: (upper bound in seconds, `None` for `+Inf`;
    /// count), at most [`MAX_LOAD_BUCKETS`].
    pub publish_to_send: Vec<(Option<f64>, u64)>,
}

/// Receives the control messages other nodes broadcast (the node; engines call it).
pub trait ControlHandler: Send + Sync + 'static {
    /// A control message from the bus (possibly this node's own: check `from`).
    fn on_control(&self, env: ControlEnvelope);
}

/// Broadcast of control messages between the nodes of a cluster.
///
/// Guarantee: best effort, at most once, to the nodes connected to the engine at the time; a node
/// that is down or reconnecting misses it (what must outlive that goes to a [`RevocationStore`]
/// too). The sender receives its own message and ignores it.
#[async_trait]
pub trait ControlBus: Send + Sync + 'static {
    /// Install the receiver (once, before joining).
    fn set_control_handler(&self, handler: Arc<dyn ControlHandler>);
    /// Send to every node.
    async fn broadcast(&self, env: &ControlEnvelope) -> Result<(), BrokerError>;
}

/// Who is in the cluster.
///
/// Guarantee: approximate — a node is listed while its last announcement is fresh (10 s); a node
/// that died stays listed until then.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// Record this node's current state (called every few seconds).
    async fn announce(&self, node: &NodeInfo) -> Result<(), BrokerError>;
    /// Nodes that announced themselves recently, by id.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
}

/// Control messages kept for nodes that start later (revocations).
///
/// Guarantee: a kept message is returned by [`RevocationStore::kept`] on every node until
/// `until` (Unix seconds), durably as far as the engine's storage is; an engine that cannot keep
/// anything (NATS without JetStream) returns [`BrokerError::Unsupported`] instead of pretending.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Keep `env` until `until`.
    async fn keep(&self, env: &ControlEnvelope, until: u64) -> Result<(), BrokerError>;
    /// The kept messages that have not expired.
    async fn kept(&self) -> Result<Vec<ControlEnvelope>, BrokerError>;
}

/// Connections per user, counted across the cluster (`max_connections_per_user`).
///
/// Guarantee, per engine: on Redis **atomic** (one script per acquire: never more than `max`
/// connections of a user counted at once, however many nodes acquire concurrently; a dead node's
/// entries expire with its lease); on NATS **approximate** (each node answers for its own
/// connections: nodes admitting the same user at the same instant can together exceed `max` by
/// one per racing node; a dead node's connections stop counting when it stops answering).
#[async_trait]
pub trait ConnectionLimiter: Send + Sync + 'static {
    /// Count connection `conn` of `user` unless the user already has `max`; `false` when over the
    /// limit.
    async fn acquire_connection(
        &self,
        user: &str,
        conn: &str,
        max: usize,
    ) -> Result<bool, BrokerError>;
    /// Stop counting a connection.
    async fn release_connection(&self, user: &str, conn: &str) -> Result<(), BrokerError>;
}

/// The connections of each user counted on one node (for the [`ConnectionLimiter`]s that count
/// in memory: the in-process cluster, and each NATS node for its own connections).
#[derive(Debug, Default)]
pub struct UserConnections {
    by_user: std::collections::HashMap<String, std::collections::HashSet<String>>,
}

impl UserConnections {
    /// The user's connections counted here.
    pub fn count(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, |s| s.len())
    }

    /// Count `conn` unless `elsewhere` plus this node's connections of the user reach `max`
    /// (a connection counted already stays counted).
    pub fn admit(&mut self, user: &str, conn: &str, elsewhere: usize, max: usize) -> bool {
        let set = self.by_user.entry(user.to_owned()).or_default();
        if set.contains(conn) {
            return true;
        }
        if set.len() + elsewhere >= max {
            if set.is_empty() {
                self.by_user.remove(user);
            }
            return false;
        }
        set.insert(conn.to_owned());
        true
    }

    /// Stop counting `conn`.
    pub fn release(&mut self, user: &str, conn: &str) {
        if let Some(set) = self.by_user.get_mut(user) {
            set.remove(conn);
            if set.is_empty() {
                self.by_user.remove(user);
            }
        }
    }
}

/// Everything a cluster engine provides besides its [`Broker`](crate::broker::Broker).
pub trait ControlPlane: ControlBus + NodeRegistry + RevocationStore + ConnectionLimiter {}

impl<T: ControlBus + NodeRegistry + RevocationStore + ConnectionLimiter> ControlPlane for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_without_load_still_parse_and_old_readers_skip_it() {
        let old = r#"{"id":"a","address":"127.0.0.1:1","connections":2,"uptime_ms":5,"version":"0.1.0","updated_ms":9}"#;
        let n: NodeInfo = serde_json::from_str(old).expect("old announcement");
        assert_eq!((n.connections, &n.load), (2, &None));
        assert_eq!(serde_json::to_string(&n).expect("json"), old);

        let load = NodeLoad {
            subscriptions: 3,
            messages_in: 7,
            publish_to_send: vec![(Some(0.001), 4), (None, 5)],
            ..NodeLoad::default()
        };
        let new = NodeInfo {
            load: Some(load.clone()),
            ..n
        };
        let json = serde_json::to_string(&new).expect("json");
        assert!(
            json.contains(r#""publish_to_send":[[0.001,4],[null,5]]"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NodeInfo>(&json).expect("new"), new);
        // A reader that predates `load` (the same fields, no `load`) ignores it.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OldNodeInfo {
            id: String,
            address: String,
            connections: u64,
            uptime_ms: u64,
            version: String,
            updated_ms: u64,
        }
        assert!(serde_json::from_str::<OldNodeInfo>(&json).is_ok());
        // Fields a newer node may add or leave out do not break this one.
        let partial = r#"{"subscriptions":1,"future_field":true}"#;
        let l: NodeLoad = serde_json::from_str(partial).expect("partial load");
        assert_eq!(l.subscriptions, 1);
    }
}

//! Cluster-wide commands and node discovery. What the server API does to users and clients
//! (disconnect, revoke, server-side subscribe) is applied on this node and broadcast to the
//! others over a [`ControlBus`] (the Redis engine's control topic); nodes announce themselves so
//! `info` and `/metrics` can show the cluster. A single node has no bus and needs none.

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
}

/// Carries control messages and node announcements between nodes.
#[async_trait]
pub trait ControlBus: Send + Sync + 'static {
    /// Send to every node (the sender receives it too and ignores it).
    async fn broadcast(&self, payload: Vec<u8>) -> Result<(), BrokerError>;
    /// Record this node's current state (called periodically).
    async fn announce(&self, node: &NodeInfo) -> Result<(), BrokerError>;
    /// Nodes that announced themselves recently.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
    /// Keep a control message until `until` (Unix seconds) for nodes that start later
    /// (revocations).
    async fn keep(&self, payload: &[u8], until: u64) -> Result<(), BrokerError>;
    /// The kept messages that have not expired.
    async fn kept(&self) -> Result<Vec<Vec<u8>>, BrokerError>;
    /// Count connection `conn` of `user` cluster-wide unless the user already has `max`; `false`
    /// when over the limit. Held until [`ControlBus::release_connection`] (or, for a node that
    /// died, until its lease runs out).
    async fn acquire_connection(
        &self,
        user: &str,
        conn: &str,
        max: usize,
    ) -> Result<bool, BrokerError>;
    /// Stop counting a connection.
    async fn release_connection(&self, user: &str, conn: &str) -> Result<(), BrokerError>;
}

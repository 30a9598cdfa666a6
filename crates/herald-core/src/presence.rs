//! The `PresenceStore` contract: who is subscribed where.

use async_trait::async_trait;
use herald_proto::envelope::{ClientInfo, PresenceStats};

use crate::broker::BrokerError;

/// Stores channel presence.
///
/// Contract: `add` is idempotent per `(channel, client_id)`; `remove` of an absent client is a
/// no-op; `stats` is computed without listing every member (counters), so it is cheap for large
/// channels; `users` counts distinct user ids, all anonymous clients (empty user id) together
/// counting as one user.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Record that a client is in a channel.
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError>;
    /// Remove a client from a channel.
    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), BrokerError>;
    /// Everyone in a channel.
    async fn list(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError>;
    /// Counts for a channel.
    async fn stats(&self, channel: &str) -> Result<PresenceStats, BrokerError>;
}

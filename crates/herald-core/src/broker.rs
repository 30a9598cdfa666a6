//! The `Broker` contract: ordering, history and cross-node delivery of publications.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::Data;
use herald_proto::envelope::{ClientInfo, StreamPosition};

use crate::publication::Publication;

/// Engine-level failures (never caused by client input).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing service is unreachable or failed; the operation may be retried.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// `since` names an epoch that is not the stream's current one.
    #[error("epoch mismatch")]
    EpochMismatch,
    /// The engine, as configured, cannot do this (retrying will not help): e.g. keeping
    /// revocations on NATS without JetStream, or a configuration it refuses.
    #[error("not supported by the engine: {0}")]
    Unsupported(String),
    /// The engine's configuration cannot work (found when connecting; not retryable).
    #[error("engine configuration: {0}")]
    Config(#[from] crate::de::ConfigError),
}

/// What a publish asks for.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Application data.
    pub data: Data,
    /// Publisher, when known.
    pub info: Option<ClientInfo>,
    /// Apply once per key within `idempotency_window`.
    pub idempotency_key: Option<String>,
    /// Publications to keep in history (0 = none).
    pub history_size: usize,
    /// History retention.
    pub history_ttl: Duration,
    /// Idempotency window.
    pub idempotency_window: Duration,
}

/// Result of a publish.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishOutcome {
    /// Offset assigned (the original one for a duplicate).
    pub offset: u64,
    /// Stream epoch.
    pub epoch: Arc<str>,
    /// True when the idempotency key had been seen: nothing was published.
    pub duplicate: bool,
}

/// A history read.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// Forward: publications after this position; reverse: before it. `None` = from the start (or
    /// the end with `reverse`).
    pub since: Option<StreamPosition>,
    /// Page size (0 = only the stream position).
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

/// A page of history and the stream's current position.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// Publications in the requested order.
    pub publications: Vec<Arc<Publication>>,
    /// Offset of the newest publication ever assigned in the stream.
    pub top: u64,
    /// Current epoch.
    pub epoch: Arc<str>,
    /// Offset of the oldest publication still in history (`top + 1` when history is empty).
    pub first_kept: u64,
}

/// A presence event on a channel, fanned out like a publication but never stored.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// A client subscribed.
    Join(ClientInfo),
    /// A client's subscription ended.
    Leave(ClientInfo),
}

impl ChannelEvent {
    /// `{"join": CLIENT}` or `{"leave": CLIENT}`, for engines that carry events between nodes.
    pub fn to_json(&self) -> Vec<u8> {
        let v = match self {
            ChannelEvent::Join(i) => serde_json::json!({ "join": i }),
            ChannelEvent::Leave(i) => serde_json::json!({ "leave": i }),
        };
        v.to_string().into_bytes()
    }

    /// The event [`ChannelEvent::to_json`] wrote (`None` for anything else).
    pub fn from_json(b: &[u8]) -> Option<ChannelEvent> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        let info = |k: &str| serde_json::from_value::<ClientInfo>(v.get(k)?.clone()).ok();
        info("join")
            .map(ChannelEvent::Join)
            .or_else(|| info("leave").map(ChannelEvent::Leave))
    }
}

/// Receives what the broker delivers to this node. Implemented by the node.
pub trait BrokerHandler: Send + Sync + 'static {
    /// A publication for a channel this node subscribed to, in stream order.
    fn on_publication(&self, publication: Arc<Publication>);
    /// A join/leave event for a channel this node subscribed to.
    fn on_event(&self, channel: &str, event: ChannelEvent);
}

/// Orders, stores and distributes publications.
///
/// Contract:
/// - `publish` assigns the next offset, appends to history (trimmed to `history_size` and
///   `history_ttl`) and delivers to every subscribed node as **one atomic step per channel**: all
///   nodes see a channel's publications in offset order, with no gaps except for trimming.
/// - Offsets start at 1 and increase by 1. The epoch changes whenever the stream's history may have
///   been lost (e.g. a restart of the in-memory engine), so a client position from another epoch
///   can never be mistaken for a current one.
/// - A publish with an idempotency key seen within the window returns the first outcome with
///   `duplicate: true` and publishes nothing.
/// - Errors are returned, never swallowed: a publish either happened or failed visibly.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Install the node's handler; called once, before any other method.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);
    /// Publish to a channel (see the trait contract).
    async fn publish(
        &self,
        channel: &str,
        req: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError>;
    /// Deliver a join/leave event to every node subscribed to the channel.
    async fn publish_event(&self, channel: &str, event: ChannelEvent) -> Result<(), BrokerError>;
    /// Start receiving a channel's publications on this node (called on its first local subscriber).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Stop receiving a channel (called when its last local subscriber leaves).
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// Read history. With `since` in another epoch, returns [`BrokerError::EpochMismatch`].
    async fn history(&self, channel: &str, query: HistoryQuery)
    -> Result<HistoryPage, BrokerError>;
    /// Drop a channel's history (offsets continue; the epoch is kept).
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
    /// Whether the engine can serve now (its backing service is reachable); `/readyz` reports it.
    fn ready(&self) -> bool {
        true
    }
}

//! The v1 envelope: `{"type": ..., "id": ..., "payload": {...}}`, client commands and the payloads
//! of server replies and pushes.
//!
//! Decoding is two-phase: the envelope first (so the `id` is known even when the payload is bad),
//! then the payload for the given `type`. Unknown fields are ignored everywhere.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::codes::ErrorCode;
use crate::data::Data;

/// Longest accepted string `id`.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;
/// Largest page a `history` command may ask for.
pub const MAX_HISTORY_LIMIT: usize = 100;

/// A client-chosen request id: a string of at most [`MAX_ID_LEN`] bytes or a non-negative integer.
/// Echoed unchanged in the reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// Numeric id.
    Num(u64),
    /// String id.
    Str(String),
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::Num(n) => s.serialize_u64(*n),
            Id::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a string of at most {MAX_ID_LEN} bytes or a non-negative integer"
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id::Num)
                    .map_err(|_| E::custom("id must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                if v.len() > MAX_ID_LEN {
                    return Err(E::custom("id too long"));
                }
                Ok(Id::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A position in a channel stream: the offset of the last publication seen and the stream epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the last publication the client has (0 = none yet).
    pub offset: u64,
    /// Epoch of the stream the offset belongs to.
    pub epoch: String,
}

/// `subscribe` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Subscribe {
    /// Channel to subscribe to.
    pub channel: String,
    /// Ask for the publications after this position.
    #[serde(default)]
    pub recover: Option<StreamPosition>,
    /// A channel token (a JWT with a `channel` claim) granting access to a private channel.
    #[serde(default)]
    pub token: Option<String>,
}

/// `auth` payload: the first message of a connection that did not authenticate at the handshake.
#[derive(Debug, Clone, Deserialize)]
pub struct Auth {
    /// The connection token (JWT); absent = connect anonymously (when the server allows it).
    #[serde(default)]
    pub token: Option<String>,
}

/// `rpc` payload: a request for the application backend.
#[derive(Debug, Clone, Deserialize)]
pub struct Rpc {
    /// Method name (1-128 bytes).
    pub method: String,
    /// Parameters (any value).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// `refresh` payload: a fresh connection token for the same user.
#[derive(Debug, Clone, Deserialize)]
pub struct Refresh {
    /// The new connection token (JWT).
    pub token: String,
}

/// Payload of commands that only name a channel (`unsubscribe`, `presence`, `presence_stats`).
#[derive(Debug, Clone, Deserialize)]
pub struct ChannelOnly {
    /// The channel.
    pub channel: String,
}

/// `publish` payload (`data` is kept in the format it arrived in).
#[derive(Debug, Clone)]
pub struct Publish {
    /// Target channel.
    pub channel: String,
    /// Opaque application data.
    pub data: Data,
    /// Publishes with the same key within the idempotency window are applied once.
    pub idempotency_key: Option<String>,
}

/// `history` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct History {
    /// Channel to read.
    pub channel: String,
    /// Only publications after this position (forward) or before it (reverse).
    #[serde(default)]
    pub since: Option<StreamPosition>,
    /// Page size, 1..=[`MAX_HISTORY_LIMIT`] (default [`MAX_HISTORY_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Newest first.
    #[serde(default)]
    pub reverse: bool,
}

/// `resume` payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Resume {
    /// The resume token from the `connected` message of the previous connection.
    pub token: String,
    /// The last position the client saw per channel; gaps are filled from history when possible.
    #[serde(default)]
    pub positions: std::collections::HashMap<String, StreamPosition>,
}

/// `ack` payload: everything of `channel` up to `offset` (current epoch) was processed.
#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    /// The channel (an at-least-once subscription of this connection).
    pub channel: String,
    /// The offset acknowledged, cumulatively.
    pub offset: u64,
}

/// A decoded client command.
#[derive(Debug, Clone)]
pub enum Command {
    /// Subscribe to a channel.
    Subscribe(Subscribe),
    /// Unsubscribe from a channel.
    Unsubscribe(ChannelOnly),
    /// Publish to a channel.
    Publish(Publish),
    /// Read channel history.
    History(History),
    /// List the clients subscribed to a channel.
    Presence(ChannelOnly),
    /// Count the clients and users subscribed to a channel.
    PresenceStats(ChannelOnly),
    /// Application-level ping, answered by `pong`.
    Ping,
    /// Resume a previous session.
    Resume(Resume),
    /// Authenticate (first message only, before `connected`).
    Auth(Auth),
    /// Replace the connection token before it expires.
    Refresh(Refresh),
    /// Call the application backend.
    Rpc(Rpc),
    /// Acknowledge processed publications of an at-least-once subscription.
    Ack(Ack),
}

impl Command {
    /// Every command's wire `type`, in [`Command::index`] order.
    pub const KINDS: [&'static str; 12] = [
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "presence_stats",
        "ping",
        "resume",
        "auth",
        "refresh",
        "rpc",
        "ack",
    ];

    /// The wire `type` of the command.
    pub fn kind(&self) -> &'static str {
        Command::KINDS[self.index()]
    }

    /// The command's place in [`Command::KINDS`] (for per-type counters kept in an array).
    pub fn index(&self) -> usize {
        match self {
            Command::Subscribe(_) => 0,
            Command::Unsubscribe(_) => 1,
            Command::Publish(_) => 2,
            Command::History(_) => 3,
            Command::Presence(_) => 4,
            Command::PresenceStats(_) => 5,
            Command::Ping => 6,
            Command::Resume(_) => 7,
            Command::Auth(_) => 8,
            Command::Refresh(_) => 9,
            Command::Rpc(_) => 10,
            Command::Ack(_) => 11,
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone)]
pub struct Request {
    /// Correlation id, when the client wants a reply.
    pub id: Option<Id>,
    /// The command.
    pub command: Command,
}

/// Why a client frame could not be decoded; becomes an `error` reply.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// The request id, when the envelope was readable.
    pub id: Option<Id>,
    /// The error code to send.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// `error` payload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorPayload {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail (not stable).
    pub message: String,
    /// Whether retrying later may succeed.
    pub retryable: bool,
}

impl ErrorPayload {
    /// Build an error payload with the code's retryability.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorPayload {
            code,
            message: message.into(),
            retryable: code.retryable(),
        }
    }
}

/// `connected` push: sent once, right after the upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connected {
    /// This connection's id (unique per node, stable across a resume).
    pub client_id: String,
    /// The session id.
    pub session_id: String,
    /// Present to `resume` after an unexpected disconnect.
    pub resume_token: String,
    /// Seconds the session survives a disconnect.
    pub resume_grace_ms: u64,
    /// Server WebSocket ping interval.
    pub ping_interval_ms: u64,
    /// How long the server waits for a pong.
    pub pong_timeout_ms: u64,
    /// Server name and version, e.g. `herald/0.1.0`.
    pub server: String,
    /// The negotiated subprotocol.
    pub protocol: String,
    /// The authenticated user id ("" = anonymous).
    #[serde(default)]
    pub user_id: String,
    /// Milliseconds until the connection token expires (absent = no expiry).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_in_ms: Option<u64>,
}

/// `refresh` push (the server asks for a fresh token) and reply to the `refresh` command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RefreshInfo {
    /// Milliseconds until the current connection token expires.
    pub expires_in_ms: u64,
}

/// `disconnect` advisory, sent right before the server closes the socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    /// The close code that follows.
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
    /// Wait at least this long before reconnecting (jittered per client).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reconnect_after_ms: Option<u64>,
}

/// Who published a message, when known.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientInfo {
    /// Publisher connection id.
    pub client_id: String,
    /// Publisher user id (empty for anonymous).
    pub user_id: String,
    /// Public user info from the token's `info` claim.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub info: Option<serde_json::Value>,
    /// Channel-specific info the subscribe proxy returned for this subscription.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub chan_info: Option<serde_json::Value>,
}

/// Reply to `subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscribed {
    /// The channel.
    pub channel: String,
    /// Offset of the newest publication in the stream at subscribe time.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: String,
    /// Present when `recover` was asked: whether every missed publication follows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recovered: Option<bool>,
    /// Number of missed publications delivered as `message` pushes right after this reply.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub missed: Option<u64>,
    /// Present when the namespace's slow-consumer policy drops messages for a client that
    /// reads too slowly (`drop_oldest` or `latest`): an offset skip inside the epoch is then a
    /// drop by policy, not a loss.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub slow_consumer: Option<String>,
    /// `at_least_once` when the namespace acknowledges deliveries (`docs/protocol.md` §8a):
    /// the client must `ack` what it processes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivery: Option<String>,
    /// At-least-once: most unacknowledged publications in flight.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ack_window: Option<u32>,
    /// At-least-once: how long the server waits for an ack before sending again.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ack_timeout_ms: Option<u64>,
    /// `fossil` when this subscription gets delta updates (`docs/protocol.md` §5 `message`):
    /// every `message` of the channel carries its `data` as a JSON string, and `delta: true`
    /// marks a Fossil delta against the previous message's data.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delta: Option<String>,
}

/// `gap` push: publications `from..=to` of `epoch` will not be delivered on this at-least-once
/// subscription (`docs/protocol.md` §5).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GapPush {
    /// The channel.
    pub channel: String,
    /// The stream epoch of the offsets.
    pub epoch: String,
    /// First offset given up.
    pub from: u64,
    /// Last offset given up; the subscription continues after it.
    pub to: u64,
    /// `unacknowledged` or `trimmed`.
    pub reason: String,
}

/// Reply to `publish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    /// Offset assigned to the publication.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: String,
    /// True when an earlier publish with the same idempotency key was found.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub duplicate: bool,
}

/// Reply to `presence_stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceStats {
    /// Subscribed connections.
    pub clients: u64,
    /// Distinct user ids among them.
    pub users: u64,
}

/// A subscription restored by `resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumedChannel {
    /// The channel.
    pub channel: String,
    /// Whether the messages since the client's position follow (only with `positions`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub recovered: Option<bool>,
}

/// Reply to `resume`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resumed {
    /// The resumed session id.
    pub session_id: String,
    /// The resumed client id.
    pub client_id: String,
    /// A fresh resume token (the old one is used up).
    pub resume_token: String,
    /// Restored subscriptions.
    pub channels: Vec<ResumedChannel>,
    /// Messages buffered while disconnected, delivered right after this reply.
    pub buffered: u64,
}

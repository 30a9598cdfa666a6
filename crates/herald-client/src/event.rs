//! What the client reports to the application.

use std::time::Duration;

use serde_json::Value;

use crate::error::ClientError;

/// Connection state changes.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Opening a connection (attempt counts failures in a row, from 0).
    Connecting {
        /// Failed attempts before this one.
        attempt: u32,
    },
    /// Connected (and, after a reconnect, resumed or resubscribed).
    Connected {
        /// The server's connection id.
        client_id: String,
        /// The authenticated user ("" = anonymous).
        user_id: String,
        /// Whether the previous session was resumed.
        resumed: bool,
    },
    /// The connection ended.
    Disconnected {
        /// Close code (1006 when the socket died without one).
        code: u16,
        /// Reason (the server's, or what the client saw).
        reason: String,
        /// Whether the client will reconnect.
        reconnect: bool,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// How long.
        delay: Duration,
        /// Failed attempts so far.
        attempt: u32,
    },
    /// Terminal: closed by the application, by a `reconnect: false` advisory, by an
    /// authentication failure, or after `max_attempts`.
    Closed {
        /// Why.
        reason: String,
    },
}

/// A publication received on a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Channel.
    pub channel: String,
    /// Offset in the channel stream.
    pub offset: u64,
    /// Stream epoch.
    pub epoch: String,
    /// Application data (whole, also on a delta subscription: deltas are applied by the
    /// client).
    pub data: Value,
    /// Publisher info, when it was a client (`client_id`, `user_id`, `info`).
    pub info: Option<Value>,
}

/// Everything the client reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection state change.
    State(State),
    /// A publication.
    Message(Message),
    /// Someone joined a channel (`client_id`, `user_id`, `info`).
    Join {
        /// Channel.
        channel: String,
        /// Who.
        who: Value,
    },
    /// Someone left a channel.
    Leave {
        /// Channel.
        channel: String,
        /// Who.
        who: Value,
    },
    /// The server subscribed this client to a channel (server API or connect proxy); its
    /// messages follow, and the client keeps the subscription across reconnects.
    Subscribed {
        /// Channel.
        channel: String,
    },
    /// The server removed this client from a channel.
    Unsubscribed {
        /// Channel.
        channel: String,
    },
    /// Publications of a channel were lost and could not be recovered (see [`GapReason`]).
    /// Delivery continues after `resumed_at`.
    Gap {
        /// Channel.
        channel: String,
        /// Why.
        reason: GapReason,
        /// The last offset received before the gap.
        last_offset: u64,
        /// Delivery continues after this offset (replayed publications first, then live ones).
        resumed_at: u64,
    },
    /// A subscribe attempt failed. With `retry_in` the error is retryable (e.g. `unavailable`,
    /// a timeout) and the client tries again after that delay (zero while disconnected: with the
    /// next connection), the `subscribe` call still waiting; without it the subscription is over
    /// and the call returns the error.
    SubscribeFailed {
        /// Channel.
        channel: String,
        /// What the server (or the client) said.
        error: ClientError,
        /// When the next attempt is made.
        retry_in: Option<Duration>,
    },
}

/// Why a channel has a gap (`docs/protocol.md` §4 `subscribe`, §5 `message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The channel's stream was reset (new epoch: engine restart, flush); what the old stream
    /// held after `last_offset` is gone.
    EpochChanged,
    /// Publications after `last_offset` are no longer in history (trimmed by size or TTL, or the
    /// namespace keeps none).
    Trimmed,
    /// Offsets were skipped inside the epoch in a namespace whose slow-consumer policy drops
    /// messages (`drop_oldest`, `latest`): this client read too slowly and the server dropped
    /// them, by policy.
    Dropped,
    /// Offsets were skipped inside the epoch where nothing should be dropped: a loss.
    Skipped,
    /// At-least-once: the server sent these offsets `ack_max_attempts` times without an ack and
    /// gave them up (a `gap` push; the backend has a dead letter).
    Unacknowledged,
}

impl GapReason {
    /// The name both clients use (`epoch_changed`, `trimmed`, `dropped`, `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::EpochChanged => "epoch_changed",
            GapReason::Trimmed => "trimmed",
            GapReason::Dropped => "dropped",
            GapReason::Skipped => "skipped",
            GapReason::Unacknowledged => "unacknowledged",
        }
    }
}

//! What the client reports to the application.

use std::time::Duration;

use serde_json::Value;

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
    /// Application data.
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
    /// Publications of a channel were lost and could not be recovered (history trimmed, epoch
    /// changed, or a `drop_oldest`/`latest` policy skipped offsets). Delivery continues from
    /// `resumed_at`.
    Gap {
        /// Channel.
        channel: String,
        /// The last offset received before the gap.
        last_offset: u64,
        /// The position delivery continues from (offset of the stream at resubscribe).
        resumed_at: u64,
    },
}

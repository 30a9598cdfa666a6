//! Error codes (in `error` replies) and WebSocket close codes.
//!
//! Every client-visible failure is defined here exactly once, with whether a client should retry
//! or reconnect. `docs/protocol.md` carries the same tables; keep them in sync.

use serde::{Deserialize, Serialize};

/// A stable error code carried by an `error` reply (`payload.code`), serialized as snake_case text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON/MessagePack, or not an object with a string `type`.
    Malformed,
    /// A field is missing, has the wrong type, or is out of range.
    BadRequest,
    /// The command `type` is not known to this server (forward compatibility: not fatal).
    UnknownType,
    /// Text frame on a MessagePack connection or binary frame on a JSON connection.
    WrongFrameType,
    /// The channel name is empty, too long or uses characters outside the allowed set.
    InvalidChannel,
    /// The channel's namespace is not configured and there is no default namespace.
    UnknownNamespace,
    /// The namespace's rules forbid this command (e.g. client publish disabled).
    PermissionDenied,
    /// The connection is already subscribed to the channel.
    AlreadySubscribed,
    /// The connection is not subscribed to the channel.
    NotSubscribed,
    /// The connection reached `max_channels`.
    TooManyChannels,
    /// The channel reached its namespace's `max_subscribers`.
    ChannelFull,
    /// History is disabled in the channel's namespace.
    HistoryDisabled,
    /// Presence is disabled in the channel's namespace.
    PresenceDisabled,
    /// The recovery position's epoch does not match, so `since` cannot be honoured.
    EpochMismatch,
    /// The resume token is unknown, expired or already used.
    SessionNotFound,
    /// `resume` sent after the connection already subscribed to something.
    ResumeNotAllowed,
    /// A field exceeds its size limit (e.g. idempotency key, `data`).
    TooLarge,
    /// The server is shutting down or the engine is unavailable; retry elsewhere or later.
    Unavailable,
    /// An unexpected server-side failure.
    Internal,
    /// The command needs an authenticated user (the connection is anonymous, or the namespace
    /// does not admit anonymous clients).
    Unauthorized,
    /// A token is malformed, has a bad signature, uses an algorithm that is not allowed, has the
    /// wrong audience or issuer, is not valid yet, or names another user or channel.
    TokenInvalid,
    /// A token's `exp` has passed: get a fresh token.
    TokenExpired,
    /// A token (or every token of its user issued before a point in time) was revoked.
    TokenRevoked,
    /// The connection sends commands faster than its rate limit, or its user publishes faster
    /// than the per-user publish limit. Retry later.
    RateLimited,
    /// The application backend did not answer an `rpc` in time.
    Timeout,
    /// The application backend answered an `rpc` with an error (its message is passed on).
    RpcError,
    /// A code this version does not know (decoding only; a server never sends it): a newer
    /// server's code. Clients act on the error's `retryable` flag and show its message.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether retrying the same command later may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::Internal
                | ErrorCode::ChannelFull
                | ErrorCode::RateLimited
                | ErrorCode::Timeout
        )
    }

    /// Whether receiving this error counts as a protocol violation for the sender.
    pub fn is_violation(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed | ErrorCode::BadRequest | ErrorCode::WrongFrameType
        )
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::WrongFrameType => "wrong_frame_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::UnknownNamespace => "unknown_namespace",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::ChannelFull => "channel_full",
            ErrorCode::HistoryDisabled => "history_disabled",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::EpochMismatch => "epoch_mismatch",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::ResumeNotAllowed => "resume_not_allowed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RpcError => "rpc_error",
            ErrorCode::Unknown => "unknown",
        }
    }
}

/// Whether a client reconnects after the server closed with `code` (and no `disconnect`
/// advisory said otherwise): the table of `docs/protocol.md` §7, for every code including ones
/// this version does not know. 4000–4499: yes; 4500–4999: no; 1000, 1002, 1003, 1007, 1008,
/// 1009: no; anything else (1001, 1005, 1006, 1011, …): yes. Both clients follow it, checked by
/// the shared scenario table `clients/scenarios/close-codes.json`.
pub fn reconnect_after_close(code: u16) -> bool {
    match code {
        4000..=4499 => true,
        4500..=4999 => false,
        1000 | 1002 | 1003 | 1007 | 1008 | 1009 => false,
        _ => true,
    }
}

/// A WebSocket close code sent by the server, always preceded by a `disconnect` advisory when the
/// socket is still writable.
///
/// Application codes: 4000–4499 mean "reconnect (with backoff)", 4500–4999 mean "do not reconnect
/// without a change" (new credentials, fixed client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down (reconnect after `reconnect_after_ms`).
    GoingAway,
    /// 1002: the peer broke the WebSocket protocol (bad framing, masking, opcodes).
    ProtocolError,
    /// 1003: a frame kind the server cannot accept.
    UnsupportedData,
    /// 1007: a text frame was not valid UTF-8.
    InvalidPayload,
    /// 1008: policy violation (e.g. connection limit reached at upgrade).
    PolicyViolation,
    /// 1009: an inbound message exceeded `max_message_size`.
    MessageTooBig,
    /// 1011: unexpected server error.
    InternalError,
    /// 1013: try again later: the node admits no more new connections right now
    /// (`limits.connect_per_second`); reconnect after the advisory's `reconnect_after_ms`.
    TryAgainLater,
    /// 4000: the connection missed its heartbeat (no pong within `pong_timeout`).
    HeartbeatTimeout,
    /// 4001: the client could not keep up; its outbound queue overflowed.
    SlowConsumer,
    /// 4002: the node has reached `max_connections`.
    ConnectionLimit,
    /// 4003: a write to the socket did not complete within `write_timeout`.
    WriteTimeout,
    /// 4004: the connection kept exceeding its command rate limit.
    RateLimited,
    /// 4005: the connection reached `connection.max_lifetime`: reconnect at once and `resume`
    /// (the session waits, as after a dropped socket).
    Rotate,
    /// 4010: the connection token expired without a `refresh`; reconnect with a fresh token.
    TokenExpired,
    /// 4011: no successful `auth` within `auth_timeout` after the upgrade.
    AuthTimeout,
    /// 4502: authentication failed (bad token, anonymous not allowed, or a command other than
    /// `auth`/`ping` before authentication). Reconnect only with new credentials.
    AuthFailed,
    /// 4503: the connection's token or user was revoked.
    TokenRevoked,
    /// 4500: too many protocol violations (malformed frames, wrong types).
    ProtocolViolations,
    /// 4501: the server ended the connection on request (an operator or the application).
    ForceDisconnect,
}

impl CloseCode {
    /// The numeric WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::HeartbeatTimeout => 4000,
            CloseCode::SlowConsumer => 4001,
            CloseCode::ConnectionLimit => 4002,
            CloseCode::WriteTimeout => 4003,
            CloseCode::RateLimited => 4004,
            CloseCode::Rotate => 4005,
            CloseCode::TokenExpired => 4010,
            CloseCode::AuthTimeout => 4011,
            CloseCode::AuthFailed => 4502,
            CloseCode::TokenRevoked => 4503,
            CloseCode::ProtocolViolations => 4500,
            CloseCode::ForceDisconnect => 4501,
        }
    }

    /// Whether a client should reconnect (with backoff) after this close.
    pub fn reconnect(self) -> bool {
        reconnect_after_close(self.code())
    }

    /// The short human reason sent in the close frame and the `disconnect` advisory.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::GoingAway => "server shutting down",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::UnsupportedData => "unsupported data",
            CloseCode::InvalidPayload => "invalid utf-8",
            CloseCode::PolicyViolation => "policy violation",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::TryAgainLater => "server busy: try again later",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::ConnectionLimit => "connection limit reached",
            CloseCode::WriteTimeout => "write timeout",
            CloseCode::RateLimited => "rate limit exceeded",
            CloseCode::Rotate => "connection rotated: resume now",
            CloseCode::TokenExpired => "token expired",
            CloseCode::AuthTimeout => "authentication timeout",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::TokenRevoked => "token revoked",
            CloseCode::ProtocolViolations => "too many protocol violations",
            CloseCode::ForceDisconnect => "disconnected by server",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_codes_follow_reconnect_ranges() {
        for c in [
            CloseCode::HeartbeatTimeout,
            CloseCode::SlowConsumer,
            CloseCode::ConnectionLimit,
            CloseCode::WriteTimeout,
            CloseCode::RateLimited,
            CloseCode::Rotate,
            CloseCode::TokenExpired,
            CloseCode::AuthTimeout,
            CloseCode::AuthFailed,
            CloseCode::TokenRevoked,
            CloseCode::ProtocolViolations,
            CloseCode::ForceDisconnect,
        ] {
            let n = c.code();
            assert!((4000..5000).contains(&n));
            assert_eq!(c.reconnect(), n < 4500, "{c:?}");
        }
    }

    /// Regression (issue 13): 1008 said "reconnect" here while protocol.md and both clients
    /// stop reconnecting after it (the client broke a policy: a frame flood, too many fragments).
    #[test]
    fn the_websocket_codes_follow_the_protocol_table() {
        for (c, reconnect) in [
            (CloseCode::Normal, false),
            (CloseCode::GoingAway, true),
            (CloseCode::ProtocolError, false),
            (CloseCode::UnsupportedData, false),
            (CloseCode::InvalidPayload, false),
            (CloseCode::PolicyViolation, false),
            (CloseCode::MessageTooBig, false),
            (CloseCode::InternalError, true),
            (CloseCode::TryAgainLater, true),
        ] {
            assert_eq!(c.reconnect(), reconnect, "{c:?}");
        }
    }

    /// The shared table both clients' scenario runners check their reconnect decision against.
    #[test]
    fn the_shared_close_code_table_is_this_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../clients/scenarios/close-codes.json"
        );
        let text = std::fs::read_to_string(path).expect("clients/scenarios/close-codes.json");
        let table: serde_json::Value = serde_json::from_str(&text).expect("close-codes.json");
        let rows = table["codes"].as_array().expect("codes");
        assert!(rows.len() >= 25);
        for row in rows {
            let code = row["code"].as_u64().expect("code") as u16;
            let reconnect = row["reconnect"].as_bool().expect("reconnect");
            assert_eq!(reconnect_after_close(code), reconnect, "close code {code}");
        }
    }

    #[test]
    fn error_code_wire_names_match_serde() {
        for c in [
            ErrorCode::Malformed,
            ErrorCode::UnknownType,
            ErrorCode::TooManyChannels,
        ] {
            let s = serde_json::to_string(&c).expect("serialize");
            assert_eq!(s, format!("\"{}\"", c.as_str()));
        }
    }
}

//! Client errors: server errors carry the protocol's error codes.

use herald_proto::ErrorCode;

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `error` (see `docs/protocol.md` §6).
    #[error("{}: {message}", code.as_str())]
    Server {
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// No reply within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// Not connected (the request was not queued).
    #[error("not connected")]
    Disconnected,
    /// The offline publish queue is full.
    #[error("offline queue full")]
    QueueFull,
    /// A queued publish was not sent before its deadline.
    #[error("publish expired in the offline queue")]
    Expired,
    /// The client was closed, or gave up reconnecting (see the last `State::Closed`).
    #[error("client closed: {0}")]
    Closed(String),
    /// Connecting failed (one line, with the cause: refused, TLS, HTTP 401/403/429, ...).
    #[error("{0}")]
    Connect(String),
    /// The server sent something this client cannot read.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A stable code: the server's error code, or the client-side one (`request_timeout`,
    /// `disconnected`, `queue_full`, `queue_expired`, `closed`, `connect_failed`, `malformed`),
    /// the same names as the TypeScript client's `HeraldError.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Server { code, .. } => code.as_str(),
            ClientError::Timeout => "request_timeout",
            ClientError::Disconnected => "disconnected",
            ClientError::QueueFull => "queue_full",
            ClientError::Expired => "queue_expired",
            ClientError::Closed(_) => "closed",
            ClientError::Connect(_) => "connect_failed",
            ClientError::Protocol(_) => "malformed",
        }
    }

    /// Whether the operation may succeed if retried later.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.retryable(),
            ClientError::Timeout | ClientError::Disconnected | ClientError::Connect(_) => true,
            _ => false,
        }
    }
}

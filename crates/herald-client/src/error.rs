//! Client errors: server errors carry the protocol's error codes.

use herald_proto::ErrorCode;

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `error` (see `docs/protocol.md` §6).
    #[error("{name}: {message}")]
    Server {
        /// Stable error code ([`ErrorCode::Unknown`] for a newer server's code; `name` has it).
        code: ErrorCode,
        /// The code's wire name as the server sent it.
        name: String,
        /// Human-readable detail.
        message: String,
        /// The server's word on whether retrying later may succeed (the error's `retryable`).
        retryable: bool,
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
    /// A server error from an `error` payload (the server decides whether it is retryable).
    pub fn server(e: herald_proto::envelope::ErrorPayload, name: String) -> Self {
        ClientError::Server {
            name,
            code: e.code,
            message: e.message,
            retryable: e.retryable,
        }
    }

    /// A server-side error code the client found itself (e.g. already subscribed locally).
    pub(crate) fn local(code: ErrorCode, message: &str) -> Self {
        ClientError::Server {
            code,
            name: code.as_str().to_owned(),
            message: message.into(),
            retryable: code.retryable(),
        }
    }

    /// A stable code: the server's error code, or the client-side one (`request_timeout`,
    /// `disconnected`, `queue_full`, `queue_expired`, `closed`, `connect_failed`, `malformed`),
    /// the same names as the TypeScript client's `HeraldError.code`.
    /// A server code this version does not know is reported as sent.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Server { name, .. } => name,
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
            ClientError::Server { retryable, .. } => *retryable,
            ClientError::Timeout | ClientError::Disconnected | ClientError::Connect(_) => true,
            _ => false,
        }
    }
}

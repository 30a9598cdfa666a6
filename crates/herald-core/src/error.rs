//! The engine's client-visible error: a protocol error code and a message.

use herald_proto::ErrorCode;

use crate::broker::BrokerError;

/// A client-visible failure of an engine operation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct EngineError {
    /// Error code for the client.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl EngineError {
    /// Build an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        EngineError {
            code,
            message: message.into(),
        }
    }
}

impl From<BrokerError> for EngineError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::EpochMismatch => {
                EngineError::new(ErrorCode::EpochMismatch, "epoch mismatch")
            }
            BrokerError::Unavailable(m) => EngineError::new(ErrorCode::Unavailable, m),
            BrokerError::Unsupported(m) => EngineError::new(ErrorCode::Internal, m),
            BrokerError::Config(e) => EngineError::new(ErrorCode::Internal, e.to_string()),
        }
    }
}

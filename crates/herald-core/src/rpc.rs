//! Request/response from clients to the application: the `rpc` command is answered by an
//! [`RpcHandler`] — registered in code by applications embedding the engine, or the server's HTTP
//! proxy to a backend.

use std::sync::Arc;

use herald_proto::ErrorCode;
use serde_json::Value;

use crate::error::EngineError;

/// Handshake headers kept for the backend (only those the server was told to forward).
pub type Headers = Arc<serde_json::Map<String, Value>>;

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcContext {
    /// The calling connection.
    pub client_id: String,
    /// Its user ("" = anonymous).
    pub user_id: String,
    /// The user's public info from the token.
    pub info: Option<Value>,
    /// The connection's forwarded handshake headers, when any are configured.
    pub headers: Option<Headers>,
}

/// Answers `rpc` commands. Errors reach the client with their code (`timeout`, `unavailable`,
/// `rpc_error`, ...).
#[async_trait::async_trait]
pub trait RpcHandler: Send + Sync {
    /// Handle one call.
    async fn call(
        &self,
        ctx: RpcContext,
        method: String,
        data: Value,
    ) -> Result<Value, EngineError>;
}

/// A connection the backend extended (the refresh proxy's answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshed {
    /// New expiry, seconds since the Unix epoch.
    pub expire_at: u64,
    /// Replacement user info (`None` = keep).
    pub info: Option<Value>,
}

/// Decides subscribes and publishes in namespaces with `subscribe_proxy` / `publish_proxy`, and
/// extends connections the connect proxy authenticated (the server's HTTP proxy to the
/// application backend, or code of an embedding application).
#[async_trait::async_trait]
pub trait ChannelProxy: Send + Sync {
    /// Allow (`Ok`, with optional channel info shown in presence and join/leave) or refuse
    /// (`permission_denied`, or `unavailable`/`timeout` when the backend cannot answer) a
    /// subscribe.
    async fn subscribe(
        &self,
        ctx: &RpcContext,
        channel: &str,
    ) -> Result<Option<Value>, EngineError>;

    /// Allow a publish (`Ok(None)`), allow it with replacement data (`Ok(Some(data))`), or refuse
    /// it.
    async fn publish(
        &self,
        ctx: &RpcContext,
        channel: &str,
        data: Value,
    ) -> Result<Option<Value>, EngineError>;

    /// Whether [`ChannelProxy::refresh`] is implemented.
    fn refreshes(&self) -> bool {
        false
    }

    /// Extend a connection the connect proxy authenticated, before it expires; an error lets it
    /// expire (close 4010).
    async fn refresh(&self, _ctx: &RpcContext) -> Result<Refreshed, EngineError> {
        Err(EngineError::new(
            ErrorCode::Unavailable,
            "no refresh proxy is configured",
        ))
    }
}

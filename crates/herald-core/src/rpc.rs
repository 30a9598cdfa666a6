//! Request/response from clients to the application: the `rpc` command is answered by an
//! [`RpcHandler`] — registered in code by applications embedding the engine, or the server's HTTP
//! proxy to a backend.

use serde_json::Value;

use crate::node::EngineError;

/// Who is calling.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcContext {
    /// The calling connection.
    pub client_id: String,
    /// Its user ("" = anonymous).
    pub user_id: String,
    /// The user's public info from the token.
    pub info: Option<Value>,
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

/// Decides subscribes and publishes in namespaces with `subscribe_proxy` / `publish_proxy`
/// (the server's HTTP proxy to the application backend, or code of an embedding application).
#[async_trait::async_trait]
pub trait ChannelProxy: Send + Sync {
    /// Allow (`Ok`) or refuse (`permission_denied`, or `unavailable`/`timeout` when the backend
    /// cannot answer) a subscribe.
    async fn subscribe(&self, ctx: &RpcContext, channel: &str) -> Result<(), EngineError>;

    /// Allow a publish (`Ok(None)`), allow it with replacement data (`Ok(Some(data))`), or refuse
    /// it.
    async fn publish(
        &self,
        ctx: &RpcContext,
        channel: &str,
        data: Value,
    ) -> Result<Option<Value>, EngineError>;
}

//! The application backend: `rpc` calls and the refresh proxy.

use std::sync::Arc;

use herald_proto::envelope::ErrorPayload;
use herald_proto::{ErrorCode, Id};

use crate::error::EngineError;
use crate::node::Node;
use crate::rpc::RpcContext;

use super::*;

impl Session {
    /// Ask the refresh proxy to extend this connection, in a task of its own; the answer comes
    /// back as [`ServerCommand::Refreshed`]. On failure the connection expires as it would.
    pub(super) fn refresh_through_proxy(&self, proxy: Arc<dyn crate::rpc::ChannelProxy>) {
        let Some((tx, _)) = &self.server_cmds else {
            return;
        };
        let (tx, ctx, node) = (tx.clone(), self.rpc_context(), self.node.clone());
        tokio::spawn(async move {
            match proxy.refresh(&ctx).await {
                Ok(r) => {
                    let _ = tx.send(ServerCommand::Refreshed(r)).await;
                }
                Err(e) => {
                    backend_failed(&node, "refresh", &ctx, None, &e);
                    tracing::info!(client = %ctx.client_id, error = %e, "refresh proxy refused");
                }
            }
        });
    }

    pub(super) fn rpc_context(&self) -> RpcContext {
        RpcContext {
            client_id: self.client_id.to_string(),
            user_id: self.identity.user_id.to_string(),
            info: self.identity.claims.as_ref().and_then(|c| c.info.clone()),
            headers: self.forwarded().cloned(),
        }
    }

    /// `rpc`: ask the handler in a task of its own (the connection keeps reading); exactly one
    /// reply or error follows, `timeout` after `session.rpc_timeout`.
    pub(super) fn rpc(
        &mut self,
        id: &Option<Id>,
        r: herald_proto::envelope::Rpc,
    ) -> Result<(), EngineError> {
        if r.method.is_empty() || r.method.len() > 128 {
            return Err(EngineError::new(
                ErrorCode::BadRequest,
                "method must be 1-128 bytes",
            ));
        }
        let Some(handler) = self.node.rpc_handler().cloned() else {
            return Err(EngineError::new(
                ErrorCode::Unavailable,
                "rpc is not enabled on this server",
            ));
        };
        let (max, timeout) = {
            let cfg = &self.node.config().session;
            (cfg.rpc_max_inflight, cfg.rpc_timeout)
        };
        let slots = self.rare_with(|r| {
            r.rpc_slots
                .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max)))
                .clone()
        });
        let Ok(permit) = slots.try_acquire_owned() else {
            return Err(EngineError::new(
                ErrorCode::RateLimited,
                "too many rpc calls in flight on this connection",
            ));
        };
        let ctx = self.rpc_context();
        let (outlet, id) = (self.outlet.clone(), id.clone());
        let node = self.node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let call = handler.call(ctx.clone(), r.method.clone(), r.data);
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::new(
                    ErrorCode::Timeout,
                    "the backend did not answer in time",
                )),
            };
            if let Err(e) = &result {
                backend_failed(&node, "rpc", &ctx, Some(&r.method), e);
            }
            metrics::counter!("herald_rpc_total", "result" => if result.is_ok() { "ok" } else { "error" })
                .increment(1);
            let frame = match result {
                Ok(data) => match &id {
                    Some(id) => herald_proto::encode(
                        outlet.format,
                        herald_proto::ServerKind::Reply,
                        Some(id),
                        &serde_json::json!({ "data": data }),
                    )
                    .ok(),
                    None => None,
                },
                Err(e) => herald_proto::encode(
                    outlet.format,
                    herald_proto::ServerKind::Error,
                    id.as_ref(),
                    &ErrorPayload::new(e.code, e.message),
                )
                .ok(),
            };
            if let Some(f) = frame {
                outlet.push_reply(f);
            }
        });
        Ok(())
    }
}

/// Record a backend that could not answer (down, 5xx after the retries, too slow) as a dead
/// letter; refusals are answers, not failures.
pub(super) fn backend_failed(
    node: &Node,
    kind: &str,
    ctx: &RpcContext,
    target: Option<&str>,
    e: &EngineError,
) {
    if !matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout) {
        return;
    }
    node.dead_letters().push(
        crate::journal::DeadLetterKind::BackendFailed,
        serde_json::json!({
            "proxy": kind,
            "target": target,
            "client_id": ctx.client_id,
            "user_id": ctx.user_id,
            "code": e.code,
            "error": e.message,
        }),
    );
}

//! The node in a cluster: the control bus, applying control messages, kept revocations.

use std::sync::Arc;

use herald_proto::{CloseCode, ErrorCode};

use crate::error::EngineError;

use super::*;

impl Node {
    /// Join a cluster: server API commands are broadcast over `bus` (once).
    pub fn set_control_bus(&self, bus: Arc<dyn crate::cluster::ControlBus>) -> bool {
        self.control.set(bus).is_ok()
    }

    /// The cluster's control bus, when this node is part of one.
    pub fn control_bus(&self) -> Option<&Arc<dyn crate::cluster::ControlBus>> {
        self.control.get()
    }

    /// Apply a command here and broadcast it to the other nodes. Returns how many sessions it
    /// touched on this node; fails (after applying it here) when the broadcast fails.
    pub async fn cluster(&self, msg: crate::cluster::ControlMessage) -> Result<usize, EngineError> {
        let here = self.apply_control(&msg);
        if let Some(bus) = self.control.get() {
            let env = crate::cluster::ControlEnvelope {
                from: self.node_id.clone(),
                msg,
            };
            let payload = serde_json::to_vec(&env)
                .map_err(|e| EngineError::new(ErrorCode::Internal, e.to_string()))?;
            use crate::cluster::ControlMessage as M;
            if let M::RevokeUser { expires_at, .. } | M::RevokeToken { expires_at, .. } = &env.msg {
                bus.keep(&payload, *expires_at).await?;
            }
            bus.broadcast(payload).await?;
        }
        Ok(here)
    }

    /// Apply the kept cluster commands (revocations) that are still in force: call once when
    /// joining a cluster, before serving. Returns how many were applied.
    pub async fn replay_kept(&self) -> Result<usize, EngineError> {
        let Some(bus) = self.control.get() else {
            return Ok(0);
        };
        let kept = bus.kept().await?;
        for payload in &kept {
            match serde_json::from_slice::<crate::cluster::ControlEnvelope>(payload) {
                Ok(env) => {
                    self.apply_control(&env.msg);
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed kept control message"),
            }
        }
        Ok(kept.len())
    }

    /// A control message from the bus: apply it unless this node sent it.
    pub fn on_control(&self, payload: &[u8]) {
        match serde_json::from_slice::<crate::cluster::ControlEnvelope>(payload) {
            Ok(env) if env.from != self.node_id => {
                let n = self.apply_control(&env.msg);
                tracing::debug!(from = %env.from, sessions = n, "applied a cluster command");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed control message"),
        }
    }

    pub(super) fn apply_control(&self, msg: &crate::cluster::ControlMessage) -> usize {
        use crate::cluster::ControlMessage as M;
        match msg {
            M::DisconnectUser { user } => self.disconnect_user(user, CloseCode::ForceDisconnect),
            M::DisconnectClient { client } => {
                usize::from(self.disconnect_client(client, CloseCode::ForceDisconnect))
            }
            M::RevokeUser { user, expires_at } => self.revoke_user(user, *expires_at),
            M::RevokeToken { jti, expires_at } => self.revoke_token(jti, *expires_at),
            M::Subscribe { user, channel } => self.command_user(
                user,
                crate::session::ServerCommand::Subscribe(channel.clone()),
            ),
            M::Unsubscribe { user, channel } => self.command_user(
                user,
                crate::session::ServerCommand::Unsubscribe(channel.clone()),
            ),
        }
    }
}

//! The node in a cluster: the control bus, applying control messages, kept revocations.

use std::sync::Arc;

use herald_proto::CloseCode;

use crate::cluster::{
    ConnectionLimiter, ControlEnvelope, ControlHandler, ControlPlane, NodeRegistry,
};
use crate::error::EngineError;

use super::*;

impl Node {
    /// Join a cluster: server API commands are broadcast over `bus` (once).
    pub fn set_control_bus(&self, bus: Arc<dyn ControlPlane>) -> bool {
        self.control.set(bus).is_ok()
    }

    /// The cluster's control plane, when this node is part of one.
    pub fn control_bus(&self) -> Option<&Arc<dyn ControlPlane>> {
        self.control.get()
    }

    /// Who is in the cluster, when this node is part of one.
    pub fn node_registry(&self) -> Option<Arc<dyn NodeRegistry>> {
        self.control
            .get()
            .map(|c| c.clone() as Arc<dyn NodeRegistry>)
    }

    /// The cluster-wide per-user connection count, when this node is part of a cluster.
    pub fn connection_limiter(&self) -> Option<Arc<dyn ConnectionLimiter>> {
        self.control
            .get()
            .map(|c| c.clone() as Arc<dyn ConnectionLimiter>)
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
            use crate::cluster::ControlMessage as M;
            if let M::RevokeUser { expires_at, .. } | M::RevokeToken { expires_at, .. } = &env.msg {
                // Live nodes get it even when it cannot be kept; the caller hears why.
                let kept = bus.keep(&env, *expires_at).await;
                bus.broadcast(&env).await?;
                kept?;
            } else {
                bus.broadcast(&env).await?;
            }
        }
        Ok(here)
    }

    /// Install the receiver of [`ControlMessage::Relay`](crate::cluster::ControlMessage::Relay)
    /// payloads addressed to this node (once).
    pub fn set_relay_handler(&self, handler: Arc<dyn crate::cluster::RelayHandler>) -> bool {
        self.relay.set(handler).is_ok()
    }

    /// Send a transport payload to node `to` over the control bus (best effort, at most once:
    /// the caller times out). `Unavailable` when this node is not in a cluster.
    pub async fn relay(&self, to: &str, payload: String) -> Result<(), EngineError> {
        let Some(bus) = self.control.get() else {
            return Err(EngineError::new(
                herald_proto::ErrorCode::Unavailable,
                "not in a cluster: no other node to reach",
            ));
        };
        let env = ControlEnvelope {
            from: self.node_id.clone(),
            msg: crate::cluster::ControlMessage::Relay {
                to: to.to_owned(),
                payload,
            },
        };
        bus.broadcast(&env).await?;
        Ok(())
    }

    /// Apply the kept cluster commands (revocations) that are still in force: call once when
    /// joining a cluster, before serving. Returns how many were applied.
    pub async fn replay_kept(&self) -> Result<usize, EngineError> {
        let Some(bus) = self.control.get() else {
            return Ok(0);
        };
        let kept = bus.kept().await?;
        for env in &kept {
            self.apply_control(&env.msg);
        }
        Ok(kept.len())
    }

    /// A control message from the bus: apply it unless this node sent it.
    pub fn on_control(&self, env: ControlEnvelope) {
        if let crate::cluster::ControlMessage::Relay { to, payload } = &env.msg {
            if *to == self.node_id
                && let Some(h) = self.relay.get()
            {
                h.on_relay(&env.from, payload);
            }
            return;
        }
        if env.from != self.node_id {
            let n = self.apply_control(&env.msg);
            tracing::debug!(from = %env.from, sessions = n, "applied a cluster command");
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
            M::Subscribe { user, channel } => {
                self.command_user(user, super::ServerCommand::Subscribe(channel.clone()))
            }
            M::Unsubscribe { user, channel } => {
                self.command_user(user, super::ServerCommand::Unsubscribe(channel.clone()))
            }
            M::Relay { .. } => 0,
        }
    }
}

impl ControlHandler for std::sync::Weak<Node> {
    fn on_control(&self, env: ControlEnvelope) {
        if let Some(node) = self.upgrade() {
            node.on_control(env);
        }
    }
}

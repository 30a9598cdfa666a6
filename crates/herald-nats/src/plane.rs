//! The NATS engine's control plane: the control subject (broadcast), node announcements, kept
//! revocations (a JetStream stream; none without JetStream) and per-user connection counts (each
//! node answers for its own: approximate).

use std::sync::Arc;

use async_nats::jetstream::{self, stream};
use async_trait::async_trait;
use bytes::Bytes;
use herald_core::broker::BrokerError;
use herald_core::cluster::{
    ConnectionLimiter, ControlBus, ControlEnvelope, ControlHandler, NodeInfo, NodeRegistry,
    RevocationStore,
};
use herald_core::publication::now_ms;

use crate::broker::NatsBroker;
use crate::control::NODE_STALE;
use crate::plumbing::{lock, unavailable};

#[async_trait]
impl ControlBus for NatsBroker {
    fn set_control_handler(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.cluster.control.set(handler);
    }

    async fn broadcast(&self, env: &ControlEnvelope) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_vec(env).map_err(|e| BrokerError::Unsupported(e.to_string()))?;
        let c = &self.shared.client;
        c.publish(
            format!("{}.control", self.shared.cfg.prefix),
            payload.into(),
        )
        .await
        .map_err(unavailable)?;
        c.flush().await.map_err(unavailable)
    }
}

#[async_trait]
impl NodeRegistry for NatsBroker {
    async fn announce(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_vec(node).map_err(unavailable)?;
        self.shared
            .client
            .publish(format!("{}.nodes", self.shared.cfg.prefix), json.into())
            .await
            .map_err(unavailable)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let fresh = now_ms().saturating_sub(NODE_STALE.as_millis() as u64);
        let mut nodes = lock(&self.cluster.nodes);
        nodes.retain(|_, n| n.updated_ms >= fresh);
        let mut out: Vec<NodeInfo> = nodes.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait]
impl RevocationStore for NatsBroker {
    async fn keep(&self, env: &ControlEnvelope, until: u64) -> Result<(), BrokerError> {
        let Some((ctx, _)) = &self.cluster.kept else {
            return Err(BrokerError::Unsupported(
                "revocations are not kept without JetStream (nats.jetstream = true): they reached \
                 the nodes running now, a node started later will not know them"
                    .into(),
            ));
        };
        let payload =
            serde_json::to_vec(env).map_err(|e| BrokerError::Unsupported(e.to_string()))?;
        let p = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(payload))
            .header("Herald-Until", until.to_string().as_str());
        ctx.send_publish(format!("{}.kept", self.shared.cfg.prefix), p)
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn kept(&self) -> Result<Vec<ControlEnvelope>, BrokerError> {
        let Some((_, s)) = &self.cluster.kept else {
            return Ok(Vec::new());
        };
        let now = now_ms() / 1000;
        let subject = format!("{}.kept", self.shared.cfg.prefix);
        let mut out = Vec::new();
        let mut seq = 1;
        loop {
            let m = s
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match m {
                Ok(m) => {
                    seq = m.sequence + 1;
                    let until = m
                        .headers
                        .get("Herald-Until")
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                        .unwrap_or(0);
                    if until >= now {
                        match serde_json::from_slice(&m.payload) {
                            Ok(env) => out.push(env),
                            Err(e) => {
                                tracing::warn!(error = %e, "ignoring a malformed kept control message")
                            }
                        }
                    }
                }
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                    return Ok(out);
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}

#[async_trait]
impl ConnectionLimiter for NatsBroker {
    async fn acquire_connection(
        &self,
        user: &str,
        conn: &str,
        max: usize,
    ) -> Result<bool, BrokerError> {
        let answers = self.cluster.peers.gather("conns", user).await?;
        let others: usize = answers
            .iter()
            .filter_map(|a| std::str::from_utf8(a).ok()?.parse::<usize>().ok())
            .sum();
        Ok(lock(&self.cluster.conns).admit(user, conn, others, max))
    }

    async fn release_connection(&self, user: &str, conn: &str) -> Result<(), BrokerError> {
        lock(&self.cluster.conns).release(user, conn);
        Ok(())
    }
}

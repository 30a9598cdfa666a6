//! An in-process control plane: several nodes in one process share a [`MemoryCluster`]. The
//! reference implementation of the control-plane traits (the conformance suite runs on it like on
//! Redis and NATS) and a cluster for tests without a server. A `herald serve` on the memory engine
//! is a single node and uses none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::cluster::{
    ConnectionLimiter, ControlBus, ControlEnvelope, ControlHandler, NodeInfo, NodeRegistry,
    RevocationStore, UserConnections,
};
use crate::publication::now_ms;
use crate::sync::lock;

/// Nodes that have not announced themselves for this long are not listed.
const NODE_STALE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    handlers: Mutex<Vec<Arc<dyn ControlHandler>>>,
    nodes: Mutex<BTreeMap<String, NodeInfo>>,
    kept: Mutex<Vec<(ControlEnvelope, u64)>>,
    conns: Mutex<UserConnections>,
}

/// The state the nodes of one in-process cluster share.
#[derive(Clone, Default)]
pub struct MemoryCluster {
    shared: Arc<Shared>,
}

impl MemoryCluster {
    /// An empty cluster.
    pub fn new() -> MemoryCluster {
        MemoryCluster::default()
    }

    /// The control plane of one more node.
    pub fn node(&self) -> MemoryControl {
        MemoryControl {
            shared: self.shared.clone(),
        }
    }
}

/// One node's view of a [`MemoryCluster`]. Guarantees: broadcast reaches every node whose
/// handler is installed, synchronously; the registry, the kept messages and the connection count
/// are exact (one mutex each).
pub struct MemoryControl {
    shared: Arc<Shared>,
}

#[async_trait]
impl ControlBus for MemoryControl {
    fn set_control_handler(&self, handler: Arc<dyn ControlHandler>) {
        lock(&self.shared.handlers).push(handler);
    }

    async fn broadcast(&self, env: &ControlEnvelope) -> Result<(), BrokerError> {
        let handlers = lock(&self.shared.handlers).clone();
        for h in handlers {
            h.on_control(env.clone());
        }
        Ok(())
    }
}

#[async_trait]
impl NodeRegistry for MemoryControl {
    async fn announce(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        lock(&self.shared.nodes).insert(node.id.clone(), node.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let fresh = now_ms().saturating_sub(NODE_STALE.as_millis() as u64);
        let mut nodes = lock(&self.shared.nodes);
        nodes.retain(|_, n| n.updated_ms >= fresh);
        Ok(nodes.values().cloned().collect())
    }
}

#[async_trait]
impl RevocationStore for MemoryControl {
    async fn keep(&self, env: &ControlEnvelope, until: u64) -> Result<(), BrokerError> {
        lock(&self.shared.kept).push((env.clone(), until));
        Ok(())
    }

    async fn kept(&self) -> Result<Vec<ControlEnvelope>, BrokerError> {
        let now = now_ms() / 1000;
        let mut kept = lock(&self.shared.kept);
        kept.retain(|(_, until)| *until >= now);
        Ok(kept.iter().map(|(e, _)| e.clone()).collect())
    }
}

#[async_trait]
impl ConnectionLimiter for MemoryControl {
    async fn acquire_connection(
        &self,
        user: &str,
        conn: &str,
        max: usize,
    ) -> Result<bool, BrokerError> {
        Ok(lock(&self.shared.conns).admit(user, conn, 0, max))
    }

    async fn release_connection(&self, user: &str, conn: &str) -> Result<(), BrokerError> {
        lock(&self.shared.conns).release(user, conn);
        Ok(())
    }
}

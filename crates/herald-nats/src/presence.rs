//! [`NatsPresence`]: each node keeps its own clients' presence; a query asks every live node
//! (scatter-gather on `PREFIX.presence.CHANNEL`) and merges the answers. A node that died answers
//! nothing, so it leaves no ghosts; a node that is slower than `presence_timeout` is missing from
//! that one answer.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::broker::BrokerError;
use herald_core::memory::MemoryPresence;
use herald_core::presence::PresenceStore;
use herald_proto::envelope::{ClientInfo, PresenceStats};

use crate::NatsBroker;

/// Presence over NATS.
pub struct NatsPresence {
    local: Arc<MemoryPresence>,
    peers: Arc<crate::control::Peers>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NatsPresence {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NatsPresence {
    /// Presence for the broker's node; answers the other nodes' queries.
    pub async fn new(broker: &NatsBroker) -> Result<NatsPresence, BrokerError> {
        let local = Arc::new(MemoryPresence::new());
        let peers = broker.cluster.peers.clone();
        let l = local.clone();
        let task = peers
            .serve("presence", move |channel| {
                let l = l.clone();
                Box::pin(async move {
                    let list = l.list(&channel).await.unwrap_or_default();
                    Bytes::from(serde_json::to_vec(&list).unwrap_or_default())
                })
            })
            .await?;
        Ok(NatsPresence { local, peers, task })
    }
}

#[async_trait]
impl PresenceStore for NatsPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        self.local.add(channel, client).await
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), BrokerError> {
        self.local.remove(channel, client_id).await
    }

    async fn list(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let mut all = self.local.list(channel).await?;
        let mut seen: HashSet<String> = all.iter().map(|c| c.client_id.clone()).collect();
        for answer in self.peers.gather("presence", channel).await? {
            let Ok(list) = serde_json::from_slice::<Vec<ClientInfo>>(&answer) else {
                continue;
            };
            for c in list {
                if seen.insert(c.client_id.clone()) {
                    all.push(c);
                }
            }
        }
        Ok(all)
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        let all = self.list(channel).await?;
        let users: HashSet<&str> = all.iter().map(|c| c.user_id.as_str()).collect();
        Ok(PresenceStats {
            clients: all.len() as u64,
            users: users.len() as u64,
        })
    }
}

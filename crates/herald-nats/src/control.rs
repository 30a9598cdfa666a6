//! Cluster plumbing over NATS: peers (who is alive, for scatter-gather queries), the control
//! subject, node announcements, kept revocations (a small JetStream stream), and per-user
//! connection counts (each node answers for its own connections).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use herald_core::broker::BrokerError;
use herald_core::cluster::{ControlEnvelope, ControlHandler, NodeInfo, UserConnections};

use crate::config::NatsConfig;
use crate::plumbing::{HEARTBEAT, lock, unavailable};
use crate::subject::token;

/// Nodes that have not announced themselves for this long are not listed.
pub(crate) const NODE_STALE: Duration = Duration::from_secs(10);

/// Live peers and scatter-gather requests to them.
pub(crate) struct Peers {
    pub(crate) id: String,
    client: async_nats::Client,
    prefix: String,
    timeout: Duration,
    seen: Mutex<HashMap<String, Instant>>,
    started: Instant,
}

impl Peers {
    fn alive(&self) -> usize {
        let now = Instant::now();
        lock(&self.seen)
            .iter()
            .filter(|(id, at)| **id != self.id && now.duration_since(**at) < HEARTBEAT * 3)
            .count()
    }

    /// Ask every other node on `subject` (`PREFIX.kind.TOKEN`) and collect the answers: until all
    /// live peers answered, or the timeout. Answers of nodes that did not answer in time are
    /// missing (a dead node answers nothing: no ghosts).
    pub(crate) async fn gather(&self, kind: &str, key: &str) -> Result<Vec<Bytes>, BrokerError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable)?;
        let subject = format!("{}.{kind}.{}", self.prefix, token(key));
        self.client
            .publish_with_reply(subject, inbox, self.id.clone().into())
            .await
            .map_err(unavailable)?;
        self.client.flush().await.map_err(unavailable)?;
        // Until the peer list is warm, wait the whole timeout: a peer may not be known yet.
        let expected = if self.started.elapsed() > HEARTBEAT * 3 {
            Some(self.alive())
        } else {
            None
        };
        let mut out = Vec::new();
        if expected == Some(0) {
            return Ok(out);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
            out.push(m.payload);
            if expected.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
        Ok(out)
    }

    /// Answer requests on `PREFIX.kind.*` with `answer(key)` (not our own requests).
    pub(crate) async fn serve<F>(
        self: &Arc<Self>,
        kind: &str,
        answer: F,
    ) -> Result<tokio::task::JoinHandle<()>, BrokerError>
    where
        F: Fn(String) -> futures_util::future::BoxFuture<'static, Bytes> + Send + Sync + 'static,
    {
        let mut sub = self
            .client
            .subscribe(format!("{}.{kind}.*", self.prefix))
            .await
            .map_err(unavailable)?;
        // The server knows the subscription before this returns: a query right after is answered.
        crate::plumbing::sync(&self.client, &self.prefix).await?;
        let me = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if m.payload.as_ref() == me.id.as_bytes() {
                    continue;
                }
                let (Some(reply), Some(key)) = (
                    m.reply.clone(),
                    m.subject
                        .rsplit('.')
                        .next()
                        .and_then(crate::subject::channel),
                ) else {
                    continue;
                };
                let body = answer(key).await;
                let _ = me.client.publish(reply, body).await;
            }
        }))
    }
}

/// The cluster side of a [`NatsBroker`].
pub(crate) struct Cluster {
    pub(crate) peers: Arc<Peers>,
    pub(crate) control: Arc<OnceLock<Arc<dyn ControlHandler>>>,
    pub(crate) nodes: Arc<Mutex<HashMap<String, NodeInfo>>>,
    pub(crate) conns: Arc<Mutex<UserConnections>>,
    pub(crate) kept: Option<(jetstream::Context, stream::Stream)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    pub(crate) async fn start(
        cfg: &NatsConfig,
        client: async_nats::Client,
    ) -> Result<Cluster, BrokerError> {
        let peers = Arc::new(Peers {
            id: format!("{:016x}", rand::random::<u64>()),
            client: client.clone(),
            prefix: cfg.prefix.clone(),
            timeout: cfg.presence_timeout,
            seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
        });
        let mut tasks = Vec::new();
        // Heartbeats: who is alive.
        let mut hb = client
            .subscribe(format!("{}.peers", cfg.prefix))
            .await
            .map_err(unavailable)?;
        let p = peers.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = hb.next().await {
                if let Ok(id) = std::str::from_utf8(&m.payload) {
                    lock(&p.seen).insert(id.to_owned(), Instant::now());
                }
            }
        }));
        let (c, p) = (client.clone(), peers.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let _ = c
                    .publish(format!("{}.peers", p.prefix), p.id.clone().into())
                    .await;
                tokio::time::sleep(HEARTBEAT).await;
            }
        }));
        // Control messages.
        let control: Arc<OnceLock<Arc<dyn ControlHandler>>> = Arc::new(OnceLock::new());
        let mut sub = client
            .subscribe(format!("{}.control", cfg.prefix))
            .await
            .map_err(unavailable)?;
        let h = control.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                match (
                    h.get(),
                    serde_json::from_slice::<ControlEnvelope>(&m.payload),
                ) {
                    (Some(h), Ok(env)) => h.on_control(env),
                    (_, Err(e)) => {
                        tracing::warn!(error = %e, "ignoring a malformed control message")
                    }
                    (None, Ok(_)) => {}
                }
            }
        }));
        // Node announcements.
        let nodes: Arc<Mutex<HashMap<String, NodeInfo>>> = Arc::default();
        let mut sub = client
            .subscribe(format!("{}.nodes", cfg.prefix))
            .await
            .map_err(unavailable)?;
        let n = nodes.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Ok(info) = serde_json::from_slice::<NodeInfo>(&m.payload) {
                    lock(&n).insert(info.id.clone(), info);
                }
            }
        }));
        // Connection counts: each node answers for its own.
        let conns: Arc<Mutex<UserConnections>> = Arc::default();
        let c = conns.clone();
        tasks.push(
            peers
                .serve("conns", move |user| {
                    let n = lock(&c).count(&user);
                    Box::pin(async move { Bytes::from(n.to_string()) })
                })
                .await?,
        );
        let kept = match &cfg.jetstream {
            true => {
                let ctx = jetstream::ContextBuilder::new()
                    .timeout(cfg.timeout)
                    .build(client.clone());
                let s = ctx
                    .get_or_create_stream(stream::Config {
                        name: format!("{}_KEPT", cfg.stream),
                        subjects: vec![format!("{}.kept", cfg.prefix)],
                        storage: match cfg.storage {
                            crate::config::Storage::File => stream::StorageType::File,
                            crate::config::Storage::Memory => stream::StorageType::Memory,
                        },
                        max_age: Duration::from_secs(30 * 24 * 3600),
                        num_replicas: cfg.replicas,
                        ..Default::default()
                    })
                    .await
                    .map_err(unavailable)?;
                Some((ctx, s))
            }
            false => None,
        };
        client.flush().await.map_err(unavailable)?;
        Ok(Cluster {
            peers,
            control,
            nodes,
            conns,
            kept,
            tasks,
        })
    }
}

//! [`RedisPresence`]: channel presence shared by the cluster, with leases.
//!
//! Per channel: a sorted set client → lease end, a hash client → info, a hash client → user and
//! a hash user → number of clients (so `stats` counts users without listing members). Each node
//! re-adds its own entries every quarter lease; entries of a node that stopped refreshing (crashed,
//! cut off) are dropped by the next read or write of that channel once their lease ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use herald_core::broker::BrokerError;
use herald_core::presence::PresenceStore;
use herald_proto::envelope::{ClientInfo, PresenceStats};
use redis::aio::ConnectionManager;

use crate::broker::{Names, unavailable};

struct Scripts {
    add: redis::Script,
    remove: redis::Script,
    read: redis::Script,
}

/// This node's entries, re-added every quarter lease: (channel, client) → (user, info JSON).
type Local = Mutex<HashMap<(String, String), (String, String)>>;

struct Inner {
    conn: ConnectionManager,
    names: Names,
    lease_ms: u64,
    scripts: Scripts,
    local: Local,
}

/// Presence in Redis.
pub struct RedisPresence {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisPresence {
    /// Presence over the broker's connection; starts the lease refresher.
    pub fn new(broker: &crate::RedisBroker) -> RedisPresence {
        let cfg = broker.config();
        let inner = Arc::new(Inner {
            conn: broker.connection(),
            names: Names {
                prefix: cfg.prefix.clone(),
            },
            lease_ms: cfg.presence_lease.as_millis() as u64,
            scripts: Scripts {
                add: crate::scripts::presence_add(),
                remove: crate::scripts::presence_remove(),
                read: crate::scripts::presence_read(),
            },
            local: Mutex::new(HashMap::new()),
        });
        tokio::spawn(refresh(Arc::downgrade(&inner), cfg.presence_lease / 4));
        RedisPresence { inner }
    }
}

impl Inner {
    /// An invocation of `script` with the channel's four presence keys.
    fn keyed<'a>(&self, script: &'a redis::Script, channel: &str) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.names.key(channel, "pres"))
            .key(self.names.key(channel, "pinfo"))
            .key(self.names.key(channel, "puser"))
            .key(self.names.key(channel, "pcount"));
        inv
    }

    async fn add(
        &self,
        channel: &str,
        client: &str,
        user: &str,
        info: &str,
    ) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let mut inv = self.keyed(&self.scripts.add, channel);
        inv.arg(client).arg(user).arg(info).arg(self.lease_ms);
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn read(
        &self,
        channel: &str,
        list: bool,
    ) -> Result<(u64, u64, Vec<String>), BrokerError> {
        let mut conn = self.conn.clone();
        let mut inv = self.keyed(&self.scripts.read, channel);
        inv.arg(if list { "1" } else { "0" });
        inv.invoke_async(&mut conn).await.map_err(unavailable)
    }
}

/// Re-add this node's entries every `every` while the store lives.
async fn refresh(inner: Weak<Inner>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let entries: Vec<_> = lock(&inner.local)
            .iter()
            .map(|((ch, c), (u, i))| (ch.clone(), c.clone(), u.clone(), i.clone()))
            .collect();
        for (ch, client, user, info) in entries {
            if let Err(e) = inner.add(&ch, &client, &user, &info).await {
                tracing::warn!(error = %e, "presence lease refresh failed");
                break;
            }
        }
    }
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn add(&self, channel: &str, client: ClientInfo) -> Result<(), BrokerError> {
        let info = serde_json::to_string(&client).map_err(unavailable)?;
        lock(&self.inner.local).insert(
            (channel.to_owned(), client.client_id.clone()),
            (client.user_id.clone(), info.clone()),
        );
        self.inner
            .add(channel, &client.client_id, &client.user_id, &info)
            .await
    }

    async fn remove(&self, channel: &str, client_id: &str) -> Result<(), BrokerError> {
        lock(&self.inner.local).remove(&(channel.to_owned(), client_id.to_owned()));
        let mut conn = self.inner.conn.clone();
        let mut inv = self.inner.keyed(&self.inner.scripts.remove, channel);
        inv.arg(client_id);
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn list(&self, channel: &str) -> Result<Vec<ClientInfo>, BrokerError> {
        let (_, _, infos) = self.inner.read(channel, true).await?;
        Ok(infos
            .iter()
            .filter_map(|i| serde_json::from_str(i).ok())
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStats, BrokerError> {
        let (clients, users, _) = self.inner.read(channel, false).await?;
        Ok(PresenceStats { clients, users })
    }
}

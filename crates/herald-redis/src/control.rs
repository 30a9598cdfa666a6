//! The Redis engine's control plane: the control topic (broadcast), node announcements (a hash),
//! kept revocations (a sorted set by expiry) and per-user connection counts (a sorted set per user,
//! changed by one script, so the limit is atomic).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::broker::BrokerError;
use herald_core::cluster::{
    ConnectionLimiter, ControlBus, ControlEnvelope, ControlHandler, NodeInfo, NodeRegistry,
    RevocationStore,
};

use crate::broker::{RedisBroker, lock, unavailable};

/// Nodes that have not announced themselves for this long are not listed.
const NODE_STALE: Duration = Duration::from_secs(10);

fn parse(payload: &[u8]) -> Option<ControlEnvelope> {
    match serde_json::from_slice(payload) {
        Ok(env) => Some(env),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a malformed kept control message");
            None
        }
    }
}

#[async_trait]
impl ControlBus for RedisBroker {
    fn set_control_handler(&self, handler: Arc<dyn ControlHandler>) {
        let _ = self.control.set(handler);
    }

    async fn broadcast(&self, env: &ControlEnvelope) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_vec(env).map_err(|e| BrokerError::Unsupported(e.to_string()))?;
        self.broadcast_control(&payload).await
    }
}

#[async_trait]
impl NodeRegistry for RedisBroker {
    async fn announce(&self, node: &NodeInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(node).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let key = format!("{}:nodes", self.names.prefix);
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(&node.id)
            .arg(json)
            .ignore()
            // Gone with the last node (stale entries are dropped by `nodes`).
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(NODE_STALE.as_millis() as u64 * 6)
            .ignore()
            .query_async(&mut conn)
            .await;
        self.checked(r)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let key = format!("{}:nodes", self.names.prefix);
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<HashMap<String, String>> =
            redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await;
        let all = self.checked(r)?;
        let now = herald_core::publication::now_ms();
        let fresh = now.saturating_sub(NODE_STALE.as_millis() as u64);
        let mut nodes = Vec::new();
        let mut gone = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<NodeInfo>(&json) {
                Ok(n) if n.updated_ms >= fresh => nodes.push(n),
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("HDEL")
                .arg(&key)
                .arg(gone)
                .query_async(&mut conn)
                .await;
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }
}

#[async_trait]
impl RevocationStore for RedisBroker {
    async fn keep(&self, env: &ControlEnvelope, until: u64) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_vec(env).map_err(|e| BrokerError::Unsupported(e.to_string()))?;
        let mut conn = self.conn.clone();
        let key = format!("{}:kept", self.names.prefix);
        let now = herald_core::publication::now_ms() / 1000;
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg(until)
            .arg(&payload)
            .ignore()
            // The set lives as long as its longest entry.
            .cmd("EXPIRE")
            .arg(&key)
            .arg(until.saturating_sub(now).max(1))
            .arg("GT")
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(until.saturating_sub(now).max(1))
            .arg("NX")
            .ignore()
            .query_async(&mut conn)
            .await;
        self.checked(r)
    }

    async fn kept(&self) -> Result<Vec<ControlEnvelope>, BrokerError> {
        let key = format!("{}:kept", self.names.prefix);
        let now = herald_core::publication::now_ms() / 1000;
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<i64> = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({now}"))
            .query_async(&mut conn)
            .await;
        let r: redis::RedisResult<Vec<Vec<u8>>> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(now)
            .arg("+inf")
            .query_async(&mut conn)
            .await;
        Ok(self.checked(r)?.iter().filter_map(|p| parse(p)).collect())
    }
}

#[async_trait]
impl ConnectionLimiter for RedisBroker {
    async fn acquire_connection(
        &self,
        user: &str,
        conn: &str,
        max: usize,
    ) -> Result<bool, BrokerError> {
        let r = self.conns.acquire(user, conn, max).await;
        let ok = self.checked(r)?;
        if ok {
            lock(&self.conns.live).insert((user.to_owned(), conn.to_owned()), max);
        }
        Ok(ok)
    }

    async fn release_connection(&self, user: &str, conn: &str) -> Result<(), BrokerError> {
        lock(&self.conns.live).remove(&(user.to_owned(), conn.to_owned()));
        let mut c = self.conn.clone();
        let r: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(format!("{}:user:{{{user}}}:conns", self.names.prefix))
            .arg(conn)
            .query_async(&mut c)
            .await;
        self.checked(r).map(|_| ())
    }
}

//! `[redis]` settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach Redis and how to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key and topic, so several Herald clusters can share one Redis.
    pub prefix: String,
    /// Pub/Sub connections per node; channels are spread over them by hash.
    pub pubsub_connections: usize,
    /// How long a presence entry lives without a refresh from its node (a crashed node's
    /// entries disappear within this time). Nodes refresh every quarter of it.
    #[serde(with = "humantime_serde")]
    pub presence_lease: Duration,
    /// Timeout of one Redis command (then `unavailable`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "herald".into(),
            pubsub_connections: 2,
            presence_lease: Duration::from_secs(20),
            timeout: Duration::from_secs(2),
        }
    }
}

impl RedisConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), herald_core::config::ConfigError> {
        self.check().map_err(herald_core::config::ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        if self.pubsub_connections == 0 || self.pubsub_connections > 64 {
            return Err("redis.pubsub_connections must be 1-64".into());
        }
        if self.presence_lease < Duration::from_secs(1) {
            return Err("redis.presence_lease must be at least 1s".into());
        }
        if self.timeout.is_zero() {
            return Err("redis.timeout must be > 0".into());
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err("redis.prefix must be non-empty and without braces".into());
        }
        Ok(())
    }
}

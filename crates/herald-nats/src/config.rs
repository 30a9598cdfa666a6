//! `[nats]` settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How to reach NATS and how to use it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port` (comma-separate several servers of one NATS cluster).
    pub url: String,
    /// Prefix of every subject (several Herald clusters can share one NATS).
    pub prefix: String,
    /// Use JetStream: history, recovery and ordered offsets. Without it only namespaces without
    /// history may be configured (checked at startup).
    pub jetstream: bool,
    /// JetStream stream holding every channel (`PREFIX.in.>`).
    pub stream: String,
    /// Publications the stream keeps per channel at most (namespaces keep `history_size` of them).
    pub max_history: usize,
    /// `file` or `memory` storage for the stream.
    pub storage: Storage,
    /// Stream replicas (in a NATS cluster).
    pub replicas: usize,
    /// Window in which JetStream deduplicates idempotency keys.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long a presence query waits for the other nodes' answers.
    #[serde(with = "humantime_serde")]
    pub presence_timeout: Duration,
    /// Timeout of one NATS request (then `unavailable`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Stream storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "herald".into(),
            jetstream: true,
            stream: "HERALD".into(),
            max_history: 1000,
            storage: Storage::File,
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            presence_timeout: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
        }
    }
}

impl NatsConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), herald_core::config::ConfigError> {
        self.check().map_err(herald_core::config::ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token(&self.prefix) {
            return Err("nats.prefix must be letters, digits, `_` or `-`".into());
        }
        if !token(&self.stream) {
            return Err("nats.stream must be letters, digits, `_` or `-`".into());
        }
        if self.max_history == 0 {
            return Err("nats.max_history must be > 0".into());
        }
        if self.timeout.is_zero() || self.presence_timeout.is_zero() {
            return Err("nats.timeout and nats.presence_timeout must be > 0".into());
        }
        Ok(())
    }
}

//! Helpers for this crate's unit tests: a node over the memory engine, without sockets.

use std::sync::Arc;

use crate::auth::{AuthConfig, Verifier};
use crate::config::{EngineConfig, LimitsConfig, NamespaceOptions};
use crate::memory::{MemoryBroker, MemoryPresence};
use crate::node::{Heartbeat, Node};

/// A node with the `--dev` default namespace and no rate limits, adjusted by `f`.
pub(crate) fn node_with(f: impl FnOnce(&mut EngineConfig)) -> Arc<Node> {
    let mut cfg = EngineConfig {
        default_namespace: Some(NamespaceOptions::dev()),
        limits: LimitsConfig::unlimited(),
        ..Default::default()
    };
    f(&mut cfg);
    let verifier = Arc::new(Verifier::from_config(&AuthConfig::default()).expect("verifier"));
    Node::new(
        cfg,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        Heartbeat {
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
        },
        verifier,
    )
}

//! The engine conformance suite against a real Redis, with three nodes on one server.

mod support;

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::broker::Broker;
use herald_core::cluster::ControlPlane;
use herald_core::conformance::{Backend, run_all};
use herald_core::presence::PresenceStore;
use herald_redis::{RedisBroker, RedisConfig, RedisPresence};

struct Redis {
    cfg: RedisConfig,
}

#[async_trait]
impl Backend for Redis {
    async fn node(&self) -> Arc<dyn Broker> {
        Arc::new(
            RedisBroker::connect(self.cfg.clone())
                .await
                .expect("connect"),
        )
    }
    async fn presence(&self) -> Arc<dyn PresenceStore> {
        let b = RedisBroker::connect(self.cfg.clone())
            .await
            .expect("connect");
        Arc::new(RedisPresence::new(&b))
    }
    fn shared(&self) -> bool {
        true
    }
    async fn control(&self) -> Option<Arc<dyn ControlPlane>> {
        Some(Arc::new(
            RedisBroker::connect(self.cfg.clone())
                .await
                .expect("connect"),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_engine_conforms() {
    let Some(cfg) = support::redis_config().await else {
        return;
    };
    run_all(&Redis { cfg }).await;
}

//! The engine conformance suite against a real NATS server with JetStream (three nodes).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::broker::Broker;
use herald_core::cluster::ControlPlane;
use herald_core::conformance::{Backend, run_all};
use herald_core::presence::PresenceStore;
use herald_nats::{NatsBroker, NatsConfig, NatsPresence, config::Storage};

struct Nats {
    cfg: NatsConfig,
}

#[async_trait]
impl Backend for Nats {
    async fn node(&self) -> Arc<dyn Broker> {
        Arc::new(
            NatsBroker::connect(self.cfg.clone())
                .await
                .expect("connect"),
        )
    }
    async fn presence(&self) -> Arc<dyn PresenceStore> {
        let b = NatsBroker::connect(self.cfg.clone())
            .await
            .expect("connect");
        let p = NatsPresence::new(&b).await.expect("presence");
        // The broker (and its cluster subscriptions) must live as long as the store.
        std::mem::forget(b);
        Arc::new(p)
    }
    fn shared(&self) -> bool {
        true
    }
    async fn control(&self) -> Option<Arc<dyn ControlPlane>> {
        Some(Arc::new(
            NatsBroker::connect(self.cfg.clone())
                .await
                .expect("connect"),
        ))
    }
}

/// A config with a stream and subjects of its own; the stream is deleted afterwards.
pub fn test_config(url: String) -> NatsConfig {
    let id = herald_testkit::unique();
    NatsConfig {
        url,
        prefix: format!("herald-test-{id}"),
        stream: format!("HERALD_TEST_{id}"),
        storage: Storage::Memory,
        ..Default::default()
    }
}

async fn delete_streams(cfg: &NatsConfig) {
    if let Ok(c) = async_nats::connect(cfg.url.as_str()).await {
        let js = async_nats::jetstream::new(c);
        let _ = js.delete_stream(&cfg.stream).await;
        let _ = js.delete_stream(format!("{}_KEPT", cfg.stream)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_jetstream_engine_conforms() {
    let Some(url) = herald_testkit::nats_url() else {
        return;
    };
    let cfg = test_config(url);
    run_all(&Nats { cfg: cfg.clone() }).await;
    delete_streams(&cfg).await;
}

//! An in-process TCP relay in front of the server whose connections a scenario can cut (`churn`
//! cuts one at random, `storm` all at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// The relayed connections, by id: aborting one cuts both sides.
pub type Relays = Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>>;

/// A relay on 127.0.0.1: every accepted connection is piped to `target`; `cut` kills one.
pub async fn relay(target: std::net::SocketAddr) -> anyhow::Result<(std::net::SocketAddr, Relays)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let relays: Relays = Arc::default();
    let r = relays.clone();
    tokio::spawn(async move {
        let next = AtomicU64::new(0);
        while let Ok((mut inbound, _)) = l.accept().await {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let r2 = r.clone();
            let task = tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                if let Ok(mut m) = r2.lock() {
                    m.remove(&id);
                }
            });
            if let Ok(mut m) = r.lock() {
                m.insert(id, task.abort_handle());
            }
        }
    });
    Ok((addr, relays))
}

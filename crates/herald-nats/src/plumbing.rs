//! Small helpers every part of the NATS engine uses.

use std::sync::Mutex;
use std::time::Duration;

use herald_core::broker::BrokerError;

/// How long the lease of this node's presence answers and connection counts is.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats: {e}"))
}

/// Wait until the server has processed everything this connection sent before (subscriptions
/// included), so a publication from another connection right after reaches them. `flush` only
/// writes the buffer out: under load the server could still handle another connection's publish
/// first (seen: a core-NATS subscriber that got nothing). A request nobody answers comes back as
/// "no responders" only after the server handled what this connection sent before it.
pub(crate) async fn sync(client: &async_nats::Client, prefix: &str) -> Result<(), BrokerError> {
    let subject = format!("{prefix}.sync.{}", client.new_inbox().replace('.', "-"));
    match client.request(subject, bytes::Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(e) => Err(unavailable(e)),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

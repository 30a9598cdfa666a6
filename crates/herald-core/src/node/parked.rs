//! Sessions waiting for `resume` after an unexpected disconnect (bounded, oldest ended first).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

/// A session parked while its client is away. The node keeps it, ends it when its grace period
/// runs out (or when it is evicted, or at shutdown) and hands it back to a `resume` by the same
/// user; only the session module knows the concrete type (`Session`).
pub trait Waiting: Send + 'static {
    /// The user it belongs to ("" = anonymous): a resume token alone must not switch users.
    fn user_id(&self) -> &str;
    /// Its client id.
    fn client_id(&self) -> &str;
    /// Its age and last address (no transport: it has none while it waits).
    fn details(&self) -> super::SessionDetails;
    /// Who it is, when a connect proxy vouched for it and that has not expired: a new connection
    /// presenting its resume token at the handshake is that user without asking the proxy again.
    fn proxied_identity(&self) -> Option<crate::auth::Identity>;
    /// End it: leave its channels and emit its `disconnect` event with `reason`.
    fn end(self: Box<Self>, reason: &'static str) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// For the session module to take its concrete type back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

pub(super) struct Parked {
    session: Box<dyn Waiting>,
    generation: u64,
    /// A handshake was admitted by its token already (see [`Node::resume_identity`]).
    claimed: bool,
}

/// Sessions waiting for `resume`, by token, and their parking order (oldest first).
#[derive(Default)]
pub(super) struct Parking {
    by_token: HashMap<String, Parked>,
    order: std::collections::BTreeMap<u64, String>,
}

impl Parking {
    pub(super) fn remove(&mut self, token: &str) -> Option<Parked> {
        let p = self.by_token.remove(token)?;
        self.order.remove(&p.generation);
        Some(p)
    }

    pub(super) fn oldest(&mut self) -> Option<Parked> {
        let (_, token) = self.order.pop_first()?;
        self.by_token.remove(&token)
    }

    pub(super) fn len(&self) -> usize {
        self.by_token.len()
    }
}

impl Node {
    /// Keep `session` for `resume_grace` under its resume `token`; when more than
    /// `max_waiting_sessions` wait, the oldest is ended now.
    pub(crate) async fn park(self: &Arc<Self>, token: String, session: Box<dyn Waiting>) {
        let grace = self.config.session.resume_grace;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let max = self.config.session.max_waiting_sessions;
        let evicted = {
            let mut parked = lock(&self.parked);
            let evicted = (max > 0 && parked.len() >= max)
                .then(|| parked.oldest())
                .flatten();
            parked.order.insert(generation, token.clone());
            parked.by_token.insert(
                token.clone(),
                Parked {
                    session,
                    generation,
                    claimed: false,
                },
            );
            evicted
        };
        metrics::gauge!("herald_sessions_waiting").increment(1.0);
        if let Some(old) = evicted {
            metrics::gauge!("herald_sessions_waiting").decrement(1.0);
            metrics::counter!("herald_sessions_evicted_total").increment(1);
            old.session
                .end("too many sessions waiting for resume on this node")
                .await;
        }
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let expired = {
                let mut parked = lock(&node.parked);
                match parked.by_token.get(&token) {
                    Some(p) if p.generation == generation => parked.remove(&token),
                    _ => None,
                }
            };
            if let Some(p) = expired {
                metrics::gauge!("herald_sessions_waiting").decrement(1.0);
                p.session
                    .end("connection lost; resume grace period ended")
                    .await;
            }
        });
    }

    /// Take a waiting session by its resume token, if it belongs to `user` (a resume token alone
    /// must not switch users).
    pub(crate) fn take_parked(&self, token: &str, user: &str) -> Option<Box<dyn Waiting>> {
        let p = {
            let mut parked = lock(&self.parked);
            if parked.by_token.get(token)?.session.user_id() != user {
                return None;
            }
            parked.remove(token)?
        };
        metrics::gauge!("herald_sessions_waiting").decrement(1.0);
        Some(p.session)
    }

    /// The identity of the session waiting under `token`, when a connect proxy authenticated it
    /// and it has not expired (see [`Waiting::proxied_identity`]). Once per waiting session: the
    /// token is claimed, and a second handshake with it goes through the proxy.
    pub fn resume_identity(&self, token: &str) -> Option<Identity> {
        let mut parked = lock(&self.parked);
        let p = parked.by_token.get_mut(token)?;
        if p.claimed {
            return None;
        }
        let identity = p.session.proxied_identity()?;
        p.claimed = true;
        Some(identity)
    }

    /// End every waiting session now (shutdown).
    pub async fn end_waiting_sessions(&self) {
        let all: Vec<Parked> = {
            let mut parked = lock(&self.parked);
            parked.order.clear();
            parked.by_token.drain().map(|(_, p)| p).collect()
        };
        for p in all {
            metrics::gauge!("herald_sessions_waiting").decrement(1.0);
            p.session.end("server shutdown").await;
        }
    }

    /// The details of the waiting sessions among `client_ids`, by client id (one pass over the
    /// waiting sessions, which are bounded by `max_waiting_sessions`).
    pub(super) fn waiting_details(
        &self,
        client_ids: &std::collections::HashSet<&str>,
    ) -> HashMap<String, super::SessionDetails> {
        if client_ids.is_empty() {
            return HashMap::new();
        }
        let parked = lock(&self.parked);
        parked
            .by_token
            .values()
            .filter(|p| client_ids.contains(p.session.client_id()))
            .map(|p| (p.session.client_id().to_owned(), p.session.details()))
            .collect()
    }

    /// Sessions currently waiting for `resume`.
    pub fn waiting_sessions(&self) -> usize {
        lock(&self.parked).len()
    }
}

//! The node's redelivery clock: one task that visits every at-least-once subscription a few
//! times per `ack_timeout` (no timer per subscription or per message).

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::hub::Subscriber;
use crate::node::Node;
use crate::sync::lock;

/// The at-least-once subscriptions of a node and the task that sweeps them.
#[derive(Default)]
pub struct Sweeper {
    subs: Mutex<Vec<Weak<Subscriber>>>,
    started: std::sync::atomic::AtomicBool,
}

impl Sweeper {
    /// Sweep `sub` from now on (starting the node's sweeper task on the first one).
    pub(crate) fn watch(&self, node: &Arc<Node>, sub: &Arc<Subscriber>) {
        lock(&self.subs).push(Arc::downgrade(sub));
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let tick = tick(node);
            tokio::spawn(run(Arc::downgrade(node), tick));
        }
    }

    /// Subscriptions watched (live ones; ended ones are forgotten at the next sweep).
    pub fn watched(&self) -> usize {
        lock(&self.subs).len()
    }

    /// One pass: redeliver, give up, restart stalled catch-ups.
    pub(crate) fn sweep(&self, node: &Arc<Node>) {
        let now = Instant::now();
        let live: Vec<Arc<Subscriber>> = {
            let mut subs = lock(&self.subs);
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for sub in live {
            let Some(t) = sub.tracker() else { continue };
            let (given_up, catch) = t.sweep(&sub, now);
            if let Some(g) = given_up {
                super::report(node, &sub, t, &g);
            }
            if catch {
                tokio::spawn(super::catch_up(node.clone(), sub.clone()));
            }
        }
    }
}

/// A quarter of the shortest `ack_timeout` of the node's namespaces, 10 ms .. 1 s.
fn tick(node: &Node) -> Duration {
    let cfg = node.config();
    cfg.namespaces
        .values()
        .chain(cfg.default_namespace.iter())
        .filter_map(|ns| ns.acks())
        .map(|a| a.timeout / 4)
        .min()
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn run(node: Weak<Node>, tick: Duration) {
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(node) = node.upgrade() else { return };
        node.sweeper().sweep(&node);
    }
}

//! At-least-once delivery, the node's part (`docs/protocol.md` §8a): the redelivery clock (one
//! task that visits every at-least-once subscription a few times per `ack_timeout`: no timer per
//! subscription or per message), the catch-up task that reads what a window held back from
//! history, and the record of what was given up (dead letter, event, counter). The per
//! subscription state is `delivery::Tracker`.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use herald_proto::StreamPosition;

use crate::broker::{BrokerError, HistoryQuery};
use crate::delivery::{GiveUp, GivenUp, Tracker};
use crate::hub::Subscriber;
use crate::journal::{DeadLetterKind, EventKind};
use crate::sync::lock;

use super::Node;

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
            let (given_up, catch) = t.sweep(&*sub, now);
            if let Some(g) = given_up {
                report(node, &sub, t, &g);
            }
            if catch {
                tokio::spawn(catch_up(node.clone(), sub.clone()));
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

/// Record what was given up: a dead letter, an `undelivered` event, the counter.
pub(crate) fn report(node: &Node, sub: &Subscriber, t: &Tracker, g: &GivenUp) {
    let lost = g.to - g.from + 1;
    let why = match g.why {
        GiveUp::Unacknowledged => "unacknowledged",
        GiveUp::Trimmed => "trimmed",
    };
    metrics::counter!("herald_undelivered_total", "reason" => why).increment(lost);
    let owner = t.owner();
    if !node.journal_allowed(owner.client_ip) {
        node.dead_letters().suppressed(DeadLetterKind::Undelivered);
        node.events().suppressed(EventKind::Undelivered);
        return;
    }
    node.dead_letters().push(
        DeadLetterKind::Undelivered,
        serde_json::json!({
            "client_id": &*sub.client_id,
            "user_id": owner.user_id,
            "channel": &**t.channel(),
            "epoch": &*g.epoch,
            "from": g.from,
            "to": g.to,
            "why": why,
            "attempts": g.attempts,
        }),
    );
    let reason = match g.why {
        GiveUp::Unacknowledged => "ack_attempts_exhausted",
        GiveUp::Trimmed => "trimmed",
    };
    node.events().push(
        EventKind::Undelivered,
        Some(&sub.client_id),
        Some(&owner.user_id),
        Some(t.channel()),
        Some(reason),
        None,
    );
}

/// History pages read per catch-up step (at most the window's free room).
const CATCH_UP_PAGE: usize = 100;
/// Reads in a row that brought nothing new before a catch-up pauses (the live stream raced
/// ahead of history; the sweeper starts it again).
const CATCH_UP_IDLE_READS: u32 = 20;

/// Send, in order, what the window held back, as far as the window allows (a task: it reads
/// history). Ends when caught up with the live stream, when the window is full again, or when
/// the subscription ends.
pub(crate) async fn catch_up(node: Arc<Node>, sub: Arc<Subscriber>) {
    let Some(t) = sub.tracker() else { return };
    let mut idle = 0;
    while let Some(read) = t.catch_up_read() {
        if idle >= CATCH_UP_IDLE_READS {
            t.catch_up_failed(false);
            return;
        }
        let q = HistoryQuery {
            since: Some(StreamPosition {
                offset: read.since,
                epoch: read.epoch.to_string(),
            }),
            limit: read.room.min(CATCH_UP_PAGE),
            reverse: false,
        };
        let page = match node.broker.history(t.channel(), q).await {
            Ok(p) if p.epoch == read.epoch => p,
            Ok(_) | Err(BrokerError::EpochMismatch) => return t.catch_up_failed(true),
            Err(e) => {
                tracing::warn!(channel = %t.channel(), error = %e, "at-least-once catch-up cannot read history");
                return t.catch_up_failed(false);
            }
        };
        let step = t.catch_up_page(&*sub, &read, &page);
        if let Some(g) = &step.given_up {
            report(&node, &sub, t, g);
        }
        if step.done {
            return;
        }
        idle = if step.idle { idle + 1 } else { 0 };
        if idle > 0 {
            tokio::time::sleep(Duration::from_millis(10 * u64::from(idle))).await;
        }
    }
}

//! At-least-once delivery (`docs/protocol.md` §8a): per subscription, what was sent and not yet
//! acknowledged, redelivery after `ack_timeout`, the in-flight window, and dead letters.
//!
//! A [`Tracker`] belongs to one subscription of an at-least-once namespace (it sits in the hub's
//! `Subscriber`). The fan-out offers it each publication: within the window it is queued and
//! kept *in flight*; beyond it the subscription is *behind* and the publication is left in
//! history. Acks (the session's `ack` command, or a `resume`'s positions) free the window; a
//! catch-up task (`node::redelivery`) then reads what was held back from history, in order. The node's
//! `Sweeper` (one task per node, no timer per subscription) redelivers what waited too long and
//! gives up what was sent `ack_max_attempts` times: a `gap` push, a dead letter and an
//! `undelivered` event.
//!
//! The tracker knows its subscription only as a [`Sink`]; the tasks that read history and the
//! node's clock live in `node::redelivery`.
//!
//! Locks: the tracker's mutex is taken by the fan-out, the session and the sweeper, never across
//! an await; the outlet's lock is taken inside it (outlet pushes), never the other way round.

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use herald_proto::envelope::GapPush;
use herald_proto::{ServerKind, StreamPosition};

use crate::broker::HistoryPage;
use crate::config::AckSettings;
use crate::outlet::{Out, Outlet};
use crate::publication::Publication;
use crate::sync::lock;

/// The subscription a [`Tracker`] belongs to, as the tracker needs it (the hub's subscriber).
pub trait Sink {
    /// Where its frames go.
    fn outlet(&self) -> &Outlet;
    /// `p` was queued for it.
    fn mark_sent(&self, p: &Publication);
    /// Its position moved to `offset` of `epoch` without a publication (a gap).
    fn mark_offset(&self, offset: u64, epoch: &str);
}

/// One publication sent and not acknowledged.
#[derive(Debug)]
struct Flight {
    p: Arc<Publication>,
    first_sent: Instant,
    due: Instant,
    attempts: u32,
}

/// Why publications were given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// Sent `ack_max_attempts` times without an ack.
    Unacknowledged,
    /// Left history while held back by the window.
    Trimmed,
}

impl GiveUp {
    fn as_str(self) -> &'static str {
        match self {
            GiveUp::Unacknowledged => "unacknowledged",
            GiveUp::Trimmed => "trimmed",
        }
    }
}

/// Publications `from..=to` given up on a subscription (reported outside the tracker's lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GivenUp {
    pub(crate) from: u64,
    pub(crate) to: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) why: GiveUp,
    pub(crate) attempts: u32,
}

#[derive(Debug, Default)]
struct State {
    epoch_tag: u64,
    epoch: Option<Arc<str>>,
    /// Cumulative ack (or give-up) position.
    acked: u64,
    /// Offset of the last publication queued.
    sent: u64,
    inflight: VecDeque<Flight>,
    /// Publications after `sent` were held back (window full): history has them.
    behind: bool,
    /// Newest offset the live stream offered while behind.
    seen: u64,
    /// A catch-up task is running.
    catching_up: bool,
    /// The session waits for `resume`: no redelivery, no attempts.
    paused: bool,
    /// The subscription ended: nothing more is queued.
    closed: bool,
}

/// Who the subscription belongs to (for dead letters and events).
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) user_id: String,
    pub(crate) client_ip: Option<std::net::IpAddr>,
}

/// One at-least-once subscription's delivery state.
#[derive(Debug)]
pub struct Tracker {
    settings: AckSettings,
    channel: Arc<str>,
    owner: Owner,
    state: Mutex<State>,
}

/// A rejected `ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckBeyondSent {
    pub(crate) sent: u64,
}

impl Tracker {
    pub(crate) fn new(settings: AckSettings, channel: &str, owner: Owner) -> Tracker {
        Tracker {
            settings,
            channel: Arc::from(channel),
            owner,
            state: Mutex::new(State::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> AckSettings {
        self.settings
    }

    /// Publications in flight (sent, not acknowledged).
    pub fn in_flight(&self) -> usize {
        lock(&self.state).inflight.len()
    }

    /// The cumulative ack position.
    pub fn acked(&self) -> u64 {
        lock(&self.state).acked
    }

    /// Start at `(epoch, base)`: everything up to `base` counts as acknowledged (the client's
    /// recovery position, or the stream top for a fresh subscription).
    pub(crate) fn begin(&self, epoch: &Arc<str>, base: u64) {
        let mut s = lock(&self.state);
        s.epoch_tag = crate::publication::epoch_tag(epoch);
        s.epoch = Some(epoch.clone());
        s.acked = base;
        s.sent = base;
        s.seen = base;
    }

    /// Publications the recovery queues itself (it pushes them; the tracker keeps them in flight).
    /// Returns how many of `pubs` fit in the window: the rest are held back (read again from
    /// history as acks make room).
    pub(crate) fn recovered(&self, sub: &impl Sink, pubs: &[Arc<Publication>]) -> usize {
        let mut s = lock(&self.state);
        let room = self.settings.window.saturating_sub(s.inflight.len());
        let n = pubs.len().min(room);
        let now = Instant::now();
        for p in &pubs[..n] {
            self.track(&mut s, sub, p, now);
        }
        if let Some(last) = pubs.get(n..).and_then(<[_]>::last) {
            s.behind = true;
            s.seen = s.seen.max(last.offset);
        }
        n
    }

    /// A publication for this subscription (fan-out, or the end of setup): queued within the
    /// window, else held back.
    pub(crate) fn offer(&self, sub: &impl Sink, p: &Arc<Publication>) {
        let mut s = lock(&self.state);
        if s.closed {
            return;
        }
        if s.epoch_tag != p.epoch_tag {
            // A new stream: what was in flight cannot be read again; start over in it.
            self.reset(&mut s, p);
        } else if p.offset <= s.sent {
            // Already sent (the live stream raced a catch-up page): never twice, never backwards.
            return;
        }
        if s.behind || s.inflight.len() >= self.settings.window {
            s.behind = true;
            s.seen = s.seen.max(p.offset);
            return;
        }
        self.send(&mut s, sub, p);
    }

    fn reset(&self, s: &mut State, p: &Publication) {
        let dropped = s.inflight.len();
        s.inflight.clear();
        gauge(-(dropped as f64));
        s.epoch_tag = p.epoch_tag;
        s.epoch = Some(p.epoch.clone());
        s.acked = p.offset.saturating_sub(1);
        s.sent = s.acked;
        s.seen = s.acked;
        s.behind = false;
    }

    fn track(&self, s: &mut State, sub: &impl Sink, p: &Arc<Publication>, now: Instant) {
        s.inflight.push_back(Flight {
            p: p.clone(),
            first_sent: now,
            due: now + self.settings.wait(1),
            attempts: 1,
        });
        s.sent = s.sent.max(p.offset);
        sub.mark_sent(p);
        gauge(1.0);
    }

    /// Queue `p` and keep it in flight, if the connection's queue has room; else hold it back
    /// (history has it; a catch-up sends it once the queue drains). An at-least-once
    /// subscription never makes a slow consumer: a client that does not read at all is found by
    /// the write timeout and the heartbeat. Returns whether it was queued.
    fn send(&self, s: &mut State, sub: &impl Sink, p: &Arc<Publication>) -> bool {
        if !sub.outlet().push_within_limits(Out::Pub(p.clone())) {
            s.behind = true;
            s.seen = s.seen.max(p.offset);
            return false;
        }
        self.track(s, sub, p, Instant::now());
        true
    }

    /// The client processed everything up to `offset`. `Ok(true)`: the window has room and
    /// publications were held back — run a catch-up.
    pub(crate) fn ack(&self, offset: u64) -> Result<bool, AckBeyondSent> {
        let mut s = lock(&self.state);
        if offset > s.sent {
            return Err(AckBeyondSent { sent: s.sent });
        }
        self.ack_locked(&mut s, offset);
        Ok(self.wants_catch_up(&mut s))
    }

    fn ack_locked(&self, s: &mut State, offset: u64) {
        if offset <= s.acked {
            return;
        }
        s.acked = offset;
        let now = Instant::now();
        let mut n = 0;
        while s.inflight.front().is_some_and(|f| f.p.offset <= offset) {
            if let Some(f) = s.inflight.pop_front() {
                metrics::histogram!("herald_ack_latency_seconds")
                    .record(now.duration_since(f.first_sent).as_secs_f64());
                n += 1;
            }
        }
        gauge(-(n as f64));
    }

    /// Whether a catch-up should start now (and mark it started).
    fn wants_catch_up(&self, s: &mut State) -> bool {
        let go = s.behind
            && !s.catching_up
            && !s.closed
            && !s.paused
            && s.inflight.len() < self.settings.window;
        if go {
            s.catching_up = true;
        }
        go
    }

    /// The session went away to wait for `resume`: stop redelivering.
    pub(crate) fn pause(&self) {
        lock(&self.state).paused = true;
    }

    /// The subscription ended.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.state);
        s.closed = true;
        let n = s.inflight.len();
        s.inflight.clear();
        gauge(-(n as f64));
    }

    /// The session resumed on a new socket whose client holds `position` (its last processed
    /// offset, when it said so and in this epoch): ack it, and return, in offset order, every
    /// in-flight publication after it (the caller took this channel's copies out of the queue:
    /// the old socket may have lost any of them, and the new one gets them once, in order). Their
    /// waits start over. `Ok(true)` in the second
    /// field: run a catch-up.
    pub(crate) fn resume(
        &self,
        position: Option<&StreamPosition>,
    ) -> (Vec<Arc<Publication>>, bool) {
        let mut s = lock(&self.state);
        s.paused = false;
        if let Some(pos) = position
            && s.epoch.as_deref() == Some(pos.epoch.as_str())
        {
            let upto = pos.offset.min(s.sent);
            self.ack_locked(&mut s, upto);
        }
        let now = Instant::now();
        let wait = self.settings.wait(1);
        let mut resend = Vec::with_capacity(s.inflight.len());
        for f in s.inflight.iter_mut() {
            f.due = now + wait;
            resend.push(f.p.clone());
        }
        let catch = self.wants_catch_up(&mut s);
        (resend, catch)
    }

    /// Whether `position` (a resume's) is in this subscription's epoch and not behind what was
    /// acknowledged: then nothing is missing after it.
    pub(crate) fn covers(&self, position: &StreamPosition) -> bool {
        let s = lock(&self.state);
        s.epoch.as_deref() == Some(position.epoch.as_str()) && position.offset >= s.acked
    }

    /// Sweeper: redeliver what waited too long, give up what was sent too often. Returns what was
    /// given up and whether a catch-up should start.
    pub(crate) fn sweep(&self, sub: &impl Sink, now: Instant) -> (Option<GivenUp>, bool) {
        let mut s = lock(&self.state);
        if s.paused || s.closed {
            return (None, false);
        }
        let mut given_up = None;
        if s.inflight.front().is_some_and(|f| f.due <= now) {
            let mut queued = sub.outlet().queued_offsets(&self.channel);
            queued.sort_unstable();
            let give_up = s.inflight.front().is_some_and(|f| {
                // A copy still in the queue was never written: not a failed attempt yet.
                f.attempts >= self.settings.max_attempts
                    && queued.binary_search(&f.p.offset).is_err()
            });
            if give_up && let Some(front) = s.inflight.pop_front() {
                gauge(-1.0);
                s.acked = front.p.offset;
                for f in s.inflight.iter_mut() {
                    f.attempts = 0;
                }
                given_up = Some(GivenUp {
                    from: front.p.offset,
                    to: front.p.offset,
                    epoch: front.p.epoch.clone(),
                    why: GiveUp::Unacknowledged,
                    attempts: front.attempts,
                });
                self.push_gap(sub, given_up.as_ref());
            }
            self.redeliver(&mut s, sub, now, &queued);
        }
        let catch = self.wants_catch_up(&mut s);
        (given_up, catch)
    }

    /// Send again every in-flight publication that is not still queued (`queued`: this
    /// channel's queued offsets, sorted), as far as the queue has room (a redelivery never makes
    /// a slow consumer: what does not fit goes at the next tick). Only a publication actually
    /// queued again counts as an attempt; one still waiting in the queue was never written, so
    /// its wait starts over.
    fn redeliver(&self, s: &mut State, sub: &impl Sink, now: Instant, queued: &[u64]) {
        if s.inflight.is_empty() {
            return;
        }
        let mut n = 0;
        let mut full = false;
        for f in s.inflight.iter_mut() {
            if queued.binary_search(&f.p.offset).is_ok() {
                f.due = now + self.settings.wait(f.attempts.max(1));
                continue;
            }
            if full || !sub.outlet().push_within_limits(Out::Pub(f.p.clone())) {
                full = true;
                f.due = now;
                continue;
            }
            f.attempts += 1;
            f.due = now + self.settings.wait(f.attempts);
            n += 1;
        }
        metrics::counter!("herald_redeliveries_total").increment(n);
    }

    fn push_gap(&self, sub: &impl Sink, g: Option<&GivenUp>) {
        let Some(g) = g else { return };
        let push = GapPush {
            channel: self.channel.to_string(),
            epoch: g.epoch.to_string(),
            from: g.from,
            to: g.to,
            reason: g.why.as_str().to_owned(),
        };
        match herald_proto::encode(sub.outlet().format, ServerKind::Gap, None, &push) {
            Ok(frame) => sub.outlet().push_reply(frame),
            Err(e) => tracing::error!(error = %e, "cannot encode a gap push"),
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let n = lock(&self.state).inflight.len();
        gauge(-(n as f64));
    }
}

fn gauge(delta: f64) {
    if delta != 0.0 {
        metrics::gauge!("herald_ack_inflight").increment(delta);
    }
}

/// Where a catch-up read starts: after `since` of `epoch`, at most `room` publications.
#[derive(Debug, Clone)]
pub(crate) struct CatchUpRead {
    pub(crate) since: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) room: usize,
}

/// What one page of a catch-up did.
#[derive(Debug, Default)]
pub(crate) struct CatchUpStep {
    /// Stop: caught up, window full, subscription gone, or the read is stale.
    pub(crate) done: bool,
    /// The page sent nothing new (history lags behind the live stream).
    pub(crate) idle: bool,
    /// Held-back publications history no longer had.
    pub(crate) given_up: Option<GivenUp>,
}

impl Tracker {
    /// The channel.
    pub(crate) fn channel(&self) -> &Arc<str> {
        &self.channel
    }

    /// The user and address it belongs to.
    pub(crate) fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The next history read of a catch-up, or `None` (and the catch-up is over) when there is
    /// nothing to read or no room.
    pub(crate) fn catch_up_read(&self) -> Option<CatchUpRead> {
        let mut s = lock(&self.state);
        let room = self.settings.window.saturating_sub(s.inflight.len());
        let epoch = s.epoch.clone();
        match epoch {
            Some(epoch) if s.behind && !s.closed && !s.paused && room > 0 => Some(CatchUpRead {
                since: s.sent,
                epoch,
                room,
            }),
            _ => {
                s.catching_up = false;
                None
            }
        }
    }

    /// The catch-up ends without a page (history unreadable, or another epoch).
    pub(crate) fn catch_up_failed(&self, epoch_changed: bool) {
        let mut s = lock(&self.state);
        if epoch_changed {
            // The live stream's next publication starts the new epoch.
            s.behind = false;
        }
        s.catching_up = false;
    }

    /// Send what `page` (read for `read`) holds after `sent`, within the window.
    pub(crate) fn catch_up_page(
        &self,
        sub: &impl Sink,
        read: &CatchUpRead,
        page: &HistoryPage,
    ) -> CatchUpStep {
        let mut s = lock(&self.state);
        if s.closed || s.sent != read.since {
            s.catching_up = false;
            return CatchUpStep {
                done: true,
                ..Default::default()
            };
        }
        let before = s.sent;
        let mut step = CatchUpStep::default();
        // What history no longer holds after `sent` was lost while held back.
        let first = page
            .publications
            .first()
            .map_or(page.top + 1, |p| p.offset)
            .min(page.top + 1);
        if first > s.sent + 1 && page.first_kept > s.sent + 1 {
            let g = GivenUp {
                from: s.sent + 1,
                to: first - 1,
                epoch: read.epoch.clone(),
                why: GiveUp::Trimmed,
                attempts: 0,
            };
            s.sent = g.to;
            if s.inflight.is_empty() {
                s.acked = g.to;
            }
            self.push_gap(sub, Some(&g));
            sub.mark_offset(g.to, &read.epoch);
            step.given_up = Some(g);
        }
        let mut left = read.room;
        for p in &page.publications {
            if p.offset <= s.sent {
                continue;
            }
            if left == 0 || !self.send(&mut s, sub, p) {
                break;
            }
            left -= 1;
        }
        if s.sent >= s.seen.max(page.top) {
            s.behind = false;
        }
        step.idle = s.sent == before;
        step
    }
}

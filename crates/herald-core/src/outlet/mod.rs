//! A connection's outbound side: a bounded queue of frames and the wake-up for its writer.
//!
//! The engine pushes; the transport's writer drains everything queued and writes it with one
//! vectored write. The queue is bounded in frames and bytes; what happens when a push does not fit
//! is the subscription's [`SlowConsumerPolicy`]. Replies are never dropped: a client that does not
//! read its replies is disconnected as a slow consumer.
//!
//! An outlet outlives its socket: while a session waits for `resume` its outlet keeps buffering
//! (same bounds). A resumed connection's writer follows [`Outlet::redirect`] to the old outlet.
//!
//! **Direct writes.** A transport may lend the outlet its socket ([`Direct`], [`Outlet::idle`]):
//! a publication pushed while the writer is idle — nothing queued, nothing of its own unwritten,
//! waiting for a wake-up — is written to the socket at once, without blocking, under the queue's
//! lock: no wake-up, no task switch per delivery. Only while the [`with_direct_writes`] gate is
//! open: a publisher's command opens it when no further command is already waiting behind it, so
//! a burst is queued (and written in batches, several frames per write) while a paced publisher's
//! publications go straight out — to at most [`DIRECT_WRITES_PER_SCOPE`] sockets per poll of the
//! command (its fan-out is synchronous: one poll). What the socket does not take is queued as
//! usual; the rest of a short write stays first and belongs to that socket only
//! ([`Outlet::take_back`]).
//!
//! **Corking** (the `cork` module, [`Corked`]): in a task that runs corked (a connection's, an
//! HTTP connection's, a broker's delivery task), a push to an idle writer that is not written at
//! once queues without a wake-up, and the task writes the queue to the socket at the end of its
//! poll — one write per subscriber for a whole burst.

mod cork;
mod direct;
#[cfg(test)]
mod direct_tests;
mod items;

pub use cork::{CORKED_PER_POLL, Corked, corked};
pub use direct::Lent;
use direct::Written;

use std::cell::Cell;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;

use bytes::Bytes;
use herald_proto::{CloseCode, Format};
use tokio::sync::Notify;

use crate::config::SlowConsumerPolicy;
use crate::publication::Publication;
use crate::sync::lock;

/// One queued frame.
#[derive(Debug, Clone)]
pub enum Out {
    /// A reply or control frame: never dropped.
    Reply(Bytes),
    /// A push that may be dropped under pressure (join/leave).
    Event(Bytes),
    /// A publication; its frame is fetched from the shared cache at write time.
    Pub(Arc<Publication>),
    /// A publication for a delta subscription, whole (`data` as a JSON string).
    Whole(Arc<Publication>),
    /// A publication for a delta subscription, as a delta against the second one (its
    /// predecessor in the channel, which this subscriber got).
    Delta(Arc<Publication>, Arc<Publication>),
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Reply(b) | Out::Event(b) => b.len(),
            Out::Pub(p) | Out::Whole(p) | Out::Delta(p, _) => p.queued_len(),
        }
    }

    /// The publication it carries, if any.
    pub fn publication(&self) -> Option<&Arc<Publication>> {
        match self {
            Out::Pub(p) | Out::Whole(p) | Out::Delta(p, _) => Some(p),
            Out::Reply(_) | Out::Event(_) => None,
        }
    }

    fn droppable(&self) -> bool {
        !matches!(self, Out::Reply(_))
    }
}

/// A socket an outlet may write to directly (see the module docs).
pub trait Direct: Send + Sync {
    /// Write what the socket takes now, without blocking: the bytes written (maybe fewer than
    /// all), or an error (`WouldBlock` when it takes nothing now).
    /// `frames` go out in order, as one write; `received`: when the (oldest) publication among
    /// them reached the node (for latency metrics).
    fn try_write(
        &self,
        frames: &[std::io::IoSlice<'_>],
        received: std::time::Instant,
    ) -> std::io::Result<usize>;
}

/// Most direct writes one [`with_direct_writes`] scope (one poll of a command) makes: a fan-out
/// writes to at most this many sockets itself (≈ 3 ms of `send`s, inside the channel's stream
/// lock on the memory engine) and queues the rest for their connections' tasks, which other
/// worker threads run.
pub const DIRECT_WRITES_PER_SCOPE: u32 = 1024;

thread_local! {
    /// Direct writes this thread may still make (see [`with_direct_writes`]); 0: closed.
    static DIRECT_WRITES: Cell<u32> = const { Cell::new(0) };
}

/// Run `f` with direct writes allowed (`open`: up to [`DIRECT_WRITES_PER_SCOPE`]) or not on
/// this thread, then restore the setting. Closed by default: only a publisher's command with
/// nothing waiting behind it opens it — in a burst the subscribers' writers batch what piles up,
/// one write for many frames.
pub fn with_direct_writes<T>(open: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            DIRECT_WRITES.set(self.0);
        }
    }
    let budget = if open { DIRECT_WRITES_PER_SCOPE } else { 0 };
    let _restore = Restore(DIRECT_WRITES.replace(budget));
    f()
}

/// Whether the rarely used parts of a queue stand in the way of a direct write: a pong owed, a
/// redirect, compression (waiting for room does not).
fn rare_blocks(rare: Option<&Rare>) -> bool {
    rare.is_some_and(|r| r.pong.is_some() || r.redirect.is_some() || r.deflate.is_some())
}

/// Queue limits.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most queued frames.
    pub max_messages: usize,
    /// Most queued bytes.
    pub max_bytes: usize,
}

struct Queue {
    items: items::Items,
    /// Queued bytes (the byte limit is a `u32` too; saturating).
    bytes: u32,
    close: Option<CloseCode>,
    /// What few outlets use, made on first use: with it out of line the outlet is 144 bytes (a
    /// 160-byte allocation with its `Arc`, not 192), and every connection has one.
    rare: Option<Box<Rare>>,
    /// The writer's waker, kept between wake-ups (a writer task registers the same waker again
    /// and again: kept, it is compared, not cloned).
    writer: Option<Waker>,
    /// Whether the writer waits for a wake-up: set when it registers or drains, cleared by the
    /// first push, close or redirect after, which wakes it. Under the queue's lock, which every
    /// push takes anyway: no atomic read-modify-write of its own (an `AtomicWaker` took four per
    /// delivery, and a waker clone and drop).
    armed: bool,
    /// The socket lent for direct writes ([`Outlet::idle`]); a `Weak`: an outlet never keeps a
    /// socket open.
    direct: Option<Weak<dyn Direct>>,
    /// The writer reported itself idle with nothing of its own unwritten ([`Outlet::idle`]);
    /// cleared by every drain.
    idle: bool,
    /// The first item is the rest of a frame a direct write began: it goes out first, on that
    /// socket only.
    partial: bool,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("items", &self.items)
            .field("bytes", &self.bytes)
            .field("close", &self.close)
            .field("rare", &self.rare)
            .field("armed", &self.armed)
            .field("direct", &self.direct.is_some())
            .field("idle", &self.idle)
            .field("partial", &self.partial)
            .finish_non_exhaustive()
    }
}

/// The parts of a queue that most connections never use.
#[derive(Debug, Default)]
struct Rare {
    /// The pong owed to the client's newest ping (older ones are not answered: RFC 6455 §5.5.3).
    pong: Option<Bytes>,
    redirect: Option<Arc<Outlet>>,
    /// Tasks in [`Outlet::wait_for_room`]: a drain wakes them only when there are any (waking
    /// takes the `Notify`'s lock, and a drain happens for every write).
    room_waiters: u32,
    /// The connection negotiated permessage-deflate: publications are written with their shared
    /// deflated frames under this policy.
    deflate: Option<Arc<crate::compression::DeflatePolicy>>,
    /// Woken by drains for tasks in [`Outlet::wait_for_room`]; made for the first of them and
    /// kept (so an outlet that once waited for room keeps this box).
    space: Option<Arc<Notify>>,
}

impl crate::occasional::Occasional for Rare {
    fn is_empty(&self) -> bool {
        self.pong.is_none()
            && self.redirect.is_none()
            && self.room_waiters == 0
            && self.deflate.is_none()
            && self.space.is_none()
    }
}

impl Queue {
    fn add_bytes(&mut self, n: usize) {
        self.bytes = self
            .bytes
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn sub_bytes(&mut self, n: usize) {
        self.bytes = self
            .bytes
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Wake `waker` at the next change.
    fn arm(&mut self, waker: &Waker) {
        if !self.writer.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.writer = Some(waker.clone());
        }
        self.armed = true;
    }

    /// A corked task listed the outlet, and writes (or wakes its writer) at the end of its poll:
    /// pushes meanwhile wake no one. The writer waits idle, yet items are queued: only a listing
    /// push leaves that state (every other push wakes the writer, which clears `armed`; a
    /// drain clears `idle`).
    fn listed(&self) -> bool {
        self.idle && self.armed && !self.items.is_empty()
    }

    /// Change the rarely used parts (made on first use, dropped again once empty).
    fn rare_with<T>(&mut self, f: impl FnOnce(&mut Rare) -> T) -> T {
        crate::occasional::with(&mut self.rare, f)
    }
}

/// A connection's (or a waiting session's) outbound queue. Every connection has one (an idle
/// one too): its size is per-connection memory.
#[derive(Debug)]
pub struct Outlet {
    /// Wire format of the connection.
    pub format: Format,
    /// [`QueueLimits`], saturated at `u32::MAX`.
    max_messages: u32,
    max_bytes: u32,
    queue: Mutex<Queue>,
}

/// Result of draining an outlet.
#[derive(Debug, Default)]
pub struct Drained {
    /// Frames to write, in order.
    pub frames: Vec<Bytes>,
    /// Receive time of the oldest publication in the batch (for latency metrics).
    pub oldest_pub: Option<std::time::Instant>,
    /// Set when the connection must be closed after writing `frames`.
    pub close: Option<CloseCode>,
    /// Set when the writer must continue with another outlet (after `resume`).
    pub redirect: Option<Arc<Outlet>>,
    /// The drain left the queue empty. After [`Outlet::drain_for`] the writer then need not
    /// drain again once it has written `frames`: the next push wakes it.
    pub emptied: bool,
    /// `frames[0]` is the rest of a frame a direct write began (not a frame of its own).
    pub partial: bool,
}

impl Outlet {
    /// A new, empty outlet (allocates no queue storage until used).
    pub fn new(format: Format, limits: QueueLimits) -> Arc<Self> {
        let cap = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Arc::new(Outlet {
            format,
            max_messages: cap(limits.max_messages),
            max_bytes: cap(limits.max_bytes),
            queue: Mutex::new(Queue {
                items: items::Items::default(),
                bytes: 0,
                close: None,
                rare: None,
                writer: None,
                armed: false,
                direct: None,
                idle: false,
                partial: false,
            }),
        })
    }

    /// Wake `waker` at the next push, close or redirect. Register before draining (or drain with
    /// [`Outlet::drain_for`]): a push that lands between the drain and the registration would
    /// otherwise not wake the writer.
    pub fn register(&self, waker: &Waker) {
        lock(&self.queue).arm(waker);
    }

    /// Let go of the writer's waker, when it is `waker` (its task is ending: a session kept for
    /// `resume` keeps the outlet, and would keep the finished task's memory with it). Another
    /// task's waker stays: a resume may have given the outlet to a new connection already.
    pub fn forget_writer(&self, waker: &Waker) {
        let mut q = lock(&self.queue);
        if !q.writer.as_ref().is_some_and(|w| w.will_wake(waker)) {
            return;
        }
        q.armed = false;
        let old = q.writer.take();
        drop(q);
        drop(old);
    }

    /// Unlock `q` after a push. When the writer waits idle with its socket lent and this thread
    /// runs a corked task, the outlet is listed, to be written at the end of the task's poll
    /// ([`cork`]), and wakes no one; `listed`: it was already (see [`Queue::listed`]) — until it
    /// holds more than `cork::MAX_FRAMES` items or half its limits. Otherwise the writer is woken.
    fn notify(self: &Arc<Self>, q: MutexGuard<'_, Queue>, listed: bool) {
        let room = q.items.len() <= cork::MAX_FRAMES
            && q.items.len() * 2 <= self.max_messages as usize
            && u64::from(q.bytes) * 2 <= u64::from(self.max_bytes);
        if listed && room {
            return;
        }
        if !listed && q.idle && q.armed && !rare_blocks(q.rare.as_deref()) && cork::enlist(self) {
            return;
        }
        // Not listed, or listed with half its queue full: the writer takes over (the listing
        // task's end-of-poll write then finds it busy and leaves it).
        self.wake(q);
    }

    /// Unlock `q` and wake the writer if it waits for a wake-up.
    fn wake(&self, mut q: MutexGuard<'_, Queue>) {
        let waker = match std::mem::take(&mut q.armed) {
            true => q.writer.clone(),
            false => None,
        };
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The queue limits.
    pub fn limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.max_messages as usize,
            max_bytes: self.max_bytes as usize,
        }
    }

    /// Owe the client this pong, replacing one not yet written: a ping flood holds one frame.
    pub fn push_pong(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        q.rare_with(|r| r.pong = Some(frame));
        self.wake(q);
    }

    /// Queue a reply; if the queue is over its limits the connection is closed as a slow consumer.
    pub fn push_reply(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        q.add_bytes(frame.len());
        q.items.push_back(Out::Reply(frame));
        let l = self.limits();
        if q.items.len() > l.max_messages + 64 || q.bytes as usize > l.max_bytes * 2 {
            self.slow(&mut q);
        }
        self.wake(q);
    }

    /// Queue an item that must not be dropped or conflated (recovered history), ignoring limits;
    /// callers bound the amount with [`Outlet::wait_for_room`].
    pub fn push_reply_item(&self, item: Out) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        q.add_bytes(item.len());
        q.items.push_back(item);
        self.wake(q);
    }

    /// Wait until `n` more frames fit under the limits (or the queue is empty). False on timeout
    /// or when the outlet is closing.
    pub async fn wait_for_room(&self, n: usize, timeout: std::time::Duration) -> bool {
        /// Counts this waiter in `room_waiters` until it returns (or is dropped).
        struct Waiting<'a>(&'a Outlet);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                let mut q = lock(&self.0.queue);
                q.rare_with(|r| r.room_waiters = r.room_waiters.saturating_sub(1));
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let max_messages = self.max_messages as usize;
        loop {
            let space = lock(&self.queue).rare_with(|r| {
                r.space
                    .get_or_insert_with(|| Arc::new(Notify::new()))
                    .clone()
            });
            let notified = space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiting = {
                let mut q = lock(&self.queue);
                if q.close.is_some() {
                    return false;
                }
                if q.items.is_empty() || q.items.len() + n <= max_messages {
                    return true;
                }
                q.rare_with(|r| r.room_waiters += 1);
                Waiting(self)
            };
            let timed_out = tokio::time::timeout_at(deadline, notified).await.is_err();
            drop(waiting);
            if timed_out {
                return false;
            }
        }
    }

    /// Queue replies at the front (used by `resume`, before the buffered messages).
    pub fn push_front(&self, items: Vec<Out>) {
        let mut q = lock(&self.queue);
        // Behind the rest of a direct write, if one is queued.
        let rest = if q.partial { q.items.pop_front() } else { None };
        for item in items.into_iter().rev() {
            q.add_bytes(item.len());
            q.items.push_front(item);
        }
        if let Some(rest) = rest {
            q.items.push_front(rest);
        }
        self.wake(q);
    }

    /// Queue a push under a slow consumer policy. Returns false when the push closed the connection.
    pub fn push(self: &Arc<Self>, item: Out, policy: SlowConsumerPolicy) -> bool {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return false;
        }
        let listed = q.listed();
        if let Out::Pub(p) = &item
            && q.idle
            && !listed
            && DIRECT_WRITES.get() > 0
        {
            match self.write_direct(&mut q, p) {
                Written::All => return true,
                Written::Part(rest) => {
                    // The rest of the frame goes first, whatever the policy (never dropped).
                    q.partial = true;
                    q.add_bytes(rest.len());
                    q.items.push_back(Out::Reply(rest));
                    self.wake(q);
                    return true;
                }
                Written::Nothing => {}
            }
        }
        if let (SlowConsumerPolicy::Latest, Out::Pub(p)) = (policy, &item) {
            let channel = p.channel.clone();
            let len = item.len();
            if let Some(pos) = q
                .items
                .rposition(|o| matches!(o, Out::Pub(old) if old.channel == channel))
            {
                if let Some(slot) = q.items.get_mut(pos) {
                    let old_len = slot.len();
                    *slot = item;
                    q.add_bytes(len);
                    q.sub_bytes(old_len);
                }
                metrics::counter!("herald_queue_dropped_total", "reason" => "conflated")
                    .increment(1);
                self.notify(q, listed);
                return true;
            }
        }
        let len = item.len();
        let l = self.limits();
        let full =
            |q: &Queue| q.items.len() + 1 > l.max_messages || q.bytes as usize + len > l.max_bytes;
        if full(&q) {
            if policy == SlowConsumerPolicy::Disconnect {
                self.slow(&mut q);
                self.wake(q);
                return false;
            }
            while full(&q) {
                let Some(pos) = q.items.iter().position(Out::droppable) else {
                    self.slow(&mut q);
                    self.wake(q);
                    return false;
                };
                if let Some(old) = q.items.remove(pos) {
                    q.sub_bytes(old.len());
                }
                metrics::counter!("herald_queue_dropped_total", "reason" => "full").increment(1);
            }
        }
        q.add_bytes(len);
        q.items.push_back(item);
        self.notify(q, listed);
        true
    }

    /// Queue an item only if it fits under the limits (never closing, never dropping anything).
    /// Returns whether it was queued.
    pub fn push_within_limits(&self, item: Out) -> bool {
        let mut q = lock(&self.queue);
        let len = item.len();
        if q.close.is_some()
            || q.items.len() + 1 > self.max_messages as usize
            || q.bytes as usize + len > self.max_bytes as usize
        {
            return false;
        }
        q.add_bytes(len);
        q.items.push_back(item);
        self.wake(q);
        true
    }

    /// Turn the first queued delta of `channel` into its whole message (a resumed client that
    /// may not hold its base).
    pub fn make_first_whole(&self, channel: &str) {
        let mut q = lock(&self.queue);
        let first = q
            .items
            .iter()
            .position(|o| o.publication().is_some_and(|p| &*p.channel == channel));
        if let Some(pos) = first
            && let Some(slot) = q.items.get_mut(pos)
            && let Out::Delta(p, _) = slot
        {
            *slot = Out::Whole(p.clone());
        }
    }

    /// Take the queued publications of `channel` out of the queue (a resume requeues them in
    /// order). Returns how many.
    pub fn remove_publications(&self, channel: &str) -> usize {
        let mut q = lock(&self.queue);
        let mut removed = 0;
        let mut bytes = 0;
        loop {
            let found = q
                .items
                .iter()
                .position(|o| o.publication().is_some_and(|p| &*p.channel == channel));
            let Some(pos) = found else { break };
            if let Some(old) = q.items.remove(pos) {
                bytes += old.len();
                removed += 1;
            }
        }
        q.sub_bytes(bytes);
        removed
    }

    fn slow(&self, q: &mut Queue) {
        metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
        q.close = Some(CloseCode::SlowConsumer);
        // The rest of a direct write stays: the closing frames must not cut into a frame.
        let rest = if q.partial { q.items.pop_front() } else { None };
        q.items.clear();
        q.bytes = 0;
        if let Some(rest) = rest {
            q.add_bytes(rest.len());
            q.items.push_back(rest);
        }
    }

    /// Ask the writer to close the connection after what is queued.
    pub fn close(&self, code: CloseCode) {
        let mut q = lock(&self.queue);
        if q.close.is_none() {
            q.close = Some(code);
        }
        self.wake(q);
    }

    /// The close requested so far, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        lock(&self.queue).close
    }

    /// Send the writer of this outlet to `target` from now on.
    pub fn redirect(&self, target: Arc<Outlet>) {
        let mut q = lock(&self.queue);
        q.rare_with(|r| r.redirect = Some(target));
        self.wake(q);
    }

    /// Write publications compressed under `policy` (the connection negotiated
    /// permessage-deflate), or plain (`None`). A resumed session's outlet takes the setting of
    /// its new connection.
    pub fn set_deflate(&self, policy: Option<Arc<crate::compression::DeflatePolicy>>) {
        let mut q = lock(&self.queue);
        if policy.is_some() || q.rare.as_ref().is_some_and(|r| r.deflate.is_some()) {
            q.rare_with(|r| r.deflate = policy);
        }
    }

    /// The compression policy in force, if any.
    pub fn deflate(&self) -> Option<Arc<crate::compression::DeflatePolicy>> {
        lock(&self.queue).rare.as_ref()?.deflate.clone()
    }

    /// Take up to `max` queued frames.
    pub fn drain(&self, max: usize, out: &mut Drained) {
        self.drain_inner(None, max, out);
    }

    /// Take up to `max` queued frames for the writer whose task `waker` wakes, and wake it at the
    /// next push, close or redirect ([`Outlet::register`] and [`Outlet::drain`] under one lock).
    pub fn drain_for(&self, waker: &Waker, max: usize, out: &mut Drained) {
        self.drain_inner(Some(waker), max, out);
    }

    fn drain_inner(&self, waker: Option<&Waker>, max: usize, out: &mut Drained) {
        let format = self.format;
        let frames = &mut out.frames;
        let oldest = &mut out.oldest_pub;
        let partial = &mut out.partial;
        let (close, redirect, emptied) =
            self.take(waker, max, frames, partial, |item, deflate| match item {
                Out::Reply(b) | Out::Event(b) => b,
                Out::Pub(p) => {
                    if oldest.is_none() {
                        *oldest = Some(p.received);
                    }
                    match deflate {
                        Some(policy) => p.deflated_frame(format, policy),
                        None => p.frame(format),
                    }
                }
                Out::Whole(p) => {
                    if oldest.is_none() {
                        *oldest = Some(p.received);
                    }
                    p.whole_text_frame()
                }
                Out::Delta(p, base) => {
                    if oldest.is_none() {
                        *oldest = Some(p.received);
                    }
                    p.delta_frame(&base)
                }
            });
        out.close = close;
        out.redirect = redirect;
        out.emptied = emptied;
    }

    /// Take up to `max` queued items as they are (for transports that need a publication's
    /// channel and offset, not only its frame). Returns the close and redirect, as
    /// [`Outlet::drain`] sets them, once the queue is empty.
    pub fn drain_items(
        &self,
        max: usize,
        items: &mut Vec<Out>,
    ) -> (Option<CloseCode>, Option<Arc<Outlet>>) {
        let (close, redirect, _) = self.take(None, max, items, &mut false, |item, _| item);
        (close, redirect)
    }

    /// The pong (as a frame), then up to `max` items, each through `f` (with the compression
    /// policy in force), into `out`; `waker` registered first, when given. Returns the close and
    /// the redirect once the queue is empty, and whether it is.
    fn take<T>(
        &self,
        waker: Option<&Waker>,
        max: usize,
        out: &mut Vec<T>,
        partial: &mut bool,
        mut f: impl FnMut(Out, Option<&crate::compression::DeflatePolicy>) -> T,
    ) -> (Option<CloseCode>, Option<Arc<Outlet>>, bool) {
        let mut q = lock(&self.queue);
        if let Some(w) = waker {
            q.arm(w);
        }
        // The writer writes what it takes: no direct write until it reports idle again.
        q.idle = false;
        *partial = false;
        let mut rest_len = 0;
        // The rest of a direct write goes before anything else, the pong included.
        if std::mem::take(&mut q.partial)
            && let Some(rest) = q.items.pop_front()
        {
            rest_len = rest.len();
            *partial = true;
            out.push(f(rest, None));
        }
        if q.rare.as_ref().is_some_and(|r| r.pong.is_some())
            && let Some(pong) = q.rare_with(|r| r.pong.take())
        {
            out.push(f(Out::Reply(pong), None));
        }
        let Queue {
            items, rare, close, ..
        } = &mut *q;
        let rare = rare.as_deref();
        let deflate = rare.and_then(|r| r.deflate.as_deref());
        let n = items.len().min(max);
        let mut removed = rest_len;
        for item in std::iter::from_fn(|| items.pop_front()).take(n) {
            removed += item.len();
            out.push(f(item, deflate));
        }
        let mut ends = (None, None, false);
        if items.is_empty() {
            ends = (*close, rare.and_then(|r| r.redirect.clone()), true);
        }
        let space = rare
            .filter(|r| r.room_waiters > 0)
            .and_then(|r| r.space.clone());
        match q.items.is_empty() {
            true => q.bytes = 0,
            false => q.sub_bytes(removed),
        }
        drop(q);
        if let Some(space) = space {
            space.notify_waiters();
        }
        ends
    }

    /// Number of queued frames.
    pub fn len(&self) -> usize {
        lock(&self.queue).items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offsets of the publications queued for a channel (oldest first).
    pub fn queued_offsets(&self, channel: &str) -> Vec<u64> {
        lock(&self.queue)
            .items
            .iter()
            .filter_map(|o| {
                o.publication()
                    .filter(|p| &*p.channel == channel)
                    .map(|p| p.offset)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

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
//! **Direct writes.** A transport may lend the outlet its socket ([`Outlet::attach`]): a push that
//! finds nothing queued, no pong owed, no close or redirect asked and the writer not writing
//! ([`Outlet::drain`] marks it writing from a batch taken until a drain that finds nothing) is
//! written to the socket at once, without blocking, under the queue's lock — the frame is not
//! queued and the writer not woken. What the socket does not take (all of it, or the rest of a
//! short write, which then goes first and is never dropped) is queued as usual. The lock makes
//! the direct write and the writer's batches exclusive, so frames never interleave; the writer
//! detaches the socket before its closing frames and when it ends, so a waiting session's outlet
//! never holds one.

mod items;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
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
pub trait Direct: Send + Sync + std::fmt::Debug {
    /// Write what the socket takes now, without blocking: the bytes written (maybe fewer than
    /// `frame`'s), or an error (`WouldBlock` when it takes nothing now). `received`: when the
    /// publication the frame carries reached the node (for latency metrics).
    fn try_write(
        &self,
        frame: &[u8],
        received: Option<std::time::Instant>,
    ) -> std::io::Result<usize>;
}

/// Queue limits.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    /// Most queued frames.
    pub max_messages: usize,
    /// Most queued bytes.
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Queue {
    items: items::Items,
    /// The pong owed to the client's newest ping (older ones are not answered: RFC 6455 §5.5.3).
    pong: Option<Bytes>,
    bytes: usize,
    close: Option<CloseCode>,
    redirect: Option<Arc<Outlet>>,
    /// Tasks in [`Outlet::wait_for_room`]: a drain wakes them only when there are any (waking
    /// takes the `Notify`'s lock, and a drain happens for every write).
    room_waiters: u32,
    /// The connection negotiated permessage-deflate: publications are written with their shared
    /// deflated frames under this policy.
    deflate: Option<Arc<crate::compression::DeflatePolicy>>,
    /// The socket lent for direct writes, if any.
    direct: Option<Arc<dyn Direct>>,
    /// The writer holds a batch it took and has not reported written (by a drain that took
    /// nothing): direct writes wait.
    writing: bool,
    /// The front item is the rest of a frame a direct write began: it must be the next bytes
    /// on that socket, and on no other (see [`Outlet::detach`]).
    partial: bool,
}

/// A connection's (or a waiting session's) outbound queue.
#[derive(Debug)]
pub struct Outlet {
    /// Wire format of the connection.
    pub format: Format,
    limits: QueueLimits,
    queue: Mutex<Queue>,
    /// The writer's wake-up: a push takes the registered waker (one atomic swap), so pushes that
    /// follow before the writer ran again cost nothing more.
    writer: AtomicWaker,
    space: Notify,
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
}

impl Outlet {
    /// A new, empty outlet (allocates no queue storage until used).
    pub fn new(format: Format, limits: QueueLimits) -> Arc<Self> {
        Arc::new(Outlet {
            format,
            limits,
            queue: Mutex::new(Queue {
                items: items::Items::default(),
                pong: None,
                bytes: 0,
                close: None,
                redirect: None,
                room_waiters: 0,
                deflate: None,
                direct: None,
                writing: false,
                partial: false,
            }),
            writer: AtomicWaker::new(),
            space: Notify::new(),
        })
    }

    /// Wake `waker` at the next push, close or redirect. Register before draining: a push that
    /// lands between the drain and the registration would otherwise not wake the writer.
    pub fn register(&self, waker: &std::task::Waker) {
        self.writer.register(waker);
    }

    fn wake(&self) {
        self.writer.wake();
    }

    /// The queue limits.
    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Owe the client this pong, replacing one not yet written: a ping flood holds one frame.
    pub fn push_pong(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        q.pong = Some(frame);
        drop(q);
        self.wake();
    }

    /// Queue a reply; if the queue is over its limits the connection is closed as a slow consumer.
    pub fn push_reply(&self, frame: Bytes) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        let Some(frame) = self.write_direct(&mut q, Out::Reply(frame)) else {
            return;
        };
        q.bytes += frame.len();
        q.items.push_back(frame);
        if q.items.len() > self.limits.max_messages + 64 || q.bytes > self.limits.max_bytes * 2 {
            self.slow(&mut q);
        }
        drop(q);
        self.wake();
    }

    /// Queue an item that must not be dropped or conflated (recovered history), ignoring limits;
    /// callers bound the amount with [`Outlet::wait_for_room`].
    pub fn push_reply_item(&self, item: Out) {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return;
        }
        q.bytes += item.len();
        q.items.push_back(item);
        drop(q);
        self.wake();
    }

    /// Wait until `n` more frames fit under the limits (or the queue is empty). False on timeout
    /// or when the outlet is closing.
    pub async fn wait_for_room(&self, n: usize, timeout: std::time::Duration) -> bool {
        /// Counts this waiter in `room_waiters` until it returns (or is dropped).
        struct Waiting<'a>(&'a Outlet);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                let mut q = lock(&self.0.queue);
                q.room_waiters = q.room_waiters.saturating_sub(1);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiting = {
                let mut q = lock(&self.queue);
                if q.close.is_some() {
                    return false;
                }
                if q.items.is_empty() || q.items.len() + n <= self.limits.max_messages {
                    return true;
                }
                q.room_waiters += 1;
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
            q.bytes += item.len();
            q.items.push_front(item);
        }
        if let Some(rest) = rest {
            q.items.push_front(rest);
        }
        drop(q);
        self.wake();
    }

    /// Queue a push under a slow consumer policy. Returns false when the push closed the connection.
    pub fn push(&self, item: Out, policy: SlowConsumerPolicy) -> bool {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return false;
        }
        let Some(item) = self.write_direct(&mut q, item) else {
            return true;
        };
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
                    q.bytes = q.bytes + len - old_len;
                }
                metrics::counter!("herald_queue_dropped_total", "reason" => "conflated")
                    .increment(1);
                drop(q);
                self.wake();
                return true;
            }
        }
        let len = item.len();
        let full = |q: &Queue| {
            q.items.len() + 1 > self.limits.max_messages || q.bytes + len > self.limits.max_bytes
        };
        if full(&q) {
            if policy == SlowConsumerPolicy::Disconnect {
                self.slow(&mut q);
                drop(q);
                self.wake();
                return false;
            }
            while full(&q) {
                let Some(pos) = q.items.iter().position(Out::droppable) else {
                    self.slow(&mut q);
                    drop(q);
                    self.wake();
                    return false;
                };
                if let Some(old) = q.items.remove(pos) {
                    q.bytes -= old.len();
                }
                metrics::counter!("herald_queue_dropped_total", "reason" => "full").increment(1);
            }
        }
        q.bytes += len;
        q.items.push_back(item);
        drop(q);
        self.wake();
        true
    }

    /// Queue an item only if it fits under the limits (never closing, never dropping anything).
    /// Returns whether it was queued.
    pub fn push_within_limits(&self, item: Out) -> bool {
        let mut q = lock(&self.queue);
        if q.close.is_some() {
            return false;
        }
        let Some(item) = self.write_direct(&mut q, item) else {
            return true;
        };
        let len = item.len();
        if q.close.is_some()
            || q.items.len() + 1 > self.limits.max_messages
            || q.bytes + len > self.limits.max_bytes
        {
            return false;
        }
        q.bytes += len;
        q.items.push_back(item);
        drop(q);
        self.wake();
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
        q.bytes = q.bytes.saturating_sub(bytes);
        removed
    }

    /// Write `item` to the lent socket when nothing may go before it (see the module docs);
    /// what must still be queued comes back: the item, or the rest of a short write.
    fn write_direct(&self, q: &mut Queue, item: Out) -> Option<Out> {
        let Some(direct) = &q.direct else {
            return Some(item);
        };
        if q.writing
            || !q.items.is_empty()
            || q.pong.is_some()
            || q.close.is_some()
            || q.redirect.is_some()
        {
            return Some(item);
        }
        let (frame, received) = match &item {
            Out::Reply(b) | Out::Event(b) => (b.clone(), None),
            Out::Pub(p) => (
                match q.deflate.as_deref() {
                    Some(policy) => p.deflated_frame(self.format, policy),
                    None => p.frame(self.format),
                },
                Some(p.received),
            ),
            // Computed against what the subscriber holds: left to the writer.
            Out::Whole(_) | Out::Delta(..) => return Some(item),
        };
        match direct.try_write(&frame, received) {
            Ok(n) if n >= frame.len() => None,
            Ok(0) | Err(_) => Some(item),
            // The rest of a frame already begun: it must be written next, whatever the policy.
            Ok(n) => {
                q.partial = true;
                Some(Out::Reply(frame.slice(n..)))
            }
        }
    }

    /// Lend the outlet a socket for direct writes (replacing any other).
    pub fn attach(&self, direct: Arc<dyn Direct>) {
        lock(&self.queue).direct = Some(direct);
    }

    /// Take the socket `direct` back (if it is the one lent): no direct write starts after this
    /// returns, and none is in progress. Returns the rest of a frame a direct write began and
    /// the writer has not taken yet, taken out of the queue: the writer must write it before
    /// anything else (its closing frames), or drop it with the socket — never leave it for
    /// another connection (a resumed session's) to receive half a frame.
    pub fn detach(&self, direct: &Arc<dyn Direct>) -> Option<Bytes> {
        let mut q = lock(&self.queue);
        if q.direct.as_ref().is_some_and(|d| Arc::ptr_eq(d, direct)) {
            q.direct = None;
        }
        if !std::mem::take(&mut q.partial) {
            return None;
        }
        let rest = q.items.pop_front()?;
        q.bytes = q.bytes.saturating_sub(rest.len());
        match rest {
            Out::Reply(b) => Some(b),
            _ => None,
        }
    }

    fn slow(&self, q: &mut Queue) {
        metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
        q.close = Some(CloseCode::SlowConsumer);
        // The rest of a direct write stays: the closing frames must not cut into a frame.
        let rest = if q.partial { q.items.pop_front() } else { None };
        q.items.clear();
        q.bytes = 0;
        if let Some(rest) = rest {
            q.bytes = rest.len();
            q.items.push_back(rest);
        }
    }

    /// Ask the writer to close the connection after what is queued.
    pub fn close(&self, code: CloseCode) {
        let mut q = lock(&self.queue);
        if q.close.is_none() {
            q.close = Some(code);
        }
        drop(q);
        self.wake();
    }

    /// The close requested so far, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        lock(&self.queue).close
    }

    /// Send the writer of this outlet to `target` from now on.
    pub fn redirect(&self, target: Arc<Outlet>) {
        lock(&self.queue).redirect = Some(target);
        self.wake();
    }

    /// Write publications compressed under `policy` (the connection negotiated
    /// permessage-deflate), or plain (`None`). A resumed session's outlet takes the setting of
    /// its new connection.
    pub fn set_deflate(&self, policy: Option<Arc<crate::compression::DeflatePolicy>>) {
        lock(&self.queue).deflate = policy;
    }

    /// The compression policy in force, if any.
    pub fn deflate(&self) -> Option<Arc<crate::compression::DeflatePolicy>> {
        lock(&self.queue).deflate.clone()
    }

    /// Take up to `max` queued frames.
    pub fn drain(&self, max: usize, out: &mut Drained) {
        let format = self.format;
        let frames = &mut out.frames;
        let oldest = &mut out.oldest_pub;
        let (close, redirect) = self.take(max, frames, |item, deflate| match item {
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
    }

    /// Take up to `max` queued items as they are (for transports that need a publication's
    /// channel and offset, not only its frame). Returns the close and redirect, as
    /// [`Outlet::drain`] sets them, once the queue is empty.
    pub fn drain_items(
        &self,
        max: usize,
        items: &mut Vec<Out>,
    ) -> (Option<CloseCode>, Option<Arc<Outlet>>) {
        self.take(max, items, |item, _| item)
    }

    /// The pong (as a frame), then up to `max` items, each through `f` (with the compression
    /// policy in force), into `out`.
    fn take<T>(
        &self,
        max: usize,
        out: &mut Vec<T>,
        mut f: impl FnMut(Out, Option<&crate::compression::DeflatePolicy>) -> T,
    ) -> (Option<CloseCode>, Option<Arc<Outlet>>) {
        let mut q = lock(&self.queue);
        let Queue {
            items,
            pong,
            deflate,
            partial,
            ..
        } = &mut *q;
        let mut removed = 0;
        // The rest of a direct write goes before anything else, the pong included.
        if std::mem::take(partial)
            && let Some(rest) = items.pop_front()
        {
            removed += rest.len();
            out.push(f(rest, None));
        }
        if let Some(pong) = pong.take() {
            out.push(f(Out::Reply(pong), None));
        }
        let n = items.len().min(max);
        for item in std::iter::from_fn(|| items.pop_front()).take(n) {
            removed += item.len();
            out.push(f(item, deflate.as_deref()));
        }
        q.bytes = q.bytes.saturating_sub(removed);
        // Writing until a drain finds nothing: the batch taken (or the ping put before it).
        q.writing = !out.is_empty();
        let mut ends = (None, None);
        if q.items.is_empty() {
            q.bytes = 0;
            ends = (q.close, q.redirect.clone());
        }
        let room_wanted = q.room_waiters > 0;
        drop(q);
        if room_wanted {
            self.space.notify_waiters();
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
mod tests {
    use super::*;
    use herald_proto::Data;

    fn publication(ch: &str, offset: u64) -> Out {
        Out::Pub(Arc::new(Publication::new(
            Arc::from(ch),
            offset,
            Arc::from("e"),
            0,
            Data::json("1").expect("json"),
            None,
        )))
    }

    fn limits(n: usize) -> QueueLimits {
        QueueLimits {
            max_messages: n,
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn disconnect_policy_closes_when_full() {
        let o = Outlet::new(Format::Json, limits(2));
        assert!(o.push(publication("a", 1), SlowConsumerPolicy::Disconnect));
        assert!(o.push(publication("a", 2), SlowConsumerPolicy::Disconnect));
        assert!(!o.push(publication("a", 3), SlowConsumerPolicy::Disconnect));
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert!(o.is_empty());
    }

    #[test]
    fn drop_oldest_keeps_newest_and_replies() {
        let o = Outlet::new(Format::Json, limits(3));
        o.push_reply(Bytes::from_static(b"r"));
        for i in 1..=5 {
            assert!(o.push(publication("a", i), SlowConsumerPolicy::DropOldest));
        }
        assert_eq!(o.queued_offsets("a"), vec![4, 5]);
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn latest_conflates_per_channel() {
        let o = Outlet::new(Format::Json, limits(10));
        for i in 1..=5 {
            o.push(publication("a", i), SlowConsumerPolicy::Latest);
            o.push(publication("b", i), SlowConsumerPolicy::Latest);
        }
        assert_eq!(o.queued_offsets("a"), vec![5]);
        assert_eq!(o.queued_offsets("b"), vec![5]);
        let mut d = Drained::default();
        o.drain(100, &mut d);
        assert_eq!(d.frames.len(), 2);
        assert!(d.close.is_none());
    }
}

#[cfg(test)]
mod direct_tests {
    use super::*;

    /// A socket that takes at most `room` bytes in all (then `WouldBlock`), recording them.
    #[derive(Debug, Default)]
    struct Socket {
        room: Mutex<usize>,
        wire: Mutex<Vec<u8>>,
    }

    impl Direct for Socket {
        fn try_write(&self, frame: &[u8], _: Option<std::time::Instant>) -> std::io::Result<usize> {
            let mut room = lock(&self.room);
            if *room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let n = frame.len().min(*room);
            *room -= n;
            lock(&self.wire).extend_from_slice(&frame[..n]);
            Ok(n)
        }
    }

    fn setup(room: usize) -> (Arc<Outlet>, Arc<Socket>, Arc<dyn Direct>) {
        let o = Outlet::new(
            Format::Json,
            QueueLimits {
                max_messages: 10,
                max_bytes: 1 << 20,
            },
        );
        let s = Arc::new(Socket {
            room: Mutex::new(room),
            ..Socket::default()
        });
        let d: Arc<dyn Direct> = s.clone();
        o.attach(d.clone());
        (o, s, d)
    }

    fn drained(o: &Outlet) -> Vec<Bytes> {
        let mut d = Drained::default();
        o.drain(100, &mut d);
        d.frames
    }

    #[test]
    fn an_idle_outlet_writes_at_once_and_a_writing_one_queues() {
        let (o, s, _d) = setup(1000);
        o.push_reply(Bytes::from_static(b"one"));
        assert!(o.is_empty());
        assert_eq!(&*lock(&s.wire), b"one");
        // The writer took a batch (here: something queued while detached): no direct write
        // until a drain finds nothing.
        o.push_pong(Bytes::from_static(b"P"));
        o.push_reply(Bytes::from_static(b"two"));
        assert_eq!(
            drained(&o),
            vec![Bytes::from_static(b"P"), Bytes::from_static(b"two")]
        );
        o.push_reply(Bytes::from_static(b"three"));
        assert_eq!(o.len(), 1);
        assert_eq!(drained(&o), vec![Bytes::from_static(b"three")]);
        assert!(drained(&o).is_empty());
        o.push_reply(Bytes::from_static(b"four"));
        assert!(o.is_empty());
        assert_eq!(&*lock(&s.wire), b"onefour");
    }

    #[test]
    fn the_rest_of_a_short_write_goes_first_and_never_to_another_socket() {
        let (o, s, d) = setup(2);
        o.push_reply(Bytes::from_static(b"abcdef"));
        assert_eq!(&*lock(&s.wire), b"ab");
        // A pong owed meanwhile, and a resume's replies, go after the rest.
        o.push_pong(Bytes::from_static(b"P"));
        o.push_front(vec![Out::Reply(Bytes::from_static(b"R"))]);
        assert_eq!(
            drained(&o),
            vec![
                Bytes::from_static(b"cdef"),
                Bytes::from_static(b"P"),
                Bytes::from_static(b"R")
            ]
        );
        // A slow-consumer close keeps the rest; taking the socket back hands it over.
        let (o, _s, d2) = setup(2);
        o.push_reply(Bytes::from_static(b"abcdef"));
        o.push(
            Out::Reply(Bytes::from(vec![b'x'; 2 << 20])),
            SlowConsumerPolicy::Disconnect,
        );
        assert_eq!(o.close_requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(o.detach(&d2), Some(Bytes::from_static(b"cdef")));
        assert!(o.is_empty());
        // Detached: everything queues.
        o.detach(&d);
        let (o, s, d) = setup(1000);
        assert_eq!(o.detach(&d), None);
        o.push_reply(Bytes::from_static(b"q"));
        assert_eq!(o.len(), 1);
        assert!(lock(&s.wire).is_empty());
    }
}

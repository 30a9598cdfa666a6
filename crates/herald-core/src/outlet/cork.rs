//! Corking: a burst's publications to idle subscribers, written once the burst is over.
//!
//! Inside a [`Corked`] task — a WebSocket connection's, an HTTP connection's (API publishes,
//! the HTTP transports' commands), a broker's delivery task — a push that would wake an idle
//! subscriber's writer — one that lent its socket ([`Outlet::idle`]) and waits — because it was
//! not written at once (the direct-write gate is closed: more commands wait behind this one, a
//! burst; or the task has no gate) queues the item without waking anyone and lists the outlet on
//! this thread. When the task's
//! poll ends, each listed outlet's queue is written to its socket at once, several frames in one
//! vectored write: a burst keeps its batching (one write per subscriber, however many
//! publications it got) and costs no wake-up, no task poll per subscriber. An outlet is listed
//! once per poll; at most [`CORKED_PER_POLL`] are (the rest are woken as before). Whatever a
//! socket does not take, or what cannot be written this way (a pong owed, a close, compression,
//! delta frames), goes to the outlet's writer as usual.

use std::cell::RefCell;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use super::{Out, Outlet, rare_blocks};
use crate::sync::lock;

/// Most outlets one poll of a [`Corked`] task writes itself: the rest are woken (their tasks
/// run on any worker thread). ≈ 3 ms of `sendmsg`s.
pub const CORKED_PER_POLL: usize = 1024;

/// Most frames of one outlet written in one corked write; a listed outlet that holds this many
/// (or half its limits) wakes its writer, which takes over (a long poll must not fill the queue
/// of a subscriber whose socket would take it all).
pub(super) const MAX_FRAMES: usize = 16;

#[derive(Default)]
struct Cork {
    /// A [`Corked`] poll runs on this thread.
    active: bool,
    listed: Vec<Arc<Outlet>>,
}

thread_local! {
    static CORK: RefCell<Cork> = RefCell::new(Cork::default());
}

pin_project_lite::pin_project! {
    /// A task whose pushes to idle subscribers are written at the end of each of its polls (see
    /// the module docs).
    pub struct Corked<F> {
        #[pin]
        fut: F,
    }
}

impl<F> Corked<F> {
    /// Cork `fut`'s pushes.
    pub fn new(fut: F) -> Self {
        Corked { fut }
    }
}

impl<F: Future> Future for Corked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let fut = self.project().fut;
        corked(|| fut.poll(cx))
    }
}

/// Run `f` corked: the outlets it lists are written when it returns (by the outermost scope,
/// when scopes nest).
pub fn corked<T>(f: impl FnOnce() -> T) -> T {
    struct Uncork;
    impl Drop for Uncork {
        fn drop(&mut self) {
            uncork_all();
        }
    }
    if CORK.with_borrow_mut(|c| std::mem::replace(&mut c.active, true)) {
        return f();
    }
    let _uncork = Uncork;
    f()
}

/// List `outlet` for writing at the end of the corked poll running on this thread. False when
/// there is none or the list is full: wake its writer instead.
pub(super) fn enlist(outlet: &Arc<Outlet>) -> bool {
    // `try_with`: a push from a destructor while the thread ends finds no list.
    CORK.try_with(|c| {
        let mut c = c.borrow_mut();
        if !c.active || c.listed.len() >= CORKED_PER_POLL {
            return false;
        }
        c.listed.push(outlet.clone());
        true
    })
    .unwrap_or(false)
}

fn uncork_all() {
    /// The outlets not written yet: woken if a write panics (a listed outlet wakes no one).
    struct Rest(Vec<Arc<Outlet>>);
    impl Drop for Rest {
        fn drop(&mut self) {
            for outlet in self.0.drain(..) {
                outlet.release();
            }
        }
    }
    let Ok(listed) = CORK.try_with(|c| {
        let mut c = c.borrow_mut();
        c.active = false;
        std::mem::take(&mut c.listed)
    }) else {
        return;
    };
    let mut rest = Rest(listed);
    while let Some(outlet) = rest.0.pop() {
        outlet.uncork();
    }
    // The list's storage is kept for the next poll.
    let listed = std::mem::take(&mut rest.0);
    let _ = CORK.try_with(|c| {
        let mut c = c.borrow_mut();
        if c.listed.capacity() == 0 {
            c.listed = listed;
        }
    });
}

impl Outlet {
    /// Wake the writer of a listed outlet that will not be written.
    fn release(&self) {
        let q = lock(&self.queue);
        if q.listed() {
            self.wake(q);
        }
    }

    /// Write what was queued while corked to the lent socket, if its writer still waits and
    /// nothing else must go first; otherwise (or for what the socket does not take) wake it.
    fn uncork(&self) {
        let mut q = lock(&self.queue);
        if q.items.is_empty() {
            return;
        }
        if !q.idle || !q.armed || q.partial || q.close.is_some() || rare_blocks(q.rare.as_deref()) {
            return self.wake(q);
        }
        let Some(socket) = q.direct.as_ref().and_then(Weak::upgrade) else {
            q.idle = false;
            q.direct = None;
            return self.wake(q);
        };
        let format = self.format;
        let mut bufs = [IoSlice::new(&[]); MAX_FRAMES];
        let mut frames = 0;
        let mut received = None;
        for item in q.items.iter().take(MAX_FRAMES) {
            let frame = match item {
                Out::Pub(p) => {
                    received.get_or_insert(p.received);
                    p.frame_ref(format)
                }
                Out::Reply(b) | Out::Event(b) => b,
                // Made at write time (deltas): the writer's.
                Out::Whole(_) | Out::Delta(..) => break,
            };
            bufs[frames] = IoSlice::new(frame);
            frames += 1;
        }
        if frames == 0 {
            q.idle = false;
            return self.wake(q);
        }
        let received = received.unwrap_or_else(std::time::Instant::now);
        // Nothing written (`WouldBlock`, an error): the writer finds out.
        let mut written: usize = socket
            .try_write(&bufs[..frames], received)
            .unwrap_or_default();
        while written > 0 {
            let Some(slot) = q.items.get_mut(0) else {
                break;
            };
            let queued = slot.len();
            let frame = match &*slot {
                Out::Pub(p) => p.frame_ref(format),
                Out::Reply(b) | Out::Event(b) => b,
                Out::Whole(_) | Out::Delta(..) => break,
            };
            let len = frame.len();
            if written < len {
                // The rest of that frame goes first, on this socket only (never dropped).
                let rest = frame.slice(written..);
                let rest_len = rest.len();
                *slot = Out::Reply(rest);
                q.add_bytes(rest_len);
                q.sub_bytes(queued);
                q.partial = true;
                break;
            }
            written -= len;
            q.items.pop_front();
            q.sub_bytes(queued);
        }
        // A recovery waiting for room (`wait_for_room`) is told, as a drain tells it.
        let space = q
            .rare
            .as_deref()
            .filter(|r| r.room_waiters > 0)
            .and_then(|r| r.space.clone());
        if q.items.is_empty() {
            q.bytes = 0;
            drop(q);
        } else {
            // The socket took less than all: the writer takes over.
            q.idle = false;
            self.wake(q);
        }
        if let Some(space) = space {
            space.notify_waiters();
        }
    }
}

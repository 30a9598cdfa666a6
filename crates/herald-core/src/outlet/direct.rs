//! Direct writes from the fan-out to a lent socket (see the module docs of [`super`]).

use std::sync::Weak;

use bytes::Bytes;

use super::{DIRECT_WRITES, Direct, Out, Outlet, Queue, rare_blocks};
use crate::publication::Publication;
use crate::sync::lock;

/// What a direct write did.
pub(super) enum Written {
    /// The whole frame.
    All,
    /// Part of it: the rest.
    Part(Bytes),
    /// Nothing: queue it.
    Nothing,
}

/// A socket a writer lends its outlet ([`Outlet::idle`], [`Outlet::take_back`]): told apart
/// by its address, so that the `Weak` the outlet keeps is made only when it holds another (a
/// writer goes idle after every batch: no reference count touched then, on a cache line the
/// fan-out's threads share).
pub trait Lent {
    /// The socket's address.
    fn addr(&self) -> *const ();
    /// A handle for the outlet to keep.
    fn handle(&self) -> Weak<dyn Direct>;
}

impl Lent for Weak<dyn Direct> {
    fn addr(&self) -> *const () {
        self.as_ptr().cast()
    }

    fn handle(&self) -> Weak<dyn Direct> {
        self.clone()
    }
}

/// The outlet holds `socket` (lent, not taken back).
fn holds(q: &Queue, socket: &dyn Lent) -> bool {
    q.direct
        .as_ref()
        .is_some_and(|d| d.as_ptr().cast::<()>() == socket.addr())
}

impl Outlet {
    /// Write `p`'s frame to the lent socket when nothing may go before it (see the module
    /// docs). Anything but a whole write ends the writer's idleness: it takes over.
    pub(super) fn write_direct(&self, q: &mut Queue, p: &Publication) -> Written {
        if !q.armed || !q.items.is_empty() || rare_blocks(q.rare.as_deref()) {
            q.idle = false;
            return Written::Nothing;
        }
        DIRECT_WRITES.set(DIRECT_WRITES.get().saturating_sub(1));
        let Some(socket) = q.direct.as_ref().and_then(Weak::upgrade) else {
            q.idle = false;
            q.direct = None;
            return Written::Nothing;
        };
        let frame = p.frame_ref(self.format);
        match socket.try_write(&[std::io::IoSlice::new(frame)], p.received) {
            Ok(n) if n >= frame.len() => Written::All,
            Ok(0) | Err(_) => {
                q.idle = false;
                Written::Nothing
            }
            Ok(n) => {
                q.idle = false;
                Written::Part(frame.slice(n..))
            }
        }
    }

    /// The writer waits for a wake-up with nothing of its own unwritten: publications pushed
    /// meanwhile may be written straight to `socket` (see the module docs) — unless something
    /// happened since it armed (a push, a close, a pong owed), which has woken it already.
    pub fn idle(&self, socket: &dyn Lent) {
        let mut q = lock(&self.queue);
        if !q.armed || !q.items.is_empty() || rare_blocks(q.rare.as_deref()) || q.close.is_some() {
            return;
        }
        if !holds(&q, socket) {
            q.direct = Some(socket.handle());
        }
        q.idle = true;
    }

    /// Take `socket` back: no direct write to it starts after this returns. Returns the rest of
    /// a frame a direct write began that the writer has not taken yet, taken out of the queue:
    /// the writer must write it before anything else of its own (its closing frames), or drop
    /// it with the socket — never leave it for another connection (a resumed session's).
    pub fn take_back(&self, socket: &dyn Lent) -> Option<Bytes> {
        let mut q = lock(&self.queue);
        if !holds(&q, socket) {
            return None;
        }
        q.direct = None;
        q.idle = false;
        if !std::mem::take(&mut q.partial) {
            return None;
        }
        let rest = q.items.pop_front()?;
        q.sub_bytes(rest.len());
        match rest {
            Out::Reply(b) => Some(b),
            _ => None,
        }
    }
}

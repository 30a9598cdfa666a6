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
    pub fn idle(&self, socket: &Weak<dyn Direct>) {
        let mut q = lock(&self.queue);
        if !q.armed || !q.items.is_empty() || rare_blocks(q.rare.as_deref()) || q.close.is_some() {
            return;
        }
        if !q.direct.as_ref().is_some_and(|d| Weak::ptr_eq(d, socket)) {
            q.direct = Some(socket.clone());
        }
        q.idle = true;
    }

    /// Take `socket` back: no direct write to it starts after this returns. Returns the rest of
    /// a frame a direct write began that the writer has not taken yet, taken out of the queue:
    /// the writer must write it before anything else of its own (its closing frames), or drop
    /// it with the socket — never leave it for another connection (a resumed session's).
    pub fn take_back(&self, socket: &Weak<dyn Direct>) -> Option<Bytes> {
        let mut q = lock(&self.queue);
        if !q.direct.as_ref().is_some_and(|d| Weak::ptr_eq(d, socket)) {
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

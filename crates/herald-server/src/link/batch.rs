//! The batch a link is writing: a vector borrowed from a per-thread pool while the link has
//! something to write, and no vector at all while it is idle — 8 bytes in every connection's
//! task, not a vector's 24.
#![expect(
    clippy::box_collection,
    clippy::vec_box,
    reason = "a boxed vector is 8 bytes in the idle link; the pool keeps the boxes for reuse"
)]

use std::cell::RefCell;
use std::ops::Deref;

use bytes::Bytes;

use super::MAX_BATCH;

/// Batch vectors kept per runtime thread for the next link that wakes.
const POOLED: usize = 64;
/// A new batch vector's capacity; smaller ones are not pooled.
const MIN_POOLED: usize = 8;

thread_local! {
    /// Batch vectors of links whose batch was written in full.
    static BATCHES: RefCell<Vec<Box<Vec<Bytes>>>> = const { RefCell::new(Vec::new()) };
}

/// What an idle link's batch reads as.
static EMPTY: Vec<Bytes> = Vec::new();

/// The frames being written (written frames are removed from the front).
#[derive(Default)]
pub(super) struct Batch(Option<Box<Vec<Bytes>>>);

impl Deref for Batch {
    type Target = Vec<Bytes>;

    fn deref(&self) -> &Vec<Bytes> {
        self.0.as_deref().unwrap_or(&EMPTY)
    }
}

impl Batch {
    /// The vector, borrowed from the pool when the link has none.
    pub(super) fn vec(&mut self) -> &mut Vec<Bytes> {
        self.0.get_or_insert_with(pooled)
    }

    /// Append the rest of a frame a direct write began, if any.
    pub(super) fn push_rest(&mut self, rest: Option<Bytes>) {
        if let Some(r) = rest {
            self.vec().push(r);
        }
    }

    /// The vector with whatever it holds (the pool's when the link has none): filled and
    /// handed back with [`Batch::put`].
    pub(super) fn take_box(&mut self) -> Box<Vec<Bytes>> {
        self.0.take().unwrap_or_else(pooled)
    }

    pub(super) fn put(&mut self, v: Box<Vec<Bytes>>) {
        self.0 = Some(v);
    }

    /// Take the frames out (the closing frames follow them), leaving no vector.
    pub(super) fn take(&mut self) -> Vec<Bytes> {
        self.0.take().map(|b| *b).unwrap_or_default()
    }

    /// Write `frames` next (the closing frames), in the vector the link holds if any.
    pub(super) fn set(&mut self, frames: Vec<Bytes>) {
        match &mut self.0 {
            Some(v) => **v = frames,
            None => self.0 = Some(Box::new(frames)),
        }
    }

    /// Drop the frames; the vector goes back to this thread's pool.
    pub(super) fn give_back(&mut self) {
        let Some(mut v) = self.0.take() else {
            return;
        };
        v.clear();
        // Not the closing frames' small vector, nor a grown one.
        if !(MIN_POOLED..=MAX_BATCH).contains(&v.capacity()) {
            return;
        }
        BATCHES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOLED {
                p.push(v);
            }
        });
    }
}

fn pooled() -> Box<Vec<Bytes>> {
    BATCHES
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Box::new(Vec::with_capacity(MIN_POOLED)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_batch_holds_no_vector_and_a_written_one_goes_back_to_the_pool() {
        assert_eq!(std::mem::size_of::<Batch>(), 8);
        let mut b = Batch::default();
        assert!(b.is_empty() && b.0.is_none());
        b.push_rest(None);
        assert!(b.0.is_none(), "nothing to append: no vector taken");
        b.push_rest(Some(Bytes::from_static(b"rest")));
        assert_eq!(b.len(), 1);
        let ptr: *const Vec<Bytes> = &**b.0.as_ref().expect("a vector");
        b.give_back();
        assert!(b.0.is_none(), "written: an idle link keeps no vector");
        let again = b.take_box();
        assert!(again.is_empty());
        assert_eq!(
            &*again as *const Vec<Bytes>, ptr,
            "the pooled vector, reused"
        );
    }
}

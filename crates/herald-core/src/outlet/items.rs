//! An outlet's queued items: the first one inline, the rest in a ring buffer that exists only
//! while two or more are queued.
//!
//! Between two writes a subscriber's queue usually holds one publication, so the common push
//! and drain touch only the outlet itself (no second cache line in a separate allocation), and an
//! idle connection's queue holds no storage at all.

use std::collections::VecDeque;

use super::Out;

/// Queued items, oldest first.
#[derive(Debug, Default)]
pub(super) struct Items {
    /// The oldest item. Invariant: `None` only when `rest` is empty.
    first: Option<Out>,
    rest: VecDeque<Out>,
}

impl Items {
    pub(super) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(super) fn push_back(&mut self, item: Out) {
        if self.first.is_none() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    pub(super) fn push_front(&mut self, item: Out) {
        if let Some(old) = self.first.replace(item) {
            self.rest.push_front(old);
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Out> {
        let item = self.first.take()?;
        self.first = self.rest.pop_front();
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
        Some(item)
    }

    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &Out> {
        self.first.iter().chain(self.rest.iter())
    }

    /// The position of the newest item matching `f`.
    pub(super) fn rposition(&self, mut f: impl FnMut(&Out) -> bool) -> Option<usize> {
        match self.rest.iter().rposition(&mut f) {
            Some(i) => Some(i + 1),
            None => self.first.as_ref().is_some_and(f).then_some(0),
        }
    }

    pub(super) fn get_mut(&mut self, pos: usize) -> Option<&mut Out> {
        match pos {
            0 => self.first.as_mut(),
            n => self.rest.get_mut(n - 1),
        }
    }

    pub(super) fn remove(&mut self, pos: usize) -> Option<Out> {
        match pos {
            0 => self.pop_front(),
            n => self.rest.remove(n - 1),
        }
    }

    pub(super) fn clear(&mut self) {
        self.first = None;
        self.rest = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn reply(n: u8) -> Out {
        Out::Reply(Bytes::from(vec![n]))
    }

    fn order(items: &Items) -> Vec<u8> {
        items
            .iter()
            .map(|o| match o {
                Out::Reply(b) => b[0],
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn keeps_order_and_frees_the_ring_once_one_is_left() {
        let mut items = Items::default();
        items.push_back(reply(2));
        assert_eq!(items.rest.capacity(), 0, "one item needs no ring");
        items.push_back(reply(3));
        items.push_front(reply(1));
        items.push_back(reply(4));
        assert_eq!(order(&items), [1, 2, 3, 4]);
        assert!(matches!(items.remove(2), Some(Out::Reply(b)) if b[0] == 3));
        if let Some(o) = items.get_mut(0) {
            *o = reply(9);
        }
        assert_eq!(order(&items), [9, 2, 4]);
        assert_eq!(items.len(), 3);
        items.pop_front();
        items.pop_front();
        assert_eq!(order(&items), [4]);
        assert_eq!(items.rest.capacity(), 0, "the ring is freed");
        assert!(items.remove(0).is_some());
        assert!(items.is_empty() && items.pop_front().is_none());
    }
}

//! Counted connection slots per key (client IP, user id), released when the guard drops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Open connections per key.
pub struct Slots<K: Hash + Eq + Clone> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

/// A held slot; dropping it frees the slot.
pub struct Slot<K: Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// Take a slot for `key` unless it already holds `max` (0 = unlimited).
    pub fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Slots held by `key`.
    pub fn count(&self, key: &K) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_and_released() {
        let s: Arc<Slots<&str>> = Arc::default();
        let a = s.acquire("a", 2).expect("first");
        let _b = s.acquire("a", 2).expect("second");
        assert!(s.acquire("a", 2).is_none());
        assert!(s.acquire("b", 2).is_some());
        drop(a);
        assert_eq!(s.count(&"a"), 1);
        assert!(s.acquire("a", 2).is_some());
        assert!(s.acquire("x", 0).is_some());
    }
}

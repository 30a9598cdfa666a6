//! Counted connection slots per key (client IP, user id), released when the guard drops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Open connections per key.
pub struct Slots<K: Hash + Eq + Clone> {
    held: Mutex<HashMap<K, Held<K>>>,
}

impl<K: Hash + Eq + Clone> Default for Slots<K> {
    fn default() -> Self {
        Slots {
            held: Mutex::new(HashMap::new()),
        }
    }
}

/// A key's count and the entry its slots share.
struct Held<K: Hash + Eq + Clone> {
    n: usize,
    entry: Arc<Entry<K>>,
}

/// What a key's slots share: how to find their count again.
struct Entry<K: Hash + Eq + Clone> {
    key: K,
    slots: Weak<Slots<K>>,
}

/// A held slot; dropping it frees the slot. 8 bytes (the key is in the shared entry): every
/// connection's task holds one.
pub struct Slot<K: Hash + Eq + Clone> {
    entry: Arc<Entry<K>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Held<K>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot for `key` unless it already holds `max` (0 = unlimited).
    pub fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut held = self.lock();
        if max > 0 && held.get(&key).map_or(0, |h| h.n) >= max {
            return None;
        }
        let h = held.entry(key.clone()).or_insert_with(|| Held {
            n: 0,
            entry: Arc::new(Entry {
                key,
                slots: Arc::downgrade(self),
            }),
        });
        h.n += 1;
        Some(Slot {
            entry: h.entry.clone(),
        })
    }

    /// Slots held by `key`.
    pub fn count(&self, key: &K) -> usize {
        self.lock().get(key).map_or(0, |h| h.n)
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(slots) = self.entry.slots.upgrade() else {
            return;
        };
        let mut held = slots.lock();
        if let Some(h) = held.get_mut(&self.entry.key) {
            h.n -= 1;
            if h.n == 0 {
                held.remove(&self.entry.key);
            }
        }
    }
}

/// A client IP as a slot key: IPv4 as its IPv4-mapped IPv6 address (one key type for both).
pub fn ip_key(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
        std::net::IpAddr::V6(a) => a,
    }
}

/// A user's connection slot: counted on this node and, in a cluster, across all nodes.
pub struct UserSlot {
    _local: Slot<String>,
    // Boxed: a connection task holds this for its lifetime; most nodes are not in a cluster.
    _cluster: Option<Box<ClusterSlot>>,
}

/// A connection counted in the cluster; released (in a task) when dropped.
struct ClusterSlot {
    bus: Arc<dyn herald_core::cluster::ConnectionLimiter>,
    user: String,
    id: String,
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        let (bus, user, id) = (
            self.bus.clone(),
            std::mem::take(&mut self.user),
            std::mem::take(&mut self.id),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = bus.release_connection(&user, &id).await {
                    tracing::warn!(error = %e, "cannot release a cluster connection slot (its lease will)");
                }
            });
        }
    }
}

/// Take a connection slot for `user` (`max_connections_per_user`, 0 = unlimited): on this node,
/// and cluster-wide when the node is in a cluster. `None` when the user is at the limit. When the
/// cluster cannot be asked (Redis down), the local limit alone applies.
pub async fn acquire_user(
    local: &Arc<Slots<String>>,
    node: &herald_core::Node,
    user: &str,
    max: usize,
) -> Option<UserSlot> {
    let slot = local.acquire(user.to_owned(), max)?;
    let cluster = match node.connection_limiter() {
        Some(bus) if max > 0 => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            match bus.acquire_connection(user, &id, max).await {
                Ok(true) => Some(Box::new(ClusterSlot {
                    bus,
                    user: user.to_owned(),
                    id,
                })),
                Ok(false) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster connection limit unavailable; applying the local one");
                    None
                }
            }
        }
        _ => None,
    };
    Some(UserSlot {
        _local: slot,
        _cluster: cluster,
    })
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
        // The last slot of a key takes its entry with it.
        drop(_b);
        assert_eq!(s.count(&"a"), 0);
        assert!(s.lock().is_empty(), "no entry left behind");
        // Every connection's task holds one.
        assert_eq!(std::mem::size_of::<Option<Slot<std::net::Ipv6Addr>>>(), 8);
    }

    /// Slots taken and dropped on many threads at once leave exact counts and no entries.
    #[test]
    fn concurrent_slots_leave_nothing_behind() {
        let s: Arc<Slots<u8>> = Arc::default();
        std::thread::scope(|t| {
            for _ in 0..4 {
                t.spawn(|| {
                    for i in 0..2_000u32 {
                        let a = s.acquire((i % 3) as u8, 0).expect("unlimited");
                        let b = s.acquire((i % 3) as u8, 0).expect("unlimited");
                        drop(a);
                        drop(b);
                    }
                });
            }
        });
        assert!(s.lock().is_empty());
    }
}

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

/// A client IP as a slot key: IPv4 as its IPv4-mapped IPv6 address, so that a held slot is 24
/// bytes (an `IpAddr` key pads it to 32, in every connection task).
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
    }
}

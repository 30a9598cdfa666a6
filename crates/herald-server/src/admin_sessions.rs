//! The admin UI's state (`[admin]`): sessions kept server-side (bounded, with an expiry) and
//! failed logins per client IP. The routes are in the `admin` module.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::config::AdminConfig;

/// The admin surface's state, when `[admin]` is on.
pub struct Admin {
    /// `[admin]`.
    pub config: AdminConfig,
    /// Logged-in sessions.
    pub sessions: Sessions,
    /// Failed logins per client IP.
    pub failed: FailedLogins,
    /// Whether cookies get `Secure` (TLS on).
    pub secure: bool,
}

impl Admin {
    /// `None` when `[admin]` is off.
    pub fn new(config: AdminConfig, secure: bool) -> Option<std::sync::Arc<Admin>> {
        config.enabled().then(|| {
            std::sync::Arc::new(Admin {
                sessions: Sessions::new(config.session_ttl, config.max_sessions),
                failed: FailedLogins::new(config.max_failed_logins, config.login_window),
                config,
                secure,
            })
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most client IPs whose failed logins are remembered; when full, new IPs are refused (429)
/// until a window ends, so a flood of addresses cannot grow memory or reset the count.
pub const MAX_TRACKED_IPS: usize = 10_000;

/// The logged-in admin sessions: random ids (256 bits) to their expiry.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    map: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// At most `max` sessions, each valid for `ttl`.
    pub fn new(ttl: Duration, max: usize) -> Sessions {
        Sessions {
            ttl,
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new session id. Expired sessions are dropped first; when still full, the session
    /// closest to its expiry (the oldest) ends.
    pub fn create(&self) -> String {
        let id =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut map = lock(&self.map);
        map.retain(|_, exp| *exp > now);
        while map.len() >= self.max {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id.clone(), now + self.ttl);
        id
    }

    /// Whether `id` is a live session.
    pub fn valid(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        match map.get(id) {
            Some(exp) if *exp > now => true,
            Some(_) => {
                map.remove(id);
                false
            }
            None => false,
        }
    }

    /// End a session (logout).
    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Live sessions (expired ones may still be counted until the next login).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether there is no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed logins per client IP in fixed windows.
pub struct FailedLogins {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedLogins {
    /// `max` failures per `window` and IP.
    pub fn new(max: u32, window: Duration) -> FailedLogins {
        FailedLogins {
            max,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `ip` may try to log in now.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        match map.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < self.window => *n < self.max,
            Some(_) => {
                map.remove(&ip);
                true
            }
            None => {
                if map.len() >= MAX_TRACKED_IPS {
                    map.retain(|_, (start, _)| now.duration_since(*start) < self.window);
                }
                map.len() < MAX_TRACKED_IPS
            }
        }
    }

    /// Count a failed login of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = lock(&self.map);
        if map.len() >= MAX_TRACKED_IPS && !map.contains_key(&ip) {
            return;
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bounded_and_removable() {
        let s = Sessions::new(Duration::from_secs(60), 2);
        let a = s.create();
        let b = s.create();
        assert_ne!(a, b);
        assert!(s.valid(&a) && s.valid(&b));
        let c = s.create();
        assert_eq!(s.len(), 2);
        assert!(s.valid(&c));
        s.remove(&c);
        assert!(!s.valid(&c));
        assert!(!s.valid("not-a-session"));
    }

    #[test]
    fn sessions_expire() {
        let s = Sessions::new(Duration::ZERO, 4);
        let a = s.create();
        assert!(!s.valid(&a));
    }

    #[test]
    fn failed_logins_are_counted_per_ip() {
        let f = FailedLogins::new(2, Duration::from_secs(60));
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        assert!(f.allowed(a));
        f.failed(a);
        assert!(f.allowed(a));
        f.failed(a);
        assert!(!f.allowed(a));
        assert!(f.allowed(b));
    }
}

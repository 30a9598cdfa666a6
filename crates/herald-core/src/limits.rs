//! Rate limiters (token buckets from `governor`): per connection for commands, keyed by user
//! for publishes and by IP for new connections. A limit of 0 disables the limiter.

use std::hash::Hash;
use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// What the command limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: answer `rate_limited`.
    Limited,
    /// Over the limit for too long in a row: close the connection (4004).
    Close,
}

/// A connection's command limiter with its streak of rejected commands.
pub struct CommandLimiter {
    bucket: DefaultDirectRateLimiter,
    streak: u32,
    close_after: u32,
}

impl CommandLimiter {
    /// `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32, close_after: u32) -> Option<CommandLimiter> {
        Some(CommandLimiter {
            bucket: RateLimiter::direct(quota(per_second, burst)?),
            streak: 0,
            close_after,
        })
    }

    /// Account for one command.
    pub fn check(&mut self) -> Verdict {
        if self.bucket.check().is_ok() {
            self.streak = 0;
            return Verdict::Allow;
        }
        self.streak += 1;
        if self.close_after > 0 && self.streak >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

/// A limiter keyed by user, IP, ...
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    inner: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<KeyedLimiter<K>> {
        Some(KeyedLimiter {
            inner: RateLimiter::keyed(quota(per_second, burst)?),
        })
    }

    /// Whether `key` may act now (consumes one token when it may).
    pub fn allow(&self, key: &K) -> bool {
        self.inner.check_key(key).is_ok()
    }

    /// Forget keys whose buckets are full again (call periodically: keyed state grows otherwise).
    pub fn retain_recent(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_limiter_limits_then_closes() {
        let mut l = CommandLimiter::new(1, 3, 2).expect("limiter");
        assert_eq!(
            (0..3).map(|_| l.check()).collect::<Vec<_>>(),
            vec![Verdict::Allow; 3]
        );
        assert_eq!(l.check(), Verdict::Limited);
        assert_eq!(l.check(), Verdict::Close);
        assert!(CommandLimiter::new(0, 10, 1).is_none());
    }

    #[test]
    fn keyed_limiter_is_per_key() {
        let l = KeyedLimiter::new(1, 1).expect("limiter");
        assert!(l.allow(&"a"));
        assert!(!l.allow(&"a"));
        assert!(l.allow(&"b"));
    }
}

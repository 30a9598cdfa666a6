//! Rate limiters: per connection for commands and frames (a small token bucket, [`Allowance`]),
//! keyed by user for publishes and by IP for new connections (`governor`). A limit of 0 disables the limiter.

use std::hash::Hash;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// The clock of every [`Allowance`] (and of whatever else wants 8-byte monotonic timestamps):
/// milliseconds since its first reading.
pub fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// A rate: `count` per `period`, up to `burst` at once (at least `count`). `count = 0` allows
/// everything.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    count: u32,
    period_ms: u32,
    burst: u32,
}

impl Rate {
    /// `count` per `period`, up to `burst` at once (at least `count`).
    pub fn new(count: u32, period: std::time::Duration, burst: u32) -> Rate {
        Rate {
            count,
            period_ms: (period.as_millis().min(u32::MAX as u128) as u32).max(1),
            burst: burst.max(count),
        }
    }
}

/// A token bucket's state without its [`Rate`] (8 bytes), for owners that hold many buckets of
/// a rate they can name at each take (every connection's journal quotas: the node's config).
/// Lock-free and allocation-free; it reads the clock only when it runs dry.
///
/// The refill time is kept as 32 bits of [`clock_ms`], compared with wrapping arithmetic: a
/// bucket that has not refilled for 2³² ms (~49.7 days) or more counts only the remainder of
/// that time, so it may refuse a take it should allow until it refills (every [`Allowance`] —
/// command, frame and HTTP request budgets — is such a bucket).
#[derive(Debug)]
pub struct Bucket {
    tokens: std::sync::atomic::AtomicU32,
    /// When it was last refilled: the low 32 bits of [`clock_ms`].
    refilled: std::sync::atomic::AtomicU32,
}

impl Bucket {
    /// A full bucket of `rate`.
    pub fn new(rate: Rate) -> Bucket {
        Bucket {
            tokens: std::sync::atomic::AtomicU32::new(rate.burst),
            refilled: std::sync::atomic::AtomicU32::new(clock_ms() as u32),
        }
    }

    /// Take one token at `rate` (the one the bucket was made with); false when none is left.
    pub fn take(&self, rate: Rate) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if rate.count == 0 {
            return true;
        }
        if self
            .tokens
            .fetch_update(Relaxed, Relaxed, |t| t.checked_sub(1))
            .is_ok()
        {
            return true;
        }
        let now = clock_ms() as u32;
        let since = now.wrapping_sub(self.refilled.load(Relaxed));
        let earned = u64::from(since) * u64::from(rate.count) / u64::from(rate.period_ms);
        if earned == 0 {
            return false;
        }
        self.refilled.store(now, Relaxed);
        // This call takes one of the earned tokens.
        self.tokens.store(
            (earned.min(u64::from(rate.burst)) as u32).saturating_sub(1),
            Relaxed,
        );
        true
    }
}

/// A token bucket of `count` per `period` (burst `burst`) for a single owner: a [`Rate`] and its
/// [`Bucket`], 20 bytes. `count = 0` allows everything.
#[derive(Debug)]
pub struct Allowance {
    rate: Rate,
    bucket: Bucket,
}

impl Allowance {
    /// `count` per `period`, up to `burst` at once (at least `count`).
    pub fn new(count: u32, period: std::time::Duration, burst: u32) -> Allowance {
        let rate = Rate::new(count, period, burst);
        Allowance {
            rate,
            bucket: Bucket::new(rate),
        }
    }

    /// Take one token; false when none is left.
    pub fn take(&self) -> bool {
        self.bucket.take(self.rate)
    }
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

/// A connection's command limiter with its streak of rejected commands: a [`Bucket`] of the
/// node's [`CommandRate`], named at each command (every connection holds one: 12 bytes, not a
/// `governor` limiter's 80).
pub struct CommandLimiter {
    bucket: Bucket,
    streak: u32,
}

/// The node's command rate limit (`limits.commands_per_second`, `commands_burst`,
/// `rate_limited_close_after`).
#[derive(Debug, Clone, Copy)]
pub struct CommandRate {
    rate: Rate,
    close_after: u32,
}

impl CommandRate {
    /// `None` when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32, close_after: u32) -> Option<CommandRate> {
        (per_second > 0).then(|| CommandRate {
            rate: Rate::new(per_second, std::time::Duration::from_secs(1), burst),
            close_after,
        })
    }
}

impl CommandLimiter {
    /// A full bucket of `rate`.
    pub fn new(rate: CommandRate) -> CommandLimiter {
        CommandLimiter {
            bucket: Bucket::new(rate.rate),
            streak: 0,
        }
    }

    /// Account for one command at `rate` (the one the limiter was made with).
    pub fn check(&mut self, rate: CommandRate) -> Verdict {
        if self.bucket.take(rate.rate) {
            self.streak = 0;
            return Verdict::Allow;
        }
        self.streak += 1;
        if rate.close_after > 0 && self.streak >= rate.close_after {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

/// One token bucket shared by every thread of the node (`governor`'s GCRA: exact under
/// contention, no credit beyond the burst after an idle spell) — unlike [`Allowance`], which is
/// made for a single owner.
pub struct SharedLimiter {
    inner: governor::DefaultDirectRateLimiter,
}

impl SharedLimiter {
    /// `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: u32) -> Option<SharedLimiter> {
        Some(SharedLimiter {
            inner: RateLimiter::direct(quota(per_second, burst)?),
        })
    }

    /// Whether one more may go now (consumes a token when it may).
    pub fn allow(&self) -> bool {
        self.inner.check().is_ok()
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
    fn allowance_spends_its_burst_then_refills_with_time() {
        let a = Allowance::new(1000, std::time::Duration::from_secs(1), 5);
        assert_eq!(
            (0..1000).filter(|_| a.take()).count(),
            1000,
            "burst >= count"
        );
        assert!(
            !a.take() || !a.take(),
            "dry within the same millisecond or two"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(a.take(), "refilled");
        let off = Allowance::new(0, std::time::Duration::from_secs(1), 0);
        assert!((0..10_000).all(|_| off.take()));
        let per_minute = Allowance::new(3, std::time::Duration::from_secs(60), 3);
        assert_eq!((0..10).filter(|_| per_minute.take()).count(), 3);
    }

    #[test]
    fn a_bucket_refills_across_the_32_bit_clock_wrap() {
        let rate = Rate::new(1, std::time::Duration::from_secs(60), 1);
        let b = Bucket::new(rate);
        assert!(b.take(rate));
        assert!(!b.take(rate), "dry for a minute");
        // Last refilled two minutes before the low 32 bits of the clock wrapped (the stored
        // time is above the current one): the time since is still two minutes.
        b.refilled
            .store(u32::MAX - 120_000, std::sync::atomic::Ordering::Relaxed);
        assert!(b.take(rate), "two minutes earned tokens across the wrap");
        assert_eq!(std::mem::size_of::<Bucket>(), 8);
        assert_eq!(std::mem::size_of::<Allowance>(), 20);
    }

    #[test]
    fn command_limiter_limits_then_closes() {
        let rate = CommandRate::new(1, 3, 2).expect("a limit");
        let mut l = CommandLimiter::new(rate);
        assert_eq!(
            (0..3).map(|_| l.check(rate)).collect::<Vec<_>>(),
            vec![Verdict::Allow; 3]
        );
        assert_eq!(l.check(rate), Verdict::Limited);
        assert_eq!(l.check(rate), Verdict::Close);
        assert!(CommandRate::new(0, 10, 1).is_none());
        // Every connection holds one (`Option` of it in the session: 16 bytes).
        assert_eq!(std::mem::size_of::<Option<CommandLimiter>>(), 16);
    }

    #[test]
    fn keyed_limiter_is_per_key() {
        let l = KeyedLimiter::new(1, 1).expect("limiter");
        assert!(l.allow(&"a"));
        assert!(!l.allow(&"a"));
        assert!(l.allow(&"b"));
    }
}

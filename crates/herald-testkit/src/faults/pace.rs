//! Pacing helpers of the proxy: the bandwidth token bucket and the jitter generator.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket in bytes.
pub(super) struct Bucket {
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl Bucket {
    pub(super) fn burst(rate: u64) -> f64 {
        (rate as f64 / 50.0).max(1500.0)
    }

    pub(super) fn refill(&mut self, now: Instant, rate: u64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate as f64).min(Self::burst(rate));
        self.last = now;
    }
}

/// xorshift64*, seeded per direction: jitter needs no cryptographic quality.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new() -> Rng {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Rng(h.finish() | 1)
    }

    pub(super) fn below(&mut self, bound: Duration) -> Duration {
        if bound.is_zero() {
            return Duration::ZERO;
        }
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let nanos = bound.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(r % nanos.saturating_add(1))
    }
}

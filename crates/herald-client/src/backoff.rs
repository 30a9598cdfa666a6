//! Reconnect delays: exponential growth with full jitter above a floor.
//!
//! Attempt `n` (0-based) waits a uniformly random time in `[min, min(cap, first_max · factorⁿ)]`.
//! With the defaults that is 0.5–1 s, then 0.5–2 s, 0.5–4 s, … up to 0.5–30 s: clients that lost
//! the same server spread out instead of returning together.

use std::time::Duration;

use rand::Rng;

/// Reconnect backoff settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Shortest delay.
    pub min: Duration,
    /// Upper bound of the first delay.
    pub first_max: Duration,
    /// Growth of the upper bound per attempt.
    pub factor: f64,
    /// Largest upper bound.
    pub cap: Duration,
    /// Give up (terminal error) after this many failed attempts in a row; `None` = never.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            first_max: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The upper bound for attempt `n`.
    pub fn upper(&self, attempt: u32) -> Duration {
        let grown = self.first_max.as_secs_f64() * self.factor.powi(attempt.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.cap.as_secs_f64())).max(self.min)
    }

    /// A random delay for attempt `n`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let hi = self.upper(attempt);
        let lo = self.min.min(hi);
        if hi <= lo {
            return lo;
        }
        Duration::from_secs_f64(rng.random_range(lo.as_secs_f64()..=hi.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_doubles_and_caps_with_jitter() {
        let b = Backoff::default();
        assert_eq!(b.upper(0), Duration::from_secs(1));
        assert_eq!(b.upper(1), Duration::from_secs(2));
        assert_eq!(b.upper(4), Duration::from_secs(16));
        assert_eq!(b.upper(5), Duration::from_secs(30));
        assert_eq!(b.upper(1000), Duration::from_secs(30));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, &mut rng)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= b.min && *d <= Duration::from_secs(8))
        );
        // Jitter: the delays are spread, not all equal.
        let (lo, hi) = (delays.iter().min(), delays.iter().max());
        assert!(
            hi.zip(lo)
                .is_some_and(|(h, l)| *h - *l > Duration::from_secs(4))
        );
        for _ in 0..100 {
            let d = b.delay(0, &mut rng);
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_secs(1));
        }
    }
}

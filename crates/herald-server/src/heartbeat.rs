//! Heartbeats for every connection of a server from one task: a timer wheel instead of a timer
//! in every connection.
//!
//! Each connection registers a small [`Beat`] in one of the wheel's buckets. The sweep task wakes
//! every `tick` and visits one bucket for pings (each connection in it is pinged once per
//! `ping_interval`) and one for pong deadlines (`pong_timeout` after that bucket's pings). A
//! connection that sent nothing since its ping was stamped is told to close with 4000; the
//! connection itself writes the ping and the close (it owns its socket). On shutdown the sweep
//! tells every connection to stop. A connection's cost is its `Beat` (one small allocation) and a
//! pointer in a bucket; buckets drop the pointers of closed connections when they are swept.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

/// Flag: write a ping.
const PING: u8 = 1;
/// Flag: no pong in time, close with 4000.
const TIMED_OUT: u8 = 2;
/// Flag: the server is shutting down.
const STOP: u8 = 4;
/// Flag: the connection reached its lifetime, close with 4005.
const ROTATE: u8 = 8;
/// The unit of [`Beat`]'s rotation time, in wheel milliseconds: a `u32` of them lasts 8.7
/// years of uptime (later rotations saturate: never), and a rotation comes at most 64 ms late —
/// well inside its 10 % jitter.
const ROTATE_UNIT_MS: u64 = 64;

/// One connection's heartbeat state, shared with the sweep.
#[derive(Default)]
pub struct Beat {
    /// Milliseconds on the wheel's clock when something last arrived from the client.
    last_seen: AtomicU64,
    /// When the outstanding ping was stamped (wheel clock + 1; 0 = none outstanding).
    ping_at: AtomicU64,
    /// When the connection is rotated (wheel clock in [`ROTATE_UNIT_MS`], rounded up; 0 = never,
    /// or done). 32 bits: with it the `Arc<Beat>` is a 64-byte allocation, not 80.
    rotate_at: AtomicU32,
    flags: AtomicU8,
    waker: AtomicWaker,
}

/// What the sweep asks of a connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    /// Write a ping.
    pub ping: bool,
    /// Close with 4000 (heartbeat timeout).
    pub timed_out: bool,
    /// Close with 1001 (shutdown).
    pub stop: bool,
    /// Close with 4005: the connection reached `max_lifetime`.
    pub rotate: bool,
}

impl Beat {
    /// Wake `waker` when the sweep asks something of this connection.
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }

    /// Take what the sweep asked since the last call (pings and timeouts once; stop stays).
    pub fn take(&self) -> Asked {
        // A plain load first: nearly every poll finds nothing asked, and a read-modify-write
        // would take the cache line exclusively every time.
        let mut f = self.flags.load(Ordering::Acquire);
        if f & !STOP != 0 {
            f = self.flags.fetch_and(STOP, Ordering::AcqRel);
        }
        Asked {
            ping: f & PING != 0,
            timed_out: f & TIMED_OUT != 0,
            stop: f & STOP != 0,
            rotate: f & ROTATE != 0,
        }
    }

    /// Put back a rotation [`Beat::take`] returned that cannot start yet (a command runs): the
    /// next `take` returns it again. Nobody is woken (the connection's task is running).
    pub fn defer_rotate(&self) {
        self.flags.fetch_or(ROTATE, Ordering::AcqRel);
    }

    /// Ask this connection to rotate now (tests of the link).
    #[cfg(test)]
    pub(crate) fn ask_rotate_for_test(&self) {
        self.ask(ROTATE);
    }

    /// Ask this connection to ping now (tests of the link).
    #[cfg(test)]
    pub(crate) fn ask_ping_for_test(&self) {
        self.ask(PING);
    }

    fn ask(&self, flag: u8) {
        if self.flags.fetch_or(flag, Ordering::AcqRel) & flag == 0 {
            self.waker.wake();
        }
    }

    /// The client's ping was answered or anything else arrived: it is alive.
    fn answered(&self) -> bool {
        let ping_at = self.ping_at.load(Ordering::Acquire);
        // Same millisecond counts: on loopback a pong often arrives within the millisecond its
        // ping was stamped.
        ping_at == 0 || self.last_seen.load(Ordering::Acquire) + 1 >= ping_at
    }
}

/// The wheel and its clock.
pub struct Heartbeats {
    started: Instant,
    tick: Duration,
    pong_timeout: Duration,
    buckets: Vec<Mutex<Vec<Weak<Beat>>>>,
    /// Pong deadlines are checked this many ticks after a bucket's pings.
    pong_ticks: u64,
    /// The next tick to run: tick `k` pings bucket `k % buckets`.
    turn: AtomicU64,
    /// When the server began to shut down.
    stopped_at: std::sync::OnceLock<tokio::time::Instant>,
}

impl Heartbeats {
    /// A wheel that pings every connection every `ping_interval` and closes those that sent
    /// nothing within `pong_timeout` of a ping. Start its sweep with [`Heartbeats::run`].
    pub fn new(ping_interval: Duration, pong_timeout: Duration) -> Arc<Self> {
        let finest = ping_interval.min(pong_timeout) / 8;
        let tick = finest.clamp(Duration::from_millis(5), Duration::from_millis(500));
        let n = ping_interval.as_nanos().div_ceil(tick.as_nanos()).max(1) as usize;
        Arc::new(Heartbeats {
            started: Instant::now(),
            tick,
            pong_timeout,
            buckets: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            pong_ticks: pong_timeout.as_nanos().div_ceil(tick.as_nanos()) as u64,
            turn: AtomicU64::new(0),
            stopped_at: std::sync::OnceLock::new(),
        })
    }

    /// The wheel's clock: milliseconds since it was made.
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Register a new connection. It joins the bucket swept last, so its first ping comes one
    /// `ping_interval` after it joined (less at most one tick), like every later one. With a
    /// `lifetime` (not zero) it is asked to rotate once a random 90–100 % of it has passed.
    pub fn join(&self, lifetime: Duration) -> Arc<Beat> {
        let beat = Arc::new(Beat::default());
        let now = self.now();
        beat.last_seen.store(now, Ordering::Relaxed);
        if !lifetime.is_zero() {
            let ms = lifetime.as_millis() as u64;
            let jitter = rand::random::<u64>() % (ms / 10 + 1);
            let at = (now + (ms - jitter).max(1)).div_ceil(ROTATE_UNIT_MS);
            beat.rotate_at
                .store(u32::try_from(at).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
        let n = self.buckets.len() as u64;
        let i = (self.turn.load(Ordering::Acquire) + n - 1) % n;
        if let Ok(mut b) = self.buckets[i as usize].lock() {
            b.push(Arc::downgrade(&beat));
        }
        beat
    }

    /// Record that something arrived from the client.
    pub fn seen(&self, beat: &Beat) {
        beat.last_seen.store(self.now(), Ordering::Release);
    }

    /// Visit one bucket: prune closed connections, close the silent, ping the rest.
    fn sweep(&self, bucket: usize, ping: bool, stop: bool, now: u64) {
        let pong = self.pong_timeout.as_millis() as u64;
        let Ok(mut b) = self.buckets[bucket].lock() else {
            return;
        };
        b.retain(|w| {
            let Some(beat) = w.upgrade() else {
                return false;
            };
            if stop {
                beat.ask(STOP);
                return true;
            }
            let rotate_at = beat.rotate_at.load(Ordering::Relaxed);
            if rotate_at != 0 && now >= u64::from(rotate_at) * ROTATE_UNIT_MS {
                beat.rotate_at.store(0, Ordering::Relaxed);
                beat.ask(ROTATE);
            }
            if beat.answered() {
                if ping {
                    beat.ping_at.store(now + 1, Ordering::Release);
                    beat.ask(PING);
                } else {
                    beat.ping_at.store(0, Ordering::Release);
                }
            } else if now + 1 >= beat.ping_at.load(Ordering::Acquire) + pong {
                metrics::counter!("herald_heartbeat_timeouts_total").increment(1);
                beat.ping_at.store(0, Ordering::Release);
                beat.ask(TIMED_OUT);
            }
            true
        });
    }

    /// One tick: ping one bucket, check the pong deadlines of the bucket pinged `pong_timeout`
    /// ago, and move on.
    fn tick(&self, now: u64) {
        let n = self.buckets.len() as u64;
        let k = self.turn.load(Ordering::Acquire);
        self.sweep((k % n) as usize, true, false, now);
        let late = (k + n - self.pong_ticks % n) % n;
        if late != k % n {
            self.sweep(late as usize, false, false, now);
        }
        self.turn.store(k + 1, Ordering::Release);
    }

    /// Sweep until the server stops and every connection is gone (or the server is dropped).
    pub async fn run(wheel: Weak<Heartbeats>, shutdown: CancellationToken) {
        let Some(tick) = wheel.upgrade().map(|w| w.tick) else {
            return;
        };
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = interval.tick() => shutdown.is_cancelled(),
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => true,
            };
            let Some(w) = wheel.upgrade() else {
                return;
            };
            let now = w.now();
            if !stopping {
                w.tick(now);
                continue;
            }
            w.stopped_at.get_or_init(tokio::time::Instant::now);
            for i in 0..w.buckets.len() {
                w.sweep(i, false, true, now);
            }
            if w.buckets
                .iter()
                .all(|b| b.lock().map_or(true, |b| b.is_empty()))
            {
                return;
            }
        }
    }

    /// When writes must be done after the server began to shut down (`grace` after it began;
    /// `grace` from now if it has not).
    pub fn stop_deadline(&self, grace: Duration) -> tokio::time::Instant {
        *self
            .stopped_at
            .get()
            .unwrap_or(&tokio::time::Instant::now())
            + grace
    }

    #[cfg(test)]
    pub(crate) fn buckets_len(&self) -> usize {
        self.buckets.len()
    }

    /// Visit a bucket for pings now (tests drive the wheel by hand).
    #[cfg(test)]
    pub(crate) fn sweep_for_test(&self, bucket: usize) {
        self.sweep(bucket, true, false, self.now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket a beat is in.
    fn bucket_of(wheel: &Heartbeats, beat: &Arc<Beat>) -> usize {
        let found = wheel.buckets.iter().position(|b| {
            b.lock().is_ok_and(|b| {
                b.iter()
                    .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(beat)))
            })
        });
        found.expect("the beat is in a bucket")
    }

    #[test]
    fn a_silent_connection_times_out_and_an_answering_one_is_pinged_again() {
        let wheel = Heartbeats::new(Duration::from_millis(100), Duration::from_millis(50));
        let quiet = wheel.join(Duration::ZERO);
        let alive = wheel.join(Duration::ZERO);
        let (bq, ba) = (bucket_of(&wheel, &quiet), bucket_of(&wheel, &alive));
        wheel.sweep(bq, true, false, 1000);
        wheel.sweep(ba, true, false, 1000);
        assert!(quiet.take().ping && alive.take().ping);
        alive.last_seen.store(1010, Ordering::Release);
        // Before the pong deadline nothing happens.
        wheel.sweep(bq, false, false, 1020);
        assert_eq!(quiet.take(), Asked::default());
        // At the deadline the silent one is told to close; the answering one is not.
        wheel.sweep(bq, false, false, 1050);
        wheel.sweep(ba, false, false, 1050);
        assert!(quiet.take().timed_out);
        assert_eq!(alive.take(), Asked::default());
        wheel.sweep(ba, true, false, 1100);
        assert!(alive.take().ping, "pinged again at its next turn");
    }

    /// Regression: a connection joined whatever bucket came next, so its first ping could come
    /// at once (Autobahn 5.19 saw a ping in the middle of its one-second pause on `/echo`).
    #[test]
    fn a_new_connection_is_first_pinged_a_whole_interval_after_it_joined() {
        let wheel = Heartbeats::new(Duration::from_millis(100), Duration::from_millis(50));
        let n = wheel.buckets.len();
        for _ in 0..3 {
            wheel.tick(0);
        }
        let beat = wheel.join(Duration::ZERO);
        for t in 1..n {
            wheel.tick(0);
            assert!(!beat.take().ping, "pinged {t} ticks after joining, of {n}");
        }
        wheel.tick(0);
        assert!(beat.take().ping, "pinged one interval after joining");
    }

    /// Issue 16: `max_lifetime` asks a connection to rotate once, within 90–100 % of it, and a
    /// connection without one never.
    #[test]
    fn a_connection_is_rotated_once_within_its_jittered_lifetime() {
        let wheel = Heartbeats::new(Duration::from_millis(100), Duration::from_millis(50));
        for _ in 0..50 {
            let joined = wheel.now();
            let beat = wheel.join(Duration::from_millis(10_000));
            let forever = wheel.join(Duration::ZERO);
            let (b, f) = (bucket_of(&wheel, &beat), bucket_of(&wheel, &forever));
            // Keep both answering so that only rotation can be asked.
            beat.last_seen.store(u64::MAX / 2, Ordering::Release);
            forever.last_seen.store(u64::MAX / 2, Ordering::Release);
            wheel.sweep(b, false, false, joined + 8_999);
            assert!(!beat.take().rotate, "rotated before 90 % of its lifetime");
            // Rounded up to the rotation unit: at most 64 ms past the lifetime.
            wheel.sweep(b, false, false, joined + 10_000 + ROTATE_UNIT_MS);
            assert!(beat.take().rotate, "not rotated after its lifetime");
            wheel.sweep(b, false, false, joined + 20_000);
            wheel.sweep(f, false, false, joined + 20_000);
            assert!(!beat.take().rotate, "rotated twice");
            assert!(!forever.take().rotate, "rotated without a lifetime");
        }
    }

    /// Issue 14: every connection holds one `Arc<Beat>`; with its `Arc` counts it fills a
    /// 64-byte allocation (jemalloc's size class; 80 with a 64-bit rotation time).
    #[test]
    fn a_beat_fits_a_64_byte_allocation() {
        let size = std::mem::size_of::<Beat>();
        assert!(size + 16 <= 64, "Beat is {size} bytes");
    }

    #[test]
    fn a_pong_in_the_pings_millisecond_counts() {
        let wheel = Heartbeats::new(Duration::from_millis(100), Duration::from_millis(50));
        let beat = wheel.join(Duration::ZERO);
        wheel.sweep(bucket_of(&wheel, &beat), true, false, 500);
        beat.last_seen.store(500, Ordering::Release);
        assert!(beat.answered());
        beat.last_seen.store(499, Ordering::Release);
        assert!(!beat.answered());
    }

    #[test]
    fn closed_connections_leave_their_bucket_and_stop_reaches_everyone() {
        let wheel = Heartbeats::new(Duration::from_millis(100), Duration::from_millis(50));
        let kept = wheel.join(Duration::ZERO);
        drop(wheel.join(Duration::ZERO));
        for i in 0..wheel.buckets.len() {
            wheel.sweep(i, false, true, 0);
        }
        let left: usize = wheel
            .buckets
            .iter()
            .map(|b| b.lock().map_or(0, |b| b.len()))
            .sum();
        assert_eq!(left, 1);
        assert!(kept.take().stop);
        assert!(kept.take().stop, "stop stays");
    }
}

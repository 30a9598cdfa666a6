//! The allocator, and giving memory back to the operating system after many connections or
//! sessions ended.
//!
//! The binary runs on jemalloc (`main.rs`, cargo feature `jemalloc`, on by default) with the
//! options in [`MALLOC_CONF`], compiled in: size-class slabs keep an idle connection's small
//! allocations dense and headerless (glibc adds 8–16 bytes to each and interleaves them with the
//! short-lived handshake buffers, whose freed holes it keeps), and a background thread gives
//! pages that stayed free for about a second back to the OS. Measured on 10 000 idle subscribed
//! connections: 2 065 → 1 690 bytes of RSS each (docs/benchmarks.md). The environment variable
//! `_RJEM_MALLOC_CONF` overrides the options at run time.
//!
//! After a flood — thousands of abandoned long-poll sessions, a reconnect storm, a burst of
//! connections that all went away — the watcher also purges every arena at once (glibc's
//! `malloc_trim(0)` in a build without jemalloc; measured with glibc: 5 000 abandoned sessions
//! took RSS from 13.6 to 67.8 MB and it stayed at 55 MB once every one had ended), so RSS
//! follows what the node actually holds without waiting for the decay.
//!
//! A purge walks and locks every arena in turn, so it is not free: the watcher samples how many
//! connections and waiting sessions the node holds every second and purges only when at least
//! [`MIN_ENDED`] of them, and a quarter of the peak since the last purge, have ended — at most
//! once per `server.memory_trim_interval` (0 = never), on a blocking thread. Steady churn never
//! triggers it; the end of a flood does, once.

use std::time::{Duration, Instant};

use herald_server::Handle;
use tokio_util::sync::CancellationToken;

/// Fewest connections + waiting sessions that must have ended since the last trim.
pub const MIN_ENDED: usize = 256;

/// How often the watcher looks at what the node holds.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// When a trim is worth an arena walk: tracks the peak of what the node held since the last one.
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Record what the node holds now; true when enough ended since the last trim (the peak
    /// then restarts from `held`).
    pub fn observe(&mut self, held: usize) -> bool {
        self.peak = self.peak.max(held);
        let ended = self.peak - held;
        if ended >= MIN_ENDED && ended * 4 >= self.peak {
            self.peak = held;
            true
        } else {
            false
        }
    }
}

/// Watch `handle`'s node and trim after floods (see the module docs), until the server stops.
pub async fn watch(handle: Handle, interval: Duration, stop: CancellationToken) {
    if interval.is_zero() || !supported() {
        return;
    }
    let mut policy = TrimPolicy::default();
    let mut last: Option<Instant> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let held = handle.connections() + handle.node().waiting_sessions();
        if last.is_some_and(|t| t.elapsed() < interval) {
            // Too soon: keep the peak so the trim happens once the interval has passed.
            policy.peak = policy.peak.max(held);
            continue;
        }
        if !policy.observe(held) {
            continue;
        }
        last = Some(Instant::now());
        let Ok((before, after)) = tokio::task::spawn_blocking(|| {
            let before = resident_bytes();
            trim();
            (before, resident_bytes())
        })
        .await
        else {
            continue;
        };
        let returned = before.saturating_sub(after);
        metrics::counter!("herald_memory_trims_total").increment(1);
        metrics::counter!("herald_memory_returned_bytes_total").increment(returned);
        tracing::debug!(
            held,
            rss_before = before,
            rss_after = after,
            "returned free memory to the OS"
        );
    }
}

/// The process's resident set in bytes (`VmRSS` of `/proc/self/status`, whatever the page
/// size; 0 where unreadable).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// jemalloc's options, read when it initializes (before `main`): a background thread purges
/// pages that stayed free for a second (jemalloc's default is ten, without the thread), with no
/// lazily-freed ("muzzy") stage in between.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
pub const MALLOC_CONF: &str = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
mod jemalloc {
    /// [`super::MALLOC_CONF`], NUL-terminated.
    static OPTIONS: [u8; super::MALLOC_CONF.len() + 1] = {
        let mut b = [0u8; super::MALLOC_CONF.len() + 1];
        let s = super::MALLOC_CONF.as_bytes();
        let mut i = 0;
        while i < s.len() {
            b[i] = s[i];
            i += 1;
        }
        b
    };

    /// jemalloc's `malloc_conf` (prefixed as the Rust build links it): a `const char *` it
    /// reads once, when it initializes. Its own definition is weak; this one wins.
    // SAFETY: the symbol is jemalloc's `const char *malloc_conf`; `Option<&u8>` has the layout
    // of a nullable pointer, it points at a 'static, NUL-terminated, never-written byte string,
    // and nothing else in the program defines the name.
    #[allow(unsafe_code)]
    #[unsafe(export_name = "_rjem_malloc_conf")]
    static MALLOC_CONF_PTR: Option<&u8> = Some(&OPTIONS[0]);

    /// jemalloc's `MALLCTL_ARENAS_ALL`: an `arena.<i>` command for every arena.
    const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";

    /// Return jemalloc's free pages to the operating system now.
    #[allow(unsafe_code)]
    pub fn purge() {
        // SAFETY: `arena.<i>.purge` is a command: it reads and writes no value, so every pointer
        // is null and the length 0 (jemalloc(3), "arena.<i>.purge (void) --"); the name is
        // NUL-terminated and static. jemalloc locks each arena itself; the result is advisory.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL_ARENAS.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
}

/// Whether this build can return free memory and see its effect (`/proc` on Linux; jemalloc,
/// or glibc without it).
pub fn supported() -> bool {
    cfg!(all(
        target_os = "linux",
        any(feature = "jemalloc", target_env = "gnu"),
        not(target_env = "msvc")
    ))
}

/// Return the allocator's free pages to the operating system.
pub fn trim() {
    #[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
    jemalloc::purge();
    #[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
    glibc_trim();
}

/// glibc's `malloc_trim(0)` (builds without jemalloc).
#[cfg(all(not(feature = "jemalloc"), target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn glibc_trim() {
    // SAFETY: `malloc_trim` takes no pointers and touches only the allocator's own state, which
    // glibc locks arena by arena (MT-Safe per malloc_trim(3)); the result is advisory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_that_ended_is_trimmed_once_and_steady_churn_never() {
        let mut p = TrimPolicy::default();
        // Steady state around 10 000 with churn of a few hundred: never.
        for held in [10_000, 9_800, 10_100, 9_900, 10_000] {
            assert!(!p.observe(held), "churn at {held}");
        }
        // A flood to 40 000 that goes away: once, at the end.
        assert!(!p.observe(40_000));
        assert!(!p.observe(35_000));
        assert!(p.observe(10_000));
        assert!(!p.observe(10_000), "the peak restarts after a trim");
    }

    #[test]
    fn small_nodes_need_min_ended_sessions_gone() {
        let mut p = TrimPolicy::default();
        assert!(!p.observe(200));
        assert!(!p.observe(0), "200 ended is below MIN_ENDED");
        let mut p = TrimPolicy::default();
        assert!(!p.observe(5_000));
        assert!(p.observe(0));
    }

    #[test]
    fn trimming_gives_freed_pages_back() {
        if !supported() {
            eprintln!("skipped: this build cannot return memory (needs Linux, jemalloc or glibc)");
            return;
        }
        // Many small allocations (below the mmap threshold, so they live in an arena), most
        // freed with a few survivors pinning the heap, as sessions leave it.
        let mut blocks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 1_000]).collect();
        let keep: Vec<Vec<u8>> = blocks.iter().step_by(500).cloned().collect();
        for b in &mut blocks {
            b.iter_mut().for_each(|x| *x = x.wrapping_add(1));
        }
        drop(blocks);
        let before = resident_bytes();
        // jemalloc's background thread may be purging an arena at that moment, and a purge
        // asked for meanwhile returns at once, having done nothing (seen once in a fresh
        // clone's CI run): ask again for up to 100 ms — well inside the 1 s decay, which alone
        // gives back ≈ 3 % by then, so the figure still shows the trim's work.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
        let after = loop {
            trim();
            let after = resident_bytes();
            if before.saturating_sub(after) > 10_000_000 || std::time::Instant::now() > deadline {
                break after;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        assert!(keep.len() == 80);
        assert!(
            before.saturating_sub(after) > 10_000_000,
            "RSS {before} → {after}: the freed 40 MB should have gone back"
        );
    }

    #[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
    #[test]
    fn jemalloc_runs_with_the_configured_options() {
        use tikv_jemalloc_ctl::{Access, AsName};
        // From MALLOC_CONF: without it jemalloc keeps its defaults (no background thread, ten
        // seconds), and the idle figures in docs/benchmarks.md would not hold.
        assert!(tikv_jemalloc_ctl::background_thread::read().expect("background_thread"));
        let dirty: isize = b"opt.dirty_decay_ms\0"
            .name()
            .read()
            .expect("dirty_decay_ms");
        let muzzy: isize = b"opt.muzzy_decay_ms\0"
            .name()
            .read()
            .expect("muzzy_decay_ms");
        assert_eq!((dirty, muzzy), (1000, 0));
    }
}

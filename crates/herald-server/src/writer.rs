//! The corked writer: one task per connection that drains every frame queued for the socket and
//! writes them with one vectored write, sends heartbeats, and performs the closing handshake.
//!
//! Batching writes is what makes fan-out cheap: throughput follows frames-per-syscall almost
//! exactly, so a burst to one subscriber costs one `writev`, not one `write` per frame.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use herald_core::outlet::{Drained, Outlet};
use herald_proto::envelope::Disconnect;
use herald_proto::frame::{self, OpCode};
use herald_proto::{CloseCode, Format};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ConnectionConfig;

/// Frames taken from the queue per write.
const MAX_BATCH: usize = 256;

/// A one-way "done" signal kept inline in [`ConnState`] (a `CancellationToken` is a separate
/// allocation of ~100 bytes; a connection needs two).
#[derive(Default)]
pub struct Done {
    set: AtomicBool,
    notify: Notify,
}

impl Done {
    /// Signal it (wakes every waiter, now and later).
    pub fn signal(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether it was signalled.
    pub fn is_done(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Wait until it is signalled.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// State shared by a connection's reader and writer.
pub struct ConnState {
    started: Instant,
    last_seen_ms: AtomicU64,
    /// Signalled when the reader stopped (client closed, vanished or broke the protocol).
    pub reader_done: Done,
    /// Signalled when the writer stopped.
    pub writer_done: Done,
    final_close: Mutex<Option<CloseCode>>,
}

impl ConnState {
    /// New state for a connection starting now.
    pub fn new() -> Arc<Self> {
        Arc::new(ConnState {
            started: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            reader_done: Done::default(),
            writer_done: Done::default(),
            final_close: Mutex::new(None),
        })
    }

    /// Milliseconds since the connection started: the clock of `touch` and `seen_since`.
    pub fn mark(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Record that something arrived from the client.
    pub fn touch(&self) {
        self.last_seen_ms.store(self.mark(), Ordering::Relaxed);
    }

    /// Whether something arrived at or after `mark` (same millisecond included: on loopback a
    /// pong often arrives within the millisecond its ping was sent).
    pub fn seen_since(&self, mark: u64) -> bool {
        self.last_seen_ms.load(Ordering::Relaxed) >= mark
    }

    /// The reader stopped because of a protocol error: close with this code.
    pub fn set_final_close(&self, code: CloseCode) {
        if let Ok(mut c) = self.final_close.lock() {
            *c = Some(code);
        }
    }

    fn final_close(&self) -> Option<CloseCode> {
        self.final_close.lock().ok().and_then(|c| *c)
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterEnd {
    /// The close code the server sent, if it initiated the close.
    pub code: Option<CloseCode>,
    /// The socket was stuck mid-frame: drop it without a close frame.
    pub abort: bool,
}

impl WriterEnd {
    fn close(code: Option<CloseCode>) -> Self {
        WriterEnd { code, abort: false }
    }
}

/// The writer's metric handles, registered once per process. The recorder is installed when the
/// server is built (`metrics::install` in `ServerBuilder::bind`), before any connection exists,
/// so the first writer already resolves them against it.
struct WriterMetrics {
    frames_out: metrics::Counter,
    bytes_out: metrics::Counter,
    writes: metrics::Counter,
    publish_to_send: metrics::Histogram,
}

impl WriterMetrics {
    fn get() -> &'static WriterMetrics {
        static M: std::sync::OnceLock<WriterMetrics> = std::sync::OnceLock::new();
        M.get_or_init(|| WriterMetrics {
            frames_out: metrics::counter!("herald_frames_out_total"),
            bytes_out: metrics::counter!("herald_bytes_out_total"),
            writes: metrics::counter!("herald_writes_total"),
            publish_to_send: metrics::histogram!("herald_publish_to_send_seconds"),
        })
    }
}

/// Settings the writer needs.
#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Heartbeat and timeouts.
    pub conn: ConnectionConfig,
    /// Shutdown flush deadline.
    pub shutdown_timeout: Duration,
    /// Upper bound of the shutdown reconnect hint.
    pub reconnect_jitter: Duration,
    /// Send a `disconnect` advisory before server-initiated closes (not on `/echo`).
    pub advisory: bool,
}

/// Write every frame, in order, with as few vectored writes as the socket allows.
async fn write_frames<W: AsyncWrite + Unpin>(w: &mut W, frames: &[Bytes]) -> io::Result<usize> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    let (mut idx, mut off) = (0usize, 0usize);
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len());
    while idx < frames.len() {
        slices.clear();
        slices.push(IoSlice::new(&frames[idx][off..]));
        slices.extend(frames[idx + 1..].iter().map(|b| IoSlice::new(b)));
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < frames.len() {
            let left = frames[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(total)
}

fn jitter(max: Duration) -> u64 {
    let max = max.as_millis() as u64;
    if max == 0 {
        0
    } else {
        rand::random::<u64>() % (max + 1)
    }
}

/// The `disconnect` advisory and the close frame for a server-initiated close. `jitter` bounds
/// the random `reconnect_after_ms` hint sent with 1001.
pub fn closing_frames(format: Format, code: CloseCode, jitter_max: Option<Duration>) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(2);
    let d = Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
        reconnect_after_ms: match (code, jitter_max) {
            (CloseCode::GoingAway, Some(max)) => Some(jitter(max)),
            _ => None,
        },
    };
    if let Ok(b) = herald_proto::encode(format, herald_proto::ServerKind::Disconnect, None, &d) {
        frames.push(b);
    }
    frames.push(frame::close(code.code(), code.reason()));
    frames
}

/// Run the writer until the connection closes.
pub async fn run_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut outlet: Arc<Outlet>,
    st: Arc<ConnState>,
    s: WriterSettings,
    shutdown: CancellationToken,
) -> WriterEnd {
    let end = writer_loop(&mut w, &mut outlet, &st, &s, &shutdown).await;
    if let (Some(code), true) = (end.code, end.abort) {
        metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
            .increment(1);
    }
    if let (Some(code), false) = (end.code, end.abort) {
        // Best effort: the advisory, then the close frame, then FIN.
        let frames = if s.advisory {
            closing_frames(outlet.format, code, Some(s.reconnect_jitter))
        } else {
            vec![frame::close(code.code(), code.reason())]
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), write_frames(&mut w, &frames)).await;
        metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
            .increment(1);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
    st.writer_done.signal();
    end
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    w: &mut W,
    outlet: &mut Arc<Outlet>,
    st: &ConnState,
    s: &WriterSettings,
    shutdown: &CancellationToken,
) -> WriterEnd {
    let mut batch = Drained::default();
    let mut next_ping = Instant::now() + s.conn.ping_interval;
    // When the outstanding ping was queued, on the `ConnState::mark` clock.
    let mut ping_sent: Option<(Instant, u64)> = None;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut close_written = false;
    // Built once and re-armed: creating a timer and two cancellation waiters on every wake-up
    // was a measurable share of the per-delivery cost.
    let timer = tokio::time::sleep_until(next_ping.into());
    tokio::pin!(timer);
    // Fused: after it fired, the loop ends at its next `reader_done` check.
    let reader_gone = st.reader_done.wait().fuse();
    tokio::pin!(reader_gone);
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    // Handles resolved once per process: the per-write path does no registry lookups, and a
    // connection holds no handles of its own.
    let WriterMetrics {
        frames_out,
        bytes_out,
        writes,
        publish_to_send,
    } = WriterMetrics::get();
    loop {
        // Read before draining: the reader queues its last frames (a close echo) before it
        // signals, so a drain after this snapshot is guaranteed to include them.
        let reader_done = st.reader_done.is_done();
        batch.frames.clear();
        batch.oldest_pub = None;
        batch.close = None;
        outlet.drain(MAX_BATCH, &mut batch);
        let full = batch.frames.len() == MAX_BATCH;
        if !batch.frames.is_empty() {
            close_written |= batch
                .frames
                .iter()
                .any(|f| f.first() == Some(&(0x80 | OpCode::Close as u8)));
            let limit =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + s.conn.write_timeout);
            // Whether a push's wake-up was taken here: its frames must be drained before the
            // writer waits again (the wake-up is gone).
            let mut pushed_meanwhile = false;
            let result = {
                let write = tokio::time::timeout_at(limit, write_frames(w, &batch.frames));
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        r = &mut write => break r,
                        // A client that stopped reading can overflow its queue while a write is
                        // stuck: drop the socket now instead of waiting for the write timeout.
                        _ = outlet.notified() => {
                            pushed_meanwhile = true;
                            if outlet.close_requested() == Some(CloseCode::SlowConsumer) {
                                return WriterEnd { code: Some(CloseCode::SlowConsumer), abort: true };
                            }
                        }
                    }
                }
            };
            match result {
                Ok(Ok(bytes)) => {
                    frames_out.increment(batch.frames.len() as u64);
                    // Written: an idle connection keeps no reference to its last frames.
                    batch.frames.clear();
                    bytes_out.increment(bytes as u64);
                    writes.increment(1);
                    if let Some(t) = batch.oldest_pub {
                        publish_to_send.record(t.elapsed().as_secs_f64());
                    }
                }
                Ok(Err(_)) => return WriterEnd::close(None),
                Err(_) if deadline.is_some() => {
                    return WriterEnd {
                        code: Some(CloseCode::GoingAway),
                        abort: true,
                    };
                }
                Err(_) => {
                    return WriterEnd {
                        code: Some(CloseCode::WriteTimeout),
                        abort: true,
                    };
                }
            }
            if close_written {
                return WriterEnd::close(None);
            }
            if pushed_meanwhile && batch.redirect.is_none() && batch.close.is_none() {
                continue;
            }
        }
        if let Some(next) = batch.redirect.take() {
            *outlet = next;
            continue;
        }
        if let Some(code) = batch.close {
            return WriterEnd::close(Some(code));
        }
        if full {
            continue;
        }
        if reader_done {
            return WriterEnd::close(st.final_close());
        }
        // Heartbeat bookkeeping.
        let now = Instant::now();
        if let Some((sent, mark)) = ping_sent {
            if st.seen_since(mark) {
                ping_sent = None;
            } else if now >= sent + s.conn.pong_timeout {
                metrics::counter!("herald_heartbeat_timeouts_total").increment(1);
                return WriterEnd::close(Some(CloseCode::HeartbeatTimeout));
            }
        }
        if now >= next_ping {
            next_ping = now + s.conn.ping_interval;
            if ping_sent.is_none() {
                ping_sent = Some((now, st.mark()));
                outlet.push_reply(frame::with_payload(OpCode::Ping, b""));
                continue;
            }
        }
        let wake = ping_sent
            .map(|(p, _)| p + s.conn.pong_timeout)
            .unwrap_or(next_ping)
            .min(next_ping);
        let wake = tokio::time::Instant::from_std(wake);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            _ = outlet.notified() => {}
            _ = &mut reader_gone => {}
            _ = &mut stopping, if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + s.shutdown_timeout);
                outlet.close(CloseCode::GoingAway);
            }
            _ = &mut timer => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the pong check compared a millisecond-truncated "last seen" with the exact
    /// ping time, so a pong arriving within the ping's millisecond did not count and healthy idle
    /// connections were closed with 4000.
    #[test]
    fn a_reply_in_the_same_millisecond_counts() {
        let st = ConnState::new();
        std::thread::sleep(Duration::from_millis(3));
        let mark = st.mark();
        st.touch();
        assert!(st.seen_since(mark));
        let later = st.mark() + 1;
        assert!(!st.seen_since(later));
    }

    /// Regression: a frame queued while a write was in progress woke the writer's
    /// slow-consumer check instead of its idle wait, so it stayed queued until the next push or
    /// the next heartbeat (25 s). Seen as publish replies that never came in a cluster, where
    /// deliveries and replies are pushed from different tasks.
    #[tokio::test]
    async fn a_frame_queued_during_a_write_is_sent_without_another_push() {
        use tokio::io::AsyncReadExt;
        let (client, server) = tokio::io::duplex(64);
        let outlet = Outlet::new(
            Format::Json,
            herald_core::outlet::QueueLimits {
                max_messages: 100,
                max_bytes: 1 << 20,
            },
        );
        let settings = WriterSettings {
            conn: ConnectionConfig {
                ping_interval: Duration::from_secs(3600),
                ..Default::default()
            },
            shutdown_timeout: Duration::from_secs(1),
            reconnect_jitter: Duration::from_secs(1),
            advisory: false,
        };
        let writer = tokio::spawn(run_writer(
            server,
            outlet.clone(),
            ConnState::new(),
            settings,
            CancellationToken::new(),
        ));
        // Larger than the pipe: the write blocks until the test reads.
        let big = Bytes::from(vec![b'a'; 4096]);
        outlet.push_reply(big.clone());
        let (mut rd, _keep) = tokio::io::split(client);
        let mut buf = vec![0u8; 16];
        rd.read_exact(&mut buf).await.expect("the write started");
        // Queued while the first write is stuck.
        outlet.push_reply(Bytes::from_static(b"second"));
        let mut rest = vec![0u8; 4096 - 16 + 6];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut rest))
            .await
            .expect("the second frame follows without another push")
            .expect("read");
        assert_eq!(&rest[rest.len() - 6..], b"second");
        writer.abort();
    }
}

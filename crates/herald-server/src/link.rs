//! One connection's socket, read and written by the connection's one task.
//!
//! The write side drains the connection's [`Outlet`] and writes everything queued with one
//! vectored write (throughput follows frames per syscall almost exactly, so a burst to one
//! subscriber costs one `writev`), writes the pings the heartbeat wheel asks for, and performs
//! the closing handshake. It is a poll-driven state machine: a connection waiting for traffic is
//! one task holding its socket, its reader state and this struct — no writer task, no timer
//! (a timer exists only while a write is blocked), no read buffer (see [`MessageReader`]).
//!
//! The connection task polls [`Link::poll_io`] for the next inbound message and runs the
//! session's commands under [`Link::drive`], which keeps writing while a command awaits (a
//! recovery that waits for queue room needs the queue drained meanwhile).

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use herald_core::outlet::{Drained, Lent, Outlet};
use herald_proto::CloseCode;
use herald_proto::frame::{self, OpCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::heartbeat::{Asked, Beat};
use crate::metrics::WriterMetrics;
use crate::reader::{Inbound, MessageReader, ReadError};
use crate::writer::{WriterEnd, WriterSettings, closing_frames};

mod batch;
use batch::Batch;

/// Frames taken from the queue per write.
const MAX_BATCH: usize = 256;
/// Buffers passed to one vectored write.
const MAX_SLICES: usize = 64;
/// How long the closing frames and the socket shutdown may take each.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(1);
/// Buffered commands read in a row before what they queued is written.
const MAX_UNWRITTEN: u8 = 64;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Writing what the outlet holds.
    Open,
    /// A rotation (4005) is decided and its closing frames are ready, but they wait until the
    /// connection has handed its session back ([`IoEvent::Handover`], [`Link::handed_over`]):
    /// they tell the client to come back at once and `resume`, so the session must be waiting
    /// by then. Nothing is drained or read meanwhile.
    Handover,
    /// Writing the closing frames (`frames`), then shut down.
    Closing,
    /// Shutting the socket's write side down.
    Shutdown,
    /// Finished: `end` says how.
    Done,
}

/// A connection's socket and write state.
pub struct Link<S> {
    reader: MessageReader<S>,
    outlet: Arc<Outlet>,
    beat: Arc<Beat>,
    /// The writer's settings and the heartbeat wheel.
    settings: Arc<WriterSettings>,
    /// The batch being written (borrowed from the per-thread pool; none while idle).
    frames: Batch,
    /// The outlet asked for a close after the batch.
    close: Option<CloseCode>,
    /// The outlet sent this link on to another outlet (after `resume`), after the batch.
    redirect: Option<Arc<Outlet>>,
    /// Bytes of `frames[0]` already written (written frames are removed from the front; a
    /// frame is far below 4 GiB).
    off: u32,
    phase: Phase,
    end: WriterEnd,
    /// Armed only while a write waits: the write timeout, the shutdown deadline, or the closing
    /// timeout.
    timer: Option<Pin<Box<Sleep>>>,
    /// The server is shutting down: writes must be done by the wheel's stop deadline.
    stopping: bool,
    close_written: bool,
    /// The wheel holds this task's waker (see `poll_open`).
    beat_armed: bool,
    ping_owed: bool,
    reader_done: bool,
    /// Commands read since the last write (see `poll_io`).
    unwritten: u8,
    /// The batch being written left the outlet empty, in this poll: once it is written there
    /// is nothing to drain until the next push wakes the task (see `poll_open`).
    emptied: bool,
    final_close: Option<CloseCode>,
}

/// A socket the fan-out may write to directly while its link is idle and the link takes back
/// before it writes anything itself but what it drains ([`herald_core::outlet`]): plain TCP's
/// [`crate::tcp::SendStream`], which only `/ws` connections use. Other streams (TLS, pipes)
/// lend nothing: the default.
///
/// The socket is asked each time, not kept beside it: 16 bytes less in every connection's
/// task; told apart by its address, it costs nothing while the outlet holds it already.
pub trait Lend {
    /// The socket direct writes go through, if this stream takes them.
    fn lent(&self) -> Option<&dyn Lent> {
        None
    }
}

impl Lend for crate::tcp::SendStream {
    fn lent(&self) -> Option<&dyn Lent> {
        Some(self)
    }
}

impl Lend for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}
impl Lend for tokio::io::DuplexStream {}

/// A command running beside the link's write side ([`Link::drive`]).
pub struct Drive<'a, S, F> {
    link: &'a mut Link<S>,
    fut: F,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Lend + 'static, F: Future + Unpin> Future
    for Drive<'_, S, F>
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // The command first: what it queues is written with whatever the next commands queue
        // (see `Link::poll_io`). Writing goes on only while it waits.
        // Its publications may be written straight to idle subscribers' sockets unless more
        // commands wait behind it: a burst is queued, and written in batches.
        let calm = !this.link.reader.frame_buffered();
        let out =
            herald_core::outlet::with_direct_writes(calm, || Pin::new(&mut this.fut).poll(cx));
        if out.is_pending() {
            // A finished write side stays finished; `poll_io` reports it afterwards.
            let _ = this.link.poll_write(cx, true);
        }
        out
    }
}

/// What the socket produced.
#[derive(Debug)]
pub enum IoEvent {
    /// A message or a read failure.
    Inbound(Result<Inbound, ReadError>),
    /// The write side finished: the connection is over.
    Ended(WriterEnd),
    /// The connection is being rotated (4005): hand the session back (park it for `resume`),
    /// then call [`Link::handed_over`] and [`Link::finish`].
    Handover,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Lend + 'static> Link<S> {
    /// Serve `reader`'s socket for `outlet`, with heartbeats from `settings.wheel`.
    pub fn new(
        reader: MessageReader<S>,
        outlet: Arc<Outlet>,
        settings: Arc<WriterSettings>,
    ) -> Self {
        Link {
            reader,
            outlet,
            // `/echo` (no advisories) is never rotated: conformance runs must not see 4005.
            beat: settings.wheel.join(if settings.advisory {
                settings.conn.max_lifetime
            } else {
                std::time::Duration::ZERO
            }),
            settings,
            frames: Batch::default(),
            close: None,
            redirect: None,
            off: 0,
            phase: Phase::Open,
            end: WriterEnd::close(None),
            timer: None,
            stopping: false,
            close_written: false,
            beat_armed: false,
            ping_owed: false,
            reader_done: false,
            unwritten: 0,
            emptied: false,
            final_close: None,
        }
    }

    /// The next inbound message, or the end of the connection. `control` receives the close
    /// echo the protocol obliges us to send (queue it, then call [`Link::reader_finished`]).
    ///
    /// Commands that arrived together are answered together: while a whole frame is buffered
    /// (no read needed), it is returned before anything is written, up to [`MAX_UNWRITTEN`] in a
    /// row — a publisher's burst of publications gets its acknowledgements in one write.
    pub fn poll_io(&mut self, cx: &mut Context<'_>, control: &mut Vec<Bytes>) -> Poll<IoEvent> {
        if self.unwritten < MAX_UNWRITTEN
            && !self.reader_done
            && self.phase == Phase::Open
            && self.reader.frame_buffered()
            && let Poll::Ready(r) = self.reader.poll_next(cx, control)
        {
            self.unwritten += 1;
            self.settings.wheel.seen(&self.beat);
            return Poll::Ready(IoEvent::Inbound(r));
        }
        self.unwritten = 0;
        if let Poll::Ready(end) = self.poll_write(cx, false) {
            return Poll::Ready(IoEvent::Ended(end));
        }
        if self.phase == Phase::Handover {
            return Poll::Ready(IoEvent::Handover);
        }
        // Woken for the queue (or a timer) while the socket has nothing new: no read.
        if self.reader_done || self.reader.quiet() {
            return Poll::Pending;
        }
        match self.reader.poll_next(cx, control) {
            Poll::Ready(r) => {
                self.settings.wheel.seen(&self.beat);
                Poll::Ready(IoEvent::Inbound(r))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next inbound message or the end (see [`Link::poll_io`]).
    pub async fn next(&mut self, control: &mut Vec<Bytes>) -> IoEvent {
        std::future::poll_fn(|cx| self.poll_io(cx, control)).await
    }

    /// Run `fut` (a command) while the socket keeps being written. `fut` should be boxed when it
    /// is large: the returned future holds it inline beside a reference to the link.
    pub fn drive<F: Future + Unpin>(&mut self, fut: F) -> Drive<'_, S, F> {
        Drive { link: self, fut }
    }

    /// Tell the outlet this link waits with nothing unwritten: direct writes to its socket, if
    /// it lends itself ([`Lend`]), may go ahead.
    fn idle(&self) {
        if let Some(socket) = self.reader.get_ref().lent() {
            self.outlet.idle(socket);
        }
    }

    /// Take the socket back from the outlet: the rest of a frame a direct write began, which
    /// must be written before anything else.
    fn take_back(&self) -> Option<Bytes> {
        self.outlet.take_back(self.reader.get_ref().lent()?)
    }

    /// Nothing more will be read: write what is queued, then close with `code` (or, without a
    /// code, just end after the queue: a close echo or a vanished client).
    pub fn reader_finished(&mut self, code: Option<CloseCode>) {
        self.reader_done = true;
        self.final_close = code;
    }

    /// Whether the link waits for the session to be handed back before its closing frames
    /// ([`IoEvent::Handover`]).
    pub fn handing_over(&self) -> bool {
        self.phase == Phase::Handover
    }

    /// The session is handed back: write the rotation's closing frames (with [`Link::finish`]) —
    /// or, when the server asked for a close meanwhile (a revoked token, a forced disconnect, a
    /// stalled recovery's 4503), that close: the session was ended, not parked, for it.
    pub fn handed_over(&mut self) {
        if self.phase == Phase::Handover {
            self.write_closing(self.handover_code());
        }
    }

    /// The close code a handover will write ([`Link::handed_over`]).
    pub fn handover_code(&self) -> CloseCode {
        self.outlet.close_requested().unwrap_or(CloseCode::Rotate)
    }

    /// Finish writing (after [`Link::reader_finished`] or [`Link::handed_over`]) and report how
    /// the connection ended.
    pub async fn finish(&mut self) -> WriterEnd {
        std::future::poll_fn(|cx| self.poll_write(cx, false)).await
    }

    /// The reader, for the lingering close after the write side finished.
    pub fn into_reader(self) -> MessageReader<S> {
        self.reader
    }

    fn start_closing(&mut self, code: CloseCode) {
        if code == CloseCode::Rotate {
            // Written once the session is handed back (`handed_over`); the rest of a direct
            // write, taken back now (the outlet goes with the session), before them (after
            // one taken back from an outlet left for a redirect, if any: `next_batch`).
            let rest = self.take_back();
            self.frames.push_rest(rest);
            self.timer = None;
            self.phase = Phase::Handover;
            return;
        }
        self.write_closing(code);
    }

    /// Write the closing frames for `code`, then shut down.
    fn write_closing(&mut self, code: CloseCode) {
        metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
            .increment(1);
        self.end = WriterEnd::close(Some(code));
        // No direct write may follow the closing frames, nor have begun a frame they would cut:
        // its rest goes first (taken back at the handover already, if there was one).
        let rest: Vec<Bytes> = match self.phase {
            Phase::Handover => self.frames.take(),
            // A batch cut short (a heartbeat timeout while a write waits): the frame begun
            // (or the rest of a direct write it starts with) is finished first, the rest of
            // the batch dropped.
            _ => self
                .frames
                .first()
                .map(|f| f.slice(self.off as usize..))
                .into_iter()
                .chain(self.take_back())
                .collect(),
        };
        self.frames.set(if self.settings.advisory {
            closing_frames(
                self.outlet.format,
                code,
                Some(self.settings.reconnect_jitter),
            )
        } else {
            vec![frame::close(code.code(), code.reason())]
        });
        if !rest.is_empty() {
            self.frames.vec().splice(0..0, rest);
        }
        self.off = 0;
        self.timer = None;
        self.phase = Phase::Closing;
    }

    fn abort(&mut self, code: CloseCode, waker: &Waker) {
        metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
            .increment(1);
        self.end = WriterEnd {
            code: Some(code),
            abort: true,
        };
        self.shut_down(waker);
    }

    fn shut_down(&mut self, waker: &Waker) {
        // Nothing more is drained: the outlet may outlive this task (a session kept for
        // `resume`), its waker need not — unless a resume gave the outlet to another
        // connection meanwhile (a rotation parks the session before this), whose waker stays.
        self.outlet.forget_writer(waker);
        // A frame's rest, if any, goes with the socket.
        drop(self.take_back());
        self.frames.give_back();
        self.timer = None;
        self.phase = Phase::Shutdown;
    }

    /// Whether `timer` (armed at `at` when unarmed) has fired.
    fn timer_fired(&mut self, cx: &mut Context<'_>, at: Instant) -> bool {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        timer.as_mut().poll(cx).is_ready()
    }

    /// Drive the write side (`driving`: while a command runs, [`Link::drive`]); `Ready` once it
    /// is finished.
    fn poll_write(&mut self, cx: &mut Context<'_>, driving: bool) -> Poll<WriterEnd> {
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(self.end),
                // `poll_io` reports it; a command under `drive` goes on meanwhile.
                Phase::Handover => return Poll::Pending,
                Phase::Shutdown => {
                    let done = match Pin::new(self.reader.get_mut()).poll_shutdown(cx) {
                        Poll::Ready(_) => true,
                        Poll::Pending => self.timer_fired(cx, Instant::now() + CLOSING_TIMEOUT),
                    };
                    if !done {
                        return Poll::Pending;
                    }
                    self.timer = None;
                    self.phase = Phase::Done;
                }
                Phase::Closing => match self.poll_frames(cx) {
                    Poll::Ready(Ok(())) => self.shut_down(cx.waker()),
                    Poll::Ready(Err(())) => self.shut_down(cx.waker()),
                    Poll::Pending => {
                        if !self.timer_fired(cx, Instant::now() + CLOSING_TIMEOUT) {
                            return Poll::Pending;
                        }
                        self.shut_down(cx.waker());
                    }
                },
                Phase::Open => {
                    if self.poll_open(cx, driving).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// One step of the open phase; `Ready` when the phase changed.
    fn poll_open(&mut self, cx: &mut Context<'_>, driving: bool) -> Poll<()> {
        // The wheel's waker stays registered until the wheel asks something (it sets a flag,
        // then takes the waker): register again only after a request, not on every poll. After
        // one, register now (a later request must wake this task) and again at the next poll
        // (the request's own wake-up may yet take this registration).
        if !self.beat_armed {
            self.beat.register(cx.waker());
            self.beat_armed = true;
        }
        let asked = self.beat.take();
        if asked != Asked::default() {
            self.beat.register(cx.waker());
            self.beat_armed = false;
        }
        if asked.timed_out {
            self.start_closing(CloseCode::HeartbeatTimeout);
            return Poll::Ready(());
        }
        self.ping_owed |= asked.ping;
        if asked.stop && !self.stopping {
            self.stopping = true;
            self.timer = None;
            self.outlet.close(CloseCode::GoingAway);
        }
        // Rotation: close 4005 once the batch being written is done (the next batch is not
        // taken, so what is queued stays with the session for its `resume`) — unless the
        // connection is ending anyway: shutting down, the client closing, or a close the server
        // already asked for (4001, 4501, 4503, …), which must reach the client as it is.
        // A rotation asked while a command runs (`driving`) waits for it: a handover stops
        // draining the outlet, and a command may need it drained — a recovery pages history in
        // as the queue makes room — so rotating then would stall the command until its timeout
        // (4503 instead of 4005, ten seconds late). The request goes back to the beat, unwoken:
        // it is taken again at the first poll after the command.
        if asked.rotate && driving {
            self.beat.defer_rotate();
        } else if asked.rotate
            && !self.stopping
            && !self.reader_done
            && self.close.is_none()
            && self.outlet.close_requested().is_none()
        {
            self.close = Some(CloseCode::Rotate);
        }
        loop {
            if self.frames.is_empty() && !self.next_batch(cx) {
                if self.phase == Phase::Open {
                    self.idle();
                    return Poll::Pending;
                }
                return Poll::Ready(());
            }
            match self.poll_frames(cx) {
                Poll::Ready(Ok(())) => {
                    if self.close_written {
                        self.shut_down(cx.waker());
                        return Poll::Ready(());
                    }
                    // Written in the poll that drained the outlet empty and armed its waker:
                    // a push since then has woken this task (it is polled again), so draining
                    // again now would only find the queue empty — a lock, a pooled batch taken
                    // and returned: ≈ 250 instructions per delivery (`bench/instructions.sh`).
                    if std::mem::take(&mut self.emptied)
                        && self.close.is_none()
                        && self.redirect.is_none()
                        && !self.reader_done
                        && !self.ping_owed
                    {
                        self.idle();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Err(())) => {
                    self.end = WriterEnd::close(None);
                    self.shut_down(cx.waker());
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    // The wake-up of a push during the wait may be what polls this task when
                    // the write goes on: drain again after it.
                    self.emptied = false;
                    // A client that stopped reading can overflow its queue while a write is
                    // stuck: drop the socket now instead of waiting for the write timeout.
                    self.outlet.register(cx.waker());
                    if self.outlet.close_requested() == Some(CloseCode::SlowConsumer) {
                        self.abort(CloseCode::SlowConsumer, cx.waker());
                        return Poll::Ready(());
                    }
                    let at = if self.stopping {
                        self.settings
                            .wheel
                            .stop_deadline(self.settings.shutdown_timeout)
                    } else {
                        Instant::now() + self.settings.conn.write_timeout
                    };
                    if self.timer_fired(cx, at) {
                        let code = if self.stopping {
                            CloseCode::GoingAway
                        } else {
                            CloseCode::WriteTimeout
                        };
                        self.abort(code, cx.waker());
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Take the next batch from the outlet. False when there is nothing to write (then the phase
    /// may have changed: a close was requested, or the reader finished).
    fn next_batch(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            // `frames` is empty here (written), but for the rest of a direct write taken back
            // from an outlet left for a redirect: it goes first, whatever comes next.
            if let Some(next) = self.redirect.take() {
                let rest = self.take_back();
                self.frames.push_rest(rest);
                std::mem::replace(&mut self.outlet, next).forget_writer(cx.waker());
            }
            if let Some(code) = self.close.take() {
                // A rotation asked for while a batch was being written gives way to a close
                // the outlet got meanwhile (drained and sent as usual), and to the client's own
                // close (the connection is ending without a handover then: rotating it would
                // wait for a handover nobody makes).
                if code != CloseCode::Rotate
                    || (!self.reader_done && self.outlet.close_requested().is_none())
                {
                    self.start_closing(code);
                    return false;
                }
            }
            self.off = 0;
            let redirect_rest = self.frames.len();
            let mut batch = self.frames.take_box();
            let mut d = Drained {
                frames: std::mem::take(&mut *batch),
                ..Drained::default()
            };
            self.outlet.drain_for(cx.waker(), MAX_BATCH, &mut d);
            // The rest of a direct write through this outlet came first too; a frame's rest is
            // not a frame (its first byte is payload): the ping goes after them.
            let rests = redirect_rest + usize::from(d.partial);
            if std::mem::take(&mut self.ping_owed) {
                let at = rests.min(d.frames.len());
                d.frames.insert(at, frame::with_payload(OpCode::Ping, b""));
            }
            if let Some(t) = d.oldest_pub {
                WriterMetrics::get()
                    .publish_to_send
                    .record(t.elapsed().as_secs_f64());
            }
            *batch = d.frames;
            self.frames.put(batch);
            self.close = d.close;
            self.redirect = d.redirect;
            self.emptied = d.emptied;
            if !self.frames.is_empty() {
                self.close_written = self
                    .frames
                    .iter()
                    .skip(rests)
                    .any(|f| f.first() == Some(&(0x80 | OpCode::Close as u8)));
                return true;
            }
            self.frames.give_back();
            if self.redirect.is_some() || self.close.is_some() {
                continue;
            }
            if self.reader_done {
                match self.final_close {
                    Some(code) => self.start_closing(code),
                    None => self.shut_down(cx.waker()),
                }
            }
            return false;
        }
    }

    /// Write `frames` from the current position; `Ready(Ok)` once all are written (in the
    /// open phase the vector then goes back to the pool; in the closing phase it is left empty).
    fn poll_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut total = 0usize;
        let mut count = 0usize;
        while !self.frames.is_empty() {
            let frames = &self.frames;
            let io = Pin::new(self.reader.get_mut());
            let first = &frames[0][self.off as usize..];
            // One frame (a fan-out's usual batch) needs no slice array: 64 of them are 1 KiB to
            // fill, ≈ 150 instructions per delivery at 1 × 1 000 (`bench/instructions.sh`).
            let poll = if frames.len() == 1 {
                io.poll_write(cx, first)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (i, f) in frames.iter().take(MAX_SLICES).enumerate() {
                    slices[i] = IoSlice::new(if i == 0 { first } else { f });
                    n += 1;
                }
                io.poll_write_vectored(cx, &slices[..n])
            };
            let mut written = match poll {
                Poll::Pending => {
                    self.count_written(count, total);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(w)) => w,
            };
            self.timer = None;
            total += written;
            // Whole frames written: drop them from the front (all of them, usually).
            let mut done = 0;
            for f in frames.iter() {
                let left = f.len() - self.off as usize;
                if written < left {
                    self.off += written as u32;
                    break;
                }
                written -= left;
                self.off = 0;
                done += 1;
            }
            count += done;
            if done == self.frames.len() {
                self.frames.vec().clear();
            } else {
                self.frames.vec().drain(..done);
            }
        }
        self.count_written(count, total);
        if self.phase == Phase::Open {
            // Written: an idle connection keeps no reference to its last frames, nor the vector.
            self.frames.give_back();
        }
        Poll::Ready(Ok(()))
    }

    fn count_written(&self, frames: usize, bytes: usize) {
        if self.phase != Phase::Open || bytes == 0 {
            return;
        }
        let m = WriterMetrics::get();
        m.frames_out.increment(frames as u64);
        m.bytes_out.increment(bytes as u64);
        m.writes.increment(1);
    }
}

#[cfg(test)]
mod tests;

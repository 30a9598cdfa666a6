//! Server → client over HTTP: a streamed response body (SSE or HTTP streaming) that drains the
//! session's outlet whenever hyper can write, and one long-poll answer.
//!
//! A streamed body is polled by hyper only when the connection can take more, so a client that
//! does not read fills its outlet and meets the namespace's slow-consumer policy, as on a socket.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::outlet::{Drained, Outlet};
use herald_proto::{CloseCode, Format};
use tokio::time::Sleep;

use super::framing::{self, Style};
use crate::http_sessions::Entry;
use crate::metrics::WriterMetrics;
use crate::writer::closing_frames;

/// Most queued messages taken per chunk or batch.
const BATCH: usize = 256;

/// What one drain of the outlet produced.
enum Took {
    /// Messages (payloads, without WebSocket framing); `closed` when the last is the server's
    /// `disconnect` advisory and nothing follows.
    Messages { messages: Vec<Bytes>, closed: bool },
    /// Nothing yet (the wakers are registered).
    Nothing,
}

/// The `disconnect` advisory for a server-initiated close (its payload).
fn advisory(format: Format, code: CloseCode, jitter: Duration) -> Option<Bytes> {
    closing_frames(format, code, Some(jitter))
        .first()
        .map(framing::payload)
}

/// The waker a downlink (or a poll) gave the session's outlet, taken back when it ends: the
/// session outlives the request (it waits for the next one, or a `resume`), and a waker it kept
/// would keep the finished request's task — hyper's connection future and its buffers — in
/// memory until the session expires. Only this waker is taken back: a newer request or a
/// resumed connection may be registered already.
#[derive(Default)]
pub(super) struct Registered(Option<Waker>);

impl Registered {
    /// Register `cx`'s waker with `outlet` (kept, not cloned, while it is the same task's).
    pub(super) fn register(&mut self, outlet: &Outlet, cx: &Context<'_>) {
        outlet.register(cx.waker());
        if !self.0.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.0 = Some(cx.waker().clone());
        }
    }

    /// The request ended: take the waker back from the outlet `entry` drains now.
    pub(super) fn forget(&mut self, entry: &Entry) {
        if let Some(w) = self.0.take() {
            entry.outlet().forget_writer(&w);
        }
    }
}

/// Drain what is queued for `entry`, following `resume` redirects.
fn take(entry: &Entry, cx: &mut Context<'_>, jitter: Duration, reg: &mut Registered) -> Took {
    loop {
        let outlet = entry.outlet();
        reg.register(&outlet, cx);
        let mut d = Drained::default();
        outlet.drain(BATCH, &mut d);
        let m = WriterMetrics::get();
        if let Some(t) = d.oldest_pub {
            m.publish_to_send.record(t.elapsed().as_secs_f64());
        }
        let mut messages: Vec<Bytes> = d.frames.iter().map(framing::payload).collect();
        // Pongs (never owed here) and empty frames carry nothing.
        messages.retain(|b| !b.is_empty());
        let closed = match d.close {
            Some(code) => {
                messages.extend(advisory(entry.format, code, jitter));
                metrics::counter!("herald_close_codes_total", "code" => code.code().to_string())
                    .increment(1);
                true
            }
            None => false,
        };
        if !messages.is_empty() || closed {
            m.frames_out.increment(messages.len() as u64);
            return Took::Messages { messages, closed };
        }
        match d.redirect {
            Some(target) if !Arc::ptr_eq(&target, &outlet) => entry.redirect(target),
            _ => return Took::Nothing,
        }
    }
}

/// A streamed response body (SSE or HTTP streaming) for one attached downlink.
pub struct Downlink {
    entry: Arc<Entry>,
    generation: u64,
    style: Style,
    /// Sent first (the SSE `session` event).
    head: Option<Bytes>,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
    jitter: Duration,
    done: bool,
    registered: Registered,
}

impl Downlink {
    /// Attach a downlink to `entry`.
    pub fn new(
        entry: Arc<Entry>,
        style: Style,
        head: Option<Bytes>,
        interval: Duration,
        jitter: Duration,
    ) -> Self {
        let generation = entry.attach();
        Downlink {
            entry,
            generation,
            style,
            head,
            keepalive: Box::pin(tokio::time::sleep(interval)),
            interval,
            jitter,
            done: false,
            registered: Registered::default(),
        }
    }

    fn chunk(&mut self, messages: &[Bytes]) -> Bytes {
        let len: usize = messages.iter().map(|m| m.len() + 16).sum();
        let mut buf = BytesMut::with_capacity(len);
        for m in messages {
            self.style.push(&mut buf, m);
        }
        WriterMetrics::get().bytes_out.increment(buf.len() as u64);
        WriterMetrics::get().writes.increment(1);
        let next = tokio::time::Instant::now() + self.interval;
        self.keepalive.as_mut().reset(next);
        buf.freeze()
    }
}

impl futures_util::Stream for Downlink {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(head)));
        }
        self.entry.register(cx.waker());
        match self.entry.attached(self.generation) {
            Ok(()) => {}
            Err(code) => {
                self.done = true;
                let msgs: Vec<Bytes> = code
                    .filter(|c| *c != CloseCode::Normal)
                    .and_then(|c| advisory(self.entry.format, c, self.jitter))
                    .into_iter()
                    .collect();
                if msgs.is_empty() {
                    return Poll::Ready(None);
                }
                let chunk = self.chunk(&msgs);
                return Poll::Ready(Some(Ok(chunk)));
            }
        }
        let this = &mut *self;
        match take(&this.entry, cx, this.jitter, &mut this.registered) {
            Took::Messages { messages, closed } => {
                if closed {
                    self.done = true;
                    self.entry.finish();
                }
                let chunk = self.chunk(&messages);
                Poll::Ready(Some(Ok(chunk)))
            }
            Took::Nothing => {
                if self.keepalive.as_mut().poll(cx).is_ready() {
                    let next = tokio::time::Instant::now() + self.interval;
                    self.keepalive.as_mut().reset(next);
                    return Poll::Ready(Some(Ok(self.style.keepalive())));
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Downlink {
    fn drop(&mut self) {
        self.registered.forget(&self.entry);
        self.entry.detach(self.generation);
    }
}

/// A long-poll's answer: the batch's sequence number (`None` for an empty answer) and its body.
pub struct PollAnswer {
    /// `Herald-Seq` (absent when nothing was sent).
    pub seq: Option<u64>,
    /// The body.
    pub body: Bytes,
    /// The session ended and its last batch was acknowledged: answer 404.
    pub gone: bool,
}

/// Detaches the poll when it returns or its client goes away.
struct Attached<'a>(&'a Entry, u64, Registered);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.2.forget(self.0);
        self.0.detach(self.1);
    }
}

/// Answer one long-poll: the unacknowledged batch again, or wait up to `timeout` for messages.
/// A newer poll of the same session ends this one with an empty answer.
pub async fn poll(entry: &Arc<Entry>, ack: u64, timeout: Duration, jitter: Duration) -> PollAnswer {
    let generation = entry.attach();
    let mut attached = Attached(entry, generation, Registered::default());
    let format = entry.format;
    if let Some((seq, messages)) = entry.unacked(ack) {
        return PollAnswer {
            seq: Some(seq),
            body: framing::batch(format, &messages),
            gone: false,
        };
    }
    if entry.ended() {
        return PollAnswer {
            seq: None,
            body: Bytes::new(),
            gone: true,
        };
    }
    let wait = std::future::poll_fn(|cx| {
        entry.register(cx.waker());
        if entry.attached(generation).is_err() {
            return Poll::Ready(None);
        }
        match take(entry, cx, jitter, &mut attached.2) {
            Took::Messages { messages, closed } => Poll::Ready(Some((messages, closed))),
            Took::Nothing => Poll::Pending,
        }
    });
    match tokio::time::timeout(timeout, wait).await {
        Ok(Some((messages, closed))) => {
            let body = framing::batch(format, &messages);
            let seq = entry.keep(messages);
            if closed {
                entry.finish();
            }
            WriterMetrics::get().bytes_out.increment(body.len() as u64);
            WriterMetrics::get().writes.increment(1);
            PollAnswer {
                seq: Some(seq),
                body,
                gone: false,
            }
        }
        Ok(None) | Err(_) => PollAnswer {
            seq: None,
            body: framing::batch(format, &[]),
            gone: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_sessions::Transport;
    use futures_util::Stream;
    use herald_core::limits::Allowance;
    use herald_core::outlet::QueueLimits;
    use std::future::Future;
    use std::task::Wake;

    /// A request's task, as far as its wakers go.
    struct Task;

    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    fn entry() -> Arc<Entry> {
        let outlet = Outlet::new(
            Format::Json,
            QueueLimits {
                max_messages: 8,
                max_bytes: 1 << 16,
            },
        );
        let requests = Allowance::new(10, Duration::from_secs(1), 10);
        Entry::new(1, "node", Transport::Sse, Format::Json, outlet, requests).0
    }

    /// An SSE downlink of `entry`, polled once with `waker`: waiting for messages.
    fn waiting_downlink(entry: &Arc<Entry>, waker: &Waker) -> Downlink {
        let mut d = Downlink::new(
            entry.clone(),
            Style::Sse,
            None,
            Duration::from_secs(30),
            Duration::ZERO,
        );
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut d).poll_next(&mut cx).is_pending());
        d
    }

    /// Held by the test and its one waker: nothing else keeps the task.
    fn only_ours(task: &Arc<Task>) -> bool {
        Arc::strong_count(task) == 2
    }

    /// A session outlives its requests: a downlink or poll that ended must not leave its waker
    /// (and with it the finished request's task) with the session's outlet or entry.
    #[tokio::test]
    async fn an_ended_downlink_or_poll_leaves_no_waker_with_its_session() {
        let entry = entry();
        let task = Arc::new(Task);
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        let downlink = waiting_downlink(&entry, &waker);
        assert!(!only_ours(&task), "registered while it waits");
        drop(downlink);
        assert!(only_ours(&task), "the ended downlink left its waker behind");

        let mut poll = Box::pin(poll(&entry, 0, Duration::from_secs(30), Duration::ZERO));
        assert!(poll.as_mut().poll(&mut cx).is_pending());
        assert!(!only_ours(&task), "registered while it waits");
        drop(poll);
        assert!(only_ours(&task), "the ended poll left its waker behind");
    }

    /// Ending one request lets go of its own waker only: the request that replaced it (attached
    /// before the old one's body was dropped) keeps being woken.
    #[tokio::test]
    async fn a_replaced_downlink_ending_keeps_its_successors_waker() {
        let entry = entry();
        let (old_task, new_task) = (Arc::new(Task), Arc::new(Task));
        let (old_waker, new_waker) = (Waker::from(old_task.clone()), Waker::from(new_task.clone()));
        let old = waiting_downlink(&entry, &old_waker);
        let new = waiting_downlink(&entry, &new_waker);
        drop(old);
        assert!(only_ours(&old_task));
        assert!(!only_ours(&new_task), "the successor must stay registered");
        drop(new);
        assert!(only_ours(&new_task));
    }
}

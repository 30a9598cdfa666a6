//! Server → client over HTTP: a streamed response body (SSE or HTTP streaming) that drains the
//! session's outlet whenever hyper can write, and one long-poll answer.
//!
//! A streamed body is polled by hyper only when the connection can take more, so a client that
//! does not read fills its outlet and meets the namespace's slow-consumer policy, as on a socket.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_core::outlet::Drained;
use herald_proto::{CloseCode, Format};
use tokio::time::Sleep;

use super::framing::{self, Style};
use crate::http_sessions::Entry;
use crate::writer::{WriterMetrics, closing_frames};

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

/// Drain what is queued for `entry`, following `resume` redirects.
fn take(entry: &Entry, cx: &mut Context<'_>, jitter: Duration) -> Took {
    loop {
        let outlet = entry.outlet();
        outlet.register(cx.waker());
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
        match take(&self.entry, cx, self.jitter) {
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
struct Attached<'a>(&'a Entry, u64);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.detach(self.1);
    }
}

/// Answer one long-poll: the unacknowledged batch again, or wait up to `timeout` for messages.
/// A newer poll of the same session ends this one with an empty answer.
pub async fn poll(entry: &Arc<Entry>, ack: u64, timeout: Duration, jitter: Duration) -> PollAnswer {
    let generation = entry.attach();
    let _attached = Attached(entry, generation);
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
        match take(entry, cx, jitter) {
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

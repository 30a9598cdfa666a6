//! The WebSocket frame reader (`herald_server::reader::MessageReader`) on arbitrary client bytes.
//!
//! Input: `[max_lo, max_hi, fragments (bit 7: permessage-deflate negotiated), seed_lo, seed_hi,
//! wire bytes...]`. The wire bytes are read
//! three times:
//! 1. all at once (`&[u8]`), the reference;
//! 2. in chunks of pseudo-random sizes, with reads that return `Pending` and `next` futures that
//!    are dropped while pending (the reader promises that `next` is cancel-safe), which must give
//!    exactly the reference's events;
//! 3. under a small frame-rate budget, which may only cut the reference short with 1008.
//!
//! Invariants checked on every event: text is UTF-8, no message exceeds the size bound, a ping
//! yields one well-formed pong of at most 125 bytes, `control` grows only by the close echo of a
//! `Close` (one frame, a legal code, a UTF-8 reason) and never otherwise, and every `next` call
//! consumes at least one frame's worth of input (no spinning, no output out of nothing).
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use herald_proto::CloseCode;
use herald_proto::frame::{self, OpCode};
use herald_server::reader::{Inbound, MessageReader, ReadError, ReadLimits, SharedLimits};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// What one `next` call returned, plus the control frames it queued.
#[derive(Debug, PartialEq)]
enum Event {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Bytes),
    Pong,
    Close { clean: bool },
    Protocol(CloseCode),
    Gone,
}

#[derive(Debug, PartialEq)]
struct Step {
    event: Event,
    control: Vec<Bytes>,
}

/// A tiny deterministic generator, seeded from the input.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// A byte stream that hands out `data` in pseudo-random chunks and sometimes is not ready.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    rng: Rng,
    pended: bool,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Never twice in a row, so polling again always makes progress.
        if !this.pended && this.rng.next() % 3 == 0 {
            this.pended = true;
            return Poll::Pending;
        }
        this.pended = false;
        let chunk = match this.rng.next() % 8 {
            0 => 1,
            1..=3 => 1 + (this.rng.next() % 16) as usize,
            4..=6 => 1 + (this.rng.next() % 300) as usize,
            _ => usize::MAX,
        };
        let left = &this.data[this.pos..];
        let n = left.len().min(buf.remaining()).min(chunk);
        buf.put_slice(&left[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Call `next` until an error or a close, polling by hand; `cancel` says whether to drop a
/// pending `next` future (and start a new one) instead of polling it again.
fn drive<R: AsyncRead + Unpin>(
    mut r: MessageReader<R>,
    wire_len: usize,
    mut cancel: impl FnMut() -> bool,
) -> Vec<Step> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut control: Vec<Bytes> = Vec::new();
    let mut steps = Vec::new();
    let mut polls = 0usize;
    loop {
        let result = 'call: loop {
            let mut fut = pin!(r.next(&mut control));
            loop {
                polls += 1;
                assert!(polls < 1_000_000, "the reader does not make progress");
                match fut.as_mut().poll(&mut cx) {
                    Poll::Ready(res) => break 'call res,
                    Poll::Pending if cancel() => break,
                    Poll::Pending => {}
                }
            }
        };
        let (event, last) = match result {
            Ok(Inbound::Text(t)) => (Event::Text(t), false),
            Ok(Inbound::Binary(b)) => (Event::Binary(b), false),
            Ok(Inbound::Ping(p)) => (Event::Ping(p), false),
            Ok(Inbound::Pong) => (Event::Pong, false),
            Ok(Inbound::Close { clean }) => (Event::Close { clean }, true),
            Err(ReadError::Protocol(code)) => (Event::Protocol(code), true),
            Err(ReadError::Gone) => (Event::Gone, true),
        };
        steps.push(Step {
            event,
            control: std::mem::take(&mut control),
        });
        // A frame is at least 6 bytes (2 header + 4 mask) and yields at most one event.
        assert!(
            steps.len() <= wire_len / 6 + 1,
            "{} events from {wire_len} bytes",
            steps.len()
        );
        if last {
            return steps;
        }
    }
}

fn check(steps: &[Step], max: usize) {
    for s in steps {
        match &s.event {
            Event::Close { clean } => {
                assert_eq!(s.control.len(), 1, "a close queues exactly its echo");
                let (payload, op) = frame::parse_unmasked(&s.control[0]).expect("echo frame");
                assert_eq!(op, OpCode::Close);
                assert_eq!(s.control[0].len(), 2 + payload.len(), "one whole frame");
                assert!(payload.len() <= 125 && payload.len() != 1, "{payload:?}");
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                if let Some(c) = code {
                    assert!(
                        matches!(c, 1000..=1003 | 1007..=1013 | 3000..=4999),
                        "echoed close code {c}"
                    );
                    assert!(
                        std::str::from_utf8(&payload[2..]).is_ok(),
                        "close reason UTF-8"
                    );
                }
                assert_eq!(*clean, matches!(code, None | Some(1000) | Some(1001)));
            }
            other => {
                assert!(s.control.is_empty(), "{other:?} queued {:?}", s.control);
                match other {
                    Event::Text(t) => {
                        assert!(std::str::from_utf8(t).is_ok(), "text is not UTF-8");
                        assert!(t.len() <= max, "text of {} > max {max}", t.len());
                    }
                    Event::Binary(b) => {
                        assert!(b.len() <= max, "binary of {} > max {max}", b.len())
                    }
                    Event::Ping(p) => {
                        let (payload, op) = frame::parse_unmasked(p).expect("pong frame");
                        assert_eq!(op, OpCode::Pong);
                        assert!(payload.len() <= 125);
                        assert_eq!(p.len(), 2 + payload.len(), "one whole frame");
                    }
                    _ => {}
                }
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let max = u16::from_le_bytes([input[0], input[1]]) as usize;
    let max_fragments = u32::from(input[2] % 8); // 0 = unlimited
    let seed = u32::from(u16::from_le_bytes([input[3], input[4]])) | 0x1_0000;
    let wire = &input[5..];
    // permessage-deflate negotiated: RSV1 messages are inflated under the same bound.
    let inflate = input[2] & 0x80 != 0;
    let limits = ReadLimits {
        max_message_size: max,
        max_fragments,
        frames_per_second: 0,
        frames_burst: 0,
    };

    let reference = drive(
        MessageReader::with_limits(wire, SharedLimits::new(limits)).inflating(inflate),
        wire.len(),
        || false,
    );
    check(&reference, max);

    let mut decide = Rng(seed.wrapping_mul(2_654_435_761));
    let chunked = Chunked {
        data: wire,
        pos: 0,
        rng: Rng(seed),
        pended: false,
    };
    let split = drive(
        MessageReader::with_limits(chunked, SharedLimits::new(limits)).inflating(inflate),
        wire.len(),
        || decide.next() % 2 == 0,
    );
    assert_eq!(
        reference, split,
        "chunked or cancelled reads changed the result"
    );

    // A frame budget only ever cuts the same sequence short, with 1008.
    let budget = ReadLimits {
        frames_per_second: 1 + u32::from(input[2] >> 3) % 8,
        frames_burst: u32::from(input[2] >> 3) % 4,
        ..limits
    };
    let limited = drive(
        MessageReader::with_limits(wire, SharedLimits::new(budget)).inflating(inflate),
        wire.len(),
        || false,
    );
    if limited != reference {
        let (last, before) = limited.split_last().expect("at least one step");
        assert_eq!(
            last.event,
            Event::Protocol(CloseCode::PolicyViolation),
            "a frame budget changed more than the end"
        );
        assert!(before.len() < reference.len());
        assert_eq!(before, &reference[..before.len()]);
    }
});

//! Reading client messages: RFC 6455 frame parsing (masking, opcodes, control frames, close
//! codes), fragment reassembly under a size bound, and UTF-8 validation as data arrives.
//!
//! The read buffer starts empty and grows only to the frame being read; reads with nothing
//! buffered land in a per-thread scratch buffer, and a connection waiting for its next frame with
//! nothing buffered holds no read buffer at all. `poll_next` (and `next`) keep all state in the
//! reader, so a `Pending` loses nothing. Conformance is checked by the Autobahn suite (`scripts/autobahn.sh`).
//!
//! Bounded by construction ([`ReadLimits`]): a message's size and its number of fragments, and the
//! rate of frames of any kind (pings, pongs, empty continuations included) are limited; a ping is
//! returned at once as [`Inbound::Ping`] so its pong is queued (and coalesced) before the next
//! frame is read, never accumulated while a message is incomplete.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_core::limits::{Bucket, Rate};
use herald_proto::CloseCode;
use herald_proto::frame::{self, OpCode};
use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::tcp::SendStream;

/// Buffer capacity kept after a message has been consumed.
pub const KEEP: usize = 512;

mod unread;
use unread::Unread;

/// Smallest read.
const MIN_READ: usize = 256;
/// Size of each runtime thread's scratch buffer, which reads land in when a connection has
/// nothing buffered (most reads: a whole small command).
const SCRATCH_LEN: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_LEN].into_boxed_slice());
}

/// A complete inbound message or event.
#[derive(Debug)]
pub enum Inbound {
    /// A text message (valid UTF-8).
    Text(Vec<u8>),
    /// A binary message.
    Binary(Vec<u8>),
    /// A ping: the pong frame to send (the caller may send only the newest one, RFC 6455 §5.5.3).
    Ping(Bytes),
    /// A pong (liveness only).
    Pong,
    /// The client closed; `clean` for codes 1000/1001 or no code.
    Close {
        /// Whether the client ended the session on purpose.
        clean: bool,
    },
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The client broke the protocol: close with this code.
    Protocol(CloseCode),
    /// The socket is gone (EOF, reset, I/O error).
    Gone,
}

struct Partial {
    text: bool,
    /// permessage-deflate: the message is inflated (and its UTF-8 checked) once complete.
    compressed: bool,
    buf: Vec<u8>,
    checked: usize,
    fragments: u32,
}

/// What one connection's reader accepts before it closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest message after reassembly (close 1009 beyond).
    pub max_message_size: usize,
    /// Most frames one message may be split into (close 1008 beyond; 0 = unlimited).
    pub max_fragments: u32,
    /// Sustained frames per second of any kind (close 1008 beyond; 0 = unlimited).
    pub frames_per_second: u32,
    /// Burst of frames above the sustained rate.
    pub frames_burst: u32,
}

impl ReadLimits {
    /// Only a message size bound (the `/echo` endpoint, tests).
    pub fn size_only(max_message_size: usize) -> Self {
        ReadLimits {
            max_message_size,
            max_fragments: 0,
            frames_per_second: 0,
            frames_burst: 0,
        }
    }
}

/// [`ReadLimits`] as a server's readers share them: one allocation per server, 8 bytes in each
/// connection's reader.
#[derive(Debug)]
pub struct SharedLimits {
    /// Largest message (saturated at 4 GiB).
    max: u32,
    max_fragments: u32,
    frames: Rate,
}

impl SharedLimits {
    /// Share `limits`.
    pub fn new(limits: ReadLimits) -> Arc<SharedLimits> {
        Arc::new(SharedLimits {
            max: u32::try_from(limits.max_message_size).unwrap_or(u32::MAX),
            max_fragments: limits.max_fragments,
            frames: Rate::new(
                limits.frames_per_second,
                Duration::from_secs(1),
                limits.frames_burst,
            ),
        })
    }
}

/// Reads whole messages from a client's byte stream.
pub struct MessageReader<R> {
    io: R,
    /// Bytes read and not parsed yet.
    buf: Unread,
    limits: Arc<SharedLimits>,
    /// Frames this connection may still send now, at `limits.frames`.
    budget: Bucket,
    /// A fragmented message being reassembled (boxed: rare, and every connection holds a reader).
    partial: Option<Box<Partial>>,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    inflate: bool,
    /// The last read found the socket empty (`Pending`): its waker is registered with the
    /// reactor (see [`MessageReader::quiet`]).
    waiting: bool,
}

/// Validate newly appended UTF-8, allowing an incomplete sequence at the end.
fn check_utf8(p: &mut Partial, fin: bool) -> Result<(), ReadError> {
    match std::str::from_utf8(&p.buf[p.checked..]) {
        Ok(_) => {
            p.checked = p.buf.len();
            Ok(())
        }
        Err(e) if e.error_len().is_none() && !fin => {
            p.checked += e.valid_up_to();
            Ok(())
        }
        Err(_) => Err(ReadError::Protocol(CloseCode::InvalidPayload)),
    }
}

/// Inflate a compressed message under the size bound: past it 1009, bad deflate data 1007.
fn inflate(compressed: &[u8], max: usize) -> Result<Vec<u8>, ReadError> {
    use herald_proto::deflate::InflateError;
    herald_proto::deflate::inflate(compressed, max).map_err(|e| {
        metrics::counter!("herald_inflate_refused_total", "reason" => match e {
            InflateError::TooBig(_) => "too_big",
            InflateError::Corrupt => "corrupt",
        })
        .increment(1);
        ReadError::Protocol(match e {
            InflateError::TooBig(_) => CloseCode::MessageTooBig,
            InflateError::Corrupt => CloseCode::InvalidPayload,
        })
    })
}

/// A complete message (a text one must be valid UTF-8: else 1007).
fn message(text: bool, data: Vec<u8>) -> Result<Inbound, ReadError> {
    if !text {
        return Ok(Inbound::Binary(data));
    }
    if std::str::from_utf8(&data).is_err() {
        return Err(ReadError::Protocol(CloseCode::InvalidPayload));
    }
    Ok(Inbound::Text(data))
}

/// Close codes a peer may send (RFC 6455 §7.4, IANA registry).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

const fn protocol() -> ReadError {
    ReadError::Protocol(CloseCode::ProtocolError)
}

const fn policy() -> ReadError {
    ReadError::Protocol(CloseCode::PolicyViolation)
}

/// A parsed frame header.
struct Header {
    fin: bool,
    /// RSV1: the message is compressed (permessage-deflate; only on its first frame).
    compressed: bool,
    opcode: u8,
    /// Header bytes including the masking key.
    len: usize,
    payload: usize,
    mask: [u8; 4],
}

/// Parse a client frame header from `b`; `Ok(None)` = more bytes are needed. `inflate`:
/// permessage-deflate was negotiated, so RSV1 may mark the first frame of a data message.
fn parse_header(b: &[u8], max: usize, inflate: bool) -> Result<Option<Header>, ReadError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0f;
    let compressed = b[0] & 0x40 != 0;
    if b[0] & 0x30 != 0 || (compressed && !(inflate && matches!(opcode, 1 | 2))) {
        // RSV2/RSV3 never; RSV1 only with permessage-deflate, on a message's first frame.
        return Err(protocol());
    }
    if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(protocol());
    }
    if b[1] & 0x80 == 0 {
        return Err(protocol()); // client frames must be masked
    }
    let (ext, payload) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (2, u16::from_be_bytes([b[2], b[3]]) as u64),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (8, u64::from_be_bytes(n))
        }
        126 | 127 => return Ok(None),
        n => (0, n as u64),
    };
    if opcode >= 8 && (!fin || payload > 125) {
        return Err(protocol()); // control frames: unfragmented, at most 125 bytes
    }
    if opcode < 8 && payload > max as u64 {
        return Err(ReadError::Protocol(CloseCode::MessageTooBig));
    }
    let len = 2 + ext + 4;
    if b.len() < len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&b[2 + ext..len]);
    Ok(Some(Header {
        fin,
        compressed,
        opcode,
        len,
        payload: payload as usize,
        mask,
    }))
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// Read from `io`; `max` bounds a whole message (no other limit).
    pub fn new(io: R, max: usize) -> Self {
        Self::with_limits(io, SharedLimits::new(ReadLimits::size_only(max)))
    }

    /// Read from `io` under `limits`.
    pub fn with_limits(io: R, limits: Arc<SharedLimits>) -> Self {
        MessageReader {
            io,
            buf: Unread::default(),
            budget: Bucket::new(limits.frames),
            limits,
            partial: None,
            inflate: false,
            waiting: false,
        }
    }

    /// permessage-deflate was negotiated: accept compressed messages (inflated under the same
    /// size bound: past it, close 1009).
    pub fn inflating(mut self, on: bool) -> Self {
        self.inflate = on;
        self
    }

    /// Read `bytes` (already taken from the socket) before anything else.
    pub fn with_buffered(mut self, bytes: &[u8]) -> Self {
        self.buf.extend(bytes);
        self
    }

    /// After the server sent its close frame: read and discard what the client still sends, until
    /// it closes (EOF), `limit` bytes or `timeout` (RFC 6455 §7.1.1). Closing at once would make
    /// the kernel answer unread bytes with a reset, and the client would see 1006, not our code.
    pub async fn linger(mut self, timeout: Duration, limit: usize) {
        let mut seen = self.buf.unread().len();
        let mut scratch = vec![0u8; 4096];
        let drain = async {
            while seen < limit {
                match self.io.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen += n,
                }
            }
        };
        let _ = tokio::time::timeout(timeout, drain).await;
    }

    /// Read more bytes, making room for at least `want` more. With nothing buffered the read goes
    /// into this thread's scratch buffer and only what arrived is kept; while the socket has
    /// nothing to read and nothing is buffered, the connection holds no read buffer at all.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<Result<(), ReadError>> {
        self.buf.compact();
        let want = want.max(MIN_READ);
        let res = if self.buf.all().is_empty() && self.buf.capacity() < want {
            let io = &mut self.io;
            let buf = &mut self.buf;
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match Pin::new(io).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => {
                        buf.extend(rb.filled());
                        Poll::Ready(r.map(|()| rb.filled().len()))
                    }
                }
            })
        } else {
            let buf = self.buf.vec();
            buf.reserve(want);
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, buf)
        };
        // A read stopped by tokio's task budget (`coop`) returns `Pending` without registering
        // anything: it only asks for the task to be polled again, and then it must read.
        self.waiting = res.is_pending() && tokio::task::coop::has_budget_remaining();
        match res {
            Poll::Pending => {
                self.buf.release_if_empty();
                Poll::Pending
            }
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(Err(ReadError::Gone)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
        }
    }

    /// Read the next message. The close echo the protocol obliges us to send is appended to
    /// `control`, to be written by the writer; pongs come back as [`Inbound::Ping`].
    pub async fn next(&mut self, control: &mut Vec<Bytes>) -> Result<Inbound, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(cx, control)).await
    }

    /// [`MessageReader::next`] as a poll: `Pending` keeps every byte read so far in the reader.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        control: &mut Vec<Bytes>,
    ) -> Poll<Result<Inbound, ReadError>> {
        loop {
            let in_message = self.partial.as_ref().map_or(0, |p| p.buf.len());
            let limit = (self.limits.max as usize).saturating_sub(in_message);
            let header = match parse_header(self.buf.unread(), limit, self.inflate)? {
                Some(h) => h,
                None => {
                    ready!(self.poll_fill(cx, 14))?;
                    continue;
                }
            };
            let have = self.buf.unread().len();
            if have < header.len + header.payload {
                ready!(self.poll_fill(cx, header.len + header.payload - have))?;
                continue;
            }
            if !self.budget.take(self.limits.frames) {
                return Poll::Ready(Err(policy()));
            }
            let from = self.buf.start() + header.len;
            let payload = &mut self.buf.all_mut()[from..from + header.payload];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= header.mask[i & 3];
            }
            // Within `buf`, which holds at most a message and a frame header.
            self.buf.set_start(from + header.payload);
            let result = self.frame(&header, from, control);
            self.buf.consumed();
            if let Some(m) = result? {
                return Poll::Ready(Ok(m));
            }
        }
    }

    /// A whole frame is buffered already: the next [`MessageReader::poll_next`] acts on it (or
    /// fails on it) without reading the socket.
    pub fn frame_buffered(&self) -> bool {
        let b = self.buf.unread();
        match parse_header(b, self.limits.max as usize, self.inflate) {
            Ok(Some(h)) => b.len() >= h.len + h.payload,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Nothing new can be read: the last read found the socket empty and the reactor has not
    /// seen it become readable since, so the waker that read registered is still registered —
    /// a task woken for something else (its queue, mostly) need not read again. Known for plain
    /// TCP ([`SendStream::read_quiet`]: one atomic load); other streams are read to find out.
    /// Reading again costs tokio's waker registration (a lock) and this thread's scratch buffer:
    /// ≈ 300 instructions per delivery at 1 channel × 1 000 subscribers.
    pub fn quiet(&self) -> bool
    where
        R: 'static,
    {
        self.waiting
            && (&self.io as &dyn std::any::Any)
                .downcast_ref::<SendStream>()
                .is_some_and(SendStream::read_quiet)
    }

    /// The socket.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// The socket, for writing (the reader owns it: one task reads and writes).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Act on one complete frame whose unmasked payload starts at `from`.
    fn frame(
        &mut self,
        h: &Header,
        from: usize,
        control: &mut Vec<Bytes>,
    ) -> Result<Option<Inbound>, ReadError> {
        let payload = &self.buf.all()[from..from + h.payload];
        match h.opcode {
            8 => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(protocol()),
                    _ => Some(u16::from_be_bytes([payload[0], payload[1]])),
                };
                if code.is_some_and(|c| !close_code_allowed(c)) {
                    return Err(protocol());
                }
                if payload.len() > 2 && std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(ReadError::Protocol(CloseCode::InvalidPayload));
                }
                control.push(frame::with_payload(OpCode::Close, payload));
                Ok(Some(Inbound::Close {
                    clean: matches!(code, None | Some(1000) | Some(1001)),
                }))
            }
            9 => Ok(Some(Inbound::Ping(frame::with_payload(
                OpCode::Pong,
                payload,
            )))),
            10 => Ok(Some(Inbound::Pong)),
            1 | 2 => {
                if self.partial.is_some() {
                    return Err(protocol());
                }
                let text = h.opcode == 1;
                if h.fin {
                    let data = if h.compressed {
                        inflate(payload, self.limits.max as usize)?
                    } else {
                        payload.to_vec()
                    };
                    return message(text, data).map(Some);
                }
                let mut p = Partial {
                    text,
                    compressed: h.compressed,
                    buf: payload.to_vec(),
                    checked: 0,
                    fragments: 1,
                };
                if text && !p.compressed {
                    check_utf8(&mut p, false)?;
                }
                self.partial = Some(Box::new(p));
                Ok(None)
            }
            _ => {
                // Continuation (opcode 0; others were refused by `parse_header`).
                let Some(p) = self.partial.as_mut() else {
                    return Err(protocol());
                };
                p.fragments += 1;
                if self.limits.max_fragments > 0 && p.fragments > self.limits.max_fragments {
                    return Err(policy());
                }
                p.buf.extend_from_slice(payload);
                if p.text && !p.compressed {
                    check_utf8(p, h.fin)?;
                }
                if !h.fin {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Err(protocol());
                };
                let p = *p;
                if p.compressed {
                    let data = inflate(&p.buf, self.limits.max as usize)?;
                    return message(p.text, data).map(Some);
                }
                Ok(Some(if p.text {
                    Inbound::Text(p.buf)
                } else {
                    Inbound::Binary(p.buf)
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    }

    /// Counts wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Issue 14: the connection task read its socket on every wake-up — for each delivery,
    /// tokio's waker registration and this thread's scratch buffer, with nothing to read. A
    /// reader that found the socket empty is now quiet until the reactor sees it readable.
    #[tokio::test]
    async fn a_reader_that_found_the_socket_empty_is_quiet_until_it_becomes_readable() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let connect = tokio::net::TcpStream::connect(l.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(connect, l.accept());
        let mut client = client.expect("connect");
        let mut r = MessageReader::new(SendStream::new(accepted.expect("accept").0), 1 << 20);
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut control = Vec::new();
        assert!(!r.quiet(), "nothing read yet");
        assert!(r.poll_next(&mut cx, &mut control).is_pending());
        assert!(r.quiet(), "found empty, its waker registered");
        assert!(r.quiet(), "and asking changes nothing");
        // Review finding: a read that tokio's task budget stopped returned `Pending` having
        // registered nothing, and the reader called itself quiet — the client's next messages
        // (its pongs too) were not read until something else woke the task.
        while tokio::task::coop::has_budget_remaining() {
            tokio::task::coop::consume_budget().await;
        }
        assert!(r.poll_next(&mut cx, &mut control).is_pending());
        assert!(!r.quiet(), "out of budget, nothing registered: read again");
        tokio::task::yield_now().await;
        assert!(r.poll_next(&mut cx, &mut control).is_pending());
        assert!(r.quiet(), "found empty with budget left: registered");
        // (The budget's own wake-up above counted one.)
        let before = wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        client.write_all(&masked(0x81, b"hi")).await.expect("write");
        let woken = async {
            while wakes.0.load(std::sync::atomic::Ordering::SeqCst) == before {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the registered waker is woken");
        assert!(!r.quiet(), "readable: read again");
        match r.poll_next(&mut cx, &mut control) {
            Poll::Ready(Ok(Inbound::Text(t))) => assert_eq!(t, b"hi"),
            other => panic!("{other:?}"),
        }
        assert!(!r.quiet(), "a message was read: the socket may hold more");
        assert!(r.poll_next(&mut cx, &mut control).is_pending());
        assert!(r.quiet());
        // Any other stream is read to find out.
        let (other, _peer) = tokio::io::duplex(64);
        let mut d = MessageReader::new(other, 1 << 20);
        assert!(d.poll_next(&mut cx, &mut control).is_pending());
        assert!(!d.quiet());
    }

    #[tokio::test]
    async fn reassembles_answers_pings_and_frees_the_buffer() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut r = MessageReader::new(server, 1 << 20);
        let mut bytes = masked(0x01, b"hel"); // text, not fin
        bytes.extend(masked(0x89, b"p")); // ping in between
        bytes.extend(masked(0x80, b"lo")); // continuation, fin
        client.write_all(&bytes).await.expect("write");
        let mut control = Vec::new();
        match r.next(&mut control).await {
            Ok(Inbound::Ping(pong)) => assert_eq!(&pong[..], &[0x8a, 1, b'p']),
            other => panic!("the ping comes back at once, inside the message: {other:?}"),
        }
        match r.next(&mut control).await {
            Ok(Inbound::Text(t)) => assert_eq!(t, b"hello"),
            other => panic!("{other:?}"),
        }
        assert!(control.is_empty());
        let big = vec![b'x'; 100];
        let mut frame = vec![0x82, 0x80 | 126, 0, 100, 0, 0, 0, 0];
        frame.extend(&big);
        client.write_all(&frame).await.expect("write");
        match r.next(&mut control).await {
            Ok(Inbound::Binary(b)) => assert_eq!(b, big),
            other => panic!("{other:?}"),
        }
        assert!(
            r.buf.capacity() <= KEEP,
            "buffer kept small: {}",
            r.buf.capacity()
        );
        assert_eq!(std::mem::size_of::<Unread>(), 8);
        // Waiting for the next frame with nothing buffered holds no buffer at all.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(r.poll_next(&mut cx, &mut control).is_pending());
        assert!(r.buf.0.is_none(), "an idle reader holds no buffer");
    }

    /// Regression (issue 12): 265 M empty continuation frames were reassembled without a bound.
    #[tokio::test]
    async fn too_many_fragments_close_with_1008() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let limits = ReadLimits {
            max_fragments: 8,
            ..ReadLimits::size_only(1 << 20)
        };
        let mut r = MessageReader::with_limits(server, SharedLimits::new(limits));
        let mut bytes = masked(0x01, b"a");
        for _ in 0..6 {
            bytes.extend(masked(0x00, b""));
        }
        bytes.extend(masked(0x80, b"b")); // the 8th fragment completes the message
        bytes.extend(masked(0x01, b"a"));
        for _ in 0..8 {
            bytes.extend(masked(0x00, b""));
        }
        client.write_all(&bytes).await.expect("write");
        match r.next(&mut Vec::new()).await {
            Ok(Inbound::Text(t)) => assert_eq!(t, b"ab"),
            other => panic!("{other:?}"),
        }
        match r.next(&mut Vec::new()).await {
            Err(ReadError::Protocol(c)) => assert_eq!(c, CloseCode::PolicyViolation),
            other => panic!("{other:?}"),
        }
    }

    /// Regression (issue 12): pings were not rate-limited (4 M pings in 6 s).
    #[tokio::test]
    async fn a_frame_flood_closes_with_1008() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let limits = ReadLimits {
            frames_per_second: 100,
            frames_burst: 200,
            ..ReadLimits::size_only(1 << 20)
        };
        let mut r = MessageReader::with_limits(server, SharedLimits::new(limits));
        let mut bytes = Vec::new();
        for _ in 0..1000 {
            bytes.extend(masked(0x89, b""));
        }
        client.write_all(&bytes).await.expect("write");
        let mut pongs = 0;
        let end = loop {
            match r.next(&mut Vec::new()).await {
                Ok(Inbound::Ping(_)) => pongs += 1,
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(ReadError::Protocol(CloseCode::PolicyViolation))),
            "{end:?}"
        );
        assert!((200..400).contains(&pongs), "the burst passes: {pongs}");
    }

    #[tokio::test]
    async fn refuses_unmasked_reserved_and_oversized_frames() {
        for (bytes, code) in [
            (vec![0x81, 0x01, b'a'], CloseCode::ProtocolError),
            (masked(0xC1, b"a"), CloseCode::ProtocolError),
            (masked(0x83, b"a"), CloseCode::ProtocolError),
            (masked(0x09, b"a"), CloseCode::ProtocolError),
            (masked(0x88, &[0x03, 0xe8, 0xff]), CloseCode::InvalidPayload),
            (masked(0x88, &[0x03, 0xec]), CloseCode::ProtocolError),
            (masked(0x81, &[0xff]), CloseCode::InvalidPayload),
            (
                vec![0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4],
                CloseCode::MessageTooBig,
            ),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(&bytes).await.expect("write");
            let mut r = MessageReader::new(server, 1000);
            match r.next(&mut Vec::new()).await {
                Err(ReadError::Protocol(c)) => assert_eq!(c, code, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }
}

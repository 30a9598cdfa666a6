//! The plain-TCP socket a WebSocket connection is served on once hyper hands it back.
//!
//! Writes go through `send(2)` (one buffer) and `sendmsg(2)` (several) instead of tokio's
//! `write(2)`/`writev(2)`: on a socket those reach the same TCP code, but through the file layer
//! first (position lock, iterator setup). A fan-out to many subscribers is one write per
//! subscriber, so that layer is paid once per delivery; measured on the 1 000 channels × 10
//! subscribers benchmark (docs/benchmarks.md). Both calls pass `MSG_NOSIGNAL` (socket2), so a
//! peer that vanished is an `EPIPE` error, never a signal.
//!
//! The socket is shared: the connection's task reads and writes it, and the connection's outlet
//! holds a `Weak` to it for direct writes from the fan-out ([`herald_core::outlet::Direct`]): a
//! publication for an idle connection is written by the publisher's task, with no wake-up.

use std::io::{self, IoSlice, Read};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::WriterMetrics;

/// Most bytes one read takes (see `poll_read`).
const MAX_READ: usize = 16 * 1024;

/// The socket, shared with the outlet's direct writes.
#[derive(Debug)]
struct Tcp(TcpStream);

thread_local! {
    /// The publication whose publish-to-send time this thread recorded last: a fan-out writes
    /// one publication to many sockets in a row and records it once (at its first write).
    static RECORDED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

impl herald_core::outlet::Direct for Tcp {
    fn try_write(&self, frames: &[IoSlice<'_>], received: Instant) -> io::Result<usize> {
        // Straight to `send(2)`/`sendmsg(2)`, past tokio's readiness (one cache line fewer per
        // delivery): a `WouldBlock` here leaves tokio believing the socket writable, and the
        // writer's next write finds out and waits as usual.
        let n = match frames {
            [one] => SockRef::from(&self.0).send(one)?,
            many => SockRef::from(&self.0).send_vectored(many)?,
        };
        if n > 0 {
            let m = WriterMetrics::get();
            m.writes.increment(1);
            m.bytes_out.increment(n as u64);
            let mut left = n;
            let whole = frames
                .iter()
                .take_while(|f| {
                    let fits = f.len() <= left;
                    left = left.saturating_sub(f.len());
                    fits
                })
                .count();
            m.frames_out.increment(whole as u64);
            if RECORDED.with(|r| r.replace(Some(received))) != Some(received) {
                m.publish_to_send.record(received.elapsed().as_secs_f64());
            }
        }
        Ok(n)
    }
}

/// A TCP stream written with `send`/`sendmsg`.
#[derive(Debug)]
pub struct SendStream(Arc<Tcp>);

impl SendStream {
    /// Serve `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        SendStream(Arc::new(Tcp(tcp)))
    }

    /// No read readiness since the last read found the socket empty: the reactor has not woken
    /// (nor taken) the waker that read registered. One atomic load; nothing is registered or
    /// cleared (the closure never reports `WouldBlock`).
    pub fn read_quiet(&self) -> bool {
        self.0.0.try_io(Interest::READABLE, || Ok(())).is_err()
    }

    /// Write with `op` once the socket is writable; `WouldBlock` clears the readiness and waits
    /// again (as tokio's own writes do).
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        op: impl Fn(&SockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let tcp = &self.0.0;
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_io(Interest::WRITABLE, || op(&SockRef::from(tcp))) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// Lent to the connection's outlet for direct writes (its link asks for it while idle).
impl herald_core::outlet::Lent for SendStream {
    fn addr(&self) -> *const () {
        Arc::as_ptr(&self.0).cast()
    }

    /// The handle the connection's outlet writes directly through.
    fn handle(&self) -> Weak<dyn herald_core::outlet::Direct> {
        let weak: Weak<dyn herald_core::outlet::Direct> = Arc::downgrade(&self.0) as Weak<Tcp>;
        weak
    }
}

impl AsyncRead for SendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let tcp = &self.0.0;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // At most `MAX_READ` bytes: memory not yet initialized is zeroed first (`ReadBuf`
            // over a buffer's spare capacity), and a client trickling a large message must not
            // cost a large memset per segment.
            let n = buf.remaining().min(MAX_READ);
            let dst = buf.initialize_unfilled_to(n);
            let len = dst.len();
            let mut read = None;
            // Inside `try_io`, as tokio's own reads: a read that did not fill `dst` emptied the
            // socket, so the closure reports `WouldBlock` and tokio clears the readiness it saw
            // before the read (an event that came after is kept). Otherwise the next poll would
            // find the socket "readable" and pay a `recv` that returns EAGAIN — once per command
            // a publisher sends.
            let r = tcp.try_io(Interest::READABLE, || {
                let k = (&*SockRef::from(tcp)).read(dst)?;
                read = Some(k);
                match k {
                    k if k > 0 && k < len => Err(io::ErrorKind::WouldBlock.into()),
                    k => Ok(k),
                }
            });
            match (read, r) {
                (Some(k), _) => {
                    buf.advance(k);
                    return Poll::Ready(Ok(()));
                }
                (None, Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(_)) => continue,
            }
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_send(cx, |s| s.send(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match bufs {
            [] => Poll::Ready(Ok(0)),
            [one] => self.poll_send(cx, |s| s.send(one)),
            _ => self.poll_send(cx, |s| s.send_vectored(bufs)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = SockRef::from(&self.0.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (SendStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(l.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(client, l.accept());
        (
            SendStream::new(accepted.expect("accept").0),
            client.expect("connect"),
        )
    }

    #[tokio::test]
    async fn writes_one_and_several_buffers_reads_and_shuts_down() {
        let (mut s, mut c) = pair().await;
        s.write_all(b"one").await.expect("io");
        let n = s
            .write_vectored(&[IoSlice::new(b"two"), IoSlice::new(b"three")])
            .await
            .expect("io");
        assert_eq!(n, 8, "a small vectored write goes out whole");
        let mut got = [0u8; 11];
        c.read_exact(&mut got).await.expect("io");
        assert_eq!(&got, b"onetwothree");
        c.write_all(b"back").await.expect("io");
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.expect("io");
        assert_eq!(&back, b"back");
        s.shutdown().await.expect("io");
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.expect("io");
        assert!(rest.is_empty(), "the shutdown reached the peer as EOF");
    }

    /// A read that does not fill the buffer emptied the socket: the readiness is cleared then
    /// (as tokio's own reads do), so the connection does not pay a `recv` that returns EAGAIN
    /// before it waits — and `read_quiet` says so. Data that comes later is read as usual.
    #[tokio::test]
    async fn a_short_read_leaves_the_socket_quiet_until_more_arrives() {
        let (mut s, mut c) = pair().await;
        c.write_all(b"hello").await.expect("io");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.expect("io");
        assert_eq!(&buf[..n], b"hello");
        assert!(s.read_quiet(), "a short read cleared the readiness");
        c.write_all(b"again").await.expect("io");
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the next data wakes the reader")
            .expect("io");
        assert_eq!(&buf[..n], b"again");
    }

    /// The fan-out's direct writes and the task's writes share the socket; a direct write
    /// never waits: into a socket whose peer stopped reading it takes what fits, then reports
    /// `WouldBlock`, and the task's next write waits as usual.
    #[tokio::test]
    async fn direct_writes_share_the_socket_and_never_block() {
        let (mut s, mut c) = pair().await;
        let direct = herald_core::outlet::Lent::handle(&s)
            .upgrade()
            .expect("the stream holds it");
        let now = std::time::Instant::now();
        let two = [IoSlice::new(b"dir"), IoSlice::new(b"ect ")];
        assert_eq!(direct.try_write(&two, now).expect("direct"), 7);
        s.write_all(b"queued").await.expect("io");
        let mut got = [0u8; 13];
        c.read_exact(&mut got).await.expect("io");
        assert_eq!(&got, b"direct queued");
        let chunk = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match direct.try_write(&[IoSlice::new(&chunk)], now) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(total < 1 << 30, "the socket never filled up");
        }
        assert!(total > 0);
        let w = tokio::time::timeout(std::time::Duration::from_millis(100), s.write(b"x")).await;
        assert!(w.is_err(), "the task's write waits for room");
        let weak = herald_core::outlet::Lent::handle(&s);
        drop(direct);
        drop(s);
        assert!(
            weak.upgrade().is_none(),
            "a Weak (the outlet's) never keeps a socket"
        );
    }

    #[tokio::test]
    async fn a_full_socket_waits_and_a_closed_peer_is_an_error() {
        let (mut s, c) = pair().await;
        // Fill the socket: the write that cannot go out waits (Pending), it does not fail.
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        loop {
            let w =
                tokio::time::timeout(std::time::Duration::from_millis(200), s.write(&chunk)).await;
            match w {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => panic!("a full socket is not an error: {e}"),
                Err(_) => break,
            }
        }
        assert!(written > 0);
        drop(c);
        // The peer is gone: writing fails (EPIPE or a reset), without a SIGPIPE.
        let mut failed = false;
        for _ in 0..1000 {
            match s.write(&chunk).await {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(_) => tokio::task::yield_now().await,
            }
        }
        assert!(failed, "writing to a closed peer fails");
    }
}

//! The plain-TCP socket a WebSocket connection is served on once hyper hands it back.
//!
//! Reads are tokio's. Writes go through `send(2)` (one buffer) and `sendmsg(2)` (several) instead
//! of tokio's `write(2)`/`writev(2)`: on a socket those reach the same TCP code, but through the
//! file layer first (position lock, iterator setup). A fan-out to many subscribers is one write
//! per subscriber, so that layer is paid once per delivery; measured on the 1 000 channels ×
//! 10 subscribers benchmark (docs/benchmarks.md). Both calls pass `MSG_NOSIGNAL` (socket2), so
//! a peer that vanished is an `EPIPE` error, never a signal.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream written with `send`/`sendmsg`.
#[derive(Debug)]
pub struct SendStream(TcpStream);

impl SendStream {
    /// Serve `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        SendStream(tcp)
    }

    /// No read readiness since the last read found the socket empty: the reactor has not woken
    /// (nor taken) the waker that read registered. One atomic load; nothing is registered or
    /// cleared (the closure never reports `WouldBlock`).
    pub fn read_quiet(&self) -> bool {
        self.0.try_io(Interest::READABLE, || Ok(())).is_err()
    }

    /// Write with `op` once the socket is writable; `WouldBlock` clears the readiness and waits
    /// again (as tokio's own writes do).
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        op: impl Fn(&SockRef<'_>) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self
                .0
                .try_io(Interest::WRITABLE, || op(&SockRef::from(&self.0)))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncRead for SendStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
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

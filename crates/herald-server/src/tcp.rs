//! A `/ws` connection over plain TCP, taken back from hyper after the upgrade: the socket is
//! shared between the connection's task (reads, batched writes, the closing handshake) and the
//! fan-out, which writes a frame straight to it when the connection has nothing queued and its
//! task is not writing ([`herald_core::outlet::Direct`]): no wake-up, no task switch per delivery.
//!
//! It also holds less than hyper's `Upgraded` (a boxed stream behind a rewind buffer): one
//! `Arc<TcpStream>`. TLS connections keep `Upgraded` and the queue.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::writer::WriterMetrics;

/// The connection's socket, shared with its outlet (see the module docs).
#[derive(Debug, Clone)]
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    /// The plain TCP stream under an upgraded `/ws` connection and the bytes the client sent
    /// after its handshake that hyper already read (to be read first); `Err` gives a TLS
    /// connection back as it was.
    pub fn from_upgraded(io: TokioIo<Upgraded>) -> Result<(SharedTcp, Bytes), TokioIo<Upgraded>> {
        match crate::listener::plain_tcp(io.into_inner()) {
            Ok((tcp, read_buf)) => Ok((SharedTcp(Arc::new(tcp)), read_buf)),
            Err(up) => Err(TokioIo::new(up)),
        }
    }

    /// The direct-write handle for the connection's outlet.
    pub fn direct(&self) -> Arc<dyn herald_core::outlet::Direct> {
        Arc::new(self.clone())
    }
}

thread_local! {
    /// The publication whose publish-to-send time this thread recorded last: a fan-out writes
    /// one publication to many sockets in a row and records it once (the first write).
    static RECORDED: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

impl herald_core::outlet::Direct for SharedTcp {
    fn try_write(&self, frame: &[u8], received: Option<Instant>) -> io::Result<usize> {
        let n = self.0.try_write(frame)?;
        if n > 0 {
            let m = WriterMetrics::get();
            m.writes.increment(1);
            m.bytes_out.increment(n as u64);
            if n == frame.len() {
                m.frames_out.increment(1);
            }
            if let Some(t) = received
                && RECORDED.with(|r| r.replace(Some(t))) != Some(t)
            {
                m.publish_to_send.record(t.elapsed().as_secs_f64());
            }
        }
        Ok(n)
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // `try_read` clears the readiness when it would block, so the next
            // `poll_read_ready` registers for the next event.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match r {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::outlet::Direct;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (SharedTcp, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (
            SharedTcp(Arc::new(s.expect("accept").0)),
            c.expect("connect"),
        )
    }

    #[tokio::test]
    async fn reads_writes_directly_and_shuts_down() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello");
        assert_eq!(server.try_write(b"direct ", None).expect("direct"), 7);
        server.write_all(b"queued").await.expect("write");
        server.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read to end");
        assert_eq!(got, b"direct queued");
    }

    /// A direct write into a socket whose peer stopped reading takes what fits and then reports
    /// `WouldBlock`: it never waits.
    #[tokio::test]
    async fn a_direct_write_never_blocks() {
        let (server, _client) = pair().await;
        let chunk = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        loop {
            match server.try_write(&chunk, None) {
                Ok(n) => total += n,
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
            }
            assert!(total < 1 << 30, "the socket never filled up");
        }
        assert!(total > 0);
    }
}

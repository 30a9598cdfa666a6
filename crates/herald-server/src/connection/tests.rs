//! Tests of the connection task: its size, and how a rotation hands its session back.

use super::*;

/// Issue 14: the connection's future is an idle connection's largest allocation: a box of its
/// own ([`phases`]), `Conn` plus 16 bytes (the loop's await), in jemalloc's size class for it
/// (320, 384, 448, 512, …). At ≤ 384 bytes it is a 384-byte box beside a 128-byte task
/// (`bench/idle-heap.sh` shows both). History: `Conn` was 672 (a 1 024-byte task) before the
/// message moved into its boxed handler, the session's tokens lost their 16-byte alignment and
/// plain TCP connections dropped hyper's `Upgraded`; 616 (768) before the session's rarely used
/// fields moved into one box, its token expiry and journal quotas shrank, the link's settings
/// took the heartbeat wheel and the IP slot's key became 16 bytes; 488 (a 640-byte task, the
/// future inline) before the task went in two boxed phases, the command limiter and the
/// reader's limits named their rates from the config, the user id and the subscriptions became
/// boxed slices, the socket lent for direct writes came from the stream, the batch vector and
/// the reader's unparsed bytes went behind a pointer, the IP slot's key into an entry its
/// slots share, and the connect proxy's mark into the claims. A field added here must pay for
/// itself.
#[test]
fn an_idle_connection_stays_a_384_byte_box() {
    /// The size of what `f` returns.
    fn output_size<A, R>(_: fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    let size = output_size(Conn::<crate::tcp::SendStream>::run);
    let conn = std::mem::size_of::<Conn<crate::tcp::SendStream>>();
    assert!(
        size <= 384,
        "the connection's future is {size} bytes (Conn {conn})"
    );
}

/// A pipe whose write side never finishes its shutdown (like a TLS stream whose `close_notify`
/// cannot go out yet): the link gives up on it after its closing timeout.
struct StuckShutdown(tokio::io::DuplexStream);

impl crate::link::Lend for StuckShutdown {}

impl AsyncRead for StuckShutdown {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for StuckShutdown {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

/// The next frame the server sends, in reasonable time.
async fn next_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>,
) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("a frame in time")
        .expect("the socket open")
        .expect("a frame")
}

fn node() -> Arc<herald_core::Node> {
    use herald_core::memory::{MemoryBroker, MemoryPresence};
    let engine = herald_core::EngineConfig::default();
    let verifier = Arc::new(herald_core::Verifier::from_config(&engine.auth).expect("auth config"));
    herald_core::Node::new(
        engine,
        Arc::new(MemoryBroker::new()),
        Arc::new(MemoryPresence::new()),
        herald_core::Heartbeat {
            ping_interval_ms: 3_600_000,
            pong_timeout_ms: 10_000,
        },
        verifier,
    )
}

/// Review finding (session 16, a rare failure of the client's rotation test under the full
/// suite): a rotated connection wrote its 4005 ("come back at once and resume"), shut its socket
/// down, and only then parked its session; a client quick enough (or a server thread preempted
/// in between, or a shutdown that had to wait, as here) resumed into `session_not_found`. The
/// session is parked before the closing frames are written now: whatever the client reads of
/// them, its session is already waiting.
#[tokio::test]
async fn a_rotated_connection_parks_its_session_before_the_client_reads_4005() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let node = node();
    let conn = crate::ConnectionConfig {
        // The wheel looks at a connection's rotation time when it pings it.
        max_lifetime: std::time::Duration::from_millis(300),
        ping_interval: std::time::Duration::from_millis(100),
        ..Default::default()
    };
    let server = crate::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    let s = crate::Server::bind(server, conn, crate::TlsConfig::default(), node.clone())
        .await
        .expect("bind");
    let (client, io) = tokio::io::duplex(64 << 10);
    let setup = Setup {
        format: Format::Json,
        app: s.state().clone(),
        remote: IpAddr::from([127, 0, 0, 1]),
        hs: Handshake::Done(
            Box::new(herald_core::Identity::anonymous()),
            None,
            Vec::new(),
            None,
        ),
        held: Held {
            _ip: None,
            forwarded: None,
        },
        deflate: None,
    };
    let serving = tokio::spawn(herald_core::outlet::Corked::new(Phases::new(async move {
        match open(StuckShutdown(io), Bytes::new(), setup).await {
            Some(conn) => Opened::Plain(conn.run()),
            None => Opened::<_, std::future::Ready<()>>::Nothing,
        }
    })));
    let mut ws =
        tokio_tungstenite::WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let mut welcome = next_frame(&mut ws).await;
    while matches!(welcome, Message::Ping(_)) {
        welcome = next_frame(&mut ws).await;
    }
    assert!(
        matches!(&welcome, Message::Text(t) if t.contains("\"connected\"")),
        "{welcome:?}"
    );
    assert_eq!(node.waiting_sessions(), 0, "connected, not waiting");
    // The rotation's `disconnect` advisory, then its close frame: the session waits already
    // when either arrives.
    loop {
        let m = next_frame(&mut ws).await;
        if matches!(m, Message::Ping(_)) {
            continue;
        }
        assert_eq!(node.waiting_sessions(), 1, "not parked when {m:?} arrived");
        match m {
            Message::Text(t) => assert!(t.contains("4005"), "{t}"),
            Message::Close(Some(c)) => {
                assert_eq!(u16::from(c.code), 4005);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(ws);
    tokio::time::timeout(std::time::Duration::from_secs(10), serving)
        .await
        .expect("the connection ends")
        .expect("no panic");
}

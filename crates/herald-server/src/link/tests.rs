//! Tests of the link: writes, closes, timeouts and reply batching on real byte streams.

use super::*;
use crate::config::ConnectionConfig;
use crate::heartbeat::Heartbeats;
use herald_core::outlet::Direct;
use herald_core::outlet::QueueLimits;
use herald_proto::Format;
use std::sync::Weak;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn settings(wheel: &Arc<Heartbeats>) -> WriterSettings {
    WriterSettings {
        wheel: wheel.clone(),
        conn: ConnectionConfig {
            ping_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        shutdown_timeout: Duration::from_secs(1),
        reconnect_jitter: Duration::from_secs(1),
        advisory: false,
    }
}

fn outlet() -> Arc<Outlet> {
    Outlet::new(
        Format::Json,
        QueueLimits {
            max_messages: 100,
            max_bytes: 1 << 20,
        },
    )
}

/// A stream that counts the writes made on it (a vectored write is one write, as on a
/// socket), and lends a fake socket for direct writes once given one (as plain TCP lends
/// itself).
struct Counting<S> {
    io: S,
    writes: Arc<std::sync::atomic::AtomicUsize>,
    socket: Option<Weak<dyn Direct>>,
}

/// A pipe that may lend a fake socket for direct writes.
type Lending = Counting<tokio::io::DuplexStream>;

impl<S> Lend for Counting<S> {
    fn lent(&self) -> Option<&dyn herald_core::outlet::Lent> {
        self.socket
            .as_ref()
            .map(|s| s as &dyn herald_core::outlet::Lent)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let r = Pin::new(&mut self.io).poll_write(cx, &all);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client text frame (masked with a zero key: the payload reads as it is).
fn client_text(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

type CountedLink = Link<Counting<tokio::io::DuplexStream>>;

/// A link on a pipe whose writes are counted, with `burst` already sent by the client: the
/// link, its outlet, the write count and the client's reading end.
async fn counted_link(
    burst: &[u8],
) -> (
    CountedLink,
    Arc<Outlet>,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = Counting {
        io: server,
        writes: writes.clone(),
        socket: None,
    };
    let outlet = outlet();
    let wheel = Heartbeats::new(Duration::from_secs(3600), Duration::from_secs(10));
    let link = Link::new(
        MessageReader::new(server, 1 << 20),
        outlet.clone(),
        Arc::new(settings(&wheel)),
    );
    let (rd, mut wr) = tokio::io::split(client);
    tokio::io::AsyncWriteExt::write_all(&mut wr, burst)
        .await
        .expect("burst sent");
    // The write half stays open with the read half (`split` shares the stream).
    drop(wr);
    (link, outlet, writes, rd)
}

/// Issue 14: commands that arrived together are answered with one write — a publisher's
/// burst of publications gets its acknowledgements in one `send`, not one each. (Before,
/// every command's reply was written before the next buffered command was read: three
/// writes here.)
#[tokio::test]
async fn commands_that_arrive_together_are_answered_in_one_write() {
    let burst: Vec<u8> = (0..3)
        .flat_map(|i| client_text(format!("cmd{i}").as_bytes()))
        .collect();
    let (mut link, outlet, writes, mut rd) = counted_link(&burst).await;
    let mut control = Vec::new();
    for i in 0..3 {
        match link.next(&mut control).await {
            IoEvent::Inbound(Ok(Inbound::Text(b))) => {
                assert_eq!(b, format!("cmd{i}").into_bytes());
            }
            other => panic!("command {i}: {other:?}"),
        }
        // Run the command the way the connection does: under `drive`.
        let o = outlet.clone();
        link.drive(Box::pin(async move {
            o.push_reply(Bytes::from(format!("reply{i};")));
        }))
        .await;
    }
    let serving = tokio::spawn(async move {
        let mut control = Vec::new();
        link.next(&mut control).await
    });
    let mut got = vec![0u8; 3 * 7];
    tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut got))
        .await
        .expect("the replies come")
        .expect("read");
    assert_eq!(&got, b"reply0;reply1;reply2;");
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "three replies, one write"
    );
    serving.abort();
}

/// The bound on that: a client that pipelines more than [`MAX_UNWRITTEN`] commands has the
/// replies of the first [`MAX_UNWRITTEN`] written before the next one is read.
#[tokio::test]
async fn replies_wait_for_at_most_max_unwritten_commands() {
    let n = MAX_UNWRITTEN as usize + 2;
    let burst: Vec<u8> = (0..n).flat_map(|_| client_text(b"c")).collect();
    let (mut link, outlet, writes, _rd) = counted_link(&burst).await;
    let mut control = Vec::new();
    for i in 0..n {
        let e = link.next(&mut control).await;
        assert!(matches!(e, IoEvent::Inbound(Ok(Inbound::Text(_)))), "{e:?}");
        let written = writes.load(std::sync::atomic::Ordering::Relaxed);
        // Command 0 is read before anything is queued; commands 1..=MAX_UNWRITTEN are
        // read from the buffer without a write; the one after them only after one.
        // (65 one-byte replies take two vectored writes: `MAX_SLICES` buffers each.)
        if i > MAX_UNWRITTEN as usize {
            assert!(written > 0, "the replies were written before command {i}");
        } else {
            assert_eq!(written, 0, "writes before command {i}");
        }
        outlet.push_reply(Bytes::from_static(b"r"));
    }
}

/// Review finding (issue 16): a rotation asked while a batch was being written replaced a
/// close the server had already requested (here 4501): the client was told to come back at
/// once and resume a session that was ending.
#[tokio::test]
async fn a_rotation_does_not_replace_a_requested_close() {
    let (client, server) = tokio::io::duplex(64);
    let outlet = outlet();
    let wheel = Heartbeats::new(Duration::from_secs(3600), Duration::from_secs(10));
    let s = Arc::new(WriterSettings {
        advisory: true,
        ..settings(&wheel)
    });
    let mut link = Link::new(MessageReader::new(server, 1 << 20), outlet.clone(), s);
    let beat = link.beat.clone();
    let serving = tokio::spawn(async move {
        let mut control = Vec::new();
        link.next(&mut control).await
    });
    // A write in progress (larger than the pipe), then the close and the rotation.
    outlet.push_reply(Bytes::from(vec![b'a'; 4096]));
    let (mut rd, _keep) = tokio::io::split(client);
    let mut buf = vec![0u8; 16];
    rd.read_exact(&mut buf).await.expect("the write started");
    outlet.close(CloseCode::ForceDisconnect);
    beat.ask_rotate_for_test();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut rest)).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("\"code\":4501"), "no 4501 advisory: {text}");
    assert!(!text.contains("4005"), "rotated instead: {text}");
    serving.abort();
}

/// A link served on a pipe of `pipe` bytes by a spawned task (until it ends): its outlet, the
/// task, and the client's ends of the pipe.
fn serving_link(
    pipe: usize,
) -> (
    Arc<Outlet>,
    tokio::task::JoinHandle<IoEvent>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
) {
    let (client, server) = tokio::io::duplex(pipe);
    let outlet = outlet();
    let wheel = Heartbeats::new(Duration::from_secs(3600), Duration::from_secs(10));
    let s = Arc::new(settings(&wheel));
    let o = outlet.clone();
    let serving = tokio::spawn(async move {
        let mut link = Link::new(MessageReader::new(server, 1 << 20), o, s);
        let mut control = Vec::new();
        link.next(&mut control).await
    });
    let (rd, wr) = tokio::io::split(client);
    (outlet, serving, rd, wr)
}

/// Regression: a frame queued while a write was in progress woke the writer's
/// slow-consumer check instead of its idle wait, so it stayed queued until the next push or
/// the next heartbeat (25 s). Seen as publish replies that never came in a cluster, where
/// deliveries and replies are pushed from different tasks.
#[tokio::test]
async fn a_frame_queued_during_a_write_is_sent_without_another_push() {
    let (outlet, serving, mut rd, _keep) = serving_link(64);
    // Larger than the pipe: the write blocks until the test reads.
    let big = Bytes::from(vec![b'a'; 4096]);
    outlet.push_reply(big.clone());
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
    serving.abort();
}

/// The write timeout still holds with no writer task: a client that reads nothing is closed
/// (abort, 4003) once a write waited `write_timeout`, and the wheel's ping is written first.
#[tokio::test]
async fn a_stuck_write_times_out_and_a_ping_is_written_when_asked() {
    let (client, server) = tokio::io::duplex(256);
    let outlet = outlet();
    let wheel = Heartbeats::new(Duration::from_millis(40), Duration::from_secs(60));
    let mut s = settings(&wheel);
    s.conn.write_timeout = Duration::from_millis(200);
    let mut link = Link::new(
        MessageReader::new(server, 1 << 20),
        outlet.clone(),
        Arc::new(s),
    );
    let mut control = Vec::new();
    // The wheel asks for a ping: the link writes it without anything queued.
    for i in 0..wheel.buckets_len() {
        wheel.sweep_for_test(i);
    }
    let (mut rd, _wr) = tokio::io::split(client);
    let read_ping = async {
        let mut ping = [0u8; 2];
        rd.read_exact(&mut ping).await.expect("ping");
        ping
    };
    let ping = tokio::select! {
        p = read_ping => p,
        e = link.next(&mut control) => panic!("ended early: {e:?}"),
    };
    assert_eq!(ping, [0x89, 0]);
    // Now fill the pipe and stop reading: the write times out.
    outlet.push_reply(Bytes::from(vec![b'a'; 4096]));
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), link.next(&mut control))
        .await
        .expect("the write timeout fires");
    match end {
        IoEvent::Ended(end) => {
            assert_eq!(end.code, Some(CloseCode::WriteTimeout));
            assert!(end.abort);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(190));
}

/// Issue 14: a batch that left the outlet empty is not followed by another drain (the outlet's
/// armed waker stands for it): every frame pushed after a written batch, while the link waits,
/// still wakes it and goes out — one at a time and in bursts, from another task.
#[tokio::test]
async fn each_push_after_a_written_batch_wakes_the_link_again() {
    let (outlet, serving, mut rd, _keep) = serving_link(1 << 16);
    for round in 0..50u8 {
        let n = 1 + round % 3;
        for i in 0..n {
            outlet.push_reply(Bytes::from(vec![b'a' + i; 3]));
        }
        let mut got = vec![0u8; 3 * n as usize];
        tokio::time::timeout(Duration::from_secs(5), rd.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("round {round}: the frames go out"))
            .expect("read");
        let want: Vec<u8> = (0..n).flat_map(|i| [b'a' + i; 3]).collect();
        assert_eq!(got, want, "round {round}");
    }
    serving.abort();
}

/// A link with `/ws` settings (advisories, rotation) on a `pipe`-byte pipe: the link, its outlet
/// and the client's ends.
fn advisory_link(
    pipe: usize,
) -> (
    Link<Lending>,
    Arc<Outlet>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
) {
    let (client, server) = tokio::io::duplex(pipe);
    let outlet = outlet();
    let wheel = Heartbeats::new(Duration::from_secs(3600), Duration::from_secs(10));
    let s = Arc::new(WriterSettings {
        advisory: true,
        ..settings(&wheel)
    });
    let server = Lending {
        io: server,
        writes: Arc::default(),
        socket: None,
    };
    let link = Link::new(MessageReader::new(server, 1 << 20), outlet.clone(), s);
    let (rd, wr) = tokio::io::split(client);
    (link, outlet, rd, wr)
}

/// Lend `socket` through `link`'s stream.
fn lend(link: &mut Link<Lending>, socket: Weak<dyn Direct>) {
    link.reader.get_mut().socket = Some(socket);
}

/// Poll the link once (whatever it reports).
async fn poll_once<S: AsyncRead + AsyncWrite + Unpin + Lend + 'static>(link: &mut Link<S>) {
    let mut control = Vec::new();
    std::future::poll_fn(|cx| {
        let _ = link.poll_io(cx, &mut control);
        Poll::Ready(())
    })
    .await;
}

/// Review finding (session 16): a rotation asked while a write was blocked, then the client's
/// close: the connection ends without a handover, and `finish` waited for one forever — the task,
/// its connection count, slots and session leaked. A client's close now cancels the rotation.
#[tokio::test]
async fn a_client_close_after_a_pending_rotation_still_finishes() {
    let (mut link, outlet, mut rd, mut wr) = advisory_link(64);
    // A write larger than the pipe blocks; the rotation is taken while it waits.
    outlet.push_reply(Bytes::from(vec![b'a'; 4096]));
    poll_once(&mut link).await;
    link.beat.ask_rotate_for_test();
    poll_once(&mut link).await;
    assert_eq!(
        link.close,
        Some(CloseCode::Rotate),
        "the rotation waits for the write"
    );
    // The client's close frame (masked with a zero key): 1000.
    wr.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8])
        .await
        .expect("close sent");
    let mut control = Vec::new();
    let e = link.next(&mut control).await;
    assert!(
        matches!(e, IoEvent::Inbound(Ok(Inbound::Close { clean: true }))),
        "{e:?}"
    );
    assert!(!link.handing_over());
    let reading = tokio::spawn(async move {
        let mut rest = Vec::new();
        let _ = rd.read_to_end(&mut rest).await;
        rest
    });
    for c in control {
        outlet.push_reply(c);
    }
    link.reader_finished(None);
    tokio::time::timeout(Duration::from_secs(10), link.finish())
        .await
        .expect("the link finishes");
    drop(link);
    let rest = reading.await.expect("reader");
    assert!(
        !String::from_utf8_lossy(&rest).contains("4005"),
        "rotated a closing connection"
    );
}

/// Review finding (session 16): a close the server asks for while a rotation waits for its
/// handover (a forced disconnect, a revoked token, a stalled recovery's 4503) ends the session
/// instead of parking it, so the client must get that close, not 4005's "resume now".
#[tokio::test]
async fn a_close_requested_during_a_handover_replaces_the_rotation() {
    let (mut link, outlet, mut rd, _wr) = advisory_link(1 << 16);
    link.beat.ask_rotate_for_test();
    let mut control = Vec::new();
    let e = link.next(&mut control).await;
    assert!(matches!(e, IoEvent::Handover), "{e:?}");
    outlet.close(CloseCode::ForceDisconnect);
    assert_eq!(link.handover_code(), CloseCode::ForceDisconnect);
    link.handed_over();
    let end = tokio::time::timeout(Duration::from_secs(10), link.finish())
        .await
        .expect("the link finishes");
    assert_eq!(end.code, Some(CloseCode::ForceDisconnect));
    drop(link);
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).await.expect("read");
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("\"code\":4501"), "{text}");
    assert!(!text.contains("4005"), "{text}");
}

/// Poll `command` under [`Link::drive`] once: whether it finished.
async fn poll_drive<S: AsyncRead + AsyncWrite + Unpin + Lend + 'static>(
    link: &mut Link<S>,
    command: &mut tokio::sync::oneshot::Receiver<()>,
) -> bool {
    let mut drive = link.drive(command);
    std::future::poll_fn(move |cx| Poll::Ready(Pin::new(&mut drive).poll(cx).is_ready())).await
}

/// Review finding (session 16): a rotation asked while a command runs (a recovery paging
/// history in as the queue makes room) stopped draining the outlet at once: the command stalled
/// until its timeout and the client got 4503 instead of 4005. The rotation now waits for the
/// command, and the queue keeps being written meanwhile.
#[tokio::test]
async fn a_rotation_asked_during_a_command_waits_for_it() {
    let (mut link, outlet, mut rd, _wr) = advisory_link(1 << 16);
    let (done, mut command) = tokio::sync::oneshot::channel::<()>();
    assert!(!poll_drive(&mut link, &mut command).await);
    link.beat.ask_rotate_for_test();
    outlet.push_reply(Bytes::from_static(b"\x81\x04page"));
    assert!(!poll_drive(&mut link, &mut command).await);
    assert!(!link.handing_over(), "rotated while the command ran");
    let mut page = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut page))
        .await
        .expect("the queue is written while the command runs")
        .expect("read");
    assert_eq!(&page, b"\x81\x04page");
    done.send(()).expect("command finishes");
    assert!(poll_drive(&mut link, &mut command).await);
    let mut control = Vec::new();
    let e = tokio::time::timeout(Duration::from_secs(10), link.next(&mut control))
        .await
        .expect("the owed rotation starts");
    assert!(matches!(e, IoEvent::Handover), "{e:?}");
}

/// A socket for direct writes that takes `room` bytes in all, then `WouldBlock`.
struct ShortSocket {
    room: std::sync::Mutex<usize>,
    wire: std::sync::Mutex<Vec<u8>>,
}

impl Direct for ShortSocket {
    fn try_write(
        &self,
        frames: &[std::io::IoSlice<'_>],
        _: std::time::Instant,
    ) -> std::io::Result<usize> {
        let frame: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut room = self.room.lock().expect("room");
        if *room == 0 {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = frame.len().min(*room);
        *room -= n;
        self.wire
            .lock()
            .expect("wire")
            .extend_from_slice(&frame[..n]);
        Ok(n)
    }
}

/// Lend `link` a socket that takes 5 bytes, let it go idle, and push a publication with the gate
/// open: its first 5 bytes are written directly, the rest is queued. The whole frame.
async fn short_direct_write(link: &mut Link<Lending>, outlet: &Arc<Outlet>) -> Bytes {
    let socket = Arc::new(ShortSocket {
        room: std::sync::Mutex::new(5),
        wire: Default::default(),
    });
    let weak: Weak<dyn Direct> = Arc::downgrade(&socket) as Weak<ShortSocket>;
    lend(link, weak);
    // Idle: drained nothing, so the outlet may write directly.
    poll_once(link).await;
    let p = Arc::new(herald_core::publication::Publication::new(
        Arc::from("ch"),
        1,
        Arc::from("e"),
        0,
        herald_proto::Data::json("\"hello, world\"").expect("json"),
        None,
    ));
    let frame = p.frame(Format::Json);
    herald_core::outlet::with_direct_writes(true, || {
        outlet.push(
            herald_core::outlet::Out::Pub(p.clone()),
            herald_core::config::SlowConsumerPolicy::DropOldest,
        )
    });
    assert_eq!(&*socket.wire.lock().expect("wire"), &frame[..5]);
    frame
}

/// A publication written directly in part: the link must write the rest of that frame before
/// anything of its own — here a rotation's closing frames, after the handover (the session is
/// parked with the outlet meanwhile: the rest must not stay in it for a resumed connection).
#[tokio::test]
async fn a_short_direct_writes_rest_goes_out_before_the_closing_frames() {
    for rotate in [false, true] {
        let (mut link, outlet, mut rd, _wr) = advisory_link(1 << 16);
        let frame = short_direct_write(&mut link, &outlet).await;
        if rotate {
            link.beat.ask_rotate_for_test();
            let mut control = Vec::new();
            let e = link.next(&mut control).await;
            assert!(matches!(e, IoEvent::Handover), "{e:?}");
            assert!(
                outlet.is_empty(),
                "the rest left the parked session's outlet"
            );
            link.handed_over();
        } else {
            outlet.close(CloseCode::ForceDisconnect);
        }
        tokio::time::timeout(Duration::from_secs(10), link.finish())
            .await
            .expect("the link finishes");
        drop(link);
        let mut wire = Vec::new();
        rd.read_to_end(&mut wire).await.expect("read");
        assert!(wire.starts_with(&frame[5..]), "rotate={rotate}: {wire:?}");
        let after = &wire[frame.len() - 5..];
        assert_eq!(
            after.first(),
            Some(&0x81),
            "then the advisory (a text frame)"
        );
        assert!(wire.contains(&0x88), "and a close frame");
    }
}

/// A ping the wheel asks for while the rest of a direct write waits in the queue goes after
/// that rest: a control frame may sit between frames, never inside one.
#[tokio::test]
async fn a_ping_goes_after_the_rest_of_a_short_direct_write() {
    let (mut link, outlet, mut rd, _wr) = advisory_link(1 << 16);
    let frame = short_direct_write(&mut link, &outlet).await;
    link.beat.ask_ping_for_test();
    poll_once(&mut link).await;
    let mut wire = vec![0u8; frame.len() - 5 + 2];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut wire))
        .await
        .expect("written")
        .expect("read");
    assert_eq!(&wire[..frame.len() - 5], &frame[5..]);
    assert_eq!(&wire[frame.len() - 5..], &[0x89, 0x00], "then the ping");
}

/// A ping the wheel asks for while a corked task has this link's outlet listed (a burst queued
/// for it, to be written at the end of the publisher's poll): the link takes the queue itself,
/// writes the ping and the publications once, and the corked write finds nothing left to send
/// on the lent socket — the two writers never share the queue.
#[tokio::test]
async fn a_ping_while_listed_takes_the_queue_and_the_corked_write_sends_nothing() {
    let (mut link, outlet, mut rd, _wr) = advisory_link(1 << 16);
    let socket = Arc::new(ShortSocket {
        room: std::sync::Mutex::new(1 << 20),
        wire: Default::default(),
    });
    let weak: Weak<dyn Direct> = Arc::downgrade(&socket) as Weak<ShortSocket>;
    lend(&mut link, weak);
    // Idle: drained nothing, so the outlet may be listed.
    poll_once(&mut link).await;
    let pubs: Vec<_> = (1..3)
        .map(|i| {
            Arc::new(herald_core::publication::Publication::new(
                Arc::from("ch"),
                i,
                Arc::from("e"),
                0,
                herald_proto::Data::json("\"hello\"").expect("json"),
                None,
            ))
        })
        .collect();
    let frames: Vec<u8> = pubs
        .iter()
        .flat_map(|p| p.frame(Format::Json).to_vec())
        .collect();
    link.beat.ask_ping_for_test();
    let mut control = Vec::new();
    std::future::poll_fn(|cx| {
        herald_core::outlet::corked(|| {
            herald_core::outlet::with_direct_writes(false, || {
                for p in &pubs {
                    outlet.push(
                        herald_core::outlet::Out::Pub(p.clone()),
                        herald_core::config::SlowConsumerPolicy::DropOldest,
                    );
                }
            });
            assert_eq!(outlet.len(), 2, "listed, not written yet");
            let _ = link.poll_io(cx, &mut control);
        });
        Poll::Ready(())
    })
    .await;
    assert!(
        socket.wire.lock().expect("wire").is_empty(),
        "the corked write left the queue to the link"
    );
    assert!(outlet.is_empty());
    let mut wire = vec![0u8; 2 + frames.len()];
    tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut wire))
        .await
        .expect("written")
        .expect("read");
    assert_eq!(&wire[..2], &[0x89, 0x00], "the ping first");
    assert_eq!(&wire[2..], &frames[..], "then each publication once");
}

use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// An upstream that echoes every connection.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An upstream that hands each accepted socket to the test.
async fn upstream() -> (SocketAddr, tokio::sync::mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn latency_is_at_least_the_configured_one_and_throughput_stays_high() {
    let p = FaultProxy::start(echo().await).await.expect("proxy");
    p.set_latency(
        Direction::Up,
        Duration::from_millis(60),
        Duration::from_millis(20),
    );
    p.set_latency(Direction::Down, Duration::from_millis(40), Duration::ZERO);
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut buf = [0u8; 4];
    for _ in 0..5 {
        let t = Instant::now();
        c.write_all(b"ping").await.expect("write");
        c.read_exact(&mut buf).await.expect("read");
        let rtt = t.elapsed();
        assert!(rtt >= Duration::from_millis(100), "rtt {rtt:?}");
        assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");
        assert_eq!(&buf, b"ping");
    }
    // A timed queue, not a sleep per read: 4 MiB (256 reads of 16 KiB) takes about one
    // round trip plus transfer time, not 256 × 100 ms.
    let data = pattern(4 << 20);
    let t = Instant::now();
    let (mut r, mut w) = c.into_split();
    let send = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&send).await.map(|_| w) });
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).await.expect("read back");
    let took = t.elapsed();
    writer.await.expect("join").expect("write");
    assert!(got == data, "bytes changed or reordered");
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "4 MiB through 100 ms RTT took {took:?}"
    );
}

#[tokio::test]
async fn jitter_never_reorders() {
    let p = FaultProxy::start(echo().await).await.expect("proxy");
    p.set_rtt(Duration::from_millis(10), Duration::from_millis(30));
    let c = TcpStream::connect(p.addr()).await.expect("connect");
    let (mut r, mut w) = c.into_split();
    let writer = tokio::spawn(async move {
        for i in 0u32..300 {
            w.write_all(&i.to_be_bytes()).await.expect("write");
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        w
    });
    let mut buf = [0u8; 4];
    for i in 0u32..300 {
        r.read_exact(&mut buf).await.expect("read");
        assert_eq!(u32::from_be_bytes(buf), i);
    }
    drop(writer.await.expect("join"));
}

#[tokio::test]
async fn bandwidth_cap_holds_within_tolerance() {
    let (addr, mut accepted) = upstream().await;
    let p = FaultProxy::start(addr).await.expect("proxy");
    let rate = 100_000u64;
    p.set_bandwidth(Direction::Down, Some(rate));
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut s = accepted.recv().await.expect("upstream connection");
    let n = 150_000usize;
    let data = pattern(n);
    let send = data.clone();
    let t = Instant::now();
    tokio::spawn(async move {
        let _ = s.write_all(&send).await;
        let _ = s.shutdown().await;
        // Keep the socket until the test is done reading.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut got = vec![0u8; n];
    c.read_exact(&mut got).await.expect("read");
    let took = t.elapsed().as_secs_f64();
    assert!(got == data);
    // The first burst (≤ 2000 bytes at this rate) is free; the rest goes at `rate`.
    let expected = (n as f64 - Bucket::burst(rate)) / rate as f64;
    assert!(took >= expected * 0.95, "{took:.3} s < {expected:.3} s");
    assert!(
        took <= expected * 1.5 + 0.3,
        "{took:.3} s for {expected:.3} s"
    );
    // The other direction is not capped.
    let t = Instant::now();
    c.write_all(&pattern(1 << 20)).await.expect("write up");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn stall_stops_bytes_keeps_the_socket_and_buffers_boundedly() {
    let (addr, mut accepted) = upstream().await;
    let opts = ProxyOptions::default();
    let bound = (opts.stall_limit + opts.chunk) as u64;
    let stall_limit = opts.stall_limit as u64;
    let p = FaultProxy::start_with(addr, opts).await.expect("proxy");
    p.stall(Direction::Down);
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let s = accepted.recv().await.expect("upstream connection");
    let n = 8 << 20;
    let data = pattern(n);
    let send = data.clone();
    let (mut sr, mut sw) = s.into_split();
    let writer = tokio::spawn(async move { sw.write_all(&send).await.map(|_| sw) });
    // The server writes into the path until its socket buffers are full.
    p.wait_for("the stall buffer to fill", WAIT, |h| {
        h.received(Direction::Down) >= stall_limit
    })
    .await;
    let mut one = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(300), c.read(&mut one)).await;
    assert!(r.is_err(), "a stalled direction delivered {r:?}");
    assert_eq!(p.forwarded(Direction::Down), 0);
    assert!(
        p.received(Direction::Down) <= bound,
        "the proxy buffered {} bytes",
        p.received(Direction::Down)
    );
    assert!(
        !writer.is_finished(),
        "8 MiB fit somewhere: nothing pushed back"
    );
    // Half-open: the other direction still flows.
    c.write_all(b"up").await.expect("write up");
    let mut up = [0u8; 2];
    tokio::time::timeout(WAIT, sr.read_exact(&mut up))
        .await
        .expect("in time")
        .expect("read up");
    assert_eq!(&up, b"up");
    // Unstalled: everything, in order.
    p.unstall(Direction::Down);
    let mut got = vec![0u8; n];
    tokio::time::timeout(WAIT, c.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert!(got == data);
    drop(writer.await.expect("join").expect("write"));
}

#[tokio::test]
async fn reset_gives_econnreset_to_the_client_and_the_server() {
    let (addr, mut accepted) = upstream().await;
    let p = FaultProxy::start(addr).await.expect("proxy");
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut s = accepted.recv().await.expect("upstream connection");
    s.write_all(b"hi").await.expect("write");
    let mut buf = [0u8; 2];
    c.read_exact(&mut buf).await.expect("read");
    assert_eq!(p.reset(), 1);
    let e = tokio::time::timeout(WAIT, c.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("reset");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let e = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("reset upstream");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    p.wait_for("the connection to end", WAIT, |h| h.open() == 0)
        .await;
    assert_eq!(p.resets(), 1);
}

#[tokio::test]
async fn cut_after_forwards_exactly_n_bytes_then_closes() {
    let (addr, mut accepted) = upstream().await;
    let p = FaultProxy::start(addr).await.expect("proxy");
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut s = accepted.recv().await.expect("upstream connection");
    s.write_all(b"0123").await.expect("write");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.expect("read");
    assert_eq!(p.cut_after(Direction::Down, 10), 1);
    s.write_all(&pattern(1000)).await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut got))
        .await
        .expect("in time")
        .expect("EOF, not an error");
    assert_eq!(got, pattern(10));
    // The server's side is closed too.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("in time");
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    p.wait_for("the connection to end", WAIT, |h| h.open() == 0)
        .await;
    assert_eq!(p.forwarded(Direction::Down), 14);
}

#[tokio::test]
async fn frozen_connections_stay_silent_while_new_ones_flow() {
    let p = FaultProxy::start(echo().await).await.expect("proxy");
    let mut old = TcpStream::connect(p.addr()).await.expect("connect");
    p.wait_for("the connection", WAIT, |h| h.open() == 1).await;
    assert_eq!(p.freeze_current(), 1);
    old.write_all(b"old").await.expect("write");
    let mut new = TcpStream::connect(p.addr()).await.expect("connect");
    new.write_all(b"new").await.expect("write");
    let mut buf = [0u8; 3];
    tokio::time::timeout(WAIT, new.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"new");
    let r = tokio::time::timeout(Duration::from_millis(300), old.read(&mut buf)).await;
    assert!(r.is_err(), "a frozen connection delivered {r:?}");
}

#[tokio::test]
async fn a_peer_reset_does_not_cross_a_stall() {
    let (addr, mut accepted) = upstream().await;
    let p = FaultProxy::start(addr).await.expect("proxy");
    let c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut s = accepted.recv().await.expect("upstream connection");
    p.stall(Direction::Up);
    c.set_zero_linger().expect("linger");
    drop(c);
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(r.is_err(), "the reset crossed the stall: {r:?}");
    p.unstall(Direction::Up);
    let e = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("reset");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
}

#[tokio::test]
async fn blackhole_silences_both_ways_and_holds_new_connections() {
    let (addr, mut accepted) = upstream().await;
    let p = FaultProxy::start(addr).await.expect("proxy");
    let mut c = TcpStream::connect(p.addr()).await.expect("connect");
    let mut s = accepted.recv().await.expect("upstream connection");
    p.blackhole();
    c.write_all(b"up").await.expect("write");
    s.write_all(b"down").await.expect("write");
    let mut c2 = TcpStream::connect(p.addr()).await.expect("a held connect");
    c2.write_all(b"new").await.expect("write");
    p.wait_for("both chunks and the connection", WAIT, |h| {
        h.received(Direction::Up) >= 2 && h.received(Direction::Down) >= 4 && h.accepted() == 2
    })
    .await;
    let silent = tokio::time::timeout(Duration::from_millis(300), accepted.recv()).await;
    assert!(silent.is_err(), "a held connection reached the server");
    assert_eq!(p.forwarded(Direction::Up) + p.forwarded(Direction::Down), 0);
    p.lift_blackhole();
    let mut buf = [0u8; 4];
    tokio::time::timeout(WAIT, c.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"down");
    let mut up = [0u8; 2];
    s.read_exact(&mut up).await.expect("read");
    assert_eq!(&up, b"up");
    let mut s2 = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .expect("in time")
        .expect("the held connection");
    let mut three = [0u8; 3];
    s2.read_exact(&mut three).await.expect("read");
    assert_eq!(&three, b"new");
}

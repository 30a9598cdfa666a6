//! Issue 12: the denial-of-service holes and protocol ambiguities found by attacking Herald from
//! outside, each driven over real sockets the way the attack was made, with the documented limit
//! it now hits (close code or HTTP status).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A masked client frame (`first` = FIN/RSV/opcode byte).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Everything the server sends until it closes the socket; fails on a reset (the client would
/// see 1006 instead of the server's close code).
async fn read_until_eof(s: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the server neither closed nor sent anything")
        {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the socket was reset ({e}) after {} bytes: {:?}",
                all.len(),
                frames(&all)
            ),
        }
    }
    frames(&all)
}

fn frames(mut rest: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((payload, op)) = herald_proto::frame::parse_unmasked(rest) {
        let total = payload.as_ptr() as usize - rest.as_ptr() as usize + payload.len();
        out.push((op as u8, payload.to_vec()));
        rest = &rest[total..];
    }
    out
}

fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(op, _)| *op == 8)
        .and_then(|(_, p)| (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])))
}

async fn raw(server: &TestServer) -> TcpStream {
    raw_client(server.addr, None).await
}

/// Regression: pongs were queued until a data message completed, so a client that only sent
/// pings got no pongs and was closed with 4000, although every frame counts as liveness (§9).
#[tokio::test]
async fn pings_are_answered_at_once_and_keep_the_connection_alive() {
    let server = start(Setup {
        conn: herald_server::ConnectionConfig {
            ping_interval: Duration::from_millis(200),
            pong_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (mut r, mut w) = raw(&server).await.into_split();
    // The client never answers the server's pings; it sends its own, then closes.
    let pinger = tokio::spawn(async move {
        for i in 0..12u8 {
            w.write_all(&masked(0x89, &[i])).await.expect("ping");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w.write_all(&masked(0x88, &1000u16.to_be_bytes()))
            .await
            .expect("close");
        w
    });
    let got = read_until_eof(&mut r).await;
    let _w = pinger.await.expect("pinger");
    let pongs: Vec<&Vec<u8>> = got
        .iter()
        .filter(|(op, _)| *op == 10)
        .map(|(_, p)| p)
        .collect();
    assert!(pongs.len() >= 10, "pongs: {pongs:?}");
    assert_eq!(pongs[0], &vec![0u8], "a pong echoes its ping's payload");
    assert_eq!(close_code(&got), Some(1000), "{got:?}");
}

/// Regression: 4 M pings in 6 s took the server from 158 MB to 1.2 GB with zero pongs sent.
#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let server = start_default().await;
    let (mut r, mut w) = raw(&server).await.into_split();
    let flood: Vec<u8> = (0..100_000).flat_map(|_| masked(0x89, b"")).collect();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&flood).await;
        w
    });
    let got = read_until_eof(&mut r).await;
    assert_eq!(close_code(&got), Some(1008), "{got:?}");
    let pongs = got.iter().filter(|(op, _)| *op == 10).count();
    let limits = herald_server::ConnectionConfig::default();
    assert!(
        pongs <= (limits.frames_burst + limits.frames_per_second) as usize,
        "pongs sent: {pongs}"
    );
    drop(writer.await);
}

/// Regression: 265 M zero-length continuation frames in 10 s on one socket.
#[tokio::test]
async fn a_message_in_too_many_fragments_is_closed_with_1008() {
    let server = start_default().await;
    let (mut r, mut w) = raw(&server).await.into_split();
    let mut bytes = masked(0x01, b"{");
    for _ in 0..10_000 {
        bytes.extend(masked(0x00, b""));
    }
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    let got = read_until_eof(&mut r).await;
    assert_eq!(close_code(&got), Some(1008), "{got:?}");
    drop(writer.await);
}

/// Regression: an oversized fragmented message got `disconnect` + close 1009, then the socket was
/// closed with the rest unread, so the kernel reset it and a client still sending its message saw
/// 1006 ("reconnect") instead of 1009 ("don't"). Now the server lingers (RFC 6455 §7.1.1).
#[tokio::test]
async fn an_oversized_fragmented_message_gets_1009_and_a_clean_close() {
    let server = start(Setup {
        conn: herald_server::ConnectionConfig {
            max_message_size: 1024,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let (mut r, mut w) = raw(&server).await.into_split();
    let chunk = vec![b'x'; 500];
    let mut first = masked(0x01, &chunk);
    first.extend(masked(0x00, &chunk));
    first.extend(masked(0x00, &chunk));
    w.write_all(&first).await.expect("write");
    // Wait for the server's close frame: from here on, the server has given up on the message.
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while close_code(&frames(&seen)).is_none() {
        let n = tokio::time::timeout(WAIT, r.read(&mut buf))
            .await
            .expect("no close frame")
            .expect("read");
        assert!(n > 0, "EOF before the close frame");
        seen.extend_from_slice(&buf[..n]);
    }
    // A client on a slow link is still sending the rest of its message; every write must succeed.
    for i in 0..10 {
        w.write_all(&masked(0x00, &chunk))
            .await
            .unwrap_or_else(|e| panic!("write {i} after the close frame: {e}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    w.write_all(&masked(0x88, &1009u16.to_be_bytes()))
        .await
        .expect("the client's close frame");
    let mut got = frames(&seen);
    got.extend(read_until_eof(&mut r).await);
    assert_eq!(close_code(&got), Some(1009), "{got:?}");
    let advisory = got
        .iter()
        .filter(|(op, _)| *op == 1)
        .map(|(_, p)| serde_json::from_slice::<serde_json::Value>(p).expect("json"))
        .find(|v| v["type"] == "disconnect")
        .expect("a disconnect advisory");
    assert_eq!(advisory["payload"]["code"], 1009);
    assert_eq!(advisory["payload"]["reconnect"], false);
}

//! permessage-deflate over real sockets (issue 17): negotiation, compressed publications (one
//! shared frame), compressed commands, the inflate bound (compression bombs close with 1009 and
//! leave the server unharmed), MessagePack left uncompressed by default.

mod support;

use herald_core::NamespaceOptions;
use herald_proto::deflate;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn compressing() -> Setup {
    let mut setup = Setup::default();
    setup.conn.compression = true;
    setup.conn.compression_threshold = 256;
    setup.engine.default_namespace = Some(NamespaceOptions {
        compression: false,
        ..NamespaceOptions::dev()
    });
    setup.engine.namespaces.insert(
        "feed".into(),
        NamespaceOptions {
            compression: true,
            ..NamespaceOptions::dev()
        },
    );
    setup
}

/// Upgrade with `extra` header lines; returns the socket and the response head.
async fn handshake(addr: std::net::SocketAddr, extra: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(upgrade_request(addr, extra).as_bytes())
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (s, head)
}

/// One server frame: (first byte, payload); `None` at EOF.
async fn frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("a frame in time")
        .ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            s.read_exact(&mut n).await.ok()?;
            u16::from_be_bytes(n) as usize
        }
        127 => {
            let mut n = [0u8; 8];
            s.read_exact(&mut n).await.ok()?;
            u64::from_be_bytes(n) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0], payload))
}

/// The next protocol message, inflated if it came compressed; with whether it was.
async fn message(s: &mut TcpStream) -> (Value, bool) {
    loop {
        let (b0, payload) = frame(s).await.expect("a message");
        let op = b0 & 0x0f;
        if op == 0x9 || op == 0xA {
            continue;
        }
        let compressed = b0 & 0x40 != 0;
        let bytes = if compressed {
            deflate::inflate(&payload, 1 << 24).expect("inflates")
        } else {
            payload
        };
        return (serde_json::from_slice(&bytes).expect("json"), compressed);
    }
}

/// A masked client frame; `compress`: deflated with RSV1 set.
fn client_frame(payload: &[u8], compress: bool) -> Vec<u8> {
    let body = if compress {
        let mut z = Vec::new();
        deflate::compress(payload, 15, &mut z);
        z
    } else {
        payload.to_vec()
    };
    let mut f = vec![0x81u8 | if compress { 0x40 } else { 0 }];
    let mask = [9u8, 8, 7, 6];
    match body.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn send(s: &mut TcpStream, v: Value, compress: bool) {
    s.write_all(&client_frame(v.to_string().as_bytes(), compress))
        .await
        .expect("send");
}

const CHROMIUM_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

#[tokio::test]
async fn negotiation_follows_the_offer_and_the_configuration() {
    let s = start(compressing()).await;
    let (_c, head) = handshake(s.addr, CHROMIUM_OFFER).await;
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{head}"
    );
    let (_c, head) = handshake(
        s.addr,
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
    )
    .await;
    assert!(head.contains("server_max_window_bits=10"), "{head}");
    for declined in [
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; mystery=1\r\n",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n",
        "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n",
    ] {
        let (_c, head) = handshake(s.addr, declined).await;
        assert!(
            !head.contains("sec-websocket-extensions"),
            "{declined:?}: {head}"
        );
    }
    // Off unless configured.
    let plain = start(Setup::default()).await;
    let (_c, head) = handshake(plain.addr, CHROMIUM_OFFER).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

#[tokio::test]
async fn publications_go_out_compressed_and_compressed_commands_are_read() {
    let s = start(compressing()).await;
    let (mut c, _) = handshake(s.addr, CHROMIUM_OFFER).await;
    let (welcome, compressed) = message(&mut c).await;
    assert_eq!(
        (welcome["type"].as_str(), compressed),
        (Some("connected"), false)
    );
    // A compressed command.
    send(
        &mut c,
        json!({"type": "subscribe", "id": 1, "payload": {"channel": "feed:prices"}}),
        true,
    )
    .await;
    send(
        &mut c,
        json!({"type": "subscribe", "id": 2, "payload": {"channel": "plain"}}),
        false,
    )
    .await;
    for id in [1, 2] {
        let (r, _) = message(&mut c).await;
        assert_eq!(
            (r["type"].as_str(), r["id"].as_u64()),
            (Some("reply"), Some(id)),
            "{r}"
        );
    }
    let big = json!({"prices": (0..50).map(|i| json!({"symbol": format!("S{i}"), "bid": 100 + i, "ask": 101 + i})).collect::<Vec<_>>()});
    for channel in ["feed:prices", "plain"] {
        s.handle
            .node()
            .publish(
                channel,
                herald_proto::Data::json(&big.to_string()).expect("json"),
                None,
                None,
            )
            .await
            .expect("publish");
    }
    let (m, compressed) = message(&mut c).await;
    assert_eq!(m["payload"]["data"], big);
    assert!(compressed, "feed: compresses");
    let (m, compressed) = message(&mut c).await;
    assert_eq!(m["payload"]["channel"], "plain");
    assert!(!compressed, "a namespace without `compression`");
    // Small messages stay plain.
    s.handle
        .node()
        .publish(
            "feed:prices",
            herald_proto::Data::json("1").expect("json"),
            None,
            None,
        )
        .await
        .expect("publish");
    let (m, compressed) = message(&mut c).await;
    assert_eq!(
        (m["payload"]["data"].as_u64(), compressed),
        (Some(1), false)
    );
}

/// A compressed message that inflates past `max_message_size` closes with 1009; the server is
/// unharmed (Centrifugo had to add this bound later: centrifugo#1162).
#[tokio::test]
async fn a_compression_bomb_closes_with_1009_and_harms_nothing() {
    let s = start(compressing()).await;
    let (mut c, _) = handshake(s.addr, CHROMIUM_OFFER).await;
    message(&mut c).await;
    let bomb = vec![b' '; 16 << 20];
    let frame_bytes = client_frame(&bomb, true);
    assert!(
        frame_bytes.len() < 64 * 1024,
        "{} bytes on the wire",
        frame_bytes.len()
    );
    c.write_all(&frame_bytes).await.expect("send");
    let close = loop {
        let (b0, payload) = frame(&mut c).await.expect("the close");
        if b0 & 0x0f == 0x8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(close, 1009);
    // Everyone else is fine.
    let mut other = Client::connect(&s).await;
    other.subscribe("feed:x").await;
    until("the bomb's connection to be gone", || {
        s.handle.connections() == 1
    })
    .await;
    // And garbage that is not deflate closes with 1007.
    let (mut c, _) = handshake(s.addr, CHROMIUM_OFFER).await;
    message(&mut c).await;
    let mut f = client_frame(b"{}", false);
    f[0] |= 0x40; // claims to be compressed: "{}" is not deflate data
    c.write_all(&f).await.expect("send");
    let close = loop {
        let (b0, payload) = frame(&mut c).await.expect("the close");
        if b0 & 0x0f == 0x8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(close, 1007);
}

/// Without negotiation, RSV1 is a protocol error (1002), as before.
#[tokio::test]
async fn a_compressed_frame_without_negotiation_is_a_protocol_error() {
    let s = start(compressing()).await;
    let (mut c, _) = handshake(s.addr, "").await;
    message(&mut c).await;
    c.write_all(&client_frame(b"{\"type\":\"ping\"}", true))
        .await
        .expect("send");
    let close = loop {
        let (b0, payload) = frame(&mut c).await.expect("the close");
        if b0 & 0x0f == 0x8 {
            break u16::from_be_bytes([payload[0], payload[1]]);
        }
    };
    assert_eq!(close, 1002);
}

fn delta_setup() -> Setup {
    let mut setup = Setup::default();
    setup.engine.namespaces.insert(
        "dash".into(),
        NamespaceOptions {
            delta: herald_core::config::DeltaFormat::Fossil,
            ..NamespaceOptions::dev()
        },
    );
    setup
}

fn dashboard(n: u64) -> String {
    let services: Vec<String> = (0..12)
        .map(|i| {
            let rps = if i == 0 { 1000 + n } else { 1200 + i };
            format!(
                r#"{{"name":"service-{i:02}","status":"ok","rps":{rps},"p99_ms":{}}}"#,
                50 + i
            )
        })
        .collect();
    format!(r#"{{"seq":{n},"services":[{}]}}"#, services.join(","))
}

/// Issue 17, delta updates: the first message is whole (data as JSON text in a string), the next
/// ones are Fossil deltas against the previous one, much smaller; a subscriber that recovers gets
/// whole messages first; a MessagePack subscriber gets plain ones.
#[tokio::test]
async fn delta_subscribers_get_a_whole_message_then_deltas_that_apply() {
    let s = start(delta_setup()).await;
    let mut c = Client::connect(&s).await;
    let r = c.subscribe("dash:eu").await;
    assert_eq!(r["delta"], "fossil", "{r}");
    let epoch = r["epoch"].clone();
    let mut mp = Client::connect_with(&s, Some("herald.v1.msgpack")).await;
    let r = mp.subscribe("dash:eu").await;
    assert_eq!(r.get("delta"), None, "MessagePack: no deltas ({r})");
    for n in 1..=3 {
        publish_dashboard(&s, n).await;
    }
    let first = c.next_message().await;
    assert_eq!(first.get("delta"), None);
    let mut text = first["data"].as_str().expect("data as a string").to_owned();
    assert_eq!(text, dashboard(1));
    for n in 2..=3 {
        let m = c.next_message().await;
        assert_eq!(m["delta"], true, "{m}");
        let d = m["data"].as_str().expect("a delta string");
        assert!(
            d.len() * 5 < text.len(),
            "delta {} bytes vs {}",
            d.len(),
            text.len()
        );
        let applied = fossil_delta::apply(text.as_bytes(), d.as_bytes()).expect("applies");
        text = String::from_utf8(applied).expect("utf-8");
        assert_eq!(text, dashboard(n));
    }
    for n in 1..=3 {
        let m = mp.next_message().await;
        assert_eq!(m["data"]["seq"], n, "{m}");
    }
    // A new subscriber recovering from 1: whole messages first (2 and 3), then a delta.
    let mut late = Client::connect(&s).await;
    let r = late
        .ok(
            "subscribe",
            json!({"channel": "dash:eu", "recover": {"offset": 1, "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["missed"], 2, "{r}");
    for n in 2..=3 {
        let m = late.next_message().await;
        assert_eq!(
            (m.get("delta"), m["data"].as_str()),
            (None, Some(dashboard(n).as_str()))
        );
    }
    publish_dashboard(&s, 4).await;
    let m = late.next_message().await;
    assert_eq!(m["delta"], true, "{m}");
    let applied = fossil_delta::apply(
        dashboard(3).as_bytes(),
        m["data"].as_str().unwrap_or("").as_bytes(),
    )
    .expect("applies");
    assert_eq!(applied, dashboard(4).as_bytes());
}

/// Review of issue 17: a resume without a position for a delta channel made the first buffered
/// message a delta against one the client may never have got; and a JSON session resumed on a
/// MessagePack connection kept writing JSON frames to it.
#[tokio::test]
async fn resumes_never_send_a_delta_the_client_may_not_apply_nor_frames_of_another_format() {
    let s = start(delta_setup()).await;
    let mut c = Client::connect(&s).await;
    c.subscribe("dash:eu").await;
    publish_dashboard(&s, 1).await;
    publish_dashboard(&s, 2).await;
    assert_eq!(c.next_message().await.get("delta"), None);
    assert_eq!(c.next_message().await["delta"], true);
    let token = c.welcome["resume_token"].clone();
    cut(&s, c).await;
    publish_dashboard(&s, 3).await; // buffered: a delta against 2
    let mut c = Client::connect(&s).await;
    let r = c.ok("resume", json!({ "token": token })).await;
    let m = c.next_message().await;
    assert_eq!(
        (m["offset"].as_u64(), m.get("delta")),
        (Some(3), None),
        "whole after a resume without positions: {m}"
    );
    assert_eq!(m["data"].as_str(), Some(dashboard(3).as_str()));
    // The same session resumed on a MessagePack connection: refused (it speaks JSON).
    let token = r["resume_token"].clone();
    cut(&s, c).await;
    let mut mp = Client::connect_with(&s, Some("herald.v1.msgpack")).await;
    let (r, _) = mp.call("resume", json!({ "token": token })).await;
    assert_eq!(r["payload"]["code"], "session_not_found", "{r}");
    until("the session to end", || {
        s.handle.node().waiting_sessions() == 0
    })
    .await;
}

/// Drop the socket without a close frame and wait until its session waits for `resume`.
async fn cut(s: &TestServer, c: Client) {
    let waiting = s.handle.node().waiting_sessions();
    drop(c);
    until("the session to wait", || {
        s.handle.node().waiting_sessions() == waiting + 1
    })
    .await;
}

/// Publish `dashboard(n)` on `dash:eu`.
async fn publish_dashboard(s: &TestServer, n: u64) {
    let data = herald_proto::Data::json(&dashboard(n)).expect("json");
    s.handle
        .node()
        .publish("dash:eu", data, None, None)
        .await
        .expect("publish");
}

//! The bare baseline still speaks the benchmark's subset of the protocol (so `bench/run.sh`
//! measures something): `connected`, `subscribe`, `publish` and the `message` fan-out.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("json");
        }
    }
}

#[tokio::test]
async fn subscribers_get_each_publication_once_with_its_offset() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-bench-bare"))
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the bare server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its address");
    let url = line
        .split_whitespace()
        .last()
        .expect("a ws:// url")
        .to_owned();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        assert_eq!(next(&mut ws).await["type"], "connected");
        let cmd = json!({"type": "subscribe", "id": 1, "payload": {"channel": "c"}});
        ws.send(Message::text(cmd.to_string())).await.expect("send");
        let r = next(&mut ws).await;
        assert_eq!(
            (r["type"].as_str(), r["payload"]["offset"].as_u64()),
            (Some("reply"), Some(0))
        );
        subs.push(ws);
    }
    for n in 1..=3u64 {
        let cmd = json!({"type": "publish", "id": n + 1, "payload": {"channel": "c", "data": n}});
        subs[0]
            .send(Message::text(cmd.to_string()))
            .await
            .expect("send");
    }
    let mut replies = 0;
    for (i, ws) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 3 {
            let f = next(ws).await;
            match f["type"].as_str() {
                Some("message") => {
                    assert_eq!(f["payload"]["data"], f["payload"]["offset"], "{f}");
                    got.push(f["payload"]["offset"].as_u64().expect("offset"));
                }
                Some("reply") if i == 0 => replies += 1,
                _ => panic!("unexpected {f}"),
            }
        }
        assert_eq!(got, [1, 2, 3], "subscriber {i}");
    }
    assert!(replies <= 3);
    let _ = child.kill();
    let _ = child.wait();
}

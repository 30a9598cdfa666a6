//! A small HTTP/1 client for the HTTP transports: one TCP connection per request (as a browser
//! would use for a stream), streamed bodies read as NDJSON lines, SSE events or length-prefixed
//! MessagePack.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// How long a test waits for an answer or body data.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// An answer whose body is read as it arrives.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
}

/// Send one request on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
        buf: Vec::new(),
    }
}

/// POST JSON (`null`: an empty body).
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    request(addr, "POST", path, &h, body).await
}

impl Reply {
    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Herald-Session` header.
    pub fn session(&self) -> String {
        self.header("herald-session")
            .expect("herald-session")
            .to_owned()
    }

    /// More body bytes; false at the end of the body.
    async fn fill(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.body.frame()).await {
                Err(_) => panic!("no body data within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return false,
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                        return true;
                    }
                }
            }
        }
    }

    /// The whole (rest of the) body.
    pub async fn bytes(mut self) -> Vec<u8> {
        while self.fill().await {}
        self.buf
    }

    /// The whole body as JSON.
    pub async fn json(self) -> Value {
        let b = self.bytes().await;
        serde_json::from_slice(&b)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
    }

    /// The next NDJSON message (blank keepalive lines skipped); `None` at the end.
    pub async fn line(&mut self) -> Option<Value> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return Some(serde_json::from_slice(line).expect("a JSON line"));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next SSE event as `(event name, data)` (comments skipped); `None` at the end.
    pub async fn event(&mut self) -> Option<(String, String)> {
        self.event_with_id().await.map(|(e, (_, d))| (e, d))
    }

    /// The next SSE event as `(event name, (id, data))`.
    pub async fn event_with_id(&mut self) -> Option<(String, (String, String))> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..at + 2).collect();
                let text = String::from_utf8(block).expect("utf-8");
                let (mut event, mut data, mut id) =
                    ("message".to_owned(), Vec::new(), String::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v.to_owned());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, (id, data.join("\n"))));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next length-prefixed MessagePack message (zero-length keepalives skipped).
    pub async fn msgpack(&mut self) -> Option<Value> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4")) as usize;
                if self.buf.len() >= 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
                    if len == 0 {
                        continue;
                    }
                    return Some(rmp_serde::from_slice(&msg).expect("msgpack"));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The next message that is not a `join` or `leave`.
    pub async fn app_line(&mut self) -> Option<Value> {
        loop {
            let m = self.line().await?;
            if m["type"] != "join" && m["type"] != "leave" {
                return Some(m);
            }
        }
    }

    /// Messages until one of type `kind`: (that one, the ones before).
    pub async fn until_line(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = self
                .line()
                .await
                .unwrap_or_else(|| panic!("stream ended before a `{kind}`: {before:?}"));
            if m["type"] == kind {
                return (m, before);
            }
            before.push(m);
        }
    }
}

/// POST commands to a session; the status.
pub async fn send(addr: SocketAddr, session: &str, body: &Value) -> u16 {
    post(addr, "/http/send", &[("herald-session", session)], body)
        .await
        .status
}

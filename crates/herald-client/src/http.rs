//! The HTTP transports (docs/protocol.md §10) for networks that block WebSockets: messages come
//! down a streamed answer (NDJSON on `/http/stream`, or SSE on `/http/sse`), commands go up as
//! `POST /http/send` batches, and the client proves it is alive with a `ping` when it has sent
//! nothing for a ping interval.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which streamed answer carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpStyle {
    /// `POST /http/stream`: one JSON message per line.
    Stream,
    /// `POST /http/sse`: `text/event-stream`.
    Sse,
}

/// Where the HTTP endpoints are, from the WebSocket URL (`ws://h:p/prefix/ws` →
/// `http://h:p/prefix/http/…`).
#[derive(Debug, Clone)]
pub(crate) struct Base {
    tls: bool,
    host: String,
    port: u16,
    prefix: String,
}

impl Base {
    pub(crate) fn from_ws_url(url: &str) -> Result<Base, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!(
                "bad URL {url:?}: ws://, wss://, http:// or https://"
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split(['?', '#']).next().unwrap_or("");
        let prefix = path
            .strip_suffix("ws")
            .unwrap_or(path)
            .trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                match p.parse::<u16>() {
                    Ok(p) => (h.to_owned(), p),
                    Err(_) => return Err(format!("bad port in {url:?}")),
                }
            }
            _ => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("/{prefix}")
        };
        Ok(Base {
            tls,
            host,
            port,
            prefix,
        })
    }

    fn path(&self, endpoint: &str) -> String {
        format!("{}/http/{endpoint}", self.prefix)
    }

    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What the streamed answer produced next.
pub(crate) enum Down {
    /// A server message (JSON text).
    Message(String),
    /// A keepalive: the stream is alive.
    Alive,
    /// The stream ended (or failed).
    Ended(String),
}

/// One HTTP transport session.
pub(crate) struct HttpLink {
    base: Base,
    tls: Option<Arc<rustls::ClientConfig>>,
    headers: Vec<(String, String)>,
    pub(crate) session: String,
    style: HttpStyle,
    body: Incoming,
    buf: Vec<u8>,
    posts: Option<SendRequest<Full<Bytes>>>,
    /// When the last command went up (the server ends silent sessions).
    sent_at: Instant,
}

/// An HTTP/1 connection to `base` (TLS when it says so).
async fn connection(
    base: &Base,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect((base.host.trim_matches(['[', ']']), base.port))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                "connection refused (is the server running?)".to_owned()
            }
            _ => e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    macro_rules! handshake {
        ($io:expr) => {{
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        }};
    }
    match (base.tls, tls) {
        (true, Some(cfg)) => {
            let name = rustls::pki_types::ServerName::try_from(
                base.host.trim_matches(['[', ']']).to_owned(),
            )
            .map_err(|e| format!("bad server name: {e}"))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake!(s)
        }
        (true, None) => Err("TLS is not configured".into()),
        (false, _) => handshake!(tcp),
    }
}

fn request(
    base: &Base,
    endpoint: &str,
    headers: &[(String, String)],
    body: String,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(base.path(endpoint))
        .header("host", base.authority())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("bad request: {e}"))
}

/// Why opening failed: the message, and whether retrying cannot help (a refused token).
pub(crate) struct OpenFailure {
    pub(crate) message: String,
    pub(crate) auth: bool,
    /// The answer's `Retry-After` (a 503 from a busy node, a 429).
    pub(crate) retry_after: Option<std::time::Duration>,
}

/// A `Retry-After` given in seconds (Herald sends seconds; an HTTP date is ignored).
pub(crate) fn retry_after(headers: &hyper::HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A hint, not a command to wait for hours: at most ten minutes.
    Some(std::time::Duration::from_secs(secs.min(600)))
}

impl HttpLink {
    /// Open a session: `commands` are the opening body (e.g. `auth`); `headers` carry the token.
    pub(crate) async fn open(
        base: Base,
        tls: Option<Arc<rustls::ClientConfig>>,
        headers: Vec<(String, String)>,
        style: HttpStyle,
        commands: Vec<String>,
    ) -> Result<HttpLink, OpenFailure> {
        let fail = |message: String| OpenFailure {
            message,
            auth: false,
            retry_after: None,
        };
        let mut conn = connection(&base, tls.as_ref()).await.map_err(fail)?;
        let endpoint = match style {
            HttpStyle::Stream => "stream",
            HttpStyle::Sse => "sse",
        };
        let body = format!("[{}]", commands.join(","));
        let req = request(&base, endpoint, &headers, body).map_err(fail)?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let retry = retry_after(resp.headers());
        let session = resp
            .headers()
            .get("herald-session")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body();
        if status != hyper::StatusCode::OK {
            let text = body
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(OpenFailure {
                message: format!("HTTP {status}: {text}"),
                auth: status == hyper::StatusCode::UNAUTHORIZED,
                retry_after: retry,
            });
        }
        let Some(session) = session else {
            return Err(fail("no Herald-Session in the answer".into()));
        };
        Ok(HttpLink {
            base,
            tls,
            headers,
            session,
            style,
            body,
            buf: Vec::new(),
            posts: None,
            sent_at: Instant::now(),
        })
    }

    /// The next thing the stream carries.
    pub(crate) async fn next(&mut self) -> Down {
        loop {
            if let Some(d) = self.parse() {
                return d;
            }
            match self.body.frame().await {
                None => return Down::Ended("the stream ended".into()),
                Some(Err(e)) => return Down::Ended(format!("the stream failed: {e}")),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }

    /// One message (or keepalive) out of the buffer, if a whole one is there.
    fn parse(&mut self) -> Option<Down> {
        match self.style {
            HttpStyle::Stream => {
                let at = self.buf.iter().position(|&b| b == b'\n')?;
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let line = String::from_utf8_lossy(&line).trim().to_owned();
                Some(if line.is_empty() {
                    Down::Alive
                } else {
                    Down::Message(line)
                })
            }
            HttpStyle::Sse => {
                let at = self.buf.windows(2).position(|w| w == b"\n\n")?;
                let block: Vec<u8> = self.buf.drain(..at + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let (mut event, mut data) = ("message", Vec::new());
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = if v.trim() == "message" {
                            "message"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                Some(if event == "message" && !data.is_empty() {
                    Down::Message(data.join("\n"))
                } else {
                    Down::Alive
                })
            }
        }
    }

    /// POST to `endpoint` on the kept-alive command connection (opened again once if it broke).
    async fn post(&mut self, endpoint: &str, body: String) -> Result<hyper::StatusCode, String> {
        let mut headers = self.headers.clone();
        headers.push(("herald-session".into(), self.session.clone()));
        for attempt in 0..2 {
            let sender = match self.posts.as_mut() {
                Some(s) if s.is_ready() => s,
                _ => self
                    .posts
                    .insert(connection(&self.base, self.tls.as_ref()).await?),
            };
            let req = request(&self.base, endpoint, &headers, body.clone())?;
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let _ = resp.into_body().collect().await;
                    return Ok(status);
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %e, "command connection broke: reopening");
                    self.posts = None;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("unreachable".into())
    }

    /// Send commands (one POST); an answer other than 204 fails the link.
    pub(crate) async fn send(&mut self, commands: &[String]) -> Result<(), String> {
        self.sent_at = Instant::now();
        let status = self
            .post("send", format!("[{}]", commands.join(",")))
            .await?;
        if status == hyper::StatusCode::NO_CONTENT {
            Ok(())
        } else {
            Err(format!("POST /http/send answered {status}"))
        }
    }

    /// When the client must show it is alive (a `ping`) if it sends nothing before.
    pub(crate) fn ping_at(&self, interval: Duration) -> Instant {
        self.sent_at + interval
    }

    /// End the session on the server (a clean close: no resume).
    pub(crate) async fn close(&mut self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), self.post("close", String::new())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoints_sit_beside_the_websocket_one() {
        let b = Base::from_ws_url("ws://127.0.0.1:8000/ws").expect("base");
        assert_eq!(
            (b.tls, b.authority(), b.path("stream")),
            (false, "127.0.0.1:8000".into(), "/http/stream".into())
        );
        let b = Base::from_ws_url("wss://chat.example/herald/ws?x=1").expect("base");
        assert_eq!(
            (b.tls, b.authority(), b.path("send")),
            (true, "chat.example:443".into(), "/herald/http/send".into())
        );
        let b = Base::from_ws_url("ws://[::1]:9/ws").expect("base");
        assert_eq!(b.authority(), "[::1]:9");
        assert!(Base::from_ws_url("ftp://x").is_err());
    }
}

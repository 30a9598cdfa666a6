//! Running `herald serve` children for the binary's tests.
#![allow(dead_code)] // each test binary uses a part

/// Run `test(engine)` as two tests: `test::redis` and `test::nats`.
#[allow(unused_macros)] // not every test binary runs on both engines
macro_rules! on_both_engines {
    ($test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let Some(e) = super::Engine::redis() else {
                    return;
                };
                super::$test(e).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                let Some(e) = super::Engine::nats() else {
                    return;
                };
                super::$test(e).await
            }
        }
    };
}

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");

/// A running `herald serve` child; killed on drop.
pub struct Served {
    pub child: std::process::Child,
    pub addr: String,
    /// Standard output after the first line (kept open so the server never writes to a closed
    /// pipe).
    pub rest: BufReader<std::process::ChildStdout>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(args: &[&str], env: &[(&str, &str)]) -> Served {
    let show = std::env::var_os("SHOW_SERVER_LOGS").is_some();
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        // SHOW_SERVER_LOGS=1 shows the servers' logs (with RUST_LOG); otherwise the last lines
        // are kept to explain a server that did not start.
        .stderr(if show {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .spawn()
        .expect("spawn");
    let tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == 40 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
    }
    let mut rest = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    rest.read_line(&mut line).expect("read line");
    let Some(addr) = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(str::to_owned)
    else {
        let status = child.wait().ok();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let log: Vec<String> = tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        panic!(
            "herald serve {args:?} did not start ({status:?}); stdout {line:?}; stderr:\n{}",
            log.join("\n")
        );
    };
    Served { child, addr, rest }
}

/// A bare HTTP/1.1 GET: status and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// A bare HTTP/1.1 POST of JSON with an API key: status and body.
pub async fn http_post(
    addr: &str,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: apikey {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http(addr, &req).await
}

/// Send one raw request and read the whole answer: status and body.
async fn http(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A JSON WebSocket client for tests.
pub struct Ws {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub welcome: serde_json::Value,
    next_id: u64,
    /// Pushes that arrived while waiting for a reply.
    pub pushes: std::collections::VecDeque<serde_json::Value>,
}

impl Ws {
    /// Connect to `addr` with a bearer token and read `connected`.
    pub async fn open(addr: &str, token: &str) -> Ws {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("req");
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("hdr"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        let first = ws.next().await.expect("frame").expect("ok");
        let welcome = serde_json::from_str(first.to_text().expect("text")).expect("json");
        Ws {
            ws,
            welcome,
            next_id: 1,
            pushes: Default::default(),
        }
    }

    /// The next frame as JSON; `None` when the socket closed (with the close code).
    pub async fn frame(&mut self) -> Result<serde_json::Value, Option<u16>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame within 20 s");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).expect("json")),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next push (queued ones first).
    pub async fn push(&mut self) -> serde_json::Value {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        self.frame().await.expect("a push")
    }

    /// Send a command and wait for its reply (pushes are queued); fails on an error reply.
    pub async fn call(&mut self, kind: &str, payload: serde_json::Value) -> serde_json::Value {
        let f = self.try_call(kind, payload).await;
        assert_ne!(f["type"], "error", "{kind} failed: {f}");
        f["payload"].clone()
    }

    /// Send a command and return its whole reply frame (a reply or an error).
    pub async fn try_call(&mut self, kind: &str, payload: serde_json::Value) -> serde_json::Value {
        use futures_util::SinkExt;
        let id = self.next_id;
        self.next_id += 1;
        let cmd = serde_json::json!({"type": kind, "id": id, "payload": payload});
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                cmd.to_string(),
            ))
            .await
            .expect("send");
        loop {
            let f = self.frame().await.expect("a reply");
            if f["id"] == id {
                return f;
            }
            self.pushes.push_back(f);
        }
    }

    /// Wait for the close code (pushes before it are dropped).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Err(code) = self.frame().await {
                return code;
            }
        }
    }
}

pub const SECRET: &str = "cli-test-secret-cli-test-secret-0123";
pub const API_KEY: &str = "cluster-api-key-0123456789";

/// A connection token for `user` signed with [`SECRET`] (all channels).
pub fn token(user: &str) -> String {
    let out = Command::new(BIN)
        .args(["token", "--user", user, "--channels", "*", "--publish", "*"])
        .env("HERALD_AUTH__HMAC_SECRET", SECRET)
        .output()
        .expect("herald token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The test Redis (see `herald_testkit::redis_url`).
pub fn redis_url() -> Option<String> {
    herald_testkit::redis_url()
}

/// The shared engine of a test cluster.
#[derive(Clone, Debug)]
pub enum Engine {
    /// Redis at this URL.
    Redis(String),
    /// NATS (JetStream) at this URL.
    Nats(String),
}

impl Engine {
    /// The local Redis, when there is one (see `herald_testkit`).
    pub fn redis() -> Option<Engine> {
        herald_testkit::redis_url().map(Engine::Redis)
    }

    /// The local NATS with JetStream, when there is one.
    pub fn nats() -> Option<Engine> {
        herald_testkit::nats_url().map(Engine::Nats)
    }
}

/// Nodes of one cluster: more can join later with [`Cluster::node`].
pub struct Cluster {
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A new cluster (its own key prefix / stream) on `engine`, with extra environment.
    pub fn new(engine: &Engine, extra: &[(&str, &str)]) -> Cluster {
        let id = herald_testkit::unique();
        let mut env: Vec<(String, String)> = match engine {
            Engine::Redis(url) => vec![
                ("HERALD_ENGINE__TYPE".into(), "redis".into()),
                ("HERALD_REDIS__URL".into(), url.clone()),
                (
                    "HERALD_REDIS__PREFIX".into(),
                    format!("herald-cluster-{id}"),
                ),
            ],
            Engine::Nats(url) => vec![
                ("HERALD_ENGINE__TYPE".into(), "nats".into()),
                ("HERALD_NATS__URL".into(), url.clone()),
                ("HERALD_NATS__PREFIX".into(), format!("herald-cluster-{id}")),
                ("HERALD_NATS__STREAM".into(), format!("HERALD_CLUSTER_{id}")),
                ("HERALD_NATS__STORAGE".into(), "memory".into()),
            ],
        };
        env.push(("HERALD_AUTH__HMAC_SECRET".into(), SECRET.into()));
        env.push(("HERALD_AUTH__API_KEYS".into(), format!("[\"{API_KEY}\"]")));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Cluster { env }
    }

    /// Start one more node with these `serve` arguments.
    pub fn node(&self, args: &[&str]) -> Served {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serve(args, &env)
    }

    /// Start `n` nodes (`--dev`).
    pub fn nodes(&self, n: usize) -> Vec<Served> {
        (0..n).map(|_| self.node(&["--dev"])).collect()
    }
}

/// Run `herald bench ARGS --url ws://ADDR/ws --json` and parse its summary.
pub fn bench(addr: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--url", &format!("ws://{addr}/ws"), "--json"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("json summary")
}

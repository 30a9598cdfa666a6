//! Tests of the built `herald` binary.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

mod support;
use support::*;

/// Run the binary to completion; with `ok`, fail the test (showing stderr) unless it succeeded.
fn run(args: &[&str], env: &[(&str, &str)], ok: bool) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run");
    if ok {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

#[test]
fn check_config_prints_effective_config_and_rejects_bad_files() {
    let dir = std::env::temp_dir().join(format!("herald-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good.toml");
    std::fs::File::create(&good)
        .and_then(|mut f| {
            f.write_all(
                b"[connection]\nping_interval = \"5s\"\n[namespaces.chat]\npresence = true\n",
            )
        })
        .expect("write");
    let good = good.to_str().expect("utf-8 path");
    let out = run(&["check-config", "--config", good], &[], true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ping_interval = \"5s\""), "{text}");
    assert!(text.contains("[namespaces.chat]"), "{text}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[connection]\nping_interval = \"soon\"\n").expect("write");
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_interval"), "{err}");

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("HERALD_SERVER__MAX_CONNECTIONS", "7")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_connections = 7"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_mode_refuses_public_addresses() {
    let out = Command::new(BIN)
        .args(["serve", "--dev", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}

async fn connect_with_token(addr: &str, token: &str) -> serde_json::Value {
    Ws::open(addr, token).await.welcome
}

#[tokio::test]
async fn token_mints_tokens_the_server_accepts() {
    let env = [("HERALD_AUTH__HMAC_SECRET", SECRET)];
    let out = run(
        &[
            "token",
            "--user",
            "alice",
            "--channels",
            "chat:*",
            "--ttl",
            "1h",
        ],
        &env,
        true,
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let s = serve(&[], &env);
    let welcome = connect_with_token(&s.addr, &token).await;
    assert_eq!(welcome["payload"]["user_id"], "alice", "{welcome}");

    let out = Command::new(BIN)
        .args(["token", "--user", "alice"])
        .env_remove("HERALD_AUTH__HMAC_SECRET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no signing key"));
}

#[tokio::test]
async fn dev_mode_prints_a_working_token_and_check_config_hides_secrets() {
    let mut s = serve(&["--dev"], &[]);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        s.rest.read_line(&mut l).expect("line");
        lines.push(l);
    }
    assert!(lines[0].contains("NOT FOR PRODUCTION"), "{lines:?}");
    let welcome = connect_with_token(&s.addr, lines[1].trim()).await;
    assert_eq!(welcome["payload"]["user_id"], "dev");

    let out = Command::new(BIN)
        .args(["check-config"])
        .env("HERALD_AUTH__HMAC_SECRET", SECRET)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits_zero() {
    let mut served = serve(&["--dev"], &[]);
    let addr = served.addr.clone();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("connect");
        let first = ws.next().await.expect("frame").expect("ok");
        assert!(first.to_text().expect("text").contains("\"connected\""));
        clients.push(ws);
    }
    let status = Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for ws in &mut clients {
        let mut advisory = false;
        let code = loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(t))) => {
                    advisory |= t.contains("\"disconnect\"") && t.contains("1001")
                }
                Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(advisory, "disconnect advisory before close");
        assert_eq!(code, Some(1001));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = served.child.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "herald did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

fn client_cmd(addr: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args(["--url", &format!("ws://{addr}/ws")])
        .output()
        .expect("run")
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn pub_sub_history_presence_and_send_against_a_live_server() {
    let s = serve(&["--dev"], &[]);
    let addr = s.addr.clone();
    let mut sub = Command::new(BIN)
        .args([
            "sub",
            "news",
            "--count",
            "2",
            "--json",
            "--url",
            &format!("ws://{addr}/ws"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sub");
    // Wait for the subscription before publishing.
    let mut err = BufReader::new(sub.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("subscribed to news") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "sub exited early"
        );
    }
    let out = stdout(&client_cmd(&addr, &["pub", "news", r#"{"text":"hi"}"#]));
    assert!(out.contains("published to news: offset 1"), "{out}");
    stdout(&client_cmd(&addr, &["pub", "news", "plain words"]));
    let done = sub.wait_with_output().expect("sub output");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&done.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["data"]["text"], "hi");
    assert_eq!(lines[1]["data"], "plain words");
    assert_eq!(lines[1]["offset"], 2);

    let out = stdout(&client_cmd(&addr, &["history", "news", "--json"]));
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = stdout(&client_cmd(&addr, &["presence", "news"]));
    assert!(out.contains("news: 0 client(s)"), "{out}");

    let file = std::env::temp_dir().join(format!("herald-send-{}.jsonl", std::process::id()));
    std::fs::write(
        &file,
        "{\"type\":\"ping\"}\n# a comment\n{\"type\":\"history\",\"payload\":{\"channel\":\"news\",\"limit\":1}}\n{\"type\":\"subscribe\",\"payload\":{\"channel\":\"bad channel\"}}\n",
    )
    .expect("write");
    let out = stdout(&client_cmd(&addr, &["send", file.to_str().expect("path")]));
    let _ = std::fs::remove_file(&file);
    assert!(out.contains("> ping"), "{out}");
    assert!(out.contains("< pong"), "{out}");
    assert!(
        out.contains("< error {\"code\":\"invalid_channel\""),
        "{out}"
    );
}

#[test]
fn connection_errors_are_one_line_with_the_cause() {
    // Nothing listens on port 1.
    let out = Command::new(BIN)
        .args(["pub", "news", "1", "--url", "ws://127.0.0.1:1/ws"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection refused"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_bad_token_is_reported_as_401() {
    let s = serve(&["--dev"], &[]);
    let out = Command::new(BIN)
        .args([
            "presence",
            "news",
            "--token",
            "not-a-token",
            "--url",
            &format!("ws://{}/ws", s.addr),
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("token_invalid"),
        "{err}"
    );
}

#[tokio::test]
async fn pub_through_the_http_api_with_an_api_key() {
    let cfg = std::env::temp_dir().join(format!("herald-api-{}.toml", std::process::id()));
    std::fs::write(&cfg, "[auth]\napi_keys = [\"cli-api-key-0123456789\"]\n").expect("write");
    let s = serve(&["--dev", "--config", cfg.to_str().expect("path")], &[]);
    let out = stdout(&client_cmd(
        &s.addr,
        &[
            "pub",
            "--api-key",
            "cli-api-key-0123456789",
            "news",
            r#"{"via":"http"}"#,
        ],
    ));
    assert!(out.contains("published to news: offset 1"), "{out}");
    let out = stdout(&client_cmd(&s.addr, &["history", "news", "--json"]));
    assert!(out.contains(r#""via":"http""#), "{out}");
    let bad = client_cmd(
        &s.addr,
        &["pub", "--api-key", "wrong-key-wrong-key", "news", "1"],
    );
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("HTTP 401") && err.contains("unauthorized"),
        "{err}"
    );
    let _ = std::fs::remove_file(&cfg);
}

/// A backend that answers every request with `body`.
async fn tiny_backend(body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                // Read the head and the body (Content-Length) before answering.
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

// Multi-threaded: the backend must keep running while the test blocks on the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_makes_one_rpc_to_the_backend() {
    let backend = tiny_backend(r#"{"result":{"answered":true}}"#).await;
    let url = format!("http://{backend}/rpc");
    let s = serve(&["--dev"], &[("HERALD_RPC__URL", &url)]);
    let out = stdout(&client_cmd(&s.addr, &["call", "ping", r#"{"x":1}"#]));
    assert_eq!(out.trim(), r#"{"answered":true}"#);
    let plain = serve(&["--dev"], &[]);
    let o = client_cmd(&plain.addr, &["call", "ping"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rpc is not enabled"), "{err}");
}

// Regression: `[proxy] connect_url` was parsed but never wired into `herald serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_wires_the_connect_proxy() {
    let backend = tiny_backend(r#"{"result":{"user":"frank"}}"#).await;
    let url = format!("http://{backend}/connect");
    let s = serve(&["--dev"], &[("HERALD_PROXY__CONNECT_URL", &url)]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", s.addr))
        .await
        .expect("connect");
    let first = ws.next().await.expect("frame").expect("ok");
    let welcome: serde_json::Value =
        serde_json::from_str(first.to_text().expect("text")).expect("json");
    assert_eq!(welcome["payload"]["user_id"], "frank", "{welcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_demo_chat_and_its_tokens() {
    let s = serve(&["--dev"], &[]);
    let (status, page) = http_get(&s.addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Herald chat</title>"), "{page}");
    let (status, js) = http_get(&s.addr, "/demo/app.js").await;
    assert!(status == 200 && js.contains("herald.auth."), "{status}");
    let (status, _) = http_get(&s.addr, "/demo/token?user=not%20ok").await;
    assert_eq!(status, 400);
    let (status, body) = http_get(&s.addr, "/demo/token?user=alice").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let welcome = connect_with_token(&s.addr, v["token"].as_str().expect("token")).await;
    assert_eq!(welcome["payload"]["user_id"], "alice");
    // Without --dev there is no demo and no token endpoint.
    let plain = serve(
        &[],
        &[
            ("HERALD_AUTH__HMAC_SECRET", SECRET),
            ("HERALD_DEBUG__ECHO", "false"),
        ],
    );
    assert_eq!(http_get(&plain.addr, "/").await.0, 404);
    assert_eq!(http_get(&plain.addr, "/demo/token?user=alice").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scenarios_run_and_report_no_loss() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/herald.toml");
    let s = serve(&["--dev", "--config", cfg], &[]);
    let pid = s.child.id().to_string();
    let r = bench(
        &s.addr,
        &[
            "fanout",
            "--subscribers",
            "50",
            "--channels",
            "2",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(
        (r["lost"].clone(), r["duplicates"].clone()),
        (json!(0), json!(0)),
        "{r}"
    );
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert!(r["deliveries"].as_u64().is_some_and(|d| d >= 50), "{r}");
    assert!(r["latency"]["p99_ms"].is_number(), "{r}");
    assert!(r["server_cpu_seconds"].is_number(), "{r}");
    let r = bench(
        &s.addr,
        &[
            "idle",
            "--connections",
            "100",
            "--duration",
            "1s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(r["connections"], 100, "{r}");
    assert!(r["server_bytes_per_connection"].is_number(), "{r}");
    let r = bench(&s.addr, &["connect", "--connections", "100"]);
    assert_eq!(
        (r["connections"].clone(), r["failed"].clone()),
        (json!(100), json!(0)),
        "{r}"
    );
    let r = bench(
        &s.addr,
        &[
            "churn",
            "--clients",
            "10",
            "--channels",
            "2",
            "--rate",
            "100",
            "--duration",
            "2s",
            "--cut-every",
            "100ms",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["connections_cut"].as_u64().is_some_and(|c| c > 0), "{r}");
    // Subscribers on the one-way SSE feed: every publication once, and their memory.
    let r = bench(
        &s.addr,
        &[
            "fanout",
            "--transport",
            "sse",
            "--subscribers",
            "50",
            "--channels",
            "2",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(
        (r["lost"].clone(), r["duplicates"].clone()),
        (json!(0), json!(0)),
        "{r}"
    );
    assert_eq!(r["deliveries"], r["expected_deliveries"], "{r}");
    assert!(r["deliveries"].as_u64().is_some_and(|d| d >= 50), "{r}");
    let r = bench(
        &s.addr,
        &[
            "idle",
            "--transport",
            "sse",
            "--connections",
            "100",
            "--duration",
            "1s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(r["connections"], 100, "{r}");
    assert!(r["server_bytes_per_connection"].is_number(), "{r}");
}

/// Regressions: an unrelated `HERALD_BIN` (a deploy script's) made `herald serve` refuse to start
/// ("unknown field: found `bin`"); a plain value for a list key was refused ("expected a
/// sequence"); `--dev` silently undid a variable's override on a configured namespace.
#[test]
fn environment_variables_warn_when_unknown_take_plain_lists_and_beat_dev() {
    let out = run(
        &["check-config"],
        &[
            ("HERALD_BIN", "/usr/local/bin/herald"),
            ("HERALD_SERVER__LISEN", "oops"),
            ("HERALD_SERVER__MAX_CONNECTIONS", "9"),
        ],
        true,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("max_connections = 9"), "{stdout}");
    for var in ["HERALD_BIN", "HERALD_SERVER__LISEN"] {
        assert!(stderr.contains(&format!("ignoring {var}")), "{stderr}");
    }

    let out = run(
        &["check-config"],
        &[
            (
                "HERALD_SERVER__ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("HERALD_SERVER__TRUSTED_PROXIES", "10.0.0.0/8"),
            ("HERALD_AUTH__API_KEYS", "12345678901234567890"),
        ],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let squeezed: String = stdout.split_whitespace().collect();
    for want in [
        r#"allowed_origins=["https://a.example","https://b.example",]"#,
        r#"trusted_proxies=["10.0.0.0/8"]"#,
        r#"api_keys=["<redacted>"]"#,
    ] {
        assert!(squeezed.contains(want), "{want} in {stdout}");
    }

    let dir = std::env::temp_dir().join(format!("herald-cli-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("locked.toml");
    std::fs::write(
        &file,
        "[namespaces.locked]\nhistory_size = 5\nhistory_ttl = \"1m\"\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8");
    let out = run(
        &["check-config", "--dev", "--config", file],
        &[("HERALD_NAMESPACES__LOCKED__ALLOW_SUBSCRIBE", "false")],
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let locked = stdout
        .split("[namespaces.locked]")
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .expect("the namespace");
    assert!(locked.contains("allow_subscribe = false"), "{locked}");
    assert!(
        locked.contains("allow_publish = true"),
        "--dev still applies: {locked}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--transport sse` / `stream`: the client tools over the HTTP transports (protocol §10).
#[tokio::test]
async fn sub_and_pub_over_the_http_transports() {
    let s = serve(&["--dev"], &[]);
    let addr = s.addr.clone();
    let url = format!("ws://{addr}/ws");
    let mut sub = Command::new(BIN)
        .args([
            "sub",
            "news",
            "--count",
            "2",
            "--json",
            "--transport",
            "sse",
            "--url",
            &url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sub");
    let mut err = BufReader::new(sub.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("subscribed to news") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("stderr") > 0,
            "sub exited early"
        );
    }
    for data in [r#"{"n":1}"#, r#"{"n":2}"#] {
        let out = stdout(&client_cmd(
            &addr,
            &["pub", "news", data, "--transport", "stream"],
        ));
        assert!(out.contains("published to news"), "{out}");
    }
    let done = sub.wait_with_output().expect("sub output");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&done.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    let got: Vec<_> = lines.iter().map(|l| l["data"]["n"].clone()).collect();
    assert_eq!(
        got,
        vec![serde_json::json!(1), serde_json::json!(2)],
        "{lines:?}"
    );
    let out = Command::new(BIN)
        .args([
            "presence",
            "news",
            "--transport",
            "stream",
            "--token",
            "not-a-token",
            "--url",
            &url,
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") && err.contains("token_invalid"),
        "{err}"
    );
}

/// The value of an unlabelled counter in `/metrics` (0 when not yet recorded).
async fn counter(addr: &str, name: &str) -> u64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Issue 15: after a flood of connections ended, the server gives the freed memory back to the
/// operating system (`server.memory_trim_interval`) instead of staying near the flood's peak; at
/// `0s` it never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_returned_after_a_flood_of_connections_ended() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/herald.toml");
    let off = serve(
        &["--dev", "--config", cfg],
        &[
            ("HERALD_SERVER__MEMORY_TRIM_INTERVAL", "0s"),
            ("HERALD_SESSION__RESUME_GRACE", "1s"),
        ],
    );
    let on = serve(
        &["--dev", "--config", cfg],
        &[
            ("HERALD_SERVER__MEMORY_TRIM_INTERVAL", "1s"),
            ("HERALD_SESSION__RESUME_GRACE", "1s"),
        ],
    );
    // 400 subscribed connections, held for a second, then all closed: above the 256 that must
    // end (their sessions wait 1 s for a resume) before a trim is worth an arena walk. The server that must not trim goes first, so it
    // has had longer than the other once that one has trimmed.
    for s in [&off, &on] {
        let r = bench(
            &s.addr,
            &["idle", "--connections", "400", "--duration", "1s"],
        );
        assert_eq!(r["connections"], 400, "{r}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while counter(&on.addr, "herald_memory_trims_total").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no trim within 30 s of 400 connections ending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counter(&off.addr, "herald_memory_trims_total").await, 0);
}

/// Issue 16: `herald bench storm` cuts every client at once; against a node admitting 20 new
/// connections a second, the excess is refused with 1013, waits its hint, and every client is
/// back with its session resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_storm_reports_refusals_and_every_client_resumes() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/herald.toml");
    let s = serve(
        &["--dev", "--config", cfg],
        &[
            ("HERALD_LIMITS__CONNECT_PER_SECOND", "20"),
            ("HERALD_LIMITS__CONNECT_BURST", "20"),
            ("HERALD_LIMITS__CONNECT_RETRY_JITTER", "2s"),
        ],
    );
    let pid = s.child.id().to_string();
    // The clients connect at the node's rate first (their own backoff covers the refusals).
    let r = bench(
        &s.addr,
        &[
            "storm",
            "--clients",
            "60",
            "--timeout",
            "60s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (r["back"].clone(), r["resumed"].clone()),
        (json!(60), json!(60)),
        "{r}"
    );
    assert!(r["refused_1013"].as_u64().is_some_and(|n| n > 0), "{r}");
    assert!(r["server_rss_peak"].as_u64().is_some_and(|n| n > 0), "{r}");
}

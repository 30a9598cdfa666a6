//! Client-side subcommands: `sub`, `pub`, `send`, `presence`, `history`. Human output by
//! default, `--json` for JSON lines; connection failures are one line with the cause.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use herald_client::{
    Backoff, Client, ClientConfig, Event, Events, GapReason, HistoryQuery, HttpStyle, State,
    Transport,
};
use serde_json::{Value, json};

/// How to reach the server.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// WebSocket URL of the server.
    #[arg(long, env = "HERALD_URL", default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Connection token (sent as `Authorization: Bearer`).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Extra handshake header `Name: value` (repeatable), e.g. `Origin: https://app.example.com`.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Print JSON lines instead of human text.
    #[arg(long)]
    pub json: bool,
    /// Request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// `ws` (WebSocket), or an HTTP transport for networks that block WebSockets: `stream`
    /// (HTTP streaming) or `sse` (server-sent events); same URL (`…/ws` → `…/http/…`).
    #[arg(long, default_value = "ws", value_parser = ["ws", "stream", "sse"])]
    pub transport: String,
}

impl ConnectArgs {
    fn config(&self, persistent: bool) -> anyhow::Result<ClientConfig> {
        let mut c = ClientConfig::new(&self.url);
        if let Some(t) = &self.token {
            c = c.token(t.clone());
        }
        for h in &self.headers {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: expected `Name: value`"))?;
            c.headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        c.request_timeout = self.timeout;
        c.connect_timeout = self.timeout;
        c.transport = match self.transport.as_str() {
            "stream" => Transport::Http(HttpStyle::Stream),
            "sse" => Transport::Http(HttpStyle::Sse),
            _ => Transport::WebSocket,
        };
        if !persistent {
            c.backoff = Backoff {
                max_attempts: Some(1),
                ..Backoff::default()
            };
            c.offline_queue = 0;
        }
        Ok(c)
    }
}

/// Connect and wait for the first `Connected`; a failure becomes one line with its cause.
async fn open(args: &ConnectArgs, persistent: bool) -> anyhow::Result<(Client, Events)> {
    let (client, mut events) = Client::connect(args.config(persistent)?);
    if persistent {
        return Ok((client, events));
    }
    loop {
        match events.next().await {
            Some(Event::State(State::Connected { .. })) => return Ok((client, events)),
            Some(Event::State(State::Disconnected { reason, .. })) => {
                bail!("cannot connect to {}: {reason}", args.url)
            }
            Some(Event::State(State::Closed { reason })) => {
                bail!("cannot connect to {}: {reason}", args.url)
            }
            Some(_) => {}
            None => bail!("cannot connect to {}", args.url),
        }
    }
}

fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Parse DATA: JSON when it parses, otherwise a JSON string.
pub fn parse_data(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// `herald sub CHANNEL...`: print publications as they arrive, recovering across reconnects.
pub async fn sub(
    args: &ConnectArgs,
    channels: &[String],
    count: Option<u64>,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let (client, mut events) = open(args, true).await?;
    for ch in channels {
        let c = client.clone();
        let ch = ch.clone();
        // Subscriptions are confirmed once connected; failures are reported, not fatal to others.
        tokio::spawn(async move {
            match c.subscribe(&ch).await {
                Ok(r) => eprintln!("herald: subscribed to {ch} at offset {}", r["offset"]),
                Err(e) => eprintln!("herald: subscribe {ch}: {e}"),
            }
        });
    }
    let stop = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut seen = 0u64;
    loop {
        let e = tokio::select! {
            e = events.next() => e,
            _ = &mut stop => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(e) = e else { break };
        match e {
            Event::Message(m) => {
                if args.json {
                    print_json(
                        &json!({"channel": m.channel, "offset": m.offset, "epoch": m.epoch,
                        "data": m.data, "info": m.info}),
                    );
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{} #{} {}", m.channel, m.offset, m.data);
                    let _ = out.flush();
                }
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    break;
                }
            }
            Event::Gap {
                channel,
                reason,
                last_offset,
                resumed_at,
            } => {
                let why = match reason {
                    GapReason::EpochChanged => "the stream was reset (new epoch)",
                    GapReason::Trimmed => "no longer in history",
                    GapReason::Dropped => "dropped by the namespace's slow-consumer policy",
                    GapReason::Skipped => "lost",
                    GapReason::Unacknowledged => "given up unacknowledged by the server",
                };
                eprintln!(
                    "herald: {channel}: publications after #{last_offset} up to #{resumed_at} are missing: {why}"
                );
                if args.json {
                    print_json(
                        &json!({"gap": {"channel": channel, "reason": reason.as_str(), "last_offset": last_offset, "resumed_at": resumed_at}}),
                    );
                }
            }
            Event::SubscribeFailed {
                channel,
                error,
                retry_in,
            } => match retry_in {
                Some(d) => eprintln!(
                    "herald: subscribing to {channel} failed ({error}); retrying in {:.1}s",
                    d.as_secs_f64()
                ),
                None => bail!("subscribing to {channel} failed: {error}"),
            },
            Event::State(State::Connected { resumed, .. }) => {
                eprintln!(
                    "herald: connected to {}{}",
                    args.url,
                    if resumed { " (session resumed)" } else { "" }
                );
            }
            Event::State(State::Disconnected { code, reason, .. }) => {
                eprintln!("herald: disconnected ({code}): {reason}");
            }
            Event::State(State::Reconnecting { delay, .. }) => {
                eprintln!("herald: reconnecting in {:.1}s", delay.as_secs_f64());
            }
            Event::State(State::Closed { reason }) => bail!("closed: {reason}"),
            Event::Join { channel, who } if args.json => {
                print_json(&json!({"join": {"channel": channel, "who": who}}))
            }
            Event::Leave { channel, who } if args.json => {
                print_json(&json!({"leave": {"channel": channel, "who": who}}))
            }
            _ => {}
        }
    }
    client.close().await;
    Ok(())
}

/// `herald pub CHANNEL DATA`.
pub async fn publish(args: &ConnectArgs, channel: &str, data: &str) -> anyhow::Result<()> {
    let (client, _events) = open(args, false).await?;
    let r = client
        .publish(channel, parse_data(data))
        .await
        .with_context(|| format!("publish to {channel}"))?;
    print_publish(args, channel, &r);
    client.close().await;
    Ok(())
}

/// The server API base (`http(s)://host:port`) derived from the WebSocket URL.
fn api_base(ws_url: &str) -> anyhow::Result<String> {
    let (scheme, rest) = if let Some(r) = ws_url.strip_prefix("ws://") {
        ("http", r)
    } else if let Some(r) = ws_url.strip_prefix("wss://") {
        ("https", r)
    } else {
        bail!("--url must start with ws:// or wss://");
    };
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(format!("{scheme}://{host}"))
}

fn print_publish(args: &ConnectArgs, channel: &str, r: &Value) {
    if args.json {
        print_json(r);
    } else {
        println!(
            "published to {channel}: offset {} epoch {}{}",
            r["offset"],
            r["epoch"].as_str().unwrap_or(""),
            if r["duplicate"] == true {
                " (duplicate)"
            } else {
                ""
            }
        );
    }
}

/// `herald pub --api-key KEY CHANNEL DATA`: publish through `POST /api/v1/publish`.
pub async fn publish_http(
    args: &ConnectArgs,
    key: &str,
    channel: &str,
    data: &str,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/publish", api_base(&args.url)?);
    let body = json!({"channel": channel, "data": parse_data(data)}).to_string();
    let auth = format!("apikey {key}");
    let r = herald_server::http_client::request(
        "POST",
        &url,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.into_bytes(),
        1 << 20,
        args.timeout,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot reach the server API: {e}"))?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 {
        bail!(
            "server API answered HTTP {}: {} {}",
            r.status,
            v["code"].as_str().unwrap_or(""),
            v["message"].as_str().unwrap_or("")
        );
    }
    print_publish(args, channel, &v);
    Ok(())
}

/// `herald call METHOD DATA`: one RPC to the application backend.
pub async fn call(args: &ConnectArgs, method: &str, data: &str) -> anyhow::Result<()> {
    let (client, _events) = open(args, false).await?;
    let r = client
        .rpc(method, parse_data(data))
        .await
        .with_context(|| format!("rpc {method}"))?;
    if args.json {
        print_json(&r);
    } else {
        println!("{r}");
    }
    client.close().await;
    Ok(())
}

/// `herald presence CHANNEL`.
pub async fn presence(args: &ConnectArgs, channel: &str) -> anyhow::Result<()> {
    let (client, _events) = open(args, false).await?;
    let r = client.presence(channel).await.context("presence")?;
    if args.json {
        print_json(&r);
    } else {
        let clients = r["clients"].as_array().cloned().unwrap_or_default();
        println!("{channel}: {} client(s)", clients.len());
        for c in clients {
            let user = c["user_id"].as_str().unwrap_or("");
            let user = if user.is_empty() { "(anonymous)" } else { user };
            println!("  {} {user}", c["client_id"].as_str().unwrap_or(""));
        }
    }
    client.close().await;
    Ok(())
}

/// `herald history CHANNEL`.
pub async fn history(
    args: &ConnectArgs,
    channel: &str,
    limit: Option<usize>,
    reverse: bool,
) -> anyhow::Result<()> {
    let (client, _events) = open(args, false).await?;
    let r = client
        .history(
            channel,
            HistoryQuery {
                since: None,
                limit,
                reverse,
            },
        )
        .await
        .context("history")?;
    if args.json {
        for p in r["publications"].as_array().into_iter().flatten() {
            print_json(p);
        }
    } else {
        for p in r["publications"].as_array().into_iter().flatten() {
            println!("{} #{} {}", channel, p["offset"], p["data"]);
        }
        println!(
            "({} at offset {} epoch {})",
            channel,
            r["offset"],
            r["epoch"].as_str().unwrap_or("")
        );
    }
    client.close().await;
    Ok(())
}

/// Commands from a file: a JSON array, or one JSON object per line.
fn read_commands(file: &PathBuf) -> anyhow::Result<Vec<Value>> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        for line in std::io::stdin().lock().lines() {
            s.push_str(&line?);
            s.push('\n');
        }
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) {
        return Ok(items);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("line {}: not a JSON object", i + 1))
        })
        .collect()
}

/// `herald send FILE`: send each command and print its reply next to it.
pub async fn send(args: &ConnectArgs, file: &PathBuf) -> anyhow::Result<()> {
    let commands = read_commands(file)?;
    let (client, _events) = open(args, false).await?;
    let mut failed = 0;
    for cmd in commands {
        let kind = cmd["type"].as_str().unwrap_or("").to_owned();
        if kind.is_empty() {
            bail!("command without a string `type`: {cmd}");
        }
        let payload = cmd.get("payload").cloned().unwrap_or(json!({}));
        let reply = match client.request(&kind, payload.clone()).await {
            Ok(r) => json!({"type": if kind == "ping" { "pong" } else { "reply" }, "payload": r}),
            Err(herald_client::ClientError::Server { code, message, .. }) => {
                failed += 1;
                json!({"type": "error", "payload": {"code": code.as_str(), "message": message}})
            }
            Err(e) => bail!("{kind}: {e}"),
        };
        if args.json {
            print_json(&json!({"request": {"type": kind, "payload": payload}, "reply": reply}));
        } else {
            println!("> {kind} {payload}");
            println!(
                "< {} {}",
                reply["type"].as_str().unwrap_or(""),
                reply["payload"]
            );
        }
    }
    client.close().await;
    if failed > 0 {
        eprintln!("herald: {failed} command(s) got an error");
    }
    Ok(())
}

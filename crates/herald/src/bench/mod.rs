//! `herald bench`: the load simulator. Scenarios: `fanout`, `idle`, `connect`, `churn`, `storm`.
//!
//! Every scenario is bounded (by `--duration` and by counts) and stops by itself. Connections are
//! opened with bounded concurrency from several 127.0.0.x source addresses (so the ephemeral port
//! range does not cap them), and the file-descriptor limit is raised as far as allowed.

mod churn;
mod fanout;
mod publisher;
mod raw;
mod relay;
mod stats;
mod storm;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::sync::Semaphore;

pub use raw::RawConn;
pub use stats::ServerProbe;

/// Options shared by every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Server WebSocket URL.
    #[arg(long, env = "HERALD_URL", default_value = "ws://127.0.0.1:8000/ws")]
    pub url: String,
    /// Token for every connection (`Authorization: Bearer`).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Server process id: report its CPU time and memory (from /proc); repeat for the nodes of
    /// a cluster (figures are summed).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Spread connections over this many 127.0.0.x source addresses (loopback targets only).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// How long the measured phase runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Channel name prefix (a random one by default, so runs never see old history).
    #[arg(long)]
    pub prefix: Option<String>,
    /// How subscribers connect: `ws` (WebSocket), or `sse` (the one-way SSE feed
    /// `/http/subscribe` beside `--url`, docs/protocol.md §10.6). Publishers always use `ws`.
    #[arg(long, default_value = "ws", value_parser = ["ws", "sse"])]
    pub transport: String,
    /// WebSocket subscribers offer permessage-deflate, as browsers do
    /// (`permessage-deflate; client_max_window_bits`): with `connection.compression` on the
    /// server, the report's wire bytes per delivery show what compression saves.
    #[arg(long)]
    pub compress: bool,
}

/// The scenarios.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Scenario {
    /// N subscribers over C channels; a publisher at a fixed rate or as fast as acks allow.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Subscribers.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Channels (subscriber i joins channel i mod C).
        #[arg(long, default_value_t = 1)]
        channels: usize,
        /// Publications per second over all channels; 0 = closed loop, as fast as acks allow.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Bytes of application data per publication (at least 40, for the timestamp); with
        /// `--shape padding` only.
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// What the data looks like: `padding` (`--payload` bytes of `x`: compresses absurdly
        /// well), `chat` (a ~100-byte chat message, text that varies) or `dashboard` (a ~3 KB
        /// JSON object of metrics of which a few change per publication).
        #[arg(long, default_value = "padding", value_parser = ["padding", "chat", "dashboard"])]
        shape: String,
        /// Publications in flight in closed-loop mode.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// Publish through this node instead of `--url` (subscribers stay on `--url`): measures
        /// delivery across the nodes of a cluster.
        #[arg(long)]
        publish_url: Option<String>,
        /// Percent of the subscribers that stop reading once subscribed (socket kept open, never
        /// read, small receive buffer): latency, loss and duplicates are then reported for the
        /// healthy subscribers only, next to how the server ended the stalled connections.
        #[arg(long, default_value_t = 0.0)]
        stalled_percent: f64,
        /// `SO_RCVBUF` of the stalled subscribers' sockets, in bytes (Linux doubles it).
        #[arg(long, default_value_t = 4096)]
        stalled_rcvbuf: u32,
        /// Add a per-second timeline to the report: healthy latency by publish second, and the
        /// server's slow-consumer and close-code counters (from its /metrics) by wall second.
        #[arg(long)]
        timeline: bool,
    },
    /// N idle connections, each subscribed to a channel; reports server memory per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Channels (connection i joins channel i mod C).
        #[arg(long, default_value_t = 100)]
        channels: usize,
    },
    /// Connection rate: connect (+ token) + subscribe for N connections.
    Connect {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
    },
    /// Real clients (herald-client) randomly cut and reconnecting while messages flow; reports
    /// loss and duplicates after recovery (must be zero within the history window).
    Churn {
        #[command(flatten)]
        common: Common,
        /// Clients.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Channels.
        #[arg(long, default_value_t = 10)]
        channels: usize,
        /// Publications per second over all channels.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Cut one random client's connection this often.
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        cut_every: Duration,
    },
    /// A reconnect storm: real clients (herald-client, default backoff) all cut at once; reports
    /// the time until every one is back, refused (1013) and failed attempts, resumed sessions,
    /// and the server's CPU and peak RSS during the storm.
    Storm {
        #[command(flatten)]
        common: Common,
        /// Clients.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// Give up when not every client is back after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Where to connect, parsed from `--url`.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub token: Option<String>,
    sources: Vec<IpAddr>,
    /// Subscribers read SSE feeds instead of WebSockets.
    sse: bool,
    /// WebSocket connections offer permessage-deflate.
    compress: bool,
}

impl Target {
    fn new(c: &Common) -> anyhow::Result<Target> {
        let rest = c
            .url
            .strip_prefix("ws://")
            .context("herald bench speaks plain ws:// (benchmark without TLS)")?;
        let (hostport, path) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{p}")),
            None => (rest, "/ws".to_owned()),
        };
        let addr: SocketAddr = match hostport.parse() {
            Ok(a) => a,
            Err(_) => {
                use std::net::ToSocketAddrs;
                hostport
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {hostport}"))?
                    .next()
                    .with_context(|| format!("no address for {hostport}"))?
            }
        };
        let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
            (1..=c.source_ips.max(1))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Target {
            addr,
            path,
            token: c.token.clone(),
            sources,
            sse: c.transport == "sse",
            compress: c.compress,
        })
    }

    /// Source address for connection `i`.
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()])
    }

    /// Open connection `i` and read its `connected` message.
    pub async fn open(&self, i: usize) -> anyhow::Result<RawConn> {
        self.open_with(i, None).await
    }

    /// Like [`Target::open`], with `SO_RCVBUF` set to `recv_buffer` before connecting.
    pub async fn open_with(&self, i: usize, recv_buffer: Option<u32>) -> anyhow::Result<RawConn> {
        let mut c = RawConn::connect_with(
            self.addr,
            self.source(i),
            &self.path,
            self.token.as_deref(),
            recv_buffer,
            self.compress,
        )
        .await?;
        match c.next().await? {
            Some(m) if memchr::memmem::find(m, b"\"connected\"").is_some() => Ok(c),
            Some(m) => bail!("unexpected first frame: {}", String::from_utf8_lossy(m)),
            None => bail!("closed before `connected`"),
        }
    }
}

impl Target {
    /// Open connection `i` subscribed to `channel` — a WebSocket and a `subscribe`, or an SSE
    /// feed of the channel — and return it with the stream offset at subscribe time.
    async fn subscriber(
        &self,
        i: usize,
        channel: &str,
        recv_buffer: Option<u32>,
    ) -> anyhow::Result<(RawConn, u64)> {
        if !self.sse {
            let mut c = self.open_with(i, recv_buffer).await?;
            let offset = subscribe(&mut c, channel).await?;
            return Ok((c, offset));
        }
        let base = self.path.strip_suffix("ws").unwrap_or(&self.path);
        let path = format!("{base}http/subscribe?channel={channel}");
        let mut c = RawConn::connect_sse(
            self.addr,
            self.source(i),
            &path,
            self.token.as_deref(),
            recv_buffer,
        )
        .await?;
        let offset = loop {
            match c.event().await? {
                Some((b"subscribed", data)) => {
                    break raw::number_after(data, b"\"offset\":").unwrap_or(0);
                }
                Some((b"error", data)) => {
                    bail!("subscribe refused: {}", String::from_utf8_lossy(data))
                }
                Some(_) => {}
                None => bail!("the SSE feed ended before `subscribed`"),
            }
        };
        Ok((c, offset))
    }
}

/// Subscribe on a raw connection; returns the stream offset at subscribe time.
pub async fn subscribe(c: &mut RawConn, channel: &str) -> anyhow::Result<u64> {
    let cmd = json!({"type": "subscribe", "id": 1, "payload": {"channel": channel}});
    c.send_text(cmd.to_string().as_bytes()).await?;
    loop {
        let Some(m) = c.next().await? else {
            bail!("closed while subscribing")
        };
        if memchr::memmem::find(m, b"\"error\"").is_some() {
            bail!("subscribe refused: {}", String::from_utf8_lossy(m));
        }
        if memchr::memmem::find(m, b"\"reply\"").is_some() {
            return Ok(raw::number_after(m, b"\"offset\":").unwrap_or(0));
        }
    }
}

/// Raise the open-file limit as far as allowed; warn when it caps `needed` connections.
fn raise_fd_limit(needed: usize) -> u64 {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    if (needed as u64) + 64 > limit {
        eprintln!(
            "herald bench: the open-file limit is {limit}: this run is capped at about {} connections",
            limit.saturating_sub(64)
        );
    }
    limit
}

/// A progress bar on stderr (hidden with `--json`).
fn progress(len: u64, what: &str, hidden: bool) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg:<12} [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

fn prefix(c: &Common) -> String {
    c.prefix
        .clone()
        .unwrap_or_else(|| format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..6]))
}

/// Open `n` connections with bounded concurrency, each subscribed to `channel(i)`, with
/// `SO_RCVBUF` = `recv_buffer(i)` when set.
/// Returns the connections with their subscribe offsets, and the number of failures.
async fn open_many(
    t: &Arc<Target>,
    n: usize,
    concurrency: usize,
    channel: impl Fn(usize) -> String + Send + Sync + 'static,
    recv_buffer: impl Fn(usize) -> Option<u32>,
    bar: &indicatif::ProgressBar,
) -> (Vec<(usize, RawConn, u64, Duration)>, usize, Option<String>) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let channel = Arc::new(channel);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (t, sem, channel) = (t.clone(), sem.clone(), channel.clone());
        let rcvbuf = recv_buffer(i);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let started = Instant::now();
            let (c, offset) = t.subscriber(i, &channel(i), rcvbuf).await?;
            anyhow::Ok((i, c, offset, started.elapsed()))
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(c)) => ok.push(c),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        bar.inc(1);
    }
    (ok, failed, first_error)
}

/// Run a scenario.
pub async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Fanout {
            common,
            subscribers,
            channels,
            rate,
            payload,
            shape,
            window,
            publish_url,
            stalled_percent,
            stalled_rcvbuf,
            timeline,
        } => {
            if !(0.0..100.0).contains(&stalled_percent) {
                bail!("--stalled-percent must be in [0, 100)");
            }
            let opts = fanout::Options {
                subscribers,
                channels: channels.max(1),
                rate,
                payload: payload.max(40),
                shape: publisher::Shape::parse(&shape),
                window: window.max(1),
                publish_url,
                stalled_percent,
                stalled_rcvbuf,
                timeline,
            };
            fanout::run(&common, opts).await
        }
        Scenario::Idle {
            common,
            connections,
            channels,
        } => idle(&common, connections, channels.max(1)).await,
        Scenario::Connect {
            common,
            connections,
        } => connect(&common, connections).await,
        Scenario::Churn {
            common,
            clients,
            channels,
            rate,
            cut_every,
        } => churn::run(&common, clients, channels.max(1), rate, cut_every).await,
        Scenario::Storm {
            common,
            clients,
            timeout,
        } => storm::run(&common, clients, timeout).await,
    }
}

/// Connections opened by `idle` and `connect`.
struct Opened {
    conns: Vec<(usize, RawConn, u64, Duration)>,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

/// Open `n` connections over `channels` channels with a progress bar.
async fn open_phase(c: &Common, n: usize, channels: usize) -> anyhow::Result<Opened> {
    raise_fd_limit(n);
    let t = Arc::new(Target::new(c)?);
    let bar = progress(n as u64, "connecting", c.json);
    let p = prefix(c);
    let started = Instant::now();
    let (conns, failed, first_error) = open_many(
        &t,
        n,
        c.concurrency,
        move |i| format!("{p}:{}", i % channels),
        |_| None,
        &bar,
    )
    .await;
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Opened {
        conns,
        failed,
        first_error,
        elapsed,
    })
}

async fn idle(c: &Common, n: usize, channels: usize) -> anyhow::Result<()> {
    let probe = ServerProbe::new(&c.pid)?;
    let before = probe.as_ref().map(|p| p.rss_bytes()).transpose()?;
    let o = open_phase(c, n, channels).await?;
    let settled = match &probe {
        Some(p) => Some(settled_rss(p).await?),
        None => None,
    };
    let (after_1s, after) = (settled.map(|s| s.0), settled.map(|s| s.1));
    let open = o.conns.len();
    let per_conn = |after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(a.saturating_sub(b) as f64 / open as f64),
        _ => None,
    };
    // Hold for the rest of the duration, then close.
    let hold = c.duration.saturating_sub(o.elapsed);
    tokio::time::sleep(hold.min(Duration::from_secs(3600))).await;
    drop(o.conns);
    let report = json!({
        "scenario": "idle",
        "connections": open,
        "failed": o.failed,
        "first_error": o.first_error,
        "connect_seconds": stats::secs(o.elapsed),
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "server_bytes_per_connection": per_conn(after),
        "server_rss_after_1s_bytes": after_1s,
        "server_bytes_per_connection_at_1s": per_conn(after_1s),
    });
    stats::report("herald bench idle", &report, c.json);
    Ok(())
}

/// The server's RSS at rest, and 1 s after the last connection opened: read a second after it,
/// then every 250 ms while it still falls by more than 64 KiB, for at most 5 s in all. An
/// allocator that gives freed pages back after a delay (Herald's jemalloc: about a second) is
/// read at the level it settles to, not in the middle of giving back the handshakes' memory.
async fn settled_rss(probe: &ServerProbe) -> anyhow::Result<(u64, u64)> {
    const FALLING: u64 = 64 * 1024;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = probe.rss_bytes()?;
    let mut last = first;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = probe.rss_bytes()?;
        if now + FALLING > last {
            return Ok((first, now));
        }
        last = now;
    }
    Ok((first, last))
}

async fn connect(c: &Common, n: usize) -> anyhow::Result<()> {
    let probe = ServerProbe::new(&c.pid)?;
    let cpu0 = probe.as_ref().map(|p| p.cpu_seconds()).transpose()?;
    let o = open_phase(c, n, 100).await?;
    let cpu = match (&probe, cpu0) {
        (Some(p), Some(c0)) => Some(p.cpu_seconds()? - c0),
        _ => None,
    };
    let mut h = stats::histogram();
    for (_, _, _, d) in &o.conns {
        let _ = h.record(d.as_micros().max(1) as u64);
    }
    let ok = o.conns.len();
    drop(o.conns);
    let report = json!({
        "scenario": "connect",
        "connections": ok,
        "failed": o.failed,
        "first_error": o.first_error,
        "seconds": stats::secs(o.elapsed),
        "connections_per_second": ok as f64 / o.elapsed.as_secs_f64(),
        "server_cpu_seconds": cpu,
        "connect_and_subscribe_latency": stats::latency_json(&h),
    });
    stats::report("herald bench connect", &report, c.json);
    Ok(())
}

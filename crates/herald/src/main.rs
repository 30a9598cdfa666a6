//! The `herald` binary: command line, configuration loading and wiring.

mod bench;
mod config;
mod memory;
mod token;
mod tools;

/// jemalloc with the options in `memory::MALLOC_CONF`: size-class slabs without per-chunk
/// headers, and freed pages given back by a background thread after about a second.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_core::memory::{MemoryBroker, MemoryPresence};
use herald_core::{Heartbeat, Node, Verifier};
use herald_core::{broker::Broker, cluster::ControlPlane, presence::PresenceStore};
use herald_server::Server;

/// Herald: a real-time messaging server.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML). Values from HERALD_* variables and flags override it.
    #[arg(long, short = 'c', env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Permissive local development settings (anonymous publish, history, presence, /echo).
    #[arg(long)]
    dev: bool,
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        args: ConfigArgs,
        /// Log format.
        #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Validate the configuration and print the effective values.
    CheckConfig {
        #[command(flatten)]
        args: ConfigArgs,
    },
    /// Mint a token signed with the configured key (e.g. `herald token --user alice --channels 'chat:*'`).
    Token {
        #[command(flatten)]
        args: ConfigArgs,
        #[command(flatten)]
        mint: token::MintArgs,
    },
    /// Print publications of channels as they arrive (reconnects and recovers).
    Sub {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// Channels.
        #[arg(required = true)]
        channels: Vec<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this long (e.g. `30s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Publish DATA (JSON, or else a string) to CHANNEL and print the offset.
    Pub {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// Channel.
        channel: String,
        /// Data: JSON (`'{"text":"hi"}'`), or any other text as a string.
        data: String,
        /// Publish through the HTTP server API with this key instead of over the socket.
        #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Send the commands in FILE (JSON array or JSON lines; `-` = stdin), printing each reply.
    Send {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// File with `{"type": ..., "payload": {...}}` commands.
        file: PathBuf,
    },
    /// Make one RPC: METHOD with DATA (JSON, or else a string), answered by the backend.
    Call {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// Method.
        method: String,
        /// Data: JSON, or any other text as a string.
        #[arg(default_value = "null")]
        data: String,
    },
    /// List the clients subscribed to CHANNEL.
    Presence {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// Channel.
        channel: String,
    },
    /// Load-test a server: fanout, idle, connect and churn scenarios.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
    /// Print CHANNEL's history.
    History {
        #[command(flatten)]
        conn: tools::ConnectArgs,
        /// Channel.
        channel: String,
        /// Page size (1-100).
        #[arg(long)]
        limit: Option<usize>,
        /// Newest first.
        #[arg(long)]
        reverse: bool,
    },
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn sources(args: &ConfigArgs) -> config::Sources<'_> {
    config::Sources {
        file: args.config.as_deref(),
        dev: args.dev,
        listen: args.listen,
    }
}

/// Raise the soft open-file limit to the hard one, and say when the configured connection caps
/// cannot all be met with it (each connection is a file descriptor).
fn file_descriptors(server: &herald_server::ServerConfig) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let wanted = (server.max_connections + server.max_http_connections) as u64 + 64;
    if limit < wanted {
        tracing::warn!(
            nofile = limit,
            wanted,
            "the open-file limit is below server.max_connections + server.max_http_connections: raise it (LimitNOFILE=, ulimit -n) or lower the caps"
        );
    } else {
        tracing::debug!(nofile = limit, "open-file limit");
    }
}

async fn serve(args: ConfigArgs) -> anyhow::Result<()> {
    let mut config = config::load(&sources(&args))?;
    let mut dev_token = None;
    if args.dev {
        tracing::warn!(
            "DEVELOPMENT MODE: anonymous clients may publish everywhere, the token secret is random and /echo is on; NEVER expose this"
        );
        if config.auth.hmac_secret.is_none() {
            config.auth.hmac_secret = Some(token::dev_secret());
        }
        let mint = token::MintArgs {
            user: "dev".into(),
            channels: vec!["*".into()],
            publish: vec!["*".into()],
            ttl: Duration::from_secs(24 * 3600),
            info: None,
            channel: None,
            key: None,
            alg: None,
        };
        dev_token = Some(token::mint(&config.auth, &mint)?);
    }
    if !config.auth.has_keys() {
        tracing::warn!(
            "no auth keys configured: only namespaces with `anonymous = true` are usable"
        );
    }
    let verifier = Arc::new(Verifier::from_config(&config.auth).context("invalid [auth]")?);
    let jwks_stop = tokio_util::sync::CancellationToken::new();
    let _jwks_guard = jwks_stop.clone().drop_guard();
    if let Some(src) = &config.auth.jwks {
        let n = herald_server::jwks::start(
            verifier.clone(),
            src.clone(),
            config.auth.jwks_refresh,
            jwks_stop.clone(),
        )
        .await
        .context("cannot load auth.jwks")?;
        tracing::info!(keys = n, "JWKS loaded");
    }
    file_descriptors(&config.server);
    let engine = Engine::start(&config).await?;
    let heartbeat = Heartbeat {
        ping_interval_ms: config.connection.ping_interval.as_millis() as u64,
        pong_timeout_ms: config.connection.pong_timeout.as_millis() as u64,
    };
    let node = Node::new(
        config.engine(),
        engine.broker(),
        engine.presence(),
        heartbeat,
        verifier,
    );
    engine.join_cluster(&node);
    let replayed = node
        .replay_kept()
        .await
        .context("cannot read the cluster's revocations")?;
    if replayed > 0 {
        tracing::info!(revocations = replayed, "applied the cluster's revocations");
    }
    if let Some(rpc) = herald_server::HttpRpc::new(&config.rpc) {
        node.set_rpc_handler(Arc::new(rpc));
    }
    if let Some(proxy) = herald_server::HttpChannelProxy::new(&config.proxy) {
        node.set_channel_proxy(Arc::new(proxy));
    }
    let webhook_node = node.clone();
    let (node_bus, node_id) = (node.node_registry(), node.id().to_owned());
    let mut builder = Server::builder(
        config.server.clone(),
        config.connection.clone(),
        config.tls.clone(),
        node,
    )
    .forward_headers(&config.proxy.forward_headers)
    .http(config.http.clone())
    .admin(config.admin.clone());
    if let Some(proxy) = herald_server::HttpConnectProxy::new(&config.proxy) {
        builder = builder.connect_proxy(Arc::new(proxy));
    }
    if config.debug.demo {
        anyhow::ensure!(
            config.auth.hmac_secret.is_some(),
            "debug.demo needs auth.hmac_secret to sign the demo's tokens"
        );
        let auth = config.auth.clone();
        builder = builder.demo(Arc::new(move |user: &str| {
            let mint = token::MintArgs {
                user: user.to_owned(),
                channels: vec!["*".into()],
                publish: vec!["*".into()],
                ttl: Duration::from_secs(3600),
                info: Some(serde_json::json!({ "name": user }).to_string()),
                channel: None,
                key: None,
                alg: None,
            };
            token::mint(&auth, &mint).map_err(Into::into)
        }));
    }
    let server = builder
        .bind()
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = server.local_addr()?;
    let (http, ws) = if config.tls.enabled() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // One write: a reader that takes the first line and closes the pipe must not make a second
    // write fail.
    let mut banner = format!("herald listening on {http}://{addr} (WebSocket: {ws}://{addr}/ws)\n");
    if let Some(t) = dev_token {
        banner.push_str(&format!(
            "dev token (user \"dev\", all channels, 24h; NOT FOR PRODUCTION):\n{t}\n"
        ));
    }
    if config.debug.demo {
        banner.push_str(&format!("demo chat: {http}://{addr}/\n"));
    }
    if config.admin.enabled() {
        banner.push_str(&format!("admin UI: {http}://{addr}/admin\n"));
    }
    {
        use std::io::Write;
        let _ = std::io::stdout().write_all(banner.as_bytes());
        let _ = std::io::stdout().flush();
    }
    tracing::info!(%addr, "listening");
    if !config.tls.enabled() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving without TLS on a non-loopback address: put a TLS proxy in front or set [tls]");
    }
    herald_server::webhook::spawn(
        webhook_node,
        config.webhook.clone(),
        server.shutdown_token(),
    );
    let handle = server.handle();
    let reload = handle.clone();
    let announce_handle = handle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = reload.reload_tls() {
                tracing::warn!(error = %e, "TLS reload failed; keeping the current certificate");
            }
        }
    });

    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: closing connections");
        token.cancel();
    });
    let sweeper = match &engine {
        Engine::Memory(m, _) => Some(m.clone()),
        _ => None,
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            if let Some(m) = &sweeper {
                m.sweep();
            }
            handle.upkeep();
        }
    });
    tokio::spawn(memory::watch(
        server.handle(),
        config.server.memory_trim_interval,
        server.shutdown_token(),
    ));
    if let Some(bus) = node_bus {
        tokio::spawn(announce(bus, node_id, addr, announce_handle));
    }
    server.run().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The engine the configuration asks for (exactly one; nothing falls back to another).
enum Engine {
    Memory(Arc<MemoryBroker>, Arc<MemoryPresence>),
    Redis(
        Arc<herald_redis::RedisBroker>,
        Arc<herald_redis::RedisPresence>,
    ),
    Nats(Arc<herald_nats::NatsBroker>, Arc<herald_nats::NatsPresence>),
}

impl Engine {
    async fn start(config: &config::Config) -> anyhow::Result<Engine> {
        Ok(match config.backend.kind {
            config::EngineKind::Memory => Engine::Memory(
                Arc::new(MemoryBroker::new()),
                Arc::new(MemoryPresence::new()),
            ),
            config::EngineKind::Nats => {
                let b = herald_nats::NatsBroker::connect(config.nats.clone())
                    .await
                    .with_context(|| format!("cannot use NATS at {}", config.nats.url))?;
                let presence = Arc::new(
                    herald_nats::NatsPresence::new(&b)
                        .await
                        .context("cannot set up presence over NATS")?,
                );
                tracing::info!(url = %config.nats.url, jetstream = b.has_history(), "engine: nats");
                Engine::Nats(Arc::new(b), presence)
            }
            config::EngineKind::Redis => {
                let b = herald_redis::RedisBroker::connect(config.redis.clone())
                    .await
                    .with_context(|| {
                        format!("cannot use Redis at {}", redacted_url(&config.redis.url))
                    })?;
                let presence = Arc::new(herald_redis::RedisPresence::new(&b));
                tracing::info!(url = %redacted_url(&config.redis.url), "engine: redis");
                Engine::Redis(Arc::new(b), presence)
            }
        })
    }

    fn broker(&self) -> Arc<dyn Broker> {
        match self {
            Engine::Memory(b, _) => b.clone(),
            Engine::Redis(b, _) => b.clone(),
            Engine::Nats(b, _) => b.clone(),
        }
    }

    fn presence(&self) -> Arc<dyn PresenceStore> {
        match self {
            Engine::Memory(_, p) => p.clone(),
            Engine::Redis(_, p) => p.clone(),
            Engine::Nats(_, p) => p.clone(),
        }
    }

    /// The engine's control plane (cluster commands, announcements, kept revocations, connection
    /// counts); a single memory node has none.
    fn control_plane(&self) -> Option<Arc<dyn ControlPlane>> {
        match self {
            Engine::Memory(..) => None,
            Engine::Redis(b, _) => Some(b.clone()),
            Engine::Nats(b, _) => Some(b.clone()),
        }
    }

    /// Cluster commands and announcements go through Redis or NATS.
    fn join_cluster(&self, node: &Arc<Node>) {
        if let Some(plane) = self.control_plane() {
            plane.set_control_handler(Arc::new(Arc::downgrade(node)));
            node.set_control_bus(plane);
        }
    }
}

fn redacted_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("redis://<redacted>@{host}"),
        None => url.to_owned(),
    }
}

/// Announce this node and its load to the cluster every 2 s (and count the cluster's nodes for
/// `/metrics`).
async fn announce(
    bus: Arc<dyn herald_core::cluster::NodeRegistry>,
    id: String,
    addr: SocketAddr,
    handle: herald_server::Handle,
) {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let me = herald_core::cluster::NodeInfo {
            id: id.clone(),
            address: addr.to_string(),
            connections: handle.connections() as u64,
            uptime_ms: started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            updated_ms: herald_core::publication::now_ms(),
            load: handle.load(),
        };
        if let Err(e) = bus.announce(&me).await {
            tracing::debug!(error = %e, "cannot announce this node");
            continue;
        }
        if let Ok(nodes) = bus.nodes().await {
            metrics::gauge!("herald_cluster_nodes").set(nodes.len() as f64);
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { args, log_format } => {
            init_logs(&log_format);
            serve(args).await
        }
        Command::CheckConfig { args } => {
            init_logs("text");
            config::load(&sources(&args)).and_then(|c| {
                print!("{}", c.to_toml()?);
                eprintln!("configuration is valid");
                Ok(())
            })
        }
        Command::Token { args, mint } => config::load(&sources(&args)).and_then(|c| {
            println!("{}", token::mint(&c.auth, &mint)?);
            Ok(())
        }),
        Command::Sub {
            conn,
            channels,
            count,
            duration,
        } => tools::sub(&conn, &channels, count, duration).await,
        Command::Pub {
            conn,
            channel,
            data,
            api_key: Some(key),
        } => tools::publish_http(&conn, &key, &channel, &data).await,
        Command::Pub {
            conn,
            channel,
            data,
            api_key: None,
        } => tools::publish(&conn, &channel, &data).await,
        Command::Send { conn, file } => tools::send(&conn, &file).await,
        Command::Call { conn, method, data } => tools::call(&conn, &method, &data).await,
        Command::Bench { scenario } => bench::run(scenario).await,
        Command::Presence { conn, channel } => tools::presence(&conn, &channel).await,
        Command::History {
            conn,
            channel,
            limit,
            reverse,
        } => tools::history(&conn, &channel, limit, reverse).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

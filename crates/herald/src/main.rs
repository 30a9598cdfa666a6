//! The `herald` binary: command line, configuration loading and wiring.

mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_core::memory::{MemoryBroker, MemoryPresence};
use herald_core::{Heartbeat, Node};
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

async fn serve(args: ConfigArgs) -> anyhow::Result<()> {
    let config = config::load(&sources(&args))?;
    if args.dev {
        tracing::warn!(
            "development mode: anonymous clients may publish everywhere and /echo is on; never expose this"
        );
    }
    let broker = Arc::new(MemoryBroker::new());
    let heartbeat = Heartbeat {
        ping_interval_ms: config.connection.ping_interval.as_millis() as u64,
        pong_timeout_ms: config.connection.pong_timeout.as_millis() as u64,
    };
    let node = Node::new(
        config.engine(),
        broker.clone(),
        Arc::new(MemoryPresence::new()),
        heartbeat,
    );
    let server = Server::bind(config.server.clone(), config.connection.clone(), node)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = server.local_addr()?;
    println!("herald listening on http://{addr} (WebSocket: ws://{addr}/ws)");
    tracing::info!(%addr, "listening");

    let token = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: closing connections");
        token.cancel();
    });
    let sweeper = broker.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    });
    server.run().await?;
    tracing::info!("stopped");
    Ok(())
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
        Command::CheckConfig { args } => config::load(&sources(&args)).and_then(|c| {
            print!("{}", c.to_toml()?);
            eprintln!("configuration is valid");
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

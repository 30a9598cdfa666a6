//! Transport configuration (the `[server]` and `[connection]` sections).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

/// `[server]`: listener and node-wide limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most concurrent WebSocket connections on this node; more are closed with 4002.
    pub max_connections: usize,
    /// On SIGTERM/SIGINT, how long to flush queues before closing anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Upper bound of the random `reconnect_after_ms` hint sent on shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_reconnect_jitter: Duration,
    /// Origins browsers may connect from (`https://app.example.com`, `https://*.example.com`,
    /// `*` = any). Empty = same origin only (the `Origin` host must equal the `Host` header).
    /// A disallowed `Origin` gets HTTP 403 before the upgrade.
    #[serde(deserialize_with = "herald_core::config::list")]
    pub allowed_origins: Vec<String>,
    /// Host names this server answers to (`chat.example.com`, `*.example.com`; port ignored);
    /// other `Host` headers get 403 on every route (DNS rebinding defence). Empty = on a loopback
    /// `listen` address only loopback names (`localhost`, `127.0.0.1`, `[::1]`), elsewhere any.
    #[serde(deserialize_with = "herald_core::config::list")]
    pub allowed_hosts: Vec<String>,
    /// Accept handshakes without an `Origin` header (non-browser clients).
    pub allow_missing_origin: bool,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For`/`Forwarded` headers are
    /// believed when finding the client IP. Empty = the TCP peer is the client.
    #[serde(deserialize_with = "herald_core::config::list")]
    pub trusted_proxies: Vec<IpNet>,
    /// Time a client has to send a whole HTTP request head (also the idle time allowed between
    /// requests on a kept-alive connection); then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time to read a whole HTTP request (its body included) and answer it; then `408`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most HTTP connections on this node that are not WebSockets (handshakes in progress,
    /// kept-alive API connections); more are answered 503 and closed (0 = unlimited).
    pub max_http_connections: usize,
    /// The same per client IP (the TCP peer; `trusted_proxies` are exempt) (0 = unlimited).
    pub max_http_connections_per_ip: usize,
    /// Give free memory back to the operating system after floods of connections or sessions
    /// ended (a purge of every jemalloc arena; the `herald` binary does it, without waiting for
    /// the allocator's one-second decay): at most once per interval, only
    /// after at least 256 connections + waiting sessions, and a quarter of the peak, went away.
    /// 0 = never.
    #[serde(with = "humantime_serde")]
    pub memory_trim_interval: Duration,
    /// Serve `/echo`, a plain WebSocket echo endpoint for conformance tests (Autobahn). Set from
    /// the configuration file's `[debug] echo`, not from `[server]`.
    #[serde(skip)]
    pub echo: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_connections: 10_000,
            shutdown_timeout: Duration::from_secs(10),
            shutdown_reconnect_jitter: Duration::from_secs(5),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_missing_origin: true,
            trusted_proxies: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_http_connections: 4096,
            max_http_connections_per_ip: 64,
            memory_trim_interval: Duration::from_secs(10),
            echo: false,
        }
    }
}

/// `[connection]`: per-connection transport settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Rotate connections that lived this long (0 = never): each gets a lifetime up to 10 %
    /// shorter (jitter, so connections made together do not all rotate together), then the
    /// `disconnect` advisory and close 4005; its session waits for `resume` like after a dropped
    /// socket, so the client resumes on a new connection with nothing lost or repeated and no
    /// `leave`/`join`. Checked when the heartbeat wheel visits the connection (up to one
    /// `ping_interval` late). WebSocket connections only.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Interval of server WebSocket pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Close connections that send nothing (no pong) within this time after a ping (4000).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Close connections whose socket accepts no bytes for this long (4003).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Largest inbound message (after reassembling fragments); larger ones close with 1009.
    pub max_message_size: usize,
    /// Most frames one inbound message may be split into; more close with 1008 (0 = unlimited).
    pub max_fragments: u32,
    /// Sustained inbound frames per second of any kind (data, continuation, ping, pong); a
    /// connection that keeps exceeding it (after `frames_burst`) is closed with 1008
    /// (0 = unlimited). Commands are limited separately by `limits.commands_per_second`.
    pub frames_per_second: u32,
    /// Inbound frames allowed in a burst above `frames_per_second`.
    pub frames_burst: u32,
    /// Negotiate permessage-deflate (RFC 7692) with WebSocket clients that offer it: compressed
    /// inbound messages are accepted (inflated under `max_message_size`), and publications of
    /// namespaces with `compression = true` go out compressed, once per publication.
    pub compression: bool,
    /// Publications whose message is smaller than this many bytes go out uncompressed.
    pub compression_threshold: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_lifetime: Duration::ZERO,
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            max_fragments: 128,
            frames_per_second: 1000,
            frames_burst: 2000,
            compression: false,
            compression_threshold: 256,
        }
    }
}

impl ConnectionConfig {
    /// The limits of a `/ws` connection's reader.
    pub fn read_limits(&self) -> crate::reader::ReadLimits {
        crate::reader::ReadLimits {
            max_message_size: self.max_message_size,
            max_fragments: self.max_fragments,
            frames_per_second: self.frames_per_second,
            frames_burst: self.frames_burst,
        }
    }

    /// Check the values; a human message for the first problem.
    pub fn validate(&self) -> Result<(), herald_core::config::ConfigError> {
        self.check().map_err(herald_core::config::ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        if self.ping_interval.is_zero()
            || self.pong_timeout.is_zero()
            || self.write_timeout.is_zero()
        {
            return Err(
                "connection.ping_interval, pong_timeout and write_timeout must be > 0".into(),
            );
        }
        if self.max_message_size < 128 {
            return Err("connection.max_message_size must be at least 128 bytes".into());
        }
        // The reader keeps its offsets as `u32` (they are in every idle connection's task).
        if self.max_message_size > 1 << 30 {
            return Err("connection.max_message_size must be at most 1 GiB".into());
        }
        Ok(())
    }
}

/// `[tls]`: serve `wss://` and `https://` directly (rustls). Both files are PEM; they are
/// re-read on SIGHUP and when their modification time changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (leaf first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }

    /// Both files or neither.
    pub fn validate(&self) -> Result<(), herald_core::config::ConfigError> {
        self.check().map_err(herald_core::config::ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        Ok(())
    }
}

/// `[http]`: the HTTP transports (SSE, HTTP streaming, long-polling) for clients whose network
/// blocks WebSockets (docs/protocol.md §10). Their sessions count against the same connection
/// limits as WebSockets and follow the same auth, Origin, rate and size rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Serve `/http/*`. Off = those paths answer 404.
    pub enabled: bool,
    /// How long a long-poll waits for something to send before answering with an empty batch.
    /// Must be shorter than `server.request_timeout`.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// A long-polling session with no poll open for this long has lost its client: it is
    /// disconnected (and kept for `resume` like a dropped WebSocket).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Requests (polls and command POSTs) one session may make per second, sustained; beyond
    /// `requests_burst` they are answered 429.
    pub requests_per_second: u32,
    /// Requests allowed in a burst above `requests_per_second`.
    pub requests_burst: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            poll_timeout: Duration::from_secs(25),
            session_timeout: Duration::from_secs(10),
            requests_per_second: 20,
            requests_burst: 40,
        }
    }
}

impl HttpConfig {
    /// Check the values against the server's request timeout.
    pub fn validate(&self, server: &ServerConfig) -> Result<(), herald_core::config::ConfigError> {
        let err = |m: &str| Err(herald_core::config::ConfigError(m.to_owned()));
        if self.poll_timeout.is_zero() || self.session_timeout.is_zero() {
            return err("http.poll_timeout and http.session_timeout must be > 0");
        }
        if self.poll_timeout >= server.request_timeout {
            return err("http.poll_timeout must be shorter than server.request_timeout");
        }
        if self.requests_per_second == 0 {
            return err("http.requests_per_second must be > 0");
        }
        Ok(())
    }
}

/// `[admin]`: the admin web UI and its API at `/admin` (docs/operations.md). Off unless `secret`
/// is set; `--dev` does not turn it on.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The secret an operator logs in with (at least 16 bytes). Unset = no `/admin` (404).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Most admin sessions at once; a login beyond it ends the oldest session.
    pub max_sessions: usize,
    /// Failed logins one client IP may make per `login_window`; beyond, every login from that
    /// IP is answered 429 until the window ends.
    pub max_failed_logins: u32,
    /// The window of `max_failed_logins`.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("session_ttl", &self.session_ttl)
            .field("max_sessions", &self.max_sessions)
            .field("max_failed_logins", &self.max_failed_logins)
            .field("login_window", &self.login_window)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            secret: None,
            session_ttl: Duration::from_secs(8 * 3600),
            max_sessions: 32,
            max_failed_logins: 5,
            login_window: Duration::from_secs(60),
        }
    }
}

impl AdminConfig {
    /// Whether `/admin` is served.
    pub fn enabled(&self) -> bool {
        self.secret.is_some()
    }

    /// Check the values.
    pub fn validate(&self) -> Result<(), herald_core::config::ConfigError> {
        let err = |m: &str| Err(herald_core::config::ConfigError(m.to_owned()));
        if self.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return err("admin.secret must be at least 16 bytes");
        }
        if self.session_ttl.is_zero() || self.login_window.is_zero() {
            return err("admin.session_ttl and admin.login_window must be > 0");
        }
        if self.max_sessions == 0 || self.max_failed_logins == 0 {
            return err("admin.max_sessions and admin.max_failed_logins must be > 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding (issue 14): the reader's offsets are `u32`; a message size past a few GiB
    /// would wrap them. The bound is refused at startup instead.
    #[test]
    fn max_message_size_is_bounded_both_ways() {
        let with = |n: usize| ConnectionConfig {
            max_message_size: n,
            ..Default::default()
        };
        assert!(with(64 * 1024).validate().is_ok());
        assert!(with(1 << 30).validate().is_ok());
        assert!(with(100).validate().is_err());
        assert!(with((1 << 30) + 1).validate().is_err());
    }
}

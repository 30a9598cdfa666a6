//! Engine configuration: namespaces and per-session limits.
//!
//! Every key is documented in `docs/configuration.md`; defaults here are the built-in defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::de::{ConfigError, list};

/// What to do when a subscriber's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Close the connection with 4001; the client reconnects and recovers from history.
    Disconnect,
    /// Drop the oldest queued publications to make room (counted; clients see offset gaps).
    DropOldest,
    /// Keep only the newest queued publication per channel (conflation), then drop oldest.
    Latest,
}

/// How a namespace's subscriptions are delivered (`docs/protocol.md` §8a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Each publication is written once per socket; a client recovers losses by offset.
    #[default]
    AtMostOnce,
    /// Each subscription acknowledges what it processed; unacknowledged publications are sent
    /// again, and at most `ack_window` are in flight.
    AtLeastOnce,
}

/// A namespace's at-least-once settings (`NamespaceOptions::acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckSettings {
    /// Wait before the first redelivery (doubling per attempt, ×16 at most).
    pub timeout: Duration,
    /// Most publications in flight per subscription.
    pub window: usize,
    /// Sends of one publication before it is given up.
    pub max_attempts: u32,
}

impl AckSettings {
    /// The wait after the `attempts`-th send.
    pub(crate) fn wait(&self, attempts: u32) -> Duration {
        self.timeout * (1u32 << attempts.saturating_sub(1).min(4))
    }
}

/// Options of one namespace (the part of a channel name before `:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceOptions {
    /// Publications kept per channel for history and recovery (0 = no history).
    pub history_size: usize,
    /// How long publications stay in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Whether `presence`/`presence_stats` are available.
    pub presence: bool,
    /// Whether subscribers receive `join`/`leave` pushes.
    pub join_leave: bool,
    /// Whether clients without a user id (no token, or an empty `sub`) may use this namespace.
    pub anonymous: bool,
    /// Whether every admitted client may subscribe (and read history/presence). When false, a
    /// token `channels` pattern or a channel token is needed.
    pub allow_subscribe: bool,
    /// Whether every admitted client may publish. When false, a token `publish` pattern is needed.
    pub allow_publish: bool,
    /// Private channels: subscribing needs a channel token, whatever the claims say.
    pub private: bool,
    /// The backend's subscribe proxy decides subscribes (instead of `allow_subscribe`/claims;
    /// channel tokens and user-limited channels still apply).
    pub subscribe_proxy: bool,
    /// The backend's publish proxy decides publishes (instead of `allow_publish`/claims) and may
    /// replace the data.
    pub publish_proxy: bool,
    /// Largest number of subscribers per channel on this node (0 = unlimited).
    pub max_subscribers: usize,
    /// Slow consumer policy.
    pub slow_consumer: SlowConsumerPolicy,
    /// `at_most_once` (default) or `at_least_once` (acknowledged, redelivered; needs history and
    /// `slow_consumer = "disconnect"`).
    pub delivery: Delivery,
    /// At-least-once: how long the oldest unacknowledged publication waits before the
    /// subscription's unacknowledged publications are sent again (doubling per attempt, ×16 at
    /// most).
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// At-least-once: most unacknowledged publications in flight per subscription (the rest are
    /// held back in history until acks make room).
    pub ack_window: u32,
    /// At-least-once: sends of one publication (the first included) before it is given up as a
    /// dead letter and the client gets a `gap`.
    pub ack_max_attempts: u32,
    /// Publications go out compressed (permessage-deflate, above
    /// `connection.compression_threshold`) to JSON connections that negotiated it.
    pub compression: bool,
    /// With `compression`: MessagePack connections get them compressed too (off by default:
    /// binary data is often compressed already).
    pub compress_binary: bool,
    /// `fossil`: JSON subscribers get each publication as a Fossil delta against the previous
    /// one of the channel (computed once per publication and shared), after a full first
    /// message; `off` (default).
    pub delta: DeltaFormat,
}

/// Delta updates of a namespace (`docs/protocol.md` §5 `message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaFormat {
    /// Every message whole.
    #[default]
    Off,
    /// Fossil deltas (the format of the Fossil SCM; checksummed).
    Fossil,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            history_size: 0,
            history_ttl: Duration::from_secs(0),
            presence: false,
            join_leave: false,
            anonymous: false,
            allow_subscribe: false,
            allow_publish: false,
            private: false,
            subscribe_proxy: false,
            publish_proxy: false,
            max_subscribers: 0,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            delivery: Delivery::AtMostOnce,
            ack_timeout: Duration::from_secs(5),
            ack_window: 128,
            ack_max_attempts: 5,
            compression: false,
            compress_binary: false,
            delta: DeltaFormat::Off,
        }
    }
}

impl NamespaceOptions {
    /// The permissive options of `herald serve --dev`.
    pub fn dev() -> Self {
        NamespaceOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(600),
            presence: true,
            join_leave: true,
            anonymous: true,
            allow_subscribe: true,
            allow_publish: true,
            private: false,
            subscribe_proxy: false,
            publish_proxy: false,
            max_subscribers: 0,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            delivery: Delivery::AtMostOnce,
            ack_timeout: Duration::from_secs(5),
            ack_window: 128,
            ack_max_attempts: 5,
            compression: true,
            compress_binary: false,
            delta: DeltaFormat::Off,
        }
    }

    /// What the permission rules read (`auth::permissions`).
    pub fn rules(&self) -> crate::auth::permissions::NamespaceRules {
        crate::auth::permissions::NamespaceRules {
            anonymous: self.anonymous,
            allow_subscribe: self.allow_subscribe,
            allow_publish: self.allow_publish,
            private: self.private,
        }
    }

    /// Whether history is kept.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// The at-least-once settings, when this namespace acknowledges deliveries.
    pub fn acks(&self) -> Option<AckSettings> {
        (self.delivery == Delivery::AtLeastOnce).then_some(AckSettings {
            timeout: self.ack_timeout,
            window: self.ack_window as usize,
            max_attempts: self.ack_max_attempts,
        })
    }

    fn check(&self, name: &str, session: &SessionConfig) -> Result<(), String> {
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return Err(format!("{name}: history_size > 0 needs history_ttl > 0"));
        }
        if self.delta != DeltaFormat::Off {
            if self.slow_consumer != SlowConsumerPolicy::Disconnect {
                return Err(format!(
                    "{name}: delta needs slow_consumer = \"disconnect\" (a dropped message breaks the chain)"
                ));
            }
            if self.delivery == Delivery::AtLeastOnce {
                return Err(format!(
                    "{name}: delta and delivery = \"at_least_once\" do not go together yet"
                ));
            }
        }
        if self.delivery == Delivery::AtLeastOnce {
            if !self.history_enabled() {
                return Err(format!(
                    "{name}: delivery = \"at_least_once\" needs history (history_size and history_ttl)"
                ));
            }
            if self.slow_consumer != SlowConsumerPolicy::Disconnect {
                return Err(format!(
                    "{name}: delivery = \"at_least_once\" needs slow_consumer = \"disconnect\" (a publication in flight is never dropped)"
                ));
            }
            if self.ack_window == 0 || self.ack_window as usize > session.queue_max_messages {
                return Err(format!(
                    "{name}: ack_window must be 1..=session.queue_max_messages"
                ));
            }
            if self.ack_timeout < Duration::from_millis(50) {
                return Err(format!("{name}: ack_timeout must be at least 50ms"));
            }
            if !(1..=100).contains(&self.ack_max_attempts) {
                return Err(format!("{name}: ack_max_attempts must be 1..=100"));
            }
        }
        Ok(())
    }
}

/// Per-connection and session limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Most channels one connection may subscribe to.
    pub max_channels: usize,
    /// Most frames waiting in one connection's outbound queue.
    pub queue_max_messages: usize,
    /// Most bytes waiting in one connection's outbound queue.
    pub queue_max_bytes: usize,
    /// Protocol violations (malformed frames, bad payloads) tolerated before closing with 4500.
    pub max_violations: u32,
    /// How long a session survives an unexpected disconnect, waiting for `resume`.
    #[serde(with = "humantime_serde")]
    pub resume_grace: Duration,
    /// Most sessions waiting for `resume` on this node; beyond, the one waiting longest is ended
    /// (its resume then gets `session_not_found`) (0 = unlimited).
    pub max_waiting_sessions: usize,
    /// Window in which publishes with the same idempotency key are applied once.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Largest `data` accepted in a client publish, in bytes.
    pub max_data_size: usize,
    /// How long an `rpc` may take before the client gets `timeout`.
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    /// `rpc` calls one connection may have in flight (more get `rate_limited`).
    pub rpc_max_inflight: usize,
    /// Lifecycle events kept for webhooks and `events` readers.
    pub event_log_size: usize,
    /// Dead letters kept for `dead_letters` readers.
    pub dead_letter_size: usize,
    /// Dead letters one connection may add per minute (bad frames, unknown types); more are
    /// counted in `herald_dead_letters_total` but not kept (0 = unlimited).
    pub dead_letters_per_connection: u32,
    /// Subscription lifecycle events (subscribe, unsubscribe, channel occupied/vacated) one
    /// connection may add to the event log per minute; more are counted in
    /// `herald_journal_suppressed_total` but not kept. Connect/disconnect are always kept
    /// (0 = unlimited).
    pub events_per_connection: u32,
    /// Dead letters and subscription events all connections of one client IP may add per second
    /// together (burst: 60 × this), on top of the per-connection quotas: churning connections
    /// cannot flush the journals either (0 = unlimited).
    pub journal_per_ip_per_second: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_channels: 128,
            queue_max_messages: 1024,
            queue_max_bytes: 1 << 20,
            max_violations: 10,
            resume_grace: Duration::from_secs(30),
            max_waiting_sessions: 10_000,
            idempotency_window: Duration::from_secs(120),
            max_data_size: 60 * 1024,
            rpc_timeout: Duration::from_secs(5),
            rpc_max_inflight: 16,
            event_log_size: 10_000,
            dead_letter_size: 1000,
            dead_letters_per_connection: 10,
            events_per_connection: 120,
            journal_per_ip_per_second: 2,
        }
    }
}

/// `[limits]`: rate and connection limits (0 = unlimited).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained commands per second per connection (token bucket refill rate).
    pub commands_per_second: u32,
    /// Burst of commands per connection (bucket size).
    pub commands_burst: u32,
    /// Consecutive rate-limited commands after which the connection is closed with 4004.
    pub rate_limited_close_after: u32,
    /// Sustained client publishes per second per user (anonymous: per connection).
    pub publish_per_second_per_user: u32,
    /// Burst of publishes per user.
    pub publish_burst_per_user: u32,
    /// New connections per second per client IP (HTTP 429 beyond).
    pub connect_per_second_per_ip: u32,
    /// Burst of new connections per client IP.
    pub connect_burst_per_ip: u32,
    /// New connections per second on this node, whoever makes them (0 = unlimited): reconnect
    /// storm control. Beyond it a WebSocket is upgraded and closed at once with 1013 and a
    /// `disconnect` advisory whose `reconnect_after_ms` is random in 1 s ..
    /// `connect_retry_jitter`; an HTTP transport gets 503 with `Retry-After`. No token is
    /// checked and no session made for it.
    pub connect_per_second: u32,
    /// Burst of the above (at least `connect_per_second`).
    pub connect_burst: u32,
    /// Upper bound of the random retry hint given to connections refused by
    /// `connect_per_second` (at least 1 s).
    #[serde(with = "humantime_serde")]
    pub connect_retry_jitter: std::time::Duration,
    /// Open connections per client IP (HTTP 429 beyond).
    pub max_connections_per_ip: usize,
    /// Open connections per user (HTTP 429 at the handshake, or close 4002 after `auth`).
    pub max_connections_per_user: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            commands_per_second: 100,
            commands_burst: 200,
            rate_limited_close_after: 100,
            publish_per_second_per_user: 50,
            publish_burst_per_user: 100,
            connect_per_second_per_ip: 20,
            connect_burst_per_ip: 100,
            connect_per_second: 0,
            connect_burst: 0,
            connect_retry_jitter: std::time::Duration::from_secs(10),
            max_connections_per_ip: 1000,
            max_connections_per_user: 100,
        }
    }
}

impl LimitsConfig {
    /// No limits at all (tests, benchmarks).
    pub fn unlimited() -> Self {
        LimitsConfig {
            commands_per_second: 0,
            commands_burst: 0,
            rate_limited_close_after: 0,
            publish_per_second_per_user: 0,
            publish_burst_per_user: 0,
            connect_per_second_per_ip: 0,
            connect_burst_per_ip: 0,
            connect_per_second: 0,
            connect_burst: 0,
            connect_retry_jitter: std::time::Duration::from_secs(10),
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
        }
    }
}

/// Everything the engine needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Session limits.
    pub session: SessionConfig,
    /// Options for channels without a namespace and for unknown namespaces; when absent, such
    /// channels are rejected with `unknown_namespace`.
    pub default_namespace: Option<NamespaceOptions>,
    /// Named namespaces.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// Authentication.
    pub auth: crate::auth::AuthConfig,
    /// Rate and connection limits.
    pub limits: LimitsConfig,
}

impl EngineConfig {
    /// The options governing a channel's namespace, if any.
    pub fn namespace(&self, ns: &str) -> Option<&NamespaceOptions> {
        self.namespaces.get(ns).or(self.default_namespace.as_ref())
    }

    /// What goes out compressed on connections that negotiated permessage-deflate: the
    /// namespaces' `compression`/`compress_binary`, above `threshold` bytes.
    pub fn deflate_policy(&self, threshold: usize) -> crate::compression::DeflatePolicy {
        let rule = |ns: &NamespaceOptions| (ns.compression, ns.compress_binary);
        crate::compression::DeflatePolicy::new(
            self.namespaces
                .iter()
                .map(|(n, ns)| (n.clone(), rule(ns)))
                .collect(),
            self.default_namespace.as_ref().map(rule),
            threshold,
        )
    }

    /// Check cross-field rules; returns a human message for the first problem.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        self.check().map_err(crate::config::ConfigError)
    }

    fn check(&self) -> Result<(), String> {
        let s = &self.session;
        if s.queue_max_messages == 0 || s.queue_max_bytes < 1024 {
            return Err(
                "session.queue_max_messages must be > 0 and queue_max_bytes >= 1024".into(),
            );
        }
        self.auth.check()?;
        if s.max_channels == 0 {
            return Err("session.max_channels must be > 0".into());
        }
        for (name, ns) in &self.namespaces {
            if name.is_empty()
                || herald_proto::channel::validate_channel(name).is_err()
                || name.contains(':')
            {
                return Err(format!("namespace name {name:?} is invalid"));
            }
            ns.check(&format!("namespaces.{name}"), s)?;
        }
        if let Some(ns) = &self.default_namespace {
            ns.check("default_namespace", s)?;
        }
        Ok(())
    }
}

//! Configuration loading in stages: built-in defaults → `--dev` preset → config file →
//! `HERALD_*` environment variables → command-line flags; then validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use herald_core::{AuthConfig, EngineConfig, LimitsConfig, NamespaceOptions, SessionConfig};
use herald_server::{
    AdminConfig, ChannelProxyConfig, ConnectionConfig, HttpConfig, RpcProxyConfig, ServerConfig,
    TlsConfig, WebhookConfig,
};

use serde::{Deserialize, Serialize};

/// `default_namespace = false` disables it; a table sets its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DefaultNamespace {
    /// `true`/`false`.
    Flag(bool),
    /// Options.
    Options(NamespaceOptions),
}

/// `[debug]`: development and conformance aids, all off by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Serve `/echo`, a plain WebSocket echo endpoint (for the Autobahn conformance suite).
    pub echo: bool,
    /// Serve the demo chat at `/` with a token endpoint that signs tokens for any user name
    /// (needs `auth.hmac_secret`; development only).
    pub demo: bool,
}

/// Which engine holds channels, history and presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Embedded, in memory: one node.
    #[default]
    Memory,
    /// Redis (`[redis]`): many nodes share channels, history, presence and commands.
    Redis,
    /// NATS (`[nats]`), with JetStream for history: many nodes share channels and commands.
    Nats,
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// `memory` (default), `redis` or `nats`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[connection]`.
    pub connection: ConnectionConfig,
    /// `[session]`.
    pub session: SessionConfig,
    /// `[default_namespace]`.
    pub default_namespace: DefaultNamespace,
    /// `[namespaces.NAME]`.
    pub namespaces: BTreeMap<String, NamespaceOptions>,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[rpc]`.
    pub rpc: RpcProxyConfig,
    /// `[webhook]`.
    pub webhook: WebhookConfig,
    /// `[proxy]`.
    pub proxy: ChannelProxyConfig,
    /// `[debug]`.
    pub debug: DebugConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[engine]`.
    #[serde(rename = "engine")]
    pub backend: EngineSection,
    /// `[redis]`.
    pub redis: herald_redis::RedisConfig,
    /// `[nats]`.
    pub nats: herald_nats::NatsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            connection: ConnectionConfig::default(),
            session: SessionConfig::default(),
            default_namespace: DefaultNamespace::Options(NamespaceOptions::default()),
            namespaces: BTreeMap::new(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            rpc: RpcProxyConfig::default(),
            webhook: WebhookConfig::default(),
            proxy: ChannelProxyConfig::default(),
            debug: DebugConfig::default(),
            admin: AdminConfig::default(),
            backend: EngineSection::default(),
            redis: herald_redis::RedisConfig::default(),
            nats: herald_nats::NatsConfig::default(),
        }
    }
}

impl Config {
    /// The engine's part.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            session: self.session.clone(),
            default_namespace: match &self.default_namespace {
                DefaultNamespace::Flag(false) => None,
                DefaultNamespace::Flag(true) => Some(NamespaceOptions::default()),
                DefaultNamespace::Options(o) => Some(o.clone()),
            },
            namespaces: self.namespaces.clone(),
            auth: self.auth.clone(),
            limits: self.limits.clone(),
        }
    }

    /// Render as TOML (for `check-config`), with secrets redacted.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        let redacted = || "<redacted>".to_owned();
        if shown.auth.hmac_secret.is_some() {
            shown.auth.hmac_secret = Some(redacted());
        }
        shown.auth.api_keys.iter_mut().for_each(|k| *k = redacted());
        if shown.admin.secret.is_some() {
            shown.admin.secret = Some(redacted());
        }
        if shown.webhook.secret.is_some() {
            shown.webhook.secret = Some(redacted());
        }
        // redis://user:password@host → redis://<redacted>@host
        if let Some((_, host)) = shown.redis.url.rsplit_once('@') {
            let scheme = shown.redis.url.split("://").next().unwrap_or("redis");
            shown.redis.url = format!("{scheme}://<redacted>@{host}");
        }
        Ok(toml::to_string_pretty(&shown)?)
    }
}

/// Where the configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources<'a> {
    /// `--config FILE`.
    pub file: Option<&'a Path>,
    /// `--dev`.
    pub dev: bool,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
}

fn dev_preset() -> Config {
    Config {
        default_namespace: DefaultNamespace::Options(NamespaceOptions::dev()),
        debug: DebugConfig {
            echo: true,
            demo: true,
        },
        connection: herald_server::ConnectionConfig {
            compression: true,
            ..Default::default()
        },

        ..Default::default()
    }
}

/// The keys the binary reads itself (not configuration).
const NOT_CONFIG: [&str; 4] = ["config", "listen", "log", "log_format"];

/// `HERALD_*` variables, minus the ones found not to name a configuration key.
fn env(unknown: &[String]) -> Env {
    let unknown = unknown.to_vec();
    Env::prefixed("HERALD_")
        .split("__")
        .ignore(&NOT_CONFIG)
        .filter(move |k| !unknown.iter().any(|u| k.as_str().eq_ignore_ascii_case(u)))
}

/// `--dev` makes the configured namespaces usable (before the variables, which still win).
fn dev_namespaces(config: &mut Config) {
    for ns in config.namespaces.values_mut() {
        let dev = NamespaceOptions::dev();
        ns.presence = true;
        ns.join_leave = true;
        ns.anonymous = true;
        ns.allow_subscribe = true;
        ns.allow_publish = true;
        if ns.history_size == 0 {
            ns.history_size = dev.history_size;
            ns.history_ttl = dev.history_ttl;
        }
    }
    // The demo chat's typing indicator: only the newest state matters.
    config
        .namespaces
        .entry("typing".to_owned())
        .or_insert_with(|| NamespaceOptions {
            history_size: 0,
            history_ttl: std::time::Duration::ZERO,
            presence: false,
            join_leave: false,
            slow_consumer: herald_core::SlowConsumerPolicy::Latest,
            ..NamespaceOptions::dev()
        });
}

fn invalid(e: figment::Error) -> anyhow::Error {
    let msgs: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
    anyhow::anyhow!("invalid configuration: {}", msgs.join("; "))
}

/// Defaults → `--dev` preset → file → (`--dev` namespaces) → variables.
fn layers(src: &Sources<'_>, unknown: &[String]) -> anyhow::Result<Figment> {
    let base = if src.dev {
        dev_preset()
    } else {
        Config::default()
    };
    let mut fig = Figment::from(Serialized::defaults(base));
    if let Some(path) = src.file {
        if !path.is_file() {
            bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    if src.dev {
        let mut c: Config = fig.extract().map_err(invalid)?;
        dev_namespaces(&mut c);
        fig = Figment::from(Serialized::defaults(c));
    }
    Ok(fig.merge(env(unknown)))
}

/// The configuration keys named by variables that match none (`HERALD_BIN` → `bin`), if that
/// is all that is wrong.
fn unknown_env_keys(e: &figment::Error) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for err in e.clone() {
        let from_env = err
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.contains("environment"));
        match &err.kind {
            // The path ends with the unknown field itself.
            figment::error::Kind::UnknownField(..) if from_env && !err.path.is_empty() => {
                keys.push(err.path.join("."));
            }
            _ => return None,
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// Load and validate the effective configuration. `HERALD_*` variables that name no
/// configuration key are ignored with a warning (a deploy script's `HERALD_BIN` must not stop the
/// server); unknown keys in the file are errors.
pub fn load(src: &Sources<'_>) -> anyhow::Result<Config> {
    let mut unknown: Vec<String> = Vec::new();
    let mut config: Config = loop {
        match layers(src, &unknown)?.extract() {
            Ok(c) => break c,
            Err(e) => match unknown_env_keys(&e) {
                Some(keys) if unknown.len() < 256 => unknown.extend(keys),
                _ => return Err(invalid(e)),
            },
        }
    };
    for key in &unknown {
        let var = format!("HERALD_{}", key.replace('.', "__").to_ascii_uppercase());
        tracing::warn!(variable = %var, "ignoring {var}: it names no configuration key (`{key}`)");
    }
    if let Some(addr) = src.listen {
        config.server.listen = addr;
    }
    config.server.echo = config.debug.echo;
    if src.dev && !config.server.listen.ip().is_loopback() {
        bail!(
            "--dev refuses to listen on non-loopback address {} (it allows anonymous publishing)",
            config.server.listen
        );
    }
    validate(&config).context("invalid configuration")?;
    Ok(config)
}

fn validate(c: &Config) -> anyhow::Result<()> {
    c.connection.validate()?;
    c.tls.validate()?;
    c.http.validate(&c.server)?;
    c.admin.validate()?;
    c.engine().validate()?;
    if c.backend.kind == EngineKind::Redis {
        c.redis.validate()?;
    }
    if c.backend.kind == EngineKind::Nats {
        c.nats.validate()?;
        if !c.nats.jetstream {
            let engine = c.engine();
            let with_history: Vec<String> = engine
                .namespaces
                .iter()
                .filter(|(_, ns)| ns.history_enabled())
                .map(|(name, _)| format!("namespaces.{name}"))
                .chain(
                    engine
                        .default_namespace
                        .filter(|ns| ns.history_enabled())
                        .map(|_| "default_namespace".to_owned()),
                )
                .collect();
            if !with_history.is_empty() {
                bail!(
                    "nats.jetstream = false keeps no history, but {} ask for it (set history_size = 0 there, or enable JetStream)",
                    with_history.join(", ")
                );
            }
        }
    }
    if c.server.max_connections == 0 {
        bail!("server.max_connections must be > 0");
    }
    if !c.connection.max_lifetime.is_zero() && c.session.resume_grace.is_zero() {
        bail!(
            "connection.max_lifetime rotates connections that resume their session, but session.resume_grace = 0 keeps no session to resume (every rotation would end it): set a grace period or turn rotation off"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct TempFile(std::path::PathBuf);

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("herald-test-{}-{n}.toml", std::process::id()));
        let mut f = std::fs::File::create(&p).expect("create");
        f.write_all(text.as_bytes()).expect("write");
        TempFile(p)
    }

    #[test]
    fn defaults_without_file() {
        let c = load(&Sources::default()).expect("load");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8000");
        assert!(c.engine().default_namespace.is_some());
    }

    #[test]
    fn file_values_and_errors() {
        let f = file(
            "[server]\nlisten = \"127.0.0.1:9001\"\n[namespaces.chat]\nhistory_size = 10\nhistory_ttl = \"1m\"\n",
        );
        let c = load(&Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .expect("load");
        assert_eq!(c.server.listen.port(), 9001);
        assert_eq!(c.namespaces["chat"].history_size, 10);

        let bad = file("[server]\nlisten = 5\n");
        let e = load(&Sources {
            file: Some(&bad.0),
            ..Default::default()
        })
        .expect_err("bad");
        assert!(e.to_string().contains("listen"), "{e}");

        let unknown = file("[server]\nlisen = \"x\"\n");
        assert!(
            load(&Sources {
                file: Some(&unknown.0),
                ..Default::default()
            })
            .is_err()
        );

        let missing = Path::new("/nonexistent/herald.toml");
        let e = load(&Sources {
            file: Some(missing),
            ..Default::default()
        })
        .expect_err("missing");
        assert!(e.to_string().contains("does not exist"));

        let off = file("default_namespace = false\n");
        let c = load(&Sources {
            file: Some(&off.0),
            ..Default::default()
        })
        .expect("load");
        assert!(c.engine().default_namespace.is_none());
    }

    #[test]
    fn nats_without_jetstream_refuses_namespaces_with_history() {
        let f = file(
            "[engine]\ntype = \"nats\"\n[nats]\njetstream = false\n[default_namespace]\nhistory_size = 0\n[namespaces.chat]\nhistory_size = 10\nhistory_ttl = \"1m\"\n[namespaces.live]\n",
        );
        let e = load(&Sources {
            file: Some(&f.0),
            ..Default::default()
        })
        .expect_err("history without JetStream");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("namespaces.chat") && !msg.contains("namespaces.live"),
            "{msg}"
        );
        let ok = file(
            "[engine]\ntype = \"nats\"\n[nats]\njetstream = false\n[default_namespace]\nhistory_size = 0\n",
        );
        load(&Sources {
            file: Some(&ok.0),
            ..Default::default()
        })
        .expect("no history anywhere is fine");
    }

    #[test]
    fn dev_refuses_public_address() {
        let addr: SocketAddr = "0.0.0.0:8000".parse().expect("addr");
        let e = load(&Sources {
            dev: true,
            listen: Some(addr),
            ..Default::default()
        })
        .expect_err("refuse");
        assert!(e.to_string().contains("non-loopback"));
        let c = load(&Sources {
            dev: true,
            ..Default::default()
        })
        .expect("dev");
        assert!(c.server.echo);
        assert!(
            c.engine()
                .default_namespace
                .is_some_and(|n| n.allow_publish && n.history_size == 100)
        );
    }

    #[test]
    fn admin_is_off_even_with_dev_and_on_with_a_secret() {
        let dev = load(&Sources {
            dev: true,
            ..Default::default()
        })
        .expect("dev");
        assert!(!dev.admin.enabled());
        let on = file("[admin]\nsecret = \"admin-secret-0123456789\"\nmax_sessions = 4\n");
        let c = load(&Sources {
            file: Some(&on.0),
            ..Default::default()
        })
        .expect("load");
        assert!(c.admin.enabled());
        assert_eq!(c.admin.max_sessions, 4);
        let shown = c.to_toml().expect("toml");
        assert!(!shown.contains("admin-secret-0123456789"), "{shown}");
        assert!(!format!("{:?}", c.admin).contains("admin-secret"));
        let short = file("[admin]\nsecret = \"short\"\n");
        let e = load(&Sources {
            file: Some(&short.0),
            ..Default::default()
        })
        .expect_err("short secret");
        assert!(format!("{e:#}").contains("admin.secret"), "{e:#}");
    }
}

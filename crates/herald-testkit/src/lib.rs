//! Test helpers shared by Herald's crates: finding the Redis and NATS servers the tests use, and
//! starting private ones on free ports. Under `CI=true` a missing server fails the test; elsewhere
//! the test is skipped with a printed reason.

#![forbid(unsafe_code)]

pub mod faults;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether this is a CI run (`CI=true`): nothing may be skipped.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (print why and return `None`) or, under CI, fail.
pub fn unavailable<T>(what: &str, why: impl std::fmt::Display) -> Option<T> {
    if ci() {
        panic!("CI=true: {what} is required: {why}");
    }
    eprintln!("SKIPPED: {what} is not available ({why})");
    None
}

fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

fn reachable(url: &str, what: &str) -> Option<String> {
    match std::net::TcpStream::connect(host_port(url)) {
        Ok(_) => Some(url.to_owned()),
        Err(e) => unavailable(&format!("{what} at {url}"), e),
    }
}

/// `$HERALD_TEST_REDIS_URL`, else the local Redis (`redis://127.0.0.1:6379`), when it answers.
pub fn redis_url() -> Option<String> {
    let url =
        std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    reachable(&url, "Redis")
}

/// `$HERALD_TEST_NATS_URL`, else the local NATS (`nats://127.0.0.1:4222`), when it answers.
pub fn nats_url() -> Option<String> {
    let url =
        std::env::var("HERALD_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    reachable(&url, "NATS")
}

/// A random-enough suffix for key prefixes and stream names.
pub fn unique() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(nanos);
    format!("{:08x}", h.finish() as u32)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server process of the test's own, killed on drop.
pub struct OwnServer {
    /// Its port.
    pub port: u16,
    program: &'static str,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    /// `redis-server` on `port` (0 = a free one), without persistence.
    pub async fn redis(port: u16) -> Option<OwnServer> {
        let port = if port == 0 { free_port() } else { port };
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        Self::start("redis-server", args, port).await
    }

    /// `nats-server` on `port` (0 = a free one), with JetStream when `jetstream`.
    pub async fn nats(port: u16, jetstream: bool, store: &std::path::Path) -> Option<OwnServer> {
        let port = if port == 0 { free_port() } else { port };
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", &port.to_string()]
            .map(str::to_owned)
            .to_vec();
        if jetstream {
            args.extend([
                "-js".to_owned(),
                "-sd".to_owned(),
                store.display().to_string(),
            ]);
        }
        Self::start("nats-server", args, port).await
    }

    async fn start(program: &'static str, args: Vec<String>, port: u16) -> Option<OwnServer> {
        let mut me = OwnServer {
            port,
            program,
            args,
            child: None,
        };
        if let Err(e) = me.spawn() {
            return unavailable(program, e);
        }
        me.wait_listening().await;
        Some(me)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_listening(&self) {
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} on port {} did not start", self.program, self.port);
    }

    /// Kill it (SIGKILL) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().expect("restart");
        self.wait_listening().await;
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        let scheme = if self.program == "redis-server" {
            "redis"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

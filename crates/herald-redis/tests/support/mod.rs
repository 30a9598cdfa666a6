//! Finding the Redis server the tests use, and starting private ones.
#![allow(dead_code)] // each test binary uses a part

use herald_redis::{RedisBroker, RedisConfig};

/// `$HERALD_TEST_REDIS_URL`, else the local server. `None` (with a printed reason) when it is not
/// reachable, except under `CI=true`, where a missing Redis fails the test.
pub async fn redis_config() -> Option<RedisConfig> {
    let url =
        std::env::var("HERALD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let cfg = RedisConfig {
        url: url.clone(),
        // A prefix of its own: runs never see each other's keys.
        prefix: format!("herald-test-{:08x}", rand::random::<u32>()),
        ..Default::default()
    };
    match RedisBroker::connect(cfg.clone()).await {
        Ok(_) => Some(cfg),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true: Redis is required at {url}: {e}")
        }
        Err(e) => {
            eprintln!(
                "SKIPPED: no Redis at {url} ({e}); set HERALD_TEST_REDIS_URL or start redis-server"
            );
            None
        }
    }
}

/// A `redis-server` of the test's own on a free port (for outage tests).
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Start one on `port` (0 = a free port) and wait until it answers. `None` (with a printed
    /// reason) when there is no `redis-server` binary, except under `CI=true`.
    pub async fn start(port: u16) -> Option<OwnRedis> {
        let port = if port == 0 {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        } else {
            port
        };
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true: redis-server is required: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot start redis-server ({e})");
                return None;
            }
        };
        let me = OwnRedis {
            port,
            child: Some(child),
        };
        let client = redis::Client::open(me.url()).expect("url");
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Some(me);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {port} did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stop it (SIGKILL) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

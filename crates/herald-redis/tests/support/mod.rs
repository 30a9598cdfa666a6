//! Finding the Redis server the tests use.

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

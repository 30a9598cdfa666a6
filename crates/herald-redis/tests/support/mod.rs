//! The Redis configuration the tests use.

use herald_redis::RedisConfig;

/// A config for the test Redis with a key prefix of its own (runs never see each other's keys);
/// `None` when there is no Redis (skipped, except under `CI=true`).
pub async fn redis_config() -> Option<RedisConfig> {
    Some(RedisConfig {
        url: herald_testkit::redis_url()?,
        prefix: format!("herald-test-{}", herald_testkit::unique()),
        ..Default::default()
    })
}

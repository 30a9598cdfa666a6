//! Keeps the verifier's JWKS keys fresh: reads `auth.jwks` (a file, or an `http://`/`https://`
//! URL) at startup and every `auth.jwks_refresh`. A failed refresh keeps the previous keys.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Verifier;
use tokio_util::sync::CancellationToken;

/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1 << 20;

/// Fetch a JWKS document from a file path or an http(s) URL.
pub async fn fetch(source: &str) -> Result<Vec<u8>, String> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return tokio::fs::read(source)
            .await
            .map_err(|e| format!("{source}: {e}"));
    }
    let r = crate::http_client::request(
        "GET",
        source,
        &[("accept", "application/json")],
        Vec::new(),
        MAX_JWKS,
        Duration::from_secs(10),
    )
    .await?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{source}: HTTP {}", r.status));
    }
    Ok(r.body)
}

/// Load once now (an error is returned: a startup failure), then refresh in the background.
pub async fn start(
    verifier: Arc<Verifier>,
    source: String,
    every: Duration,
    stop: CancellationToken,
) -> Result<usize, String> {
    let doc = fetch(&source).await?;
    let n = verifier.set_jwks(&doc).map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            match fetch(&source)
                .await
                .and_then(|d| verifier.set_jwks(&d).map_err(|e| e.to_string()))
            {
                Ok(n) => tracing::debug!(keys = n, "JWKS refreshed"),
                Err(e) => {
                    metrics::counter!("herald_jwks_refresh_failures_total").increment(1);
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the previous keys");
                }
            }
        }
    });
    Ok(n)
}

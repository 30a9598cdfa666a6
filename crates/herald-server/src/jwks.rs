//! Keeps the verifier's JWKS keys fresh: reads `auth.jwks` (a file, or an `http://`/`https://`
//! URL) at startup and every `auth.jwks_refresh`. A failed refresh keeps the previous keys.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Verifier;
use herald_core::auth::SetupError;
use tokio_util::sync::CancellationToken;

use crate::http_client::HttpError;

/// Why the JWKS keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The URL could not be fetched.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The server answered, but not with 2xx.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// Its status.
        status: u16,
    },
    /// The document is not a usable JWKS.
    #[error(transparent)]
    Keys(#[from] SetupError),
}

/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1 << 20;

/// Fetch a JWKS document from a file path or an http(s) URL.
pub async fn fetch(source: &str) -> Result<Vec<u8>, JwksError> {
    if !(source.starts_with("http://") || source.starts_with("https://")) {
        return tokio::fs::read(source).await.map_err(|e| JwksError::Read {
            path: source.to_owned(),
            source: e,
        });
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
        return Err(JwksError::Status {
            url: source.to_owned(),
            status: r.status,
        });
    }
    Ok(r.body)
}

/// Load once now (an error is returned: a startup failure), then refresh in the background.
pub async fn start(
    verifier: Arc<Verifier>,
    source: String,
    every: Duration,
    stop: CancellationToken,
) -> Result<usize, JwksError> {
    let doc = fetch(&source).await?;
    let n = verifier.set_jwks(&doc)?;
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
                .and_then(|d| Ok(verifier.set_jwks(&d)?))
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

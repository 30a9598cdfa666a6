//! Keeps the verifier's JWKS keys fresh: reads `auth.jwks` (a file, or an `http://`/`https://`
//! URL) at startup and every `auth.jwks_refresh`. A failed refresh keeps the previous keys.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use herald_core::Verifier;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1 << 20;

/// Fetch a JWKS document from a file path or an http(s) URL.
pub async fn fetch(source: &str) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = match source.parse() {
        Ok(u) if source.starts_with("http://") || source.starts_with("https://") => u,
        _ => {
            return tokio::fs::read(source)
                .await
                .map_err(|e| format!("{source}: {e}"));
        }
    };
    let host = uri.host().ok_or("JWKS URL without host")?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("{source}: {e}"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let fut = async {
        if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name =
                rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(tls), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("{source}: timed out"))?
        .map_err(|e| format!("{source}: {e}"))
}

async fn send<T>(io: T, req: Request<Body>) -> Result<Vec<u8>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_JWKS)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
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

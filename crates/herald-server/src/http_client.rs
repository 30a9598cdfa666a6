//! A small HTTP/1.1 client (hyper, rustls with the Mozilla roots) for the few outbound calls
//! Herald makes: fetching a JWKS document, and the CLI's server API calls.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What went wrong with an outbound HTTP call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// The URL is not a usable `http://` or `https://` URL.
    Url,
    /// The TCP connection could not be made (refused, unreachable, DNS).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// No complete answer within the timeout.
    Timeout,
    /// The HTTP exchange failed (broken connection, bad response, body over the limit).
    Protocol,
}

/// An outbound HTTP call failed: `url: message`, with a kind callers can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {message}")]
pub struct HttpError {
    /// The URL called.
    pub url: String,
    /// What failed.
    pub kind: HttpErrorKind,
    /// One line with the cause.
    pub message: String,
}

/// A response: status and body (bounded by the caller's limit).
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Send `method url` with `headers` and `body`; the body read is bounded by `max_body` and the
/// whole exchange by `timeout`. Errors are one line with the cause.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    max_body: usize,
    timeout: Duration,
) -> Result<HttpResponse, HttpError> {
    let err = |kind, message: String| HttpError {
        url: url.to_owned(),
        kind,
        message,
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| err(HttpErrorKind::Url, e.to_string()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(err(
                HttpErrorKind::Url,
                "only http:// and https:// URLs".into(),
            ));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| err(HttpErrorKind::Url, "no host".into()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Body::from(body))
        .map_err(|e| err(HttpErrorKind::Url, e.to_string()))?;
    let exchange = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => (
                    HttpErrorKind::Connect,
                    "connection refused (is the server running?)".to_owned(),
                ),
                _ => (HttpErrorKind::Connect, e.to_string()),
            })?;
        if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| (HttpErrorKind::Tls, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| (HttpErrorKind::Tls, e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| (HttpErrorKind::Tls, format!("TLS: {e}")))?;
            send(TokioIo::new(tls), req, max_body).await
        } else {
            send(TokioIo::new(tcp), req, max_body).await
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| err(HttpErrorKind::Timeout, "timed out".into()))?
        .map_err(|(kind, message)| err(kind, message))
}

async fn send<T>(
    io: T,
    req: Request<Body>,
    max_body: usize,
) -> Result<HttpResponse, (HttpErrorKind, String)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let protocol = |e: &dyn std::fmt::Display| (HttpErrorKind::Protocol, e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| protocol(&e))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| protocol(&e))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| protocol(&e))?;
    Ok(HttpResponse {
        status,
        body: body.to_bytes().to_vec(),
    })
}

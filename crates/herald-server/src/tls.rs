//! TLS with rustls: a certificate resolver that can be reloaded while serving (SIGHUP or a
//! changed file). Handshakes run in their own tasks (`listener`), so one stalled client never
//! blocks the accept loop.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The server's TLS state: configuration and the reloadable certificate.
pub struct Tls {
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
    mtimes: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load_key(provider: &CryptoProvider, cert: &Path, key: &Path) -> io::Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, &e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, &e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(cert, "no certificate found"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e.to_string()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| bad(key, &e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

impl Tls {
    /// Load the certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path) -> io::Result<Tls> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certified = load_key(&provider, cert, key)?;
        let resolver = Arc::new(Resolver(RwLock::new(certified)));
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            provider,
            cert: cert.to_owned(),
            key: key.to_owned(),
            mtimes: Mutex::new((mtime(cert), mtime(key))),
        })
    }

    /// The acceptor for new connections (handshakes run in `listener`).
    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-read the certificate and key; on error the current ones stay in use.
    pub fn reload(&self) -> io::Result<()> {
        let times = (mtime(&self.cert), mtime(&self.key));
        let certified = load_key(&self.provider, &self.cert, &self.key)?;
        *self.resolver.0.write().unwrap_or_else(|e| e.into_inner()) = certified;
        *self.mtimes.lock().unwrap_or_else(|e| e.into_inner()) = times;
        metrics::counter!("herald_tls_reloads_total").increment(1);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reload when either file's modification time changed.
    pub fn reload_if_changed(&self) {
        let now = (mtime(&self.cert), mtime(&self.key));
        let changed = *self.mtimes.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if changed && let Err(e) = self.reload() {
            tracing::warn!(error = %e, "TLS reload failed; keeping the current certificate");
        }
    }
}

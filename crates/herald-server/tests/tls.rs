//! TLS: a `wss://` round trip with a generated certificate, and certificate reload.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use support::*;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("herald-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).expect("mkdir");
    TempDir(p)
}

/// Write a fresh self-signed certificate for `localhost`; returns its DER for the client.
fn write_cert(dir: &TempDir) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(dir.0.join("cert.pem"), ck.cert.pem()).expect("write cert");
    std::fs::write(dir.0.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
    ck.cert.der().clone()
}

fn connector(trusted: &rustls::pki_types::CertificateDer<'static>) -> Connector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Connector::Rustls(Arc::new(config))
}

async fn wss(
    s: &TestServer,
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let req = format!("wss://localhost:{}/ws", s.addr.port())
        .into_client_request()
        .expect("req");
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, Some(connector(trusted)))
            .await?;
    let mut c = Client::from_stream(ws);
    let w = c.next().await;
    assert_eq!(w["type"], "connected", "{w}");
    Ok(c)
}

/// A TLS server on a fresh self-signed certificate in its own directory.
async fn tls_server(
    tag: &str,
) -> (
    TempDir,
    rustls::pki_types::CertificateDer<'static>,
    TestServer,
) {
    let dir = temp_dir(tag);
    let cert = write_cert(&dir);
    let mut setup = Setup::default();
    setup.tls.cert = Some(dir.0.join("cert.pem"));
    setup.tls.key = Some(dir.0.join("key.pem"));
    let s = start(setup).await;
    (dir, cert, s)
}

#[tokio::test]
async fn wss_round_trip_and_certificate_reload() {
    let (dir, first, s) = tls_server("reload").await;

    let mut a = wss(&s, &first).await.expect("wss connect");
    let mut b = wss(&s, &first).await.expect("wss connect");
    b.subscribe("room").await;
    a.publish("room", json!({"secret": "over tls"})).await;
    assert_eq!(b.next_message().await["data"]["secret"], "over tls");

    // Plain WebSocket on the TLS port does not get through.
    let plain = format!("ws://127.0.0.1:{}/ws", s.addr.port());
    assert!(tokio_tungstenite::connect_async(plain).await.is_err());

    let second = write_cert(&dir);
    s.handle.reload_tls().expect("reload");
    assert!(
        wss(&s, &first).await.is_err(),
        "old certificate still served"
    );
    wss(&s, &second).await.expect("new certificate served");
    // Connections made before the reload keep working.
    a.publish("room", json!(2)).await;
    assert_eq!(b.next_message().await["data"], 2);
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_current_certificate() {
    let (dir, cert, s) = tls_server("broken").await;
    std::fs::write(dir.0.join("cert.pem"), "not a certificate").expect("write");
    assert!(s.handle.reload_tls().is_err());
    wss(&s, &cert).await.expect("still served");
}

//! TLS for `serve --tls-cert F --tls-key F`: rustls with the ring provider, from PEM files.

use crate::error::{Error, ErrorKind, Result};
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

fn tls_err(msg: String) -> Error {
    Error::new(ErrorKind::Tls, msg)
}

/// Build an acceptor from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), &e));
    let cert_pem = read(cert)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            tls_err(format!(
                "{}: not a PEM certificate file: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key_pem = read(key)?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            tls_err(format!(
                "{}: not a PEM private key file: {e}",
                key.display()
            ))
        })?
        .ok_or_else(|| tls_err(format!("{} holds no PEM private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            tls_err(format!(
                "the certificate {} and key {} cannot be used together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

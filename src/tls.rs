//! TLS for the HTTPS listener: the configured PEM files read into a rustls `ServerConfig`
//! (the `ring` provider, TLS 1.2 and 1.3), client certificates required and checked against
//! `ca_file` when `verify_incoming` is on, and a reload that swaps the config for new
//! handshakes while open connections keep theirs.
//!
//! Errors name the config key and the file, and say what is wrong with it (missing, not PEM,
//! no certificate in it, a key that does not belong to the certificate).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{TlsSettings, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls {key} {}: {reason}", path.display())]
    File { key: &'static str, path: PathBuf, reason: String },
    #[error("tls {key} is not set")]
    Missing { key: &'static str },
    #[error("tls cert_file {} and key_file {}: the key does not belong to the certificate", cert.display(), key.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::File { key, path: path.to_path_buf(), reason: reason.into() }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(key, path, e.to_string()))
}

/// Every certificate in the PEM file at `path` (the config key `key` names it).
pub fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format!("not a PEM file of certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            file_error("key_file", path, "no private key in it (expected a PEM \"PRIVATE KEY\" block)")
        }
        other => file_error("key_file", path, format!("not a PEM private key: {other}")),
    })
}

/// The authorities in the PEM file at `path`, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("ca_file", path)? {
        roots.add(cert).map_err(|e| file_error("ca_file", path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The one crypto provider cairn uses: `ring` (no C toolchain beyond what ring needs, no
/// CMake).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn protocol_versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static FROM_TLS12: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];
    static ONLY_TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &FROM_TLS12,
        TlsVersion::Tls13 => &ONLY_TLS13,
    }
}

/// The server side `settings` describe, with their files read now. HTTP/1.1 only (ALPN), as
/// the plain listener: one connection, one request at a time, within the per-client cap.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let cert_path = settings.cert_file.as_deref().ok_or(TlsError::Missing { key: "cert_file" })?;
    let key_path = settings.key_file.as_deref().ok_or(TlsError::Missing { key: "key_file" })?;
    let certs = load_certs("cert_file", cert_path)?;
    let key = load_key(key_path)?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| file_error("key_file", key_path, format!("not a usable private key: {e}")))?;
    if let Err(rustls::Error::InconsistentKeys(_)) =
        rustls::sign::CertifiedKey::new(certs.clone(), signing_key).keys_match()
    {
        return Err(TlsError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() });
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(protocol_versions(settings.min_version))?;
    let builder = if settings.verify_incoming {
        let ca_path = settings.ca_file.as_deref().ok_or(TlsError::Missing { key: "ca_file" })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca_path)?), provider)
            .build()
            .map_err(|e| file_error("ca_file", ca_path, e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The HTTPS listener's TLS: the config new handshakes use, replaced on reload.
pub struct TlsServer {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    pub fn new(settings: &TlsSettings) -> Result<TlsServer, TlsError> {
        Ok(TlsServer { current: RwLock::new(Arc::new(server_config(settings)?)) })
    }

    /// Reads the files again (a renewed certificate, a new CA): handshakes from now on use
    /// them, connections already open keep theirs. On an error nothing changes.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        let config = Arc::new(server_config(settings)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// What accepts the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

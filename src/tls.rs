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

/// The server side `settings` describe, with their files read now, offering `alpn`.
pub fn server_config(settings: &TlsSettings, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// HTTP/1.1 only on the HTTPS listener, as on the plain one: one connection, one request at a
/// time, within the per-client cap.
const HTTPS_ALPN: &[&[u8]] = &[b"http/1.1"];

/// The HTTPS listener's TLS: the config new handshakes use, replaced on reload.
pub struct TlsServer {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    pub fn new(settings: &TlsSettings) -> Result<TlsServer, TlsError> {
        Ok(TlsServer { current: RwLock::new(Arc::new(server_config(settings, HTTPS_ALPN)?)) })
    }

    /// Reads the files again (a renewed certificate, a new CA) into a config for
    /// [`TlsServer::install`]; nothing changes yet.
    pub fn prepare(&self, settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(Arc::new(server_config(settings, HTTPS_ALPN)?))
    }

    /// Handshakes from now on use `config`; connections already open keep theirs.
    pub fn install(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// What accepts the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner())))
    }
}

/// The client side of the server RPC: trusts `ca_file`, presents `cert_file` when set (for
/// servers with `verify_incoming`), and checks the name a server presents only with
/// `verify_server_hostname`.
pub fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, TlsError> {
    let ca_path = settings.ca_file.as_deref().ok_or(TlsError::Missing { key: "ca_file" })?;
    let provider = provider();
    let roots = Arc::new(load_roots(ca_path)?);
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| file_error("ca_file", ca_path, e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(protocol_versions(settings.min_version))?;
    let builder = if settings.verify_server_hostname {
        builder.with_webpki_verifier(verifier)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyNameVerifier(verifier)))
    };
    match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => Ok(builder.with_client_auth_cert(load_certs("cert_file", cert)?, load_key(key)?)?),
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Checks a server's chain to the CA but not the name in it (Consul without
/// `verify_server_hostname`: any certificate of the CA is a server).
#[derive(Debug)]
struct AnyNameVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The server RPC's two sides, read from their files.
pub struct RpcConfigs {
    accept: Option<Arc<ServerConfig>>,
    connect: Option<Arc<rustls::ClientConfig>>,
}

/// The server RPC's TLS (`tls.internal_rpc` over `tls.defaults`): what this agent accepts
/// and how it connects. Both parts are re-read on reload.
pub struct RpcTls {
    /// TLS accepted on port 8300 when a certificate is configured.
    accept: Option<RwLock<Arc<ServerConfig>>>,
    /// `verify_incoming`: plain connections are refused.
    require_incoming: bool,
    /// `verify_outgoing`: every connection to a server is TLS, its certificate checked.
    connect: Option<RwLock<Arc<rustls::ClientConfig>>>,
    /// `verify_incoming` and `verify_server_hostname`: a peer is a server only when its
    /// certificate names one, so an agent's certificate cannot speak Raft.
    servers_proven: bool,
    /// The agents' domain: a server of datacenter `dc` is `server.<dc>.<domain>`.
    domain: String,
}

impl std::fmt::Debug for RpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcTls")
            .field("accepts", &self.accept.is_some())
            .field("require_incoming", &self.require_incoming)
            .field("connects", &self.connect.is_some())
            .finish()
    }
}

impl RpcTls {
    /// `None` when `settings` ask for no TLS on the RPC at all. `domain` without its
    /// trailing dot.
    pub fn new(settings: &TlsSettings, domain: &str) -> Result<Option<RpcTls>, TlsError> {
        let accepts = settings.cert_file.is_some() && settings.key_file.is_some();
        if !accepts && !settings.verify_outgoing && !settings.verify_incoming {
            return Ok(None);
        }
        let RpcConfigs { accept, connect } = RpcTls::configs(settings)?;
        Ok(Some(RpcTls {
            accept: accept.map(RwLock::new),
            require_incoming: settings.verify_incoming,
            connect: connect.map(RwLock::new),
            servers_proven: settings.verify_incoming && settings.verify_server_hostname,
            domain: domain.trim_end_matches('.').to_string(),
        }))
    }

    fn configs(settings: &TlsSettings) -> Result<RpcConfigs, TlsError> {
        let accepts = settings.cert_file.is_some() && settings.key_file.is_some();
        let accept =
            if accepts || settings.verify_incoming { Some(Arc::new(server_config(settings, &[])?)) } else { None };
        let connect = settings.verify_outgoing.then(|| client_config(settings).map(Arc::new)).transpose()?;
        Ok(RpcConfigs { accept, connect })
    }

    /// Reads the files again into configs for [`RpcTls::install`]; nothing changes yet.
    pub fn prepare(&self, settings: &TlsSettings) -> Result<RpcConfigs, TlsError> {
        RpcTls::configs(settings)
    }

    /// New connections from now on use `configs`. Turning TLS on or off (a side this agent
    /// did not start with) needs a restart: such a side is left as it is.
    pub fn install(&self, configs: RpcConfigs) {
        if let (Some(slot), Some(config)) = (&self.accept, configs.accept) {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = config;
        }
        if let (Some(slot), Some(config)) = (&self.connect, configs.connect) {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = config;
        }
    }

    /// What accepts an incoming TLS connection, if this server takes any.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let config = self.accept.as_ref()?.read().unwrap_or_else(|e| e.into_inner());
        Some(tokio_rustls::TlsAcceptor::from(Arc::clone(&config)))
    }

    /// Whether plain (non-TLS) connections are refused.
    pub fn requires_incoming(&self) -> bool {
        self.require_incoming
    }

    /// Whether a peer that presented `certificates` (already checked against the CA) is a
    /// server of `datacenter`: its certificate is valid for `server.<dc>.<domain>`. `None`
    /// when this agent cannot tell (without `verify_incoming` and `verify_server_hostname`
    /// any peer is taken for a server, as Consul does).
    pub fn peer_is_server(&self, certificates: Option<&[CertificateDer<'_>]>, datacenter: &str) -> Option<bool> {
        if !self.servers_proven {
            return None;
        }
        let Some(leaf) = certificates.and_then(|c| c.first()) else { return Some(false) };
        let Ok(name) = rustls::pki_types::ServerName::try_from(format!("server.{datacenter}.{}", self.domain)) else {
            return Some(false);
        };
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else { return Some(false) };
        Some(cert.verify_is_valid_for_subject_name(&name).is_ok())
    }

    /// What opens an outgoing connection to a server of `datacenter`, and the name that
    /// server must present; `None` when connections go out in plain text.
    pub fn connector(
        &self,
        datacenter: &str,
    ) -> Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)> {
        let config = Arc::clone(&self.connect.as_ref()?.read().unwrap_or_else(|e| e.into_inner()));
        let name = rustls::pki_types::ServerName::try_from(format!("server.{datacenter}.{}", self.domain)).ok()?;
        Some((tokio_rustls::TlsConnector::from(config), name))
    }
}

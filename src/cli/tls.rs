//! `cairn tls ca create` and `cairn tls cert create -server|-client|-cli`: a CA and agent
//! certificates for a lab or a small fleet, with Consul's file names and names in the
//! certificates (`server.<dc>.<domain>`), so its how-tos apply. ECDSA P-256 keys; files in
//! the current directory (or `-dir`), never overwritten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Create or use a certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Create certificates signed by the CA.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create a CA: <domain>-agent-ca.pem and <domain>-agent-ca-key.pem.
    Create(CaCreate),
}

#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Create a certificate for a server, a client agent or the CLI:
    /// <dc>-<kind>-<domain>-<n>.pem and its -key.pem.
    Create(CertCreate),
}

#[derive(clap::Args, Debug)]
pub struct CaCreate {
    /// Days the CA is valid for.
    #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Domain of the names in the certificates (as the agents' `domain`).
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Common name of the CA (default: "Cairn Agent CA" and a random number).
    #[arg(long, value_name = "NAME")]
    pub common_name: Option<String>,
    /// Directory the files are written to.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct CertCreate {
    /// A server agent's certificate (server.<dc>.<domain>).
    #[arg(long, group = "kind")]
    pub server: bool,
    /// A client agent's certificate (client.<dc>.<domain>).
    #[arg(long, group = "kind")]
    pub client: bool,
    /// A certificate for the CLI and other API clients (cli.<dc>.<domain>).
    #[arg(long, group = "kind")]
    pub cli: bool,
    /// Datacenter named in the certificate.
    #[arg(long, default_value = "dc1")]
    pub dc: String,
    #[arg(long, default_value = "consul")]
    pub domain: String,
    /// Days the certificate is valid for.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// The CA certificate (default: <domain>-agent-ca.pem).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The CA's key (default: <domain>-agent-ca-key.pem).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A node name added to the names (<node>.server.<dc>.<domain>); servers only.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Another DNS name the certificate is valid for (repeatable).
    #[arg(long = "additional-dnsname", value_name = "NAME")]
    pub additional_dnsname: Vec<String>,
    /// Another IP address the certificate is valid for (repeatable).
    #[arg(long = "additional-ipaddress", value_name = "IP")]
    pub additional_ipaddress: Vec<IpAddr>,
    /// Directory the files are written to (and the default CA files read from).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
}

fn tls_error(what: impl std::fmt::Display) -> CliError {
    CliError::Usage(what.to_string())
}

/// Validity from a minute ago (clock skew between hosts) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes `contents` to a new file (never over an existing one), readable only by its owner
/// when it is a key.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<(), CliError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => tls_error(format!("{} already exists; not overwritten", path.display())),
        _ => tls_error(format!("cannot create {}: {e}", path.display())),
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| tls_error(format!("cannot write {}: {e}", path.display())))?;
    println!("==> Saved {}", path.display());
    Ok(())
}

pub fn run(command: TlsCommand) -> Result<(), CliError> {
    match command {
        TlsCommand::Ca(CaCommand::Create(a)) => create_ca(&a),
        TlsCommand::Cert(CertCommand::Create(a)) => create_cert(&a),
    }
}

fn create_ca(a: &CaCreate) -> Result<(), CliError> {
    let cert_path = a.dir.join(format!("{}-agent-ca.pem", a.domain));
    let key_path = a.dir.join(format!("{}-agent-ca-key.pem", a.domain));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(tls_error(format!("{} already exists; not overwritten", path.display())));
        }
    }
    let key = KeyPair::generate().map_err(tls_error)?;
    let mut params = CertificateParams::default();
    let name = a.common_name.clone().unwrap_or_else(|| format!("Cairn Agent CA {}", rand::random::<u32>()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, a.days);
    let cert = params.self_signed(&key).map_err(tls_error)?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)
}

fn create_cert(a: &CertCreate) -> Result<(), CliError> {
    let kind = match (a.server, a.client, a.cli) {
        (true, _, _) => "server",
        (_, true, _) => "client",
        (_, _, true) => "cli",
        _ => return Err(tls_error("say which certificate: -server, -client or -cli")),
    };
    if a.node.is_some() && kind != "server" {
        return Err(tls_error("-node is for server certificates only"));
    }
    let ca_path = a.ca.clone().unwrap_or_else(|| a.dir.join(format!("{}-agent-ca.pem", a.domain)));
    let ca_key_path = a.key.clone().unwrap_or_else(|| a.dir.join(format!("{}-agent-ca-key.pem", a.domain)));
    let read = |flag: &str, path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| tls_error(format!("cannot read the CA {flag} {}: {e}", path.display())))
    };
    let ca_key = KeyPair::from_pem(&read("key", &ca_key_path)?)
        .map_err(|e| tls_error(format!("{}: not a usable PEM private key: {e}", ca_key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&read("certificate", &ca_path)?, ca_key)
        .map_err(|e| tls_error(format!("{}: not a usable PEM CA certificate: {e}", ca_path.display())))?;

    let role = format!("{kind}.{}.{}", a.dc, a.domain);
    let mut names = vec![role.clone()];
    names.extend(a.node.iter().map(|node| format!("{node}.{role}")));
    if kind != "cli" {
        names.push("localhost".to_string());
    }
    names.extend(a.additional_dnsname.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(tls_error)?;
    if kind != "cli" {
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    }
    params.subject_alt_names.extend(a.additional_ipaddress.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(DnType::CommonName, role);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = match kind {
        "cli" => vec![ExtendedKeyUsagePurpose::ClientAuth],
        // Agents both serve (HTTPS, RPC) and connect (RPC), as Consul's certificates.
        _ => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, a.days);
    let key = KeyPair::generate().map_err(tls_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;

    // The first free <dc>-<kind>-<domain>-<n>.pem, as Consul numbers them.
    let (cert_path, key_path) = (0..)
        .map(|n| {
            let stem = format!("{}-{kind}-{}-{n}", a.dc, a.domain);
            (a.dir.join(format!("{stem}.pem")), a.dir.join(format!("{stem}-key.pem")))
        })
        .find(|(cert, key)| !cert.exists() && !key.exists())
        .ok_or_else(|| tls_error("no free file name"))?;
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &cert.pem(), false)
}

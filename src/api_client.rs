//! An async client of one agent's HTTP API: what the CLI subcommands and the agent's own
//! config `watches` use to talk to an agent (the latter to itself, as Consul's watches do).

use std::time::Duration;

/// The address an agent's HTTP API is at, as a base URL (`http://host:port`, no trailing `/`).
pub fn base_url(addr: &str) -> String {
    let base = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    base.trim_end_matches('/').to_string()
}

/// How a client checks an HTTPS agent and proves who it is: PEM files, as Consul's
/// `-ca-file`, `-client-cert` and `-client-key`.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// Trust only the authorities in this file (else the system's roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (chain) to present, for agents with `verify_incoming`.
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
    /// Accept any server certificate (`CONSUL_HTTP_SSL_VERIFY=false`): for a lab only.
    pub skip_verify: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Tls(String),
    #[error("cannot reach the cairn agent at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("Unexpected response code: {status} ({body})")]
    Status { status: u16, body: String },
}

/// A response as the callers need it.
pub struct Answer {
    pub status: u16,
    pub index: Option<u64>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The answer if 2xx, else Consul's `Unexpected response code` error.
    pub fn success(self) -> Result<Answer, ApiError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            let body = String::from_utf8_lossy(&self.body).trim().to_string();
            Err(ApiError::Status { status: self.status, body })
        }
    }
}

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// Sent as `X-Consul-Token` with every request.
    token: Option<String>,
}

impl ApiClient {
    /// A client of the agent at `base` (see [`base_url`]) whose requests may take `timeout`
    /// (`None`: as long as they take; connecting is bounded by `connect_timeout` either way).
    pub fn new(base: String, connect_timeout: Duration, timeout: Option<Duration>) -> Result<ApiClient, ApiError> {
        ApiClient::with_tls(base, connect_timeout, timeout, &ClientTls::default())
    }

    /// [`ApiClient::new`] for an agent that may answer over HTTPS, checked as `tls` says.
    pub fn with_tls(
        base: String,
        connect_timeout: Duration,
        timeout: Option<Duration>,
        tls: &ClientTls,
    ) -> Result<ApiClient, ApiError> {
        let mut builder = reqwest::Client::builder().connect_timeout(connect_timeout).no_proxy();
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ApiError::Tls(format!("cannot read {flag} {}: {e}", path.display())))
        };
        if let Some(path) = &tls.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read("-ca-file", path)?).map_err(|e| {
                ApiError::Tls(format!("-ca-file {}: not a PEM file of certificates: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(ApiError::Tls(format!("-ca-file {}: no certificate in it", path.display())));
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read("-client-cert", cert)?;
                pem.push(b'\n');
                pem.extend(read("-client-key", key)?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ApiError::Tls(format!("-client-cert {} / -client-key {}: {e}", cert.display(), key.display()))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(ApiError::Tls("-client-cert and -client-key go together: give both or neither".into())),
        }
        if tls.skip_verify {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| ApiError::Unreachable { addr: base.clone(), reason: e.to_string() })?;
        Ok(ApiClient { base, http, token: None })
    }

    /// This client presenting the ACL token `token` (none: the agent's default).
    pub fn with_token(mut self, token: Option<String>) -> ApiClient {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        ApiError::Unreachable { addr: self.base.clone(), reason: crate::checks::root_cause(e) }
    }

    /// Any request; the answer whatever its status (callers decide what a 404 means).
    /// `timeout` overrides the client's (a blocking query needs its wait and a margin).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Answer, ApiError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        let index = response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()?.parse().ok());
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        Ok(Answer { status, index, body: body.to_vec() })
    }

    /// A blocking GET of `path` that returns once its index passes `index` (or after
    /// `wait`), with the index it answered at.
    pub async fn blocking_get(&self, path: &str, index: u64, wait: Duration) -> Result<Answer, ApiError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{separator}index={index}&wait={}s", wait.as_secs().max(1));
        // The agent adds up to wait/16 of jitter; allow that and a margin.
        self.call(reqwest::Method::GET, &path, None, Some(wait + wait / 16 + Duration::from_secs(10))).await
    }

    /// `GET path` as a stream: each chunk of a 2xx body goes to `each` as it arrives, until
    /// the agent ends the body (a non-2xx answer is an error with its text).
    pub async fn stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> Result<(), ApiError> {
        let mut response =
            self.http.get(format!("{}{path}", self.base)).send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.bytes().await.map_err(|e| self.unreachable(&e))?.to_vec();
            return Answer { status, index: None, body }.success().map(drop);
        }
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(&e))? {
            each(&chunk);
        }
        Ok(())
    }
}

/// Percent-encodes a path (keeping `/`).
pub fn encode_path(s: &str) -> String {
    s.split('/')
        .map(|part| form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>().replace('+', "%20"))
        .collect::<Vec<_>>()
        .join("/")
}

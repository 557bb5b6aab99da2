//! An async client of one agent's HTTP API: what the CLI subcommands and the agent's own
//! config `watches` use to talk to an agent (the latter to itself, as Consul's watches do).

use std::time::Duration;

/// The address an agent's HTTP API is at, as a base URL (`http://host:port`, no trailing `/`).
pub fn base_url(addr: &str) -> String {
    let base = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    base.trim_end_matches('/').to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
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

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the agent at `base` (see [`base_url`]) whose requests may take `timeout`
    /// (`None`: as long as they take; connecting is bounded by `connect_timeout` either way).
    pub fn new(base: String, connect_timeout: Duration, timeout: Option<Duration>) -> Result<ApiClient, ApiError> {
        let mut builder = reqwest::Client::builder().connect_timeout(connect_timeout).no_proxy();
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let http = builder.build().map_err(|e| ApiError::Unreachable { addr: base.clone(), reason: e.to_string() })?;
        Ok(ApiClient { base, http })
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

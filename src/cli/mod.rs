//! Client subcommands: thin HTTP clients of a running agent, like Consul's CLI. Each prints
//! what Consul's prints and exits 1 with a one-line `cairn: ...` error on failure.

pub mod catalog;
pub mod kv;
pub mod lock;
pub mod operator;
pub mod services;
pub mod snapshot;
pub mod watch;

use std::time::Duration;

pub use services::{ServicesCommand, ServicesDeregister, ServicesRegister};

/// How long a client subcommand waits for the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// Where the agent's HTTP API is: `-http-addr`, else `CAIRN_HTTP_ADDR`, else
/// `CONSUL_HTTP_ADDR`, else 127.0.0.1:8500.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientFlags {
    /// Address of the agent's HTTP API (`host:port` or `http://host:port`).
    #[arg(long = "http-addr", value_name = "ADDR")]
    pub http_addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the cairn agent at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("Unexpected response code: {status} ({body})")]
    Status { status: u16, body: String },
    #[error("{0}")]
    Usage(String),
}

/// A blocking client of one agent.
pub struct Client {
    base: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(flags: &ClientFlags) -> Result<Client, CliError> {
        Client::with_timeout(flags, Some(REQUEST_TIMEOUT))
    }

    /// A client whose requests may take `timeout` (`None`: as long as they take, for
    /// transfers such as snapshots; connecting is still bounded).
    pub fn with_timeout(flags: &ClientFlags, timeout: Option<Duration>) -> Result<Client, CliError> {
        let addr = flags
            .http_addr
            .clone()
            .or_else(|| std::env::var("CAIRN_HTTP_ADDR").ok().filter(|a| !a.is_empty()))
            .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
        let base = if addr.contains("://") { addr } else { format!("http://{addr}") };
        let base = base.trim_end_matches('/').to_string();
        let setup = |reason: String| CliError::Unreachable { addr: base.clone(), reason };
        let mut builder = reqwest::Client::builder().connect_timeout(REQUEST_TIMEOUT).no_proxy();
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let http = builder.build().map_err(|e| setup(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start the async runtime: {e}")))?;
        Ok(Client { base, http, runtime })
    }

    /// `PUT path` with an optional JSON body; the response body on 2xx.
    pub fn put(&self, path: &str, body: Option<&serde_json::Value>) -> Result<String, CliError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = self.request(reqwest::Method::PUT, path, body)?.success()?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }

    /// `GET path`, decoded as JSON, on 2xx.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, CliError> {
        let answer = self.request(reqwest::Method::GET, path, None)?.success()?;
        serde_json::from_slice(&answer.body)
            .map_err(|e| CliError::Usage(format!("the agent answered {path} with invalid JSON: {e}")))
    }

    /// `GET path` as a stream: each chunk of a 2xx body goes to `each` as it arrives, until
    /// the agent ends the body (a non-2xx answer is an error with its text).
    pub fn stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> Result<(), CliError> {
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            addr: self.base.clone(),
            reason: crate::checks::root_cause(&e),
        };
        self.runtime.block_on(async {
            let mut response = self.http.get(format!("{}{path}", self.base)).send().await.map_err(unreachable)?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                let body = response.bytes().await.map_err(unreachable)?.to_vec();
                return Answer { status, index: None, body }.success().map(drop);
            }
            while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                each(&chunk);
            }
            Ok(())
        })
    }

    /// Any request; the answer whatever its status (callers decide what a 404 means).
    pub fn request(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer, CliError> {
        self.runtime.block_on(self.call(method, path, body, None))
    }

    /// Runs `future` on this client's runtime (for subcommands that do several things at
    /// once: `lock`, `watch`).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// [`Client::request`] from async code; `timeout` overrides the client's (a blocking
    /// query needs its wait and a margin).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Answer, CliError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.body(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            addr: self.base.clone(),
            reason: crate::checks::root_cause(&e),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let index = response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()?.parse().ok());
        let body = response.bytes().await.map_err(unreachable)?;
        Ok(Answer { status, index, body: body.to_vec() })
    }

    /// A blocking GET of `path` that returns once its index passes `index` (or after
    /// `wait`), with the index it answered at.
    pub async fn blocking_get(&self, path: &str, index: u64, wait: Duration) -> Result<Answer, CliError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{separator}index={index}&wait={}s", wait.as_secs().max(1));
        // The agent adds up to wait/16 of jitter; allow that and a margin.
        self.call(reqwest::Method::GET, &path, None, Some(wait + wait / 16 + Duration::from_secs(10))).await
    }
}

/// A response as the CLI needs it.
pub struct Answer {
    pub status: u16,
    pub index: Option<u64>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The answer if 2xx, else Consul's `Unexpected response code` error.
    pub fn success(self) -> Result<Answer, CliError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            let body = String::from_utf8_lossy(&self.body).trim().to_string();
            Err(CliError::Status { status: self.status, body })
        }
    }
}

/// Prints rows as columns separated by two spaces, as Consul's tables are.
pub fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// Percent-encodes a path (keeping `/`).
pub fn encode_path(s: &str) -> String {
    s.split('/')
        .map(|part| form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>().replace('+', "%20"))
        .collect::<Vec<_>>()
        .join("/")
}

/// `cairn leave`: the agent shuts down gracefully.
pub fn leave(flags: &ClientFlags) -> Result<(), CliError> {
    Client::new(flags)?.put("/v1/agent/leave", None)?;
    println!("Graceful leave complete");
    Ok(())
}

/// `cairn reload`: the agent re-reads its config files (as SIGHUP).
pub fn reload(flags: &ClientFlags) -> Result<(), CliError> {
    Client::new(flags)?.put("/v1/agent/reload", None)?;
    println!("Configuration reload triggered");
    Ok(())
}

//! Client subcommands: thin HTTP clients of a running agent, like Consul's CLI. Each prints
//! what Consul's prints and exits 1 with a one-line `cairn: ...` error on failure.

pub mod services;

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
        let addr = flags
            .http_addr
            .clone()
            .or_else(|| std::env::var("CAIRN_HTTP_ADDR").ok().filter(|a| !a.is_empty()))
            .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
        let base = if addr.contains("://") { addr } else { format!("http://{addr}") };
        let base = base.trim_end_matches('/').to_string();
        let setup = |reason: String| CliError::Unreachable { addr: base.clone(), reason };
        let http =
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT).no_proxy().build().map_err(|e| setup(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start the async runtime: {e}")))?;
        Ok(Client { base, http, runtime })
    }

    /// `PUT path` with an optional JSON body; the response body on 2xx.
    pub fn put(&self, path: &str, body: Option<&serde_json::Value>) -> Result<String, CliError> {
        let mut request = self.http.put(format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body.to_string());
        }
        self.send(request)
    }

    fn send(&self, request: reqwest::RequestBuilder) -> Result<String, CliError> {
        self.runtime.block_on(async {
            let response = request.send().await.map_err(|e| CliError::Unreachable {
                addr: self.base.clone(),
                reason: crate::checks::root_cause(&e),
            })?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() {
                Ok(body)
            } else {
                Err(CliError::Status { status: status.as_u16(), body: body.trim().to_string() })
            }
        })
    }
}

/// `cairn reload`: the agent re-reads its config files (as SIGHUP).
pub fn reload(flags: &ClientFlags) -> Result<(), CliError> {
    Client::new(flags)?.put("/v1/agent/reload", None)?;
    println!("Configuration reload triggered");
    Ok(())
}

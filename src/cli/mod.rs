//! Client subcommands: thin HTTP clients of a running agent, like Consul's CLI. Each prints
//! what Consul's prints and exits 1 with a one-line `cairn: ...` error on failure.

pub mod acl;
pub mod catalog;
pub mod kv;
pub mod lock;
pub mod operator;
pub mod services;
pub mod snapshot;
pub mod tls;
pub mod watch;

use std::time::Duration;

use crate::api_client::{base_url, ApiClient, ApiError, ClientTls};
pub use crate::api_client::{encode_path, Answer};
pub use services::{ServicesCommand, ServicesDeregister, ServicesRegister};

/// How long a client subcommand waits for the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// Where the agent's HTTP API is: `-http-addr`, else `CAIRN_HTTP_ADDR`, else
/// `CONSUL_HTTP_ADDR`, else 127.0.0.1:8500; over HTTPS, how to check it and prove who we are.
/// Each flag falls back to its `CAIRN_` then `CONSUL_` environment variable, as Consul's CLI.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientFlags {
    /// Address of the agent's HTTP API (`host:port`, `http://host:port` or
    /// `https://host:port`; a bare address is HTTPS when CONSUL_HTTP_SSL=true).
    #[arg(long = "http-addr", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// PEM file of the CA that signed the agent's HTTPS certificate (CONSUL_CACERT).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for agents that verify incoming connections (CONSUL_CLIENT_CERT).
    #[arg(long = "client-cert", value_name = "FILE")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM key of the client certificate (CONSUL_CLIENT_KEY).
    #[arg(long = "client-key", value_name = "FILE")]
    pub client_key: Option<std::path::PathBuf>,
    /// ACL token to present (CAIRN_HTTP_TOKEN, CONSUL_HTTP_TOKEN; default: the agent's
    /// default token).
    #[arg(long = "token", value_name = "SECRET")]
    pub token: Option<String>,
}

/// The first set, non-empty value of the environment variables `names`.
fn env_any(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

impl ClientFlags {
    /// The base URL of the agent's API.
    fn base(&self) -> String {
        let addr = self
            .http_addr
            .clone()
            .or_else(|| env_any(&["CAIRN_HTTP_ADDR", "CONSUL_HTTP_ADDR"]))
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
        let ssl = env_any(&["CAIRN_HTTP_SSL", "CONSUL_HTTP_SSL"]).is_some_and(|v| matches!(v.as_str(), "1" | "true"));
        if ssl && !addr.contains("://") {
            base_url(&format!("https://{addr}"))
        } else {
            base_url(&addr)
        }
    }

    /// The ACL token: `-token`, else `CAIRN_HTTP_TOKEN`, else `CONSUL_HTTP_TOKEN`.
    pub fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| env_any(&["CAIRN_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"]))
    }

    fn tls(&self) -> ClientTls {
        let path = |flag: &Option<std::path::PathBuf>, names: &[&str]| {
            flag.clone().or_else(|| env_any(names).map(std::path::PathBuf::from))
        };
        ClientTls {
            ca_file: path(&self.ca_file, &["CAIRN_CACERT", "CONSUL_CACERT"]),
            client_cert: path(&self.client_cert, &["CAIRN_CLIENT_CERT", "CONSUL_CLIENT_CERT"]),
            client_key: path(&self.client_key, &["CAIRN_CLIENT_KEY", "CONSUL_CLIENT_KEY"]),
            skip_verify: env_any(&["CAIRN_HTTP_SSL_VERIFY", "CONSUL_HTTP_SSL_VERIFY"])
                .is_some_and(|v| matches!(v.as_str(), "0" | "false")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("{0}")]
    Usage(String),
}

/// A blocking client of one agent: an [`ApiClient`] and the runtime it runs on (async
/// subcommands such as `lock` and `watch` use the [`ApiClient`] it derefs to directly).
pub struct Client {
    api: ApiClient,
    runtime: tokio::runtime::Runtime,
}

impl std::ops::Deref for Client {
    type Target = ApiClient;
    fn deref(&self) -> &ApiClient {
        &self.api
    }
}

impl Client {
    pub fn new(flags: &ClientFlags) -> Result<Client, CliError> {
        Client::with_timeout(flags, Some(REQUEST_TIMEOUT))
    }

    /// A client whose requests may take `timeout` (`None`: as long as they take, for
    /// transfers such as snapshots; connecting is still bounded).
    pub fn with_timeout(flags: &ClientFlags, timeout: Option<Duration>) -> Result<Client, CliError> {
        let api = ApiClient::with_tls(flags.base(), REQUEST_TIMEOUT, timeout, &flags.tls())?.with_token(flags.token());
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| ApiError::Unreachable {
                addr: api.base().to_string(),
                reason: format!("cannot start the async runtime: {e}"),
            })?;
        Ok(Client { api, runtime })
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

    /// `GET path` as a stream (see [`ApiClient::stream`]).
    pub fn stream(&self, path: &str, each: impl FnMut(&[u8])) -> Result<(), CliError> {
        Ok(self.runtime.block_on(self.api.stream(path, each))?)
    }

    /// Any request; the answer whatever its status (callers decide what a 404 means).
    pub fn request(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer, CliError> {
        Ok(self.runtime.block_on(self.api.call(method, path, body, None))?)
    }

    /// Runs `future` on this client's runtime (for subcommands that do several things at
    /// once: `lock`, `watch`).
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
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

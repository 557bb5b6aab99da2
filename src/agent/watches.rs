//! The config's `watches`: one task per watch, following its view through this agent's own
//! HTTP API (as Consul's agent does, so forwarding and blocking work as for any client) and
//! running its script or calling its URL on each change. A reload stops the watches that
//! are gone from the config and starts the new ones; unchanged ones keep running (and do
//! not fire again).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_client::ApiClient;
use crate::watch::{follow, Report, WatchDefinition};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Watches {
    api: Option<Arc<ApiClient>>,
    running: Vec<(WatchDefinition, CancellationToken)>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Watches {
    /// Watches that will ask the HTTP API listening on `http` (a wildcard address is asked
    /// on loopback).
    pub fn new(http: SocketAddr, shutdown: CancellationToken, tasks: TaskTracker) -> Watches {
        let ip = match http.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let base = format!("http://{}", SocketAddr::new(ip, http.port()));
        let api = match ApiClient::new(base, CONNECT_TIMEOUT, None) {
            Ok(api) => Some(Arc::new(api)),
            Err(e) => {
                tracing::error!(error = %e, "config watches cannot run");
                None
            }
        };
        Watches { api, running: Vec::new(), shutdown, tasks }
    }

    /// Runs exactly `definitions`: stops the running watches not among them, starts the
    /// ones not running yet.
    pub fn replace(&mut self, definitions: &[WatchDefinition]) {
        let mut previous = std::mem::take(&mut self.running);
        for definition in definitions {
            match previous.iter().position(|(running, _)| running == definition) {
                Some(i) => self.running.push(previous.swap_remove(i)),
                None => {
                    let stop = self.shutdown.child_token();
                    self.start(definition.clone(), stop.clone());
                    self.running.push((definition.clone(), stop));
                }
            }
        }
        for (_, stop) in previous {
            stop.cancel();
        }
    }

    fn start(&self, definition: WatchDefinition, stop: CancellationToken) {
        let Some(mut api) = self.api.clone() else { return };
        if let Some(token) = &definition.token {
            api = Arc::new(ApiClient::clone(&api).with_token(Some(token.0.clone())));
        }
        // Checked when the config loaded.
        let Ok(path) = definition.spec.path() else { return };
        tracing::info!(watch = %path, "config watch started");
        self.tasks.spawn(async move {
            let report = |report: Report<'_>| match report {
                Report::Ran { index, output } => tracing::debug!(watch = %path, index, output, "watch handler ran"),
                Report::HandlerFailed { index, error } => {
                    tracing::warn!(watch = %path, index, error, "watch handler failed")
                }
                Report::Unavailable { error, retry_in } => {
                    tracing::warn!(watch = %path, error, retry_in = ?retry_in, "watch query failed; retrying")
                }
            };
            tokio::select! {
                _ = stop.cancelled() => tracing::info!(watch = %path, "config watch stopped"),
                result = follow(&api, &path, &definition.handler, report) => {
                    if let Err(e) = result {
                        tracing::error!(watch = %path, error = %e, "config watch cannot run");
                    }
                }
            }
        });
    }
}

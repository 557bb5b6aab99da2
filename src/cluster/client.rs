//! Reaching a server from an agent that holds no replicated state (a client agent): every
//! catalog, health, KV, txn and status request, every write of its own node, services and
//! checks, and every DNS query for the Consul domain goes to one server of its datacenter.
//!
//! Server choice: the alive servers gossip reports, starting with the last one that
//! answered; a server that cannot be connected to is skipped for the next. A request that
//! reached a server is never sent to a second one (it may have been a write).
//!
//! Bounds: [`FORWARDS_IN_FLIGHT_MAX`] requests at once (a blocking query holds one for its
//! whole wait); beyond, a request fails at once with [`WriteError::ForwardsFull`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::rpc::{HttpAnswer, HttpCall, NodeCatalog, Request, Response, RpcError};
use super::{Cluster, KnownServer, ServerStatus, WriteError};
use crate::model::Proposal;

/// Requests a client agent has at servers at once.
pub const FORWARDS_IN_FLIGHT_MAX: usize = 64;
/// An HTTP request forwarded by a client may be a blocking query: Consul's longest wait
/// (10 min) plus its jitter (1/16) and a margin.
const HTTP_FORWARD_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// A DNS answer from a server, at most (then SERVFAIL).
const DNS_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// A forwarded write or catalog read: the server's own bound plus its wait for a leader.
const WRITE_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a server answers for client agents, implemented above `cluster` (the HTTP router
/// and the DNS service), registered once both exist ([`Cluster::answer_clients_with`]).
pub trait ClientAnswers: Send + Sync + 'static {
    fn http(&self, call: HttpCall, body: Vec<u8>) -> BoxFuture<'static, (HttpAnswer, Vec<u8>)>;
    fn dns(&self, packet: Vec<u8>, tcp: bool) -> BoxFuture<'static, Vec<u8>>;
}

impl Cluster {
    /// Registers what this server answers client agents with. Only the first call counts.
    pub fn answer_clients_with(&self, answers: Arc<dyn ClientAnswers>) {
        let _ = self.client_answers.set(answers);
    }

    pub(super) fn client_answers(&self) -> Option<&Arc<dyn ClientAnswers>> {
        self.client_answers.get()
    }

    /// Whether this agent is a server (holds the replicated state).
    pub fn is_server(&self) -> bool {
        self.config.server
    }

    /// Waits (up to `timeout`) until gossip knows an alive server of this datacenter.
    pub async fn wait_for_servers(&self, timeout: Duration) -> bool {
        let mut servers = self.servers.clone();
        tokio::time::timeout(timeout, async {
            loop {
                if servers.borrow_and_update().iter().any(|s| s.status == ServerStatus::Alive) {
                    return;
                }
                if servers.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// Sends an HTTP API request to a server and returns its answer unchanged.
    pub async fn forward_http(&self, call: HttpCall, body: Vec<u8>) -> Result<(HttpAnswer, Vec<u8>), WriteError> {
        match self.call_any_server(&Request::Http(call), &body, HTTP_FORWARD_TIMEOUT).await? {
            (Response::Http(answer), body) => Ok((answer, body)),
            _ => Err(WriteError::Forward("the server answered an HTTP request with something else".into())),
        }
    }

    /// Asks a server to answer a DNS query; `None` when no server answered in time.
    pub async fn forward_dns(&self, packet: Vec<u8>, tcp: bool) -> Option<Vec<u8>> {
        match self.call_any_server(&Request::Dns { tcp }, &packet, DNS_FORWARD_TIMEOUT).await {
            Ok((Response::Dns, answer)) => Some(answer),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "no server answered a forwarded DNS query");
                None
            }
        }
    }

    /// `node`'s catalog entries as a server holds them (default consistency).
    pub async fn node_catalog(&self, node: &str) -> Result<NodeCatalog, WriteError> {
        let request = Request::NodeCatalog { node: node.to_string() };
        match self.call_any_server(&request, &[], WRITE_FORWARD_TIMEOUT).await? {
            (Response::NodeCatalog(result), _) => result,
            _ => Err(WriteError::Forward("the server answered a catalog read with something else".into())),
        }
    }

    /// A server's side of [`Cluster::node_catalog`].
    pub(super) async fn local_node_catalog(&self, node: String) -> Result<NodeCatalog, WriteError> {
        self.read_barrier(false).await?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let view = store.read()?;
            Ok(NodeCatalog {
                node: view.node(&node)?,
                services: view.node_services(&node)?,
                checks: view.node_checks(&node)?,
            })
        })
        .await
        .map_err(|e| WriteError::Stopped(e.to_string()))?
        .map_err(|e: crate::store::StoreError| WriteError::Forward(e.to_string()))
    }

    /// A client's proposal, committed through a server.
    pub(super) async fn propose_via_server(&self, proposal: Proposal) -> Result<super::rpc::Forwarded, WriteError> {
        match self.call_any_server(&Request::Forward(proposal), &[], WRITE_FORWARD_TIMEOUT).await? {
            (Response::Forward(result), _) => result,
            _ => Err(WriteError::Forward("the server answered a write with something else".into())),
        }
    }

    /// Calls one alive server of this datacenter, trying the next when one cannot be
    /// connected to (nothing was sent to it), until every one has been tried.
    async fn call_any_server(
        &self,
        request: &Request,
        blob: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Vec<u8>), WriteError> {
        let _permit = self
            .forwards_in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| WriteError::ForwardsFull(FORWARDS_IN_FLIGHT_MAX))?;
        let servers: Vec<KnownServer> =
            self.servers.borrow().iter().filter(|s| s.status == ServerStatus::Alive).cloned().collect();
        if servers.is_empty() {
            return Err(WriteError::NoServers);
        }
        let start = self.preferred_server.load(Ordering::Relaxed);
        let mut last_error = None;
        for offset in 0..servers.len() {
            let i = (start + offset) % servers.len();
            let server = &servers[i];
            let deadline = Instant::now() + timeout;
            match self.call_server(server.id, &server.addr, request, blob, deadline).await {
                Ok(answer) => {
                    self.preferred_server.store(i, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(e @ (RpcError::Connect { .. } | RpcError::Refused(_))) => {
                    tracing::debug!(server = %server.name, error = %e, "server unreachable; trying another");
                    last_error = Some(e);
                }
                Err(e) => return Err(WriteError::Forward(format!("server {}: {e}", server.name))),
            }
        }
        Err(WriteError::Forward(format!(
            "no server could be reached ({} tried): {}",
            servers.len(),
            last_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    }
}

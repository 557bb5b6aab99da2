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

use super::rpc::Forwarded;
use super::rpc::{HttpAnswer, HttpCall, NodeCatalog, Request, Response, RpcError};
use super::{Cluster, KnownServer, ServerStatus, WriteError};
use crate::model::acl::Secret;
use crate::model::{Command, CommandResult, Proposal};

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
    /// Checks a client agent's own catalog writes, each against its token (`tokens[i]` for
    /// `commands[i]`; `None`: the default token): one verdict per command, `Err` saying why it
    /// is refused (reads this server's replica).
    fn authorize_agent_writes(&self, commands: &[Command], tokens: &[Option<Secret>]) -> Vec<Result<(), String>>;
    /// Whether the token a client agent presents may read `node`'s catalog entries.
    fn authorize_node_read(&self, token: Option<&Secret>, node: &str) -> Result<(), String>;
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
        let request = Request::NodeCatalog { node: node.to_string(), token: self.agent_token() };
        match self.call_any_server(&request, &[], WRITE_FORWARD_TIMEOUT).await? {
            (Response::NodeCatalog(result), _) => result,
            _ => Err(WriteError::Forward("the server answered a catalog read with something else".into())),
        }
    }

    /// A server's side of [`Cluster::node_catalog`].
    pub(super) async fn local_node_catalog(
        &self,
        node: String,
        token: Option<Secret>,
    ) -> Result<NodeCatalog, WriteError> {
        let answers = self.client_answers().ok_or_else(starting)?;
        answers.authorize_node_read(token.as_ref(), &node).map_err(WriteError::PermissionDenied)?;
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

    /// The token this agent presents for its own writes and reads at a server.
    fn agent_token(&self) -> Option<Secret> {
        self.config.agent_tokens.agent_token().map(Secret)
    }

    /// A client's proposal, committed through a server: each command under its own token
    /// (`tokens[i]`), or the agent's token where it has none.
    pub(super) async fn propose_via_server(
        &self,
        proposal: Proposal,
        tokens: Vec<Option<Secret>>,
    ) -> Result<Forwarded, WriteError> {
        let tokens = tokens.into_iter().map(|t| t.or_else(|| self.agent_token())).collect();
        let request = Request::AgentWrite { proposal, tokens };
        match self.call_any_server(&request, &[], WRITE_FORWARD_TIMEOUT).await? {
            (Response::Forward(result), _) => result,
            _ => Err(WriteError::Forward("the server answered a write with something else".into())),
        }
    }

    /// A server's side of [`Cluster::propose_via_server`]: the commands the token may apply
    /// are committed, each refused one is answered [`CommandResult::Rejected`] in its place.
    pub(super) async fn propose_for_agent(
        &self,
        proposal: Proposal,
        tokens: Vec<Option<Secret>>,
    ) -> Result<Forwarded, WriteError> {
        if tokens.len() != proposal.commands.len() {
            return Err(WriteError::Unsupported(format!(
                "{} tokens for {} commands: refused",
                tokens.len(),
                proposal.commands.len()
            )));
        }
        let answers = Arc::clone(self.client_answers().ok_or_else(starting)?);
        let verdicts = answers.authorize_agent_writes(&proposal.commands, &tokens);
        let mut allowed = Vec::with_capacity(proposal.commands.len());
        let mut refused = Vec::new();
        for (i, (command, verdict)) in proposal.commands.into_iter().zip(verdicts).enumerate() {
            match verdict {
                Ok(()) => allowed.push(command),
                Err(why) => {
                    tracing::warn!(reason = %why, "refused a client agent's catalog write");
                    refused.push((i, CommandResult::Rejected(why)));
                }
            }
        }
        let Forwarded { mut results, index } = if allowed.is_empty() {
            Forwarded { results: Vec::new(), index: self.last_applied() }
        } else {
            self.propose_forwarded(Proposal { commands: allowed, ..proposal }).await?
        };
        for (i, result) in refused {
            results.insert(i, result);
        }
        Ok(Forwarded { results, index })
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

fn starting() -> WriteError {
    WriteError::Unsupported("this server is still starting".into())
}

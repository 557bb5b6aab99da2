//! Other datacenters (WAN federation): which of their servers the WAN gossip pool knows,
//! how far away each is, and requests sent to one of them over the server RPC.
//!
//! A request for another datacenter (an HTTP API request with `?dc=`, a DNS query for
//! `*.dc2.consul`) is sent whole to one of its alive servers, nearest first (round-trip
//! times measured every [`RTT_PROBE_INTERVAL`]), and that server answers it as its own: the
//! status, index headers and body come back unchanged, blocking queries included. A server
//! that cannot be connected to is skipped for the next; one that took the request is never
//! asked a second time (it may have been a write). When none can be reached the answer is
//! Consul's "No path to datacenter".
//!
//! Datacenters keep separate Raft clusters: a WAN connection ([`Request::HelloWan`])
//! carries only HTTP, DNS and status requests, never Raft's.
//!
//! Bounds: [`REMOTE_CALLS_IN_FLIGHT_MAX`] requests at other datacenters at once (a blocking
//! query holds one for its whole wait); beyond, a request fails at once with
//! [`WriteError::ForwardsFull`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rpc::{HttpAnswer, HttpCall, Request, Response, RpcError};
use super::{Cluster, KnownServer, NodeId, ServerStatus, WriteError};

/// The servers of every other datacenter the WAN pool knows, by datacenter.
pub type RemoteServers = Arc<BTreeMap<String, Vec<KnownServer>>>;

/// Requests at other datacenters' servers at once. Each holds one connection (a call owns
/// its connection), and a server accepts at most `serve::CONNECTIONS_PER_PEER_MAX` (128)
/// from one address: this stays below it, with room for the round-trip probes.
pub const REMOTE_CALLS_IN_FLIGHT_MAX: usize = 120;
/// How often each remote server's round-trip time is measured.
pub const RTT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// A probe unanswered for this long counts as a failure.
const RTT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// An HTTP request may be a blocking query: Consul's longest wait (10 min) plus its
/// jitter (1/16) and a margin.
const HTTP_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// A DNS answer from another datacenter, at most (then SERVFAIL).
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// What this server knows of the other datacenters.
pub(super) struct Federation {
    servers: watch::Receiver<RemoteServers>,
    /// The last round-trip time measured to each remote server; `None` after a failure.
    rtts: Mutex<HashMap<NodeId, Option<Duration>>>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Federation {
    pub(super) fn new(servers: watch::Receiver<RemoteServers>) -> Federation {
        Federation {
            servers,
            rtts: Mutex::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(REMOTE_CALLS_IN_FLIGHT_MAX)),
        }
    }

    fn rtts(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Option<Duration>>> {
        self.rtts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The alive servers of `datacenter`, nearest first (measured before unmeasured, a
    /// server whose last call failed last).
    fn servers_of(&self, datacenter: &str) -> Vec<KnownServer> {
        let mut servers: Vec<KnownServer> = self
            .servers
            .borrow()
            .get(datacenter)
            .into_iter()
            .flatten()
            .filter(|s| s.status == ServerStatus::Alive)
            .cloned()
            .collect();
        let rtts = self.rtts();
        servers.sort_by_key(|s| distance(rtts.get(&s.id)));
        servers
    }

    fn record(&self, id: NodeId, rtt: Option<Duration>) {
        self.rtts().insert(id, rtt);
    }
}

/// Sort key for a server: measured first by round trip, then unmeasured, then failed.
fn distance(rtt: Option<&Option<Duration>>) -> (u8, Duration) {
    match rtt {
        Some(Some(rtt)) => (0, *rtt),
        None => (1, Duration::ZERO),
        Some(None) => (2, Duration::ZERO),
    }
}

impl Cluster {
    /// Every datacenter this server can reach, nearest first: its own, then the others by
    /// the round trip to their nearest server (unmeasured ones last, by name).
    pub fn datacenters(&self) -> Vec<String> {
        let federation = &self.federation;
        let mut remote: Vec<(String, (u8, Duration))> = {
            let servers = federation.servers.borrow();
            let rtts = federation.rtts();
            servers
                .iter()
                .filter(|(dc, _)| **dc != self.config.datacenter)
                .filter_map(|(dc, servers)| {
                    let alive = servers.iter().filter(|s| s.status == ServerStatus::Alive);
                    alive.map(|s| distance(rtts.get(&s.id))).min().map(|d| (dc.clone(), d))
                })
                .collect()
        };
        remote.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        std::iter::once(self.config.datacenter.clone()).chain(remote.into_iter().map(|(dc, _)| dc)).collect()
    }

    /// Whether `datacenter` is another datacenter with an alive server this one knows.
    pub fn knows_datacenter(&self, datacenter: &str) -> bool {
        datacenter != self.config.datacenter && !self.federation.servers_of(datacenter).is_empty()
    }

    /// Sends an HTTP API request to a server of `datacenter` and returns its answer
    /// unchanged.
    pub async fn forward_http_to(
        &self,
        datacenter: &str,
        call: HttpCall,
        body: Vec<u8>,
    ) -> Result<(HttpAnswer, Vec<u8>), WriteError> {
        match self.call_datacenter(datacenter, &Request::Http(call), &body, HTTP_TIMEOUT).await? {
            (Response::Http(answer), body) => Ok((answer, body)),
            _ => Err(WriteError::Forward(format!(
                "a server of {datacenter} answered an HTTP request with something else"
            ))),
        }
    }

    /// Asks a server of `datacenter` to answer a DNS query (received over TCP if `tcp`).
    pub async fn forward_dns_to(&self, datacenter: &str, packet: Vec<u8>, tcp: bool) -> Result<Vec<u8>, WriteError> {
        match self.call_datacenter(datacenter, &Request::Dns { tcp }, &packet, DNS_TIMEOUT).await? {
            (Response::Dns, answer) => Ok(answer),
            _ => Err(WriteError::Forward(format!("a server of {datacenter} answered a DNS query with something else"))),
        }
    }

    /// Calls one alive server of `datacenter`, nearest first, trying the next when one
    /// cannot be connected to (nothing was sent to it).
    async fn call_datacenter(
        &self,
        datacenter: &str,
        request: &Request,
        blob: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Vec<u8>), WriteError> {
        if !self.config.server {
            return Err(WriteError::Unsupported("only servers reach other datacenters".into()));
        }
        let _permit = self
            .federation
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| WriteError::ForwardsFull(REMOTE_CALLS_IN_FLIGHT_MAX))?;
        let servers = self.federation.servers_of(datacenter);
        for server in &servers {
            let started = Instant::now();
            let deadline = started + timeout;
            match self.call_server_in(Some(datacenter), server.id, &server.addr, request, blob, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(e @ (RpcError::Connect { .. } | RpcError::Refused(_))) => {
                    tracing::debug!(server = %server.name, error = %e, "remote server unreachable; trying another");
                    self.federation.record(server.id, None);
                }
                Err(e) => return Err(WriteError::Forward(format!("server {}: {e}", server.name))),
            }
        }
        if !servers.is_empty() {
            tracing::warn!(datacenter, tried = servers.len(), "no server of the datacenter could be reached");
        }
        Err(WriteError::NoPathToDatacenter)
    }
}

/// Measures the round trip to every alive remote server every [`RTT_PROBE_INTERVAL`] (a
/// status request on a pooled connection), until `shutdown`.
pub(super) async fn measure_round_trips(cluster: Cluster, shutdown: CancellationToken) {
    loop {
        let servers: Vec<(String, KnownServer)> = cluster
            .federation
            .servers
            .borrow()
            .iter()
            .flat_map(|(dc, servers)| servers.iter().map(move |s| (dc.clone(), s.clone())))
            .filter(|(dc, s)| s.status == ServerStatus::Alive && *dc != cluster.config.datacenter)
            .collect();
        // Servers gone from the pool (or not alive) keep no entry: the map stays the pool's size.
        cluster.federation.rtts().retain(|id, _| servers.iter().any(|(_, s)| s.id == *id));
        for (datacenter, server) in servers {
            let started = Instant::now();
            let deadline = started + RTT_PROBE_TIMEOUT;
            let probe =
                cluster.call_server_in(Some(&datacenter), server.id, &server.addr, &Request::Status, &[], deadline);
            let rtt = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = tokio::time::timeout(RTT_PROBE_TIMEOUT, probe) => match answer {
                    Ok(Ok((Response::Status { .. }, _))) => Some(started.elapsed()),
                    _ => None,
                },
            };
            cluster.federation.record(server.id, rtt);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RTT_PROBE_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: NodeId, status: ServerStatus) -> KnownServer {
        KnownServer { id, name: format!("s{id}"), addr: format!("127.0.0.1:{id}"), status }
    }

    #[test]
    fn servers_are_tried_nearest_first_and_failed_ones_last() {
        let map = BTreeMap::from([(
            "dc2".to_string(),
            vec![
                server(1, ServerStatus::Alive),
                server(2, ServerStatus::Alive),
                server(3, ServerStatus::Failed),
                server(4, ServerStatus::Alive),
                server(5, ServerStatus::Alive),
            ],
        )]);
        let (_tx, rx) = watch::channel(Arc::new(map));
        let federation = Federation::new(rx);
        federation.record(1, None);
        federation.record(2, Some(Duration::from_millis(30)));
        federation.record(5, Some(Duration::from_millis(10)));
        let order: Vec<NodeId> = federation.servers_of("dc2").iter().map(|s| s.id).collect();
        assert_eq!(order, vec![5, 2, 4, 1], "measured by RTT, then unmeasured, then failed; never a failed member");
        assert!(federation.servers_of("dc3").is_empty());
    }
}

//! The server-RPC listener: accepts connections from other servers, checks each one's hello,
//! and answers its requests one at a time through [`Cluster`].
//!
//! Bounds: [`CONNECTIONS_MAX`] connections at once, [`CONNECTIONS_PER_PEER_MAX`] from one
//! address (more are closed at accept, logged); a connection idle for [`IDLE_TIMEOUT`] is
//! closed; a forwarded write or read barrier is
//! answered within [`ANSWER_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::raft::InstallSnapshotRequest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::rpc::{read_frame, write_frame, FrameError, Request, Response, RpcStream, CONNECT_TIMEOUT};
use super::{Cluster, WriteError};
use crate::per_address::PerAddress;
use crate::tls::RpcTls;

/// Inbound server-RPC connections at most: other servers keep a handful each (replication,
/// votes, forwarding), and every client agent up to its forwarded requests in flight (64,
/// blocking queries included) plus its idle pool. Beyond it, or beyond
/// [`CONNECTIONS_PER_PEER_MAX`] from one address, a new connection is closed at once (logged)
/// and the caller retries.
pub const CONNECTIONS_MAX: usize = 8192;
/// Inbound connections from one IP address at most (Consul's `rpc_max_conns_per_client`
/// is 100).
pub const CONNECTIONS_PER_PEER_MAX: u32 = 128;
/// A connection with no request for this long is closed (callers reopen on demand, and
/// stop reusing theirs well before).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Forwarded writes and read barriers are answered within this, or fail with "No cluster
/// leader" (the caller's own timeout is a little longer).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Accepts server-RPC connections until `shutdown`.
pub async fn serve(listener: TcpListener, cluster: Cluster, shutdown: CancellationToken, tasks: TaskTracker) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let per_peer = PerAddress::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "server RPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, limit = CONNECTIONS_MAX, "too many server RPC connections; closing a new one");
            continue;
        };
        let Some(peer_slot) = per_peer.try_take(peer.ip(), CONNECTIONS_PER_PEER_MAX) else {
            tracing::warn!(%peer, limit = CONNECTIONS_PER_PEER_MAX, "too many server RPC connections from one address; closing a new one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            serve_connection(stream, peer, cluster, shutdown).await;
            drop((slot, peer_slot));
        });
    }
}

/// The first byte of a TLS handshake record: a client speaking TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// An accepted connection: its bytes, and whether its certificate proves the peer is not a
/// server (`verify_server_hostname`), which keeps it to what agents may ask.
struct Accepted {
    stream: Box<dyn RpcStream>,
    agent_only: bool,
}

/// The connection's bytes: TLS when the client starts a handshake (and this server has a
/// certificate), plain otherwise unless `verify_incoming` refuses plain ones. `None` when the
/// connection was refused (logged).
async fn accept(mut stream: TcpStream, peer: SocketAddr, cluster: &Cluster) -> Option<Accepted> {
    let tls = cluster.config.rpc_tls.as_deref();
    let mut first = [0u8; 1];
    match tokio::time::timeout(CONNECT_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => {
            tracing::debug!(%peer, "server RPC connection sent nothing; closed");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE {
        if tls.is_some_and(RpcTls::requires_incoming) {
            refuse(&mut stream, peer, "this server accepts only TLS connections (tls verify_incoming)").await;
            return None;
        }
        return Some(Accepted { stream: Box::new(stream), agent_only: false });
    }
    let Some(acceptor) = tls.and_then(RpcTls::acceptor) else {
        tracing::warn!(%peer, "server RPC TLS connection refused: this server has no certificate (tls cert_file)");
        return None;
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let certificates = stream.get_ref().1.peer_certificates();
            let is_server = tls.and_then(|t| t.peer_is_server(certificates, &cluster.config.datacenter));
            Some(Accepted { stream: Box::new(stream), agent_only: is_server == Some(false) })
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "server RPC TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, "server RPC TLS handshake not finished in time; closed");
            None
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, cluster: Cluster, shutdown: CancellationToken) {
    let Some(Accepted { mut stream, agent_only }) = accept(stream, peer, &cluster).await else { return };
    let hello = match tokio::time::timeout(CONNECT_TIMEOUT, read_frame::<Request>(&mut stream)).await {
        Ok(Ok((request, _))) => request,
        Ok(Err(e)) => return refuse(&mut stream, peer, &format!("bad first frame: {e}")).await,
        Err(_) => return tracing::debug!(%peer, "server RPC connection sent no hello; closed"),
    };
    let from_datacenter = match check_hello(&cluster, &hello) {
        Ok(from) => from,
        Err(why) => return refuse(&mut stream, peer, &why).await,
    };
    if write_frame(&mut stream, &Response::Hello, &[]).await.is_err() {
        return;
    }
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            frame = tokio::time::timeout(IDLE_TIMEOUT, read_frame::<Request>(&mut stream)) => frame,
        };
        let (request, blob) = match frame {
            Err(_) | Ok(Err(FrameError::Closed)) => return,
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return refuse(&mut stream, peer, &e.to_string()).await,
        };
        if let Some(dc) = from_datacenter.as_deref().filter(|_| !request.crosses_datacenters()) {
            let why = format!("a server of datacenter {dc:?} may not send this request across datacenters");
            return refuse(&mut stream, peer, &why).await;
        }
        if agent_only && request.server_only() {
            let why = "this request is for servers only, and this peer's certificate does not name a server \
                       (tls verify_server_hostname)";
            return refuse(&mut stream, peer, why).await;
        }
        let (response, blob) = answer(&cluster, request, blob).await;
        if let Err(e) = write_frame(&mut stream, &response, &blob).await {
            tracing::debug!(%peer, error = %e, "server RPC answer not sent");
            return;
        }
    }
}

/// Accepts a hello meant for this server: from this datacenter (`Ok(None)`), or from a
/// server of another one (`Ok(Some(its datacenter))`, a WAN connection); anything else is
/// a misrouted or foreign connection.
fn check_hello(cluster: &Cluster, hello: &Request) -> Result<Option<String>, String> {
    let ours = &cluster.config.datacenter;
    let (theirs, for_datacenter, from, to) = match hello {
        Request::Hello { cluster: theirs, from, to } => (theirs, theirs, from, to),
        Request::HelloWan { from_datacenter, datacenter, from, to } => (from_datacenter, datacenter, from, to),
        _ => return Err("the first frame is not a hello".into()),
    };
    if for_datacenter != ours {
        return Err(if theirs == for_datacenter {
            format!("server {from} is in cluster {theirs:?}; this server is in {ours:?}")
        } else {
            format!(
                "server {from} of {theirs:?} meant this for datacenter {for_datacenter:?}; this server is in {ours:?}"
            )
        });
    }
    if *to != cluster.config.node_id {
        return Err(format!("meant for server {to}; this is server {}", cluster.config.node_id));
    }
    Ok((theirs != ours).then(|| theirs.clone()))
}

/// Logs why a peer is refused, tells it, and lets the connection close.
async fn refuse(stream: &mut (impl tokio::io::AsyncWrite + Unpin), peer: SocketAddr, why: &str) {
    tracing::warn!(%peer, reason = why, "server RPC refused; connection closed");
    let _ = write_frame(stream, &Response::Refused(why.to_string()), &[]).await;
}

/// The answer to one request, and the answer's blob.
async fn answer(cluster: &Cluster, request: Request, blob: Vec<u8>) -> (Response, Vec<u8>) {
    let raft = &cluster.raft;
    let response = match request {
        Request::Hello { .. } | Request::HelloWan { .. } => Response::Refused("hello sent twice".into()),
        Request::AppendEntries(rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await),
        Request::InstallSnapshot(chunk) => {
            let rpc = InstallSnapshotRequest {
                vote: chunk.vote,
                meta: chunk.meta,
                offset: chunk.offset,
                data: blob,
                done: chunk.done,
            };
            Response::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        Request::Forward(proposal) => Response::Forward(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.propose_forwarded(proposal))
                .await
                .unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::AgentWrite { proposal, tokens } => Response::Forward(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.propose_for_agent(proposal, tokens))
                .await
                .unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::ReadIndex { consistent } => Response::ReadIndex(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.leader_read_index(consistent))
                .await
                .unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::Status => Response::Status { initialized: raft.is_initialized().await.unwrap_or(false) },
        Request::NodeCatalog { node, token } => Response::NodeCatalog(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.local_node_catalog(node, token))
                .await
                .unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::RenewSession { id } => Response::RenewSession(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.renew_session(&id)).await.unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::Operator(op) => Response::Operator(
            tokio::time::timeout(ANSWER_TIMEOUT, cluster.operate(op)).await.unwrap_or(Err(WriteError::NoLeader)),
        ),
        Request::Http(call) => match cluster.client_answers() {
            Some(answers) => {
                let (answer, body) = answers.http(call, blob).await;
                return (Response::Http(answer), body);
            }
            None => Response::Refused("this server is still starting".into()),
        },
        Request::Dns { tcp } => match cluster.client_answers() {
            Some(answers) => return (Response::Dns, answers.dns(blob, tcp).await),
            None => Response::Refused("this server is still starting".into()),
        },
    };
    (response, Vec::new())
}

//! Raft's calls to other servers, over the server RPC ([`super::rpc`]). openraft makes one
//! client per target and calls it sequentially, so each keeps one connection, reopened
//! after a failure.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;

use super::rpc::{Channel, Request, Response, Route, RpcError, SnapshotChunk};
use super::{NodeId, TypeConfig};

/// Makes the clients openraft asks for; knows who this server is and in which cluster.
pub struct Network {
    pub cluster: String,
    pub local: NodeId,
    pub tls: Option<std::sync::Arc<crate::tls::RpcTls>>,
}

pub struct PeerClient {
    target: NodeId,
    channel: Channel,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let route = Route {
            cluster: self.cluster.clone(),
            from: self.local,
            to: target,
            addr: node.addr.clone(),
            remote: None,
            tls: self.tls.clone(),
        };
        PeerClient { target, channel: Channel::new(route) }
    }
}

impl PeerClient {
    /// One call; a peer that cannot be reached is `Unreachable` (openraft backs off), any
    /// other failure a `NetworkError` (retried at once).
    ///
    /// openraft bounds an append (heartbeats included) by the heartbeat interval, 100 ms at
    /// the default timing, with a timeout of its own around this call: a link whose round
    /// trip is longer cannot carry Raft (raise `performance.raft_multiplier`).
    async fn call<E: std::error::Error>(
        &mut self,
        request: Request,
        blob: &[u8],
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        match self.channel.call(&request, blob, option.hard_ttl()).await {
            Ok((response, _)) => Ok(response),
            Err(e @ RpcError::Connect { .. }) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => {
                tracing::debug!(target_node = self.target, addr = %self.channel.route().addr, error = %e, "Raft RPC failed");
                Err(RPCError::Network(NetworkError::new(&e)))
            }
        }
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Network(NetworkError::new(&RpcError::Unexpected("answer of another kind")))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::AppendEntries(rpc), &[], &option).await? {
            Response::AppendEntries(result) => result.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let chunk = SnapshotChunk { vote: rpc.vote, meta: rpc.meta, offset: rpc.offset, done: rpc.done };
        match self.call(Request::InstallSnapshot(chunk), &rpc.data, &option).await? {
            Response::InstallSnapshot(result) => result.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(Request::Vote(rpc), &[], &option).await? {
            Response::Vote(result) => result.map_err(|e| self.remote(e)),
            _ => Err(self.unexpected()),
        }
    }
}

//! Operator actions on the Raft configuration, carried out by the leader wherever they are
//! asked: removing a server, handing leadership to another server, and autopilot's view of
//! each server's health.
//!
//! Leadership transfer (openraft 0.9 has none): the leader stops heartbeating, waits out
//! the followers' leader lease, and asks the target to start an election, which it wins
//! with an up-to-date log. Heartbeats resume either way; if the target did not win within
//! [`TRANSFER_TIMEOUT`], the old leader keeps leading (or another election settles it).

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::rpc::{Request, Response};
use super::{Cluster, NodeId, WriteError, LEADER_WAIT, RETRY_PAUSE};

/// How long a leadership transfer may take before it is called failed.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);
/// A server whose log is this close to the leader's counts as caught up (transfer target,
/// autopilot health).
const CAUGHT_UP_LAG_MAX: u64 = 250;

#[derive(Debug, Serialize, Deserialize)]
pub enum OperatorRequest {
    RemoveServer(NodeId),
    /// To the given voter, or the most caught-up one.
    TransferLeader(Option<NodeId>),
    /// Sent by the leader to a transfer's target: start an election now.
    Elect,
    Health,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum OperatorAnswer {
    Done,
    NewLeader(NodeId),
    Health(Vec<ServerHealth>),
}

/// One server as autopilot reports it (`/v1/operator/autopilot/health`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerHealth {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// The last log index the leader knows this server holds.
    pub last_index: u64,
    pub last_term: u64,
    /// Reachable and within [`CAUGHT_UP_LAG_MAX`] entries of the leader.
    pub healthy: bool,
}

impl Cluster {
    /// Removes server `id` from the Raft configuration (voter or learner).
    pub async fn remove_server(&self, id: NodeId) -> Result<(), WriteError> {
        self.on_leader(OperatorRequest::RemoveServer(id)).await.map(|_| ())
    }

    /// Hands leadership to `target` (or the most caught-up voter); returns the new leader.
    pub async fn transfer_leader(&self, target: Option<NodeId>) -> Result<NodeId, WriteError> {
        match self.on_leader(OperatorRequest::TransferLeader(target)).await? {
            OperatorAnswer::NewLeader(id) => Ok(id),
            _ => Err(WriteError::Forward("unexpected answer to a leadership transfer".into())),
        }
    }

    /// Every server's replication health, as the leader sees it.
    pub async fn autopilot_health(&self) -> Result<Vec<ServerHealth>, WriteError> {
        match self.on_leader(OperatorRequest::Health).await? {
            OperatorAnswer::Health(servers) => Ok(servers),
            _ => Err(WriteError::Forward("unexpected answer to a health request".into())),
        }
    }

    /// Runs `request` on the leader: here, or over RPC.
    async fn on_leader(&self, request: OperatorRequest) -> Result<OperatorAnswer, WriteError> {
        self.require_server()?;
        let deadline = Instant::now() + LEADER_WAIT;
        let leader = self.wait_for_leader_until(deadline).await.ok_or(WriteError::NoLeader)?;
        if leader.node_id == self.config.node_id {
            return self.operate(request).await;
        }
        let request = Request::Operator(request);
        match self.call_server(leader.node_id, &leader.address, &request, &[], deadline).await {
            Ok((Response::Operator(result), _)) => result,
            Ok(_) => Err(WriteError::Forward("the leader answered with something else".into())),
            Err(e) => Err(WriteError::Forward(e.to_string())),
        }
    }

    /// The leader's side (and a transfer target's, for [`OperatorRequest::Elect`]).
    pub(super) async fn operate(&self, request: OperatorRequest) -> Result<OperatorAnswer, WriteError> {
        if let OperatorRequest::Elect = request {
            self.raft.trigger().elect().await.map_err(|e| WriteError::Stopped(e.to_string()))?;
            return Ok(OperatorAnswer::Done);
        }
        if !self.is_leader() {
            return Err(WriteError::NoLeader);
        }
        match request {
            OperatorRequest::RemoveServer(id) => {
                let (servers, _) = self.configuration();
                let Some(server) = servers.iter().find(|s| s.id == id) else {
                    return Err(WriteError::Unsupported(format!("server {id} is not in the Raft configuration")));
                };
                if id == self.config.node_id {
                    return Err(WriteError::Unsupported(
                        "the leader cannot remove itself: transfer leadership first".into(),
                    ));
                }
                // A voter is removed as such (which drops it as a node too); a learner as a node.
                let change = if server.voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.raft.change_membership(change, false).await.map_err(|e| WriteError::Unsupported(e.to_string()))?;
                Ok(OperatorAnswer::Done)
            }
            OperatorRequest::TransferLeader(target) => self.hand_over(target).await.map(OperatorAnswer::NewLeader),
            OperatorRequest::Health => Ok(OperatorAnswer::Health(self.health())),
            OperatorRequest::Elect => unreachable!("answered above"),
        }
    }

    fn health(&self) -> Vec<ServerHealth> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let leader = metrics.current_leader;
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let matched = if Some(*id) == leader {
                    metrics.last_applied
                } else {
                    metrics.replication.as_ref().and_then(|r| r.get(id).copied().flatten())
                };
                let last_index = matched.map_or(0, |l| l.index);
                ServerHealth {
                    id: *id,
                    address: node.addr.clone(),
                    voter: voters.contains(id),
                    leader: Some(*id) == leader,
                    last_index,
                    last_term: matched.map_or(0, |l| l.leader_id.term),
                    healthy: matched.is_some() && last_log.saturating_sub(last_index) <= CAUGHT_UP_LAG_MAX,
                }
            })
            .collect()
    }

    async fn hand_over(&self, target: Option<NodeId>) -> Result<NodeId, WriteError> {
        let candidates: Vec<ServerHealth> =
            self.health().into_iter().filter(|s| s.voter && !s.leader && s.healthy).collect();
        let chosen = match target {
            Some(id) => candidates.iter().find(|s| s.id == id).ok_or_else(|| {
                WriteError::Unsupported(format!(
                    "server {id} is not a caught-up voter: cannot transfer leadership to it"
                ))
            })?,
            None => candidates
                .iter()
                .max_by_key(|s| s.last_index)
                .ok_or_else(|| WriteError::Unsupported("no other caught-up voter to transfer leadership to".into()))?,
        }
        .clone();
        let lease = Duration::from_millis(self.raft.config().election_timeout_max);
        // No heartbeats and no appends (writes wait at the gate) until the followers' lease
        // on this leader runs out; then the target's election can win.
        let gate = self.write_gate.write().await;
        self.raft.runtime_config().heartbeat(false);
        let outcome = async {
            let deadline = Instant::now() + TRANSFER_TIMEOUT;
            let mut metrics = self.raft.metrics();
            tokio::time::sleep(lease + RETRY_PAUSE).await;
            // An election can be lost to a split vote: ask again until the deadline.
            loop {
                let request = Request::Operator(OperatorRequest::Elect);
                match self.call_server(chosen.id, &chosen.address, &request, &[], deadline).await {
                    Ok((Response::Operator(Ok(_)), _)) => {}
                    Ok((Response::Operator(Err(e)), _)) => return Err(e),
                    Ok(_) => return Err(WriteError::Forward("the target answered with something else".into())),
                    Err(e) => return Err(WriteError::Forward(e.to_string())),
                }
                let round = Instant::now() + 2 * lease;
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    if leader == Some(chosen.id) {
                        return Ok(chosen.id);
                    }
                    if tokio::time::timeout_at(round.min(deadline), metrics.changed()).await.is_err() {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(WriteError::Unsupported("the target did not win the election in time".into()));
                }
            }
        }
        .await;
        drop(gate);
        self.raft.runtime_config().heartbeat(true);
        if let Ok(id) = &outcome {
            tracing::info!(new_leader = id, "leadership transferred");
        }
        outcome
    }
}

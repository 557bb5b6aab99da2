//! Which servers form the Raft cluster, decided from what gossip says about them.
//!
//! - **Bootstrap** (`bootstrap_expect` N > 1): once N alive servers are known, the one with
//!   the lowest node id asks every other whether it is part of a cluster already; if none is,
//!   it initializes Raft with all of them. Exactly one server bootstraps, whatever the start
//!   order, and a server added to a formed cluster never bootstraps a second one.
//! - **Joining** (on the leader): an alive server that is not a member is added as a learner,
//!   and promoted to voter once its log is within [`PROMOTE_LAG_MAX`] entries of the leader's.
//! - **Leaving** (on the leader): a server that left gracefully is removed from the voters; a
//!   failed one is removed only while the others still number `bootstrap_expect` (at least
//!   three; autopilot's
//!   `cleanup_dead_servers`: a dead server goes once its replacement is healthy).
//!
//! One change per turn, turns every [`TURN_INTERVAL`] or when the server list changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use tokio_util::sync::CancellationToken;

use super::rpc::{Connection, Request, Response, Route};
use super::{Cluster, NodeId};

const TURN_INTERVAL: Duration = Duration::from_secs(1);
/// A learner this close to the leader's last log index is promoted to voter.
const PROMOTE_LAG_MAX: u64 = 100;
/// A membership change that takes longer than this is abandoned and tried again next turn.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server of this datacenter as gossip reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownServer {
    pub id: NodeId,
    pub name: String,
    /// Its server-RPC address, `ip:port`.
    pub addr: String,
    pub status: ServerStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    Alive,
    Failed,
    Left,
}

/// Keeps the Raft membership in line with the servers gossip knows, until `shutdown`.
pub(super) async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut servers = cluster.servers.clone();
    let mut tick = tokio::time::interval(TURN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            changed = servers.changed() => if changed.is_err() { return },
        }
        let known = Arc::clone(&servers.borrow_and_update());
        let turn = async {
            match cluster.raft.is_initialized().await {
                Ok(false) => bootstrap_if_expected(&cluster, &known).await,
                Ok(true) if cluster.is_leader() => change_membership(&cluster, &known).await,
                _ => {}
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = turn => {}
        }
    }
}

async fn bootstrap_if_expected(cluster: &Cluster, known: &[KnownServer]) {
    let expect = cluster.config.bootstrap_expect as usize;
    if expect <= 1 {
        return;
    }
    let alive: Vec<&KnownServer> = known.iter().filter(|s| s.status == ServerStatus::Alive).collect();
    if alive.len() < expect || alive.iter().map(|s| s.id).min() != Some(cluster.config.node_id) {
        return;
    }
    for server in alive.iter().filter(|s| s.id != cluster.config.node_id) {
        match ask_initialized(cluster, server).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(server = %server.name, "a cluster has formed already; waiting for its leader to add this server");
                return;
            }
            Err(e) => {
                tracing::info!(server = %server.name, error = %e, "cannot ask a server before bootstrapping; will retry");
                return;
            }
        }
    }
    let members: BTreeMap<NodeId, BasicNode> = alive.iter().map(|s| (s.id, BasicNode::new(&s.addr))).collect();
    let names: Vec<&str> = alive.iter().map(|s| s.name.as_str()).collect();
    match cluster.raft.initialize(members).await {
        Ok(()) => tracing::info!(expect, servers = ?names, "bootstrapped the cluster"),
        Err(e) => tracing::warn!(error = %e, "bootstrap failed"),
    }
}

async fn ask_initialized(cluster: &Cluster, server: &KnownServer) -> Result<bool, super::rpc::RpcError> {
    let route = Route {
        cluster: cluster.config.datacenter.clone(),
        from: cluster.config.node_id,
        to: server.id,
        addr: server.addr.clone(),
        remote: None,
        tls: cluster.config.rpc_tls.clone(),
    };
    let mut connection = Connection::open(&route).await?;
    match connection.call(&Request::Status, &[], super::rpc::CONNECT_TIMEOUT).await? {
        (Response::Status { initialized }, _) => Ok(initialized),
        _ => Err(super::rpc::RpcError::Unexpected("not a status")),
    }
}

/// What the leader should change next, if anything.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    AddLearner(NodeId, String),
    /// A member's RPC address changed (a restart on another port or IP).
    SetAddress(NodeId, String),
    Promote(NodeId),
    RemoveVoter(NodeId),
    RemoveLearner(NodeId),
}

/// The one change to make now, given the membership, each member's replication progress
/// and what gossip knows. Pure, so the rules are tested without a cluster.
fn next_change(
    local: NodeId,
    expect: usize,
    members: &Members,
    matched: &BTreeMap<NodeId, u64>,
    last_log: u64,
    known: &[KnownServer],
) -> Option<Change> {
    let Members { voters, learners, addrs } = members;
    let status = |id: NodeId| known.iter().find(|s| s.id == id).map(|s| s.status);
    for server in known.iter().filter(|s| s.status == ServerStatus::Alive && s.id != local) {
        match addrs.get(&server.id) {
            None => return Some(Change::AddLearner(server.id, server.addr.clone())),
            Some(addr) if *addr != server.addr => return Some(Change::SetAddress(server.id, server.addr.clone())),
            Some(_) => {}
        }
    }
    for &id in learners {
        match status(id) {
            Some(ServerStatus::Alive)
                if last_log.saturating_sub(matched.get(&id).copied().unwrap_or(0)) <= PROMOTE_LAG_MAX =>
            {
                return Some(Change::Promote(id))
            }
            Some(ServerStatus::Left) => return Some(Change::RemoveLearner(id)),
            _ => {}
        }
    }
    for &id in voters.iter().filter(|&&id| id != local) {
        if status(id) == Some(ServerStatus::Left) {
            return Some(Change::RemoveVoter(id));
        }
    }
    let healthy = voters.iter().filter(|&&id| id == local || status(id) == Some(ServerStatus::Alive)).count();
    // Never below three voters, whatever this server was started with (a server added to a
    // formed cluster has no `bootstrap_expect`).
    if healthy >= expect.max(3) {
        if let Some(&dead) = voters.iter().find(|&&id| id != local && status(id) == Some(ServerStatus::Failed)) {
            return Some(Change::RemoveVoter(dead));
        }
    }
    None
}

/// The Raft configuration as [`next_change`] needs it.
struct Members {
    voters: BTreeSet<NodeId>,
    learners: BTreeSet<NodeId>,
    /// Every member's RPC address.
    addrs: BTreeMap<NodeId, String>,
}

async fn change_membership(cluster: &Cluster, known: &[KnownServer]) {
    // Not while leadership is being handed over (an append would renew the old lease).
    let Ok(_gate) = cluster.write_gate.try_read() else { return };
    let (members, matched, last_log) = {
        let metrics = cluster.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let members = Members {
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            addrs: membership.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
        };
        let matched: BTreeMap<NodeId, u64> =
            metrics.replication.iter().flatten().map(|(id, log_id)| (*id, log_id.map_or(0, |l| l.index))).collect();
        (members, matched, metrics.last_log_index.unwrap_or(0))
    };
    let expect = cluster.config.bootstrap_expect as usize;
    let Some(change) = next_change(cluster.config.node_id, expect, &members, &matched, last_log, known) else {
        return;
    };
    let name = |id: NodeId| known.iter().find(|s| s.id == id).map_or_else(|| id.to_string(), |s| s.name.clone());
    let raft = &cluster.raft;
    let result = tokio::time::timeout(CHANGE_TIMEOUT, async {
        match &change {
            Change::AddLearner(id, addr) => raft.add_learner(*id, BasicNode::new(addr), false).await.map(|_| ()),
            Change::SetAddress(id, addr) => raft
                .change_membership(ChangeMembers::SetNodes(BTreeMap::from([(*id, BasicNode::new(addr))])), false)
                .await
                .map(|_| ()),
            Change::Promote(id) => {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false).await.map(|_| ())
            }
            Change::RemoveVoter(id) => {
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false).await.map(|_| ())
            }
            Change::RemoveLearner(id) => {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([*id])), false).await.map(|_| ())
            }
        }
    })
    .await;
    match result {
        Ok(Ok(())) => tracing::info!(?change, server = %name(change_target(&change)), "Raft membership changed"),
        Ok(Err(e)) => tracing::warn!(?change, error = %e, "Raft membership change failed; will retry"),
        Err(_) => tracing::warn!(?change, "Raft membership change timed out; will retry"),
    }
}

fn change_target(change: &Change) -> NodeId {
    match change {
        Change::AddLearner(id, _)
        | Change::SetAddress(id, _)
        | Change::Promote(id)
        | Change::RemoveVoter(id)
        | Change::RemoveLearner(id) => *id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: NodeId, status: ServerStatus) -> KnownServer {
        KnownServer { id, name: format!("s{id}"), addr: format!("127.0.0.1:{}", 8300 + id), status }
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn leader_adds_learners_promotes_caught_up_ones_and_removes_the_departed() {
        use ServerStatus::*;
        let none = BTreeMap::new();
        let check = |voters: &[NodeId], learners: &[NodeId], matched: &BTreeMap<NodeId, u64>, known: &[KnownServer]| {
            let addrs = voters.iter().chain(learners).map(|id| (*id, server(*id, Alive).addr)).collect();
            let members = Members { voters: set(voters), learners: set(learners), addrs };
            next_change(1, 3, &members, matched, 1000, known)
        };
        let all_alive = [server(1, Alive), server(2, Alive), server(3, Alive)];
        assert_eq!(check(&[1, 2, 3], &[], &none, &all_alive), None);
        // A new server: learner first.
        let four = [server(1, Alive), server(2, Alive), server(3, Alive), server(4, Alive)];
        assert_eq!(check(&[1, 2, 3], &[], &none, &four), Some(Change::AddLearner(4, "127.0.0.1:8304".into())));
        // Promoted only once caught up.
        assert_eq!(check(&[1, 2, 3], &[4], &BTreeMap::from([(4, 10)]), &four), None);
        assert_eq!(check(&[1, 2, 3], &[4], &BTreeMap::from([(4, 950)]), &four), Some(Change::Promote(4)));
        // A graceful leave is removed at once; a failure only while the rest still number 3.
        let left = [server(1, Alive), server(2, Alive), server(3, Left)];
        assert_eq!(check(&[1, 2, 3], &[], &none, &left), Some(Change::RemoveVoter(3)));
        let failed = [server(1, Alive), server(2, Alive), server(3, Failed)];
        assert_eq!(check(&[1, 2, 3], &[], &none, &failed), None);
        let replaced = [server(1, Alive), server(2, Alive), server(3, Failed), server(4, Alive)];
        assert_eq!(check(&[1, 2, 3, 4], &[], &none, &replaced), Some(Change::RemoveVoter(3)));
        // Never itself, whatever gossip says.
        let me_left = [server(1, Left), server(2, Alive), server(3, Alive)];
        assert_eq!(check(&[1, 2, 3], &[], &none, &me_left), None);
        // A member back on another address gets it updated.
        let mut moved = all_alive.clone();
        moved[2].addr = "127.0.0.1:9999".into();
        assert_eq!(check(&[1, 2, 3], &[], &none, &moved), Some(Change::SetAddress(3, "127.0.0.1:9999".into())));
        // A learner that left is dropped.
        let learner_left = [server(1, Alive), server(2, Alive), server(3, Alive), server(4, Left)];
        assert_eq!(check(&[1, 2, 3], &[4], &none, &learner_left), Some(Change::RemoveLearner(4)));
    }
}

//! Catalog reconciliation of gossip members, run by the leader through Raft: every member
//! has a catalog node (its advertised address) with a `serfHealth` check — alive → passing,
//! failed → critical (so its services leave DNS at once), left → node deregistered; a member
//! failed for longer than `reconnect_timeout` is reaped (deregistered and forgotten).
//!
//! Invariant: reconciliation writes only a member's node row (when missing or moved) and its
//! `serfHealth` check, and only when they differ from what the catalog holds. Why: it must be
//! idempotent (it runs after every membership change, every leader change and periodically)
//! and must never fight anti-entropy, which owns each agent's services and other checks.
//! This server's own node is left to its anti-entropy, which writes the same check.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::gossip::{Gossip, MemberInfo, MemberStatus};
use crate::model::{CheckDefinition, CheckStatus, Command, DeregisterRequest, RegisterRequest};
use crate::store::Store;

/// A full pass runs at least this often (it also reaps, and catches a write that failed).
const FULL_PASS_EVERY: Duration = Duration::from_secs(30);
/// How often leadership is looked at: a new leader reconciles everything at once.
const LEADER_POLL: Duration = Duration::from_millis(500);
const SERF_CHECK_ID: &str = "serfHealth";
const SERF_CHECK_NAME: &str = "Serf Health Status";
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

pub struct Reconciler {
    pub gossip: Gossip,
    pub cluster: Cluster,
    pub store: Store,
    pub own_node: String,
    pub datacenter: String,
    pub reconnect_timeout: Duration,
}

/// What the catalog should hold for one member.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Desired {
    Present { address: String, node_id: String, status: CheckStatus },
    Absent,
}

impl Reconciler {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut members = self.gossip.subscribe();
        let mut failed_since: HashMap<String, Instant> = HashMap::new();
        let mut was_leader = false;
        let mut next_full = Instant::now();
        loop {
            let membership_changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = members.changed() => if changed.is_err() { return } else { true },
                _ = tokio::time::sleep(LEADER_POLL) => false,
            };
            let leader = self.cluster.is_leader();
            let became_leader = leader && !was_leader;
            was_leader = leader;
            let now = Instant::now();
            if !leader || !(membership_changed || became_leader || now >= next_full) {
                continue;
            }
            next_full = now + FULL_PASS_EVERY;
            let list = members.borrow_and_update().clone();
            let desired = desired_catalog(&list, &mut failed_since, now, self.reconnect_timeout);
            for (name, want) in desired {
                if name == self.own_node {
                    continue;
                }
                if let Err(e) = self.apply(&name, &want).await {
                    tracing::warn!(node = %name, error = %e, "member reconciliation failed; retried on the next pass");
                }
                if want == Desired::Absent && failed_since.remove(&name).is_some() {
                    // Reaped: forget it in gossip too, so it is not re-registered.
                    let _ = self.gossip.force_leave(&name, true).await;
                }
            }
        }
    }

    /// Writes what differs between `want` and the catalog for node `name`.
    async fn apply(&self, name: &str, want: &Desired) -> Result<(), String> {
        let (node, check) = {
            let read = self.store.read().map_err(|e| e.to_string())?;
            (read.node(name).map_err(|e| e.to_string())?, read.check(name, SERF_CHECK_ID).map_err(|e| e.to_string())?)
        };
        let command = match want {
            Desired::Absent if node.is_some() => {
                tracing::info!(node = %name, "member left or was reaped: deregistering its node");
                Command::Deregister(DeregisterRequest { node: name.to_string(), service_id: None, check_id: None })
            }
            Desired::Absent => return Ok(()),
            Desired::Present { address, node_id, status } => {
                let node_ok = node.as_ref().is_some_and(|n| &n.address == address);
                let output = if *status == CheckStatus::Passing { ALIVE_OUTPUT } else { FAILED_OUTPUT };
                let check_ok = check.as_ref().is_some_and(|c| c.status == *status && c.output == output);
                if node_ok && check_ok {
                    return Ok(());
                }
                tracing::info!(node = %name, status = ?status, "reconciling member into the catalog");
                Command::Register(Box::new(RegisterRequest {
                    id: if node_ok { node.map(|n| n.id).unwrap_or_default() } else { node_id.clone() },
                    node: name.to_string(),
                    address: address.clone(),
                    datacenter: self.datacenter.clone(),
                    tagged_addresses: BTreeMap::new(),
                    node_meta: BTreeMap::new(),
                    service: None,
                    checks: vec![CheckDefinition {
                        check_id: SERF_CHECK_ID.to_string(),
                        name: SERF_CHECK_NAME.to_string(),
                        status: *status,
                        notes: String::new(),
                        output: output.to_string(),
                        service_id: String::new(),
                        check_type: String::new(),
                    }],
                    skip_node_update: node_ok,
                }))
            }
        };
        self.cluster.write(command).await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The catalog entry each member name should have. Several members can share a name (an
/// agent restarted on another address): a live one wins, else the newest.
fn desired_catalog(
    members: &[MemberInfo],
    failed_since: &mut HashMap<String, Instant>,
    now: Instant,
    reconnect_timeout: Duration,
) -> BTreeMap<String, Desired> {
    let mut best: BTreeMap<&str, &MemberInfo> = BTreeMap::new();
    for m in members {
        let rank = |m: &MemberInfo| (matches!(m.status, MemberStatus::Alive | MemberStatus::Leaving), m.id.boot);
        match best.get(m.id.name.as_str()) {
            Some(old) if rank(old) >= rank(m) => {}
            _ => {
                best.insert(&m.id.name, m);
            }
        }
    }
    failed_since.retain(|name, _| best.get(name.as_str()).is_some_and(|m| m.status == MemberStatus::Failed));
    best.into_iter()
        .map(|(name, m)| {
            let present = |status| Desired::Present {
                address: m.id.addr.ip().to_string(),
                node_id: m.id.node_id_string(),
                status,
            };
            let want = match m.status {
                MemberStatus::Alive | MemberStatus::Leaving => present(CheckStatus::Passing),
                MemberStatus::Left => Desired::Absent,
                MemberStatus::Failed => {
                    let since = *failed_since.entry(name.to_string()).or_insert(now);
                    if now.duration_since(since) >= reconnect_timeout {
                        Desired::Absent
                    } else {
                        present(CheckStatus::Critical)
                    }
                }
            };
            (name.to_string(), want)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::{MemberId, Role};

    fn member(name: &str, port: u16, boot: u64, status: MemberStatus) -> MemberInfo {
        MemberInfo {
            id: MemberId {
                name: name.into(),
                addr: format!("127.0.0.{}:{port}", port % 200).parse().unwrap(),
                boot,
                role: Role::Client,
                datacenter: "dc1".into(),
                server_port: 0,
                node_id: [7; 16],
                build: "0".into(),
                protocol: 1,
            },
            status,
        }
    }

    #[test]
    fn statuses_map_to_catalog_entries_and_failed_members_are_reaped() {
        let now = Instant::now();
        let mut since = HashMap::new();
        let list = vec![
            member("a", 1, 1, MemberStatus::Alive),
            member("b", 2, 1, MemberStatus::Failed),
            member("c", 3, 1, MemberStatus::Left),
            // Restarted on another address: the live one wins over its failed old self.
            member("d", 4, 1, MemberStatus::Failed),
            member("d", 5, 2, MemberStatus::Alive),
        ];
        let timeout = Duration::from_secs(3600);
        let want = desired_catalog(&list, &mut since, now, timeout);
        let status = |n: &str| match &want[n] {
            Desired::Present { status, .. } => Some(*status),
            Desired::Absent => None,
        };
        assert_eq!(status("a"), Some(CheckStatus::Passing));
        assert_eq!(status("b"), Some(CheckStatus::Critical));
        assert_eq!(status("c"), None);
        assert_eq!(status("d"), Some(CheckStatus::Passing));
        assert!(matches!(&want["d"], Desired::Present { address, .. } if address == "127.0.0.5"));
        // Still failed past reconnect_timeout: reaped.
        let later = desired_catalog(&list, &mut since, now + timeout, timeout);
        assert_eq!(later["b"], Desired::Absent);
    }
}

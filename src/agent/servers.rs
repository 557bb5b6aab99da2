//! Tells the cluster which servers of this datacenter gossip knows, as they come and go
//! (the input of bootstrap-expect and of the leader's membership changes).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{raft_node_id, KnownServer, ServerStatus};
use crate::gossip::{Gossip, MemberInfo, MemberStatus, Role};

/// The servers of `datacenter` among `members`, with their server-RPC addresses.
pub fn known_servers(members: &[MemberInfo], datacenter: &str) -> Vec<KnownServer> {
    members
        .iter()
        .filter(|m| m.id.role == Role::Server && m.id.datacenter == datacenter && m.id.server_port != 0)
        .map(|m| KnownServer {
            id: raft_node_id(m.id.node_id),
            name: m.id.name.clone(),
            addr: std::net::SocketAddr::new(m.id.addr.ip(), m.id.server_port).to_string(),
            status: match m.status {
                MemberStatus::Alive => ServerStatus::Alive,
                MemberStatus::Failed => ServerStatus::Failed,
                MemberStatus::Leaving | MemberStatus::Left => ServerStatus::Left,
            },
        })
        .collect()
}

/// A receiver of [`known_servers`], updated by a task on `tasks` whenever gossip's member
/// list changes, until `shutdown`.
pub fn watch_servers(
    gossip: &Gossip,
    datacenter: String,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<Arc<Vec<KnownServer>>> {
    let mut members = gossip.subscribe();
    let (tx, rx) = watch::channel(Arc::new(known_servers(&members.borrow_and_update(), &datacenter)));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = members.changed() => if changed.is_err() { return },
            }
            let servers = known_servers(&members.borrow_and_update(), &datacenter);
            tx.send_if_modified(|current| {
                let changed = **current != servers;
                if changed {
                    *current = Arc::new(servers);
                }
                changed
            });
        }
    });
    rx
}

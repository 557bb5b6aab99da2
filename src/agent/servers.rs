//! Tells the cluster which servers gossip knows, as they come and go: the servers of this
//! datacenter from the LAN pool (the input of bootstrap-expect and of the leader's
//! membership changes), and those of every other datacenter from the WAN pool (where
//! requests for them go).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{raft_node_id, KnownServer, RemoteServers, ServerStatus};
use crate::gossip::{Gossip, MemberInfo, MemberStatus, Role};

/// `member` as a server, with its server-RPC address, if it is one.
fn as_server(member: &MemberInfo) -> Option<KnownServer> {
    (member.id.role == Role::Server && member.id.server_port != 0).then(|| KnownServer {
        id: raft_node_id(member.id.node_id),
        name: member.id.name.clone(),
        addr: std::net::SocketAddr::new(member.id.addr.ip(), member.id.server_port).to_string(),
        status: match member.status {
            MemberStatus::Alive => ServerStatus::Alive,
            MemberStatus::Failed => ServerStatus::Failed,
            MemberStatus::Leaving | MemberStatus::Left => ServerStatus::Left,
        },
    })
}

/// The servers of `datacenter` among `members`, with their server-RPC addresses.
pub fn known_servers(members: &[MemberInfo], datacenter: &str) -> Vec<KnownServer> {
    members.iter().filter(|m| m.id.datacenter == datacenter).filter_map(as_server).collect()
}

/// The servers of every datacenter but `local` among WAN `members`, by datacenter.
pub fn remote_servers(members: &[MemberInfo], local: &str) -> BTreeMap<String, Vec<KnownServer>> {
    let mut by_datacenter: BTreeMap<String, Vec<KnownServer>> = BTreeMap::new();
    for member in members.iter().filter(|m| m.id.datacenter != local) {
        if let Some(server) = as_server(member) {
            by_datacenter.entry(member.id.datacenter.clone()).or_default().push(server);
        }
    }
    by_datacenter
}

/// A receiver of [`known_servers`], updated whenever the LAN pool's member list changes.
pub fn watch_servers(
    gossip: &Gossip,
    datacenter: String,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<Arc<Vec<KnownServer>>> {
    watch_members(gossip, shutdown, tasks, move |members| known_servers(members, &datacenter))
}

/// A receiver of [`remote_servers`], updated whenever the WAN pool's member list changes
/// (empty, never updated, on an agent without a WAN pool).
pub fn watch_remote_servers(
    wan: Option<&Gossip>,
    local: String,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> watch::Receiver<RemoteServers> {
    match wan {
        Some(wan) => watch_members(wan, shutdown, tasks, move |members| remote_servers(members, &local)),
        None => watch::channel(RemoteServers::default()).1,
    }
}

/// A receiver of `derive(members)`, updated by a task on `tasks` whenever gossip's member
/// list changes (and only if the derived value does), until `shutdown`.
fn watch_members<T: PartialEq + Send + Sync + 'static>(
    gossip: &Gossip,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
    derive: impl Fn(&[MemberInfo]) -> T + Send + 'static,
) -> watch::Receiver<Arc<T>> {
    let mut members = gossip.subscribe();
    let (tx, rx) = watch::channel(Arc::new(derive(&members.borrow_and_update())));
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = members.changed() => if changed.is_err() { return },
            }
            let derived = derive(&members.borrow_and_update());
            tx.send_if_modified(|current| {
                let changed = **current != derived;
                if changed {
                    *current = Arc::new(derived);
                }
                changed
            });
        }
    });
    rx
}

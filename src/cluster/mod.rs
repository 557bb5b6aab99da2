//! Raft glue: openraft's types, the LMDB log store and state machine, RPC, and the one write
//! path of the daemon, [`Cluster::write`].
//!
//! Architecture Invariant: openraft is used only inside this module. Why: it is pinned to
//! 0.9 and will be ported to 0.10; the rest of cairn sees `Command`s in and results out.
//!
//! Writes are batched: concurrent [`Cluster::write`] calls queue up while the previous Raft
//! entry is being made durable, and then travel together as one [`Proposal`] — one log
//! append, one fsync — instead of one fsync each. A write returns after its entry is committed
//! and applied, with the result of its own command.

// openraft's `StorageError` is large and its size is not ours to change.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use log_store::LogStore;
pub use state_machine::StateMachine;

use crate::model::{Command, CommandResult, Proposal};
use crate::store::{Store, StoreError};

pub type NodeId = u64;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
);

type Raft = openraft::Raft<TypeConfig>;

/// Commands in one proposal at most. Bounds the apply transaction and the latency of the
/// slowest write in a batch.
const BATCH_COMMANDS_MAX: usize = 1024;
/// Approximate payload bytes in one proposal at most (a full batch of 512 KiB KV values
/// would otherwise make one huge log entry).
const BATCH_BYTES_MAX: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// `ip:port` other servers (and `/v1/status/leader`) use for this server.
    pub advertise: String,
    /// Form a one-server cluster at first start (`-bootstrap-expect 1`, `-dev`).
    pub bootstrap: bool,
    /// False on a client agent: its Raft node is never initialized and holds no state, and
    /// every write or read fails with [`WriteError::NoServers`] until clients forward to
    /// servers (the multi-server work).
    pub server: bool,
    /// Writes waiting for a proposal at most; when full, writes fail at once with
    /// [`WriteError::QueueFull`].
    pub write_queue_max: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start Raft: {0}")]
    Start(String),
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(String),
}

/// Why a write was not applied. Each maps to one HTTP status in `http`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("No known Consul servers: this is a client agent, and forwarding to servers is not implemented yet")]
    NoServers,
    #[error("too many writes pending ({0} queued); try again")]
    QueueFull(usize),
    #[error("data store is full: {room_bytes} bytes left of a {size_bytes}-byte LMDB map; raise lmdb_map_size_mb")]
    MapFull { room_bytes: u64, size_bytes: u64 },
    #[error("Raft stopped: {0}")]
    Stopped(String),
}

/// A write's share of [`Cluster::queued_bytes`], given back when dropped.
struct QueuedCost<'a> {
    total: &'a AtomicU64,
    cost: u64,
}

impl<'a> QueuedCost<'a> {
    fn add(total: &'a AtomicU64, cost: u64) -> QueuedCost<'a> {
        total.fetch_add(cost, Ordering::Relaxed);
        QueuedCost { total, cost }
    }
}

impl Drop for QueuedCost<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.cost, Ordering::Relaxed);
    }
}

struct PendingWrite {
    command: Command,
    reply: oneshot::Sender<Result<CommandResult, WriteError>>,
}

/// Handle on this server's Raft node. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    raft: Raft,
    store: Store,
    queue: mpsc::Sender<PendingWrite>,
    /// Approximate LMDB bytes the queued and in-flight writes will take.
    queued_bytes: Arc<AtomicU64>,
    config: Arc<ClusterConfig>,
}

/// Leader as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub node_id: NodeId,
    pub address: String,
}

impl Cluster {
    /// Starts the Raft node on `store`, bootstraps a one-server cluster if asked, and spawns
    /// the proposer task on `tasks`; it stops when `shutdown` is cancelled.
    pub async fn start(
        store: Store,
        config: ClusterConfig,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Cluster, ClusterError> {
        let raft_config = Config {
            cluster_name: "cairn".into(),
            // Well above an fsync's p99 on slow disks (openraft's 50/150-300 ms are tight).
            heartbeat_interval: 250,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            install_snapshot_timeout: 5000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(5_000),
            // Entries can be MiBs (batched writes); keep few once they are in a snapshot.
            max_in_snapshot_log_to_keep: 500,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ClusterError::Start(e.to_string()))?);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            network::Network,
            LogStore::new(store.clone()),
            StateMachine::new(store.clone()),
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;

        if config.bootstrap {
            let members = BTreeMap::from([(config.node_id, BasicNode::new(&config.advertise))]);
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node_id = config.node_id, "bootstrapped a one-server cluster"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!("cluster already initialized")
                }
                Err(e) => return Err(ClusterError::Bootstrap(e.to_string())),
            }
        }

        let (queue, rx) = mpsc::channel(config.write_queue_max.max(1));
        tasks.spawn(run_proposer(raft.clone(), rx, shutdown));
        Ok(Cluster { raft, store, queue, queued_bytes: Arc::default(), config: Arc::new(config) })
    }

    /// Proposes `command` and waits until it is committed and applied. Fails fast, before
    /// anything reaches the log, when there is no leader, the queue is full or the LMDB map is
    /// nearly full (a full map inside a log append would stop Raft).
    pub async fn write(&self, command: Command) -> Result<CommandResult, WriteError> {
        self.require_server()?;
        // Room is checked against what queued writes will take too (each counted about four
        // times: log entry, state rows, indexes, and the copy-on-write pages of the commit).
        let cost = 4 * command.approx_size() as u64;
        let (room_bytes, size_bytes) = self.store.map_room();
        // Deletions keep working on a nearly full map (half the reserve), or it could never
        // be emptied again.
        let reserve = (size_bytes / 8).min(64 << 20) / if command.frees_space() { 2 } else { 1 };
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if room_bytes < reserve + queued + cost {
            // Purging the log is what gives room back: ask for a snapshot now rather than
            // after the next 5,000 entries.
            if let Err(e) = self.raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "could not trigger a snapshot to free LMDB space");
            }
            return Err(WriteError::MapFull { room_bytes, size_bytes });
        }
        if self.leader().is_none() {
            return Err(WriteError::NoLeader);
        }
        let (reply, rx) = oneshot::channel();
        self.queue.try_send(PendingWrite { command, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull(self.config.write_queue_max),
            mpsc::error::TrySendError::Closed(_) => WriteError::Stopped("shutting down".into()),
        })?;
        // Counted until this write is answered *or abandoned*: a client that disconnects (or
        // a drain that times out) drops this future mid-await, and the guard still gives the
        // room back. Without it, abandoned writes would leak until every write is refused.
        let _queued = QueuedCost::add(&self.queued_bytes, cost);
        rx.await.unwrap_or_else(|_| Err(WriteError::Stopped("shutting down".into())))
    }

    /// LMDB bytes that queued and in-flight writes are expected to take.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// A backup archive of the whole replicated state, taken from one LMDB read transaction
    /// (writes go on meanwhile), with the highest index it had issued. Blocking work runs
    /// on a blocking thread.
    pub async fn backup(&self) -> Result<(Vec<u8>, u64), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut archive = crate::store::archive::begin();
            let meta =
                store.snapshot_into(&mut archive, &[state_machine::META_LAST_APPLIED, crate::store::INDEX_OFFSET])?;
            let bad = |e: &dyn std::fmt::Display| StoreError::BadSnapshot(e.to_string());
            let applied: Option<openraft::LogId<NodeId>> = match &meta[0] {
                Some(bytes) => serde_json::from_slice(bytes).map_err(|e| bad(&e))?,
                None => None,
            };
            let offset = match &meta[1] {
                Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| bad(&"index offset"))?),
                None => 0,
            };
            let (index, term) = applied.map_or((0, 0), |id| (id.index + offset, id.leader_id.term));
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let archive = crate::store::archive::finish(archive, index, term, now).map_err(|e| bad(&e))?;
            Ok((archive, index))
        })
        .await
        .map_err(|e| StoreError::BadSnapshot(format!("backup task failed: {e}")))?
    }

    /// Confirms with a quorum that this server is still the leader and waits until it has
    /// applied everything committed before (`?consistent` reads).
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        self.require_server()?;
        self.raft.ensure_linearizable().await.map(|_| ()).map_err(|_| WriteError::NoLeader)
    }

    /// Fails on a client agent, which holds no replicated state to read or write.
    pub fn require_server(&self) -> Result<(), WriteError> {
        if self.config.server {
            Ok(())
        } else {
            Err(WriteError::NoServers)
        }
    }

    /// The leader this server knows, `None` when it knows none or its Raft core has stopped
    /// (a stopped core's last view is stale: `/v1/status/leader` answers "" then).
    pub fn leader(&self) -> Option<LeaderInfo> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.running_state.is_err() {
            return None;
        }
        let id = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        Some(LeaderInfo { node_id: id, address })
    }

    /// Whether this server knows a leader (cheaper than [`Cluster::leader`]: no address copy).
    pub fn knows_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.running_state.is_ok() && metrics.current_leader.is_some()
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|l| l.node_id == self.config.node_id)
    }

    /// Addresses of the voting servers.
    pub fn peers(&self) -> Vec<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }

    /// The index of the last applied log entry.
    pub fn last_applied(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
    }

    /// Waits (up to `timeout`) until this server knows a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if metrics.borrow_and_update().current_leader.is_some() {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && self.leader().is_some()
    }

    /// Resolves when the Raft core has stopped (a storage error, or a shutdown), with why.
    /// The agent exits non-zero on it: a server whose Raft stopped would otherwise answer
    /// every write with 500 and serve a frozen DNS view while looking alive.
    pub async fn wait_stopped(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "Raft stopped".to_string();
            }
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
    }
}

/// Collects queued writes into proposals, one in flight at a time: while one entry is being
/// made durable, the next batch accumulates.
async fn run_proposer(raft: Raft, mut rx: mpsc::Receiver<PendingWrite>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = rx.recv() => match next { Some(w) => w, None => return },
        };
        let mut batch = vec![first];
        let mut bytes = batch[0].command.approx_size();
        while batch.len() < BATCH_COMMANDS_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.command.approx_size();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().map(|w| (w.command, w.reply)).unzip();
        match raft.client_write(Proposal::new(commands)).await {
            Ok(response) => {
                let results = response.data;
                debug_assert_eq!(results.len(), replies.len());
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                let error = match e {
                    RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => WriteError::NoLeader,
                    other => WriteError::Stopped(other.to_string()),
                };
                tracing::warn!(error = %error, "proposal failed");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

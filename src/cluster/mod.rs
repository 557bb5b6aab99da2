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

mod client;
mod federation;
mod log_store;
mod membership;
mod network;
mod operator;
mod replay;
/// Public for the fuzz targets (`fuzz/`), which feed it hostile frames.
pub mod rpc;
mod serve;
mod session_ttl;
mod state_machine;
mod token_expiry;
mod wal;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use client::ClientAnswers;
pub use federation::RemoteServers;
pub use log_store::LogStore;
pub use membership::{KnownServer, ServerStatus};
pub use operator::ServerHealth;
pub use rpc::{HttpAnswer, HttpCall, NodeCatalog, BLOB_BYTES_MAX as FORWARDED_BODY_BYTES_MAX};
pub use state_machine::StateMachine;

pub use crate::config::RaftTuning;
use crate::model::acl::Secret;
use crate::model::{Command, CommandResult, Proposal};
use crate::store::{Store, StoreError};

pub type NodeId = u64;

/// A server's Raft node id, derived from its node UUID (the first 8 bytes) so that it is the
/// same across restarts and every server computes it alike from gossip.
pub fn raft_node_id(node_uuid: [u8; 16]) -> NodeId {
    let mut first = [0u8; 8];
    first.copy_from_slice(&node_uuid[..8]);
    u64::from_be_bytes(first).max(1)
}

/// One server of the Raft configuration (`/v1/operator/raft/configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        // A snapshot is a file (`state_machine`): sent and received chunk by chunk, never
        // whole in memory.
        SnapshotData = tokio::fs::File,
);

type Raft = openraft::Raft<TypeConfig>;

/// Commands in one proposal at most. Bounds the apply transaction and the latency of the
/// slowest write in a batch.
const BATCH_COMMANDS_MAX: usize = 1024;
/// Approximate payload bytes in one proposal at most (a full batch of 512 KiB KV values
/// would otherwise make one huge log entry).
const BATCH_BYTES_MAX: usize = 4 << 20;

/// How long a write or a read barrier waits for a leader (an election in progress) before
/// failing with "No cluster leader". Consul holds RPCs for 7 s.
pub const LEADER_WAIT: Duration = Duration::from_secs(7);
/// How long a forwarded write waits for this server to apply it after the leader committed
/// it, before answering anyway (the write is committed either way).
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(5);
/// Idle connections kept to each other server for forwarded requests; more are closed after
/// use. 64, not 16: a busy datacenter's DNS queries for another (one call per connection at a
/// time) churned through connects at 16 (bench/federation: 8.7k → 15.7k qps at 64).
const FORWARD_CONNECTIONS_IDLE_MAX: usize = 64;
/// A pooled connection idle for longer is closed rather than reused: the server closes idle
/// connections after `serve::IDLE_TIMEOUT`, and a request sent on one it just closed would
/// fail with an outcome the caller cannot know.
const POOLED_IDLE_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Servers of other datacenters refuse this server's RPCs, and it theirs.
    pub datacenter: String,
    /// `ip:port` other servers (and `/v1/status/leader`) use for this server.
    pub advertise: String,
    /// 1: form a one-server cluster at first start (`-bootstrap-expect 1`, `-dev`). N > 1:
    /// bootstrap once N servers are known through gossip (the one with the lowest node id
    /// does it, after checking that none of them is part of a cluster already). 0: never;
    /// the leader of an existing cluster adds this server.
    pub bootstrap_expect: u32,
    /// TLS of the server RPC, incoming and outgoing (`None`: plain text).
    pub rpc_tls: Option<Arc<crate::tls::RpcTls>>,
    /// False on a client agent: its Raft node is never initialized and holds no state; its
    /// writes go to a server ([`client`]), and reads of the replicated state fail with
    /// [`WriteError::NoServers`] (the HTTP API forwards whole requests instead).
    pub server: bool,
    /// Writes waiting for a proposal at most; when full, writes fail at once with
    /// [`WriteError::QueueFull`].
    pub write_queue_max: usize,
    pub tuning: RaftTuning,
    /// The tokens this agent acts with; a client agent presents its agent token with its
    /// own writes.
    pub agent_tokens: Arc<crate::acl::tokens::AgentTokens>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start Raft: {0}")]
    Start(String),
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(String),
}

/// Why a write was not applied. Each maps to one HTTP status in `http`. Travels in forwarded
/// answers between servers, so variants are appended, never renamed.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    #[error("No cluster leader")]
    NoLeader,
    /// A client agent that knows no alive server (Consul's words), or a read of replicated
    /// state on a client, which holds none.
    #[error("No known Consul servers")]
    NoServers,
    #[error("too many writes pending ({0} queued); try again")]
    QueueFull(usize),
    #[error("data store is full: {room_bytes} bytes left of a {size_bytes}-byte LMDB map; raise lmdb_map_size_mb")]
    MapFull { room_bytes: u64, size_bytes: u64 },
    /// This server's data dir is full: its Raft log waits for space, so a write through it
    /// would hang ([`Store::write_when_space`]).
    #[error("this server's data dir is out of space ({0}): writes through it are refused until space is freed")]
    OutOfSpace(String),
    #[error("Raft stopped: {0}")]
    Stopped(String),
    /// The leader could not be asked, or did not answer: the write may or may not have been
    /// committed.
    #[error("forwarding to the leader failed: {0}")]
    Forward(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("too many requests forwarded to servers at once ({0}); try again")]
    ForwardsFull(usize),
    /// Another datacenter that no server of is known alive, or none of whose servers could
    /// be reached (Consul's words).
    #[error("No path to datacenter")]
    NoPathToDatacenter,
    /// The token a client agent presented for its own request may not do it (the text says
    /// what it lacks).
    #[error("{0}")]
    PermissionDenied(String),
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
    /// What a client agent presents for it (see [`Cluster::write_as`]).
    token: Option<Secret>,
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
    /// Idle connections to other servers, for forwarded requests, with when each was last
    /// used; reused by target.
    idle: Arc<std::sync::Mutex<Vec<(NodeId, Instant, rpc::Connection)>>>,
    /// The servers of this datacenter gossip knows.
    servers: watch::Receiver<Arc<Vec<KnownServer>>>,
    /// What this server answers client agents with (set once the HTTP API and DNS exist).
    client_answers: Arc<OnceLock<Arc<dyn ClientAnswers>>>,
    /// A client's requests at servers ([`client::FORWARDS_IN_FLIGHT_MAX`]).
    forwards_in_flight: Arc<Semaphore>,
    /// Index (among alive servers) of the server that answered a client last.
    preferred_server: Arc<AtomicUsize>,
    /// Proposals pass it shared; a leadership transfer holds it exclusively, so that no
    /// append renews the followers' lease on the old leader meanwhile.
    write_gate: Arc<tokio::sync::RwLock<()>>,
    /// When a quorum last acknowledged this server as leader.
    quorum: Arc<QuorumClock>,
    /// How long a leader stays one without a quorum's acknowledgement (the followers'
    /// election timeout at most).
    lease: Duration,
    /// Session TTL timers (kept while this server leads).
    session_timers: Arc<session_ttl::SessionTimers>,
    /// Holds local reads after a restart until the log is applied again.
    replay: Arc<replay::ReplayGate>,
    /// The servers of other datacenters, and how far each is.
    federation: Arc<federation::Federation>,
    /// Times this server has seen a new leader (the metric `raft_leader_changes_total`).
    leader_changes: Arc<AtomicU64>,
    /// How long this server's writes took from the leader's append to commit and apply
    /// there (the metric `raft_commit_seconds`; only while it leads).
    commit_seconds: Arc<crate::metrics::Histogram>,
}

/// When a quorum last acknowledged this server as leader, as its metrics report: updated on
/// every metrics change, so a Raft core that stops reporting (a stalled disk) stops
/// renewing it.
#[derive(Default)]
struct QuorumClock(std::sync::Mutex<Option<std::time::Instant>>);

/// How often [`QuorumClock::track`] takes a turn even without a metrics change, and the
/// longest gap between two turns it trusts (an eighth of the default 800 ms lease; the
/// followers elect no sooner than 400 ms after the lease ends).
const QUORUM_CLOCK_TURN: Duration = Duration::from_millis(25);
const QUORUM_CLOCK_GAP_MAX: Duration = Duration::from_millis(100);

impl QuorumClock {
    fn acked_within(&self, lease: Duration) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|at| at.elapsed() <= lease)
    }

    /// Follows `metrics` until `shutdown`.
    ///
    /// `millis_since_quorum_ack` is counted back from when it is *read*, so a snapshot read
    /// long after it was published would renew the lease falsely: a leader stopped (SIGSTOP,
    /// a VM pause) just after publishing "acknowledged 10 ms ago" would, on waking, read it
    /// as fresh and answer a default read from its old state before it learns that another
    /// server leads (the fault harness's leader-sigstop found it: a read of 71 after 72 and
    /// 73 were acknowledged). Every turn consumes the latest snapshot, so one read in a turn
    /// that follows the previous one closely was published since; after a longer gap the
    /// lease is dropped until a snapshot published after it arrives.
    async fn track(
        self: Arc<Self>,
        mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
        shutdown: CancellationToken,
    ) {
        let mut turns = tokio::time::interval(QUORUM_CLOCK_TURN);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_turn = std::time::Instant::now();
        let mut changed = true;
        loop {
            let now = std::time::Instant::now();
            let gap = now.duration_since(last_turn);
            last_turn = now;
            if gap > QUORUM_CLOCK_GAP_MAX {
                // Whatever is pending may be from before the gap: consumed unread.
                metrics.borrow_and_update();
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
            } else if changed || metrics.has_changed().unwrap_or(false) {
                let ms = metrics.borrow_and_update().millis_since_quorum_ack;
                let at = ms.and_then(|ms| now.checked_sub(Duration::from_millis(ms)));
                *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
            }
            changed = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = metrics.changed() => if result.is_err() { return } else { true },
                _ = turns.tick() => false,
            };
        }
    }
}

/// Counts the leaders this server sees take over (a new leader id, not a leaderless
/// moment), until `shutdown`.
async fn count_leader_changes(
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    changes: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            changes.fetch_add(1, Ordering::Relaxed);
            last = leader;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

impl Cluster {
    /// How many times this server has seen a new leader since it started.
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    /// How long writes took from the leader's append to their commit and apply there.
    pub fn commit_seconds(&self) -> crate::metrics::HistogramValues {
        self.commit_seconds.snapshot()
    }
}

/// Leader as the HTTP API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub node_id: NodeId,
    pub address: String,
}

impl Cluster {
    /// Starts the Raft node on `store`, bootstraps a one-server cluster if asked, answers
    /// server RPC on `rpc` (servers only), keeps the Raft membership in line with `servers`
    /// (what gossip knows, this server included), and spawns the proposer task on `tasks`;
    /// all stop when `shutdown` is cancelled.
    pub async fn start(
        store: Store,
        config: ClusterConfig,
        rpc: Option<TcpListener>,
        servers: watch::Receiver<Arc<Vec<KnownServer>>>,
        remote_servers: watch::Receiver<RemoteServers>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Cluster, ClusterError> {
        // openraft 0.9 starts an election after the leader lease (= election_timeout_max)
        // plus a random election timeout: 12-16 units, 1.2-1.6 s at the default multiplier 2.
        let unit = 50 * u64::from(config.tuning.multiplier.clamp(1, 10));
        let raft_config = Config {
            cluster_name: config.datacenter.clone(),
            heartbeat_interval: unit,
            election_timeout_min: 4 * unit,
            election_timeout_max: 8 * unit,
            install_snapshot_timeout: 5000,
            // Bounds one append RPC: 16 proposals of at most ~5.5 MiB of JSON each.
            max_payload_entries: 16,
            snapshot_max_chunk_size: 1 << 20,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.tuning.snapshot_threshold),
            // Entries can be MiBs (batched writes); keep few once they are in a snapshot.
            max_in_snapshot_log_to_keep: config.tuning.trailing_logs,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| ClusterError::Start(e.to_string()))?);
        let network =
            network::Network { cluster: config.datacenter.clone(), local: config.node_id, tls: config.rpc_tls.clone() };
        let log_store = LogStore::new(store.clone()).map_err(|e| ClusterError::Start(e.to_string()))?;
        let replay = log_store.replay_gate();
        let raft = Raft::new(config.node_id, raft_config, network, log_store, StateMachine::new(store.clone()))
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?;

        if config.server && config.bootstrap_expect == 1 {
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
        let cluster = Cluster {
            raft,
            store,
            queue,
            queued_bytes: Arc::default(),
            config: Arc::new(config),
            idle: Arc::default(),
            servers,
            client_answers: Arc::default(),
            forwards_in_flight: Arc::new(Semaphore::new(client::FORWARDS_IN_FLIGHT_MAX)),
            preferred_server: Arc::default(),
            write_gate: Arc::default(),
            quorum: Arc::default(),
            lease: Duration::from_millis(8 * unit),
            session_timers: Arc::default(),
            replay,
            federation: Arc::new(federation::Federation::new(remote_servers)),
            leader_changes: Arc::default(),
            commit_seconds: Arc::new(crate::metrics::Histogram::new(crate::metrics::RAFT_COMMIT_SECONDS)),
        };
        cluster.replay.log_if_waiting(cluster.last_applied());
        tasks.spawn(Arc::clone(&cluster.quorum).track(cluster.raft.metrics(), shutdown.clone()));
        tasks.spawn(count_leader_changes(
            cluster.raft.metrics(),
            Arc::clone(&cluster.leader_changes),
            shutdown.clone(),
        ));
        tasks.spawn(run_proposer(cluster.clone(), rx, shutdown.clone()));
        if cluster.config.server {
            tasks.spawn(membership::run(cluster.clone(), shutdown.clone()));
            tasks.spawn(session_ttl::run(cluster.clone(), shutdown.clone()));
            tasks.spawn(token_expiry::run(cluster.clone(), shutdown.clone()));
            // 1 s at the default timing, a little over the leader lease: a leader whose disk
            // takes longer than that for one write is slower than an election.
            let stall = Duration::from_millis(10 * unit);
            tasks.spawn(step_aside_while_disk_fails(cluster.clone(), stall, shutdown.clone()));
            tasks.spawn(federation::measure_round_trips(cluster.clone(), shutdown.clone()));
        }
        if let Some(listener) = rpc {
            tasks.spawn(serve::serve(listener, cluster.clone(), shutdown, tasks.clone()));
        }
        Ok(cluster)
    }

    /// Proposes `command` and waits until it is committed and applied here (on a client
    /// agent: committed through a server). Fails fast, before anything reaches the log, when
    /// the queue is full or the LMDB map is nearly full (a full map inside an apply would
    /// stop Raft); waits up to [`LEADER_WAIT`] for a leader.
    pub async fn write(&self, command: Command) -> Result<CommandResult, WriteError> {
        self.write_as(command, None).await
    }

    /// [`Cluster::write`] under `token` on a client agent (a local service's registration
    /// token; `None`: the agent token), which the server checks. A server's own writes are
    /// its own: checked where they came in, if they came from a request.
    pub async fn write_as(&self, command: Command, token: Option<Secret>) -> Result<CommandResult, WriteError> {
        let cost = 4 * command.approx_size() as u64;
        if self.config.server {
            self.check_room(std::slice::from_ref(&command), cost).await?;
            if let Command::Restore(_) = &command {
                self.require_single_server()?;
            }
        } else if let Command::Restore(_) = &command {
            return Err(WriteError::NoServers);
        }
        let (reply, rx) = oneshot::channel();
        self.queue.try_send(PendingWrite { command, token, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WriteError::QueueFull(self.config.write_queue_max),
            mpsc::error::TrySendError::Closed(_) => WriteError::Stopped("shutting down".into()),
        })?;
        // Counted until this write is answered *or abandoned*: a client that disconnects (or
        // a drain that times out) drops this future mid-await, and the guard still gives the
        // room back. Without it, abandoned writes would leak until every write is refused.
        let _queued = QueuedCost::add(&self.queued_bytes, cost);
        rx.await.unwrap_or_else(|_| Err(WriteError::Stopped("shutting down".into())))
    }

    /// Fails when this server's disk is full, or when `commands` (about `cost` bytes) would
    /// not fit in the LMDB map beside the writes already queued. Room is counted about four
    /// times per command: state rows, indexes, the copy-on-write pages of the commit, and
    /// the pages freed meanwhile that LMDB cannot reuse while a reader holds them.
    async fn check_room(&self, commands: &[Command], cost: u64) -> Result<(), WriteError> {
        if let Some(why) = self.store.out_of_space() {
            return Err(WriteError::OutOfSpace(why));
        }
        let (room_bytes, size_bytes) = self.store.map_room();
        // Deletions keep working on a nearly full map (half the reserve), or it could never
        // be emptied again.
        let frees_space = commands.iter().all(Command::frees_space);
        let reserve = (size_bytes / 8).min(64 << 20) / if frees_space { 2 } else { 1 };
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if room_bytes < reserve + queued + cost {
            return Err(WriteError::MapFull { room_bytes, size_bytes });
        }
        Ok(())
    }

    /// A forwarded proposal, as a server receives it from another server or a client:
    /// checked for room here (a client has no map of its own), then committed.
    async fn propose_forwarded(&self, proposal: Proposal) -> Result<rpc::Forwarded, WriteError> {
        let cost = proposal.commands.iter().map(|c| 4 * c.approx_size() as u64).sum();
        self.check_room(&proposal.commands, cost).await?;
        if proposal.commands.iter().any(|c| matches!(c, Command::Restore(_))) {
            return Err(WriteError::Unsupported(
                "a backup can only be restored on the server it was uploaded to".into(),
            ));
        }
        self.propose(proposal).await
    }

    /// LMDB bytes that queued and in-flight writes are expected to take.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// A backup archive of the whole replicated state, taken from one LMDB read transaction
    /// (writes go on meanwhile), in an unnamed file under the data dir (gone once closed),
    /// rewound, with its size and the highest index it had issued. Blocking work runs on a
    /// blocking thread; memory stays at one buffer whatever the state's size.
    pub async fn backup(&self) -> Result<(std::fs::File, u64, u64), StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(store.staging_dir())?;
            let mut file = tempfile::tempfile_in(store.staging_dir())?;
            let position = |meta: &crate::store::MetaValues| {
                let bad = |e: &dyn std::fmt::Display| StoreError::BadSnapshot(e.to_string());
                let applied: Option<openraft::LogId<NodeId>> = match &meta[0] {
                    Some(bytes) => serde_json::from_slice(bytes).map_err(|e| bad(&e))?,
                    None => None,
                };
                let offset = match &meta[1] {
                    Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| bad(&"index offset"))?),
                    None => 0,
                };
                Ok(applied.map_or((0, 0), |id| (id.index + offset, id.leader_id.term)))
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let meta_keys = [state_machine::META_LAST_APPLIED, crate::store::INDEX_OFFSET];
            let header = crate::store::archive::write(&store, &mut file, &meta_keys, position, now)?;
            let size = file.metadata()?.len();
            Ok((file, size, header.index))
        })
        .await
        .map_err(|e| StoreError::BadSnapshot(format!("backup task failed: {e}")))?
    }

    /// Confirms with a quorum that this server is still the leader and waits until it has
    /// applied everything committed before (`?consistent` reads). On a follower: the same
    /// through the leader.
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        self.read_barrier(true).await
    }

    /// Waits until this server's replica holds everything a read in this mode must see.
    /// `consistent`: everything committed when the barrier started, confirmed by a quorum
    /// (Raft read-index). Otherwise Consul's default mode, answered from what the leader
    /// knows without asking a quorum: everything it has committed (nothing to wait for on a
    /// lone server). Waits up to [`LEADER_WAIT`] for a leader.
    pub async fn read_barrier(&self, consistent: bool) -> Result<(), WriteError> {
        self.require_server()?;
        let deadline = Instant::now() + LEADER_WAIT;
        self.wait_replayed(deadline).await?;
        loop {
            let leader = self.wait_for_leader_until(deadline).await.ok_or(WriteError::NoLeader)?;
            if leader.node_id == self.config.node_id {
                if !consistent {
                    // Alone, every acknowledged write was applied here first. With others, a
                    // write another server acknowledged may be committed but not yet
                    // applied here: wait for it.
                    if self.voter_count() <= 1 {
                        return Ok(());
                    }
                    // Bounded: a leader whose Raft core waits on a stalled disk answers late.
                    match tokio::time::timeout_at(deadline, self.leader_read_index(false)).await {
                        Ok(Ok(index)) => return self.wait_applied(index, deadline).await,
                        // Not (yet) a leader that can answer: asked again below.
                        Ok(Err(WriteError::NoLeader)) => {}
                        Ok(Err(e)) => return Err(e),
                        Err(_) => return Err(WriteError::NoLeader),
                    }
                } else {
                    match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(e)) => tracing::debug!(error = %e, "read index failed; retrying"),
                        Err(_) => return Err(WriteError::NoLeader),
                    }
                }
            } else {
                let request = rpc::Request::ReadIndex { consistent };
                let answer = tokio::select! {
                    answer = self.call_server(leader.node_id, &leader.address, &request, &[], deadline) => answer,
                    // Reads are safe to ask again: go to the new leader rather than wait.
                    () = self.leader_moved_from(leader.node_id) => continue,
                };
                match answer {
                    Ok((rpc::Response::ReadIndex(Ok(index)), _)) => return self.wait_applied(index, deadline).await,
                    Ok((rpc::Response::ReadIndex(Err(WriteError::NoLeader)), _)) => {}
                    Ok((rpc::Response::ReadIndex(Err(e)), _)) => return Err(e),
                    Ok(_) => {
                        return Err(WriteError::Forward("the leader answered a read index with something else".into()))
                    }
                    Err(e) => tracing::debug!(error = %e, "read index from the leader failed; retrying"),
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The leader's side of a follower's read barrier.
    async fn leader_read_index(&self, consistent: bool) -> Result<u64, WriteError> {
        if !self.is_leader() {
            return Err(WriteError::NoLeader);
        }
        if consistent {
            let (read, _) = self.raft.get_read_log_id().await.map_err(|_| WriteError::NoLeader)?;
            Ok(read.map_or(0, |id| id.index))
        } else {
            // The committed index, not the applied one: a write another server acknowledged
            // after applying it may not be applied here yet. And only once this leader has
            // committed an entry of its own term (the one it appends on election): until
            // then its committed index may lag what its predecessor committed and
            // acknowledged, and a read answered at it would be stale (found by the fault
            // harness's partition-leader-with-minority: a new leader's reads right after the
            // election missed an increment the cut-off leader had acknowledged).
            let committed = self
                .raft
                .with_raft_state(|state| {
                    let term = state.vote_ref().leader_id().get_term();
                    state.committed.filter(|id| id.leader_id.get_term() == term).map(|id| id.index)
                })
                .await
                .map_err(|e| WriteError::Stopped(e.to_string()))?
                .ok_or(WriteError::NoLeader)?;
            Ok(committed.max(self.last_applied()))
        }
    }

    /// Waits until [`Cluster::replayed`]: after a restart, the log is applied again.
    async fn wait_replayed(&self, deadline: Instant) -> Result<(), WriteError> {
        let mut metrics = self.raft.metrics();
        while !self.replayed() {
            // Applies and truncations both change the metrics.
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(WriteError::Stopped("Raft stopped".into())),
                Err(_) => return Err(WriteError::NoLeader),
            }
        }
        Ok(())
    }

    /// Waits until this replica has applied `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), WriteError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Forward(format!("this server has not caught up with the leader: {e}")))
    }

    /// Servers in the Raft configuration, voters and learners.
    pub fn server_count(&self) -> usize {
        self.raft.metrics().borrow().membership_config.membership().nodes().count()
    }

    /// A restore from a staged file is exact only alone: other servers cannot read this
    /// server's disk (with several, the archive travels in the entry instead:
    /// `Command::RestoreArchive`).
    fn require_single_server(&self) -> Result<(), WriteError> {
        if self.server_count() > 1 {
            return Err(WriteError::Unsupported(
                "a staged restore reaches only this server: with several, the archive must travel in the log".into(),
            ));
        }
        Ok(())
    }

    /// Sends `request` (with `blob`) to server `id` at `addr` on a reused connection, and
    /// keeps the connection for reuse after a complete answer. Waits until `deadline`, and
    /// at least a little longer than a server's own bound on answering.
    async fn call_server(
        &self,
        id: NodeId,
        addr: &str,
        request: &rpc::Request,
        blob: &[u8],
        deadline: Instant,
    ) -> Result<(rpc::Response, Vec<u8>), rpc::RpcError> {
        self.call_server_in(None, id, addr, request, blob, deadline).await
    }

    /// [`Cluster::call_server`] to a server of `remote`, another datacenter, when given.
    async fn call_server_in(
        &self,
        remote: Option<&str>,
        id: NodeId,
        addr: &str,
        request: &rpc::Request,
        blob: &[u8],
        deadline: Instant,
    ) -> Result<(rpc::Response, Vec<u8>), rpc::RpcError> {
        let idle = {
            let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            pool.retain(|(_, used, _)| used.elapsed() < POOLED_IDLE_MAX);
            pool.iter().position(|(pooled, _, _)| *pooled == id).map(|i| pool.swap_remove(i).2)
        };
        let mut connection = match idle {
            Some(c) => c,
            None => {
                let route = rpc::Route {
                    cluster: self.config.datacenter.clone(),
                    from: self.config.node_id,
                    to: id,
                    addr: addr.to_string(),
                    remote: remote.map(str::to_string),
                    tls: self.config.rpc_tls.clone(),
                };
                rpc::Connection::open(&route).await?
            }
        };
        let timeout = deadline.saturating_duration_since(Instant::now()).max(serve::ANSWER_TIMEOUT) + RETRY_PAUSE;
        let answer = connection.call(request, blob, timeout).await?;
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if pool.iter().filter(|(pooled, _, _)| *pooled == id).count() < FORWARD_CONNECTIONS_IDLE_MAX {
            pool.push((id, Instant::now(), connection));
        }
        Ok(answer)
    }

    /// Commits `proposal` through the leader — this server, or another one over RPC — and
    /// returns each command's result once this server has applied it too. Retries (within
    /// [`LEADER_WAIT`]) only where the proposal surely did not reach the log: no leader, a
    /// leader that says it no longer leads, or a connection that could not be opened.
    async fn propose(&self, proposal: Proposal) -> Result<rpc::Forwarded, WriteError> {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut request = rpc::Request::Forward(proposal);
        loop {
            let leader = self.wait_for_leader_until(deadline).await.ok_or(WriteError::NoLeader)?;
            if leader.node_id == self.config.node_id {
                let rpc::Request::Forward(proposal) = request else { unreachable!("built above") };
                // Alone, leadership cannot move away under this proposal: no copy is kept
                // for a retry (the common single-server write path).
                if self.voter_count() <= 1 {
                    return self.propose_as_leader(proposal).await;
                }
                request = rpc::Request::Forward(proposal.clone());
                // Bounded: a leader whose disk stalls is replaced, but its own Raft core
                // answers only when the disk does.
                let committed = tokio::time::timeout(serve::ANSWER_TIMEOUT, self.propose_as_leader(proposal))
                    .await
                    .unwrap_or_else(|_| {
                        Err(WriteError::Forward(format!(
                            "not committed within {:?} (this server's disk may be stalled): the write may or may not be applied",
                            serve::ANSWER_TIMEOUT
                        )))
                    });
                match committed {
                    Err(WriteError::NoLeader) => {}
                    other => return other,
                }
            } else {
                let forwarded = tokio::select! {
                    answer = self.call_server(leader.node_id, &leader.address, &request, &[], deadline) => answer,
                    // A leader that stops answering (paused, its disk stalled) is replaced
                    // in an election timeout; waiting out the RPC timeout would hold this
                    // server's proposer, and every write queued behind it, for 20 s.
                    () = self.leader_moved_from(leader.node_id) => {
                        return Err(WriteError::Forward(
                            "leadership moved while the write was with the old leader: it may or may not be applied".into(),
                        ))
                    }
                };
                match forwarded {
                    Ok((rpc::Response::Forward(Ok(forwarded)), _)) => {
                        if let Err(e) = self.wait_applied(forwarded.index, Instant::now() + LOCAL_APPLY_WAIT).await {
                            tracing::warn!(error = %e, index = forwarded.index, "answering a committed write before applying it here");
                        }
                        return Ok(forwarded);
                    }
                    Ok((rpc::Response::Forward(Err(WriteError::NoLeader)), _)) => {}
                    Ok((rpc::Response::Forward(Err(e)), _)) => return Err(e),
                    Ok(_) => return Err(WriteError::Forward("the leader answered a write with something else".into())),
                    Err(e @ (rpc::RpcError::Connect { .. } | rpc::RpcError::Refused(_))) => {
                        tracing::debug!(error = %e, "cannot reach the leader; retrying")
                    }
                    Err(e) => return Err(WriteError::Forward(e.to_string())),
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Appends `proposal` to the log if this server leads, and waits until it is committed
    /// and applied here. [`WriteError::NoLeader`] means it was not appended.
    async fn propose_as_leader(&self, proposal: Proposal) -> Result<rpc::Forwarded, WriteError> {
        let _gate = self.write_gate.read().await;
        let leader_time_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let proposal = Proposal { leader_time_ms: Some(leader_time_ms), ..proposal };
        let started = Instant::now();
        match self.raft.client_write(proposal).await {
            Ok(response) => {
                self.commit_seconds.observe(started.elapsed(), false);
                Ok(rpc::Forwarded { results: response.data, index: response.log_id.index })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(WriteError::NoLeader),
            Err(e) => Err(WriteError::Stopped(e.to_string())),
        }
    }

    /// Resolves once this server knows a leader other than `old` (never, if Raft stops).
    async fn leader_moved_from(&self, old: NodeId) {
        let mut metrics = self.raft.metrics();
        loop {
            if self.leader().is_some_and(|l| l.node_id != old) {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// The leader, waiting for one until `deadline`.
    async fn wait_for_leader_until(&self, deadline: Instant) -> Option<LeaderInfo> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.leader(),
            }
        }
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
        let id = self.known_leader(&metrics)?;
        let address = metrics.membership_config.membership().get_node(&id).map(|n| n.addr.clone()).unwrap_or_default();
        Some(LeaderInfo { node_id: id, address })
    }

    /// Whether this server knows a leader (cheaper than [`Cluster::leader`]: no address copy).
    pub fn knows_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        self.known_leader(&metrics).is_some()
    }

    /// The leader in `metrics`, unless the core has stopped, or this server is the leader of
    /// several and no quorum has acknowledged it within the leader lease (it is cut off, or
    /// its Raft core is stuck on a stalled disk): openraft 0.9 keeps calling itself leader
    /// then, while the others elect another; cairn stops acting as leader (no default reads,
    /// no writes, `/v1/status/leader` empty), as Consul's leader lease does.
    fn known_leader(&self, metrics: &openraft::RaftMetrics<NodeId, BasicNode>) -> Option<NodeId> {
        if metrics.running_state.is_err() {
            return None;
        }
        let id = metrics.current_leader?;
        if id == self.config.node_id
            && metrics.membership_config.membership().voter_ids().nth(1).is_some()
            && !self.quorum.acked_within(self.lease)
        {
            return None;
        }
        Some(id)
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|l| l.node_id == self.config.node_id)
    }

    /// Every server of the current Raft configuration (voters, then learners), and the log
    /// index of that configuration.
    pub fn configuration(&self) -> (Vec<RaftServer>, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let stored = &metrics.membership_config;
        let membership = stored.membership();
        let leader = metrics.current_leader.filter(|_| metrics.running_state.is_ok());
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let mut servers = membership
            .nodes()
            .map(|(id, node)| RaftServer {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                leader: leader == Some(*id),
            })
            .collect::<Vec<_>>();
        servers.sort_by_key(|s| !s.voter);
        (servers, stored.log_id().map_or(0, |id| id.index))
    }

    /// How many servers vote.
    pub fn voter_count(&self) -> usize {
        self.raft.metrics().borrow().membership_config.membership().voter_ids().count()
    }

    /// Addresses of the voting servers.
    pub fn peers(&self) -> Vec<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.voter_ids().filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone())).collect()
    }

    /// Whether this server's replica may answer local reads (`?stale`, DNS): it has applied
    /// everything its log held at start (see [`replay`]). Always true on a client agent.
    pub fn replayed(&self) -> bool {
        !self.config.server || self.replay.passed(|| self.last_applied())
    }

    /// The index of the last applied log entry.
    pub fn last_applied(&self) -> u64 {
        self.raft.metrics().borrow().last_applied.map_or(0, |id| id.index)
    }

    /// Waits (up to `timeout`) until this server knows a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.wait_for_leader_until(Instant::now() + timeout).await.is_some()
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

/// How often a server checks whether its disk is full or stalled (or works again).
const DISK_CHECK_EVERY: Duration = Duration::from_millis(250);

/// While this server's disk is full or stalled it cannot lead: its log or its state machine
/// waits on the disk, so every write committed through it would hang cluster-wide while its
/// heartbeats kept the followers' leases alive (a stalled apply does not stop the Raft core).
/// It stops its Raft timer instead — no heartbeats, no elections of its own — so the others
/// elect a leader whose disk works (it still votes and follows); the timer comes back with
/// the disk. Stalled means a Raft log or state-machine write unfinished for `stall`.
async fn step_aside_while_disk_fails(cluster: Cluster, stall: Duration, shutdown: CancellationToken) {
    let mut aside = false;
    loop {
        let full = cluster.store.out_of_space().is_some();
        let stuck = cluster.store.raft_writes_stuck_for().filter(|t| *t >= stall);
        let failing = full || stuck.is_some();
        if failing != aside {
            cluster.raft.runtime_config().heartbeat(!failing);
            cluster.raft.runtime_config().tick(!failing);
            if failing {
                tracing::warn!(
                    disk_full = full,
                    write_stuck_ms = stuck.map(|t| t.as_millis() as u64),
                    "this server's disk is full or stalled: it stops heartbeats and elections so a server that can \
                     write leads"
                );
            } else {
                tracing::info!("this server's disk works again: heartbeats and elections resume");
            }
            aside = failing;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(DISK_CHECK_EVERY) => {}
        }
    }
}

/// Pause between attempts to reach a leader that is being elected or has just changed.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Collects queued writes into proposals, one in flight at a time: while one entry is being
/// made durable (or, on a follower, forwarded and committed), the next batch accumulates.
/// Measured: several forwarded batches in flight made smaller entries and fewer writes per
/// second through a follower (bench/README.md, "Three-server clusters").
///
/// A proposal that answered many writes is usually followed by most of them again, sent by
/// the same clients as soon as their answers arrive; proposing the few writes queued at that
/// moment would put those clients one whole proposal behind. So when fewer writes are queued
/// than the last proposal carried, the next one waits for them ([`LastProposal::gather_wait`]).
async fn run_proposer(cluster: Cluster, mut rx: mpsc::Receiver<PendingWrite>, shutdown: CancellationToken) {
    let mut last = LastProposal::default();
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = next_batch(&mut rx, last) => match next { Some(batch) => batch, None => return },
        };
        let started = Instant::now();
        let writes = batch.len();
        propose_batch(&cluster, batch).await;
        last = LastProposal { writes, took: started.elapsed() };
    }
}

/// Waits for a write, then takes every queued one and, after a proposal of more writes than
/// that, waits for those ([`LastProposal::gather_wait`]). `None` once the queue is closed.
async fn next_batch(rx: &mut mpsc::Receiver<PendingWrite>, last: LastProposal) -> Option<Vec<PendingWrite>> {
    let mut batch = Batch::new(rx.recv().await?);
    while !batch.is_full() {
        match rx.try_recv() {
            Ok(w) => batch.push(w),
            Err(_) => break,
        }
    }
    if let Some(wait) = last.gather_wait(batch.writes.len()) {
        let deadline = Instant::now() + wait;
        while batch.writes.len() < last.writes && !batch.is_full() {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(w) => batch.push(w),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    Some(batch.writes)
}

/// The longest a proposal waits for more writes ([`LastProposal::gather_wait`]).
const GATHER_WAIT_MAX: Duration = Duration::from_millis(10);

/// The writes of the next proposal, within [`BATCH_COMMANDS_MAX`] and [`BATCH_BYTES_MAX`].
struct Batch {
    writes: Vec<PendingWrite>,
    bytes: usize,
}

impl Batch {
    fn new(first: PendingWrite) -> Self {
        let bytes = first.command.approx_size();
        Batch { writes: vec![first], bytes }
    }

    fn push(&mut self, write: PendingWrite) {
        self.bytes += write.command.approx_size();
        self.writes.push(write);
    }

    fn is_full(&self) -> bool {
        self.writes.len() >= BATCH_COMMANDS_MAX || self.bytes >= BATCH_BYTES_MAX
    }
}

/// What the proposer's last proposal carried and how long it took to answer.
#[derive(Debug, Default, Clone, Copy)]
struct LastProposal {
    writes: usize,
    took: Duration,
}

impl LastProposal {
    /// How long a proposal holding `queued` writes waits for more: nothing when at least as
    /// many are queued as the last proposal carried (one sequential writer never waits), else
    /// up to twice the last proposal's duration, at most [`GATHER_WAIT_MAX`]; it goes as soon
    /// as as many have arrived. Twice, because on a busy host the clients' round trip (their
    /// answers written, their next requests read and parsed) takes about a proposal's time
    /// or longer: with once, one run in three fell back to 1.46× etcd through a follower.
    /// Measured on three servers with 16 and 64 closed-loop clients: 20-40 % more writes per
    /// second and a lower p99, since the clients answered by one proposal no longer split
    /// into a large and a small one (bench/README.md, "Three-server clusters: proposals that
    /// gather the writes they answered"). The cost, when the clients do not come back: one
    /// wait of at most two proposals' time or 10 ms.
    fn gather_wait(&self, queued: usize) -> Option<Duration> {
        (queued < self.writes).then(|| (self.took * 2).min(GATHER_WAIT_MAX))
    }
}

/// Proposes one batch and answers each of its writes.
async fn propose_batch(cluster: &Cluster, batch: Vec<PendingWrite>) {
    let mut commands = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for write in batch {
        commands.push(write.command);
        tokens.push(write.token);
        replies.push(write.reply);
    }
    let proposal = Proposal::new(commands);
    let proposed = if cluster.config.server {
        cluster.propose(proposal).await
    } else {
        cluster.propose_via_server(proposal, tokens).await
    };
    match proposed {
        Ok(rpc::Forwarded { results, .. }) => {
            debug_assert_eq!(results.len(), replies.len());
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, "proposal failed");
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;

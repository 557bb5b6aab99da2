//! LAN gossip: SWIM membership and failure detection (foca) over UDP, joins and periodic
//! full-state push/pull over TCP on the same port, every packet in the [`envelope`].
//!
//! `core` is the state machine (no I/O; `sim`, the simulated network of the tests and the
//! bench, drives it on a virtual clock), `transport` the tokio task that owns it, `member` the
//! identity gossiped, `keyring` the encryption keys and their rotation. The rest of cairn sees
//! a [`Gossip`] handle: the member list (a `watch` that changes when membership does), join,
//! leave, force-leave, keyring operations and counters.
//!
//! Architecture Invariant: one task owns the foca instance and nothing else touches it; every
//! input reaches it as a [`GossipCommand`] or a packet. Why: foca is not thread-safe, and a
//! slow turn of that loop delays acks until peers suspect this member.

pub mod core;
pub mod envelope;
pub mod event;
pub mod keyring;
pub mod member;
mod seen;
pub mod sim;
mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::core::{PushPull, Timings};
pub use envelope::GossipKey;
pub use member::{MemberId, MemberInfo, MemberStatus, Role};

/// Commands queued for the gossip task; when full, API callers get an error at once
/// (`join` and `leave` are rare; a full queue means the task is stuck).
const COMMANDS_MAX: usize = 256;
/// Retry-join's first and longest waits between rounds.
const RETRY_JOIN_FIRST: Duration = Duration::from_secs(1);
const RETRY_JOIN_MAX: Duration = Duration::from_secs(30);
/// Members asked at once during a keyring operation.
pub const KEYRING_FANOUT: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("cannot listen for gossip on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Join(String),
    #[error("gossip is not running")]
    Stopped,
    #[error("gossip keyring: {0}")]
    Keyring(String),
}

pub(crate) enum GossipCommand {
    Join {
        addrs: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Apply a peer's full state; answer with ours (sealed) when asked.
    Exchange {
        state: PushPull,
        reply: Option<oneshot::Sender<Vec<u8>>>,
    },
    /// Compare a peer's view digest with ours; answer "same" or our state (sealed).
    Compare {
        digest: u64,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    ForceLeave {
        name: String,
        prune: bool,
        reply: oneshot::Sender<bool>,
    },
    Fire {
        event: event::UserEvent,
    },
}

/// What the gossip layer needs to start.
pub struct GossipConfig {
    /// Where to listen (UDP and TCP).
    pub bind: SocketAddr,
    /// The IP peers reach this agent on; the port is the bound one.
    pub advertise_ip: std::net::IpAddr,
    pub identity: IdentityFields,
    pub timings: Timings,
    /// Primary first; empty = no encryption.
    pub keys: Vec<GossipKey>,
    /// Where the keyring file lives (the data dir); `None` keeps it in memory only.
    pub keyring_dir: Option<std::path::PathBuf>,
    /// Where received user events are delivered (this agent's own included).
    pub user_events: mpsc::Sender<event::UserEvent>,
    /// The port of a join address that names none (8301 LAN, 8302 WAN).
    pub default_port: u16,
}

/// The identity fields other than the address and boot stamp, which `start` fills.
pub struct IdentityFields {
    pub name: String,
    pub role: Role,
    pub datacenter: String,
    pub server_port: u16,
    pub node_id: String,
}

/// Handle on the running gossip layer. Cheap to clone.
#[derive(Clone)]
pub struct Gossip {
    commands: mpsc::Sender<GossipCommand>,
    members: watch::Receiver<Arc<Vec<MemberInfo>>>,
    local: Arc<MemberId>,
    shared: Arc<transport::Shared>,
    default_port: u16,
}

impl Gossip {
    /// Binds the gossip port and starts the gossip task on `tasks`.
    pub async fn start(
        config: GossipConfig,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Gossip, GossipError> {
        let endpoints = transport::bind(config.bind).await?;
        let port = endpoints.udp.local_addr().map_err(|source| GossipError::Bind { addr: config.bind, source })?.port();
        let (keyring, warning) =
            keyring::Keyring::load(config.keyring_dir.as_deref(), config.keys).map_err(GossipError::Keyring)?;
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        let f = config.identity;
        let node_id = uuid::Uuid::parse_str(&f.node_id).map(|u| u.into_bytes()).unwrap_or_default();
        let id = MemberId {
            name: f.name,
            addr: SocketAddr::new(config.advertise_ip, port),
            boot: transport::now_ms(),
            role: f.role,
            datacenter: f.datacenter,
            server_port: f.server_port,
            node_id,
            build: env!("CARGO_PKG_VERSION").to_string(),
            protocol: member::PROTOCOL_VERSION,
        };
        let core = self::core::Core::new(id.clone(), config.timings, rand::random(), Instant::now());
        let (members_tx, members) = watch::channel(Arc::new(core.members()));
        let (commands, rx) = mpsc::channel(COMMANDS_MAX);
        let encrypted = !keyring.keys().is_empty();
        let shared = Arc::new(transport::Shared {
            envelope: Mutex::new(envelope::Envelope::new(keyring.keys())),
            refusals: Mutex::new(transport::RefusalLog::default()),
            keyring: Mutex::new(keyring),
            node: id.name.clone(),
            stats: Mutex::default(),
        });
        tracing::info!(addr = %id.addr, encrypted, "gossip listening (UDP and TCP)");
        tasks.spawn(transport::run(
            core,
            endpoints,
            Arc::clone(&shared),
            transport::Channels {
                commands: rx,
                command_tx: commands.clone(),
                members_tx,
                user_events: config.user_events,
            },
            shutdown,
            tasks.clone(),
        ));
        Ok(Gossip { commands, members, local: Arc::new(id), shared, default_port: config.default_port })
    }

    /// This agent as a member.
    pub fn local(&self) -> &MemberId {
        &self.local
    }

    /// Every known member, this agent first.
    pub fn members(&self) -> Arc<Vec<MemberInfo>> {
        Arc::clone(&self.members.borrow())
    }

    /// A receiver that changes whenever the member list does.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<MemberInfo>>> {
        self.members.clone()
    }

    /// The protocol's counts so far: probes, suspicions, packets, local health.
    pub fn core_stats(&self) -> self::core::CoreStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Consul's `Stats.serf_lan` of `/v1/agent/self`, plus cairn's packet counters.
    pub fn stats(&self) -> std::collections::BTreeMap<&'static str, String> {
        let members = self.members();
        let count = |status| members.iter().filter(|m| m.status == status).count().to_string();
        let core = self.core_stats();
        let refused = self.shared.refusals.lock().unwrap_or_else(|e| e.into_inner()).total();
        let encrypted = !self.shared.keyring.lock().unwrap_or_else(|e| e.into_inner()).keys().is_empty();
        std::collections::BTreeMap::from([
            ("members", members.len().to_string()),
            ("failed", count(MemberStatus::Failed)),
            ("left", count(MemberStatus::Left)),
            ("encrypted", encrypted.to_string()),
            ("health_score", core.health_score.to_string()),
            ("packets_received", core.packets_in.to_string()),
            ("packets_refused", refused.to_string()),
            ("late_timers", core.late_timers.to_string()),
            ("probes_sent", core.probes_sent.to_string()),
            ("probes_failed", core.probes_failed.to_string()),
            ("suspicions", core.suspicions.to_string()),
        ])
    }

    /// Joins through `addrs` (`host` or `host:port`, default port 8301 LAN, 8302 WAN); Ok(number joined)
    /// if at least one answered.
    pub async fn join(&self, addrs: &[String]) -> Result<usize, GossipError> {
        let mut resolved = Vec::new();
        let mut errors = Vec::new();
        for addr in addrs {
            match resolve(addr, self.default_port).await {
                Ok(found) => resolved.extend(found),
                Err(e) => errors.push(e),
            }
        }
        if resolved.is_empty() {
            return Err(GossipError::Join(errors.join("; ")));
        }
        let (reply, answer) = oneshot::channel();
        self.commands.try_send(GossipCommand::Join { addrs: resolved, reply }).map_err(|_| GossipError::Stopped)?;
        answer.await.map_err(|_| GossipError::Stopped)?.map_err(GossipError::Join)
    }

    /// Leaves gracefully: peers see this member as left. Returns once the goodbye has had
    /// time to spread.
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.try_send(GossipCommand::Leave { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer).await;
        }
    }

    /// Marks the failed member `name` as left (`?prune`: also forget it). False if there is
    /// no failed member of that name.
    pub async fn force_leave(&self, name: &str, prune: bool) -> Result<bool, GossipError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(GossipCommand::ForceLeave { name: name.to_string(), prune, reply })
            .map_err(|_| GossipError::Stopped)?;
        answer.await.map_err(|_| GossipError::Stopped)
    }

    /// Fires a user event to every member (this one included).
    pub fn fire(&self, event: event::UserEvent) -> Result<(), GossipError> {
        self.commands.try_send(GossipCommand::Fire { event }).map_err(|_| GossipError::Stopped)
    }

    /// Runs a keyring operation on this agent, then on every alive member (at most
    /// [`KEYRING_FANOUT`] at a time); one reply per member, errors included.
    pub async fn keyring(&self, op: keyring::KeyringOp) -> Vec<keyring::KeyringReply> {
        let local = transport::apply_keyring(&self.shared, op.clone()).await;
        let mut replies = vec![local.clone()];
        if local.error.is_some() {
            return replies;
        }
        let peers: Vec<MemberInfo> =
            self.members().iter().skip(1).filter(|m| m.status == MemberStatus::Alive).cloned().collect();
        let slots = Arc::new(tokio::sync::Semaphore::new(KEYRING_FANOUT));
        let mut requests = tokio::task::JoinSet::new();
        for peer in peers {
            let (shared, op, slots) = (Arc::clone(&self.shared), op.clone(), Arc::clone(&slots));
            requests.spawn(async move {
                let _slot = slots.acquire_owned().await;
                transport::keyring_request(peer.id.addr, &op, &shared).await.unwrap_or_else(|e| keyring::KeyringReply {
                    node: peer.id.name.clone(),
                    keys: Vec::new(),
                    error: Some(e),
                })
            });
        }
        while let Some(done) = requests.join_next().await {
            if let Ok(reply) = done {
                replies.push(reply);
            }
        }
        replies
    }

    /// Keeps trying to join through `addrs` with backoff until one round succeeds
    /// (`retry_join`), then returns.
    pub async fn retry_join(self, addrs: Vec<String>, shutdown: CancellationToken) {
        let mut wait = RETRY_JOIN_FIRST;
        loop {
            match self.join(&addrs).await {
                Ok(n) => {
                    tracing::info!(joined = n, "retry-join succeeded");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "retry-join failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(RETRY_JOIN_MAX);
        }
    }
}

/// `host`, `host:port`, `ip` or `[v6]:port`; `default_port` when none is given.
pub async fn resolve(addr: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, default_port)]);
    }
    let with_port = if addr.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        addr.to_string()
    } else {
        format!("{addr}:{default_port}")
    };
    let found: Vec<SocketAddr> =
        tokio::net::lookup_host(&with_port).await.map_err(|e| format!("{addr}: cannot resolve: {e}"))?.collect();
    if found.is_empty() {
        return Err(format!("{addr}: no address"));
    }
    Ok(found)
}

//! The daemon: reads the resolved config, opens the data dir and store, starts Raft and the
//! HTTP API, registers this server in the catalog, and owns shutdown.
//!
//! Architecture Invariant: every long-running task is spawned on the agent's `TaskTracker`
//! and stops when its `CancellationToken` is cancelled. Why: SIGTERM must end with nothing
//! half-done — no write acknowledged by a task that is then abandoned.

mod advertise;
mod client_answers;
mod data_dir;
mod events;
pub mod memory;
mod notify;
mod reconcile;
mod reload;
mod servers;
mod watches;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use data_dir::{DataDir, DataDirError};
pub use reload::SetLogLevel;

use crate::checks::{CheckError, LocalAgent, LocalAgentConfig};
use crate::cluster::{Cluster, ClusterConfig, ClusterError};
use crate::config::{AgentFlags, Config};
use crate::http::{self, AgentIdentity, HttpContext, ReloadReply};
use crate::model::{CheckDefinition, CheckStatus, RegisterRequest, ServiceDefinition, Weights};
use crate::store::{Store, StoreError};
use reload::Reloader;

/// `acl.tokens.initial_management`: whichever server leads creates the token (and the
/// built-in policies) once, which also ends the API bootstrap, as in Consul. Every server
/// configured with it polls until the token exists.
async fn create_initial_management_token(cluster: Cluster, store: Store, secret: String, shutdown: CancellationToken) {
    const POLL: Duration = Duration::from_secs(1);
    loop {
        match store.read().and_then(|view| view.acl_token_by_secret(&secret)) {
            Ok(Some(_)) => return,
            Ok(None) if cluster.is_leader() => {
                let token = crate::model::acl::AclToken {
                    accessor_id: uuid::Uuid::new_v4().to_string(),
                    secret_id: secret.clone(),
                    description: "Initial Management Token".into(),
                    ..Default::default()
                };
                let command = crate::model::Command::AclBootstrap { token: Box::new(token), initial: true };
                match cluster.write(command).await {
                    Ok(crate::model::CommandResult::Done) => {
                        tracing::info!("created the initial management token (acl.tokens.initial_management)");
                        return;
                    }
                    Ok(other) => tracing::warn!(result = ?other, "cannot create the initial management token"),
                    Err(e) => tracing::debug!(error = %e, "initial management token not created yet"),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the ACL tables"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// How long SIGTERM waits for in-flight HTTP requests.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Reload requests waiting (HTTP); one more gets 429.
const RELOADS_QUEUED_MAX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Checks(#[from] CheckError),
    #[error("cannot read the ACL tokens kept by acl.enable_token_persistence: {0}")]
    AgentTokens(#[from] crate::acl::tokens::TokensError),
    #[error(transparent)]
    Gossip(#[from] crate::gossip::GossipError),
    #[error("could not join the gossip pool (-join / start_join): {0}")]
    Join(String),
    #[error("could not join the WAN gossip pool (-join-wan / start_join_wan): {0}")]
    JoinWan(String),
    #[error("Raft stopped: {0}")]
    RaftStopped(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Why the agent stops: a leave request always leaves the gossip pool gracefully; a signal
/// does so when `leave_on_terminate` says; a stopped Raft core ends the process with an error
/// (exit 1, so systemd's `Restart=on-failure` starts it again).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ShutdownReason {
    Signal,
    Leave,
    RaftStopped(String),
}

/// What the agent needs besides its config: the flags it was started with (a reload reads
/// the same files again) and a way to change the log level.
pub struct AgentOptions {
    pub flags: AgentFlags,
    pub set_log_level: SetLogLevel,
    /// Where `/v1/agent/monitor` reads the log from.
    pub log_tap: Arc<crate::http::monitor::LogTap>,
    /// Handed the HTTP API's context once it serves, for a process that embeds the agent and
    /// calls the API without a socket through [`crate::http::router`] (the fuzz harness: no
    /// TCP or HTTP parsing per input, and the store's indexes at hand). `None` in the daemon.
    pub api: Option<tokio::sync::oneshot::Sender<Arc<http::HttpContext>>>,
}

/// Runs the agent until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config, options: AgentOptions) -> Result<(), AgentError> {
    raise_open_files_limit();
    // Installed first: a SIGTERM that arrives while the agent starts must stop it gracefully,
    // not kill it with the default action.
    let signals = Signals::install()?;
    let data_dir = match &config.data_dir {
        Some(path) => DataDir::open(path)?,
        None => DataDir::temporary()?,
    };
    let node_id = data_dir.node_id(config.node_id.as_deref())?;
    tracing::info!(data_dir = %data_dir.path().display(), node_id = %node_id, node = %config.node_name, "starting cairn agent");
    let store = Store::open(&data_dir.lmdb_path(), config.lmdb_map_size_bytes)?;
    let mut agent_tokens =
        crate::acl::tokens::AgentTokens::from_config(config.acl.default_token.clone(), config.acl.agent_token.clone());
    if config.acl.enable_token_persistence {
        agent_tokens = agent_tokens.persisted_in(data_dir.path())?;
    }
    let agent_tokens = Arc::new(agent_tokens);

    let http_ip = config.addresses.http.unwrap_or(config.client_addr);
    let http_addr = SocketAddr::new(http_ip, config.ports.http);
    let http_listener = TcpListener::bind(http_addr).await.map_err(|source| AgentError::Bind {
        what: "HTTP",
        addr: http_addr,
        source,
    })?;
    let http_bound =
        http_listener.local_addr().map_err(|source| AgentError::Bind { what: "HTTP", addr: http_addr, source })?;
    // HTTPS: certificate files read and the port bound now, so a bad file or a taken port
    // stops the start before anything else runs.
    let https = match config.ports.https {
        Some(port) => {
            let tls = Arc::new(crate::tls::TlsServer::new(&config.tls_https)?);
            let addr = SocketAddr::new(config.addresses.https.unwrap_or(config.client_addr), port);
            let bind_error = |source| AgentError::Bind { what: "HTTPS", addr, source };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            Some((listener, bound, tls))
        }
        None => None,
    };

    let advertise_ip =
        advertise::advertise_ip(config.advertise_addr, config.bind_addr).map_err(AgentError::Unsupported)?;
    // Servers answer RPC from other servers; port 0 picks a free one (tests), advertised
    // through gossip like any other.
    let rpc_listener = if config.server {
        let addr = SocketAddr::new(config.bind_addr, config.ports.server);
        let listener =
            TcpListener::bind(addr).await.map_err(|source| AgentError::Bind { what: "server RPC", addr, source })?;
        let bound = listener.local_addr().map_err(|source| AgentError::Bind { what: "server RPC", addr, source })?;
        tracing::info!(addr = %bound, "server RPC listening");
        Some(listener)
    } else {
        None
    };
    let server_port = match &rpc_listener {
        Some(listener) => listener.local_addr().map(|a| a.port()).unwrap_or(config.ports.server),
        None => config.ports.server,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (user_events, received_events) = tokio::sync::mpsc::channel(events::EVENTS_QUEUED_MAX);
    let gossip = start_gossip(
        &config,
        Pool::Lan,
        GossipSetup { advertise_ip, server_port, node_id: &node_id, user_events },
        shutdown.clone(),
        &tasks,
    )
    .await?;
    // Servers also gossip with the servers of other datacenters. User events stay in their
    // datacenter: the WAN pool's go nowhere.
    let wan = match (config.server, config.ports.serf_wan) {
        (true, Some(_)) => {
            let (user_events, _) = tokio::sync::mpsc::channel(1);
            let setup = GossipSetup { advertise_ip, server_port, node_id: &node_id, user_events };
            Some(start_gossip(&config, Pool::Wan, setup, shutdown.clone(), &tasks).await?)
        }
        _ => None,
    };
    let known_servers = servers::watch_servers(&gossip, config.datacenter.clone(), shutdown.clone(), &tasks);
    let remote_servers =
        servers::watch_remote_servers(wan.as_ref(), config.datacenter.clone(), shutdown.clone(), &tasks);
    let rpc_tls = crate::tls::RpcTls::new(&config.tls_rpc, &config.domain)?.map(Arc::new);
    let cluster = Cluster::start(
        store.clone(),
        ClusterConfig {
            node_id: raft_node_id(&node_id),
            datacenter: config.datacenter.clone(),
            advertise: SocketAddr::new(advertise_ip, server_port).to_string(),
            bootstrap_expect: config.bootstrap_expect.unwrap_or(0),
            rpc_tls: rpc_tls.clone(),
            server: config.server,
            write_queue_max: config.limits.max_pending_writes as usize,
            tuning: config.raft.clone(),
            agent_tokens: Arc::clone(&agent_tokens),
        },
        rpc_listener,
        known_servers,
        remote_servers,
        shutdown.clone(),
        &tasks,
    )
    .await?;
    let identity = AgentIdentity {
        datacenter: config.datacenter.clone(),
        node_name: config.node_name.clone(),
        node_id: node_id.clone(),
        server: config.server,
        advertise_addr: advertise_ip.to_string(),
        server_port,
        serf_lan_port: gossip.local().addr.port(),
    };
    let local = LocalAgent::start(
        LocalAgentConfig {
            node_name: config.node_name.clone(),
            data_dir: data_dir.path().to_path_buf(),
            check_update_interval: config.check_update_interval,
            anti_entropy_interval: config.anti_entropy_interval,
            checks_max_concurrent: config.limits.checks_max_concurrent as usize,
        },
        config.services.clone(),
        self_registration(&identity),
        cluster.clone(),
        store.clone(),
        shutdown.clone(),
        &tasks,
    )?;
    let event_log = Arc::new(crate::gossip::event::EventLog::default());
    tasks.spawn(events::keep(
        Arc::clone(&event_log),
        received_events,
        config.node_name.clone(),
        local.clone(),
        shutdown.clone(),
    ));
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(RELOADS_QUEUED_MAX);
    let metrics = crate::metrics::Metrics::default();
    let acl = Arc::new(crate::acl::AclResolver::new(
        config.acl.clone(),
        Arc::clone(&agent_tokens),
        config.datacenter.clone(),
        store.clone(),
    ));
    let ctx = Arc::new(HttpContext::new(http::HttpServices {
        cluster: cluster.clone(),
        store: store.clone(),
        local: local.clone(),
        reload: reload_tx,
        identity: identity.clone(),
        limits: config.limits.clone(),
        shutdown: shutdown.clone(),
        gossip: gossip.clone(),
        wan: wan.clone(),
        events: Arc::clone(&event_log),
        log_tap: Arc::clone(&options.log_tap),
        script_checks_via_api: config.enable_script_checks,
        metrics: metrics.clone(),
        prometheus_retention_time: config.prometheus_retention_time,
        ui_enabled: config.ui_enabled,
        acl: Arc::clone(&acl),
    }));
    let leave = Arc::clone(&ctx.leave);
    let mut dns = crate::dns::service_from_config(&config, store.clone(), Some(cluster.clone()))?.measured_by(metrics);
    // A client agent's answers for cairn's names are a server's, made under its default token.
    if config.server {
        dns = dns.guarded_by(Arc::clone(&acl));
    }
    let dns = Arc::new(dns);
    dns.set_replica_fresh(replica_stale_because(&cluster));
    if config.server {
        let router = http::router(Arc::clone(&ctx));
        cluster.answer_clients_with(Arc::new(client_answers::ServerAnswers {
            router,
            dns: Arc::clone(&dns),
            acl: Arc::clone(&acl),
            store: store.clone(),
        }));
    }
    tasks.spawn(http::serve(http_listener, Arc::clone(&ctx), shutdown.clone(), DRAIN_MAX, None));
    tracing::info!(addr = %http_bound, "HTTP API listening");
    if let Some(embedder) = options.api {
        // The embedder may have stopped waiting; the API still serves on its socket.
        let _ = embedder.send(Arc::clone(&ctx));
    }
    let https = https.map(|(listener, bound, tls)| {
        tasks.spawn(http::serve(listener, Arc::clone(&ctx), shutdown.clone(), DRAIN_MAX, Some(Arc::clone(&tls))));
        tracing::info!(addr = %bound, "HTTPS API listening");
        tls
    });
    drop(ctx);

    let dns_addr = SocketAddr::new(config.addresses.dns.unwrap_or(config.client_addr), config.ports.dns);
    let tcp_limits = crate::dns::TcpLimits {
        max_conns: config.limits.dns_tcp_max_conns,
        max_conns_per_client: config.limits.dns_tcp_max_conns_per_client,
    };
    let udp_receive_buffer = config.limits.dns_udp_receive_buffer_bytes as usize;
    let dns_bound =
        crate::dns::start(Arc::clone(&dns), dns_addr, udp_receive_buffer, tcp_limits, shutdown.clone(), &tasks).await?;
    tracing::info!(addr = %dns_bound.udp, "DNS listening (UDP and TCP)");
    notify::notify(&format!("READY=1\nSTATUS=DNS on {}, HTTP on {http_bound}", dns_bound.udp));

    if config.server {
        tasks.spawn(keep_dns_fresh(cluster.clone(), Arc::clone(&dns), shutdown.clone()));
        let reconciler = reconcile::Reconciler {
            gossip: gossip.clone(),
            cluster: cluster.clone(),
            store: store.clone(),
            own_node: config.node_name.clone(),
            datacenter: config.datacenter.clone(),
            reconnect_timeout: config.reconnect_timeout,
        };
        tasks.spawn(reconciler.run(shutdown.clone()));
    }
    if !config.start_join.is_empty() {
        let joined = gossip.join(&config.start_join).await.map_err(|e| AgentError::Join(e.to_string()))?;
        tracing::info!(joined, "joined the gossip pool");
    }
    if !config.retry_join.is_empty() {
        tasks.spawn(gossip.clone().retry_join(config.retry_join.clone(), shutdown.clone()));
    }
    if let Some(wan) = &wan {
        if !config.start_join_wan.is_empty() {
            let joined = wan.join(&config.start_join_wan).await.map_err(|e| AgentError::JoinWan(e.to_string()))?;
            tracing::info!(joined, "joined the WAN gossip pool");
        }
        if !config.retry_join_wan.is_empty() {
            tasks.spawn(wan.clone().retry_join(config.retry_join_wan.clone(), shutdown.clone()));
        }
    }
    let leave_on_terminate = config.leave_on_terminate.unwrap_or(!config.server);
    tasks.spawn(remove_stale_staged_archives(cluster.clone(), store.clone(), shutdown.clone()));
    tasks.spawn(memory::trim_periodically(shutdown.clone()));
    if let (true, true, Some(secret)) = (config.server, config.acl.enabled, config.acl.initial_management.clone()) {
        tasks.spawn(create_initial_management_token(cluster.clone(), store.clone(), secret, shutdown.clone()));
    }
    let mut watches = watches::Watches::new(http_bound, shutdown.clone(), tasks.clone());
    watches.replace(&config.watches);
    let reloadable = reload::Reloadable {
        dns,
        local,
        watches,
        tls: reload::Tls { https, rpc: rpc_tls },
        set_log_level: options.set_log_level,
        agent_tokens: Arc::clone(&agent_tokens),
    };
    let reloader = Arc::new(Reloader::new(options.flags, config, reloadable));
    let reason = wait_for_shutdown_signal(signals, leave, reloader, reload_rx, &cluster).await?;
    if let ShutdownReason::RaftStopped(why) = &reason {
        tracing::error!(error = %why, "Raft stopped; shutting down so the service manager restarts cairn");
    }
    if reason == ShutdownReason::Leave || (leave_on_terminate && reason == ShutdownReason::Signal) {
        // A leader that leaves hands over first, so the next leader removes it from the
        // voters (a leader never removes itself) and writes pause for no election.
        if cluster.is_leader() && cluster.voter_count() > 1 {
            match tokio::time::timeout(Duration::from_secs(10), cluster.transfer_leader(None)).await {
                Ok(Ok(id)) => tracing::info!(new_leader = id, "leaving: leadership handed over"),
                Ok(Err(e)) => tracing::warn!(error = %e, "leaving: could not hand over leadership"),
                Err(_) => tracing::warn!("leaving: leadership handover timed out"),
            }
        }
        if let Some(wan) = &wan {
            wan.leave().await;
        }
        gossip.leave().await;
    }
    tracing::info!("shutting down: no new connections; answering blocking queries now");
    notify::notify("STOPPING=1");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    cluster.shutdown().await;
    drop(store);
    tracing::info!("shutdown complete");
    drop(data_dir);
    match reason {
        ShutdownReason::RaftStopped(why) => Err(AgentError::RaftStopped(why)),
        ShutdownReason::Signal | ShutdownReason::Leave => Ok(()),
    }
}

/// What gossip needs from the agent's start besides the config.
struct GossipSetup<'a> {
    advertise_ip: IpAddr,
    server_port: u16,
    node_id: &'a str,
    user_events: tokio::sync::mpsc::Sender<crate::gossip::event::UserEvent>,
}

/// The two gossip pools: every agent of the datacenter (LAN), and the servers of every
/// datacenter (WAN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Lan,
    Wan,
}

/// Starts gossip in `pool`: LAN on `bind_addr:serf_lan` as the node name, WAN on
/// `bind_addr:serf_wan` as `node.dc` (Consul's WAN member names), advertising
/// `advertise_addr_wan` if set. Each pool keeps its own keyring file.
async fn start_gossip(
    config: &Config,
    pool: Pool,
    setup: GossipSetup<'_>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<crate::gossip::Gossip, AgentError> {
    let GossipSetup { advertise_ip, server_port, node_id, user_events } = setup;
    use crate::gossip::{Gossip, GossipConfig, GossipKey, IdentityFields, Role, Timings};
    let (g, base, port, name, advertise_ip, keyring_dir) = match pool {
        Pool::Lan => (
            &config.gossip_lan,
            Timings::lan(),
            config.ports.serf_lan,
            config.node_name.clone(),
            advertise_ip,
            config.data_dir.clone(),
        ),
        Pool::Wan => {
            let keyring_dir = match &config.data_dir {
                Some(dir) => {
                    let dir = dir.join("wan");
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        AgentError::Unsupported(format!(
                            "cannot create the WAN keyring directory {}: {e}",
                            dir.display()
                        ))
                    })?;
                    Some(dir)
                }
                None => None,
            };
            (
                &config.gossip_wan,
                Timings::wan(),
                config.ports.serf_wan.unwrap_or_default(),
                format!("{}.{}", config.node_name, config.datacenter),
                config.advertise_addr_wan.unwrap_or(advertise_ip),
                keyring_dir,
            )
        }
    };
    let timings = Timings {
        probe_interval: g.probe_interval,
        probe_timeout: g.probe_timeout,
        suspicion_mult: f64::from(g.suspicion_mult),
        gossip_interval: g.gossip_interval,
        gossip_nodes: g.gossip_nodes as usize,
        reconnect_timeout: config.reconnect_timeout,
        ..base
    };
    // Validated when the config loaded.
    let keys: Vec<GossipKey> = config.encrypt.iter().filter_map(|k| GossipKey::from_base64(k).ok()).collect();
    let gossip_config = GossipConfig {
        bind: SocketAddr::new(config.bind_addr, port),
        advertise_ip,
        identity: IdentityFields {
            name,
            role: if config.server { Role::Server } else { Role::Client },
            datacenter: config.datacenter.clone(),
            server_port: if config.server { server_port } else { 0 },
            node_id: node_id.to_string(),
        },
        timings,
        keys,
        keyring_dir,
        user_events,
        default_port: if pool == Pool::Lan { 8301 } else { 8302 },
    };
    Ok(Gossip::start(gossip_config, shutdown, tasks).await?)
}

/// Our Raft node id, from the node UUID (as every server derives it from gossip).
fn raft_node_id(uuid: &str) -> u64 {
    crate::cluster::raft_node_id(uuid::Uuid::parse_str(uuid).map(|u| u.into_bytes()).unwrap_or([0; 16]))
}

/// This agent's own catalog entry, as Consul writes it: its node and, on a server, the
/// `consul` service and a passing `serfHealth` check. Anti-entropy writes it once the cluster has a leader.
fn self_registration(id: &AgentIdentity) -> RegisterRequest {
    RegisterRequest {
        id: id.node_id.clone(),
        node: id.node_name.clone(),
        address: id.advertise_addr.clone(),
        datacenter: id.datacenter.clone(),
        tagged_addresses: [("lan", &id.advertise_addr), ("wan", &id.advertise_addr)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        node_meta: [("consul-network-segment".to_string(), String::new())].into(),
        // A client's node carries only its own services; the leader writes its serfHealth.
        service: id.server.then(|| ServiceDefinition {
            id: "consul".into(),
            service: "consul".into(),
            tags: Vec::new(),
            address: String::new(),
            meta: Default::default(),
            port: id.server_port,
            weights: Weights::default(),
            enable_tag_override: false,
            tagged_addresses: Default::default(),
        }),
        checks: if !id.server {
            Vec::new()
        } else {
            vec![CheckDefinition {
                check_id: "serfHealth".into(),
                name: "Serf Health Status".into(),
                status: CheckStatus::Passing,
                notes: String::new(),
                output: "Agent alive and reachable".into(),
                service_id: String::new(),
                check_type: String::new(),
            }]
        },
        skip_node_update: false,
    }
}

/// Once this server leads and has applied everything committed before it started (a
/// replayed restore needs its staged file), archives staged by earlier runs are removed.
async fn remove_stale_staged_archives(cluster: Cluster, store: Store, shutdown: CancellationToken) {
    let ready = tokio::select! {
        ready = async { cluster.wait_for_leader(Duration::from_secs(60)).await && cluster.linearizable().await.is_ok() } => ready,
        _ = shutdown.cancelled() => return,
    };
    if ready {
        let _ = tokio::task::spawn_blocking(move || store.remove_stale_staged()).await;
    }
}

/// Tells DNS whether this server's replica may answer: it has replayed the log it held at
/// start (checked every 50 ms until then), and a leader is known or was within
/// `dns_config.max_stale` (checked every second).
async fn keep_dns_fresh(cluster: Cluster, dns: Arc<crate::dns::DnsService>, shutdown: CancellationToken) {
    let mut leader_seen = tokio::time::Instant::now();
    loop {
        let pause = if cluster.replayed() { Duration::from_secs(1) } else { Duration::from_millis(50) };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        if cluster.knows_leader() {
            leader_seen = tokio::time::Instant::now();
        }
        dns.set_replica_fresh(replica_stale_because(&cluster).or_else(|| {
            (leader_seen.elapsed() > dns.max_stale()).then_some("no leader for longer than dns_config.max_stale")
        }));
    }
}

/// Why this server's replica may not answer DNS yet, if it may not.
fn replica_stale_because(cluster: &Cluster) -> Option<&'static str> {
    (!cluster.replayed()).then_some("replaying the log written before the restart")
}

/// The signals the agent handles, registered before anything starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, AgentError> {
        let install = |kind| signal(kind).map_err(AgentError::Signals);
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// Waits for SIGTERM, SIGINT, `PUT /v1/agent/leave` or a stopped Raft core; meanwhile reloads
/// on SIGHUP and on HTTP reload requests, one at a time, on a blocking thread.
async fn wait_for_shutdown_signal(
    mut signals: Signals,
    leave: Arc<tokio::sync::Notify>,
    reloader: Arc<Reloader>,
    mut requests: tokio::sync::mpsc::Receiver<ReloadReply>,
    cluster: &Cluster,
) -> Result<ShutdownReason, AgentError> {
    loop {
        let reply = tokio::select! {
            _ = signals.term.recv() => return Ok(ShutdownReason::Signal),
            _ = signals.int.recv() => return Ok(ShutdownReason::Signal),
            why = cluster.wait_stopped() => return Ok(ShutdownReason::RaftStopped(why)),
            _ = leave.notified() => {
                tracing::info!("leave requested through the API");
                return Ok(ShutdownReason::Leave);
            }
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP received: reloading the config");
                None
            }
            Some(reply) = requests.recv() => Some(reply),
        };
        let reloader = Arc::clone(&reloader);
        let result = tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
        if let Err(e) = &result {
            tracing::error!(error = %e, "config reload failed; the running config is unchanged");
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

/// Raises the soft open-files limit to the hard limit: every HTTP connection and blocking
/// query holds a descriptor.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(before, after = limit.rlim_max, "raised the open-files limit");
            }
        }
    }
}

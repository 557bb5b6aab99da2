//! The daemon: reads the resolved config, opens the data dir and store, starts Raft and the
//! HTTP API, registers this server in the catalog, and owns shutdown.
//!
//! Architecture Invariant: every long-running task is spawned on the agent's `TaskTracker`
//! and stops when its `CancellationToken` is cancelled. Why: SIGTERM must end with nothing
//! half-done — no write acknowledged by a task that is then abandoned.

mod data_dir;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use data_dir::{DataDir, DataDirError};

use crate::cluster::{Cluster, ClusterConfig, ClusterError, WriteError};
use crate::config::Config;
use crate::http::{self, AgentIdentity, HttpContext};
use crate::model::{CheckDefinition, CheckStatus, Command, RegisterRequest, ServiceDefinition, Weights};
use crate::store::{Store, StoreError};

/// How long SIGTERM waits for in-flight HTTP requests.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// How long a bootstrapping server waits for its own election before registering itself.
const LEADER_WAIT: Duration = Duration::from_secs(30);

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
}

/// Runs the agent until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: Config) -> Result<(), AgentError> {
    raise_open_files_limit();
    if !config.server {
        return Err(AgentError::Unsupported(
            "client agents (server = false) are not supported yet: run with -server or -dev".into(),
        ));
    }
    if let Some(n) = config.bootstrap_expect.filter(|n| *n > 1) {
        return Err(AgentError::Unsupported(format!(
            "bootstrap_expect = {n} needs a multi-server cluster, which cairn does not support yet; use 1"
        )));
    }
    let data_dir = match &config.data_dir {
        Some(path) => DataDir::open(path)?,
        None => DataDir::temporary()?,
    };
    let node_id = data_dir.node_id(config.node_id.as_deref())?;
    tracing::info!(data_dir = %data_dir.path().display(), node_id = %node_id, node = %config.node_name, "starting cairn agent");
    let store = Store::open(&data_dir.lmdb_path(), config.lmdb_map_size_bytes)?;

    let http_ip = config.addresses.http.unwrap_or(config.client_addr);
    let http_addr = SocketAddr::new(http_ip, config.ports.http);
    let http_listener = TcpListener::bind(http_addr).await.map_err(|source| AgentError::Bind {
        what: "HTTP",
        addr: http_addr,
        source,
    })?;
    let http_bound =
        http_listener.local_addr().map_err(|source| AgentError::Bind { what: "HTTP", addr: http_addr, source })?;

    let advertise_ip = advertise_ip(&config);
    let server_port = if config.ports.server == 0 { 8300 } else { config.ports.server };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let cluster = Cluster::start(
        store.clone(),
        ClusterConfig {
            node_id: raft_node_id(&node_id),
            advertise: SocketAddr::new(advertise_ip, server_port).to_string(),
            bootstrap: config.bootstrap_expect == Some(1),
            write_queue_max: config.limits.max_pending_writes as usize,
        },
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
        serf_lan_port: config.ports.serf_lan,
    };
    let ctx = Arc::new(HttpContext::new(
        cluster.clone(),
        store.clone(),
        identity.clone(),
        config.limits.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(http::serve(http_listener, ctx, shutdown.clone(), DRAIN_MAX));
    tracing::info!(addr = %http_bound, "HTTP API listening");

    let dns = Arc::new(crate::dns::service_from_config(&config, store.clone())?);
    let dns_addr = SocketAddr::new(config.addresses.dns.unwrap_or(config.client_addr), config.ports.dns);
    let dns_bound = crate::dns::start(Arc::clone(&dns), dns_addr, shutdown.clone(), &tasks).await?;
    tracing::info!(addr = %dns_bound.udp, "DNS listening (UDP and TCP)");

    tasks.spawn(register_self(cluster.clone(), identity, shutdown.clone()));

    wait_for_shutdown_signal(&dns, &tasks).await?;
    tracing::info!("shutting down: no new connections; answering blocking queries now");
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    cluster.shutdown().await;
    drop(store);
    tracing::info!("shutdown complete");
    drop(data_dir);
    Ok(())
}

/// The address other servers and `/v1/status/leader` see: `advertise_addr`, else
/// `bind_addr` unless it is the wildcard, else loopback (with a warning).
fn advertise_ip(config: &Config) -> IpAddr {
    if let Some(ip) = config.advertise_addr {
        return ip;
    }
    if !config.bind_addr.is_unspecified() {
        return config.bind_addr;
    }
    tracing::warn!("bind_addr is a wildcard and advertise_addr is unset; advertising 127.0.0.1");
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Raft node IDs are u64; derive ours from the node UUID so it is stable across restarts.
fn raft_node_id(uuid: &str) -> u64 {
    let parsed = uuid::Uuid::parse_str(uuid).map(|u| u.as_u128()).unwrap_or(1);
    ((parsed >> 64) as u64).max(1)
}

/// Registers this server in the catalog as Consul does: its node, the `consul` service and a
/// passing `serfHealth` check. An unchanged registration leaves every index as it was.
async fn register_self(cluster: Cluster, id: AgentIdentity, shutdown: CancellationToken) {
    if !tokio::select! {
        ok = cluster.wait_for_leader(LEADER_WAIT) => ok,
        _ = shutdown.cancelled() => return,
    } {
        tracing::warn!("no leader elected yet; this server is not registered in the catalog");
        return;
    }
    let command = Command::Register(Box::new(RegisterRequest {
        id: id.node_id.clone(),
        node: id.node_name.clone(),
        address: id.advertise_addr.clone(),
        datacenter: id.datacenter.clone(),
        tagged_addresses: [("lan", &id.advertise_addr), ("wan", &id.advertise_addr)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        node_meta: [("consul-network-segment".to_string(), String::new())].into(),
        service: Some(ServiceDefinition {
            id: "consul".into(),
            service: "consul".into(),
            tags: Vec::new(),
            address: String::new(),
            meta: Default::default(),
            port: id.server_port,
            weights: Weights::default(),
            enable_tag_override: false,
        }),
        checks: vec![CheckDefinition {
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            status: CheckStatus::Passing,
            notes: String::new(),
            output: "Agent alive and reachable".into(),
            service_id: String::new(),
            check_type: String::new(),
        }],
        skip_node_update: false,
    }));
    match cluster.write(command).await {
        Ok(_) => tracing::info!(node = %id.node_name, "registered this server in the catalog"),
        Err(WriteError::Stopped(_)) => {}
        Err(e) => tracing::warn!(error = %e, "could not register this server in the catalog"),
    }
}

async fn wait_for_shutdown_signal(dns: &Arc<crate::dns::DnsService>, tasks: &TaskTracker) -> Result<(), AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: reloading static zones");
                // Parsing zone files is blocking work; signals keep being handled meanwhile.
                let dns = Arc::clone(dns);
                tasks.spawn_blocking(move || dns.reload_zones());
            }
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

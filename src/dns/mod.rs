//! The DNS interface: Consul names answered from the catalog's [`Directory`](crate::store::Directory),
//! static zones, and forwarding to recursors.
//!
//! Architecture Invariant: nothing in `dns/` awaits Raft or opens a write transaction;
//! answers come from the directory alone. Why: DNS must keep answering while the cluster has
//! no leader (Consul's `allow_stale`).

pub mod answer;
mod cache;
mod forward;
pub mod lookup;
pub mod rate_limit;
mod service;
mod tcp;
mod udp;
pub mod wire;
mod zones;

pub use forward::Forwarder;
pub use service::{Cidr, DnsService, DnsSettings};
pub use tcp::TcpLimits;

#[cfg(test)]
mod answer_tests;
#[cfg(test)]
mod wire_tests;

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::rr::Name;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::{Config, RecursorStrategy};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
    #[error("invalid recursor_allow entry {0:?}: expected ip/prefix")]
    Cidr(String),
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Builds the DNS service from the agent's config. A client agent (no catalog of its own)
/// passes `cluster` to answer Consul names through a server; a server, to answer names of
/// other datacenters through theirs.
pub fn service_from_config(config: &Config, store: Store, cluster: Option<Cluster>) -> Result<DnsService, DnsError> {
    let service = DnsService::new(
        settings_from_config(config)?,
        store,
        // `-dev` serves ./zones when it exists, so the shipped example works out of the box.
        config
            .zones_dir
            .clone()
            .or_else(|| (config.dev && std::path::Path::new("zones").is_dir()).then(|| "zones".into())),
        config.limits.dns_max_forwards_in_flight as usize,
    );
    Ok(match cluster {
        Some(cluster) if !config.server => service.answering_through(cluster),
        Some(cluster) => service.federated_through(cluster),
        None => service,
    })
}

/// The reloadable part of the DNS service (answer rules, recursors), from the config.
pub fn settings_from_config(config: &Config) -> Result<DnsSettings, DnsError> {
    let mut domains = Vec::new();
    for domain in std::iter::once(&config.domain).chain(config.alt_domain.iter()) {
        let mut name = Name::from_ascii(domain)
            .map_err(|e| DnsError::Domain { domain: domain.clone(), reason: e.to_string() })?
            .to_lowercase();
        name.set_fqdn(true);
        domains.push(name);
    }
    let dns = &config.dns_config;
    let recursor_allow = dns
        .recursor_allow
        .iter()
        .map(|c| Cidr::parse(c).ok_or_else(|| DnsError::Cidr(c.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let responder = wire::Responder {
        answers: answer::AnswerSettings {
            datacenter: config.datacenter.clone(),
            node_ttl: answer::to_ttl(dns.node_ttl),
            service_ttl: dns.service_ttl.iter().map(|(k, v)| (k.clone(), answer::to_ttl(*v))).collect(),
            only_passing: dns.only_passing,
            soa: answer::SoaSettings {
                refresh: dns.soa.refresh,
                retry: dns.soa.retry,
                expire: dns.soa.expire,
                min_ttl: dns.soa.min_ttl,
            },
            acl: Default::default(),
        },
        domains,
        udp_answer_limit: dns.udp_answer_limit as usize,
        a_record_limit: dns.a_record_limit as usize,
        recursion_available: !config.recursors.is_empty(),
        holds_catalog: config.server,
    };
    let forwarder = Forwarder::new(
        config.recursors.clone(),
        dns.recursor_timeout,
        dns.recursor_strategy == RecursorStrategy::Random,
    );
    let rate_limit = rate_limit::RateLimiter::new(&dns.rate_limit);
    Ok(DnsSettings { responder, forwarder, recursor_allow, max_stale: dns.max_stale, rate_limit })
}

/// The bound DNS listeners.
#[derive(Debug, Clone, Copy)]
pub struct DnsAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// Binds the UDP sockets and the TCP listener on one port. For port 0 a free port is found
/// first with a plain UDP socket: letting `SO_REUSEPORT` sockets pick it could land on a port
/// another process's `SO_REUSEPORT` sockets already share, splitting its traffic with ours.
async fn bind_both(
    addr: SocketAddr,
    cores: usize,
    receive_buffer: usize,
) -> Result<(Vec<socket2::Socket>, tokio::net::TcpListener), DnsError> {
    let bind_err = |addr| move |source| DnsError::Bind { addr, source };
    if addr.port() != 0 {
        let sockets = udp::bind(addr, cores, receive_buffer).map_err(bind_err(addr))?;
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(bind_err(addr))?;
        return Ok((sockets, tcp));
    }
    let mut last_error = None;
    for _ in 0..20 {
        let probe = std::net::UdpSocket::bind(addr).map_err(bind_err(addr))?;
        let chosen = probe.local_addr().map_err(bind_err(addr))?;
        let Ok(tcp) = tokio::net::TcpListener::bind(chosen).await else { continue };
        drop(probe);
        match udp::bind(chosen, cores, receive_buffer) {
            Ok(sockets) => return Ok((sockets, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(DnsError::Bind { addr, source: last_error.unwrap_or_else(|| std::io::Error::other("no free port found")) })
}

/// Binds UDP (one socket and thread per core, each asking for `udp_receive_buffer` bytes of
/// kernel queue) and TCP on `addr` (port 0: any free port, the same for both) and serves
/// until `shutdown`.
pub async fn start(
    service: Arc<DnsService>,
    addr: SocketAddr,
    udp_receive_buffer: usize,
    tcp_limits: TcpLimits,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<DnsAddrs, DnsError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bind_err = |addr| move |source| DnsError::Bind { addr, source };
    let (sockets, tcp) = bind_both(addr, cores, udp_receive_buffer).await?;
    let tcp_addr = tcp.local_addr().map_err(bind_err(addr))?;
    // One port for both (see `bind_both`).
    let addrs = DnsAddrs { udp: tcp_addr, tcp: tcp_addr };
    udp::spawn(sockets, Arc::clone(&service), shutdown.clone(), tasks).map_err(bind_err(addr))?;
    tasks.spawn(tcp::serve(tcp, service, tcp_limits, shutdown, tasks.clone()));
    Ok(addrs)
}

//! One DNS service shared by every listener: answers cairn's domains from the directory,
//! static zones through hickory's `Catalog`, and everything else through the forwarder, for
//! sources allowed to recurse.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{LowerName, Record};
use hickory_proto::serialize::binary::BinEncoder;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::answer::QueryResults;
use super::forward::{ForwardError, Forwarder};
use super::lookup::Lookup;
use super::wire::{
    encode_within, error_reply, error_reply_to, peek_header, single_question, Reply, Responder, Transport,
    TCP_MESSAGE_MAX, UDP_PAYLOAD_MAX,
};
use super::zones::{self, Zones};
use crate::cluster::Cluster;
use crate::store::{InstanceRecord, NodeRecord, Store};

/// An IP network (`10.0.0.0/8`), for `recursor_allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = text.split_once('/')?;
        let network: IpAddr = ip.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a reload may change: answer rules, recursors and who may use them.
pub struct DnsSettings {
    pub responder: Responder,
    pub forwarder: Forwarder,
    pub recursor_allow: Vec<Cidr>,
    /// How stale a catalog answer may be (`dns_config.max_stale`): how long a server keeps
    /// answering from its replica with no leader, and a client from its copies of a
    /// server's answers when no server answers.
    pub max_stale: std::time::Duration,
    /// UDP response-rate limiting, when on (a reload starts it afresh).
    pub rate_limit: Option<super::rate_limit::RateLimiter>,
}

/// A server's answers a client agent keeps for when no server answers, at most; when full,
/// they are all dropped (the next answers refill it).
const SERVER_ANSWERS_KEPT_MAX: usize = 4096;

/// A query (minus its id) → when a server answered it, and the answer.
type ServerAnswers = std::collections::HashMap<Vec<u8>, (std::time::Instant, Vec<u8>)>;

pub struct DnsService {
    settings: ArcSwap<DnsSettings>,
    /// Bumped by every reconfiguration, so cached answers built under old settings go.
    settings_generation: AtomicU64,
    store: Store,
    zones: ArcSwap<Zones>,
    zones_dir: Option<PathBuf>,
    /// One permit per answer in flight that is not built from the directory (zones and
    /// forwards); when none is left the client gets SERVFAIL at once.
    slow_path: Arc<Semaphore>,
    /// On a client agent: the servers that answer names in cairn's domains.
    servers: Option<Cluster>,
    /// On a server: where names of other datacenters are sent (the WAN pool's servers).
    federation: Option<Cluster>,
    /// Where the answer loops' counters are registered.
    metrics: crate::metrics::Metrics,
    /// The TCP listener's counters (its connections share them).
    tcp_counters: Arc<crate::metrics::DnsCounters>,
    /// The UDP slow path's counters (its tasks share them).
    slow_counters: Arc<crate::metrics::DnsCounters>,
    /// False on a server whose replica is replaying its log after a restart, or has had no
    /// leader for longer than `max_stale`: names in cairn's domains get SERVFAIL instead of
    /// answers that old.
    replica_fresh: std::sync::atomic::AtomicBool,
    /// On a client: the last answer a server gave to each query (keyed by the query minus
    /// its id), with when, for when no server answers.
    server_answers: Mutex<ServerAnswers>,
    /// With ACLs on: resolves the default token DNS answers under, and the store's ACL
    /// generation the current authorizer was made at (`u64::MAX`: none yet).
    acl: Option<(Arc<crate::acl::AclResolver>, AtomicU64)>,
}

impl DnsService {
    pub fn new(settings: DnsSettings, store: Store, zones_dir: Option<PathBuf>, slow_path_max: usize) -> DnsService {
        let service = DnsService {
            settings: ArcSwap::from_pointee(settings),
            settings_generation: AtomicU64::new(0),
            store,
            zones: ArcSwap::from_pointee(Zones::default()),
            zones_dir,
            slow_path: Arc::new(Semaphore::new(slow_path_max.max(1))),
            servers: None,
            federation: None,
            metrics: Default::default(),
            tcp_counters: Default::default(),
            slow_counters: Default::default(),
            replica_fresh: std::sync::atomic::AtomicBool::new(true),
            server_answers: Mutex::default(),
            acl: None,
        };
        service.reload_zones();
        service
    }

    /// This service on a client agent: names in cairn's domains are answered by a server
    /// (through `cluster`), the rest as on a server.
    pub fn answering_through(mut self, cluster: Cluster) -> DnsService {
        self.servers = Some(cluster);
        self
    }

    /// This service counting its answers into `metrics`.
    /// Answers only what the agent's default token may read, when `resolver` has ACLs on.
    pub fn guarded_by(mut self, resolver: Arc<crate::acl::AclResolver>) -> DnsService {
        if resolver.enabled() {
            self.acl = Some((resolver, AtomicU64::new(u64::MAX)));
        }
        self
    }

    /// Brings the answers' authorizer up to date with the ACL tables and the agent's default
    /// token (two atomic loads when nothing changed). An unknown default token reads nothing. A change drops every
    /// cached answer.
    fn refresh_acl(&self) {
        let Some((resolver, seen)) = &self.acl else { return };
        let generation = resolver.generation();
        if seen.load(Ordering::Acquire) == generation {
            return;
        }
        let authorizer = match resolver.resolve(None) {
            Ok(token) => token.authorizer.clone(),
            Err(e) => {
                tracing::warn!(error = %e, "DNS: the default ACL token cannot be resolved; answering nothing it guards");
                crate::acl::Authorizer::from_rules(crate::acl::Rules::default(), false)
            }
        };
        self.settings.load().responder.answers.acl.store(Some(Arc::new(authorizer)));
        seen.store(generation, Ordering::Release);
        self.settings_generation.fetch_add(1, Ordering::Release);
    }

    pub fn measured_by(mut self, metrics: crate::metrics::Metrics) -> DnsService {
        self.tcp_counters = metrics.dns_counters(false);
        self.slow_counters = metrics.dns_counters(false);
        self.metrics = metrics;
        self
    }

    /// Counters for one more UDP answer loop, which alone writes to them.
    pub fn loop_counters(&self) -> Arc<crate::metrics::DnsCounters> {
        self.metrics.dns_counters(true)
    }

    /// Counters the UDP slow path's tasks share.
    pub fn slow_counters(&self) -> Arc<crate::metrics::DnsCounters> {
        Arc::clone(&self.slow_counters)
    }

    /// This service on a server: names of other datacenters go to their servers through
    /// `cluster`.
    pub fn federated_through(mut self, cluster: Cluster) -> DnsService {
        self.federation = Some(cluster);
        self
    }

    /// A server's answer to a query a client agent (or a server of another datacenter)
    /// forwarded: built as for its own clients; names outside cairn's domains are refused
    /// (the client resolves those itself).
    pub async fn reply_for_client(&self, packet: &[u8], transport: Transport) -> Vec<u8> {
        match self.reply_fast(packet, transport) {
            Reply::Bytes(bytes) => bytes,
            Reply::Drop => Vec::new(),
            // A name in cairn's domains that the fast path would not answer: another
            // datacenter's, or this replica is too stale. Other names are the client's to
            // resolve.
            Reply::NotOurs => {
                if let Some(answer) = self.reply_slow_consul(packet, transport).await {
                    return answer;
                }
                let code = if self.replica_fresh.load(Ordering::Relaxed) {
                    ResponseCode::Refused
                } else {
                    ResponseCode::ServFail
                };
                error_reply_to(packet, code).unwrap_or_default()
            }
        }
    }

    /// (Re)loads the zones directory; files that fail keep their previous version. Returns the
    /// number of zones served.
    pub fn reload_zones(&self) -> usize {
        let Some(dir) = &self.zones_dir else { return 0 };
        let previous = self.zones.load_full();
        let (zones, errors) = zones::load(dir, Some(&previous));
        for error in &errors {
            tracing::error!("{error}; keeping its previous version, if any");
        }
        let count = zones.len();
        tracing::info!(zones = count, dir = %dir.display(), "static zones loaded");
        self.zones.store(Arc::new(zones));
        count
    }

    /// Replaces the answer rules and recursors (config reload); in-flight answers finish
    /// with the old ones.
    pub fn reconfigure(&self, settings: DnsSettings) {
        self.settings.store(Arc::new(settings));
        if let Some((_, seen)) = &self.acl {
            // The new settings carry no authorizer yet.
            seen.store(u64::MAX, Ordering::Release);
        }
        self.settings_generation.fetch_add(1, Ordering::Release);
    }

    /// Whether this server's replica is recent enough to answer from (see
    /// [`DnsSettings::max_stale`]). A change drops every cached answer.
    /// `stale_because`: `None` when it is, else why not (for the log).
    pub fn set_replica_fresh(&self, stale_because: Option<&'static str>) {
        let fresh = stale_because.is_none();
        if self.replica_fresh.swap(fresh, Ordering::AcqRel) != fresh {
            self.settings_generation.fetch_add(1, Ordering::Release);
            match stale_because {
                None => tracing::info!("DNS answers from the catalog again"),
                Some(why) => tracing::warn!("{why}: DNS answers SERVFAIL for Consul names"),
            }
        }
    }

    /// How long a catalog answer may be stale.
    pub fn max_stale(&self) -> std::time::Duration {
        self.settings.load().max_stale
    }

    /// The fast path: answers from the directory without awaiting anything. A replica too
    /// stale to answer from sends everything to the slow path, which refuses Consul names.
    pub fn reply_fast(&self, packet: &[u8], transport: Transport) -> Reply {
        if !self.replica_fresh.load(Ordering::Relaxed) {
            return Reply::NotOurs;
        }
        self.refresh_acl();
        let directory = self.store.directory();
        self.settings.load().responder.reply_to_packet(packet, transport, &directory, &mut rand::rng())
    }

    /// The most answers a UDP response to `qtype` for a client of `client_size` bytes may
    /// carry by policy (see [`Responder::policy_cap`]).
    pub fn udp_policy_cap(&self, qtype: u16, client_size: u16) -> Option<usize> {
        self.settings.load().responder.policy_cap(qtype.into(), Transport::Udp, client_size)
    }

    /// What answers are currently built from: the directory index and the settings
    /// generation (the answer cache's validity).
    pub fn answers_version(&self) -> (u64, u64) {
        self.refresh_acl();
        (self.store.directory().index, self.settings_generation.load(Ordering::Acquire))
    }

    pub fn try_slow_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.slow_path.clone().try_acquire_owned().ok()
    }

    /// What may be sent over UDP to `src` for `answer`: the answer, an empty one with TC
    /// (rate-limited, but slipped), or nothing (rate-limited).
    pub fn rate_limited(&self, src: std::net::IpAddr, answer: Vec<u8>) -> Option<Vec<u8>> {
        use super::rate_limit::{slipped, Verdict};
        let settings = self.settings.load();
        let Some(limiter) = &settings.rate_limit else { return Some(answer) };
        match limiter.check(src, std::time::Instant::now()) {
            Verdict::Answer => Some(answer),
            Verdict::Slip => slipped(&answer),
            Verdict::Drop => None,
        }
    }

    /// SERVFAIL for `packet`, when the slow path is full.
    pub fn servfail(packet: &[u8]) -> Option<Vec<u8>> {
        error_reply_to(packet, ResponseCode::ServFail)
    }

    /// Answers a packet the fast path called `NotOurs`: on a client agent a name in cairn's
    /// domains goes to a server; else a static zone, else the forwarder.
    pub async fn reply_elsewhere(&self, packet: Vec<u8>, src: SocketAddr, transport: Transport) -> Vec<u8> {
        let Some(header) = peek_header(&packet) else { return Vec::new() };
        let protocol = if transport == Transport::Udp { Protocol::Udp } else { Protocol::Tcp };
        let request = match Request::from_bytes(packet.clone(), src, protocol) {
            Ok(request) => request,
            Err(_) => return error_reply(&header, None, ResponseCode::FormErr),
        };
        let Some(query) = request.queries.queries().first() else {
            return error_reply(&header, None, ResponseCode::FormErr);
        };
        let error = |code| error_reply_to(&packet, code).unwrap_or_default();
        if self.owns(query.name()) {
            return match &self.servers {
                Some(cluster) => self.ask_server(cluster, packet, transport).await,
                // On a server: another datacenter's name, or the replica is too stale (the
                // fast path answers otherwise).
                None => match self.reply_slow_consul(&packet, transport).await {
                    Some(answer) => answer,
                    None => error(ResponseCode::ServFail),
                },
            };
        }
        let zones = self.zones.load_full();
        if zones.covers(query.name()) {
            let limit = match transport {
                Transport::Udp => request.max_payload().clamp(512, UDP_PAYLOAD_MAX) as usize,
                Transport::Tcp => TCP_MESSAGE_MAX,
            };
            let capture = Capture::default();
            zones.catalog.handle_request::<_, TokioTime>(&request, capture.clone()).await;
            return capture.bytes(limit).unwrap_or_else(|| error(ResponseCode::ServFail));
        }
        let settings = self.settings.load_full();
        if settings.forwarder.is_empty() || !settings.recursor_allow.iter().any(|c| c.contains(src.ip())) {
            return error(ResponseCode::Refused);
        }
        match settings.forwarder.forward(&packet, transport).await {
            Ok(answer) => answer,
            Err(ForwardError::AllFailed) => {
                tracing::debug!(name = %query.name(), "every recursor failed");
                error(ResponseCode::ServFail)
            }
        }
    }

    /// The answer to a Consul name the fast path leaves to this one (`None` for any other
    /// query): another datacenter's name — a server of that datacenter's answer, SERVFAIL
    /// when none answers, NXDOMAIN when no server of it is known (as Consul) — or a prepared
    /// query's execution.
    async fn reply_slow_consul(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = Message::from_vec(packet).ok()?;
        let settings = self.settings.load_full();
        let servfail = || Some(error_reply(&request.metadata, single_question(&request), ResponseCode::ServFail));
        let unknown = || {
            let directory = self.store.directory();
            match settings.responder.reply_here(packet, transport, &directory, &mut rand::rng()) {
                Reply::Bytes(answer) => Some(answer),
                Reply::Drop | Reply::NotOurs => servfail(),
            }
        };
        let cluster = self.federation.as_ref();
        match settings.responder.slow_lookup(&request)? {
            Lookup::OtherDatacenter { datacenter } => match cluster.filter(|c| c.knows_datacenter(&datacenter)) {
                Some(cluster) => {
                    match cluster.forward_dns_to(&datacenter, packet.to_vec(), transport == Transport::Tcp).await {
                        Ok(answer) if !answer.is_empty() => Some(answer),
                        Ok(_) => servfail(),
                        Err(e) => {
                            tracing::debug!(datacenter, error = %e, "no server of the datacenter answered a DNS query");
                            servfail()
                        }
                    }
                }
                None => unknown(),
            },
            Lookup::PreparedQuery { name } => {
                if !self.replica_fresh.load(Ordering::Relaxed) {
                    // As every local answer: not from a replica too stale to answer from.
                    return servfail();
                }
                let Some(cluster) = cluster else { return unknown() };
                let query = match self.store.read().and_then(|view| view.resolve_prepared_query(&name)) {
                    Ok(Some(query)) => query,
                    Ok(None) => return unknown(),
                    Err(e) => {
                        tracing::warn!(error = %e, "prepared query lookup failed");
                        return servfail();
                    }
                };
                let local = &settings.responder.answers.datacenter;
                match crate::prepared_query::execute(&self.store, cluster, local, &query, None).await {
                    Ok(execution) => {
                        let results = query_results(&query, execution);
                        let directory = self.store.directory();
                        Some(settings.responder.reply_query(&request, transport, &directory, &results))
                    }
                    Err(e) => {
                        tracing::warn!(query = %name, error = %e, "prepared query failed");
                        servfail()
                    }
                }
            }
            _ => None,
        }
    }

    /// A client agent's answer for a name in cairn's domains: a server's, or when none
    /// answers, the last one a server gave to the same query if it is within `max_stale`,
    /// else SERVFAIL.
    async fn ask_server(&self, cluster: &Cluster, packet: Vec<u8>, transport: Transport) -> Vec<u8> {
        if packet.len() < 12 {
            return Vec::new();
        }
        let key = packet.get(2..).unwrap_or_default().to_vec();
        let kept = |answers: &ServerAnswers| {
            let (at, answer) = answers.get(&key)?;
            (at.elapsed() <= self.max_stale() && answer.len() >= 2).then(|| {
                let mut answer = answer.clone();
                answer[0..2].copy_from_slice(&packet[0..2]);
                answer
            })
        };
        match cluster.forward_dns(packet.clone(), transport == Transport::Tcp).await {
            Some(answer) if !answer.is_empty() => {
                let mut answers = self.server_answers.lock().unwrap_or_else(|e| e.into_inner());
                if answers.len() >= SERVER_ANSWERS_KEPT_MAX {
                    answers.clear();
                }
                answers.insert(key, (std::time::Instant::now(), answer.clone()));
                answer
            }
            _ => {
                let answers = self.server_answers.lock().unwrap_or_else(|e| e.into_inner());
                kept(&answers).unwrap_or_else(|| error_reply_to(&packet, ResponseCode::ServFail).unwrap_or_default())
            }
        }
    }

    /// Whether `name` is in one of cairn's domains.
    pub fn owns(&self, name: &LowerName) -> bool {
        self.settings.load().responder.domains.iter().any(|d| LowerName::from(d.clone()).zone_of(name))
    }
}

/// Captures what a hickory handler answers, as bytes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

impl Capture {
    /// The captured answer, cut to `limit` bytes by cairn's own rules if it is larger.
    fn bytes(&self, limit: usize) -> Option<Vec<u8>> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        let mut message = Message::from_vec(&bytes).ok()?;
        let answers = std::mem::take(&mut message.answers);
        let authorities = std::mem::take(&mut message.authorities);
        let additionals = std::mem::take(&mut message.additionals);
        Some(encode_within(message, answers, authorities, additionals, limit))
    }
}

#[async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut buf = Vec::with_capacity(512);
        // Encoded without a limit; `bytes()` applies cairn's size rules (hickory's own
        // truncation can drop the OPT record and leave stray bytes).
        let info = response.destructive_emit(&mut BinEncoder::new(&mut buf))?;
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(buf);
        Ok(info)
    }
}

impl DnsService {
    /// The answer to one message received over TCP from `peer`; `None` when it gets none (a
    /// packet too broken to answer).
    pub(super) async fn answer_tcp(&self, packet: Vec<u8>, peer: SocketAddr) -> Option<Vec<u8>> {
        let started = std::time::Instant::now();
        let bytes = match self.reply_fast(&packet, Transport::Tcp) {
            Reply::Drop => return None,
            Reply::Bytes(bytes) => bytes,
            Reply::NotOurs => match self.try_slow_permit() {
                Some(_permit) => self.reply_elsewhere(packet.clone(), peer, Transport::Tcp).await,
                None => error_reply_to(&packet, ResponseCode::ServFail)?,
            },
        };
        if bytes.is_empty() {
            return None;
        }
        self.tcp_counters.answered(&packet, &bytes, Some(started.elapsed()));
        Some(bytes)
    }
}

/// An execution's instances as the DNS answer builder takes them.
fn query_results(query: &crate::model::PreparedQuery, execution: crate::prepared_query::Execution) -> QueryResults {
    let instances = execution
        .nodes
        .into_iter()
        .map(|h| {
            let status = crate::prepared_query::health(&h, &query.service.ignore_check_ids);
            InstanceRecord {
                node: Arc::new(NodeRecord {
                    name: h.node.node,
                    address: h.node.address,
                    datacenter: h.node.datacenter,
                    meta: h.node.meta,
                }),
                service_name: h.service.service,
                service_id: h.service.id,
                address: h.service.address,
                port: h.service.port,
                tags: h.service.tags,
                weights: h.service.weights,
                status,
            }
        })
        .collect();
    QueryResults {
        datacenter: execution.datacenter,
        ttl: execution.dns_ttl.map(super::answer::to_ttl),
        service: execution.service,
        instances,
    }
}

//! Consul DNS semantics: a parsed [`Lookup`] plus the catalog's [`Directory`] → the records of
//! an answer. Pure (no sockets, no clock except the SOA serial passed in, randomness passed
//! in), so every rule is unit-tested on structs.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use rand::Rng;

use super::lookup::{encode_hex_ip, Lookup};
use crate::acl::{Access, Resource};
use crate::model::CheckStatus;
use crate::store::{Directory, InstanceRecord, NodeRecord};

/// What the answer builder needs from the config.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    pub datacenter: String,
    pub node_ttl: u32,
    /// `(name or prefix*, ttl)`; an exact name beats a prefix, the longest prefix wins.
    pub service_ttl: Vec<(String, u32)>,
    pub only_passing: bool,
    pub soa: SoaSettings,
    /// With ACLs on: what the agent's default token may read (services, and the nodes their
    /// instances run on); names it may not read are answered NXDOMAIN, as Consul. Empty
    /// with ACLs off. Set by `DnsService` whenever the ACL tables change.
    pub acl: DnsAcl,
}

/// The authorizer DNS answers under, shared between the settings and the service that
/// keeps it current.
pub type DnsAcl = Arc<arc_swap::ArcSwapOption<crate::acl::Authorizer>>;

#[derive(Debug, Clone, Copy)]
pub struct SoaSettings {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub min_ttl: u32,
}

/// The records of one answer, before size limits.
#[derive(Debug, Default)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn nxdomain(soa: Record) -> Answer {
        Answer { rcode: ResponseCode::NXDomain, authorities: vec![soa], ..Default::default() }
    }
}

/// Inputs of one question.
pub struct Question<'a> {
    /// As received (its case is echoed in answer names).
    pub name: &'a Name,
    pub qtype: RecordType,
    /// The domain the name is in (`consul.` or the alt domain), lowercase.
    pub domain: &'a Name,
    pub lookup: Lookup,
    /// Seconds since the epoch, the SOA serial.
    pub now_secs: u32,
}

pub fn to_ttl(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

/// What a prepared query's execution found, for its DNS answer.
#[derive(Debug, Clone)]
pub struct QueryResults {
    /// Where the instances are (SRV targets are `node.node.<datacenter>.<domain>`).
    pub datacenter: String,
    /// The query's own TTL; else the service's.
    pub ttl: Option<u32>,
    /// The service name the query looked up.
    pub service: String,
    /// Healthy by the query's rules already, in answer order.
    pub instances: Vec<InstanceRecord>,
}

/// Builds the answer to `q` from `dir`. Answer order is shuffled with `rng`.
pub fn build(settings: &AnswerSettings, dir: &Directory, q: &Question<'_>, rng: &mut impl Rng) -> Answer {
    let acl = settings.acl.load();
    let b = Builder { settings, dir, q, datacenter: &settings.datacenter, acl: acl.as_deref() };
    let soa = b.soa_record();
    let readable = |resource, name: &str| b.acl.is_none_or(|a| a.allows(resource, name, Access::Read));
    match &q.lookup {
        Lookup::Service { name, .. } if !readable(Resource::Service, name) => Answer::nxdomain(soa),
        Lookup::Node { name } if !readable(Resource::Node, name) => Answer::nxdomain(soa),
        Lookup::Apex => b.apex(soa),
        Lookup::Unknown | Lookup::PreparedQuery { .. } | Lookup::OtherDatacenter { .. } => Answer::nxdomain(soa),
        _ if q.qtype == RecordType::SOA => {
            Answer { answers: vec![soa], authorities: b.ns_records(), ..Default::default() }
        }
        Lookup::Service { name, tag } => b.service(name, tag.as_deref(), soa, rng),
        Lookup::Node { name } => b.node(name, soa),
        Lookup::Addr { ip } => b.addr(*ip, soa),
    }
}

/// Builds the answer to a prepared query `q` from its execution's `results` (NXDOMAIN
/// when there are none, as Consul).
pub fn build_query(settings: &AnswerSettings, dir: &Directory, q: &Question<'_>, results: &QueryResults) -> Answer {
    let acl = settings.acl.load();
    let b = Builder { settings, dir, q, datacenter: &results.datacenter, acl: acl.as_deref() };
    let soa = b.soa_record();
    if q.qtype == RecordType::SOA {
        return Answer { answers: vec![soa], authorities: b.ns_records(), ..Default::default() };
    }
    if results.instances.is_empty() {
        return Answer::nxdomain(soa);
    }
    let instances: Vec<&InstanceRecord> = results.instances.iter().collect();
    b.instances_answer(&instances, results.ttl.unwrap_or_else(|| b.service_ttl(&results.service)), soa)
}

struct Builder<'a> {
    settings: &'a AnswerSettings,
    dir: &'a Directory,
    q: &'a Question<'a>,
    /// The datacenter in the names answers point at (node and addr names).
    datacenter: &'a str,
    acl: Option<&'a crate::acl::Authorizer>,
}

/// Turns a registered address into a name for an RFC 1035 label context, if it is valid.
fn hostname(address: &str) -> Option<Name> {
    let mut name = Name::from_ascii(address).ok()?;
    name.set_fqdn(true);
    Some(name)
}

impl Builder<'_> {
    /// `labels` under the question's domain, taken as raw bytes as Consul does (so a node
    /// named `web_1` keeps its name); `None` when a label cannot be one (empty, over 63
    /// bytes) or the name is too long — the record that needed it is left out.
    fn name_in_domain(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::root();
        for label in labels {
            name = name.append_label(label.as_bytes()).ok()?;
        }
        name.append_domain(self.q.domain).ok()
    }

    fn node_name(&self, node: &NodeRecord) -> Option<Name> {
        self.name_in_domain(&[&node.name, "node", self.datacenter])
    }

    fn soa_record(&self) -> Record {
        let s = &self.settings.soa;
        let soa = SOA::new(
            self.name_in_domain(&["ns"]).unwrap_or_else(|| self.q.domain.clone()),
            self.name_in_domain(&["hostmaster"]).unwrap_or_else(|| self.q.domain.clone()),
            self.q.now_secs,
            s.refresh as i32,
            s.retry as i32,
            s.expire as i32,
            s.min_ttl,
        );
        Record::from_rdata(self.q.domain.clone(), s.min_ttl, RData::SOA(soa))
    }

    /// NS records for up to three servers, and their glue.
    fn ns_records(&self) -> Vec<Record> {
        self.dir
            .servers()
            .iter()
            .take(3)
            .filter_map(|s| self.node_name(s))
            .map(|target| Record::from_rdata(self.q.domain.clone(), self.settings.node_ttl, RData::NS(NS(target))))
            .collect()
    }

    fn ns_glue(&self) -> Vec<Record> {
        let ttl = self.settings.node_ttl;
        self.dir
            .servers()
            .iter()
            .take(3)
            .filter_map(|s| Some(ip_record(self.node_name(s)?, ttl, s.address.parse::<IpAddr>().ok()?)))
            .collect()
    }

    fn apex(&self, soa: Record) -> Answer {
        match self.q.qtype {
            RecordType::SOA => Answer { answers: vec![soa], authorities: self.ns_records(), ..Default::default() },
            RecordType::NS => Answer { answers: self.ns_records(), additionals: self.ns_glue(), ..Default::default() },
            _ => nodata(soa),
        }
    }

    fn service_ttl(&self, name: &str) -> u32 {
        let mut best: Option<(usize, u32)> = None;
        for (pattern, ttl) in &self.settings.service_ttl {
            let score = match pattern.strip_suffix('*') {
                None if pattern.eq_ignore_ascii_case(name) => usize::MAX,
                Some(prefix)
                    if name
                        .as_bytes()
                        .get(..prefix.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes())) =>
                {
                    prefix.len()
                }
                _ => continue,
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, *ttl));
            }
        }
        best.map_or(0, |(_, ttl)| ttl)
    }

    fn healthy(&self, instance: &InstanceRecord) -> bool {
        match instance.status {
            CheckStatus::Passing => true,
            CheckStatus::Warning => !self.settings.only_passing,
            CheckStatus::Critical => false,
        }
    }

    fn service(&self, name: &str, tag: Option<&str>, soa: Record, rng: &mut impl Rng) -> Answer {
        let mut instances: Vec<&InstanceRecord> = self
            .dir
            .service(name)
            .into_iter()
            .flat_map(|instances| instances.values())
            .map(|i| &**i)
            .filter(|i| self.healthy(i))
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|it| it.eq_ignore_ascii_case(t))))
            .filter(|i| self.acl.is_none_or(|a| a.allows(Resource::Node, &i.node.name, Access::Read)))
            .collect();
        if instances.is_empty() {
            return Answer::nxdomain(soa);
        }
        instances.shuffle(rng);
        self.instances_answer(&instances, self.service_ttl(name), soa)
    }

    /// SRV, or A/AAAA (CNAME for a hostname), for `instances`, in their order.
    fn instances_answer(&self, instances: &[&InstanceRecord], ttl: u32, soa: Record) -> Answer {
        let mut answer = Answer::default();
        match self.q.qtype {
            RecordType::SRV => self.srv(instances, ttl, &mut answer),
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                for instance in instances {
                    self.address_records(instance.effective_address(), ttl, &mut answer);
                }
            }
            _ => {}
        }
        if answer.answers.is_empty() {
            return nodata(soa);
        }
        answer
    }

    /// A/AAAA (or a CNAME for a hostname) for one address, as the question's type allows.
    fn address_records(&self, address: &str, ttl: u32, answer: &mut Answer) {
        let owner = self.q.name.clone();
        match address.parse::<IpAddr>() {
            Ok(ip) if self.type_wants(ip) => answer.answers.push(ip_record(owner, ttl, ip)),
            Ok(_) => {}
            Err(_) => {
                if let Some(target) = hostname(address) {
                    if !answer.answers.iter().any(|r| matches!(&r.data, RData::CNAME(c) if c.0 == target)) {
                        answer.answers.push(Record::from_rdata(owner, ttl, RData::CNAME(CNAME(target))));
                    }
                }
            }
        }
    }

    fn type_wants(&self, ip: IpAddr) -> bool {
        matches!(
            (self.q.qtype, ip),
            (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)) | (RecordType::ANY, _)
        )
    }

    fn srv(&self, instances: &[&InstanceRecord], ttl: u32, answer: &mut Answer) {
        let mut seen: Vec<(&str, &str, u16)> = Vec::new();
        for instance in instances {
            let key = (instance.node.name.as_str(), instance.effective_address(), instance.port);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let weight = match instance.status {
                CheckStatus::Warning => instance.weights.warning,
                _ => instance.weights.passing,
            }
            .clamp(0, u16::MAX as i32) as u16;
            let node_ttl = self.settings.node_ttl;
            let target = if instance.address.is_empty() || instance.address == instance.node.address {
                let Some(target) = self.node_name(&instance.node) else { continue };
                if let Ok(ip) = instance.node.address.parse::<IpAddr>() {
                    answer.additionals.push(ip_record(target.clone(), node_ttl, ip));
                }
                answer.additionals.extend(self.meta_txt(&instance.node, target.clone()));
                target
            } else if let Ok(ip) = instance.address.parse::<IpAddr>() {
                let Some(target) = self.name_in_domain(&[&encode_hex_ip(ip), "addr", self.datacenter]) else {
                    continue;
                };
                answer.additionals.push(ip_record(target.clone(), node_ttl, ip));
                target
            } else {
                match hostname(&instance.address) {
                    Some(target) => target,
                    None => continue,
                }
            };
            let srv = SRV::new(1, weight, instance.port, target);
            answer.answers.push(Record::from_rdata(self.q.name.clone(), ttl, RData::SRV(srv)));
        }
    }

    /// Node meta as TXT: `key=value`, or the bare value for keys starting `rfc1035-`.
    fn meta_txt(&self, node: &NodeRecord, owner: Name) -> Vec<Record> {
        node.meta
            .iter()
            .map(|(k, v)| {
                let text = if k.starts_with("rfc1035-") { v.clone() } else { format!("{k}={v}") };
                Record::from_rdata(owner.clone(), self.settings.node_ttl, RData::TXT(TXT::new(txt_strings(&text))))
            })
            .collect()
    }

    fn node(&self, name: &str, soa: Record) -> Answer {
        let Some(node) = self.dir.node(name) else {
            return Answer::nxdomain(soa);
        };
        let ttl = self.settings.node_ttl;
        let mut answer = Answer::default();
        match self.q.qtype {
            RecordType::TXT => answer.answers = self.meta_txt(node, self.q.name.clone()),
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                self.address_records(&node.address, ttl, &mut answer);
                answer.additionals = self.meta_txt(node, self.q.name.clone());
            }
            _ => {}
        }
        if answer.answers.is_empty() {
            return nodata(soa);
        }
        answer
    }

    fn addr(&self, ip: IpAddr, soa: Record) -> Answer {
        if !self.type_wants(ip) {
            return nodata(soa);
        }
        Answer { answers: vec![ip_record(self.q.name.clone(), self.settings.node_ttl, ip)], ..Default::default() }
    }
}

/// Splits `text` into TXT character-strings of at most 255 bytes (at char boundaries).
fn txt_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > 255 {
        let mut cut = 255;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
    out
}

fn nodata(soa: Record) -> Answer {
    Answer { authorities: vec![soa], ..Default::default() }
}

fn ip_record(owner: Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(owner, ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(owner, ttl, RData::AAAA(AAAA(v6))),
    }
}

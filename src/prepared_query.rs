//! Running a prepared query (`/v1/query/{id}/execute`, `name.query.consul`): the service's
//! instances in this datacenter that pass the query's filters, or — when there are none —
//! those of the first other datacenter in its failover order that has some.
//!
//! Failover order: the `NearestN` other datacenters by measured round trip, then
//! `Datacenters` in the order given (each datacenter at most once, unknown ones skipped). An
//! other datacenter is asked for the service's instances over the server RPC (its
//! `/v1/health/service/{name}`, answered by its own servers) and the same filters apply
//! here, so no query definition needs to exist there.

use std::time::Duration;

use serde::Deserialize;

use crate::cluster::{Cluster, HttpCall, WriteError};
use crate::model::{CheckStatus, HealthCheck, Node, PreparedQuery, Service, Weights};
use crate::store::{ServiceHealth, Store, StoreError};

/// The outcome of one execution.
#[derive(Debug, Clone)]
pub struct Execution {
    pub service: String,
    /// The instances that passed, shuffled, at most the limit asked for.
    pub nodes: Vec<ServiceHealth>,
    /// Where they are.
    pub datacenter: String,
    /// How many other datacenters were asked before an answer (0: answered here).
    pub failovers: u32,
    /// The query's DNS TTL, if it sets one.
    pub dns_ttl: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Runs `query` from this datacenter (`local`), failing over as it says.
pub async fn execute(
    store: &Store,
    cluster: &Cluster,
    local: &str,
    query: &PreparedQuery,
    limit: Option<usize>,
) -> Result<Execution, ExecuteError> {
    let service = query.service.service.clone();
    let dns_ttl = crate::model::parse_duration(&query.dns.ttl).ok().filter(|_| !query.dns.ttl.is_empty());
    let local_nodes = store.read()?.service_health(&service)?;
    let mut execution = Execution {
        service,
        nodes: passing(query, local_nodes, limit),
        datacenter: local.to_string(),
        failovers: 0,
        dns_ttl,
    };
    if !execution.nodes.is_empty() {
        return Ok(execution);
    }
    for datacenter in failover_order(query, &cluster.datacenters(), local) {
        if !cluster.knows_datacenter(&datacenter) {
            continue;
        }
        execution.failovers += 1;
        match remote_instances(cluster, &datacenter, &execution.service).await {
            Ok(nodes) => {
                let nodes = passing(query, nodes, limit);
                if !nodes.is_empty() {
                    return Ok(Execution { nodes, datacenter, ..execution });
                }
            }
            Err(e) => tracing::debug!(datacenter, error = %e, "prepared query failover: datacenter did not answer"),
        }
    }
    Ok(execution)
}

/// The other datacenters to try, in order: the `NearestN` nearest of `known` (nearest first,
/// `local` among them), then `Datacenters`; each once, `local` never.
pub fn failover_order(query: &PreparedQuery, known: &[String], local: &str) -> Vec<String> {
    let failover = &query.service.failover;
    let nearest = known.iter().filter(|dc| *dc != local).take(failover.nearest_n as usize);
    let mut order: Vec<String> = Vec::new();
    for dc in nearest.chain(failover.datacenters.iter()) {
        if dc != local && !order.contains(dc) {
            order.push(dc.clone());
        }
    }
    order
}

/// `instances` that pass `query`'s filters, shuffled, at most `limit`.
fn passing(query: &PreparedQuery, instances: Vec<ServiceHealth>, limit: Option<usize>) -> Vec<ServiceHealth> {
    use rand::seq::SliceRandom;
    let mut kept: Vec<ServiceHealth> = instances.into_iter().filter(|h| matches(query, h)).collect();
    kept.shuffle(&mut rand::rng());
    kept.truncate(limit.unwrap_or(usize::MAX));
    kept
}

/// Whether one instance passes: healthy enough (the ignored checks aside), every wanted tag
/// present and every `!tag` absent, and the node and service meta as asked.
pub fn matches(query: &PreparedQuery, instance: &ServiceHealth) -> bool {
    let q = &query.service;
    let status = health(instance, &q.ignore_check_ids);
    let healthy = match status {
        CheckStatus::Passing => true,
        CheckStatus::Warning => !q.only_passing,
        CheckStatus::Critical => false,
    };
    let has = |tag: &str| instance.service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag));
    let tags_ok = q.tags.iter().all(|tag| match tag.strip_prefix('!') {
        Some(excluded) => !has(excluded),
        None => has(tag),
    });
    let meta_ok = |wanted: &std::collections::BTreeMap<String, String>,
                   have: &std::collections::BTreeMap<String, String>| {
        wanted.iter().all(|(k, v)| have.get(k) == Some(v))
    };
    healthy && tags_ok && meta_ok(&q.node_meta, &instance.node.meta) && meta_ok(&q.service_meta, &instance.service.meta)
}

/// The worst status among an instance's checks, `ignored` ones left out.
pub fn health(instance: &ServiceHealth, ignored: &[String]) -> CheckStatus {
    instance
        .checks
        .iter()
        .filter(|c| !ignored.contains(&c.check_id))
        .map(|c| c.status)
        .max()
        .unwrap_or(CheckStatus::Passing)
}

/// One entry of another datacenter's `/v1/health/service/{name}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteEntry {
    node: Node,
    service: RemoteService,
    #[serde(default)]
    checks: Vec<HealthCheck>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RemoteService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    meta: std::collections::BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

/// `service`'s instances with their health in `datacenter`, as its servers see them.
async fn remote_instances(cluster: &Cluster, datacenter: &str, service: &str) -> Result<Vec<ServiceHealth>, String> {
    let uri = format!("/v1/health/service/{}?dc={}", encode_segment(service), encode_segment(datacenter));
    let call = HttpCall { method: "GET".into(), uri, headers: Vec::new() };
    let (answer, body) = cluster.forward_http_to(datacenter, call, Vec::new()).await.map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("status {}: {}", answer.status, String::from_utf8_lossy(&body)));
    }
    let entries: Vec<RemoteEntry> = serde_json::from_slice(&body).map_err(|e| format!("undecodable answer: {e}"))?;
    Ok(entries
        .into_iter()
        .map(|e| ServiceHealth {
            service: Service {
                node: e.node.node.clone(),
                id: e.service.id,
                service: e.service.service,
                tags: e.service.tags,
                address: e.service.address,
                meta: e.service.meta,
                port: e.service.port,
                weights: e.service.weights,
                enable_tag_override: e.service.enable_tag_override,
                tagged_addresses: Default::default(),
                create_index: e.service.create_index,
                modify_index: e.service.modify_index,
            },
            node: e.node,
            checks: e.checks,
        })
        .collect())
}

/// A URL path segment or query value: unreserved bytes as they are, the rest %-escaped.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{QueryFailover, QueryService};

    fn instance(tags: &[&str], statuses: &[(&str, CheckStatus)]) -> ServiceHealth {
        let node = Node {
            id: String::new(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            tagged_addresses: Default::default(),
            meta: [("rack".to_string(), "a".to_string())].into(),
            create_index: 1,
            modify_index: 1,
        };
        let service = Service {
            node: "n1".into(),
            id: "web".into(),
            service: "web".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: String::new(),
            meta: Default::default(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            tagged_addresses: Default::default(),
            create_index: 1,
            modify_index: 1,
        };
        let checks = statuses
            .iter()
            .map(|(id, status)| HealthCheck {
                node: "n1".into(),
                check_id: id.to_string(),
                name: id.to_string(),
                status: *status,
                notes: String::new(),
                output: String::new(),
                service_id: String::new(),
                service_name: String::new(),
                service_tags: Vec::new(),
                r#type: String::new(),
                create_index: 1,
                modify_index: 1,
            })
            .collect();
        ServiceHealth { node, service, checks }
    }

    fn query(service: QueryService) -> PreparedQuery {
        PreparedQuery { service: QueryService { service: "web".into(), ..service }, ..Default::default() }
    }

    #[test]
    fn filters_health_tags_and_meta() {
        let plain = query(QueryService::default());
        let warning = instance(&["v1"], &[("a", CheckStatus::Warning)]);
        assert!(matches(&plain, &warning));
        let only_passing = query(QueryService { only_passing: true, ..Default::default() });
        assert!(!matches(&only_passing, &warning));
        let critical = instance(&[], &[("a", CheckStatus::Passing), ("flaky", CheckStatus::Critical)]);
        assert!(!matches(&plain, &critical));
        let ignoring = query(QueryService { ignore_check_ids: vec!["flaky".into()], ..Default::default() });
        assert!(matches(&ignoring, &critical), "an ignored check does not count");
        let tagged = query(QueryService { tags: vec!["V1".into(), "!canary".into()], ..Default::default() });
        assert!(matches(&tagged, &warning), "tags compare case-insensitively");
        assert!(!matches(&tagged, &instance(&["v1", "canary"], &[])), "an excluded tag");
        assert!(!matches(&tagged, &instance(&[], &[])), "a missing tag");
        let rack =
            |r: &str| query(QueryService { node_meta: [("rack".into(), r.into())].into(), ..Default::default() });
        assert!(matches(&rack("a"), &warning) && !matches(&rack("b"), &warning));
    }

    #[test]
    fn failover_tries_the_nearest_then_the_listed_each_once() {
        let known: Vec<String> = ["dc1", "dc3", "dc2", "dc4"].iter().map(|s| s.to_string()).collect();
        let q = query(QueryService {
            failover: QueryFailover { nearest_n: 2, datacenters: vec!["dc2".into(), "dc9".into(), "dc1".into()] },
            ..Default::default()
        });
        assert_eq!(failover_order(&q, &known, "dc1"), ["dc3", "dc2", "dc9"]);
        assert!(failover_order(&query(QueryService::default()), &known, "dc1").is_empty());
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}

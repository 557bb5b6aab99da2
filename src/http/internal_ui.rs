//! `/v1/internal/ui/*`: the whole-catalog summaries the web UI shows, in the shapes of
//! Consul's endpoints of the same names (so its own UI tooling reads them too). Each is one
//! blocking query over one read, so a page stays live with a single request in flight.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::Path;
use axum::response::Response;
use serde::Serialize;

use super::acl_gate::RequestAcl;
use super::catalog::ServiceView;
use super::error::ApiError;
use super::health::check_visible;
use super::health::CheckView;
use super::query::{Answer, Query};
use super::Ctx;
use crate::acl::{Access, Resource};
use crate::model::{CheckStatus, HealthCheck, Node, Service};
use crate::store::{ReadView, StoreError, Topic};

/// One service name as the services page lists it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceSummary {
    kind: &'static str,
    name: String,
    datacenter: String,
    tags: BTreeSet<String>,
    /// The nodes holding an instance.
    nodes: BTreeSet<String>,
    instance_count: usize,
    /// Checks bearing on the instances (each instance's own and its node's), by status.
    checks_passing: usize,
    checks_warning: usize,
    checks_critical: usize,
    /// cairn: instances by their health (the worst of those checks), as DNS sees them.
    instances_passing: usize,
    instances_warning: usize,
    instances_critical: usize,
}

/// A node with its services and checks (Consul's `NodeDump` element).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeDump {
    #[serde(flatten)]
    node: Node,
    services: Vec<ServiceView>,
    checks: Vec<CheckView>,
}

/// Checks grouped by node: the node's own (no service) and each service instance's.
#[derive(Default)]
struct NodeChecks {
    node: Vec<CheckStatus>,
    by_service: BTreeMap<String, Vec<CheckStatus>>,
}

fn checks_by_node(checks: &[HealthCheck]) -> BTreeMap<&str, NodeChecks> {
    let mut out: BTreeMap<&str, NodeChecks> = BTreeMap::new();
    for check in checks {
        let entry = out.entry(check.node.as_str()).or_default();
        if check.service_id.is_empty() {
            entry.node.push(check.status);
        } else {
            entry.by_service.entry(check.service_id.clone()).or_default().push(check.status);
        }
    }
    out
}

/// Instances the token may see: read on the service and on its node.
fn visible_services(acl: &RequestAcl, view: &ReadView<'_>) -> Result<Vec<Service>, StoreError> {
    let mut services = view.all_services()?;
    acl.retain(&mut services, |a, s| {
        a.allows(Resource::Service, &s.service, Access::Read) && a.allows(Resource::Node, &s.node, Access::Read)
    });
    Ok(services)
}

fn service_summaries(
    acl: &RequestAcl,
    view: &ReadView<'_>,
    datacenter: &str,
) -> Result<Vec<ServiceSummary>, StoreError> {
    let checks = view.all_checks()?;
    let checks = checks_by_node(&checks);
    let mut out: BTreeMap<String, ServiceSummary> = BTreeMap::new();
    for service in visible_services(acl, view)? {
        let summary = out.entry(service.service.clone()).or_insert_with(|| ServiceSummary {
            kind: "",
            name: service.service.clone(),
            datacenter: datacenter.to_string(),
            tags: BTreeSet::new(),
            nodes: BTreeSet::new(),
            instance_count: 0,
            checks_passing: 0,
            checks_warning: 0,
            checks_critical: 0,
            instances_passing: 0,
            instances_warning: 0,
            instances_critical: 0,
        });
        let node_checks = checks.get(service.node.as_str());
        let statuses = node_checks
            .into_iter()
            .flat_map(|c| c.node.iter().chain(c.by_service.get(&service.id).into_iter().flatten()).copied());
        let mut worst = CheckStatus::Passing;
        for status in statuses {
            worst = worst.max(status);
            *match status {
                CheckStatus::Passing => &mut summary.checks_passing,
                CheckStatus::Warning => &mut summary.checks_warning,
                CheckStatus::Critical => &mut summary.checks_critical,
            } += 1;
        }
        *match worst {
            CheckStatus::Passing => &mut summary.instances_passing,
            CheckStatus::Warning => &mut summary.instances_warning,
            CheckStatus::Critical => &mut summary.instances_critical,
        } += 1;
        summary.instance_count += 1;
        summary.tags.extend(service.tags);
        summary.nodes.insert(service.node);
    }
    Ok(out.into_values().collect())
}

fn node_dump(node: Node, services: Vec<Service>, checks: Vec<HealthCheck>) -> NodeDump {
    NodeDump {
        node,
        services: services.into_iter().map(ServiceView::from).collect(),
        checks: checks.into_iter().map(CheckView::from).collect(),
    }
}

/// `GET /v1/internal/ui/services`: every service name with its instance and check counts.
pub async fn services(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    let datacenter = ctx.identity.datacenter.clone();
    ctx.blocking_list(&q, Topic::Catalog, |view| {
        Ok((view.catalog_index()?, service_summaries(&q.acl, view, &datacenter)?))
    })
    .await
}

/// `GET /v1/internal/ui/nodes`: every node with its services and checks.
pub async fn nodes(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Catalog, |view| {
        let mut services: BTreeMap<String, Vec<Service>> = BTreeMap::new();
        for service in visible_services(&q.acl, view)? {
            services.entry(service.node.clone()).or_default().push(service);
        }
        let mut checks: BTreeMap<String, Vec<HealthCheck>> = BTreeMap::new();
        let mut all_checks = view.all_checks()?;
        q.acl.retain(&mut all_checks, check_visible);
        for check in all_checks {
            checks.entry(check.node.clone()).or_default().push(check);
        }
        let mut nodes = view.nodes()?;
        q.acl.retain(&mut nodes, |a, n| a.allows(Resource::Node, &n.node, Access::Read));
        let dumps = nodes
            .into_iter()
            .map(|node| {
                let services = services.remove(&node.node).unwrap_or_default();
                let checks = checks.remove(&node.node).unwrap_or_default();
                node_dump(node, services, checks)
            })
            .collect::<Vec<_>>();
        Ok((view.catalog_index()?, dumps))
    })
    .await
}

/// `GET /v1/internal/ui/node/{node}`: one node with its services and checks; 404 when no
/// such node is registered (still blocking, so a page waits for it to appear).
pub async fn node(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_answer(&q, Topic::Node(name.clone()), |view| {
        let index = view.node_index(&name)?;
        match view.node(&name)? {
            Some(node) if q.acl.can(Resource::Node, &name, Access::Read) => {
                let mut services = view.node_services(&name)?;
                q.acl.retain(&mut services, |a, s| a.allows(Resource::Service, &s.service, Access::Read));
                let mut checks = view.node_checks(&name)?;
                q.acl.retain(&mut checks, check_visible);
                Answer::json(index, &node_dump(node, services, checks))
            }
            Some(_) => {
                q.acl.count_filtered(1);
                Ok(Answer::not_found(index))
            }
            None => Ok(Answer::not_found(index)),
        }
    })
    .await
}

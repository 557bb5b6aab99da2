//! `/v1/health/*`: instances with their health, and check lists.

use axum::extract::Path;
use axum::response::Response;
use serde::Serialize;

use super::acl_gate::RequestAcl;
use super::catalog::{has_tags, ServiceView};
use super::error::ApiError;
use super::query::Query;
use super::Ctx;
use crate::acl::{Access, Authorizer, Resource};
use crate::model::{CheckStatus, HealthCheck, Node};
use crate::store::{Table, Topic};

/// A check in Consul's shape (the fields cairn does not run locally are present and empty).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckView {
    #[serde(flatten)]
    check: HealthCheck,
    interval: &'static str,
    timeout: &'static str,
    exposed_port: u16,
    definition: serde_json::Value,
}

impl From<HealthCheck> for CheckView {
    fn from(check: HealthCheck) -> Self {
        CheckView { check, interval: "", timeout: "", exposed_port: 0, definition: serde_json::json!({}) }
    }
}

fn views(checks: Vec<HealthCheck>) -> Vec<CheckView> {
    checks.into_iter().map(CheckView::from).collect()
}

/// One instance as `/v1/health/service` (and a prepared query's execution) lists it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceEntry {
    node: Node,
    service: ServiceView,
    checks: Vec<CheckView>,
}

impl From<crate::store::ServiceHealth> for ServiceEntry {
    fn from(h: crate::store::ServiceHealth) -> Self {
        ServiceEntry { node: h.node, service: h.service.into(), checks: views(h.checks) }
    }
}

/// Whether a token may see a check: its node, and its service when it has one.
pub(super) fn check_visible(a: &Authorizer, c: &HealthCheck) -> bool {
    a.allows(Resource::Node, &c.node, Access::Read)
        && (c.service_name.is_empty() || a.allows(Resource::Service, &c.service_name, Access::Read))
}

/// A service's instances with their checks, as far as the token may see: nothing without
/// read on the service, and only instances on nodes it may read.
pub(super) fn visible_health(
    acl: &RequestAcl,
    name: &str,
    view: &crate::store::ReadView<'_>,
) -> Result<Vec<crate::store::ServiceHealth>, crate::store::StoreError> {
    let mut entries = view.service_health(name)?;
    if !acl.can(Resource::Service, name, Access::Read) {
        acl.count_filtered(entries.len().max(1) as u64);
        return Ok(Vec::new());
    }
    acl.retain(&mut entries, |a, h| a.allows(Resource::Node, &h.node.node, Access::Read));
    Ok(entries)
}

pub async fn service(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    let passing_only = q.get("passing").is_some_and(|v| v != "false" && v != "0");
    let tags: Vec<String> = q.all("tag").into_iter().map(str::to_string).collect();
    ctx.blocking_list(&q, Topic::Service(name.clone()), |view| {
        let wanted: Vec<&str> = tags.iter().map(String::as_str).collect();
        let entries = visible_health(&q.acl, &name, view)?
            .into_iter()
            .filter(|h| has_tags(&h.service, &wanted))
            .filter(|h| !passing_only || h.status() == CheckStatus::Passing)
            .map(ServiceEntry::from)
            .collect::<Vec<_>>();
        Ok((view.service_index(&name)?, entries))
    })
    .await
}

pub async fn node(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Node(name.clone()), |view| {
        let mut checks = view.node_checks(&name)?;
        q.acl.retain(&mut checks, check_visible);
        Ok((view.node_index(&name)?, views(checks)))
    })
    .await
}

pub async fn checks(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Service(name.clone()), |view| {
        let checks = visible_health(&q.acl, &name, view)?
            .into_iter()
            .flat_map(|h| h.checks.into_iter().filter(|c| !c.service_id.is_empty()))
            .collect();
        Ok((view.service_index(&name)?, views(checks)))
    })
    .await
}

pub async fn state(ctx: Ctx, Path(state): Path<String>, q: Query) -> Result<Response, ApiError> {
    let wanted = match state.as_str() {
        "any" => None,
        other => Some(CheckStatus::parse(other).ok_or_else(|| {
            ApiError::BadRequest(format!("Invalid check state {other:?}: expected any, passing, warning or critical"))
        })?),
    };
    ctx.blocking_list(&q, Topic::Table(Table::Checks), |view| {
        let mut checks: Vec<HealthCheck> =
            view.all_checks()?.into_iter().filter(|c| wanted.is_none_or(|w| c.status == w)).collect();
        q.acl.retain(&mut checks, check_visible);
        Ok((view.table_index(Table::Checks)?, views(checks)))
    })
    .await
}

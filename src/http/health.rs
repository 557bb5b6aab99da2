//! `/v1/health/*`: instances with their health, and check lists.

use axum::extract::Path;
use axum::response::Response;
use serde::Serialize;

use super::catalog::{has_tags, ServiceView};
use super::error::ApiError;
use super::query::Query;
use super::Ctx;
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

pub async fn service(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    let passing_only = q.get("passing").is_some_and(|v| v != "false" && v != "0");
    let tags: Vec<String> = q.all("tag").into_iter().map(str::to_string).collect();
    ctx.blocking_list(&q, Topic::Service(name.clone()), |view| {
        let wanted: Vec<&str> = tags.iter().map(String::as_str).collect();
        let entries = view
            .service_health(&name)?
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
        Ok((view.node_index(&name)?, views(view.node_checks(&name)?)))
    })
    .await
}

pub async fn checks(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Service(name.clone()), |view| {
        let checks = view
            .service_health(&name)?
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
        let checks = view.all_checks()?.into_iter().filter(|c| wanted.is_none_or(|w| c.status == w)).collect();
        Ok((view.table_index(Table::Checks)?, views(checks)))
    })
    .await
}

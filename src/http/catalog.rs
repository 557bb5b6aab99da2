//! `/v1/catalog/*`: registration, deregistration and catalog reads.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::acl_gate::RequestAcl;
use super::body::{decode_json, read_limited};
use super::error::ApiError;
use super::query::{Answer, Query};
use super::Ctx;
use crate::acl::{Access, Resource};
use crate::model::{
    CheckDefinition, CheckStatus, Command, CommandResult, DeregisterRequest, Node, RegisterRequest, Service,
    ServiceAddress, ServiceDefinition, Weights,
};
use crate::store::{Table, Topic};

/// Body of `PUT /v1/catalog/register`. Unknown fields (Kind, Proxy, Namespace, ...) are
/// ignored; `null` is accepted wherever Go clients send it for an empty value.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RegisterBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    node: Option<String>,
    address: Option<String>,
    datacenter: Option<String>,
    tagged_addresses: Option<BTreeMap<String, String>>,
    node_meta: Option<BTreeMap<String, String>>,
    service: Option<ServiceBody>,
    check: Option<CheckBody>,
    checks: Option<Vec<CheckBody>>,
    skip_node_update: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceBody {
    #[serde(rename = "ID")]
    id: Option<String>,
    service: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    meta: Option<BTreeMap<String, String>>,
    port: Option<u16>,
    weights: Option<WeightsBody>,
    enable_tag_override: Option<bool>,
    tagged_addresses: Option<BTreeMap<String, ServiceAddressBody>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceAddressBody {
    address: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WeightsBody {
    passing: Option<i32>,
    warning: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
    name: Option<String>,
    status: Option<String>,
    notes: Option<String>,
    output: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    r#type: Option<String>,
}

/// Rejects names that would break composite keys or DNS labels.
fn check_name(what: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::BadRequest(format!("{what} must not contain NUL characters")));
    }
    if value.len() > 512 {
        return Err(ApiError::BadRequest(format!("{what} is longer than 512 bytes")));
    }
    Ok(())
}

fn check_datacenter(ctx: &super::HttpContext, dc: Option<&str>) -> Result<(), ApiError> {
    match dc {
        Some(dc) if !dc.is_empty() && dc != ctx.identity.datacenter => {
            Err(ApiError::Internal("No path to datacenter".into()))
        }
        _ => Ok(()),
    }
}

impl ServiceBody {
    fn into_definition(self) -> Result<ServiceDefinition, ApiError> {
        let service = self.service.unwrap_or_default();
        if service.is_empty() {
            return Err(ApiError::BadRequest("Must provide service name (Service.Service)".into()));
        }
        let id = self.id.filter(|id| !id.is_empty()).unwrap_or_else(|| service.clone());
        check_name("Service.ID", &id)?;
        check_name("Service.Service", &service)?;
        let default = Weights::default();
        let weights = self.weights.map_or(default, |w| Weights {
            passing: w.passing.unwrap_or(default.passing),
            warning: w.warning.unwrap_or(default.warning),
        });
        if weights.passing < 1 || weights.warning < 0 {
            return Err(ApiError::BadRequest(
                "Weights.Passing must be at least 1 and Weights.Warning at least 0".into(),
            ));
        }
        Ok(ServiceDefinition {
            id,
            service,
            tags: dedup(self.tags.unwrap_or_default()),
            address: self.address.unwrap_or_default(),
            meta: self.meta.unwrap_or_default(),
            port: self.port.unwrap_or(0),
            weights,
            enable_tag_override: self.enable_tag_override.unwrap_or(false),
            tagged_addresses: self
                .tagged_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|(name, a)| {
                    (name, ServiceAddress { address: a.address.unwrap_or_default(), port: a.port.unwrap_or(0) })
                })
                .collect(),
        })
    }
}

fn dedup(tags: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    tags.into_iter().filter(|t| seen.insert(t.clone())).collect()
}

impl CheckBody {
    /// `service_id` is the registration's own service, which a check without `ServiceID`
    /// does not inherit (Consul attaches it to the node then).
    fn into_definition(self) -> Result<CheckDefinition, ApiError> {
        let name = self.name.unwrap_or_default();
        let check_id = self.check_id.filter(|id| !id.is_empty()).unwrap_or_else(|| name.clone());
        if check_id.is_empty() {
            return Err(ApiError::BadRequest("Must provide check name (Check.Name) or ID (Check.CheckID)".into()));
        }
        check_name("CheckID", &check_id)?;
        if let Some(service_id) = &self.service_id {
            check_name("Check.ServiceID", service_id)?;
        }
        let status = match self.status.as_deref() {
            None | Some("") => CheckStatus::Critical,
            Some(s) => CheckStatus::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!("Invalid check status {s:?}: expected passing, warning or critical"))
            })?,
        };
        Ok(CheckDefinition {
            name: if name.is_empty() { check_id.clone() } else { name },
            check_id,
            status,
            notes: self.notes.unwrap_or_default(),
            output: self.output.unwrap_or_default(),
            service_id: self.service_id.unwrap_or_default(),
            check_type: self.r#type.unwrap_or_default(),
        })
    }
}

/// Maps a command's outcome to the API's `true`, or to an error.
fn expect_done(result: CommandResult) -> Result<Json<bool>, ApiError> {
    match result {
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        CommandResult::Bool(b) => Ok(Json(b)),
        _ => Ok(Json(true)),
    }
}

pub async fn register(
    ctx: Ctx,
    acl: RequestAcl,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<bool>, ApiError> {
    Query::parse(raw.as_deref(), &ctx.identity.datacenter)?;
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let req: RegisterBody = decode_json(&bytes)?;
    check_datacenter(&ctx, req.datacenter.as_deref())?;
    let node = req.node.unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    check_name("Node", &node)?;
    let address = req.address.unwrap_or_default();
    let skip_node_update = req.skip_node_update.unwrap_or(false);
    if address.is_empty() && !skip_node_update {
        return Err(ApiError::BadRequest("Must provide address if SkipNodeUpdate is not set".into()));
    }
    let service = req.service.map(ServiceBody::into_definition).transpose()?;
    let mut checks = Vec::new();
    for body in req.check.into_iter().chain(req.checks.unwrap_or_default()) {
        checks.push(body.into_definition()?);
    }
    let request = RegisterRequest {
        id: req.id.unwrap_or_default(),
        node,
        address,
        datacenter: ctx.identity.datacenter.clone(),
        tagged_addresses: req.tagged_addresses.unwrap_or_default(),
        node_meta: req.node_meta.unwrap_or_default(),
        service,
        checks,
        skip_node_update,
    };
    if acl.authorizer().enabled() {
        crate::acl::catalog::authorize_register(&acl.authorizer(), &ctx.store.read()?, &request).map_err(refusal)?;
    }
    let command = Command::Register(Box::new(request));
    expect_done(ctx.cluster.write(command).await?)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeregisterBody {
    node: Option<String>,
    datacenter: Option<String>,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
}

/// A catalog write the token may not make: 403 "Permission denied", as every endpoint says.
fn refusal(e: crate::acl::catalog::CatalogRefusal) -> ApiError {
    match e {
        crate::acl::catalog::CatalogRefusal::Store(e) => ApiError::Store(e),
        _ => ApiError::Forbidden("Permission denied".into()),
    }
}

pub async fn deregister(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Json<bool>, ApiError> {
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let req: DeregisterBody = decode_json(&bytes)?;
    check_datacenter(&ctx, req.datacenter.as_deref())?;
    let node = req.node.unwrap_or_default();
    if node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    let request = DeregisterRequest {
        node,
        service_id: req.service_id.filter(|s| !s.is_empty()),
        check_id: req.check_id.filter(|s| !s.is_empty()),
    };
    if acl.authorizer().enabled() {
        crate::acl::catalog::authorize_deregister(&acl.authorizer(), &ctx.store.read()?, &request).map_err(refusal)?;
    }
    let command = Command::Deregister(request);
    expect_done(ctx.cluster.write(command).await?)
}

/// `GET|PUT /v1/catalog/deregister/{service_id}`: the short form published how-tos use.
/// `GET|PUT /v1/catalog/deregister/{id}` (cairn extension for the published how-to). A GET
/// from a web page would run cross-site without a CORS preflight, so a GET that carries
/// `Origin` or `Sec-Fetch-Site: cross-site` (what browsers add; curl sends neither) is refused.
pub async fn deregister_by_id(
    ctx: Ctx,
    acl: RequestAcl,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    Path(service_id): Path<String>,
) -> Result<Json<bool>, ApiError> {
    let cross_site = headers.contains_key(axum::http::header::ORIGIN)
        || headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if method == axum::http::Method::GET && cross_site {
        return Err(ApiError::Forbidden(
            "Cross-site GET refused: a GET from a web page must not deregister; use PUT".into(),
        ));
    }
    let nodes = ctx.store.read()?.nodes_with_service_id(&service_id)?;
    let node = match nodes.as_slice() {
        [] => return Err(ApiError::NotFound(format!("Unknown service ID {service_id:?}: no node holds it"))),
        [node] => node.clone(),
        several => {
            return Err(ApiError::Conflict(format!(
                "Service ID {service_id:?} is registered on several nodes ({}); use PUT /v1/catalog/deregister with Node and ServiceID",
                several.join(", ")
            )))
        }
    };
    let request = DeregisterRequest { node, service_id: Some(service_id), check_id: None };
    if acl.authorizer().enabled() {
        crate::acl::catalog::authorize_deregister(&acl.authorizer(), &ctx.store.read()?, &request).map_err(refusal)?;
    }
    let command = Command::Deregister(request);
    expect_done(ctx.cluster.write(command).await?)
}

/// `GET /v1/catalog/datacenters`: this datacenter and every other one with an alive server
/// in the WAN pool, nearest first (by measured round trip).
pub async fn datacenters(ctx: Ctx) -> Json<Vec<String>> {
    Json(ctx.cluster.datacenters())
}

pub async fn nodes(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Table(Table::Nodes), |view| {
        let mut nodes = view.nodes()?;
        q.acl.retain(&mut nodes, |a, n| a.allows(Resource::Node, &n.node, Access::Read));
        Ok((view.table_index(Table::Nodes)?, nodes))
    })
    .await
}

/// Service names with their tags. `?filter=` selects instances (Consul's catalog service
/// rows: `ServiceName`, `ServiceTags`, `NodeMeta`, ...), and a name is listed with the tags of
/// its instances that match.
pub async fn services(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    if q.filter.is_none() {
        return ctx
            .blocking_json(&q, Topic::Table(Table::Services), |view| {
                let mut names = view.service_names()?;
                q.acl.retain_map(&mut names, |a, name, _| a.allows(Resource::Service, name, Access::Read));
                Ok((view.table_index(Table::Services)?, names))
            })
            .await;
    }
    ctx.blocking_answer(&q, Topic::Table(Table::Services), |view| {
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut all = view.service_names()?;
        q.acl.retain_map(&mut all, |a, name, _| a.allows(Resource::Service, name, Access::Read));
        for name in all.into_keys() {
            for s in view.service_instances(&name)? {
                let Some(node) = view.node(&s.node)? else { continue };
                let row = catalog_row(&node, s);
                if q.keeps(&row)? {
                    names.entry(row.service_name).or_default().extend(row.service_tags);
                }
            }
        }
        Answer::json(view.table_index(Table::Services)?, &names)
    })
    .await
}

/// One row of `GET /v1/catalog/service/{name}`, in Consul's shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CatalogServiceRow {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    node_meta: BTreeMap<String, String>,
    service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    service_address: String,
    service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    service_weights: Weights,
    service_meta: BTreeMap<String, String>,
    service_port: u16,
    service_enable_tag_override: bool,
    service_proxy: serde_json::Value,
    service_connect: serde_json::Value,
    create_index: u64,
    modify_index: u64,
}

fn catalog_row(node: &Node, s: Service) -> CatalogServiceRow {
    CatalogServiceRow {
        id: node.id.clone(),
        node: node.node.clone(),
        address: node.address.clone(),
        datacenter: node.datacenter.clone(),
        tagged_addresses: node.tagged_addresses.clone(),
        node_meta: node.meta.clone(),
        service_kind: "",
        service_id: s.id,
        service_name: s.service,
        service_tags: s.tags,
        service_address: s.address,
        service_tagged_addresses: s.tagged_addresses,
        service_weights: s.weights,
        service_meta: s.meta,
        service_port: s.port,
        service_enable_tag_override: s.enable_tag_override,
        service_proxy: serde_json::json!({}),
        service_connect: serde_json::json!({}),
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

/// True when the instance carries every tag asked for (`?tag=` is repeatable).
pub(super) fn has_tags(service: &Service, wanted: &[&str]) -> bool {
    wanted.iter().all(|w| service.tags.iter().any(|t| t.eq_ignore_ascii_case(w)))
}

pub async fn service(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    let tags = q.all("tag").into_iter().map(str::to_string).collect::<Vec<_>>();
    ctx.blocking_list(&q, Topic::CatalogService(name.clone()), |view| {
        let wanted: Vec<&str> = tags.iter().map(String::as_str).collect();
        let mut instances = view.service_instances(&name)?;
        if !q.acl.can(Resource::Service, &name, Access::Read) {
            q.acl.count_filtered(instances.len().max(1) as u64);
            instances.clear();
        }
        q.acl.retain(&mut instances, |a, s| a.allows(Resource::Node, &s.node, Access::Read));
        let mut rows = Vec::new();
        for s in instances {
            if !has_tags(&s, &wanted) {
                continue;
            }
            if let Some(node) = view.node(&s.node)? {
                rows.push(catalog_row(&node, s));
            }
        }
        Ok((view.catalog_service_index(&name)?, rows))
    })
    .await
}

/// A service as `/v1/catalog/node/{node}` and `/v1/health/service` show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceView {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    meta: BTreeMap<String, String>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    kind: &'static str,
    /// Omitted when empty, as Consul's (`omitempty`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    tagged_addresses: BTreeMap<String, ServiceAddress>,
    create_index: u64,
    modify_index: u64,
}

impl From<Service> for ServiceView {
    fn from(s: Service) -> Self {
        ServiceView {
            id: s.id,
            service: s.service,
            tags: s.tags,
            address: s.address,
            meta: s.meta,
            port: s.port,
            weights: s.weights,
            enable_tag_override: s.enable_tag_override,
            kind: "",
            tagged_addresses: s.tagged_addresses,
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeServices {
    node: Node,
    services: BTreeMap<String, ServiceView>,
}

/// A node and its services; `?filter=` selects among the services, as Consul's.
pub async fn node(ctx: Ctx, Path(name): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_answer(&q, Topic::CatalogNode(name.clone()), |view| {
        let node = view.node(&name)?;
        let node = match node {
            Some(_) if !q.acl.can(Resource::Node, &name, Access::Read) => {
                q.acl.count_filtered(1);
                None
            }
            node => node,
        };
        let found = match node {
            Some(node) => {
                let mut services = BTreeMap::new();
                let mut listed = view.node_services(&name)?;
                q.acl.retain(&mut listed, |a, s| a.allows(Resource::Service, &s.service, Access::Read));
                for s in listed {
                    let service = ServiceView::from(s);
                    if q.keeps(&service)? {
                        services.insert(service.id.clone(), service);
                    }
                }
                Some(NodeServices { node, services })
            }
            None => None,
        };
        Answer::json(view.catalog_node_index(&name)?, &found)
    })
    .await
}

//! `/v1/agent/service*`, `/v1/agent/check*`, `/v1/agent/maintenance`, `/v1/agent/reload`:
//! the agent's own services and checks. Reads come from the local state (not the catalog)
//! and block on `?hash=` with `X-Consul-ContentHash`, as Consul's do.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use super::acl_gate::RequestAcl;
use super::body::{decode_json, decode_json_value, read_limited};
use super::error::ApiError;
use super::query::{json_bytes, Query};
use super::{Ctx, HttpContext};
use crate::acl::{Access, Resource};
use crate::checks::{LocalCheck, LocalError, LocalService, LocalState};
use crate::model::acl::Secret;
use crate::model::agent::{decode_check, decode_service, ScriptPolicy, Strictness};
use crate::model::ServiceAddress;
use crate::model::{format_duration, CheckStatus, Weights};

impl From<LocalError> for ApiError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::UnknownService(_) | LocalError::UnknownCheck(_) | LocalError::NoSuchService(_) => {
                ApiError::NotFound(e.to_string())
            }
            LocalError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            LocalError::NotSaved(_) => ApiError::Internal(e.to_string()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentService<'a> {
    /// Always "" (typical services; cairn has no Connect proxies or gateways). Clients such
    /// as Rust's `consul` crates require the field.
    kind: &'static str,
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    meta: &'a BTreeMap<String, String>,
    port: u16,
    address: &'a str,
    tagged_addresses: BTreeMap<String, ServiceAddress>,
    weights: Weights,
    enable_tag_override: bool,
    datacenter: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentCheck<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: CheckStatus,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    r#type: &'static str,
    interval: String,
    timeout: String,
    exposed_port: u16,
    definition: BTreeMap<String, Value>,
    create_index: u64,
    modify_index: u64,
}

fn agent_service<'a>(s: &'a LocalService, dc: &'a str) -> AgentService<'a> {
    let spec = &s.spec;
    AgentService {
        kind: "",
        id: &spec.id,
        service: &spec.name,
        tags: &spec.tags,
        meta: &spec.meta,
        port: spec.port,
        address: &spec.address,
        tagged_addresses: spec.tagged_addresses_with_defaults(),
        weights: spec.weights,
        enable_tag_override: spec.enable_tag_override,
        datacenter: dc,
    }
}

fn agent_check<'a>(c: &'a LocalCheck, state: &'a LocalState, node: &'a str) -> AgentCheck<'a> {
    let service = state.services.get(&c.spec.service_id);
    let shown = |d: Duration| if d.is_zero() { String::new() } else { format_duration(d) };
    AgentCheck {
        node,
        check_id: &c.spec.id,
        name: &c.spec.name,
        status: c.status,
        notes: &c.spec.notes,
        output: &c.output,
        service_id: &c.spec.service_id,
        service_name: service.map_or("", |s| s.spec.name.as_str()),
        service_tags: service.map_or(&[], |s| s.spec.tags.as_slice()),
        r#type: c.spec.kind.type_name(),
        interval: shown(c.spec.interval),
        timeout: shown(c.spec.timeout),
        exposed_port: 0,
        definition: BTreeMap::new(),
        create_index: 0,
        modify_index: 0,
    }
}

/// Answers `render`'s JSON with `X-Consul-ContentHash`; with `?hash=` equal to the current
/// hash, waits (up to `?wait`) until the local state changes the answer. `hash_in_body`:
/// the answer (a JSON object) also carries the hash as `ContentHash`, as Consul's
/// `/v1/agent/service/{id}` does.
async fn hashed_read(
    ctx: &HttpContext,
    q: &Query,
    hash_in_body: bool,
    render: impl Fn(&LocalState) -> Result<Vec<u8>, ApiError>,
) -> Result<Response, ApiError> {
    let wanted = q.get("hash").filter(|h| !h.is_empty()).map(str::to_string);
    let mut changes = ctx.local.subscribe();
    let respond = |mut body: Vec<u8>, hash: String| {
        if hash_in_body && body.last() == Some(&b'}') {
            body.pop();
            let separator = if body == b"{" { "" } else { "," };
            body.extend_from_slice(format!("{separator}\"ContentHash\":\"{hash}\"}}").as_bytes());
        }
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&hash) {
            headers.insert("X-Consul-ContentHash", value);
        }
        headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        (headers, body).into_response()
    };
    let render_hashed = || -> Result<(Vec<u8>, String), ApiError> {
        let body = ctx.local.read(&render)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut hasher);
        Ok((body, format!("{:016x}", hasher.finish())))
    };
    let (body, hash) = render_hashed()?;
    let Some(wanted) = wanted.filter(|w| *w == hash) else { return Ok(respond(body, hash)) };
    let _permit = ctx.blocking_permit()?;
    let deadline = tokio::time::Instant::now() + q.wait;
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = ctx.shutdown.cancelled() => break,
        }
        let (body, hash) = render_hashed()?;
        if hash != wanted {
            return Ok(respond(body, hash));
        }
    }
    let (body, hash) = render_hashed()?;
    Ok(respond(body, hash))
}

pub async fn services(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    let dc = ctx.identity.datacenter.as_str();
    hashed_read(&ctx, &q, false, |state| {
        let mut all: BTreeMap<&str, AgentService<'_>> =
            state.services.iter().map(|(id, s)| (id.as_str(), agent_service(s, dc))).collect();
        q.acl.retain_map(&mut all, |a, id, _| {
            state.services.get(*id).is_some_and(|s| a.allows(Resource::Service, &s.spec.name, Access::Read))
        });
        q.filtered_json(&all)
    })
    .await
}

pub async fn service(ctx: Ctx, Path(id): Path<String>, q: Query) -> Result<Response, ApiError> {
    let dc = ctx.identity.datacenter.as_str();
    hashed_read(&ctx, &q, true, |state| {
        let service = state.services.get(&id).ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
        q.acl.require(Resource::Service, &service.spec.name, Access::Read)?;
        json_bytes(&agent_service(service, dc))
    })
    .await
}

/// The name of the local service a check belongs to ("" for a node check or an unknown one).
fn check_service_name(state: &LocalState, check_id: &str) -> String {
    let service_id = state.checks.get(check_id).map(|c| c.spec.service_id.clone()).unwrap_or_default();
    state.services.get(&service_id).map(|s| s.spec.name.clone()).unwrap_or_default()
}

/// What changing a local check (or its service) needs: write on its service, or on this node
/// for a node check.
fn require_check_write(ctx: &HttpContext, acl: &RequestAcl, check_id: &str) -> Result<(), ApiError> {
    if !acl.authorizer().enabled() {
        return Ok(());
    }
    match ctx.local.read(|state| check_service_name(state, check_id)) {
        name if name.is_empty() => acl.require(Resource::Node, ctx.local.node_name(), Access::Write),
        name => acl.require(Resource::Service, &name, Access::Write),
    }
}

fn require_service_write(ctx: &HttpContext, acl: &RequestAcl, service_id: &str) -> Result<(), ApiError> {
    if !acl.authorizer().enabled() {
        return Ok(());
    }
    match ctx.local.read(|state| state.services.get(service_id).map(|s| s.spec.name.clone())) {
        Some(name) => acl.require(Resource::Service, &name, Access::Write),
        None => acl.require(Resource::Node, ctx.local.node_name(), Access::Write),
    }
}

pub async fn checks(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    let node = ctx.local.node_name().to_string();
    hashed_read(&ctx, &q, false, |state| {
        let mut all: BTreeMap<&str, AgentCheck<'_>> =
            state.checks.iter().map(|(id, c)| (id.as_str(), agent_check(c, state, &node))).collect();
        q.acl.retain_map(&mut all, |a, id, _| match check_service_name(state, id) {
            name if name.is_empty() => a.allows(Resource::Node, &node, Access::Read),
            name => a.allows(Resource::Service, &name, Access::Read),
        });
        q.filtered_json(&all)
    })
    .await
}

/// Script checks through the API only with `enable_script_checks`, as Consul.
fn script_policy(ctx: &super::HttpContext) -> ScriptPolicy {
    if ctx.script_checks_via_api {
        ScriptPolicy::Allowed
    } else {
        ScriptPolicy::Refused
    }
}

pub async fn register_service(
    ctx: Ctx,
    acl: RequestAcl,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let q = Query::parse(raw.as_deref(), &ctx.identity.datacenter)?;
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let mut reg = decode_service(&decode_json_value(&bytes)?, Strictness::Lenient, script_policy(&ctx))
        .map_err(|e| ApiError::BadRequest(format!("Invalid service definition: {e}")))?;
    acl.require(Resource::Service, &reg.service.name, Access::Write)?;
    keep_token(&mut reg.service.token, &acl);
    for check in &mut reg.checks {
        keep_token(&mut check.token, &acl);
    }
    let replace = q.get("replace-existing-checks").is_some_and(|v| v != "false" && v != "0");
    ctx.local.register_service(reg, replace).await?;
    Ok(().into_response())
}

/// A registration without a `Token` of its own is kept in the catalog with the token that
/// registered it, as Consul's agent does.
fn keep_token(token: &mut Option<Secret>, acl: &RequestAcl) {
    if token.is_none() {
        *token = acl.secret().map(|s| Secret(s.to_string()));
    }
}

pub async fn deregister_service(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Response, ApiError> {
    require_service_write(&ctx, &acl, &id)?;
    ctx.local.deregister_service(&id).await?;
    Ok(().into_response())
}

pub async fn register_check(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let mut spec = decode_check(&decode_json_value(&bytes)?, Strictness::Lenient, script_policy(&ctx))
        .map_err(|e| ApiError::BadRequest(format!("Invalid check: {e}")))?;
    keep_token(&mut spec.token, &acl);
    if spec.service_id.is_empty() {
        acl.require(Resource::Node, ctx.local.node_name(), Access::Write)?;
    } else {
        require_service_write(&ctx, &acl, &spec.service_id)?;
    }
    ctx.local.register_check(spec).await?;
    Ok(().into_response())
}

pub async fn deregister_check(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Response, ApiError> {
    require_check_write(&ctx, &acl, &id)?;
    ctx.local.deregister_check(&id).await?;
    Ok(().into_response())
}

fn ttl_update(
    ctx: &HttpContext,
    acl: &RequestAcl,
    id: &str,
    status: CheckStatus,
    raw: Option<&str>,
) -> Result<Response, ApiError> {
    let q = Query::parse(raw, &ctx.identity.datacenter)?;
    require_check_write(ctx, acl, id)?;
    ctx.local.update_ttl(id, status, q.get("note").unwrap_or("").to_string())?;
    Ok(().into_response())
}

pub async fn check_pass(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &acl, &id, CheckStatus::Passing, raw.as_deref())
}

pub async fn check_warn(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &acl, &id, CheckStatus::Warning, raw.as_deref())
}

pub async fn check_fail(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    ttl_update(&ctx, &acl, &id, CheckStatus::Critical, raw.as_deref())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckUpdateBody {
    status: Option<String>,
    output: Option<String>,
}

pub async fn check_update(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_check_write(&ctx, &acl, &id)?;
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let update: CheckUpdateBody = decode_json(&bytes)?;
    let text = update.status.unwrap_or_default();
    let status = CheckStatus::parse(&text).ok_or_else(|| {
        ApiError::BadRequest(format!("Invalid check status: {text:?} (must be passing, warning or critical)"))
    })?;
    ctx.local.update_ttl(&id, status, update.output.unwrap_or_default())?;
    Ok(().into_response())
}

/// `?enable=true|false` (required) and `?reason=`.
fn maintenance_params(ctx: &HttpContext, raw: Option<&str>) -> Result<(bool, String), ApiError> {
    let q = Query::parse(raw, &ctx.identity.datacenter)?;
    let enable = match q.get("enable") {
        None | Some("") => return Err(ApiError::BadRequest("Missing value for enable".into())),
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| ApiError::BadRequest(format!("Invalid value for enable: {v:?} (expected true or false)")))?,
    };
    Ok((enable, q.get("reason").unwrap_or("").to_string()))
}

pub async fn service_maintenance(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    require_service_write(&ctx, &acl, &id)?;
    let (enable, reason) = maintenance_params(&ctx, raw.as_deref())?;
    let mut token = None;
    keep_token(&mut token, &acl);
    ctx.local.service_maintenance(&id, enable, &reason, token).await?;
    Ok(().into_response())
}

pub async fn node_maintenance(ctx: Ctx, acl: RequestAcl, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let (enable, reason) = maintenance_params(&ctx, raw.as_deref())?;
    let mut token = None;
    keep_token(&mut token, &acl);
    ctx.local.node_maintenance(enable, &reason, token).await?;
    Ok(().into_response())
}

/// Asks the agent to reload its config files, as SIGHUP does, and answers when done.
pub async fn reload(ctx: Ctx) -> Result<Response, ApiError> {
    let (reply, done) = oneshot::channel();
    ctx.reload.try_send(reply).map_err(|_| ApiError::TooMany("a reload is already in progress; retry later".into()))?;
    match done.await {
        Ok(Ok(())) => Ok(().into_response()),
        Ok(Err(reason)) => Err(ApiError::Internal(format!("Failed reloading: {reason}"))),
        Err(_) => Err(ApiError::Internal("Failed reloading: the agent is shutting down".into())),
    }
}

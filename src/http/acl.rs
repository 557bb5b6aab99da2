//! `/v1/acl/*`: bootstrap, tokens, policies and roles (Consul's shapes), and the internal
//! endpoint client agents resolve tokens through. Reading needs `acl = "read"`, changing
//! `acl = "write"` (the management token has both); a token may always read itself.

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::acl_gate::{acl_error, RequestAcl};
use super::body::{decode_json, read_limited};
use super::query::Query;
use super::{ApiError, Ctx};
use crate::acl::{Access, Rules, Scope};
use crate::model::acl::{valid_acl_name, AclLink, AclNodeIdentity, AclPolicy, AclRole, AclServiceIdentity, AclToken};
use crate::model::{Command, CommandResult};
use crate::store::Table;

/// What `/v1/acl/*` answers while ACLs are off (Consul's status and text).
fn require_enabled(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.acl.enabled() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("ACL support disabled".into()))
    }
}

fn require(ctx: &Ctx, acl: &RequestAcl, need: Access) -> Result<(), ApiError> {
    require_enabled(ctx)?;
    ctx.cluster.require_server()?;
    acl.require_scope(Scope::Acl, need)
}

/// A token as answered: its secret hidden from holders of `acl = "read"` only.
fn shown(acl: &RequestAcl, mut token: AclToken) -> AclToken {
    if !acl.authorizer().allows_scope(Scope::Acl, Access::Write) {
        token.secret_id = "<hidden>".into();
    }
    token
}

async fn write(ctx: &Ctx, command: Command) -> Result<(), ApiError> {
    match ctx.cluster.write(command).await? {
        CommandResult::Done | CommandResult::Bool(true) => Ok(()),
        CommandResult::Bool(false) => Err(ApiError::NotFound("ACL not found".into())),
        CommandResult::Rejected(why) if why.contains("no longer allowed") || why.contains("not permitted") => {
            Err(ApiError::Forbidden(why))
        }
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

fn json_index<T: serde::Serialize>(ctx: &Ctx, value: &T) -> Result<Response, ApiError> {
    let index = ctx.store.read()?.table_index(Table::Acl)?;
    Ok((ctx.index_headers(index), Json(value)).into_response())
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn valid_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok()
}

/// `GET /v1/internal/acl/grants`: what the presented token is granted here (client agents
/// build their authorizer from it).
pub async fn grants(ctx: Ctx, acl: RequestAcl) -> Result<Response, ApiError> {
    require_enabled(&ctx)?;
    ctx.cluster.require_server()?;
    let secret = acl.secret().unwrap_or(ctx.acl.default_secret()).to_string();
    Ok(Json(ctx.acl.grants(&secret).map_err(acl_error)?).into_response())
}

/// `PUT /v1/acl/bootstrap`: the first management token, once.
pub async fn bootstrap(ctx: Ctx) -> Result<Response, ApiError> {
    require_enabled(&ctx)?;
    let token = AclToken {
        accessor_id: new_id(),
        secret_id: new_id(),
        description: "Bootstrap Token (Global Management)".into(),
        create_time: now_rfc3339(),
        ..AclToken::default()
    };
    let accessor = token.accessor_id.clone();
    write(&ctx, Command::AclBootstrap { token: Box::new(token), initial: false }).await?;
    let stored =
        ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::Internal("bootstrap token lost".into()))?;
    json_index(&ctx, &stored)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A token in a request body (unknown fields ignored, as Consul).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TokenBody {
    #[serde(rename = "AccessorID")]
    accessor_id: String,
    #[serde(rename = "SecretID")]
    secret_id: String,
    description: Option<String>,
    policies: Option<Vec<AclLink>>,
    roles: Option<Vec<AclLink>>,
    service_identities: Option<Vec<AclServiceIdentity>>,
    node_identities: Option<Vec<AclNodeIdentity>>,
    local: bool,
}

async fn body_of<T: serde::de::DeserializeOwned + Default>(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_limited(headers, body, ctx.limits.http_max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode_json(&bytes)
}

fn check_links(links: &[AclLink], kind: &str) -> Result<(), ApiError> {
    match links.iter().find(|l| l.id.is_empty() && l.name.is_empty()) {
        Some(_) => Err(ApiError::BadRequest(format!("{kind} links need an ID or a Name"))),
        None => Ok(()),
    }
}

fn check_identities(services: &[AclServiceIdentity], nodes: &[AclNodeIdentity]) -> Result<(), ApiError> {
    if services.iter().any(|s| s.service_name.is_empty()) {
        return Err(ApiError::BadRequest("Service identity is missing the service name field on this token".into()));
    }
    if nodes.iter().any(|n| n.node_name.is_empty() || n.datacenter.is_empty()) {
        return Err(ApiError::BadRequest("Node identity needs a NodeName and a Datacenter".into()));
    }
    Ok(())
}

/// Stores `token` and answers it as stored.
async fn store_token(ctx: &Ctx, acl: &RequestAcl, token: AclToken) -> Result<Response, ApiError> {
    check_links(&token.policies, "policy")?;
    check_links(&token.roles, "role")?;
    check_identities(&token.service_identities, &token.node_identities)?;
    let accessor = token.accessor_id.clone();
    write(ctx, Command::AclTokenSet(Box::new(token))).await?;
    let stored = ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::NotFound("ACL not found".into()))?;
    json_index(ctx, &shown(acl, stored))
}

/// `PUT /v1/acl/token`: a new token (its IDs generated unless given).
pub async fn token_create(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: TokenBody = body_of(&ctx, &headers, body).await?;
    for (field, value) in [("AccessorID", &b.accessor_id), ("SecretID", &b.secret_id)] {
        if !value.is_empty() && !valid_uuid(value) {
            return Err(ApiError::BadRequest(format!("Invalid Token: {field} is not a valid UUID")));
        }
    }
    if !b.accessor_id.is_empty() && ctx.store.read()?.acl_token(&b.accessor_id)?.is_some() {
        return Err(ApiError::BadRequest("Invalid Token: AccessorID is already in use".into()));
    }
    let token = AclToken {
        accessor_id: if b.accessor_id.is_empty() { new_id() } else { b.accessor_id },
        secret_id: if b.secret_id.is_empty() { new_id() } else { b.secret_id },
        description: b.description.unwrap_or_default(),
        policies: b.policies.unwrap_or_default(),
        roles: b.roles.unwrap_or_default(),
        service_identities: b.service_identities.unwrap_or_default(),
        node_identities: b.node_identities.unwrap_or_default(),
        local: b.local,
        create_time: now_rfc3339(),
        ..AclToken::default()
    };
    store_token(&ctx, &acl, token).await
}

/// `PUT /v1/acl/token/{accessor}`: replaces what the body gives; the secret stays.
pub async fn token_update(
    ctx: Ctx,
    acl: RequestAcl,
    Path(accessor): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: TokenBody = body_of(&ctx, &headers, body).await?;
    if !b.accessor_id.is_empty() && b.accessor_id != accessor {
        return Err(ApiError::BadRequest("Token AccessorID in URL and payload do not match".into()));
    }
    let old = ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::NotFound("ACL not found".into()))?;
    if !b.secret_id.is_empty() && b.secret_id != old.secret_id {
        return Err(ApiError::BadRequest("Changing a token's SecretID is not permitted".into()));
    }
    let token = AclToken {
        description: b.description.unwrap_or(old.description.clone()),
        policies: b.policies.unwrap_or(old.policies.clone()),
        roles: b.roles.unwrap_or(old.roles.clone()),
        service_identities: b.service_identities.unwrap_or(old.service_identities.clone()),
        node_identities: b.node_identities.unwrap_or(old.node_identities.clone()),
        ..old
    };
    store_token(&ctx, &acl, token).await
}

/// `PUT /v1/acl/token/{accessor}/clone`: a new token with the same grants.
pub async fn token_clone(
    ctx: Ctx,
    acl: RequestAcl,
    Path(accessor): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: TokenBody = body_of(&ctx, &headers, body).await?;
    let old = ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::NotFound("ACL not found".into()))?;
    let token = AclToken {
        accessor_id: new_id(),
        secret_id: new_id(),
        description: b.description.unwrap_or(old.description.clone()),
        create_time: now_rfc3339(),
        ..old
    };
    store_token(&ctx, &acl, token).await
}

/// `GET /v1/acl/token/self`: the token the request presents.
pub async fn token_self(ctx: Ctx, acl: RequestAcl) -> Result<Response, ApiError> {
    require_enabled(&ctx)?;
    ctx.cluster.require_server()?;
    let secret = acl.secret().unwrap_or(ctx.acl.default_secret());
    let token =
        ctx.store.read()?.acl_token_by_secret(secret)?.ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
    json_index(&ctx, &token)
}

/// `GET /v1/acl/token/{accessor}`.
pub async fn token_read(ctx: Ctx, acl: RequestAcl, Path(accessor): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let token = ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::NotFound("ACL not found".into()))?;
    json_index(&ctx, &shown(&acl, token))
}

/// `DELETE /v1/acl/token/{accessor}` → `true`. Requests with it are refused from then on,
/// blocking queries already waiting included.
pub async fn token_delete(ctx: Ctx, acl: RequestAcl, Path(accessor): Path<String>) -> Result<Json<bool>, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    write(&ctx, Command::AclTokenDelete { accessor_id: accessor }).await?;
    Ok(Json(true))
}

/// `GET /v1/acl/tokens[?policy=ID][&role=ID]`.
pub async fn token_list(ctx: Ctx, acl: RequestAcl, q: Query) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let mut tokens = ctx.store.read()?.acl_tokens()?;
    if let Some(policy) = q.get("policy") {
        tokens.retain(|t| t.policies.iter().any(|l| l.id == policy));
    }
    if let Some(role) = q.get("role") {
        tokens.retain(|t| t.roles.iter().any(|l| l.id == role));
    }
    let tokens: Vec<AclToken> = tokens.into_iter().map(|t| shown(&acl, t)).collect();
    json_index(&ctx, &tokens)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct PolicyBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    rules: String,
    datacenters: Vec<String>,
}

async fn store_policy(ctx: &Ctx, policy: AclPolicy) -> Result<Response, ApiError> {
    if !valid_acl_name(&policy.name) {
        return Err(ApiError::BadRequest(format!(
            "Invalid Policy: invalid Name {:?}: use 1 to 128 letters, digits, '-' and '_'",
            policy.name
        )));
    }
    Rules::parse(&policy.rules).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let id = policy.id.clone();
    write(ctx, Command::AclPolicySet(Box::new(policy))).await?;
    let stored = ctx.store.read()?.acl_policy(&id)?.ok_or_else(|| ApiError::NotFound("ACL policy not found".into()))?;
    json_index(ctx, &stored)
}

/// `PUT /v1/acl/policy`.
pub async fn policy_create(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: PolicyBody = body_of(&ctx, &headers, body).await?;
    if !b.id.is_empty() {
        return Err(ApiError::BadRequest("Cannot specify an ID when creating a policy".into()));
    }
    let policy = AclPolicy {
        id: new_id(),
        name: b.name,
        description: b.description,
        rules: b.rules,
        datacenters: b.datacenters,
        ..AclPolicy::default()
    };
    store_policy(&ctx, policy).await
}

/// `PUT /v1/acl/policy/{id}`.
pub async fn policy_update(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: PolicyBody = body_of(&ctx, &headers, body).await?;
    if !b.id.is_empty() && b.id != id {
        return Err(ApiError::BadRequest("Policy ID in URL and payload do not match".into()));
    }
    let old = ctx.store.read()?.acl_policy(&id)?.ok_or_else(|| ApiError::NotFound("ACL policy not found".into()))?;
    let policy =
        AclPolicy { name: b.name, description: b.description, rules: b.rules, datacenters: b.datacenters, ..old };
    store_policy(&ctx, policy).await
}

pub async fn policy_read(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let policy = ctx.store.read()?.acl_policy(&id)?.ok_or_else(|| ApiError::NotFound("ACL policy not found".into()))?;
    json_index(&ctx, &policy)
}

pub async fn policy_read_by_name(ctx: Ctx, acl: RequestAcl, Path(name): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let policies = ctx.store.read()?.acl_policies()?;
    let policy = policies
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::NotFound("ACL policy not found".into()))?;
    json_index(&ctx, &policy)
}

pub async fn policy_delete(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Json<bool>, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    write(&ctx, Command::AclPolicyDelete { id }).await?;
    Ok(Json(true))
}

pub async fn policy_list(ctx: Ctx, acl: RequestAcl) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    json_index(&ctx, &ctx.store.read()?.acl_policies()?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RoleBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    policies: Vec<AclLink>,
    service_identities: Vec<AclServiceIdentity>,
    node_identities: Vec<AclNodeIdentity>,
}

async fn store_role(ctx: &Ctx, role: AclRole) -> Result<Response, ApiError> {
    if !valid_acl_name(&role.name) {
        return Err(ApiError::BadRequest(format!(
            "Invalid Role: invalid Name {:?}: use 1 to 128 letters, digits, '-' and '_'",
            role.name
        )));
    }
    check_links(&role.policies, "policy")?;
    check_identities(&role.service_identities, &role.node_identities)?;
    let id = role.id.clone();
    write(ctx, Command::AclRoleSet(Box::new(role))).await?;
    let stored = ctx.store.read()?.acl_role(&id)?.ok_or_else(|| ApiError::NotFound("ACL role not found".into()))?;
    json_index(ctx, &stored)
}

pub async fn role_create(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: RoleBody = body_of(&ctx, &headers, body).await?;
    if !b.id.is_empty() {
        return Err(ApiError::BadRequest("Cannot specify an ID when creating a role".into()));
    }
    let role = AclRole {
        id: new_id(),
        name: b.name,
        description: b.description,
        policies: b.policies,
        service_identities: b.service_identities,
        node_identities: b.node_identities,
        ..AclRole::default()
    };
    store_role(&ctx, role).await
}

pub async fn role_update(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: RoleBody = body_of(&ctx, &headers, body).await?;
    if !b.id.is_empty() && b.id != id {
        return Err(ApiError::BadRequest("Role ID in URL and payload do not match".into()));
    }
    let old = ctx.store.read()?.acl_role(&id)?.ok_or_else(|| ApiError::NotFound("ACL role not found".into()))?;
    let role = AclRole {
        name: b.name,
        description: b.description,
        policies: b.policies,
        service_identities: b.service_identities,
        node_identities: b.node_identities,
        ..old
    };
    store_role(&ctx, role).await
}

pub async fn role_read(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let role = ctx.store.read()?.acl_role(&id)?.ok_or_else(|| ApiError::NotFound("ACL role not found".into()))?;
    json_index(&ctx, &role)
}

pub async fn role_read_by_name(ctx: Ctx, acl: RequestAcl, Path(name): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let roles = ctx.store.read()?.acl_roles()?;
    let role =
        roles.into_iter().find(|r| r.name == name).ok_or_else(|| ApiError::NotFound("ACL role not found".into()))?;
    json_index(&ctx, &role)
}

pub async fn role_delete(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Json<bool>, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    write(&ctx, Command::AclRoleDelete { id }).await?;
    Ok(Json(true))
}

pub async fn role_list(ctx: Ctx, acl: RequestAcl) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    json_index(&ctx, &ctx.store.read()?.acl_roles()?)
}

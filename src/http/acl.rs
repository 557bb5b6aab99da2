//! `/v1/acl/*`: bootstrap, tokens, policies and roles (Consul's shapes), and the internal
//! endpoint client agents resolve tokens through. Reading needs `acl = "read"`, changing
//! `acl = "write"` (the management token has both); a token may always read itself.

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::time::{Duration, SystemTime};

use super::acl_gate::{acl_error, RequestAcl};
use super::body::{decode_json_or_default, read_limited};
use super::query::Query;
use super::{ApiError, Ctx};
use crate::acl::{Access, Rules, Scope};
use crate::model::acl::{
    format_rfc3339, parse_rfc3339, valid_acl_name, AclLink, AclNodeIdentity, AclPolicy, AclRole, AclServiceIdentity,
    AclToken,
};
use crate::model::{format_duration, parse_duration};
use crate::model::{Command, CommandResult};
use crate::store::{ReadView, StoreError, Table};

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
    let secret = acl.secret().map_or_else(|| ctx.acl.default_secret(), str::to_string);
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
    format_rfc3339(SystemTime::now())
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
    /// RFC 3339.
    expiration_time: Option<String>,
    /// A Go duration (`"1h"`), or nanoseconds as Consul's Go client sends it.
    #[serde(rename = "ExpirationTTL")]
    expiration_ttl: Option<serde_json::Value>,
}

impl TokenBody {
    /// `ExpirationTTL` as a duration; `None` when absent or zero (no expiration).
    fn ttl(&self) -> Result<Option<Duration>, ApiError> {
        let bad = |shown: &str| ApiError::BadRequest(format!("Token Expiration TTL '{shown}' should be > 0"));
        let ttl = match &self.expiration_ttl {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(text)) if text.starts_with('-') => return Err(bad(text)),
            Some(serde_json::Value::String(text)) => {
                parse_duration(text).map_err(|why| ApiError::BadRequest(format!("ExpirationTTL {text:?}: {why}")))?
            }
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(nanos) => Duration::from_nanos(nanos),
                None => return Err(bad(&n.to_string())),
            },
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "ExpirationTTL must be a duration such as \"1h\", got {other}"
                )))
            }
        };
        Ok((!ttl.is_zero()).then_some(ttl))
    }

    /// `ExpirationTime` as a time; `None` when absent.
    fn time(&self) -> Result<Option<SystemTime>, ApiError> {
        match self.expiration_time.as_deref().filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(text) => parse_rfc3339(text)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("ExpirationTime {text:?} is not an RFC 3339 time"))),
        }
    }

    /// The expiration of a token created at `created` from this body, checked against the
    /// configured bounds (Consul's rules and messages).
    fn expiration(&self, ctx: &Ctx, created: SystemTime) -> Result<Option<String>, ApiError> {
        let config = ctx.acl.config();
        let (min, max) = (config.token_min_expiration_ttl, config.token_max_expiration_ttl);
        let at = match (self.ttl()?, self.time()?) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest("Expiration TTL and Expiration Time cannot both be set".into()))
            }
            (Some(ttl), None) => {
                if ttl < min || ttl > max {
                    return Err(ApiError::BadRequest(format!(
                        "Token Expiration TTL '{}' should be between {} and {}",
                        format_duration(ttl),
                        format_duration(min),
                        format_duration(max)
                    )));
                }
                created + ttl
            }
            (None, Some(at)) => {
                let Ok(lifetime) = at.duration_since(created) else {
                    return Err(ApiError::BadRequest("ExpirationTime cannot be before CreateTime".into()));
                };
                let (bound, side) = match lifetime {
                    l if l > max => (max, "more"),
                    l if l < min => (min, "less"),
                    _ => return Ok(Some(format_rfc3339(at))),
                };
                return Err(ApiError::BadRequest(format!(
                    "ExpirationTime cannot be {side} than {} in the future (was {})",
                    format_duration(bound),
                    format_duration(lifetime)
                )));
            }
        };
        Ok(Some(format_rfc3339(at)))
    }
}

/// A request body, where an empty one means every field at its default.
async fn read_body<T: serde::de::DeserializeOwned + Default>(
    ctx: &Ctx,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    decode_json_or_default(&read_limited(headers, body, ctx.limits.http_max_body_bytes).await?)
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
    let b: TokenBody = read_body(&ctx, &headers, body).await?;
    for (field, value) in [("AccessorID", &b.accessor_id), ("SecretID", &b.secret_id)] {
        if !value.is_empty() && !valid_uuid(value) {
            return Err(ApiError::BadRequest(format!("Invalid Token: {field} is not a valid UUID")));
        }
    }
    if !b.accessor_id.is_empty() && ctx.store.read()?.acl_token(&b.accessor_id)?.is_some() {
        return Err(ApiError::BadRequest("Invalid Token: AccessorID is already in use".into()));
    }
    let created = SystemTime::now();
    let expiration_time = b.expiration(&ctx, created)?;
    let token = AclToken {
        accessor_id: if b.accessor_id.is_empty() { new_id() } else { b.accessor_id },
        secret_id: if b.secret_id.is_empty() { new_id() } else { b.secret_id },
        description: b.description.unwrap_or_default(),
        policies: b.policies.unwrap_or_default(),
        roles: b.roles.unwrap_or_default(),
        service_identities: b.service_identities.unwrap_or_default(),
        node_identities: b.node_identities.unwrap_or_default(),
        local: b.local,
        create_time: format_rfc3339(created),
        expiration_time,
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
    let b: TokenBody = read_body(&ctx, &headers, body).await?;
    if !b.accessor_id.is_empty() && b.accessor_id != accessor {
        return Err(ApiError::BadRequest("Token AccessorID in URL and payload do not match".into()));
    }
    let old = ctx.store.read()?.acl_token(&accessor)?.ok_or_else(|| ApiError::NotFound("ACL not found".into()))?;
    if !b.secret_id.is_empty() && b.secret_id != old.secret_id {
        return Err(ApiError::BadRequest("Changing a token's SecretID is not permitted".into()));
    }
    // The expiration is fixed at creation; a body may repeat it, not change it.
    let same_expiration = match b.time()? {
        None => true,
        Some(at) => old.expires_at() == Some(at),
    };
    if b.ttl()?.is_some() || !same_expiration {
        return Err(ApiError::BadRequest(format!("Cannot change expiration time of {accessor}")));
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
    let b: TokenBody = read_body(&ctx, &headers, body).await?;
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
    let secret = acl.secret().map_or_else(|| ctx.acl.default_secret(), str::to_string);
    let token =
        ctx.store.read()?.acl_token_by_secret(&secret)?.ok_or_else(|| ApiError::Forbidden("ACL not found".into()))?;
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

/// Policies and roles are managed alike: created with a fresh ID, replaced by ID, read by
/// ID or name, deleted, listed.
pub trait AclItem: serde::Serialize + Default + Sized {
    /// "Policy" or "Role", as Consul's messages name it.
    const KIND: &'static str;
    /// What a create or update request carries.
    type Body: serde::de::DeserializeOwned + Default;
    fn body_id(body: &Self::Body) -> &str;
    /// `self` with what `body` sets (its ID and indexes kept).
    fn updated(self, body: Self::Body) -> Self;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
    fn with_id(id: String) -> Self;
    /// What the handler checks before the state machine does (which checks again).
    fn check(&self) -> Result<(), ApiError>;
    fn set(self) -> Command;
    fn delete(id: String) -> Command;
    fn find(view: &ReadView<'_>, id: &str) -> Result<Option<Self>, StoreError>;
    fn all(view: &ReadView<'_>) -> Result<Vec<Self>, StoreError>;
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    rules: String,
    datacenters: Vec<String>,
}

impl AclItem for AclPolicy {
    const KIND: &'static str = "Policy";
    type Body = PolicyBody;
    fn body_id(body: &PolicyBody) -> &str {
        &body.id
    }
    fn updated(self, b: PolicyBody) -> Self {
        AclPolicy { name: b.name, description: b.description, rules: b.rules, datacenters: b.datacenters, ..self }
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn with_id(id: String) -> Self {
        AclPolicy { id, ..AclPolicy::default() }
    }
    fn check(&self) -> Result<(), ApiError> {
        Rules::parse(&self.rules).map(|_| ()).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
    fn set(self) -> Command {
        Command::AclPolicySet(Box::new(self))
    }
    fn delete(id: String) -> Command {
        Command::AclPolicyDelete { id }
    }
    fn find(view: &ReadView<'_>, id: &str) -> Result<Option<Self>, StoreError> {
        view.acl_policy(id)
    }
    fn all(view: &ReadView<'_>) -> Result<Vec<Self>, StoreError> {
        view.acl_policies()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RoleBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    policies: Vec<AclLink>,
    service_identities: Vec<AclServiceIdentity>,
    node_identities: Vec<AclNodeIdentity>,
}

impl AclItem for AclRole {
    const KIND: &'static str = "Role";
    type Body = RoleBody;
    fn body_id(body: &RoleBody) -> &str {
        &body.id
    }
    fn updated(self, b: RoleBody) -> Self {
        AclRole {
            name: b.name,
            description: b.description,
            policies: b.policies,
            service_identities: b.service_identities,
            node_identities: b.node_identities,
            ..self
        }
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn with_id(id: String) -> Self {
        AclRole { id, ..AclRole::default() }
    }
    fn check(&self) -> Result<(), ApiError> {
        check_links(&self.policies, "policy")?;
        check_identities(&self.service_identities, &self.node_identities)
    }
    fn set(self) -> Command {
        Command::AclRoleSet(Box::new(self))
    }
    fn delete(id: String) -> Command {
        Command::AclRoleDelete { id }
    }
    fn find(view: &ReadView<'_>, id: &str) -> Result<Option<Self>, StoreError> {
        view.acl_role(id)
    }
    fn all(view: &ReadView<'_>) -> Result<Vec<Self>, StoreError> {
        view.acl_roles()
    }
}

fn not_found<T: AclItem>() -> ApiError {
    ApiError::NotFound(format!("ACL {} not found", T::KIND.to_lowercase()))
}

/// Stores `item` and answers it as stored.
async fn store_item<T: AclItem>(ctx: &Ctx, item: T) -> Result<Response, ApiError> {
    if !valid_acl_name(item.name()) {
        return Err(ApiError::BadRequest(format!(
            "Invalid {}: invalid Name {:?}: use 1 to 128 letters, digits, '-' and '_'",
            T::KIND,
            item.name()
        )));
    }
    item.check()?;
    let id = item.id().to_string();
    write(ctx, item.set()).await?;
    let stored = T::find(&ctx.store.read()?, &id)?.ok_or_else(not_found::<T>)?;
    json_index(ctx, &stored)
}

/// `PUT /v1/acl/policy`, `PUT /v1/acl/role`.
pub async fn create<T: AclItem>(
    ctx: Ctx,
    acl: RequestAcl,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: T::Body = read_body(&ctx, &headers, body).await?;
    if !T::body_id(&b).is_empty() {
        return Err(ApiError::BadRequest(format!("Cannot specify an ID when creating a {}", T::KIND.to_lowercase())));
    }
    store_item(&ctx, T::with_id(new_id()).updated(b)).await
}

/// `PUT /v1/acl/policy/{id}`, `PUT /v1/acl/role/{id}`: replaces what the body gives.
pub async fn update<T: AclItem>(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    let b: T::Body = read_body(&ctx, &headers, body).await?;
    if !T::body_id(&b).is_empty() && T::body_id(&b) != id {
        return Err(ApiError::BadRequest(format!("{} ID in URL and payload do not match", T::KIND)));
    }
    let old = T::find(&ctx.store.read()?, &id)?.ok_or_else(not_found::<T>)?;
    store_item(&ctx, old.updated(b)).await
}

pub async fn read<T: AclItem>(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let item = T::find(&ctx.store.read()?, &id)?.ok_or_else(not_found::<T>)?;
    json_index(&ctx, &item)
}

pub async fn read_by_name<T: AclItem>(
    ctx: Ctx,
    acl: RequestAcl,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    let item = T::all(&ctx.store.read()?)?.into_iter().find(|i| i.name() == name).ok_or_else(not_found::<T>)?;
    json_index(&ctx, &item)
}

pub async fn delete<T: AclItem>(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Json<bool>, ApiError> {
    require(&ctx, &acl, Access::Write)?;
    write(&ctx, T::delete(id)).await?;
    Ok(Json(true))
}

pub async fn list<T: AclItem>(ctx: Ctx, acl: RequestAcl) -> Result<Response, ApiError> {
    require(&ctx, &acl, Access::Read)?;
    json_index(&ctx, &T::all(&ctx.store.read()?)?)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct AgentTokenBody {
    token: Option<String>,
}

/// `PUT /v1/agent/token/{kind}` (`acl:write`, the gate's default): replaces one of this
/// agent's own tokens (`default`, `agent`; Consul's older `acl_token`, `acl_agent_token`).
/// With `acl.enable_token_persistence` the token is on disk before the answer.
pub async fn set_agent_token(
    ctx: Ctx,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(), ApiError> {
    require_enabled(&ctx)?;
    let Some(kind) = crate::acl::tokens::TokenKind::parse(&kind) else {
        const CONSUL_ONLY: &[&str] =
            &["agent_recovery", "agent_master", "replication", "config_file_service_registration", "dns"];
        return Err(if CONSUL_ONLY.contains(&kind.as_str()) {
            ApiError::BadRequest(format!("cairn does not use a {kind:?} token; it sets \"default\" and \"agent\""))
        } else {
            ApiError::NotFound(format!("Token {kind:?} is unknown"))
        });
    };
    let body: AgentTokenBody = read_body(&ctx, &headers, body).await?;
    let secret = body.token.unwrap_or_default();
    ctx.acl.tokens().set(kind, secret.trim()).map_err(|e| ApiError::Internal(e.to_string()))?;
    tracing::info!(kind = ?kind, "agent ACL token updated through the API");
    ctx.local.resync();
    Ok(())
}

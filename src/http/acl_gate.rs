//! ACL enforcement at the door: every request's token is resolved once, checked against what
//! its route needs, and handed to the handler ([`RequestAcl`]), which checks what depends on
//! the body and filters lists. With ACLs off the token allows everything.
//!
//! Architecture Invariant: a route this table does not name needs the management token.
//! Why: a new endpoint must be opened on purpose, never by forgetting it here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, HttpContext};
use crate::acl::{Access, AclError, Authorizer, ResolvedToken, Resource, Scope, TokenGrants};
use crate::cluster::HttpCall;

pub const X_CONSUL_TOKEN: &str = "x-consul-token";
const X_CONSUL_RESULTS_FILTERED: HeaderName = HeaderName::from_static("x-consul-results-filtered-by-acls");
/// Where a client agent asks a server what a token grants.
pub const GRANTS_PATH: &str = "/v1/internal/acl/grants";

/// The token a request presents: `X-Consul-Token`, `Authorization: Bearer`, or `?token=`.
pub fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(t) = headers.get(X_CONSUL_TOKEN).and_then(|v| v.to_str().ok()) {
        return Some(t.trim().to_string()).filter(|t| !t.is_empty());
    }
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = auth.strip_prefix("Bearer ").or_else(|| auth.strip_prefix("bearer ")) {
            return Some(t.trim().to_string()).filter(|t| !t.is_empty());
        }
    }
    form_urlencoded::parse(query?.as_bytes()).find(|(k, v)| k == "token" && !v.is_empty()).map(|(_, v)| v.into_owned())
}

/// The token a request acts with, as its handlers see it.
#[derive(Clone)]
pub struct RequestAcl(Arc<RequestAclInner>);

struct RequestAclInner {
    /// Replaced when the ACL tables change under a waiting blocking query
    /// ([`RequestAcl::refresh`]), so its next answer follows the token's current rules.
    token: ArcSwap<ResolvedToken>,
    /// The token's accessor (what shared blocking answers are keyed by); a refresh resolves
    /// the same secret, so it does not change.
    accessor_id: String,
    /// What the request presented (the default token or anonymous when it presented none).
    secret: Option<String>,
    /// Elements left out of answers so far ([`RequestAcl::retain`]).
    filtered: AtomicU64,
}

fn permission_denied() -> ApiError {
    ApiError::Forbidden("Permission denied".into())
}

impl RequestAcl {
    pub fn new(token: Arc<ResolvedToken>, secret: Option<String>) -> RequestAcl {
        let accessor_id = token.accessor_id.clone();
        RequestAcl(Arc::new(RequestAclInner {
            token: ArcSwap::new(token),
            accessor_id,
            secret,
            filtered: AtomicU64::new(0),
        }))
    }

    /// ACLs off.
    pub fn off() -> RequestAcl {
        RequestAcl::new(Arc::new(ResolvedToken::off()), None)
    }

    /// What the token may do now.
    pub fn authorizer(&self) -> CurrentAuthorizer {
        CurrentAuthorizer(self.0.token.load_full())
    }

    /// The token as resolved again after the ACL tables changed.
    pub fn refresh(&self, token: Arc<ResolvedToken>) {
        self.0.token.store(token);
    }

    pub fn accessor_id(&self) -> &str {
        &self.0.accessor_id
    }

    pub fn secret(&self) -> Option<&str> {
        self.0.secret.as_deref()
    }

    pub fn can(&self, resource: Resource, name: &str, need: Access) -> bool {
        self.authorizer().allows(resource, name, need)
    }

    /// 403 "Permission denied" unless the token has `need` on `name`.
    pub fn require(&self, resource: Resource, name: &str, need: Access) -> Result<(), ApiError> {
        if self.can(resource, name, need) {
            Ok(())
        } else {
            Err(permission_denied())
        }
    }

    pub fn require_scope(&self, scope: Scope, need: Access) -> Result<(), ApiError> {
        if self.authorizer().allows_scope(scope, need) {
            Ok(())
        } else {
            Err(permission_denied())
        }
    }

    /// Keeps the elements `visible` allows, counting the others (the answer then carries
    /// `X-Consul-Results-Filtered-By-ACLs: true`).
    pub fn retain<T>(&self, items: &mut Vec<T>, visible: impl Fn(&Authorizer, &T) -> bool) {
        if !self.authorizer().enabled() {
            return;
        }
        let a = self.authorizer();
        let before = items.len();
        items.retain(|item| visible(&a, item));
        self.count_filtered((before - items.len()) as u64);
    }

    /// The same for a map of name to element.
    pub fn retain_map<K: Ord, V>(
        &self,
        map: &mut std::collections::BTreeMap<K, V>,
        visible: impl Fn(&Authorizer, &K, &V) -> bool,
    ) {
        if !self.authorizer().enabled() {
            return;
        }
        let a = self.authorizer();
        let before = map.len();
        map.retain(|k, v| visible(&a, k, v));
        self.count_filtered((before - map.len()) as u64);
    }

    pub fn count_filtered(&self, n: u64) {
        self.0.filtered.fetch_add(n, Ordering::Relaxed);
    }

    /// Elements left out so far.
    pub fn filtered(&self) -> u64 {
        self.0.filtered.load(Ordering::Relaxed)
    }
}

/// A token's authorizer as it stands when asked for.
pub struct CurrentAuthorizer(Arc<ResolvedToken>);

impl std::ops::Deref for CurrentAuthorizer {
    type Target = Authorizer;
    fn deref(&self) -> &Authorizer {
        &self.0.authorizer
    }
}

impl std::fmt::Debug for RequestAcl {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAcl").field("accessor_id", &self.accessor_id()).finish()
    }
}

impl Default for RequestAcl {
    fn default() -> Self {
        RequestAcl::off()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestAcl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<RequestAcl, Self::Rejection> {
        // Every routed request passes the gate, which inserts one; a request that did not
        // (none can) acts as with ACLs off only when they are: the gate refuses otherwise.
        Ok(parts.extensions.get::<RequestAcl>().cloned().unwrap_or_else(RequestAcl::off))
    }
}

pub fn filtered_header() -> (HeaderName, HeaderValue) {
    (X_CONSUL_RESULTS_FILTERED, HeaderValue::from_static("true"))
}

/// What a route needs before its handler runs.
enum Need {
    Nothing,
    /// The handler checks (body-dependent) or filters (lists).
    Handler,
    Resource(Resource, String, Access),
    Scope(Scope, Access),
}

/// The table: route template and method → what the token needs.
fn route_need(ctx: &HttpContext, route: &str, method: &Method, param: impl Fn(&str) -> String) -> Need {
    use Access::{Read, Write};
    let read = method == Method::GET || method == Method::HEAD;
    let rw = if read { Read } else { Write };
    let own_agent = || ctx.identity.node_name.clone();
    match route {
        "/v1/catalog/datacenters" | "/v1/coordinate/datacenters" | "/v1/status/leader" | "/v1/status/peers" => {
            Need::Nothing
        }
        GRANTS_PATH | "/v1/acl/bootstrap" => Need::Nothing,
        r if r.starts_with("/v1/acl/") => Need::Handler,
        "/v1/catalog/register" | "/v1/catalog/deregister" | "/v1/catalog/deregister/{service_id}" => Need::Handler,
        r if r.starts_with("/v1/catalog/") || r.starts_with("/v1/health/") || r.starts_with("/v1/internal/ui/") => {
            Need::Handler
        }
        "/v1/kv/" | "/v1/kv/{*key}" | "/v1/txn" => Need::Handler,
        r if r.starts_with("/v1/session/") => Need::Handler,
        r if r.starts_with("/v1/query") => Need::Handler,
        "/v1/agent/self" | "/v1/agent/metrics" | "/v1/agent/monitor" => {
            Need::Resource(Resource::Agent, own_agent(), Read)
        }
        "/v1/agent/leave" | "/v1/agent/join/{addr}" | "/v1/agent/reload" => {
            Need::Resource(Resource::Agent, own_agent(), Write)
        }
        "/v1/agent/maintenance" => Need::Resource(Resource::Node, own_agent(), Write),
        "/v1/agent/members" | "/v1/agent/services" | "/v1/agent/checks" => Need::Handler,
        r if r.starts_with("/v1/agent/service/") || r.starts_with("/v1/agent/check/") => Need::Handler,
        "/v1/agent/force-leave/{node}" => Need::Scope(Scope::Operator, Write),
        "/v1/operator/raft/configuration" | "/v1/operator/autopilot/health" => Need::Scope(Scope::Operator, Read),
        "/v1/operator/raft/peer" | "/v1/operator/raft/transfer-leader" => Need::Scope(Scope::Operator, Write),
        "/v1/operator/autopilot/configuration" => Need::Scope(Scope::Operator, rw),
        "/v1/operator/keyring" => Need::Scope(Scope::Keyring, rw),
        "/v1/coordinate/nodes" => Need::Handler,
        "/v1/coordinate/node/{node}" => Need::Resource(Resource::Node, param("node"), Read),
        "/v1/event/fire/{name}" => Need::Resource(Resource::Event, param("name"), Write),
        "/v1/event/list" => Need::Handler,
        // Backups hold every secret: management only, as Consul.
        _ => Need::Scope(Scope::Acl, Write),
    }
}

/// Middleware: resolves the request's token and refuses what its route does not allow.
/// Requests this agent sends elsewhere (a client's to a server, a server's to another
/// datacenter) are checked where they are answered; a client gives them its default token
/// when they carry none.
pub async fn acl_gate(State(ctx): State<Arc<HttpContext>>, mut request: Request, next: Next) -> Response {
    let presented = presented_token(request.headers(), request.uri().query());
    if super::forward::goes_elsewhere(&ctx, &request) {
        if let (None, Some(default)) = (&presented, ctx.acl.tokens().default_token()) {
            if let Ok(value) = HeaderValue::from_str(&default) {
                request.headers_mut().insert(X_CONSUL_TOKEN, value);
            }
        }
        return next.run(request).await;
    }
    let Some(route) = request.extensions().get::<MatchedPath>().cloned() else {
        // Unrouted: a 404 or 405 that reveals nothing.
        return next.run(request).await;
    };
    let token = match ctx.resolve_token(presented.as_deref()).await {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    let acl = RequestAcl::new(token, presented);
    if acl.authorizer().enabled() {
        let (mut parts, body) = request.into_parts();
        let params = RawPathParams::from_request_parts(&mut parts, &()).await.ok();
        let param = |name: &str| {
            params
                .as_ref()
                .and_then(|p| p.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
                .unwrap_or_default()
        };
        let allowed = match route_need(&ctx, route.as_str(), &parts.method, param) {
            Need::Nothing | Need::Handler => Ok(()),
            Need::Resource(resource, name, access) => acl.require(resource, &name, access),
            Need::Scope(scope, access) => acl.require_scope(scope, access),
        };
        if let Err(e) = allowed {
            return e.into_response();
        }
        request = Request::from_parts(parts, body);
    }
    request.extensions_mut().insert(acl.clone());
    let mut response = next.run(request).await;
    if acl.filtered() > 0 {
        let (name, value) = filtered_header();
        response.headers_mut().insert(name, value);
    }
    response
}

/// Tokens a client agent resolved through a server, kept for `acl.token_ttl`. Bounded like
/// the server's cache: emptied when full.
#[derive(Default)]
pub struct RemoteTokens {
    tokens: Mutex<HashMap<String, (Instant, Arc<ResolvedToken>)>>,
}

const REMOTE_TOKENS_MAX: usize = 4096;

impl HttpContext {
    /// What `secret` (the default token when `None`) may do: from the local replica on a
    /// server, through a server on a client agent.
    pub async fn resolve_token(&self, secret: Option<&str>) -> Result<Arc<ResolvedToken>, ApiError> {
        if !self.acl.enabled() || self.cluster.is_server() {
            return self.acl.resolve(secret).map_err(acl_error);
        }
        let secret = secret.filter(|s| !s.is_empty()).map_or_else(|| self.acl.default_secret(), str::to_string);
        let ttl = self.acl.config().token_ttl;
        {
            let tokens = self.remote_tokens.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, token)) = tokens.get(&secret) {
                if at.elapsed() < ttl {
                    return if token.expired(SystemTime::now()) {
                        Err(acl_error(AclError::NotFound))
                    } else {
                        Ok(Arc::clone(token))
                    };
                }
            }
        }
        let call = HttpCall {
            method: "GET".into(),
            uri: GRANTS_PATH.into(),
            headers: vec![(X_CONSUL_TOKEN.to_string(), secret.clone())],
        };
        let (answer, body) = self.cluster.forward_http(call, Vec::new()).await?;
        if answer.status == 403 {
            return Err(acl_error(AclError::NotFound));
        }
        if answer.status != 200 {
            return Err(ApiError::Internal(format!(
                "cannot resolve the ACL token through a server: status {}: {}",
                answer.status,
                String::from_utf8_lossy(&body)
            )));
        }
        let grants: TokenGrants = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Internal(format!("a server's answer about an ACL token is unreadable: {e}")))?;
        let token = Arc::new(ResolvedToken::from_grants(&grants, self.acl.config().default_allow));
        if token.expired(SystemTime::now()) {
            return Err(acl_error(AclError::NotFound));
        }
        let mut tokens = self.remote_tokens.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= REMOTE_TOKENS_MAX {
            tokens.clear();
        }
        tokens.insert(secret, (Instant::now(), Arc::clone(&token)));
        Ok(token)
    }
}

pub fn acl_error(e: AclError) -> ApiError {
    match e {
        AclError::NotFound => ApiError::Forbidden("ACL not found".into()),
        AclError::Store(e) => ApiError::Store(e),
    }
}

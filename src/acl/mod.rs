//! ACLs: which token may read or change what. A request presents a token's secret; the
//! [`AclResolver`] finds the token in the replicated state, gathers the rules of its
//! policies, roles and identities into one [`Authorizer`], and keeps it until the ACL tables
//! change (a generation counter the store bumps on every ACL write, so a revoked token is
//! refused from the next request on).
//!
//! Architecture Invariant: `acl` decides, it never answers: HTTP turns a refusal into 403
//! and DNS into an empty answer. With ACLs off every check passes.

pub mod catalog;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use crate::model::acl_rules::{Access, Resource, Rules, RulesError, Scope};

use crate::model::acl::{
    AclNodeIdentity, AclServiceIdentity, AclToken, ANONYMOUS_TOKEN_ACCESSOR, ANONYMOUS_TOKEN_SECRET,
    GLOBAL_MANAGEMENT_POLICY_ID,
};
use crate::store::{ReadView, Store, StoreError};

/// The `acl` section of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclConfig {
    pub enabled: bool,
    /// `default_policy = "allow"`: what no rule names is allowed (ACL management excepted).
    pub default_allow: bool,
    /// `tokens.initial_management`: the leader creates a management token with this secret.
    pub initial_management: Option<String>,
    /// `tokens.agent`: what the agent presents for its own registrations.
    pub agent_token: Option<String>,
    /// `tokens.default`: used for requests (and DNS) that present no token.
    pub default_token: Option<String>,
    /// `enable_token_persistence`: tokens set through `/v1/agent/token` are kept in the data
    /// dir and win over these at the next start.
    pub enable_token_persistence: bool,
    /// How long a client agent keeps a token a server resolved for it (`token_ttl`).
    pub token_ttl: std::time::Duration,
    /// The shortest and longest lifetime a new token may be given (`ExpirationTTL`, or
    /// `ExpirationTime` from its creation); Consul's 1 minute and 24 hours by default.
    pub token_min_expiration_ttl: std::time::Duration,
    pub token_max_expiration_ttl: std::time::Duration,
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            enabled: false,
            default_allow: true,
            initial_management: None,
            agent_token: None,
            default_token: None,
            enable_token_persistence: false,
            token_ttl: std::time::Duration::from_secs(30),
            token_min_expiration_ttl: std::time::Duration::from_secs(60),
            token_max_expiration_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }
}

/// What one token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorizer {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// ACLs are off: everything passes.
    Off,
    /// The global-management policy.
    Management,
    Rules {
        rules: Box<Rules>,
        default_allow: bool,
    },
}

impl Authorizer {
    pub fn off() -> Authorizer {
        Authorizer { kind: Kind::Off }
    }

    pub fn management() -> Authorizer {
        Authorizer { kind: Kind::Management }
    }

    pub fn from_rules(rules: Rules, default_allow: bool) -> Authorizer {
        Authorizer { kind: Kind::Rules { rules: Box::new(rules), default_allow } }
    }

    pub fn enabled(&self) -> bool {
        self.kind != Kind::Off
    }

    pub fn is_management(&self) -> bool {
        matches!(self.kind, Kind::Off | Kind::Management)
    }

    /// The access to one named resource: its exact rule, else its longest prefix rule, else
    /// the default policy.
    pub fn access(&self, resource: Resource, name: &str) -> Access {
        match &self.kind {
            Kind::Off | Kind::Management => Access::Write,
            Kind::Rules { rules, default_allow } => {
                rules.lookup(resource, name).unwrap_or(if *default_allow { Access::Write } else { Access::Deny })
            }
        }
    }

    pub fn allows(&self, resource: Resource, name: &str, need: Access) -> bool {
        self.access(resource, name) >= need
    }

    /// Whether `need` is granted on `prefix` and on everything under it: what deleting a
    /// whole KV prefix needs (a deny on one key below refuses it).
    pub fn allows_prefix(&self, resource: Resource, prefix: &str, need: Access) -> bool {
        if !self.allows(resource, prefix, need) {
            return false;
        }
        match &self.kind {
            Kind::Off | Kind::Management => true,
            Kind::Rules { rules, .. } => rules.below(resource, prefix).all(|access| access >= need),
        }
    }

    /// The access to a resource-wide scope (`operator`, `acl`, `keyring`). ACL management is
    /// never granted by the default policy, only by a rule or the management policy.
    pub fn scope(&self, scope: Scope) -> Access {
        match &self.kind {
            Kind::Off | Kind::Management => Access::Write,
            Kind::Rules { rules, default_allow } => rules
                .scope(scope)
                .unwrap_or(if *default_allow && scope != Scope::Acl { Access::Write } else { Access::Deny }),
        }
    }

    pub fn allows_scope(&self, scope: Scope, need: Access) -> bool {
        self.scope(scope) >= need
    }
}

/// A token found in the state, with what it may do.
#[derive(Debug)]
pub struct ResolvedToken {
    /// Empty when ACLs are off.
    pub accessor_id: String,
    pub authorizer: Authorizer,
    /// When the token stops working (its `ExpirationTime`), if it expires.
    pub expires: Option<SystemTime>,
}

impl ResolvedToken {
    /// What every request may do while ACLs are off.
    pub fn off() -> ResolvedToken {
        ResolvedToken { accessor_id: String::new(), authorizer: Authorizer::off(), expires: None }
    }

    /// What `grants` amount to under `default_allow`.
    pub fn from_grants(grants: &TokenGrants, default_allow: bool) -> ResolvedToken {
        ResolvedToken {
            accessor_id: grants.accessor_id.clone(),
            authorizer: grants.authorizer(default_allow),
            expires: grants.expires_at(),
        }
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }
}

/// What a token's policies, roles and identities amount to, gathered from the state (a
/// server) or from a server's answer (a client agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TokenGrants {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    pub management: bool,
    /// The rules text of every policy that applies in this datacenter.
    pub rules: Vec<String>,
    pub service_identities: Vec<AclServiceIdentity>,
    pub node_identities: Vec<AclNodeIdentity>,
    /// The token's `ExpirationTime`, so that a client agent keeps it no longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
}

impl TokenGrants {
    /// Everything `token` is granted in `datacenter`: its policies and its roles' policies
    /// (those limited to other datacenters left out; links to deleted ones ignored), and its
    /// and its roles' identities.
    pub fn of(view: &ReadView<'_>, token: &AclToken, datacenter: &str) -> Result<TokenGrants, StoreError> {
        let mut grants = TokenGrants {
            accessor_id: token.accessor_id.clone(),
            expiration_time: token.expiration_time.clone(),
            ..TokenGrants::default()
        };
        let mut policy_ids: Vec<String> = token.policies.iter().map(|l| l.id.clone()).collect();
        grants.service_identities.extend(token.service_identities.iter().cloned());
        grants.node_identities.extend(token.node_identities.iter().cloned());
        for link in &token.roles {
            if let Some(role) = view.acl_role(&link.id)? {
                policy_ids.extend(role.policies.iter().map(|l| l.id.clone()));
                grants.service_identities.extend(role.service_identities);
                grants.node_identities.extend(role.node_identities);
            }
        }
        policy_ids.sort();
        policy_ids.dedup();
        for id in policy_ids {
            if id == GLOBAL_MANAGEMENT_POLICY_ID {
                grants.management = true;
                continue;
            }
            if let Some(policy) = view.acl_policy(&id)? {
                if policy.datacenters.is_empty() || policy.datacenters.iter().any(|dc| dc == datacenter) {
                    grants.rules.push(policy.rules);
                }
            }
        }
        grants.service_identities.retain(|s| s.datacenters.is_empty() || s.datacenters.iter().any(|d| d == datacenter));
        grants.node_identities.retain(|n| n.datacenter.is_empty() || n.datacenter == datacenter);
        Ok(grants)
    }

    /// When the token stops working; see [`AclToken::expires_at`].
    pub fn expires_at(&self) -> Option<SystemTime> {
        crate::model::acl::expires_at(self.expiration_time.as_deref())
    }

    /// The authorizer these grants make under `default_allow`. Rules that no longer parse
    /// (none can be stored) grant nothing.
    pub fn authorizer(&self, default_allow: bool) -> Authorizer {
        if self.management {
            return Authorizer::management();
        }
        let mut rules = Rules::default();
        for text in &self.rules {
            match Rules::parse(text) {
                Ok(parsed) => rules.merge(&parsed),
                Err(e) => {
                    tracing::warn!(accessor = %self.accessor_id, error = %e, "ignoring a policy whose rules do not parse")
                }
            }
        }
        // Consul's templates for identities.
        for s in &self.service_identities {
            rules.grant(Resource::Service, &s.service_name, false, Access::Write);
            rules.grant(Resource::Service, &format!("{}-sidecar-proxy", s.service_name), false, Access::Write);
            rules.grant(Resource::Service, "", true, Access::Read);
            rules.grant(Resource::Node, "", true, Access::Read);
        }
        for n in &self.node_identities {
            rules.grant(Resource::Node, &n.node_name, false, Access::Write);
            rules.grant(Resource::Service, "", true, Access::Read);
        }
        Authorizer::from_rules(rules, default_allow)
    }
}

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The secret names no token, or one that has expired (Consul's wording for both).
    #[error("ACL not found")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolved tokens kept at most; when full the cache is emptied (tokens are few, and each
/// entry is rebuilt from the state on its next use).
const CACHED_TOKENS_MAX: usize = 4096;

/// Resolves secrets to authorizers from the local replica, caching each until the ACL
/// tables change.
pub struct AclResolver {
    config: AclConfig,
    tokens: Arc<tokens::AgentTokens>,
    datacenter: String,
    store: Store,
    cache: Mutex<HashMap<String, (u64, Arc<ResolvedToken>)>>,
    off: Arc<ResolvedToken>,
}

impl AclResolver {
    pub fn new(config: AclConfig, tokens: Arc<tokens::AgentTokens>, datacenter: String, store: Store) -> AclResolver {
        let off = Arc::new(ResolvedToken::off());
        AclResolver { config, tokens, datacenter, store, cache: Mutex::default(), off }
    }

    /// The agent's own tokens (default and agent), as they are now.
    pub fn tokens(&self) -> &tokens::AgentTokens {
        &self.tokens
    }

    /// Moves whenever what a token may do could have changed: an ACL write replicated here,
    /// or one of the agent's own tokens replaced.
    pub fn generation(&self) -> u64 {
        self.store.acl_generation().wrapping_add(self.tokens.generation())
    }

    pub fn config(&self) -> &AclConfig {
        &self.config
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// The secret a request without a token acts with: the agent's default token, else the
    /// anonymous token.
    pub fn default_secret(&self) -> String {
        self.tokens.default_token().unwrap_or_else(|| ANONYMOUS_TOKEN_SECRET.to_string())
    }

    /// What `secret` (the default when `None`) may do, from this replica. An expired token is
    /// refused from its expiration time on, whether or not the leader has deleted it yet.
    pub fn resolve(&self, secret: Option<&str>) -> Result<Arc<ResolvedToken>, AclError> {
        if !self.config.enabled {
            return Ok(Arc::clone(&self.off));
        }
        let default;
        let secret = match secret.filter(|s| !s.is_empty()) {
            Some(secret) => secret,
            None => {
                default = self.default_secret();
                &default
            }
        };
        // Read before the state: an entry built from older state then carries an older
        // generation and is dropped at its next use.
        let generation = self.store.acl_generation();
        if let Some((cached_generation, resolved)) = self.cached(secret) {
            if cached_generation == generation {
                return if resolved.expired(SystemTime::now()) { Err(AclError::NotFound) } else { Ok(resolved) };
            }
        }
        let grants = self.grants(secret)?;
        let resolved = Arc::new(ResolvedToken::from_grants(&grants, self.config.default_allow));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED_TOKENS_MAX {
            cache.clear();
        }
        cache.insert(secret.to_string(), (generation, Arc::clone(&resolved)));
        Ok(resolved)
    }

    fn cached(&self, secret: &str) -> Option<(u64, Arc<ResolvedToken>)> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(secret).map(|(g, r)| (*g, Arc::clone(r)))
    }

    /// What `secret` is granted, read from the state: what a server answers a client agent
    /// that resolves a token through it. An expired token is not found.
    pub fn grants(&self, secret: &str) -> Result<TokenGrants, AclError> {
        let view = self.store.read()?;
        let token = match view.acl_token_by_secret(secret)? {
            Some(token) if token.expired(SystemTime::now()) => return Err(AclError::NotFound),
            Some(token) => token,
            // The anonymous token exists once ACLs are bootstrapped; before that it grants
            // nothing (the default policy decides).
            None if secret == ANONYMOUS_TOKEN_SECRET => {
                AclToken { accessor_id: ANONYMOUS_TOKEN_ACCESSOR.into(), ..AclToken::default() }
            }
            None => return Err(AclError::NotFound),
        };
        Ok(TokenGrants::of(&view, &token, &self.datacenter)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_decides_what_no_rule_names_but_never_acl() {
        let rules = Rules::parse(r#"key_prefix "app/" { policy = "read" }"#).expect("rules");
        let deny = Authorizer::from_rules(rules.clone(), false);
        assert!(deny.allows(Resource::Key, "app/x", Access::Read));
        assert!(!deny.allows(Resource::Key, "app/x", Access::Write));
        assert!(!deny.allows(Resource::Key, "other", Access::Read));
        assert!(!deny.allows_scope(Scope::Operator, Access::Read));
        let allow = Authorizer::from_rules(rules, true);
        assert!(allow.allows(Resource::Key, "other", Access::Write));
        assert!(!allow.allows(Resource::Key, "app/x", Access::Write));
        assert!(allow.allows_scope(Scope::Operator, Access::Write));
        assert!(!allow.allows_scope(Scope::Acl, Access::Read));
        assert!(Authorizer::management().allows_scope(Scope::Acl, Access::Write));
        assert!(Authorizer::off().allows_scope(Scope::Acl, Access::Write));
    }

    #[test]
    fn a_prefix_is_writable_only_when_nothing_below_is_denied() {
        let rules =
            Rules::parse("key_prefix \"app/\" { policy = \"write\" }\nkey \"app/locked\" { policy = \"read\" }")
                .expect("rules");
        let a = Authorizer::from_rules(rules, false);
        assert!(a.allows_prefix(Resource::Key, "app/sub/", Access::Write));
        assert!(!a.allows_prefix(Resource::Key, "app/", Access::Write));
        assert!(!a.allows_prefix(Resource::Key, "", Access::Write));
    }

    #[test]
    fn identities_follow_consuls_templates() {
        let grants = TokenGrants {
            service_identities: vec![AclServiceIdentity { service_name: "web".into(), datacenters: vec![] }],
            node_identities: vec![AclNodeIdentity { node_name: "n1".into(), datacenter: "dc1".into() }],
            ..TokenGrants::default()
        };
        let a = grants.authorizer(false);
        assert!(a.allows(Resource::Service, "web", Access::Write));
        assert!(a.allows(Resource::Service, "web-sidecar-proxy", Access::Write));
        assert!(!a.allows(Resource::Service, "db", Access::Write));
        assert!(a.allows(Resource::Service, "db", Access::Read));
        assert!(a.allows(Resource::Node, "n1", Access::Write));
        assert!(!a.allows(Resource::Node, "n2", Access::Write));
        assert!(a.allows(Resource::Node, "n2", Access::Read));
        assert!(!a.allows(Resource::Key, "x", Access::Read));
    }
}

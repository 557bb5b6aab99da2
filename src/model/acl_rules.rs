//! Policy rules: Consul's HCL or JSON text (`key_prefix "app/" { policy = "write" }`,
//! `operator = "read"`) parsed into per-resource tables, and merged across the policies of a
//! token. Pure: no store, no I/O. It lives in `model` because the state machine checks a
//! policy's rules when it applies one; `crate::acl` builds authorizers from them.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// What a rule grants. Ordered by how much it allows: a check for `Read` passes on `Read`
/// or `Write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    Deny,
    /// Keys only: list the keys under a prefix, not read their values.
    List,
    Read,
    Write,
}

impl Access {
    fn parse(text: &str) -> Option<Access> {
        match text {
            "deny" => Some(Access::Deny),
            "list" => Some(Access::List),
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            _ => None,
        }
    }

    /// When two policies of one token name the same resource: deny wins, then the more
    /// permissive (Consul's policy merger).
    fn merge(self, other: Access) -> Access {
        if self == Access::Deny || other == Access::Deny {
            Access::Deny
        } else {
            self.max(other)
        }
    }
}

/// The resources that rules name one by one (`key "a"`) or by prefix (`key_prefix "a"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Key,
    Service,
    Node,
    Session,
    Agent,
    Event,
    Query,
}

impl Resource {
    pub const ALL: [Resource; 7] = [
        Resource::Key,
        Resource::Service,
        Resource::Node,
        Resource::Session,
        Resource::Agent,
        Resource::Event,
        Resource::Query,
    ];

    /// Its place in [`Resource::ALL`].
    fn index(self) -> usize {
        self as usize
    }

    pub fn rule_name(self) -> &'static str {
        match self {
            Resource::Key => "key",
            Resource::Service => "service",
            Resource::Node => "node",
            Resource::Session => "session",
            Resource::Agent => "agent",
            Resource::Event => "event",
            Resource::Query => "query",
        }
    }
}

/// The resource-wide rules (`operator = "read"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Operator,
    Acl,
    Keyring,
    Mesh,
    Peering,
}

impl Scope {
    const ALL: [Scope; 5] = [Scope::Operator, Scope::Acl, Scope::Keyring, Scope::Mesh, Scope::Peering];

    fn rule_name(self) -> &'static str {
        match self {
            Scope::Operator => "operator",
            Scope::Acl => "acl",
            Scope::Keyring => "keyring",
            Scope::Mesh => "mesh",
            Scope::Peering => "peering",
        }
    }
}

/// The rules of one resource kind: exact names, and prefixes longest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRules {
    exact: HashMap<String, Access>,
    /// Longest prefix first, so the first match is the most specific.
    prefixes: Vec<(String, Access)>,
}

impl ResourceRules {
    /// The rule for `name`: an exact rule beats any prefix, a longer prefix a shorter one.
    pub fn lookup(&self, name: &str) -> Option<Access> {
        // Most policies name prefixes only: no hashing then.
        if let Some(access) = (!self.exact.is_empty()).then(|| self.exact.get(name)).flatten() {
            return Some(*access);
        }
        self.prefixes.iter().find(|(prefix, _)| name.starts_with(prefix.as_str())).map(|(_, a)| *a)
    }

    fn add_exact(&mut self, name: &str, access: Access) {
        let merged = self.exact.get(name).map_or(access, |old| old.merge(access));
        self.exact.insert(name.to_string(), merged);
    }

    fn add_prefix(&mut self, prefix: &str, access: Access) {
        match self.prefixes.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, old)) => *old = old.merge(access),
            None => {
                self.prefixes.push((prefix.to_string(), access));
                self.prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            }
        }
    }

    fn merge(&mut self, other: &ResourceRules) {
        for (name, access) in &other.exact {
            self.add_exact(name, *access);
        }
        for (prefix, access) in &other.prefixes {
            self.add_prefix(prefix, *access);
        }
    }
}

/// Every rule of one or more policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// By [`Resource::index`]: a lookup on the DNS path is an array index, not a hash.
    resources: [ResourceRules; Resource::ALL.len()],
    scopes: HashMap<Scope, Access>,
}

/// A policy's rules that cannot be used, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Failed to parse ACL rules: {0}")]
pub struct RulesError(pub String);

impl Rules {
    /// Parses rules in HCL or JSON (text starting with `{`). Unknown rule names, a block
    /// without `policy`, and a policy other than read, write, deny (or list, for keys) are
    /// errors naming the rule.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let value: Value = if text.trim().is_empty() {
            Value::Object(Map::new())
        } else if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| RulesError(format!("invalid JSON: {e}")))?
        } else {
            hcl::from_str(text).map_err(|e| RulesError(format!("invalid HCL: {}", e.to_string().trim())))?
        };
        let Value::Object(top) = value else {
            return Err(RulesError("rules must be an object".into()));
        };
        let mut rules = Rules::default();
        for (name, value) in &top {
            if let Some(scope) = Scope::ALL.into_iter().find(|s| s.rule_name() == name) {
                let access = scope_access(name, value)?;
                rules.scopes.insert(scope, access);
                continue;
            }
            let (resource, prefix) = Resource::ALL
                .into_iter()
                .find_map(|r| {
                    if name == r.rule_name() {
                        Some((r, false))
                    } else if name.strip_prefix(r.rule_name()) == Some("_prefix") {
                        Some((r, true))
                    } else {
                        None
                    }
                })
                .ok_or_else(|| RulesError(format!("unknown rule {name:?}")))?;
            let Value::Object(blocks) = value else {
                return Err(RulesError(format!(
                    "{name} must be a block with a name, as {name} \"x\" {{ policy = \"read\" }}"
                )));
            };
            let table = &mut rules.resources[resource.index()];
            for (target, block) in blocks {
                let access = block_access(name, target, block, resource == Resource::Key)?;
                if prefix {
                    table.add_prefix(target, access);
                } else {
                    table.add_exact(target, access);
                }
            }
        }
        Ok(rules)
    }

    /// Adds `other`'s rules: where both name the same thing, deny wins, then the more
    /// permissive.
    pub fn merge(&mut self, other: &Rules) {
        for (table, other) in self.resources.iter_mut().zip(&other.resources) {
            table.merge(other);
        }
        for (scope, access) in &other.scopes {
            let merged = self.scopes.get(scope).map_or(*access, |old| old.merge(*access));
            self.scopes.insert(*scope, merged);
        }
    }

    /// The rule for one named resource, if any names it.
    pub fn lookup(&self, resource: Resource, name: &str) -> Option<Access> {
        self.resources[resource.index()].lookup(name)
    }

    /// The access of every rule that names something under `prefix` (longer than it).
    pub fn below<'r>(&'r self, resource: Resource, prefix: &'r str) -> impl Iterator<Item = Access> + 'r {
        let table = &self.resources[resource.index()];
        let exact = table.exact.iter().filter(move |(name, _)| name.starts_with(prefix)).map(|(_, a)| *a);
        let prefixes = table
            .prefixes
            .iter()
            .filter(move |(p, _)| p.len() > prefix.len() && p.starts_with(prefix))
            .map(|(_, a)| *a);
        exact.chain(prefixes)
    }

    pub fn scope(&self, scope: Scope) -> Option<Access> {
        self.scopes.get(&scope).copied()
    }

    /// Adds one rule (templated identities use it).
    pub fn grant(&mut self, resource: Resource, name: &str, prefix: bool, access: Access) {
        let table = &mut self.resources[resource.index()];
        if prefix {
            table.add_prefix(name, access);
        } else {
            table.add_exact(name, access);
        }
    }
}

fn scope_access(name: &str, value: &Value) -> Result<Access, RulesError> {
    let text = value.as_str().ok_or_else(|| RulesError(format!("{name} must be a string, as {name} = \"read\"")))?;
    match Access::parse(text) {
        Some(Access::List) | None => {
            Err(RulesError(format!("invalid {name} policy {text:?}: expected \"read\", \"write\" or \"deny\"")))
        }
        Some(access) => Ok(access),
    }
}

fn block_access(name: &str, target: &str, block: &Value, list_allowed: bool) -> Result<Access, RulesError> {
    let Value::Object(fields) = block else {
        return Err(RulesError(format!("{name} {target:?} must be a block, as {{ policy = \"read\" }}")));
    };
    let mut access = None;
    for (field, value) in fields {
        match field.as_str() {
            "policy" => {
                let text = value.as_str().unwrap_or_default();
                access = match Access::parse(text) {
                    Some(Access::List) if !list_allowed => None,
                    other => other,
                };
                if access.is_none() {
                    let expected = if list_allowed {
                        "\"read\", \"write\", \"list\" or \"deny\""
                    } else {
                        "\"read\", \"write\" or \"deny\""
                    };
                    return Err(RulesError(format!(
                        "invalid policy {value} for {name} {target:?}: expected {expected}"
                    )));
                }
            }
            // Service mesh intentions: accepted so Consul policies load; cairn has no mesh.
            "intentions" => {}
            other => return Err(RulesError(format!("unknown field {other:?} in {name} {target:?}"))),
        }
    }
    access.ok_or_else(|| RulesError(format!("{name} {target:?} has no policy")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_and_json_give_the_same_rules() {
        let hcl = r#"
            key_prefix "app/" { policy = "write" }
            key "app/secret" { policy = "deny" }
            service_prefix "" { policy = "read" }
            operator = "read"
        "#;
        let json = r#"{"key_prefix": {"app/": {"policy": "write"}}, "key": {"app/secret": {"policy": "deny"}},
                       "service_prefix": {"": {"policy": "read"}}, "operator": "read"}"#;
        let a = Rules::parse(hcl).expect("hcl");
        assert_eq!(a, Rules::parse(json).expect("json"));
        assert_eq!(a.lookup(Resource::Key, "app/x"), Some(Access::Write));
        assert_eq!(a.lookup(Resource::Key, "app/secret"), Some(Access::Deny));
        assert_eq!(a.lookup(Resource::Key, "other/x"), None);
        assert_eq!(a.lookup(Resource::Service, "web"), Some(Access::Read));
        assert_eq!(a.scope(Scope::Operator), Some(Access::Read));
        assert_eq!(a.scope(Scope::Acl), None);
    }

    #[test]
    fn exact_beats_longest_prefix_beats_shorter() {
        let r = Rules::parse(
            r#"key_prefix "" { policy = "read" }
               key_prefix "a/" { policy = "deny" }
               key_prefix "a/b/" { policy = "write" }
               key "a/b/c" { policy = "read" }"#,
        )
        .expect("rules");
        assert_eq!(r.lookup(Resource::Key, "z"), Some(Access::Read));
        assert_eq!(r.lookup(Resource::Key, "a/x"), Some(Access::Deny));
        assert_eq!(r.lookup(Resource::Key, "a/b/x"), Some(Access::Write));
        assert_eq!(r.lookup(Resource::Key, "a/b/c"), Some(Access::Read));
        assert_eq!(r.lookup(Resource::Key, "a/b/cd"), Some(Access::Write));
    }

    #[test]
    fn merging_policies_deny_wins_then_most_permissive() {
        let mut a =
            Rules::parse("service \"web\" { policy = \"read\" }\nnode \"n1\" { policy = \"write\" }").expect("a");
        let b = Rules::parse(
            "service \"web\" { policy = \"write\" }\nnode \"n1\" { policy = \"deny\" }\noperator = \"write\"",
        )
        .expect("b");
        a.merge(&b);
        assert_eq!(a.lookup(Resource::Service, "web"), Some(Access::Write));
        assert_eq!(a.lookup(Resource::Node, "n1"), Some(Access::Deny));
        assert_eq!(a.scope(Scope::Operator), Some(Access::Write));
    }

    #[test]
    fn bad_rules_are_named() {
        for (text, expected) in [
            (r#"kye_prefix "a" { policy = "read" }"#, "unknown rule \"kye_prefix\""),
            (r#"key_prefix "a" { policy = "rread" }"#, "invalid policy \"rread\" for key_prefix \"a\""),
            (r#"service "a" { policy = "list" }"#, "invalid policy \"list\" for service \"a\""),
            (r#"service "a" { }"#, "service \"a\" has no policy"),
            (r#"service "a" { polcy = "read" }"#, "unknown field \"polcy\""),
            (r#"operator = "list""#, "invalid operator policy \"list\""),
            (r#"key_prefix "a" { policy = "#, "invalid HCL"),
            (r#"{"key": 3}"#, "key must be a block"),
            ("[1]", "invalid HCL"),
        ] {
            let err = Rules::parse(text).expect_err(text).to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn key_list_is_below_read() {
        let r = Rules::parse(r#"key_prefix "logs/" { policy = "list" }"#).expect("rules");
        let access = r.lookup(Resource::Key, "logs/a").expect("rule");
        assert!(access >= Access::List && access < Access::Read);
    }
}

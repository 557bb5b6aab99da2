//! ACL tokens, policies and roles as stored in the replicated state and spoken by the API
//! (Consul's shapes). A token's secret is what clients present; its accessor ID is the name
//! it is managed by. Policies hold rules (HCL or JSON text, parsed by `crate::acl`).

use serde::{Deserialize, Serialize};

/// The built-in policy that grants everything (Consul's ID and name).
pub const GLOBAL_MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const GLOBAL_MANAGEMENT_POLICY_NAME: &str = "global-management";
/// The token requests without one resolve to (Consul's accessor ID and secret).
pub const ANONYMOUS_TOKEN_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
pub const ANONYMOUS_TOKEN_SECRET: &str = "anonymous";

/// A token's secret held outside the ACL tables: a local service's registration token, or
/// one on the server RPC. Never printed (`Debug` shows `<hidden>`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// A reference to a policy or a role: by ID, or by name when the ID is empty (the API
/// accepts either; the state stores both).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclLink {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
}

/// A service identity: write on the service (and its sidecar), read on every service and
/// node, as Consul templates it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclServiceIdentity {
    pub service_name: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// A node identity: write on the node, read on every service.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclNodeIdentity {
    pub node_name: String,
    pub datacenter: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    pub description: String,
    pub policies: Vec<AclLink>,
    pub roles: Vec<AclLink>,
    pub service_identities: Vec<AclServiceIdentity>,
    pub node_identities: Vec<AclNodeIdentity>,
    pub local: bool,
    /// RFC 3339, set when created.
    pub create_time: String,
    /// RFC 3339: from then on the token is refused, and the leader deletes it. Set when
    /// created (from `ExpirationTTL` or given), never changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl AclToken {
    /// When the token stops working, if it expires. A time that does not parse (none can be
    /// stored through the API) counts as already past: a token is never kept by mistake.
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        expires_at(self.expiration_time.as_deref())
    }

    pub fn expired(&self, now: std::time::SystemTime) -> bool {
        self.expires_at().is_some_and(|at| at <= now)
    }
}

/// When a token with this `ExpirationTime` stops working; see [`AclToken::expires_at`].
pub fn expires_at(expiration_time: Option<&str>) -> Option<std::time::SystemTime> {
    Some(parse_rfc3339(expiration_time?).unwrap_or(std::time::UNIX_EPOCH))
}

/// An RFC 3339 time as Consul writes them (`2026-12-07T10:00:00Z`, fractions and offsets
/// allowed).
pub fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = at.unix_timestamp_nanos();
    let since_epoch = std::time::Duration::from_nanos(u64::try_from(nanos).ok()?);
    Some(std::time::UNIX_EPOCH + since_epoch)
}

/// `at` in RFC 3339, UTC.
pub fn format_rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclPolicy {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
    pub datacenters: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclRole {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub policies: Vec<AclLink>,
    pub service_identities: Vec<AclServiceIdentity>,
    pub node_identities: Vec<AclNodeIdentity>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl AclPolicy {
    /// The built-in management policy, as the state creates it at bootstrap.
    pub fn global_management() -> AclPolicy {
        AclPolicy {
            id: GLOBAL_MANAGEMENT_POLICY_ID.into(),
            name: GLOBAL_MANAGEMENT_POLICY_NAME.into(),
            description: "Builtin Policy that grants unlimited access".into(),
            rules: String::new(),
            ..AclPolicy::default()
        }
    }
}

/// Policy and role names: what Consul accepts.
pub fn valid_acl_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

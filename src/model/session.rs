//! Sessions: what a lock in KV is held by. A session belongs to a node and is tied to some of
//! its health checks; it ends (is invalidated) when it is destroyed, when its TTL runs out,
//! when one of those checks turns critical, or when the node or a check is deregistered.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to the keys a session holds when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The keys stay, unlocked.
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

impl SessionBehavior {
    pub fn parse(text: &str) -> Option<SessionBehavior> {
        match text {
            "release" => Some(SessionBehavior::Release),
            "delete" => Some(SessionBehavior::Delete),
            _ => None,
        }
    }
}

/// A service check a session is tied to, as Consul names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheckRef {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub namespace: String,
}

/// A session as stored (and as `SessionCreate` carries it, indexes 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub node_checks: Vec<String>,
    pub service_checks: Vec<ServiceCheckRef>,
    /// How long the keys it held stay unlockable after an invalidation.
    pub lock_delay_ms: u64,
    pub behavior: SessionBehavior,
    /// 0: no TTL.
    pub ttl_ms: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Session {
    /// Shortest and longest TTL a session may have (Consul's bounds).
    pub const TTL_MIN: Duration = Duration::from_secs(10);
    pub const TTL_MAX: Duration = Duration::from_secs(86_400);
    /// The leader invalidates a TTL session only after this many TTLs without renewal, as
    /// Consul does: clients renew at about half the TTL, and a new leader starts counting anew.
    pub const TTL_GRACE_FACTOR: u32 = 2;
    pub const LOCK_DELAY_DEFAULT: Duration = Duration::from_secs(15);
    /// Consul caps the lock delay at one minute.
    pub const LOCK_DELAY_MAX: Duration = Duration::from_secs(60);

    /// Every check this session is tied to (node and service checks are both checks of its
    /// node, whose IDs are unique per node).
    pub fn check_ids(&self) -> impl Iterator<Item = &str> {
        self.node_checks.iter().map(String::as_str).chain(self.service_checks.iter().map(|c| c.id.as_str()))
    }

    pub fn ttl(&self) -> Option<Duration> {
        (self.ttl_ms > 0).then(|| Duration::from_millis(self.ttl_ms))
    }
}

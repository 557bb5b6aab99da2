//! Who a gossip member is ([`MemberId`], foca's identity) and what the API shows of it
//! ([`MemberInfo`]).
//!
//! A `MemberId` travels in every gossip packet, so it holds only what peers need to act on:
//! the node name, the gossip address, a boot stamp that tells a restarted agent from its old
//! self, and the tags (`role`, `dc`, server RPC port, build, node ID).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The gossip protocol version this build speaks; members with another are refused.
pub const PROTOCOL_VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    Server,
    Client,
}

/// A member's identity: foca keeps one per node name ([`foca::Identity::addr`]; node names
/// are unique in a datacenter, as in Consul), and of two with the same name the higher `boot`
/// wins, so a restarted agent replaces its old self — even on another address or port —
/// instead of being mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub name: String,
    pub addr: SocketAddr,
    /// Milliseconds since the Unix epoch at start, plus one per renewal after being declared
    /// failed: strictly increasing for one address as long as clocks do not step back.
    pub boot: u64,
    pub role: Role,
    pub datacenter: String,
    /// Server RPC port (servers only; 0 for clients).
    pub server_port: u16,
    /// The node's UUID, as 16 bytes.
    pub node_id: [u8; 16],
    /// cairn's version (`CARGO_PKG_VERSION`).
    pub build: String,
    pub protocol: u8,
}

impl foca::Identity for MemberId {
    /// A 128-bit hash of the node name: foca compares addresses on every update it applies
    /// (a linear scan of its member list), so they must be cheap to copy and compare.
    type Addr = u128;

    fn renew(&self) -> Option<Self> {
        Some(MemberId { boot: self.boot + 1, ..self.clone() })
    }

    fn addr(&self) -> u128 {
        name_key(&self.name)
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

/// FNV-1a (128-bit) of a node name: stable across builds, and collisions among a cluster's
/// names are out of reach (~10⁻²⁹ for 10,000 names).
pub fn name_key(name: &str) -> u128 {
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in name.as_bytes() {
        hash ^= u128::from(*b);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    hash
}

impl MemberId {
    pub fn node_id_string(&self) -> String {
        uuid::Uuid::from_bytes(self.node_id).hyphenated().to_string()
    }

    /// Consul's member tags.
    pub fn tags(&self) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::from([
            ("role".to_string(), if self.role == Role::Server { "consul" } else { "node" }.to_string()),
            ("dc".to_string(), self.datacenter.clone()),
            ("build".to_string(), format!("{}:cairn-{}", crate::model::CONSUL_API_VERSION, self.build)),
            ("vsn".to_string(), "2".to_string()),
            ("vsn_min".to_string(), "2".to_string()),
            ("vsn_max".to_string(), "3".to_string()),
            ("id".to_string(), self.node_id_string()),
            ("gossip_protocol".to_string(), self.protocol.to_string()),
        ]);
        if self.role == Role::Server {
            tags.insert("port".to_string(), self.server_port.to_string());
        }
        tags
    }
}

/// A member's status as Consul numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemberStatus {
    Alive = 1,
    Leaving = 2,
    Left = 3,
    Failed = 4,
}

impl MemberStatus {
    pub fn name(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// One member as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: MemberId,
    pub status: MemberStatus,
}

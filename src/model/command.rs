//! The versioned command set. A Raft log entry carries one [`Proposal`]: a batch of commands
//! applied in order, so that many concurrent writes share one log append and one fsync.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::acl::{AclPolicy, AclRole, AclToken};
use super::{CheckStatus, KvEntry, ServiceAddress, Session, Weights};

/// The payload of one Raft log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Format version of this entry; 1 is the only one so far.
    pub v: u32,
    pub commands: Vec<Command>,
    /// The leader's wall clock (Unix ms) when it appended the entry: the one "now" every
    /// replica applies it at (lock delays). Absent in entries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_time_ms: Option<u64>,
}

impl Proposal {
    pub const VERSION: u32 = 1;

    pub fn new(commands: Vec<Command>) -> Self {
        Proposal { v: Self::VERSION, commands, leader_time_ms: None }
    }
}

/// A state change. Variants are never renamed or removed (see the module docs of `model`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `PUT /v1/catalog/register`: upsert a node, optionally a service and checks.
    Register(Box<RegisterRequest>),
    /// `PUT /v1/catalog/deregister`: remove a node, or one of its services or checks.
    Deregister(DeregisterRequest),
    /// `PUT /v1/kv/{key}`; with `cas`, only when the key's ModifyIndex equals it (0 = absent).
    KvSet {
        key: String,
        #[serde(with = "opt_base64")]
        value: Option<Vec<u8>>,
        flags: u64,
        cas: Option<u64>,
    },
    /// `DELETE /v1/kv/{key}`; `recurse` deletes the whole prefix.
    KvDelete {
        key: String,
        recurse: bool,
        cas: Option<u64>,
    },
    /// `PUT /v1/txn`: all operations succeed together or none is applied.
    Txn {
        ops: Vec<TxnKvOp>,
    },
    /// `PUT /v1/snapshot`: replace the whole state with a backup archive staged beside the
    /// store. The entry names the file and its checksum instead of carrying the archive, so a
    /// 100 MB restore is a small log entry.
    Restore(RestoreRequest),
    /// `PUT /v1/snapshot` into several servers: the archive travels inside the entry, so
    /// every server restores the same bytes (a staged file exists on one disk only). Up to
    /// [`RESTORE_PART_BYTES`]; a larger archive travels in parts.
    RestoreArchive(RestoreArchive),
    /// One part of a larger archive restored into several servers, in order: kept in the
    /// state machine until [`Command::RestoreParts`]. The part at offset 0 drops the parts
    /// of any restore that never finished.
    RestorePart(RestorePart),
    /// Restores from the parts of `restore` held, if they add up to the archive checked.
    RestoreParts(RestoreParts),
    /// `PUT /v1/session/create`; the ID is chosen by the server that took the request.
    SessionCreate(Box<Session>),
    /// `PUT /v1/session/destroy/{id}`, or the leader's TTL timer running out: invalidates
    /// the session (its keys are released or deleted per its behavior).
    SessionDestroy {
        id: String,
    },
    /// `PUT /v1/kv/{key}?acquire=` / `?release=`: sets the value and takes or gives up the
    /// lock held by `session`.
    KvLock {
        key: String,
        #[serde(with = "opt_base64")]
        value: Option<Vec<u8>>,
        flags: u64,
        session: String,
        op: KvLockOp,
    },
    /// `POST /v1/query` (a new ID) or `PUT /v1/query/{id}`: stores a prepared query.
    PreparedQuerySet(Box<super::PreparedQuery>),
    /// `DELETE /v1/query/{id}`.
    PreparedQueryDelete {
        id: String,
    },
    /// `PUT /v1/acl/bootstrap` (refused once done), or the leader creating
    /// `acl.tokens.initial_management` (`initial`: stored even after a bootstrap). Creates the
    /// built-in management policy and links the token to it.
    AclBootstrap {
        token: Box<AclToken>,
        initial: bool,
    },
    /// `PUT /v1/acl/token[/{accessor}]`: creates or replaces a token; policy and role links
    /// are resolved by ID or name when applied (an unknown one rejects the command).
    AclTokenSet(Box<AclToken>),
    AclTokenDelete {
        accessor_id: String,
    },
    /// `PUT /v1/acl/policy[/{id}]`: creates or replaces a policy; its name must be unique
    /// and its rules parse.
    AclPolicySet(Box<AclPolicy>),
    AclPolicyDelete {
        id: String,
    },
    AclRoleSet(Box<AclRole>),
    AclRoleDelete {
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvLockOp {
    Acquire,
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreArchive {
    #[serde(with = "base64_bytes")]
    pub archive: Vec<u8>,
    /// The archive's own checksum (its trailer), checked again when applied.
    pub checksum: u64,
}

/// Largest archive (or part of one) carried in one log entry. Small: openraft bounds each
/// append RPC by the heartbeat interval (100 ms at the default timing), and a follower
/// catching up gets up to 16 entries in one append (`max_payload_entries`).
pub const RESTORE_PART_BYTES: u64 = 512 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePart {
    /// Names the restore (the name of the archive staged on the server that took it).
    pub restore: String,
    /// Where these bytes start in the archive.
    pub offset: u64,
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreParts {
    pub restore: String,
    pub size_bytes: u64,
    /// The archive's own checksum (its trailer), checked again when applied.
    pub checksum: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    /// File name (no directories) in the store's staging directory.
    pub archive: String,
    /// The archive's own checksum (its trailer), checked again when applied.
    pub checksum: u64,
    pub size_bytes: u64,
}

impl Command {
    /// Whether the command removes data (and may run when the store is nearly full).
    pub fn frees_space(&self) -> bool {
        matches!(
            self,
            Command::KvDelete { .. }
                | Command::Deregister(_)
                | Command::SessionDestroy { .. }
                | Command::PreparedQueryDelete { .. }
                | Command::AclTokenDelete { .. }
                | Command::AclPolicyDelete { .. }
                | Command::AclRoleDelete { .. }
        )
    }

    /// Rough size in bytes of the command in the log, for batch and map-room limits.
    pub fn approx_size(&self) -> usize {
        const BASE: usize = 256;
        match self {
            Command::KvSet { key, value, .. } | Command::KvLock { key, value, .. } => {
                BASE + key.len() + value.as_ref().map_or(0, |v| v.len() * 4 / 3)
            }
            Command::Txn { ops } => {
                BASE + ops
                    .iter()
                    .map(|op| 64 + op.key.len() + op.value.as_ref().map_or(0, |v| v.len() * 4 / 3))
                    .sum::<usize>()
            }
            // Registrations carry free-form maps and texts: measure them.
            Command::Register(r) => BASE + serde_json::to_vec(r).map_or(BASE * 4, |bytes| bytes.len()),
            Command::KvDelete { key, .. } => BASE + key.len(),
            Command::Deregister(_)
            | Command::SessionDestroy { .. }
            | Command::PreparedQueryDelete { .. }
            | Command::AclTokenDelete { .. }
            | Command::AclPolicyDelete { .. }
            | Command::AclRoleDelete { .. } => BASE,
            Command::AclBootstrap { token, .. } | Command::AclTokenSet(token) => {
                BASE + serde_json::to_vec(token).map_or(BASE * 4, |bytes| bytes.len())
            }
            Command::AclPolicySet(p) => BASE + serde_json::to_vec(p).map_or(BASE * 4, |bytes| bytes.len()),
            Command::AclRoleSet(r) => BASE + serde_json::to_vec(r).map_or(BASE * 4, |bytes| bytes.len()),
            Command::PreparedQuerySet(q) => BASE + serde_json::to_vec(q).map_or(BASE * 4, |bytes| bytes.len()),
            Command::SessionCreate(s) => BASE + serde_json::to_vec(s).map_or(BASE * 4, |bytes| bytes.len()),
            // What it writes into the store, not the size of the entry.
            Command::Restore(r) => BASE + r.size_bytes as usize,
            Command::RestoreArchive(r) => BASE + r.archive.len() * 4 / 3,
            Command::RestorePart(p) => BASE + p.bytes.len() * 4 / 3,
            Command::RestoreParts(r) => BASE + r.size_bytes as usize,
        }
    }
}

/// A validated catalog registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service: Option<ServiceDefinition>,
    pub checks: Vec<CheckDefinition>,
    pub skip_node_update: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDefinition {
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub address: String,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    /// Absent from entries written before (and when empty): old log entries decode and
    /// keep their bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    pub check_id: String,
    pub name: String,
    pub status: CheckStatus,
    pub notes: String,
    pub output: String,
    /// Empty for a node-level check.
    pub service_id: String,
    pub check_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterRequest {
    pub node: String,
    pub service_id: Option<String>,
    pub check_id: Option<String>,
}

/// KV verbs of `/v1/txn`, spelled as Consul spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TxnKvVerb {
    Set,
    Cas,
    Get,
    GetTree,
    CheckIndex,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
    Lock,
    Unlock,
    CheckSession,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnKvOp {
    pub verb: TxnKvVerb,
    pub key: String,
    #[serde(with = "opt_base64")]
    pub value: Option<Vec<u8>>,
    pub flags: u64,
    pub index: u64,
    /// For `lock`, `unlock` and `check-session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// One result of a successful transaction (entries are returned without their value except
/// for reads, as Consul does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub entry: KvEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

/// What applying one command produced. Business failures (a failed CAS, a deregister of an
/// unknown node) are results, never storage errors: those would stop the Raft core.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    Bool(bool),
    TxnCommitted(Vec<TxnResult>),
    TxnRolledBack(Vec<TxnError>),
    Rejected(String),
}

/// A whole byte string as base64 (for [`RestoreArchive`]).
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Byte strings travel as base64 in the JSON log: a 512 KiB value stays ~683 KiB rather than
/// the ~2 MiB a JSON number array would take.
mod opt_base64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the on-disk bytes of every command kind. If this fails, you changed the Raft log
    /// format: add a new field as optional or a new variant instead.
    #[test]
    fn command_bytes_are_pinned() {
        let cases: Vec<(Command, &str)> = vec![
            (
                Command::KvSet { key: "a/b".into(), value: Some(b"hi".to_vec()), flags: 7, cas: Some(0) },
                r#"{"KvSet":{"key":"a/b","value":"aGk=","flags":7,"cas":0}}"#,
            ),
            (
                Command::KvDelete { key: "a/".into(), recurse: true, cas: None },
                r#"{"KvDelete":{"key":"a/","recurse":true,"cas":null}}"#,
            ),
            (
                Command::Deregister(DeregisterRequest {
                    node: "n1".into(),
                    service_id: Some("web1".into()),
                    check_id: None,
                }),
                r#"{"Deregister":{"node":"n1","service_id":"web1","check_id":null}}"#,
            ),
            (
                Command::Register(Box::new(RegisterRequest {
                    id: String::new(),
                    node: "n1".into(),
                    address: "10.0.0.1".into(),
                    datacenter: "dc1".into(),
                    tagged_addresses: BTreeMap::new(),
                    node_meta: BTreeMap::from([("rack".into(), "r1".into())]),
                    service: Some(ServiceDefinition {
                        id: "web1".into(),
                        service: "web".into(),
                        tags: vec!["v1".into()],
                        address: String::new(),
                        meta: BTreeMap::new(),
                        port: 80,
                        weights: Weights::default(),
                        enable_tag_override: false,
                        tagged_addresses: Default::default(),
                    }),
                    checks: vec![CheckDefinition {
                        check_id: "c1".into(),
                        name: "c1".into(),
                        status: CheckStatus::Warning,
                        notes: String::new(),
                        output: "slow".into(),
                        service_id: "web1".into(),
                        check_type: String::new(),
                    }],
                    skip_node_update: false,
                })),
                concat!(
                    r#"{"Register":{"id":"","node":"n1","address":"10.0.0.1","datacenter":"dc1","#,
                    r#""tagged_addresses":{},"node_meta":{"rack":"r1"},"service":{"id":"web1","#,
                    r#""service":"web","tags":["v1"],"address":"","meta":{},"port":80,"#,
                    r#""weights":{"Passing":1,"Warning":1},"enable_tag_override":false},"#,
                    r#""checks":[{"check_id":"c1","name":"c1","status":"warning","notes":"","#,
                    r#""output":"slow","service_id":"web1","check_type":""}],"skip_node_update":false}}"#
                ),
            ),
            (
                Command::Txn {
                    ops: vec![TxnKvOp {
                        verb: TxnKvVerb::DeleteCas,
                        key: "k".into(),
                        value: None,
                        flags: 0,
                        index: 4,
                        session: None,
                    }],
                },
                r#"{"Txn":{"ops":[{"verb":"delete-cas","key":"k","value":null,"flags":0,"index":4}]}}"#,
            ),
        ];
        for (command, pinned) in cases {
            let bytes = serde_json::to_string(&command).expect("commands always serialize");
            assert_eq!(bytes, pinned, "disk format of {command:?} changed");
            let back: Command = serde_json::from_str(pinned).expect("pinned bytes decode");
            assert_eq!(back, command);
        }
        let restore = Command::Restore(RestoreRequest { archive: "a.archive".into(), checksum: 7, size_bytes: 9 });
        let pinned = r#"{"Restore":{"archive":"a.archive","checksum":7,"size_bytes":9}}"#;
        assert_eq!(serde_json::to_string(&restore).expect("serializes"), pinned);
        assert_eq!(serde_json::from_str::<Command>(pinned).expect("decodes"), restore);
        let inline = Command::RestoreArchive(RestoreArchive { archive: b"hi".to_vec(), checksum: 7 });
        let pinned = r#"{"RestoreArchive":{"archive":"aGk=","checksum":7}}"#;
        assert_eq!(serde_json::to_string(&inline).expect("serializes"), pinned);
        assert_eq!(serde_json::from_str::<Command>(pinned).expect("decodes"), inline);
        let part = Command::RestorePart(RestorePart { restore: "r".into(), offset: 4, bytes: b"hi".to_vec() });
        let pinned = r#"{"RestorePart":{"restore":"r","offset":4,"bytes":"aGk="}}"#;
        assert_eq!(serde_json::to_string(&part).expect("serializes"), pinned);
        assert_eq!(serde_json::from_str::<Command>(pinned).expect("decodes"), part);
        let parts = Command::RestoreParts(RestoreParts { restore: "r".into(), size_bytes: 6, checksum: 7 });
        let pinned = r#"{"RestoreParts":{"restore":"r","size_bytes":6,"checksum":7}}"#;
        assert_eq!(serde_json::to_string(&parts).expect("serializes"), pinned);
        assert_eq!(serde_json::from_str::<Command>(pinned).expect("decodes"), parts);
        let proposal = serde_json::to_string(&Proposal::new(vec![])).expect("serializes");
        assert_eq!(proposal, r#"{"v":1,"commands":[]}"#);
        let stamped = Proposal { leader_time_ms: Some(5), ..Proposal::new(vec![]) };
        let pinned = r#"{"v":1,"commands":[],"leader_time_ms":5}"#;
        assert_eq!(serde_json::to_string(&stamped).expect("serializes"), pinned);
        assert_eq!(serde_json::from_str::<Proposal>(pinned).expect("decodes"), stamped);
        let session_cases: Vec<(Command, &str)> = vec![
            (
                Command::SessionCreate(Box::new(Session {
                    id: "s1".into(),
                    name: "n".into(),
                    node: "n1".into(),
                    node_checks: vec!["serfHealth".into()],
                    service_checks: vec![crate::model::ServiceCheckRef { id: "c".into(), namespace: String::new() }],
                    lock_delay_ms: 15_000,
                    behavior: crate::model::SessionBehavior::Delete,
                    ttl_ms: 10_000,
                    create_index: 0,
                    modify_index: 0,
                })),
                concat!(
                    r#"{"SessionCreate":{"id":"s1","name":"n","node":"n1","node_checks":["serfHealth"],"#,
                    r#""service_checks":[{"ID":"c","Namespace":""}],"lock_delay_ms":15000,"behavior":"delete","#,
                    r#""ttl_ms":10000,"create_index":0,"modify_index":0}}"#
                ),
            ),
            (Command::SessionDestroy { id: "s1".into() }, r#"{"SessionDestroy":{"id":"s1"}}"#),
            (Command::PreparedQueryDelete { id: "q1".into() }, r#"{"PreparedQueryDelete":{"id":"q1"}}"#),
            (
                Command::KvLock { key: "k".into(), value: None, flags: 1, session: "s1".into(), op: KvLockOp::Release },
                r#"{"KvLock":{"key":"k","value":null,"flags":1,"session":"s1","op":"release"}}"#,
            ),
            (
                Command::Txn {
                    ops: vec![TxnKvOp {
                        verb: TxnKvVerb::CheckSession,
                        key: "k".into(),
                        value: None,
                        flags: 0,
                        index: 0,
                        session: Some("s1".into()),
                    }],
                },
                r#"{"Txn":{"ops":[{"verb":"check-session","key":"k","value":null,"flags":0,"index":0,"session":"s1"}]}}"#,
            ),
        ];
        for (command, pinned) in session_cases {
            assert_eq!(
                serde_json::to_string(&command).expect("serializes"),
                pinned,
                "disk format of {command:?} changed"
            );
            assert_eq!(serde_json::from_str::<Command>(pinned).expect("decodes"), command);
        }
    }
}

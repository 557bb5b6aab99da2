//! Plain data types of the replicated state and the versioned [`Command`] enum, the only way
//! that state changes. No I/O lives here.
//!
//! Architecture Invariant: every type in this module that is written to the Raft log, a
//! snapshot or LMDB is a disk format. Fields are only ever added (as `#[serde(default)]`),
//! variants are never renamed, and `command::tests` pins their exact bytes.
//! Why: a log written by one version must be replayed by every later one.

pub mod acl;
pub mod acl_rules;
pub mod agent;
mod catalog;
mod command;
mod duration;
mod kv;
mod query;
mod session;

pub use catalog::{CheckStatus, HealthCheck, Node, Service, ServiceAddress, Weights};
pub use command::{
    CheckDefinition, Command, CommandResult, DeregisterRequest, KvLockOp, Proposal, RegisterRequest, RestoreArchive,
    RestorePart, RestoreParts, RestoreRequest, ServiceDefinition, TxnError, TxnKvOp, TxnKvVerb, TxnResult,
    RESTORE_PART_BYTES,
};
pub use duration::{format_duration, parse_duration};
pub use kv::KvEntry;
pub use query::{PreparedQuery, QueryDns, QueryFailover, QueryService};
pub use session::{ServiceCheckRef, Session, SessionBehavior};

/// The Consul API version cairn implements; clients branch on `Config.Version`, and gossip
/// member tags carry it in `build`.
pub const CONSUL_API_VERSION: &str = "1.20.0";

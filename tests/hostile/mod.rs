//! Hostile-input checks shared by the fuzz targets (`fuzz/fuzz_targets/*`, which include this
//! directory by path) and the corpus replay test (`tests/fuzz_corpus.rs`). Each feeds one
//! input through a real entry point and panics when an invariant breaks — not only when the
//! code under test panics: a DNS answer that does not parse back, a rejected input that
//! changed state, an error that does not say where.
#![allow(dead_code)]

pub mod config;
pub mod dns;
pub mod http;
pub mod peers;
pub mod snapshot;

/// A target's check: panics when an invariant breaks.
pub type Check = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("dns_packet", dns::check_packet),
    ("dns_name", dns::check_name),
    ("config_files", config::check_files),
    // Catalog and KV before the agent's own: what those register reaches the catalog later.
    ("http_catalog_register", http::check_catalog_register),
    ("http_txn", http::check_txn),
    ("http_service_register", http::check_service_register),
    ("http_check_register", http::check_check_register),
    ("rpc_frame", peers::check_rpc_frame),
    ("gossip_packet", peers::check_gossip_packet),
    ("snapshot_restore", snapshot::check_archive),
    ("snapshot_records", snapshot::check_records),
];

use cairn::model::{CheckDefinition, CheckStatus, Command, RegisterRequest, ServiceDefinition, Weights};

/// A catalog registration: a node, and optionally a service `(id, name, tags)` with one check
/// in `status`.
pub fn register(node: &str, address: &str, service: Option<(&str, &str, &[&str])>, status: CheckStatus) -> Command {
    let service = service.map(|(id, name, tags)| ServiceDefinition {
        id: id.into(),
        service: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: String::new(),
        meta: Default::default(),
        port: 8000,
        weights: Weights::default(),
        enable_tag_override: false,
        tagged_addresses: Default::default(),
    });
    let checks = service
        .as_ref()
        .map(|s| CheckDefinition {
            check_id: format!("service:{}", s.id),
            name: "check".into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: s.id.clone(),
            check_type: "ttl".into(),
        })
        .into_iter()
        .collect();
    Command::Register(Box::new(RegisterRequest {
        id: String::new(),
        node: node.into(),
        address: address.into(),
        datacenter: "dc1".into(),
        tagged_addresses: Default::default(),
        node_meta: Default::default(),
        service,
        checks,
        skip_node_update: false,
    }))
}

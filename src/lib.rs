//! cairn: a DNS-centric service-discovery daemon that speaks Consul's HTTP API.
//!
//! See `ARCHITECTURE.md` at the repository root for the code map and invariants.

pub mod acl;
pub mod agent;
pub mod api_client;
pub mod backup;
pub mod checks;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod durable_file;
pub mod filter;
pub mod gossip;
pub mod http;
pub mod metrics;
pub mod model;
pub mod per_address;
pub mod prepared_query;
pub mod refusals;
pub mod store;
pub mod tls;
pub mod ui;
pub mod watch;

//! The DNS interface: Consul names answered from the catalog's [`Directory`](crate::store::Directory),
//! static zones, and forwarding to recursors.
//!
//! Architecture Invariant: nothing in `dns/` awaits Raft or opens a write transaction;
//! answers come from the directory alone. Why: DNS must keep answering while the cluster has
//! no leader (Consul's `allow_stale`).

pub mod answer;
pub mod lookup;
pub mod wire;

#[cfg(test)]
mod answer_tests;
#[cfg(test)]
mod wire_tests;

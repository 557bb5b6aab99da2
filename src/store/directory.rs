//! The DNS hot path's view of the catalog: an immutable [`Directory`] of every service's
//! instances with their health, and every node, swapped atomically after each applied batch.
//!
//! Architecture Invariant: the directory is rebuilt for what a batch touched *inside*
//! [`Store::apply`](super::Store::apply), before the write that caused it is acknowledged.
//! Why: an HTTP write that returned must already be visible in DNS — no polling gap, no cache
//! to expire. Readers never block: they load an `Arc` and keep it for one answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::watch::Touched;
use super::{ReadView, StoreError};
use crate::model::{CheckStatus, Weights};

/// A node as DNS answers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The name as registered (DNS answers use it in SRV targets).
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub meta: BTreeMap<String, String>,
}

/// One service instance with its health folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub node: Arc<NodeRecord>,
    pub service_id: String,
    /// The service's own address; empty when it uses the node's.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub weights: Weights,
    /// The worst status among the node's checks and the instance's checks.
    pub status: CheckStatus,
}

impl InstanceRecord {
    /// The address DNS answers with: the service's, else the node's.
    pub fn effective_address(&self) -> &str {
        if self.address.is_empty() {
            &self.node.address
        } else {
            &self.address
        }
    }
}

/// Everything DNS answers from, at one applied index. Keys are lowercase names, since DNS
/// names are case-insensitive.
#[derive(Debug, Default)]
pub struct Directory {
    /// The last applied index this view reflects.
    pub index: u64,
    /// Instances of every service, by lowercase name (names that differ only in case are
    /// one DNS name, so their instances are listed together).
    pub services: HashMap<String, Arc<[InstanceRecord]>>,
    pub nodes: HashMap<String, Arc<NodeRecord>>,
    /// Lowercase service name → the registered spellings that have instances.
    spellings: HashMap<String, Vec<String>>,
}

impl Directory {
    pub fn service(&self, name: &str) -> Option<&[InstanceRecord]> {
        self.services.get(&name.to_ascii_lowercase()).map(|i| &i[..])
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(&name.to_ascii_lowercase()).map(|n| &**n)
    }

    /// Nodes running the `consul` service (the servers), sorted by name.
    pub fn servers(&self) -> Vec<Arc<NodeRecord>> {
        let mut servers: Vec<_> = self.service("consul").unwrap_or(&[]).iter().map(|i| Arc::clone(&i.node)).collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        servers.dedup_by(|a, b| a.name == b.name);
        servers
    }
}

/// The current [`Directory`], swapped as a whole.
#[derive(Default)]
pub struct DirectoryCell(ArcSwap<Directory>);

impl DirectoryCell {
    pub fn load(&self) -> Arc<Directory> {
        self.0.load_full()
    }

    /// Rebuilds everything from `view` (at start and after a snapshot install).
    pub(super) fn rebuild(&self, view: &ReadView<'_>, index: u64) -> Result<(), StoreError> {
        let mut nodes = HashMap::new();
        for node in view.nodes()? {
            nodes.insert(node.node.to_ascii_lowercase(), Arc::new(node_record(&node)));
        }
        let names: Vec<String> = view.service_names()?.into_keys().collect();
        let (mut services, mut spellings) = (HashMap::new(), HashMap::new());
        recompute_services(view, &names, &nodes, &mut services, &mut spellings)?;
        self.0.store(Arc::new(Directory { index, services, nodes, spellings }));
        Ok(())
    }

    /// Recomputes the nodes and services a batch touched.
    pub(super) fn refresh(&self, view: &ReadView<'_>, touched: &Touched, index: u64) -> Result<(), StoreError> {
        if touched.services.is_empty() && touched.nodes.is_empty() {
            return Ok(());
        }
        let current = self.0.load();
        let mut nodes = current.nodes.clone();
        for name in &touched.nodes {
            match view.node(name)? {
                Some(node) => nodes.insert(name.to_ascii_lowercase(), Arc::new(node_record(&node))),
                None => nodes.remove(&name.to_ascii_lowercase()),
            };
        }
        // A node change can change the instances of services that were not touched by name
        // only through `touched.services`, which `apply` fills for every service on the node.
        let names: Vec<String> = touched.services.iter().cloned().collect();
        let (mut services, mut spellings) = (current.services.clone(), current.spellings.clone());
        recompute_services(view, &names, &nodes, &mut services, &mut spellings)?;
        self.0.store(Arc::new(Directory { index, services, nodes, spellings }));
        Ok(())
    }
}

fn node_record(node: &crate::model::Node) -> NodeRecord {
    NodeRecord {
        name: node.node.clone(),
        address: node.address.clone(),
        datacenter: node.datacenter.clone(),
        meta: node.meta.clone(),
    }
}

/// Recomputes the entries of `names` (exact spellings) in `services` and `spellings`.
fn recompute_services(
    view: &ReadView<'_>,
    names: &[String],
    nodes: &HashMap<String, Arc<NodeRecord>>,
    services: &mut HashMap<String, Arc<[InstanceRecord]>>,
    spellings: &mut HashMap<String, Vec<String>>,
) -> Result<(), StoreError> {
    let mut lowered: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    lowered.sort();
    lowered.dedup();
    for name in names {
        let known = spellings.entry(name.to_ascii_lowercase()).or_default();
        if !known.contains(name) {
            known.push(name.clone());
        }
    }
    for lower in lowered {
        let mut all = Vec::new();
        let mut live = Vec::new();
        for spelling in spellings.get(&lower).cloned().unwrap_or_default() {
            let list = instances(view, &spelling, nodes)?;
            if !list.is_empty() {
                live.push(spelling);
                all.extend(list);
            }
        }
        if all.is_empty() {
            services.remove(&lower);
            spellings.remove(&lower);
        } else {
            services.insert(lower.clone(), all.into());
            spellings.insert(lower, live);
        }
    }
    Ok(())
}

/// The instances of service `name` (exact spelling), sharing node records with `nodes`.
fn instances(
    view: &ReadView<'_>,
    name: &str,
    nodes: &HashMap<String, Arc<NodeRecord>>,
) -> Result<Vec<InstanceRecord>, StoreError> {
    let list: Vec<InstanceRecord> = view
        .service_health(name)?
        .into_iter()
        .map(|health| {
            let status = health.status();
            let node = nodes
                .get(&health.node.node.to_ascii_lowercase())
                .cloned()
                .unwrap_or_else(|| Arc::new(node_record(&health.node)));
            InstanceRecord {
                node,
                service_id: health.service.id,
                address: health.service.address,
                port: health.service.port,
                tags: health.service.tags,
                weights: health.service.weights,
                status,
            }
        })
        .collect();
    Ok(list)
}

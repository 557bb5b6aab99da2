//! The DNS hot path's view of the catalog: an immutable [`Directory`] of every service's
//! instances with their health, and every node, swapped atomically after each applied batch.
//!
//! Architecture Invariant: the directory is rebuilt for what a batch touched *inside*
//! [`Store::apply`](super::Store::apply), before the write that caused it is acknowledged.
//! Why: an HTTP write that returned must already be visible in DNS — no polling gap, no cache
//! to expire. Readers never block: they load an `Arc` and keep it for one answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::watch::Touched;
use super::{ReadView, ServiceHealth, StoreError};
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
    /// The service name as registered.
    pub service_name: String,
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

/// Instances of one DNS name by (node, service ID) as registered, shared structurally
/// between directory versions: a write changes the instances it touched, O(log n) each, so
/// registering the 100,000th instance of a service costs what the first did.
pub type Instances = imbl::OrdMap<InstanceKey, Arc<InstanceRecord>>;

/// (node name, service ID), both as registered: unique across a DNS name's instances, and
/// ordered so that one node's instances are a range.
pub type InstanceKey = (String, String);

/// Everything DNS answers from, at one applied index. Keys are lowercase names, since DNS
/// names are case-insensitive.
#[derive(Debug, Default)]
pub struct Directory {
    /// The last applied index this view reflects.
    pub index: u64,
    /// Instances of every service, by lowercase name (names that differ only in case are
    /// one DNS name, so their instances are listed together).
    pub services: PersistentMap<Instances>,
    pub nodes: PersistentMap<Arc<NodeRecord>>,
}

/// A persistent (structurally shared) map: cloning it for the next directory version is
/// O(1) and an update O(log n), so a write costs what it touched, not the catalog's size.
pub type PersistentMap<V> = imbl::HashMap<String, V>;

impl Directory {
    pub fn service(&self, name: &str) -> Option<&Instances> {
        self.services.get(&name.to_ascii_lowercase())
    }

    pub fn node(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(&name.to_ascii_lowercase()).map(|n| &**n)
    }

    /// Nodes running the `consul` service (the servers), sorted by name.
    pub fn servers(&self) -> Vec<Arc<NodeRecord>> {
        let mut servers: Vec<_> =
            self.service("consul").into_iter().flat_map(|i| i.values()).map(|i| Arc::clone(&i.node)).collect();
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
        let mut nodes = PersistentMap::new();
        for node in view.nodes()? {
            nodes.insert(node.node.to_ascii_lowercase(), Arc::new(node_record(&node)));
        }
        let mut services: PersistentMap<Instances> = PersistentMap::new();
        for node in view.nodes()? {
            for health in view.node_service_health(&node.node, None)? {
                let name = health.service.service.to_ascii_lowercase();
                let instance = instance_record(health, &nodes);
                services.entry(name).or_default().insert(key(&instance), instance);
            }
        }
        self.0.store(Arc::new(Directory { index, services, nodes }));
        Ok(())
    }

    /// Applies what a batch touched: changed nodes, and for each touched service the
    /// instances on the nodes where it changed. Cost: the touched instances, O(log n) each;
    /// untouched instances and nodes are shared with the previous version, not copied.
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
        // Read per node, not per (service, node): a batch that changes many services of one
        // node reads its services and checks once.
        let mut by_node: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (name, changed_nodes) in &touched.services {
            for node in changed_nodes {
                by_node.entry(node.as_str()).or_default().insert(name.as_str());
            }
        }
        let mut fresh: HashMap<String, Vec<Arc<InstanceRecord>>> = HashMap::new();
        for (node, names) in &by_node {
            for health in view.node_service_health(node, Some(names))? {
                let name = health.service.service.clone();
                fresh.entry(name).or_default().push(instance_record(health, &nodes));
            }
        }
        let mut services = current.services.clone();
        for (name, changed_nodes) in &touched.services {
            let lower = name.to_ascii_lowercase();
            let mut list = services.get(&lower).cloned().unwrap_or_default();
            for node in changed_nodes {
                let on_node: Vec<InstanceKey> = list
                    .range((node.clone(), String::new())..)
                    .take_while(|((n, _), _)| n == node)
                    .filter(|(_, i)| i.service_name == *name)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in on_node {
                    list.remove(&k);
                }
            }
            for instance in fresh.remove(name).unwrap_or_default() {
                list.insert(key(&instance), instance);
            }
            if list.is_empty() {
                services.remove(&lower);
            } else {
                services.insert(lower, list);
            }
        }
        self.0.store(Arc::new(Directory { index, services, nodes }));
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

fn key(instance: &InstanceRecord) -> InstanceKey {
    (instance.node.name.clone(), instance.service_id.clone())
}

/// One instance with its health folded in, sharing its node record with `nodes`.
fn instance_record(health: ServiceHealth, nodes: &PersistentMap<Arc<NodeRecord>>) -> Arc<InstanceRecord> {
    let status = health.status();
    let node = nodes
        .get(&health.node.node.to_ascii_lowercase())
        .cloned()
        .unwrap_or_else(|| Arc::new(node_record(&health.node)));
    Arc::new(InstanceRecord {
        node,
        service_name: health.service.service,
        service_id: health.service.id,
        address: health.service.address,
        port: health.service.port,
        tags: health.service.tags,
        weights: health.service.weights,
        status,
    })
}

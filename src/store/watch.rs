//! Wake-ups for blocking queries: each query subscribes to the one [`Topic`] its answer depends
//! on, and [`Store::apply`](super::Store::apply) notifies exactly the topics a batch touched.
//!
//! Architecture Invariant: a write wakes only the queries whose topic it touched (its KV key,
//! a prefix of that key, its service name, its node, or its table). Why: Consul wakes watchers
//! on unrelated writes (#1244, #2216); with 10,000 watchers that turns one write into 10,000
//! responses.
//!
//! Subscribe *before* reading the data: a notification that lands between the read and the
//! wait is then still seen, because `watch::Receiver` remembers it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Tables with their own modify index, as Consul keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Nodes,
    Services,
    Checks,
    Kv,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Services => "services",
            Table::Checks => "checks",
            Table::Kv => "kvs",
        }
    }
}

/// What a blocking query depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Table(Table),
    /// Instances of one service name: their services, checks and nodes.
    Service(String),
    /// One node: the node, its services and checks.
    Node(String),
    /// A service's catalog rows (its instances and their nodes, no checks).
    CatalogService(String),
    /// A node's catalog rows (the node and its services, no checks).
    CatalogNode(String),
    Kv(String),
    /// Every key that starts with this prefix ("" = all keys).
    KvPrefix(String),
}

/// Registry of topics someone waits on. Topics nobody waits on cost nothing.
#[derive(Default)]
pub struct Watches {
    topics: Mutex<HashMap<Topic, watch::Sender<u64>>>,
}

/// One query's interest in a topic. Dropping it unregisters the topic when it was the last.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    topic: Topic,
    watches: Arc<Watches>,
}

impl Subscription {
    /// Resolves when the topic was touched since the subscription (or the last call). Returns
    /// the index of the write that touched it.
    pub async fn changed(&mut self) -> u64 {
        // The sender lives in the registry as long as a receiver does, so this cannot fail;
        // treat a closed channel as "changed" to be safe.
        let _ = self.rx.changed().await;
        *self.rx.borrow_and_update()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.watches.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = topics.get(&self.topic) {
            // Our own receiver still counts here; it is dropped right after this.
            if tx.receiver_count() <= 1 {
                topics.remove(&self.topic);
            }
        }
    }
}

impl Watches {
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> Subscription {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let rx = topics.entry(topic.clone()).or_insert_with(|| watch::channel(0).0).subscribe();
        Subscription { rx, topic, watches: Arc::clone(self) }
    }

    /// Number of topics with at least one waiter (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes every waiter (after a snapshot replaced the whole state).
    pub fn notify_all(&self, index: u64) {
        for tx in self.topics.lock().unwrap_or_else(|e| e.into_inner()).values() {
            tx.send_replace(index);
        }
    }

    /// Wakes the waiters of every touched topic. KV keys also wake every prefix watch whose
    /// prefix starts the key: one hash lookup per character boundary of the key.
    pub fn notify(&self, touched: &Touched, index: u64) {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if topics.is_empty() {
            return;
        }
        let wake = |topic: &Topic| {
            if let Some(tx) = topics.get(topic) {
                tx.send_replace(index);
            }
        };
        for table in &touched.tables {
            wake(&Topic::Table(*table));
        }
        for name in touched.services.keys() {
            wake(&Topic::Service(name.clone()));
        }
        for name in &touched.nodes {
            wake(&Topic::Node(name.clone()));
        }
        for name in &touched.catalog_services {
            wake(&Topic::CatalogService(name.clone()));
        }
        for name in &touched.catalog_nodes {
            wake(&Topic::CatalogNode(name.clone()));
        }
        for key in &touched.kv_keys {
            wake(&Topic::Kv(key.clone()));
            for (boundary, _) in key.char_indices().chain(std::iter::once((key.len(), ' '))) {
                wake(&Topic::KvPrefix(key[..boundary].to_string()));
            }
        }
    }
}

/// What one applied batch changed; gathered by `apply`, consumed by [`Watches::notify`].
#[derive(Debug, Default)]
pub struct Touched {
    pub tables: Vec<Table>,
    /// Service name → the nodes whose instances of it changed.
    pub services: std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    pub nodes: std::collections::BTreeSet<String>,
    pub catalog_services: std::collections::BTreeSet<String>,
    pub catalog_nodes: std::collections::BTreeSet<String>,
    pub kv_keys: std::collections::BTreeSet<String>,
    /// The whole state was replaced (a restore): every topic and the whole directory.
    pub everything: bool,
}

impl Touched {
    pub fn table(&mut self, table: Table) {
        if !self.tables.contains(&table) {
            self.tables.push(table);
        }
    }

    pub fn merge(&mut self, other: Touched) {
        for t in other.tables {
            self.table(t);
        }
        for (name, nodes) in other.services {
            self.services.entry(name).or_default().extend(nodes);
        }
        self.nodes.extend(other.nodes);
        self.catalog_services.extend(other.catalog_services);
        self.catalog_nodes.extend(other.catalog_nodes);
        self.kv_keys.extend(other.kv_keys);
        self.everything |= other.everything;
    }
}

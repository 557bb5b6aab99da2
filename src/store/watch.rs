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
//!
//! Subscribers of a topic that one write woke can share what they compute from it
//! ([`Subscription::shared`]): with 10,000 watchers of one key, the answer is read and encoded
//! once instead of 10,000 times.

use std::any::Any;
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
    Sessions,
    PreparedQueries,
    /// ACL tokens, policies and roles.
    Acl,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Nodes => "nodes",
            Table::Services => "services",
            Table::Checks => "checks",
            Table::Kv => "kvs",
            Table::Sessions => "sessions",
            Table::PreparedQueries => "prepared-queries",
            Table::Acl => "acl",
        }
    }
}

/// What a blocking query depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Table(Table),
    /// Any change to nodes, services or checks (what a whole-catalog view shows).
    Catalog,
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
    /// Only the replacement of the whole state (a restore, an installed snapshot); no single
    /// write touches it.
    Replaced,
}

/// Registry of topics someone waits on. Topics nobody waits on cost nothing.
#[derive(Default)]
pub struct Watches {
    topics: Mutex<HashMap<Topic, Arc<TopicState>>>,
}

/// A topic someone waits on: its wake-ups, and what its subscribers computed after the last.
struct TopicState {
    tx: watch::Sender<u64>,
    shared: Mutex<Shared>,
}

/// Values computed by subscribers after the wake-up `wake`, by key. Bounded by the number of
/// subscribers (each adds at most one key per wake-up), emptied by the next wake-up, dropped
/// with the topic's last subscriber.
#[derive(Default)]
struct Shared {
    wake: u64,
    values: HashMap<String, Arc<dyn Any + Send + Sync>>,
}

/// One query's interest in a topic. Dropping it unregisters the topic when it was the last.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    topic: Topic,
    state: Arc<TopicState>,
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

    /// The value another subscriber of this topic computed for `key` after the wake-up
    /// `wake` (a value [`Subscription::changed`] returned), or else `make`'s, kept for the
    /// others. `make` runs without any lock held; two subscribers racing may both run it.
    /// Only share what depends on nothing but `key` and the data as of the wake-up or later.
    pub fn shared<T, E>(&self, key: &str, wake: u64, make: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Send + Sync + 'static,
    {
        {
            let shared = self.state.shared.lock().unwrap_or_else(|e| e.into_inner());
            if shared.wake == wake {
                if let Some(value) = shared.values.get(key).and_then(|v| Arc::clone(v).downcast::<T>().ok()) {
                    return Ok(value);
                }
            }
        }
        let value = Arc::new(make()?);
        let mut shared = self.state.shared.lock().unwrap_or_else(|e| e.into_inner());
        if wake > shared.wake {
            shared.wake = wake;
            shared.values.clear();
        }
        if wake == shared.wake {
            shared.values.insert(key.to_string(), Arc::clone(&value) as Arc<dyn Any + Send + Sync>);
        }
        Ok(value)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.watches.topics.lock().unwrap_or_else(|e| e.into_inner());
        // Our own receiver still counts here; it is dropped right after this.
        if self.state.tx.receiver_count() <= 1 {
            topics.remove(&self.topic);
        }
    }
}

impl Watches {
    pub fn subscribe(self: &Arc<Self>, topic: Topic) -> Subscription {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        let state = topics
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(TopicState { tx: watch::channel(0).0, shared: Mutex::default() }));
        let state = Arc::clone(state);
        Subscription { rx: state.tx.subscribe(), topic, state, watches: Arc::clone(self) }
    }

    /// Number of topics with at least one waiter (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Wakes every waiter (after a snapshot replaced the whole state).
    pub fn notify_all(&self, index: u64) {
        for state in self.topics.lock().unwrap_or_else(|e| e.into_inner()).values() {
            state.tx.send_replace(index);
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
            if let Some(state) = topics.get(topic) {
                state.tx.send_replace(index);
            }
        };
        for table in &touched.tables {
            wake(&Topic::Table(*table));
        }
        if touched.tables.iter().any(|t| matches!(t, Table::Nodes | Table::Services | Table::Checks)) {
            wake(&Topic::Catalog);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn subscribers_woken_by_one_write_share_what_they_compute() {
        let watches = Arc::new(Watches::default());
        let first = watches.subscribe(Topic::Kv("k".into()));
        let second = watches.subscribe(Topic::Kv("k".into()));
        let runs = AtomicU32::new(0);
        let make = |value: &'static str| {
            let runs = &runs;
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(value)
            }
        };
        let a = first.shared("req", 5, make("at 5")).unwrap();
        let b = second.shared("req", 5, make("again")).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second subscriber computed its own");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Another request, or a later wake-up, computes afresh.
        assert_eq!(*second.shared("other", 5, make("other")).unwrap(), "other");
        assert_eq!(*first.shared("req", 6, make("at 6")).unwrap(), "at 6");
        assert_eq!(*second.shared("req", 6, make("again")).unwrap(), "at 6");
        // A subscriber still on an older wake-up gets its own value and stores nothing.
        assert_eq!(*first.shared("req", 5, make("late")).unwrap(), "late");
        assert_eq!(*second.shared("req", 6, make("again")).unwrap(), "at 6");
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        // Errors are not kept.
        assert!(first.shared::<&str, ()>("err", 6, || Err(())).is_err());
        assert_eq!(*first.shared("err", 6, make("ok")).unwrap(), "ok");
        drop((first, second));
        assert_eq!(watches.topic_count(), 0, "the topic outlived its subscribers");
    }
}

//! Storage tests: openraft's own suite against the LMDB store, and the durability order of
//! `append`.

use openraft::testing::{log_id, StoreBuilder, Suite};
use std::future::Future;

use openraft::{Entry, EntryPayload, StorageError};

use super::*;

struct LmdbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for LmdbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 64 << 20).expect("open store");
        Ok((dir, LogStore::new(store.clone()), StateMachine::new(store)))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(LmdbBuilder)
}

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Blank }
}

/// Fails if completion is ever reported before the entries' transaction has committed and
/// been synced: at the moment `done` runs, a fresh read transaction (which sees committed
/// data only) must already find every entry, and a sync must have followed the commit.
/// SIGKILL tests cannot catch this, since the page cache survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_acknowledges_only_committed_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let log = LogStore::new(store.clone());
    for round in 0..20u64 {
        let entries: Vec<_> = (round * 10 + 1..=round * 10 + 10).map(blank).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = store.clone();
        let syncs_before = store.sync_count();
        log.append_then(entries, move |result| {
            result.expect("append succeeded");
            let rtxn = probe.env().read_txn().expect("read txn");
            let visible = probe.raft_log.len(&rtxn).expect("len");
            tx.send((visible, probe.sync_count())).expect("send");
        })
        .await
        .expect("append");
        let (visible, syncs) = rx.recv().expect("done was called");
        assert_eq!(visible, (round + 1) * 10, "completion reported before commit");
        assert!(syncs > syncs_before, "completion reported before the commit was synced");
    }
    // Commits fsync their pages; only the meta page waits for `Store::sync` (NO_META_SYNC).
    let flags = store.env().get_flags().expect("flags");
    let weakening = heed::EnvFlags::NO_SYNC | heed::EnvFlags::MAP_ASYNC | heed::EnvFlags::WRITE_MAP;
    assert_eq!(flags & weakening.bits(), 0, "LMDB environment opened without page sync");
}

/// A bootstrapped one-server cluster on a fresh store, with a leader.
async fn one_server() -> (tempfile::TempDir, Cluster, CancellationToken) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let shutdown = CancellationToken::new();
    let config = ClusterConfig {
        node_id: 1,
        advertise: "127.0.0.1:8300".into(),
        bootstrap: true,
        server: true,
        write_queue_max: 1024,
    };
    let cluster = Cluster::start(store, config, shutdown.clone(), &TaskTracker::new()).await.expect("start");
    assert!(cluster.wait_for_leader(Duration::from_secs(10)).await, "no leader");
    (dir, cluster, shutdown)
}

/// Issue 14, defect 1: a write abandoned while it waits (its client went away) must give
/// back its share of the queued bytes, or enough of them make every later write fail with
/// "map full" until restart. Polls `write` once (it queues and waits), then drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_writes_give_back_their_queued_bytes() {
    let (_dir, cluster, shutdown) = one_server().await;
    let big = || Command::KvSet { key: "k".into(), value: Some(vec![7; 256 << 10]), flags: 0, cas: None };
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..100 {
        let mut write = std::pin::pin!(cluster.write(big()));
        if let std::task::Poll::Ready(r) = write.as_mut().poll(&mut cx) {
            panic!("write answered before Raft ran: {r:?} (map full: abandoned writes leaked their queued bytes)");
        }
        assert!(cluster.queued_bytes() > 0, "the queued write is counted");
    }
    assert_eq!(cluster.queued_bytes(), 0, "abandoned writes leaked their queued bytes");
    // And the store still takes writes.
    let result = cluster.write(big()).await.expect("write after abandoned ones");
    assert_eq!(result, CommandResult::Bool(true));
    shutdown.cancel();
    cluster.shutdown().await;
}

/// The agent's watchdog: `wait_stopped` resolves once the Raft core stops, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_stopped_resolves_when_raft_stops() {
    let (_dir, cluster, shutdown) = one_server().await;
    let watcher = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.wait_stopped().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watcher.is_finished(), "a running Raft is not stopped");
    cluster.shutdown().await;
    let why = tokio::time::timeout(Duration::from_secs(10), watcher).await.expect("resolved").expect("task");
    assert!(!why.is_empty());
    // A stopped core reports no leader (`/v1/status/leader` answers "", writes NoLeader).
    assert!(cluster.leader().is_none() && !cluster.knows_leader() && !cluster.is_leader());
    shutdown.cancel();
}

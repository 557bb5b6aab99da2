//! Storage tests: openraft's own suite against the LMDB store, and the durability order of
//! `append`.

use openraft::testing::{log_id, StoreBuilder, Suite};
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

//! The Raft log: its entries in segment files of their own ([`super::wal`], in
//! `<store dir>/raft-log/`), its vote and last purged id in the `raft_meta` LMDB table.
//!
//! Invariant: `log_io_completed` is called only once the entries are on disk (`Wal::append`
//! returns after its `fdatasync`). Calling it earlier would acknowledge writes a power loss
//! can take back; `tests::append_acknowledges_only_entries_on_disk` fails if that order is
//! ever broken.
//!
//! Data dirs written before the log left LMDB (2026-12-07) hold it in the `raft_log` table;
//! [`LogStore::new`] moves it into segment files once.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::replay::ReplayGate;
use super::wal::{Wal, SEGMENT_BYTES};
use super::{NodeId, TypeConfig};
use crate::store::Store;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// The segment files' directory, inside the store's.
const WAL_DIR: &str = "raft-log";
/// Entries per append while moving a log out of LMDB.
const MOVE_BATCH_ENTRIES: usize = 4096;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    wal: Arc<Wal>,
    /// Told of truncations: entries past one were never committed, so reads need not wait.
    replay: Arc<ReplayGate>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

fn get_meta<T: serde::de::DeserializeOwned>(store: &Store, key: &[u8]) -> StorageResult<Option<T>> {
    let rtxn = store.env().read_txn().map_err(read_err)?;
    match store.raft_meta.get(&rtxn, key).map_err(read_err)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(bytes).map_err(read_err)?)),
        None => Ok(None),
    }
}

impl LogStore {
    /// The log of `store`, with a [`ReplayGate`] waiting for its last entry. Moves a log
    /// still kept in LMDB into segment files first.
    pub fn new(store: Store) -> StorageResult<Self> {
        let purged = get_meta::<LogId<NodeId>>(&store, KEY_LAST_PURGED)?.map(|id| id.index);
        let dir = store.env().path().join(WAL_DIR);
        if !dir.exists() {
            let moved = move_lmdb_log(&store, &dir, purged)?;
            if moved > 0 {
                tracing::info!(entries = moved, dir = %dir.display(), "moved the Raft log out of LMDB into segment files");
            }
        }
        let (wal, opened) = Wal::open(&dir, purged, SEGMENT_BYTES, store.clone()).map_err(read_err)?;
        if opened.torn_bytes > 0 || opened.removed_segments > 0 {
            tracing::info!(
                torn_bytes = opened.torn_bytes,
                removed_segments = opened.removed_segments,
                "Raft log opened"
            );
        }
        empty_lmdb_log(&store)?;
        let mut log = LogStore { store, wal: Arc::new(wal), replay: Arc::new(ReplayGate::new(0)) };
        let last_log_index = log.log_state()?.last_log_id.map_or(0, |id| id.index);
        log.replay = Arc::new(ReplayGate::new(last_log_index));
        Ok(log)
    }

    /// What local reads wait for after a restart (see [`super::replay`]).
    pub fn replay_gate(&self) -> Arc<ReplayGate> {
        Arc::clone(&self.replay)
    }

    /// The last log id written, or the last purged one when the log is empty.
    fn log_state(&self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = get_meta(&self.store, KEY_LAST_PURGED)?;
        let last = match self.wal.last_index() {
            Some(index) => self.entries(index, index + 1)?.pop().map(|entry| entry.log_id),
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    /// The entries from `from` up to, not including, `until` that the log holds.
    fn entries(&self, from: u64, until: u64) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let mut out = Vec::new();
        for (index, bytes) in self.wal.read(from, until).map_err(read_err)? {
            let entry: Entry<TypeConfig> = serde_json::from_slice(&bytes).map_err(read_err)?;
            if entry.log_id.index != index {
                let e = std::io::Error::other(format!("Raft log entry {index} holds entry {}", entry.log_id.index));
                return Err(read_err(e));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Writes one `raft_meta` value and returns once it is durable.
    async fn put_meta<T: serde::Serialize>(
        &self,
        what: &'static str,
        key: &'static [u8],
        value: &T,
    ) -> Result<(), heed::Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| heed::Error::Io(e.into()))?;
        let store = self.store.clone();
        blocking(move || {
            store.raft_write(what, || {
                let mut wtxn = store.env().write_txn()?;
                store.raft_meta.put(&mut wtxn, key, &bytes)?;
                store.commit_durably(wtxn)
            })
        })
        .await
    }

    /// Writes `entries` and calls `done` once they are on disk — or failed to be. This is
    /// `append` without openraft's callback type, so tests can observe exactly when
    /// completion is reported.
    pub async fn append_then<F>(&self, entries: Vec<Entry<TypeConfig>>, done: F) -> StorageResult<()>
    where
        F: FnOnce(Result<(), std::io::Error>) + Send + 'static,
    {
        let Some(first_index) = entries.first().map(|e| e.log_id.index) else {
            done(Ok(()));
            return Ok(());
        };
        let mut payloads = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            debug_assert_eq!(entry.log_id.index, first_index + i as u64, "openraft appends entries in order");
            payloads.push(serde_json::to_vec(entry).map_err(write_err)?);
        }
        let wal = Arc::clone(&self.wal);
        match blocking(move || wal.append(first_index, &payloads)).await {
            Ok(()) => {
                done(Ok(()));
                Ok(())
            }
            Err(e) => {
                done(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }
}

/// Runs blocking storage work (a whole append, truncation or transaction) off the async
/// workers; a panic in it becomes an error.
async fn blocking<T: Send + 'static, E: From<std::io::Error> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|join| Err(std::io::Error::other(join.to_string()).into()))
}

/// Moves the entries of the `raft_log` table (a data dir written before the log left LMDB)
/// into segment files in `dir`, returning how many. They are written in a directory beside
/// it, synced, and renamed into place: a crash before the rename leaves the table the log
/// (and the next open starts over); after it, the files are the log, and [`empty_lmdb_log`]
/// clears what is left in the table.
fn move_lmdb_log(store: &Store, dir: &Path, purged: Option<u64>) -> StorageResult<usize> {
    let building = dir.with_extension("moving");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(write_err)?;
    }
    let (wal, _) = Wal::open(&building, purged, SEGMENT_BYTES, store.clone()).map_err(write_err)?;
    let rtxn = store.env().read_txn().map_err(read_err)?;
    let mut moved = 0;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_first = 0;
    for row in store.raft_log.iter(&rtxn).map_err(read_err)? {
        let (key, bytes) = row.map_err(read_err)?;
        let index = u64::from_be_bytes(
            key.try_into().map_err(|_| read_err(std::io::Error::other("an LMDB Raft log key is not 8 bytes")))?,
        );
        if !batch.is_empty() && (index != batch_first + batch.len() as u64 || batch.len() == MOVE_BATCH_ENTRIES) {
            wal.append(batch_first, &batch).map_err(write_err)?;
            moved += batch.len();
            batch.clear();
        }
        if batch.is_empty() {
            batch_first = index;
        }
        batch.push(bytes.to_vec());
    }
    if !batch.is_empty() {
        wal.append(batch_first, &batch).map_err(write_err)?;
        moved += batch.len();
    }
    drop(rtxn);
    drop(wal);
    std::fs::rename(&building, dir).map_err(write_err)?;
    if let Some(parent) = dir.parent() {
        crate::durable_file::sync_dir(parent).map_err(write_err)?;
    }
    Ok(moved)
}

/// Empties the `raft_log` table once its entries are in segment files.
fn empty_lmdb_log(store: &Store) -> StorageResult<()> {
    let rtxn = store.env().read_txn().map_err(read_err)?;
    let empty = store.raft_log.is_empty(&rtxn).map_err(read_err)?;
    drop(rtxn);
    if !empty {
        let mut wtxn = store.env().write_txn().map_err(write_err)?;
        store.raft_log.clear(&mut wtxn).map_err(write_err)?;
        store.commit_durably(wtxn).map_err(write_err)?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let until = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(from, until)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.log_state()
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta("saving the vote", KEY_VOTE, vote).await.map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_meta(&self.store, KEY_VOTE)
    }

    // `save_committed`/`read_committed` keep openraft's no-op defaults on purpose: persisting
    // the commit index is an optional restart shortcut, and here it cost a third fsync per
    // write (after the append and the apply). Safety never depends on it; after a restart
    // the leader re-commits and the state machine replays from `last_applied`.

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_then(entries.into_iter().collect(), move |r| callback.log_io_completed(r)).await
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let wal = Arc::clone(&self.wal);
        blocking(move || wal.truncate(log_id.index)).await.map_err(write_err)?;
        self.replay.truncated(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // `last_purged` is durable before any segment file goes, so the log state never
        // claims entries that are gone; a crash in between has the next open remove them.
        // Its sync also makes every earlier state-machine commit durable: no entry goes
        // before the state that applied it is on disk.
        self.put_meta("purging the Raft log", KEY_LAST_PURGED, &log_id).await.map_err(write_err)?;
        let wal = Arc::clone(&self.wal);
        blocking(move || wal.purge(log_id.index)).await.map_err(write_err)
    }
}

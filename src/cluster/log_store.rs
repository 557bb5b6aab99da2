//! The Raft log, vote and committed pointer, in the `raft_log`/`raft_meta` LMDB tables.
//!
//! Invariant: `log_io_completed` is called only after the LMDB transaction holding the entries
//! has committed and been synced to disk (`Store::commit_durably`; every write here goes
//! through it). Calling it earlier would acknowledge writes a power loss can take back;
//! `tests::append_acknowledges_only_committed_entries` fails if that order is ever broken.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};

use super::replay::ReplayGate;
use super::{NodeId, TypeConfig};
use crate::store::Store;

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    /// Told of truncations: entries past one were never committed, so reads need not wait.
    replay: Arc<ReplayGate>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// The log in `store`, with a [`ReplayGate`] waiting for its last entry.
    pub fn new(store: Store) -> StorageResult<Self> {
        let mut log = LogStore { store, replay: Arc::new(ReplayGate::new(0)) };
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
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(KEY_LAST_PURGED)?;
        let rtxn = self.store.env().read_txn().map_err(read_err)?;
        let last = match self.store.raft_log.last(&rtxn).map_err(read_err)? {
            Some((_, bytes)) => Some(serde_json::from_slice::<Entry<TypeConfig>>(bytes).map_err(read_err)?.log_id),
            None => None,
        };
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let rtxn = self.store.env().read_txn().map_err(read_err)?;
        match self.store.raft_meta.get(&rtxn, key).map_err(read_err)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    /// Writes one `raft_meta` value and returns once it is durable.
    async fn put_meta<T: serde::Serialize>(&self, key: &'static [u8], value: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        blocking(&self.store, "saving the vote", move |store| {
            let mut wtxn = store.env().write_txn()?;
            store.raft_meta.put(&mut wtxn, key, &bytes)?;
            store.commit_durably(wtxn)
        })
        .await
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    /// Writes `entries` in one transaction and calls `done` once that transaction has
    /// committed — or failed. This is `append` without openraft's callback type, so tests can
    /// observe exactly when completion is reported.
    pub async fn append_then<F>(&self, entries: Vec<Entry<TypeConfig>>, done: F) -> StorageResult<()>
    where
        F: FnOnce(Result<(), std::io::Error>) + Send + 'static,
    {
        let mut encoded = Vec::with_capacity(entries.len());
        for entry in &entries {
            encoded.push((entry.log_id.index, serde_json::to_vec(entry).map_err(write_err)?));
        }
        let result = blocking(&self.store, "appending to the Raft log", move |store| {
            let mut wtxn = store.env().write_txn()?;
            for (index, bytes) in &encoded {
                store.raft_log.put(&mut wtxn, &index.to_be_bytes(), bytes)?;
            }
            store.commit_durably(wtxn)
        })
        .await;
        match result {
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

/// Runs LMDB write work (whole transactions) off the async workers, waiting out a full disk
/// ([`Store::raft_write`]); a panic in it becomes an error.
async fn blocking<T: Send + 'static>(
    store: &Store,
    what: &'static str,
    f: impl Fn(&Store) -> Result<T, heed::Error> + Send + 'static,
) -> Result<T, heed::Error> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.raft_write(what, || f(&store)))
        .await
        .unwrap_or_else(|join| Err(heed::Error::Io(std::io::Error::other(join.to_string()))))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let rtxn = self.store.env().read_txn().map_err(read_err)?;
        let mut out = Vec::new();
        let from = start.to_be_bytes();
        let bounds = (Bound::Included(&from[..]), Bound::Unbounded);
        for row in self.store.raft_log.range(&rtxn, &bounds).map_err(read_err)? {
            let (key, bytes) = row.map_err(read_err)?;
            let index = u64::from_be_bytes(key.try_into().map_err(|_| {
                StorageError::from(StorageIOError::read_logs(&std::io::Error::other("log key is not 8 bytes")))
            })?);
            if !range.contains(&index) {
                break;
            }
            let entry: Entry<TypeConfig> = serde_json::from_slice(bytes).map_err(read_err)?;
            out.push(entry);
        }
        Ok(out)
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
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
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
        blocking(&self.store, "truncating the Raft log", move |store| {
            let mut wtxn = store.env().write_txn()?;
            let from = log_id.index.to_be_bytes();
            store.raft_log.delete_range(&mut wtxn, &(Bound::Included(&from[..]), Bound::Unbounded))?;
            store.commit_durably(wtxn)
        })
        .await
        .map_err(write_err)?;
        self.replay.truncated(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(write_err)?;
        // `last_purged` is written in the same transaction as the deletion, so the log state
        // never claims entries that are gone or forgets ones that were purged.
        blocking(&self.store, "purging the Raft log", move |store| {
            let mut wtxn = store.env().write_txn()?;
            let upto = log_id.index.to_be_bytes();
            store.raft_log.delete_range(&mut wtxn, &(Bound::Unbounded, Bound::Included(&upto[..])))?;
            store.raft_meta.put(&mut wtxn, KEY_LAST_PURGED, &bytes)?;
            store.commit_durably(wtxn)
        })
        .await
        .map_err(write_err)
    }
}

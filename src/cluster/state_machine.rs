//! openraft's state machine over [`Store`]: applies committed entries, builds and installs
//! snapshots. Raft metadata (`last_applied`, membership) is kept in `sm_meta`, written in the
//! same transaction as the changes it describes.
//!
//! The apply transaction commits without a sync of its own (the environment runs with
//! LMDB's `NO_META_SYNC`; see `Store::commit_durably`): a lost apply is re-applied from the
//! durable log, since `last_applied` is in the same transaction. Invariant: no log entry is
//! purged, and no snapshot taken, before the state that applied it is on disk — a purge is a
//! durable commit whose sync covers every earlier apply, and `Store::snapshot` syncs first.

use std::io::Cursor;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

use super::{NodeId, TypeConfig};
use crate::model::{Command, CommandResult};
use crate::store::{AppliedBatch, Store};

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

pub(super) const META_LAST_APPLIED: &str = "last_applied";
const META_MEMBERSHIP: &str = "membership";
/// The current snapshot, beside the LMDB files: `meta length u64 BE, meta JSON, data`. The
/// data carries its own checksum (`store::snapshot`).
const SNAPSHOT_FILE: &str = "snapshot.bin";

struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn snapshot_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, &e).into()
}

impl StateMachine {
    pub fn new(store: Store) -> Self {
        StateMachine { store }
    }

    fn read_applied(&self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        let view = self.store.read().map_err(sm_err)?;
        let last_applied = match view.meta(META_LAST_APPLIED).map_err(sm_err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(sm_err)?,
            None => None,
        };
        let membership = match view.meta(META_MEMBERSHIP).map_err(sm_err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(sm_err)?,
            None => Membership::default(),
        };
        Ok((last_applied, membership))
    }

    /// Writes the current snapshot to `snapshot.bin` beside the LMDB files: temporary file,
    /// fsync, rename, directory fsync. Kept out of LMDB so that a snapshot (a full copy of
    /// the state) never needs room in the map — taking one is how a nearly full map is freed.
    /// Gives the data back, so that the caller needs no second copy of it.
    async fn save_snapshot(&self, snapshot: StoredSnapshot) -> StorageResult<Vec<u8>> {
        let meta = serde_json::to_vec(&snapshot.meta).map_err(sm_err)?;
        let path = self.snapshot_path();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let len = (meta.len() as u64).to_be_bytes();
            store
                .write_when_space("saving a Raft snapshot", || {
                    crate::durable_file::replace_file_durably(&path, &[&len, &meta, &snapshot.data])
                })
                .map(|()| snapshot.data)
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| StorageIOError::write_snapshot(None, &e).into())
    }

    fn snapshot_path(&self) -> std::path::PathBuf {
        self.store.env().path().join(SNAPSHOT_FILE)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let (data, meta) = tokio::task::spawn_blocking(move || store.snapshot(&[META_LAST_APPLIED, META_MEMBERSHIP]))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        let last_log_id: Option<LogId<NodeId>> = match &meta[0] {
            Some(bytes) => serde_json::from_slice(bytes).map_err(snapshot_err)?,
            None => None,
        };
        let last_membership: Membership = match &meta[1] {
            Some(bytes) => serde_json::from_slice(bytes).map_err(snapshot_err)?,
            None => Membership::default(),
        };
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}", id.leader_id, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        let data = self.save_snapshot(StoredSnapshot { meta: meta.clone(), data }).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Vec<CommandResult>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let last_applied = serde_json::to_vec(&Some(last.log_id)).map_err(sm_err)?;
        let mut membership = None;
        for entry in &entries {
            if let EntryPayload::Membership(m) = &entry.payload {
                membership = Some(Membership::new(Some(entry.log_id), m.clone()));
            }
        }
        let mut meta = vec![(META_LAST_APPLIED, last_applied)];
        if let Some(m) = membership {
            meta.push((META_MEMBERSHIP, serde_json::to_vec(&m).map_err(sm_err)?));
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let empty: [Command; 0] = [];
            let batches: Vec<AppliedBatch<'_>> = entries
                .iter()
                .map(|entry| match &entry.payload {
                    EntryPayload::Normal(proposal) => AppliedBatch {
                        index: entry.log_id.index,
                        commands: &proposal.commands,
                        leader_time_ms: proposal.leader_time_ms,
                    },
                    _ => AppliedBatch { index: entry.log_id.index, commands: &empty, leader_time_ms: None },
                })
                .collect();
            store.raft_write("applying committed entries", || store.apply(&batches, &meta))
        })
        .await
        .map_err(sm_err)?
        .map_err(sm_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let sm_meta = vec![
            (META_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?),
            (META_MEMBERSHIP, serde_json::to_vec(&meta.last_membership).map_err(sm_err)?),
        ];
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let store = self.store.clone();
        let data = tokio::task::spawn_blocking(move || {
            store
                .write_when_space("installing a Raft snapshot", || store.restore_snapshot(&data, &sm_meta, index))
                .map(|()| data)
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.save_snapshot(StoredSnapshot { meta: meta.clone(), data }).await.map(drop)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let mut bytes = match std::fs::read(self.snapshot_path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snapshot_err(e)),
        };
        let corrupt = || snapshot_err(std::io::Error::other("snapshot file is truncated"));
        let meta_len = u64::from_be_bytes(bytes.get(..8).ok_or_else(corrupt)?.try_into().map_err(|_| corrupt())?);
        let meta_end = usize::try_from(meta_len).ok().and_then(|l| l.checked_add(8)).ok_or_else(corrupt)?;
        let meta = serde_json::from_slice(bytes.get(8..meta_end).ok_or_else(corrupt)?).map_err(snapshot_err)?;
        bytes.drain(..meta_end); // in place: no second copy of the state
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

//! openraft's state machine over [`Store`]: applies committed entries, builds and installs
//! snapshots. Raft metadata (`last_applied`, membership) is kept in `sm_meta`, written in the
//! same transaction as the changes it describes.
//!
//! The apply transaction commits without a sync of its own (the environment runs with
//! LMDB's `NO_META_SYNC`; see `Store::commit_durably`): a lost apply is re-applied from the
//! durable log, since `last_applied` is in the same transaction. Invariant: no log entry is
//! purged, and no snapshot taken, before the state that applied it is on disk — a purge is a
//! durable commit whose sync covers every earlier apply, and `Store::snapshot` syncs first.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{NodeId, TypeConfig};
use crate::model::{Command, CommandResult};
use crate::store::{AppliedBatch, Store};

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;

pub(super) const META_LAST_APPLIED: &str = "last_applied";
const META_MEMBERSHIP: &str = "membership";

// The current snapshot lives beside the LMDB files in two parts: its data in a file of its
// own (`snapshot-<n>.data`: a state snapshot, which carries its own checksum; sent to a
// peer as it is, chunk by chunk), and `snapshot.json`, its meta and the data file's name,
// replaced durably once the data is on disk. After a crash the current snapshot is the old
// one or the new one; data files no `snapshot.json` names are removed at the next save.
// Neither side of a transfer ever holds a whole snapshot in memory.
const CURRENT_FILE: &str = "snapshot.json";
const DATA_PREFIX: &str = "snapshot-";
const DATA_SUFFIX: &str = ".data";
/// Where a snapshot sent by the leader is written as it arrives.
const RECEIVING_FILE: &str = "snapshot-receiving.part";
/// The snapshot of cairn before 2026-12-07, one file: `meta length u64 BE, meta JSON, data`.
/// Converted to the two files when first read.
const LEGACY_FILE: &str = "snapshot.bin";
/// Bytes buffered on the way to or from a snapshot file.
const BUFFER_BYTES: usize = 64 * 1024;

type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

/// `snapshot.json`.
#[derive(Serialize, Deserialize)]
struct CurrentSnapshot {
    meta: Meta,
    /// The data file's name, in the same directory.
    data: String,
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

fn snapshot_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, &e).into()
}

/// A name for a new data file, unlike any before it in this directory.
fn new_data_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{DATA_PREFIX}{nanos}{DATA_SUFFIX}")
}

fn create_owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    // A leftover of a crash may have other permissions: the mode applies only to a new file.
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Makes `data` (a file in `dir`, already synced) the current snapshot with `meta`, then
/// removes every other data file and the legacy file.
fn make_current(dir: &Path, meta: &Meta, data: &str) -> std::io::Result<()> {
    let current = serde_json::to_vec(&CurrentSnapshot { meta: meta.clone(), data: data.to_string() })?;
    crate::durable_file::replace_file_durably(&dir.join(CURRENT_FILE), &[&current])?;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let stale = name.starts_with(DATA_PREFIX) && name.ends_with(DATA_SUFFIX) && name != data;
        if stale || name == LEGACY_FILE {
            std::fs::remove_file(dir.join(&*name))?;
        }
    }
    Ok(())
}

/// The current snapshot's meta and data file, if there is one (converting a legacy file).
fn read_current(dir: &Path) -> std::io::Result<Option<(Meta, PathBuf)>> {
    let path = dir.join(CURRENT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return convert_legacy(dir),
        Err(e) => return Err(e),
    };
    let unreadable = |why: String| std::io::Error::other(format!("{}: {why}", path.display()));
    let current: CurrentSnapshot = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    let plain_name = current.data.starts_with(DATA_PREFIX) && !current.data.contains('/');
    if !plain_name {
        return Err(unreadable(format!("{:?} is not a snapshot data file", current.data)));
    }
    Ok(Some((current.meta, dir.join(current.data))))
}

/// Converts a legacy `snapshot.bin`, streaming its data into a data file of its own.
fn convert_legacy(dir: &Path) -> std::io::Result<Option<(Meta, PathBuf)>> {
    let path = dir.join(LEGACY_FILE);
    let mut legacy = match std::fs::File::open(&path) {
        Ok(file) => BufReader::with_capacity(BUFFER_BYTES, file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let corrupt = |why: &str| std::io::Error::other(format!("{}: {why}", path.display()));
    let mut len = [0u8; 8];
    legacy.read_exact(&mut len).map_err(|_| corrupt("truncated"))?;
    let file_len = legacy.get_ref().metadata()?.len();
    let meta_len = u64::from_be_bytes(len).min(file_len);
    let mut meta = Vec::new();
    legacy.by_ref().take(meta_len).read_to_end(&mut meta)?;
    let meta: Meta = serde_json::from_slice(&meta).map_err(|e| corrupt(&e.to_string()))?;
    let name = new_data_name();
    let data_path = dir.join(&name);
    let mut data = create_owner_only(&data_path)?;
    std::io::copy(&mut legacy, &mut data)?;
    data.sync_all()?;
    make_current(dir, &meta, &name)?;
    tracing::info!(file = %data_path.display(), "converted the Raft snapshot to its two-file layout");
    Ok(Some((meta, data_path)))
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

    fn dir(&self) -> PathBuf {
        self.store.env().path().to_path_buf()
    }

    /// Opens a data file of the current snapshot for openraft.
    async fn open(meta: Meta, path: &Path) -> StorageResult<Snapshot<TypeConfig>> {
        let file = tokio::fs::File::open(path).await.map_err(snapshot_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Streams the state from one read transaction into a new data file (kept out of LMDB,
    /// so that a snapshot never needs room in the map — taking one is how a nearly full map
    /// is freed), syncs it, and makes it the current snapshot.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let store = self.store.clone();
        let dir = self.dir();
        let (name, meta) = tokio::task::spawn_blocking(move || {
            store.write_when_space("saving a Raft snapshot", || {
                let name = new_data_name();
                let path = dir.join(&name);
                let written = (|| {
                    let file = create_owner_only(&path)?;
                    let mut out = BufWriter::with_capacity(BUFFER_BYTES, &file);
                    let mut writer = crate::backup::SnapshotWriter::begin(&mut out)?;
                    let meta = store.snapshot_to(&mut writer, &[META_LAST_APPLIED, META_MEMBERSHIP])?;
                    writer.finish()?;
                    out.flush()?;
                    drop(out);
                    file.sync_all()?;
                    Ok::<_, crate::store::StoreError>(meta)
                })();
                if written.is_err() {
                    let _ = std::fs::remove_file(&path);
                }
                written.map(|meta| (name, meta))
            })
        })
        .await
        .map_err(snapshot_err)?
        .map_err(snapshot_write_err)?;
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
        let dir = self.dir();
        let (current, store) = (meta.clone(), self.store.clone());
        let data = tokio::task::spawn_blocking(move || {
            store.write_when_space("saving a Raft snapshot", || make_current(&dir, &current, &name))?;
            Ok::<_, std::io::Error>(dir.join(name))
        })
        .await
        .map_err(snapshot_err)?
        .map_err(snapshot_write_err)?;
        Self::open(meta, &data).await
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

    /// A file in the data dir that the leader's chunks are written into as they arrive.
    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.dir().join(RECEIVING_FILE);
        let file = tokio::task::spawn_blocking(move || create_owner_only(&path))
            .await
            .map_err(snapshot_write_err)?
            .map_err(snapshot_write_err)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    /// Restores the state from the received file, streaming (the snapshot is checked whole
    /// before the restore commits), then keeps the file as the current snapshot.
    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<tokio::fs::File>) -> StorageResult<()> {
        let mut received = *snapshot;
        received.flush().await.map_err(snapshot_write_err)?;
        let received = received.into_std().await;
        let sm_meta = vec![
            (META_LAST_APPLIED, serde_json::to_vec(&meta.last_log_id).map_err(sm_err)?),
            (META_MEMBERSHIP, serde_json::to_vec(&meta.last_membership).map_err(sm_err)?),
        ];
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let (store, dir, current) = (self.store.clone(), self.dir(), meta.clone());
        tokio::task::spawn_blocking(move || {
            // On disk before the restore lets the log behind it go.
            received.sync_all()?;
            let len = received.metadata()?.len();
            store.write_when_space("installing a Raft snapshot", || {
                (&received).seek(SeekFrom::Start(0))?;
                store.restore_snapshot(BufReader::with_capacity(BUFFER_BYTES, &received), len, &sm_meta, index)
            })?;
            let name = new_data_name();
            std::fs::rename(dir.join(RECEIVING_FILE), dir.join(&name))?;
            store.write_when_space("saving a Raft snapshot", || make_current(&dir, &current, &name))?;
            Ok::<_, crate::store::StoreError>(())
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let dir = self.dir();
        let current = tokio::task::spawn_blocking(move || read_current(&dir))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        match current {
            Some((meta, data)) => Self::open(meta, &data).await.map(Some),
            None => Ok(None),
        }
    }
}

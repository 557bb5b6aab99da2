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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{NodeId, TypeConfig};
use crate::backup::BUFFER_BYTES;
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
// one or the new one. Neither side of a transfer ever holds a whole snapshot in memory.
const CURRENT_FILE: &str = "snapshot.json";
const DATA_PREFIX: &str = "snapshot-";
const DATA_SUFFIX: &str = ".data";
/// A snapshot being built (renamed to a data file once synced).
const BUILDING_SUFFIX: &str = ".building";
/// Where a snapshot sent by the leader is written as it arrives.
const RECEIVING_FILE: &str = "snapshot-receiving.part";
/// The snapshot of cairn before 2026-12-07, one file: `meta length u64 BE, meta JSON, data`.
/// Converted to the two files when first read.
const LEGACY_FILE: &str = "snapshot.bin";

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
    files: SnapshotFiles,
}

/// The snapshot files in the data dir. openraft builds a snapshot in a task of its own,
/// which may finish while a snapshot from the leader is installed: replacing the current
/// snapshot is serialized, and a build never replaces a newer snapshot.
#[derive(Clone)]
struct SnapshotFiles {
    dir: PathBuf,
    replacing: Arc<Mutex<()>>,
}

impl SnapshotFiles {
    /// Removes what a crash left half-written (nothing is being built or received yet).
    fn open(dir: PathBuf) -> Self {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for name in entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()) {
                if name == RECEIVING_FILE || (name.starts_with(DATA_PREFIX) && name.ends_with(BUILDING_SUFFIX)) {
                    let _ = std::fs::remove_file(dir.join(&name));
                }
            }
        }
        SnapshotFiles { dir, replacing: Arc::default() }
    }

    /// A name `snapshot-<n><suffix>` no file in the directory has.
    fn new_name(&self, suffix: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos..)
            .map(|n| format!("{DATA_PREFIX}{n}{suffix}"))
            .find(|name| !self.dir.join(name).exists())
            .unwrap_or_default()
    }

    /// A new file for a snapshot being built, and its path.
    fn create_building(&self) -> std::io::Result<(std::fs::File, PathBuf)> {
        let path = self.dir.join(self.new_name(BUILDING_SUFFIX));
        Ok((crate::durable_file::create_owner_only(&path)?, path))
    }

    fn receiving(&self) -> PathBuf {
        self.dir.join(RECEIVING_FILE)
    }

    /// Makes `file` (synced) the current snapshot with `meta`, renamed to `name` (from
    /// [`SnapshotFiles::new_name`]; a retry after a failure finds it renamed already) —
    /// unless the current one is newer and `file` was built here: then `file` is dropped.
    /// Removes every other data file and the legacy file. Returns the current snapshot.
    fn make_current(&self, meta: &Meta, file: &Path, name: &str, built: bool) -> std::io::Result<(Meta, PathBuf)> {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, data)) = self.read_current_locked()? {
            if built && current.last_log_id > meta.last_log_id {
                std::fs::remove_file(file)?;
                return Ok((current, data));
            }
        }
        self.make_current_locked(meta, file, name)
    }

    /// [`SnapshotFiles::make_current`]'s work, with the lock held.
    fn make_current_locked(&self, meta: &Meta, file: &Path, name: &str) -> std::io::Result<(Meta, PathBuf)> {
        // A name of its own: the current data file is never overwritten in place.
        let data = self.dir.join(name);
        if !data.exists() {
            std::fs::rename(file, &data)?;
        }
        let current = serde_json::to_vec(&CurrentSnapshot { meta: meta.clone(), data: name.to_string() })?;
        crate::durable_file::replace_file_durably(&self.dir.join(CURRENT_FILE), &[&current])?;
        for entry in std::fs::read_dir(&self.dir)? {
            let other = entry?.file_name().to_string_lossy().into_owned();
            let stale = other.starts_with(DATA_PREFIX) && other.ends_with(DATA_SUFFIX) && other != name;
            if stale || other == LEGACY_FILE {
                std::fs::remove_file(self.dir.join(&other))?;
            }
        }
        Ok((meta.clone(), data))
    }

    /// The current snapshot's meta and data file, if there is one.
    fn read_current(&self) -> std::io::Result<Option<(Meta, PathBuf)>> {
        let _one_at_a_time = self.replacing.lock().unwrap_or_else(|p| p.into_inner());
        self.read_current_locked()
    }

    fn read_current_locked(&self) -> std::io::Result<Option<(Meta, PathBuf)>> {
        let path = self.dir.join(CURRENT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.convert_legacy(),
            Err(e) => return Err(e),
        };
        let unreadable = |why: String| std::io::Error::other(format!("{}: {why}", path.display()));
        let current: CurrentSnapshot = serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
        let plain_name = current.data.starts_with(DATA_PREFIX) && !current.data.contains('/');
        if !plain_name {
            return Err(unreadable(format!("{:?} is not a snapshot data file", current.data)));
        }
        Ok(Some((current.meta, self.dir.join(current.data))))
    }

    /// Converts a legacy `snapshot.bin`, streaming its data into a data file of its own.
    fn convert_legacy(&self) -> std::io::Result<Option<(Meta, PathBuf)>> {
        let path = self.dir.join(LEGACY_FILE);
        let mut legacy = match std::fs::File::open(&path) {
            Ok(file) => BufReader::with_capacity(BUFFER_BYTES, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let corrupt = |why: &str| std::io::Error::other(format!("{}: {why}", path.display()));
        let mut len = [0u8; 8];
        legacy.read_exact(&mut len).map_err(|_| corrupt("truncated"))?;
        let meta_len = u64::from_be_bytes(len).min(legacy.get_ref().metadata()?.len());
        let mut meta = Vec::new();
        legacy.by_ref().take(meta_len).read_to_end(&mut meta)?;
        let meta: Meta = serde_json::from_slice(&meta).map_err(|e| corrupt(&e.to_string()))?;
        let (mut data, building) = self.create_building()?;
        std::io::copy(&mut legacy, &mut data)?;
        data.sync_all()?;
        let converted = self.make_current_locked(&meta, &building, &self.new_name(DATA_SUFFIX))?;
        tracing::info!(file = %converted.1.display(), "converted the Raft snapshot to its two-file layout");
        Ok(Some(converted))
    }
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

impl StateMachine {
    pub fn new(store: Store) -> Self {
        let files = SnapshotFiles::open(store.env().path().to_path_buf());
        StateMachine { store, files }
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
        let (store, files) = (self.store.clone(), self.files.clone());
        let (building, meta) = tokio::task::spawn_blocking(move || {
            store.write_when_space("saving a Raft snapshot", || {
                let (file, path) = files.create_building()?;
                let written = (|| {
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
                written.map(|meta| (path, meta))
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
        let (store, files) = (self.store.clone(), self.files.clone());
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let name = files.new_name(DATA_SUFFIX);
            store.write_when_space("saving a Raft snapshot", || files.make_current(&meta, &building, &name, true))
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
        let path = self.files.receiving();
        let file = tokio::task::spawn_blocking(move || crate::durable_file::create_owner_only(&path))
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
        let (store, files, current) = (self.store.clone(), self.files.clone(), meta.clone());
        tokio::task::spawn_blocking(move || {
            // On disk before the restore lets the log behind it go.
            received.sync_all()?;
            let len = received.metadata()?.len();
            store.write_when_space("installing a Raft snapshot", || {
                (&received).seek(SeekFrom::Start(0))?;
                store.restore_snapshot(BufReader::with_capacity(BUFFER_BYTES, &received), len, &sm_meta, index)
            })?;
            let (receiving, name) = (files.receiving(), files.new_name(DATA_SUFFIX));
            store.write_when_space("saving a Raft snapshot", || {
                files.make_current(&current, &receiving, &name, false)
            })?;
            Ok::<_, crate::store::StoreError>(())
        })
        .await
        .map_err(sm_err)?
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e).into())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let files = self.files.clone();
        let current = tokio::task::spawn_blocking(move || files.read_current())
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        match current {
            Some((meta, data)) => Self::open(meta, &data).await.map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id(1, 1, index)),
            last_membership: Membership::default(),
            snapshot_id: index.to_string(),
        }
    }

    /// openraft builds snapshots in a task of its own: a build that finishes after a newer
    /// snapshot was installed must not replace it. Leftovers of a crash go at the next start.
    #[test]
    fn an_older_build_never_replaces_the_current_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SnapshotFiles::open(dir.path().to_path_buf());
        let build = |content: &[u8]| {
            let (mut file, path) = files.create_building().expect("building file");
            file.write_all(content).expect("write");
            path
        };
        std::fs::write(files.receiving(), b"installed").expect("received");
        let name = files.new_name(DATA_SUFFIX);
        let (current, installed) = files.make_current(&meta(10), &files.receiving(), &name, false).expect("install");
        assert_eq!(current, meta(10));
        let older = build(b"older");
        let name = files.new_name(DATA_SUFFIX);
        let (current, data) = files.make_current(&meta(5), &older, &name, true).expect("older build");
        assert_eq!((current, &data), (meta(10), &installed), "the installed snapshot stays current");
        assert!(!older.exists(), "the older build is dropped");
        let newer = build(b"newer");
        let name = files.new_name(DATA_SUFFIX);
        let (current, data) = files.make_current(&meta(12), &newer, &name, true).expect("newer build");
        assert_eq!(current, meta(12));
        assert_eq!(std::fs::read(&data).expect("data"), b"newer");
        assert!(!installed.exists(), "the replaced data file is removed");
        let leftover = build(b"half written");
        std::fs::write(files.receiving(), b"half received").expect("receiving");
        let files = SnapshotFiles::open(dir.path().to_path_buf());
        assert!(!leftover.exists() && !files.receiving().exists(), "a crash's leftovers are removed");
        assert_eq!(files.read_current().expect("read").expect("a snapshot"), (meta(12), data));
    }
}

//! The LMDB environment and everything in it: the Raft log tables (used by `cluster`) and the
//! state-machine tables (catalog, KV, indexes) that only [`Store::apply`] changes.
//!
//! Architecture Invariant: state-machine tables change only inside [`Store::apply`], one
//! write transaction per batch of log entries, committed together with `last_applied`.
//! Why: after a crash the state machine sits exactly at `last_applied` and Raft replays from
//! there; a second write path would let the state and the log disagree.
//!
//! Architecture Invariant: this module knows nothing of openraft; Raft metadata reaches it as
//! opaque bytes. Why: openraft is pinned to 0.9 and will be ported; the disk layout should not
//! move with it.

mod acl;
mod apply;
pub(crate) mod archive;
mod codec;
mod directory;
mod read;
mod rows;
mod snapshot;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, WithoutTls};

pub use apply::AppliedBatch;
pub(crate) use apply::INDEX_OFFSET;
pub use directory::{Directory, InstanceRecord, NodeRecord};
pub use read::{ReadView, ServiceHealth};
pub use snapshot::MetaValues;
pub use watch::{Subscription, Table, Topic, Watches};

/// Raw byte table; keys and values are encoded by `codec`.
pub type RawDb = Database<'static, Bytes, Bytes>;

/// Names of the LMDB databases, in creation order. Part of the disk format.
const DB_NAMES: [&str; 16] = [
    "raft_log",
    "raft_meta",
    "sm_meta",
    "sm_nodes",
    "sm_services",
    "sm_service_names",
    "sm_checks",
    "sm_kv",
    "sm_kv_tombstones",
    "sm_indexes",
    "sm_sessions",
    "sm_session_refs",
    "sm_kv_lock_delays",
    "sm_prepared_queries",
    "sm_acl",
    "sm_restore_parts",
];

/// The state-machine tables, which snapshots copy and restore wholesale.
#[derive(Clone, Copy)]
pub(crate) struct SmTables {
    pub meta: RawDb,
    pub nodes: RawDb,
    pub services: RawDb,
    /// `service name \0 node \0 service id` → empty: instances of a service by name.
    pub service_names: RawDb,
    pub checks: RawDb,
    pub kv: RawDb,
    /// KV key → index of its deletion, so a blocking query on a deleted key or prefix reports
    /// an index that never goes backwards.
    pub kv_tombstones: RawDb,
    /// Per-table and per-topic modify indexes (`codec::index_key`).
    pub indexes: RawDb,
    /// Session ID → [`crate::model::Session`] (JSON).
    pub sessions: RawDb,
    /// What sessions hang on, to find them from it (`codec::session_ref`): a session's
    /// node, each check it is tied to, each key it holds. Values are empty.
    pub session_refs: RawDb,
    /// KV key → the leader time (Unix ms) until which it cannot be acquired, set when the
    /// session holding it was invalidated.
    pub lock_delays: RawDb,
    /// Prepared query ID → [`crate::model::PreparedQuery`] (JSON).
    pub prepared_queries: RawDb,
    /// ACL tokens, policies and roles, and the secret index (`acl_key`).
    pub acl: RawDb,
    /// `restore id \0 offset u64 BE` → bytes: the parts of a backup archive restored into
    /// several servers, until the command that restores from them (`Command::RestoreParts`).
    /// In the state machine, so a server that installs a Raft snapshot mid-way has them too.
    pub restore_parts: RawDb,
}

impl SmTables {
    pub(crate) fn all(&self) -> [(u8, RawDb); TABLE_TAGS] {
        // The tags are the snapshot format (`TAG_*`): never renumber them.
        [
            (0, self.meta),
            (1, self.nodes),
            (2, self.services),
            (3, self.service_names),
            (4, self.checks),
            (5, self.kv),
            (6, self.kv_tombstones),
            (7, self.indexes),
            (8, self.sessions),
            (9, self.session_refs),
            (10, self.lock_delays),
            (11, self.prepared_queries),
            (12, self.acl),
            (13, self.restore_parts),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data dir {path}: cannot open LMDB environment: {source}")]
    Open { path: PathBuf, source: heed::Error },
    #[error("LMDB: {0}")]
    Lmdb(#[from] heed::Error),
    #[error("corrupt record in table {table} (key {key:?}): {reason}")]
    Corrupt { table: &'static str, key: String, reason: String },
    #[error("snapshot is not a cairn snapshot or is damaged: {0}")]
    BadSnapshot(String),
    #[error("snapshot or restore file I/O: {0}")]
    SnapshotIo(#[from] std::io::Error),
}

impl From<crate::backup::ArchiveError> for StoreError {
    fn from(e: crate::backup::ArchiveError) -> Self {
        StoreError::BadSnapshot(e.0)
    }
}

impl From<crate::backup::SnapshotError> for StoreError {
    fn from(e: crate::backup::SnapshotError) -> Self {
        StoreError::BadSnapshot(e.0)
    }
}

pub(crate) type RowIter<'t> = Box<dyn Iterator<Item = heed::Result<(&'t [u8], &'t [u8])>> + 't>;

/// Rows whose key starts with `prefix`; every row for an empty prefix (LMDB rejects an empty
/// key in a range lookup).
pub(crate) fn prefix_rows<'t>(
    db: RawDb,
    txn: &'t heed::RoTxn<'_, WithoutTls>,
    prefix: &[u8],
) -> Result<RowIter<'t>, heed::Error> {
    if prefix.is_empty() {
        Ok(Box::new(db.iter(txn)?))
    } else {
        Ok(Box::new(db.prefix_iter(txn, prefix)?))
    }
}

/// Tags this process's staged archives.
fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

pub(crate) use crate::backup::{
    TABLE_TAGS, TAG_ACL, TAG_CHECKS, TAG_INDEXES, TAG_KV, TAG_KV_TOMBSTONES, TAG_LOCK_DELAYS, TAG_META, TAG_NODES,
    TAG_PREPARED_QUERIES, TAG_RESTORE_PARTS, TAG_SERVICES, TAG_SERVICE_NAMES, TAG_SESSIONS,
};

/// Handle on the LMDB environment. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    env: Env<WithoutTls>,
    pub(crate) raft_log: RawDb,
    pub(crate) raft_meta: RawDb,
    pub(crate) sm: SmTables,
    watches: Arc<Watches>,
    directory: Arc<directory::DirectoryCell>,
    /// Where restore archives are staged before the Raft entry that applies them.
    staging_dir: Arc<std::path::PathBuf>,
    /// `fsync`s made by [`Store::sync`] and [`Store::sync_file`], for tests of what is
    /// acknowledged when.
    syncs: Arc<std::sync::atomic::AtomicU64>,
    /// How long each of those syncs took (the metric `fsync_seconds`).
    sync_seconds: Arc<crate::metrics::Histogram>,
    /// Test failpoint ([`STALL_SYNC_ENV`]): while this file exists, every sync and every
    /// state-machine commit hangs.
    stall_syncs_while: Option<Arc<std::path::PathBuf>>,
    /// Test failpoint ([`COPY_ON_SYNC_ENV`]): after every sync, the disk as it is now.
    copy_on_sync: Option<Arc<std::path::PathBuf>>,
    /// Set, to what the OS said, while a write waits for disk space
    /// ([`Store::write_when_space`]); writes through this server are refused meanwhile.
    out_of_space: Arc<std::sync::Mutex<Option<String>>>,
    /// Raft log and state-machine writes in progress ([`Store::raft_write`]).
    raft_writes: Arc<std::sync::Mutex<WritesInFlight>>,
    /// Bumped after every applied batch that changed an ACL table (or replaced the state),
    /// before its blocking queries are woken: what cached authorizers are checked against.
    acl_generation: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Default)]
struct WritesInFlight {
    count: usize,
    /// Since when none has finished, while `count > 0`.
    since: Option<std::time::Instant>,
}

/// How often a write that failed for want of disk space is tried again.
const OUT_OF_SPACE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Errors that can say the disk (or the user's quota) is full.
pub trait OutOfSpace: std::fmt::Display {
    /// The OS error behind it, if any.
    fn os_error(&self) -> Option<i32>;

    /// Whether it says so outright (`ENOSPC`, `EDQUOT`).
    fn is_out_of_space(&self) -> bool {
        matches!(self.os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    }
}

impl OutOfSpace for std::io::Error {
    fn os_error(&self) -> Option<i32> {
        self.raw_os_error()
    }
}

impl OutOfSpace for heed::Error {
    fn os_error(&self) -> Option<i32> {
        match self {
            heed::Error::Io(e) => e.raw_os_error(),
            heed::Error::Mdb(heed::MdbError::Other(code)) => Some(*code),
            _ => None,
        }
    }
}

impl OutOfSpace for StoreError {
    fn os_error(&self) -> Option<i32> {
        match self {
            StoreError::Lmdb(e) | StoreError::Open { source: e, .. } => e.os_error(),
            StoreError::SnapshotIo(e) => e.raw_os_error(),
            StoreError::Corrupt { .. } | StoreError::BadSnapshot(_) => None,
        }
    }
}

/// Below this many free bytes, an `EIO` from a write counts as a full disk: LMDB reports a
/// short write — what a file system that fills during the write gives — as `EIO`.
const FULL_BELOW_BYTES: u64 = 1 << 20;

/// Bytes free for unprivileged writes on the file system holding `dir`, if it can be asked.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) fills the zeroed struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Test failpoint: when this environment variable names a path, every durable commit and
/// every state-machine commit hangs while a file exists at that path (a stalled disk). Read once, at open; unset in
/// production, where it costs one `Option` check per sync.
pub const STALL_SYNC_ENV: &str = "CAIRN_TEST_STALL_SYNC_WHILE";

/// Test failpoint: when this environment variable names a file, every sync then copies the
/// environment there (a consistent LMDB copy). Put back in place of `data.mdb` after a
/// SIGKILL, it is what a power loss leaves: everything synced, none of the state-machine
/// commits made since (they skip their own sync). Read once, at open; unset in production.
pub const COPY_ON_SYNC_ENV: &str = "CAIRN_TEST_COPY_ON_SYNC";

impl Store {
    /// Opens (creating if needed) the environment in `dir` with a map of `map_size_bytes`.
    pub fn open(dir: &Path, map_size_bytes: u64) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(|e| open_err(heed::Error::Io(e)))?;
        // SAFETY: the data dir is locked by the agent (one process per environment), and we
        // never open the same path twice in this process.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size_bytes as usize)
                .max_dbs(DB_NAMES.len() as u32 + 2)
                .max_readers(1024)
                // Durable commits: see `Store::commit_durably`.
                .flags(heed::EnvFlags::NO_META_SYNC)
                .open(dir)
        }
        .map_err(open_err)?;
        let wtxn = env.write_txn().map_err(open_err)?;
        let dbs: [RawDb; 16] = env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let mut dbs = Vec::with_capacity(DB_NAMES.len());
                for name in DB_NAMES {
                    dbs.push(opener.create_database::<Bytes, Bytes>(wtxn, Some(name))?);
                }
                let dbs: [_; 16] = dbs.try_into().unwrap_or_else(|_| unreachable!());
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit(dbs))
            })
            .map_err(open_err)?
            .unwrap_commit();
        let [raft_log, raft_meta, meta, nodes, services, service_names, checks, kv, kv_tombstones, indexes, sessions, session_refs, lock_delays, prepared_queries, acl, restore_parts] =
            dbs;
        let store = Store {
            env,
            raft_log,
            raft_meta,
            sm: SmTables {
                meta,
                nodes,
                services,
                service_names,
                checks,
                kv,
                kv_tombstones,
                indexes,
                sessions,
                session_refs,
                lock_delays,
                prepared_queries,
                acl,
                restore_parts,
            },
            watches: Arc::new(Watches::default()),
            directory: Arc::default(),
            staging_dir: Arc::new(dir.join("restore")),
            syncs: Arc::default(),
            sync_seconds: Arc::new(crate::metrics::Histogram::new(crate::metrics::FSYNC_SECONDS)),
            stall_syncs_while: std::env::var_os(STALL_SYNC_ENV).map(|p| Arc::new(p.into())),
            copy_on_sync: std::env::var_os(COPY_ON_SYNC_ENV).map(|p| Arc::new(p.into())),
            out_of_space: Arc::default(),
            raft_writes: Arc::default(),
            acl_generation: Arc::default(),
        };
        // Not `sync`: the stall failpoint is for commits, and a store must open under it.
        store.env.force_sync().map_err(open_err)?;
        store.rebuild_directory()?;
        Ok(store)
    }

    /// Where `PUT /v1/snapshot` stages an archive for `Command::Restore`.
    pub fn staging_dir(&self) -> &Path {
        &self.staging_dir
    }

    /// A fresh file name for an archive staged in [`Store::staging_dir`], tagged with this
    /// process so that [`Store::remove_stale_staged`] can tell earlier runs' files apart.
    pub fn new_staged_archive_name(&self) -> String {
        format!("{}-{}.archive", process_tag(), uuid::Uuid::new_v4())
    }

    /// Removes archives staged by earlier processes (a crash between staging and the end of
    /// the request leaves one). Call once everything committed before start is applied: a
    /// restore entry still to be replayed needs its file. Blocking.
    pub fn remove_stale_staged(&self) {
        let Ok(entries) = std::fs::read_dir(self.staging_dir()) else { return };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(process_tag()) {
                continue;
            }
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a snapshot archive left staged by an earlier run")
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale staged archive"),
            }
        }
    }

    /// Added to Raft log indexes to give catalog and KV indexes; raised by a restore so that
    /// every index issued after it exceeds the archive's.
    pub fn index_offset(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        apply::read_index_offset(&self.sm, &rtxn)
    }

    pub fn env(&self) -> &Env<WithoutTls> {
        &self.env
    }

    /// Commits `wtxn` and returns once it is on disk.
    ///
    /// Invariant: the environment runs with LMDB's `NO_META_SYNC`, so a plain commit fsyncs
    /// its pages but leaves the meta page that makes them current to the next sync; LMDB
    /// documents that this keeps the database intact and can only undo the last commits.
    /// Every commit that is acknowledged to someone — Raft log appends, truncations and
    /// purges, the vote, an installed snapshot — goes through here and is durable before
    /// it returns. Only `Store::apply` commits without it: a state-machine commit undone by
    /// a power loss is applied again from the durable log (`last_applied` is in the same
    /// transaction), and the next durable commit's fsync makes it durable too, which is why
    /// no log entry is purged before the state that applied it is on disk. This saves one
    /// of the four device flushes each batch of writes used to cost.
    pub fn commit_durably(&self, wtxn: heed::RwTxn<'_>) -> Result<(), heed::Error> {
        wtxn.commit()?;
        self.sync()
    }

    /// Runs `write` — whole transactions, committed inside, so a failed one left nothing
    /// behind — until it does not fail for want of disk space, and returns its result.
    ///
    /// A full disk is waited out like a stalled one, never reported to Raft: openraft stops
    /// for good on a storage error, and a server must come back by itself once space is
    /// freed. Meanwhile [`Store::out_of_space`] says why, so the HTTP API refuses writes
    /// through this server at once instead of letting them hang; the first failure is logged
    /// as an error, the recovery as info. Blocking: call from a blocking thread.
    pub fn write_when_space<T, E: OutOfSpace>(
        &self,
        what: &str,
        mut write: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        loop {
            match write() {
                Err(e) if self.means_full_disk(&e) => {
                    let mut full = self.out_of_space.lock().unwrap_or_else(|p| p.into_inner());
                    if full.is_none() {
                        tracing::error!(
                            error = %e,
                            dir = %self.env.path().display(),
                            while_ = what,
                            "the data dir is out of space: this server's Raft log and state wait, and writes through it \
                             are refused, until space is freed; retrying every second"
                        );
                        *full = Some(e.to_string());
                    }
                    drop(full);
                    std::thread::sleep(OUT_OF_SPACE_RETRY);
                }
                result => {
                    if result.is_ok() && self.out_of_space.lock().unwrap_or_else(|p| p.into_inner()).take().is_some() {
                        tracing::info!(dir = %self.env.path().display(), "the data dir has space again: writes resume");
                    }
                    return result;
                }
            }
        }
    }

    /// [`Store::write_when_space`] for the Raft log and the state machine, counted so that
    /// [`Store::raft_writes_stuck_for`] can tell a disk that stopped answering.
    pub fn raft_write<T, E: OutOfSpace>(&self, what: &str, write: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        /// Counts the write out however it ends, a panic included (else the server would
        /// look stalled for good).
        struct InFlight<'a>(&'a std::sync::Mutex<WritesInFlight>);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                let mut writes = self.0.lock().unwrap_or_else(|p| p.into_inner());
                writes.count -= 1;
                // One finished: the disk moves. The others are timed from now.
                writes.since = (writes.count > 0).then(std::time::Instant::now);
            }
        }
        {
            let mut writes = self.raft_writes.lock().unwrap_or_else(|p| p.into_inner());
            writes.count += 1;
            writes.since.get_or_insert_with(std::time::Instant::now);
        }
        let _in_flight = InFlight(&self.raft_writes);
        self.write_when_space(what, write)
    }

    /// How long Raft log and state-machine writes have been in progress without one
    /// finishing (a stalled or full disk), if any are.
    pub fn raft_writes_stuck_for(&self) -> Option<std::time::Duration> {
        self.raft_writes.lock().unwrap_or_else(|p| p.into_inner()).since.map(|t| t.elapsed())
    }

    /// `ENOSPC`/`EDQUOT`, or `EIO` while the data dir's file system has (almost) nothing
    /// free: any other `EIO` is a failing disk and goes back to the caller.
    fn means_full_disk(&self, e: &impl OutOfSpace) -> bool {
        e.is_out_of_space()
            || (e.os_error() == Some(libc::EIO)
                && free_bytes(self.env.path()).is_some_and(|free| free < FULL_BELOW_BYTES))
    }

    /// Why writes wait for disk space, while they do.
    pub fn out_of_space(&self) -> Option<String> {
        self.out_of_space.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes every commit so far durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), heed::Error> {
        self.counted_flush(|| self.env.force_sync())?;
        if let Some(path) = &self.copy_on_sync {
            let partial = path.with_extension("partial");
            self.env.copy_to_path(&partial, heed::CompactionOption::Disabled)?;
            std::fs::rename(&partial, path.as_path())?;
        }
        Ok(())
    }

    /// Makes `file`'s writes durable (`fdatasync`): for the Raft log's segment files, which
    /// share the environment's disk, so they are held by the stall failpoint and timed and
    /// counted like [`Store::sync`].
    pub fn sync_file(&self, file: &std::fs::File) -> std::io::Result<()> {
        self.counted_flush(|| file.sync_data())
    }

    /// Runs `flush` once the stall failpoint lets it, timed and counted.
    fn counted_flush<E>(&self, flush: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let started = std::time::Instant::now();
        self.wait_while_disk_stalls();
        flush()?;
        self.sync_seconds.observe(started.elapsed(), false);
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// The [`STALL_SYNC_ENV`] failpoint: a disk whose writes hang, for the tests that prove a
    /// stalled leader is replaced and that reads wait for a stalled replay.
    fn wait_while_disk_stalls(&self) {
        if let Some(path) = &self.stall_syncs_while {
            while path.exists() {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// How long the syncs of [`Store::sync`] took.
    pub fn sync_seconds(&self) -> crate::metrics::HistogramValues {
        self.sync_seconds.snapshot()
    }

    /// Syncs made by [`Store::sync`] so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Changes whenever the ACL tables do ([`crate::acl::AclResolver`] caches by it).
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn watches(&self) -> &Arc<Watches> {
        &self.watches
    }

    /// The DNS view of the catalog as of the last applied batch. Never blocks.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.load()
    }

    fn rebuild_directory(&self) -> Result<(), StoreError> {
        let view = self.read()?;
        let index = [Table::Nodes, Table::Services, Table::Checks]
            .into_iter()
            .map(|t| view.table_index(t))
            .try_fold(0, |max, i| i.map(|i| max.max(i)))?;
        self.directory.rebuild(&view, index)
    }

    /// A consistent point-in-time view of the state machine.
    pub fn read(&self) -> Result<ReadView<'_>, StoreError> {
        Ok(ReadView::new(self.env.read_txn()?, self.sm))
    }

    /// Bytes the map still has room for, and the map size. Used to refuse writes before the
    /// map fills: a full map inside a Raft append would stop the Raft core.
    pub fn map_room(&self) -> (u64, u64) {
        let size = self.env.info().map_size as u64;
        // Pages held by the tables, not LMDB's high-water mark: that mark never comes down,
        // while pages freed by deletes and log purges are reused.
        let used = self.used_bytes().unwrap_or(size);
        (size.saturating_sub(used), size)
    }

    fn used_bytes(&self) -> Result<u64, heed::Error> {
        let rtxn = self.env.read_txn()?;
        let mut used = 0u64;
        let dbs = [self.raft_log, self.raft_meta].into_iter().chain(self.sm.all().into_iter().map(|(_, db)| db));
        for db in dbs {
            let stat = db.stat(&rtxn)?;
            let pages = (stat.branch_pages + stat.leaf_pages + stat.overflow_pages) as u64;
            used += pages * u64::from(stat.page_size);
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests;

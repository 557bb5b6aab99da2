//! Applying committed commands to the state-machine tables.
//!
//! Each command runs in its own nested LMDB transaction, so a command that is rejected (or a
//! transaction that rolls back) leaves no trace, while the batch as a whole commits once,
//! together with `last_applied`.

mod acl;

use std::io::{Seek, Write};

use heed::RwTxn;

use super::codec::{self, index_key, session_ref};
use super::rows;
use super::watch::{Table, Touched};
use super::{SmTables, Store, StoreError};
use crate::model::{
    CheckStatus, Command, CommandResult, DeregisterRequest, HealthCheck, KvEntry, KvLockOp, Node, RegisterRequest,
    RestorePart, RestoreParts, RestoreRequest, Service, Session, SessionBehavior, TxnError, TxnKvOp, TxnKvVerb,
    TxnResult,
};

use crate::backup::BUFFER_BYTES;

/// Why reading an archive into the tables stopped: the store failed (Raft must stop), or
/// the archive could not be read again (the restore is refused).
enum RestoreError {
    Store(StoreError),
    Archive(crate::backup::ArchiveError),
}

impl From<crate::backup::ArchiveError> for RestoreError {
    fn from(e: crate::backup::ArchiveError) -> Self {
        RestoreError::Archive(e)
    }
}

/// A restore from parts refused (the parts are dropped either way, so it commits).
fn refuse_parts(req: &RestoreParts, why: String) -> Outcome {
    Outcome::Commit(CommandResult::Rejected(format!("restore {}: {why}", req.restore)))
}

/// This server's copy of a restore's parts, read from the start as often as asked; it keeps
/// the first I/O error met, which the archive reader reports only as an unreadable archive.
struct LocalCopy {
    file: std::fs::File,
    failure: std::cell::RefCell<Option<std::io::Error>>,
}

impl LocalCopy {
    fn new(file: std::fs::File) -> LocalCopy {
        LocalCopy { file, failure: std::cell::RefCell::new(None) }
    }

    fn open(&self) -> std::io::Result<std::io::BufReader<CopyReader<'_>>> {
        let rewound = || {
            let mut file = self.file.try_clone()?;
            file.seek(std::io::SeekFrom::Start(0))?;
            Ok(file)
        };
        let file = rewound().inspect_err(|e| self.note(e))?;
        Ok(std::io::BufReader::with_capacity(BUFFER_BYTES, CopyReader { file, copy: self }))
    }

    fn note(&self, e: &std::io::Error) {
        self.failure.borrow_mut().get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
    }

    /// The first I/O error met reading the copy, if any.
    fn failure(&self) -> Option<std::io::Error> {
        self.failure.borrow_mut().take()
    }
}

/// Reads the copy, noting an I/O error in it with the copy.
struct CopyReader<'c> {
    file: std::fs::File,
    copy: &'c LocalCopy,
}

impl std::io::Read for CopyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf).inspect_err(|e| self.copy.note(e))
    }
}

/// `sm_restore_parts` keys of one restore: its name, then NUL.
fn restore_part_prefix(restore: &str) -> Vec<u8> {
    let mut prefix = restore.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// One committed log entry's commands, at its log index.
pub struct AppliedBatch<'a> {
    pub index: u64,
    pub commands: &'a [Command],
    /// The leader's clock when it appended the entry (`Proposal::leader_time_ms`).
    pub leader_time_ms: Option<u64>,
}

/// KV tombstones are reaped when a batch reaches an index that is a multiple of this...
const TOMBSTONE_REAP_EVERY: u64 = 4096;
/// ... dropping those older than this many indexes. Deterministic (it depends on log indexes
/// only), so every replica reaps the same ones.
const TOMBSTONE_RETAIN: u64 = 65_536;

/// Drops old tombstones, raising the KV floor to the newest index dropped: reads of a key or
/// prefix that only a reaped tombstone described report the floor, so their index never goes
/// backwards.
fn reap_tombstones(t: &SmTables, wtxn: &mut RwTxn<'_>, index: u64, now_ms: Option<u64>) -> Result<(), StoreError> {
    if let Some(now_ms) = now_ms {
        // Lock delays that ran out (the leader's clock, so every replica drops the same).
        let mut expired = Vec::new();
        for row in t.lock_delays.iter(wtxn)? {
            let (key, bytes) = row?;
            if codec::decode_u64("sm_kv_lock_delays", key, bytes)? <= now_ms {
                expired.push(key.to_vec());
            }
        }
        for key in &expired {
            t.lock_delays.delete(wtxn, key)?;
        }
    }
    let cutoff = index.saturating_sub(TOMBSTONE_RETAIN);
    let mut reaped = Vec::new();
    let mut floor = 0;
    for row in t.kv_tombstones.iter(wtxn)? {
        let (key, bytes) = row?;
        let deleted_at = codec::decode_u64("sm_kv_tombstones", key, bytes)?;
        if deleted_at <= cutoff {
            reaped.push(key.to_vec());
            floor = floor.max(deleted_at);
        }
    }
    for key in &reaped {
        t.kv_tombstones.delete(wtxn, key)?;
    }
    if floor > 0 {
        let floor_key = index_key::table(KV_FLOOR);
        let old = match t.indexes.get(wtxn, &floor_key)? {
            Some(bytes) => codec::decode_u64("sm_indexes", &floor_key, bytes)?,
            None => 0,
        };
        t.indexes.put(wtxn, &floor_key, &codec::encode_u64(old.max(floor)))?;
    }
    Ok(())
}

/// `sm_indexes` entry holding the newest reaped tombstone's index.
pub(super) const KV_FLOOR: &str = "kv-floor";

/// `sm_meta` key of the index offset (u64 BE): catalog and KV indexes are the Raft log index
/// plus this. 0 until a restore raises it.
pub(crate) const INDEX_OFFSET: &str = "index-offset";

/// `sm_indexes` entry holding the index of the last restore: no KV read reports less.
pub(super) const RESTORED: &str = "restored";

pub(super) fn read_index_offset(t: &SmTables, txn: &heed::RoTxn<'_, heed::WithoutTls>) -> Result<u64, StoreError> {
    match t.meta.get(txn, INDEX_OFFSET.as_bytes())? {
        Some(bytes) => codec::decode_u64("sm_meta", INDEX_OFFSET.as_bytes(), bytes),
        None => Ok(0),
    }
}

/// Where a change shows: in health results only (a check's status or output), or in catalog
/// results as well (nodes and services). Catalog reads wake only for the latter.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Health,
    Catalog,
}

/// Whether a command's nested transaction is kept.
enum Outcome {
    Commit(CommandResult),
    Abort(CommandResult),
}

impl Store {
    /// Applies `batches` in order and writes `meta` (e.g. `last_applied`, membership) into
    /// `sm_meta`, all in one write transaction; then wakes the blocking queries it touched.
    /// Returns one result per command. Blocking: call from a blocking thread. The Raft state
    /// machine is the only caller in the agent; tests and fuzz targets build states with it.
    pub fn apply(
        &self,
        batches: &[AppliedBatch<'_>],
        meta: &[(&str, Vec<u8>)],
    ) -> Result<Vec<Vec<CommandResult>>, StoreError> {
        let mut wtxn = self.env().write_txn()?;
        let mut touched = Touched::default();
        let mut last_index = 0;
        let mut results = Vec::with_capacity(batches.len());
        let mut offset = read_index_offset(&self.sm, &wtxn)?;
        for batch in batches {
            let mut batch_results = Vec::with_capacity(batch.commands.len());
            for command in batch.commands {
                let mut nested = self.env().nested_write_txn(&mut wtxn)?;
                let mut tx = ApplyTx {
                    txn: &mut nested,
                    t: self.sm,
                    index: batch.index + offset,
                    offset,
                    staging_dir: self.staging_dir(),
                    touched: Touched::default(),
                    now_ms: batch.leader_time_ms,
                };
                let outcome = match tx.command(command) {
                    Ok(outcome) => outcome,
                    // Deterministic on every replica (a key LMDB cannot hold): a result, not a
                    // storage failure, which would stop Raft.
                    Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::BadValSize))) => {
                        Outcome::Abort(CommandResult::Rejected("a key is longer than the store allows".into()))
                    }
                    Err(e) => return Err(e),
                };
                let new_offset = tx.offset;
                match outcome {
                    Outcome::Commit(result) => {
                        let command_touched = std::mem::take(&mut tx.touched);
                        offset = new_offset;
                        nested.commit()?;
                        touched.merge(command_touched);
                        batch_results.push(result);
                    }
                    Outcome::Abort(result) => {
                        nested.abort();
                        batch_results.push(result);
                    }
                }
            }
            results.push(batch_results);
            last_index = batch.index + offset;
        }
        if let Some(batch) = batches.iter().find(|b| b.index % TOMBSTONE_REAP_EVERY == 0) {
            reap_tombstones(&self.sm, &mut wtxn, last_index, batch.leader_time_ms)?;
        }
        for (key, value) in meta {
            self.sm.meta.put(&mut wtxn, key.as_bytes(), value)?;
        }
        // Not `commit_durably`: the log holds these entries durably already (see there).
        // Its pages are still written, so a stalled disk stalls it too.
        self.wait_while_disk_stalls();
        wtxn.commit()?;
        if touched.everything || touched.tables.contains(&Table::Acl) {
            self.acl_generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if touched.everything {
            // A restore's staged archive is deleted once this returns; the Raft entry could
            // not be applied again without it.
            self.sync()?;
            self.rebuild_directory()?;
            self.watches().notify_all(last_index);
        } else {
            self.directory.refresh(&self.read()?, &touched, last_index)?;
            self.watches().notify(&touched, last_index);
        }
        Ok(results)
    }
}

/// The state of one command's application.
struct ApplyTx<'t, 'e> {
    txn: &'t mut RwTxn<'e>,
    t: SmTables,
    /// The index this command's changes get: its Raft log index plus `offset`.
    index: u64,
    offset: u64,
    staging_dir: &'t std::path::Path,
    touched: Touched,
    /// The leader's clock for this entry; `None` in entries from before it was recorded,
    /// which then neither set nor honour lock delays.
    now_ms: Option<u64>,
}

impl ApplyTx<'_, '_> {
    fn command(&mut self, command: &Command) -> Result<Outcome, StoreError> {
        match command {
            Command::Register(req) => self.register(req),
            Command::Deregister(req) => self.deregister(req),
            Command::KvSet { key, value, flags, cas } => {
                let done = self.kv_set(key, value.clone(), *flags, *cas)?;
                Ok(Outcome::Commit(CommandResult::Bool(done)))
            }
            Command::KvDelete { key, recurse, cas } => {
                let done = if *recurse {
                    self.kv_delete_tree(key)?;
                    true
                } else {
                    self.kv_delete(key, *cas)?
                };
                Ok(Outcome::Commit(CommandResult::Bool(done)))
            }
            Command::Txn { ops } => self.txn(ops),
            Command::Restore(req) => self.restore(req),
            Command::RestoreArchive(req) => self.restore_from(
                || Ok(&req.archive[..]),
                req.archive.len() as u64,
                req.checksum,
                "the archive in the log",
            ),
            Command::RestorePart(part) => self.restore_part(part),
            Command::RestoreParts(req) => self.restore_parts(req),
            Command::SessionCreate(session) => self.session_create(session),
            Command::SessionDestroy { id } => {
                self.invalidate_session(id)?;
                Ok(Outcome::Commit(CommandResult::Done))
            }
            Command::KvLock { key, value, flags, session, op } => {
                Ok(match self.kv_lock(key, value.clone(), *flags, session, *op)? {
                    Ok(entry) => Outcome::Commit(CommandResult::Bool(entry.is_some())),
                    Err(why) => Outcome::Abort(CommandResult::Rejected(why)),
                })
            }
            Command::PreparedQuerySet(query) => self.prepared_query_set(query),
            Command::PreparedQueryDelete { id } => {
                if rows::prepared_query(&self.t, self.txn, id)?.is_none() {
                    return Ok(Outcome::Abort(CommandResult::Bool(false)));
                }
                self.t.prepared_queries.delete(self.txn, id.as_bytes())?;
                self.touch_table(Table::PreparedQueries)?;
                Ok(Outcome::Commit(CommandResult::Bool(true)))
            }
            Command::AclBootstrap { token, initial } => self.acl_bootstrap(token, *initial),
            Command::AclTokenSet(token) => self.acl_token_set(token),
            Command::AclTokenDelete { accessor_id } => self.acl_token_delete(accessor_id),
            Command::AclPolicySet(policy) => self.acl_policy_set(policy),
            Command::AclPolicyDelete { id } => self.acl_policy_delete(id),
            Command::AclRoleSet(role) => self.acl_role_set(role),
            Command::AclRoleDelete { id } => self.acl_role_delete(id),
        }
    }

    /// Creates or replaces a prepared query (its create index kept); refused when invalid
    /// or when another query has its name.
    fn prepared_query_set(&mut self, query: &crate::model::PreparedQuery) -> Result<Outcome, StoreError> {
        let reject = |why: String| Ok(Outcome::Abort(CommandResult::Rejected(why)));
        if !rows::storable(query.id.as_bytes()) {
            return reject(format!("invalid prepared query ID {:?}", query.id));
        }
        if let Some(why) = query.invalid() {
            return reject(why);
        }
        let mut create_index = self.index;
        for row in self.t.prepared_queries.iter(self.txn)? {
            let (key, bytes) = row?;
            let other: crate::model::PreparedQuery = codec::decode_json("sm_prepared_queries", key, bytes)?;
            if other.id == query.id {
                create_index = other.create_index;
            } else if !query.name.is_empty() && other.name.eq_ignore_ascii_case(&query.name) {
                return reject(format!("Name '{}' aliases an existing query name", query.name));
            }
        }
        let stored = crate::model::PreparedQuery { create_index, modify_index: self.index, ..query.clone() };
        self.t.prepared_queries.put(self.txn, query.id.as_bytes(), &codec::encode_json(&stored))?;
        self.touch_table(Table::PreparedQueries)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// Replaces every catalog and KV table with a staged archive's state, indexes included,
    /// and raises the index offset so that every later index exceeds the archive's. Raft's
    /// own keys in `sm_meta` stay. A missing or changed archive is a rejection, identical on
    /// every replica that lacks it, never a storage error.
    fn restore(&mut self, req: &RestoreRequest) -> Result<Outcome, StoreError> {
        let reject = |why: String| Ok(Outcome::Abort(CommandResult::Rejected(why)));
        if req.archive.is_empty() || req.archive.contains('/') || req.archive.starts_with('.') {
            return reject(format!("invalid staged archive name {:?}", req.archive));
        }
        let path = self.staging_dir.join(&req.archive);
        let len = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) => return reject(format!("staged archive {}: {e}", path.display())),
        };
        let open = || std::fs::File::open(&path).map(|file| std::io::BufReader::with_capacity(BUFFER_BYTES, file));
        self.restore_from(open, len, req.checksum, &format!("staged archive {}", path.display()))
    }

    /// Keeps one part of an archive restored into several servers. Parts arrive in order;
    /// the first drops whatever an unfinished restore left.
    fn restore_part(&mut self, part: &RestorePart) -> Result<Outcome, StoreError> {
        let reject = |why: String| Ok(Outcome::Abort(CommandResult::Rejected(why)));
        if part.restore.is_empty() || part.restore.len() > 255 || part.restore.contains('\0') {
            return reject(format!("invalid restore name {:?}", part.restore));
        }
        if part.offset == 0 {
            self.t.restore_parts.clear(self.txn)?;
        } else {
            let prefix = restore_part_prefix(&part.restore);
            // The last part held must end where this one starts.
            let end = match self.t.restore_parts.rev_prefix_iter(self.txn, &prefix)?.next().transpose()? {
                Some((key, bytes)) => {
                    codec::decode_u64("sm_restore_parts", key, &key[prefix.len()..])? + bytes.len() as u64
                }
                None => 0,
            };
            if end != part.offset {
                return reject(format!(
                    "part at offset {} of restore {} does not follow the parts held (another restore started since?)",
                    part.offset, part.restore
                ));
            }
        }
        let mut key = restore_part_prefix(&part.restore);
        key.extend_from_slice(&part.offset.to_be_bytes());
        self.t.restore_parts.put(self.txn, &key, &part.bytes)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// Restores from the parts of `req.restore`, which must make up the archive checked on
    /// the server that took it. The parts are dropped either way.
    fn restore_parts(&mut self, req: &RestoreParts) -> Result<Outcome, StoreError> {
        // Copied into an unnamed file beside the staged archives (memory stays at one part),
        // then restored from it like a staged archive. Failing to copy is local to this
        // server: refusing here alone would leave it apart from the others, so it is a storage
        // error (`?`: retried while the disk is full, as any apply).
        std::fs::create_dir_all(self.staging_dir)?;
        let mut copy = std::io::BufWriter::with_capacity(BUFFER_BYTES, tempfile::tempfile_in(self.staging_dir)?);
        let prefix = restore_part_prefix(&req.restore);
        let mut copied = 0;
        for row in self.t.restore_parts.prefix_iter(self.txn, &prefix)? {
            let (key, bytes) = row?;
            if codec::decode_u64("sm_restore_parts", key, &key[prefix.len()..])? != copied {
                break;
            }
            copy.write_all(bytes)?;
            copied += bytes.len() as u64;
        }
        let file = copy.into_inner().map_err(|e| e.into_error())?;
        self.t.restore_parts.clear(self.txn)?;
        if copied != req.size_bytes {
            return Ok(refuse_parts(
                req,
                format!(
                    "the parts held make {copied} bytes of the {} sent (another restore started since?)",
                    req.size_bytes
                ),
            ));
        }
        self.restore_from_copy(&LocalCopy::new(file), req)
    }

    /// Restores from this server's copy of a restore's parts. Every server holds the same
    /// parts, so an archive that fails its check is refused alike on every one; a copy this
    /// server cannot read back (a disk error) is its own failure, a storage error like any
    /// failed read of the store, never a refusal that would leave it apart from the others.
    fn restore_from_copy(&mut self, copy: &LocalCopy, req: &RestoreParts) -> Result<Outcome, StoreError> {
        let outcome = match Self::check_archive(|| copy.open(), req.size_bytes, req.checksum, "its parts") {
            Ok(verified) => self.replace_with(|| copy.open(), req.size_bytes, &verified)?,
            // Refused when checked, nothing changed: the parts stay dropped.
            Err(why) => refuse_parts(req, why),
        };
        match copy.failure() {
            Some(e) => Err(std::io::Error::new(
                e.kind(),
                format!("reading back this server's copy of restore {}: {e}", req.restore),
            )
            .into()),
            None => Ok(outcome),
        }
    }

    /// Checks an archive, streaming it from what `open` gives, against the checksum it had
    /// when the server that took it checked it; the refusal says why (`what` names it).
    fn check_archive<R: std::io::Read>(
        open: impl FnMut() -> std::io::Result<R>,
        len: u64,
        checksum: u64,
        what: &str,
    ) -> Result<crate::backup::Verified, String> {
        match super::archive::check(open, len) {
            Ok(v) if v.checksum == checksum => Ok(v),
            Ok(_) => Err(format!("{what} changed since it was checked")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Replaces the state with a backup archive whose checksum must be `checksum`, read
    /// (streaming) from what `open` gives; `what` names it in rejections.
    fn restore_from<R: std::io::Read>(
        &mut self,
        mut open: impl FnMut() -> std::io::Result<R>,
        len: u64,
        checksum: u64,
        what: &str,
    ) -> Result<Outcome, StoreError> {
        match Self::check_archive(&mut open, len, checksum, what) {
            Ok(verified) => self.replace_with(open, len, &verified),
            Err(why) => Ok(Outcome::Abort(CommandResult::Rejected(why))),
        }
    }

    /// Replaces the state with a checked archive (`verified`), read again from what `open`
    /// gives. A refusal is an abort: whatever was changed before it is undone.
    fn replace_with<R: std::io::Read>(
        &mut self,
        open: impl FnMut() -> std::io::Result<R>,
        len: u64,
        verified: &crate::backup::Verified,
    ) -> Result<Outcome, StoreError> {
        let reject = |why: String| Ok(Outcome::Abort(CommandResult::Rejected(why)));
        // The restore's own index: above the archive's highest and above anything issued
        // before, so no reader sees an index go backwards. Later indexes follow from it.
        let raft_index = self.index - self.offset;
        let Some(offset) = verified.header.index.checked_add(1).map(|i| i.saturating_sub(raft_index).max(self.offset))
        else {
            return reject("archive index out of range".into());
        };
        let Some(restore_index) = raft_index.checked_add(offset).filter(|i| *i < crate::backup::INDEX_MAX) else {
            return reject("archive index out of range".into());
        };
        // `sm_meta` is Raft's position and the index offset: it stays this server's.
        let tables = self.t.all();
        for (tag, db) in tables {
            if tag != super::TAG_META {
                db.clear(self.txn)?;
            }
        }
        // The parts of a restore under way when the archive was made are not restored. The
        // archive was checked; reading it again can still fail (a disk error): refused, and
        // the abort undoes the tables cleared above.
        let txn = &mut *self.txn;
        let copied = crate::backup::read_archive(open, len, |(tag, key, value)| {
            if tag != super::TAG_META && tag != super::TAG_RESTORE_PARTS {
                tables[tag as usize].1.put(txn, key, value).map_err(|e| RestoreError::Store(e.into()))?;
            }
            Ok::<_, RestoreError>(())
        });
        match copied {
            Ok(_) => {}
            Err(RestoreError::Store(e)) => return Err(e),
            Err(RestoreError::Archive(e)) => return reject(format!("reading the archive again: {e}")),
        }
        // Rows keep their archived Create/ModifyIndex; every index readers block on moves
        // to the restore's.
        let index_keys: Vec<Vec<u8>> =
            self.t.indexes.iter(self.txn)?.map(|row| row.map(|(key, _)| key.to_vec())).collect::<Result<_, _>>()?;
        for key in index_keys {
            self.t.indexes.put(self.txn, &key, &codec::encode_u64(restore_index))?;
        }
        self.t.indexes.put(self.txn, &index_key::table(RESTORED), &codec::encode_u64(restore_index))?;
        self.offset = offset;
        self.index = restore_index;
        self.t.meta.put(self.txn, INDEX_OFFSET.as_bytes(), &codec::encode_u64(self.offset))?;
        self.touched.everything = true;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    // ---- index bookkeeping -------------------------------------------------------------

    fn bump(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.t.indexes.put(self.txn, key, &codec::encode_u64(self.index))?;
        Ok(())
    }

    fn touch_table(&mut self, table: Table) -> Result<(), StoreError> {
        self.touched.table(table);
        self.bump(&index_key::table(table.name()))
    }

    /// Service `name`'s instances on `node` changed (the instance, its checks or its node);
    /// with `Scope::Catalog` also what catalog reads return (not just health).
    fn touch_service(&mut self, name: &str, node: &str, scope: Scope) -> Result<(), StoreError> {
        self.bump(&index_key::service(name))?;
        self.touched.services.entry(name.to_string()).or_default().insert(node.to_string());
        if scope == Scope::Catalog {
            self.bump(&index_key::catalog_service(name))?;
            self.touched.catalog_services.insert(name.to_string());
        }
        Ok(())
    }

    fn touch_node(&mut self, name: &str, scope: Scope) -> Result<(), StoreError> {
        self.bump(&index_key::node(name))?;
        self.touched.nodes.insert(name.to_string());
        if scope == Scope::Catalog {
            self.bump(&index_key::catalog_node(name))?;
            self.touched.catalog_nodes.insert(name.to_string());
        }
        Ok(())
    }

    /// A node-level change (the node itself or a node check) changes every service instance
    /// on it.
    fn touch_node_and_its_services(&mut self, node: &str, scope: Scope) -> Result<(), StoreError> {
        self.touch_node(node, scope)?;
        for service in self.node_services(node)? {
            self.touch_service(&service.service, node, scope)?;
        }
        Ok(())
    }

    // ---- catalog -------------------------------------------------------------------------

    fn get_node(&self, name: &str) -> Result<Option<Node>, StoreError> {
        rows::node(&self.t, self.txn, name)
    }

    fn get_service(&self, node: &str, id: &str) -> Result<Option<Service>, StoreError> {
        rows::service(&self.t, self.txn, node, id)
    }

    fn get_check(&self, node: &str, id: &str) -> Result<Option<HealthCheck>, StoreError> {
        rows::check(&self.t, self.txn, node, id)
    }

    fn node_services(&self, node: &str) -> Result<Vec<Service>, StoreError> {
        rows::node_services(&self.t, self.txn, node)
    }

    fn node_checks(&self, node: &str) -> Result<Vec<HealthCheck>, StoreError> {
        rows::node_checks(&self.t, self.txn, node)
    }

    fn register(&mut self, req: &RegisterRequest) -> Result<Outcome, StoreError> {
        if req.node.is_empty() {
            return Ok(Outcome::Abort(CommandResult::Rejected("Must provide node".into())));
        }
        let existing = self.get_node(&req.node)?;
        if existing.is_none() {
            if let Some(other) = self.node_differing_in_case(&req.node)? {
                return Ok(Outcome::Abort(CommandResult::Rejected(format!(
                    "Node name {:?} differs only in case from existing node {other:?}; node names are case-insensitive",
                    req.node
                ))));
            }
        }
        if req.address.is_empty() && !(req.skip_node_update && existing.is_some()) {
            let why = "Must provide address if SkipNodeUpdate is not set (or the node does not exist yet)";
            return Ok(Outcome::Abort(CommandResult::Rejected(why.into())));
        }
        if !(req.skip_node_update && existing.is_some()) {
            let create_index = existing.as_ref().map_or(self.index, |n| n.create_index);
            let node = Node {
                id: req.id.clone(),
                node: req.node.clone(),
                address: req.address.clone(),
                datacenter: req.datacenter.clone(),
                tagged_addresses: req.tagged_addresses.clone(),
                meta: req.node_meta.clone(),
                create_index,
                modify_index: self.index,
            };
            let unchanged = existing.as_ref().is_some_and(|old| {
                Node { create_index: old.create_index, modify_index: old.modify_index, ..node.clone() } == *old
            });
            if !unchanged {
                self.t.nodes.put(self.txn, req.node.as_bytes(), &codec::encode_json(&node))?;
                self.touch_table(Table::Nodes)?;
                self.touch_node_and_its_services(&req.node, Scope::Catalog)?;
            }
        }
        if let Some(def) = &req.service {
            let old = self.get_service(&req.node, &def.id)?;
            let service = Service {
                node: req.node.clone(),
                id: def.id.clone(),
                service: def.service.clone(),
                tags: def.tags.clone(),
                address: def.address.clone(),
                meta: def.meta.clone(),
                port: def.port,
                weights: def.weights,
                enable_tag_override: def.enable_tag_override,
                tagged_addresses: def.tagged_addresses.clone(),
                create_index: old.as_ref().map_or(self.index, |s| s.create_index),
                modify_index: self.index,
            };
            let unchanged = old.as_ref().is_some_and(|o| {
                Service { create_index: o.create_index, modify_index: o.modify_index, ..service.clone() } == *o
            });
            if !unchanged {
                if let Some(old) = &old {
                    if old.service != service.service {
                        let stale = codec::triple_key(&old.service, &req.node, &old.id);
                        self.t.service_names.delete(self.txn, &stale)?;
                        self.touch_service(&old.service, &req.node, Scope::Catalog)?;
                    }
                }
                let key = codec::pair_key(&req.node, &def.id);
                self.t.services.put(self.txn, &key, &codec::encode_json(&service))?;
                let name_key = codec::triple_key(&service.service, &req.node, &service.id);
                self.t.service_names.put(self.txn, &name_key, &[])?;
                self.touch_table(Table::Services)?;
                self.touch_service(&service.service, &req.node, Scope::Catalog)?;
                self.touch_node(&req.node, Scope::Catalog)?;
                // Checks carry the service's name and tags: keep them in step.
                self.refresh_service_checks(&service)?;
            }
        }
        for def in &req.checks {
            let (service_name, service_tags) = if def.service_id.is_empty() {
                (String::new(), Vec::new())
            } else {
                match self.get_service(&req.node, &def.service_id)? {
                    Some(s) => (s.service, s.tags),
                    None => {
                        return Ok(Outcome::Abort(CommandResult::Rejected(format!(
                            "Unknown service ID {:?} for check {:?} on node {:?}",
                            def.service_id, def.check_id, req.node
                        ))))
                    }
                }
            };
            let old = self.get_check(&req.node, &def.check_id)?;
            let check = HealthCheck {
                node: req.node.clone(),
                check_id: def.check_id.clone(),
                name: def.name.clone(),
                status: def.status,
                notes: def.notes.clone(),
                output: def.output.clone(),
                service_id: def.service_id.clone(),
                service_name,
                service_tags,
                r#type: def.check_type.clone(),
                create_index: old.as_ref().map_or(self.index, |c| c.create_index),
                modify_index: self.index,
            };
            let unchanged = old.as_ref().is_some_and(|o| {
                HealthCheck { create_index: o.create_index, modify_index: o.modify_index, ..check.clone() } == *o
            });
            if !unchanged {
                if let Some(old) = &old {
                    self.touch_check_scope(old)?;
                }
                self.put_check(&check)?;
                self.touch_check_scope(&check)?;
                if check.status == CheckStatus::Critical {
                    self.invalidate_check_sessions(&check.node, &check.check_id)?;
                }
            }
        }
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// An existing node whose name equals `name` but for case. DNS (and Consul's catalog)
    /// treat node names case-insensitively, so two such nodes would shadow each other.
    ///
    /// Walks only the case variants that exist: from the empty prefix, each ASCII letter
    /// extends a prefix both ways, and a branch is kept only if some node name starts with
    /// it (one B-tree seek). So the cost is about two seeks per character of `name`, not a
    /// scan of every node (which made bulk registration quadratic).
    fn node_differing_in_case(&self, name: &str) -> Result<Option<String>, StoreError> {
        let target = name.as_bytes();
        let mut prefixes: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(prefix) = prefixes.pop() {
            let Some(&c) = target.get(prefix.len()) else {
                if prefix != target && self.t.nodes.get(self.txn, &prefix)?.is_some() {
                    return Ok(Some(String::from_utf8_lossy(&prefix).into_owned()));
                }
                continue;
            };
            let (lower, upper) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
            for variant in if lower == upper { vec![c] } else { vec![lower, upper] } {
                let mut next = prefix.clone();
                next.push(variant);
                if self.t.nodes.prefix_iter(self.txn, &next)?.next().transpose()?.is_some() {
                    prefixes.push(next);
                }
            }
        }
        Ok(None)
    }

    fn put_check(&mut self, check: &HealthCheck) -> Result<(), StoreError> {
        let key = codec::pair_key(&check.node, &check.check_id);
        self.t.checks.put(self.txn, &key, &codec::encode_json(check))?;
        Ok(())
    }

    /// Marks what a change of `check` affects: its table, its node, and its service (or every
    /// service on the node for a node check).
    fn touch_check_scope(&mut self, check: &HealthCheck) -> Result<(), StoreError> {
        self.touch_table(Table::Checks)?;
        if check.service_id.is_empty() {
            self.touch_node_and_its_services(&check.node, Scope::Health)
        } else {
            self.touch_node(&check.node, Scope::Health)?;
            self.touch_service(&check.service_name, &check.node, Scope::Health)
        }
    }

    fn refresh_service_checks(&mut self, service: &Service) -> Result<(), StoreError> {
        for mut check in self.node_checks(&service.node)? {
            if check.service_id == service.id
                && (check.service_name != service.service || check.service_tags != service.tags)
            {
                check.service_name = service.service.clone();
                check.service_tags = service.tags.clone();
                check.modify_index = self.index;
                self.put_check(&check)?;
                self.touch_table(Table::Checks)?;
            }
        }
        Ok(())
    }

    fn deregister(&mut self, req: &DeregisterRequest) -> Result<Outcome, StoreError> {
        if self.get_node(&req.node)?.is_none() {
            return Ok(Outcome::Commit(CommandResult::Done));
        }
        match (&req.service_id, &req.check_id) {
            (Some(service_id), _) => self.delete_service(&req.node, service_id)?,
            (None, Some(check_id)) => {
                if let Some(check) = self.get_check(&req.node, check_id)? {
                    self.t.checks.delete(self.txn, &codec::pair_key(&req.node, check_id))?;
                    self.touch_check_scope(&check)?;
                    self.invalidate_check_sessions(&req.node, check_id)?;
                }
            }
            (None, None) => {
                self.invalidate_node_sessions(&req.node)?;
                self.touch_node_and_its_services(&req.node, Scope::Catalog)?;
                for service in self.node_services(&req.node)? {
                    self.delete_service(&req.node, &service.id)?;
                }
                for check in self.node_checks(&req.node)? {
                    self.t.checks.delete(self.txn, &codec::pair_key(&req.node, &check.check_id))?;
                    self.touch_table(Table::Checks)?;
                }
                self.t.nodes.delete(self.txn, req.node.as_bytes())?;
                self.touch_table(Table::Nodes)?;
                // Readers of the name now get the nodes table's index (just moved).
                self.t.indexes.delete(self.txn, &index_key::node(&req.node))?;
                self.t.indexes.delete(self.txn, &index_key::catalog_node(&req.node))?;
            }
        }
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// Removes a service instance and its checks.
    fn delete_service(&mut self, node: &str, id: &str) -> Result<(), StoreError> {
        let Some(service) = self.get_service(node, id)? else {
            return Ok(());
        };
        self.t.services.delete(self.txn, &codec::pair_key(node, id))?;
        self.t.service_names.delete(self.txn, &codec::triple_key(&service.service, node, id))?;
        for check in self.node_checks(node)? {
            if check.service_id == id {
                self.t.checks.delete(self.txn, &codec::pair_key(node, &check.check_id))?;
                self.touch_table(Table::Checks)?;
                self.invalidate_check_sessions(node, &check.check_id)?;
            }
        }
        self.touch_table(Table::Services)?;
        self.touch_service(&service.service, node, Scope::Catalog)?;
        if self.t.service_names.prefix_iter(self.txn, &codec::pair_prefix(&service.service))?.next().is_none() {
            // Its last instance: readers of the name now get the services table's index.
            self.t.indexes.delete(self.txn, &index_key::service(&service.service))?;
            self.t.indexes.delete(self.txn, &index_key::catalog_service(&service.service))?;
        }
        self.touch_node(node, Scope::Catalog)
    }

    // ---- sessions ----------------------------------------------------------------------

    fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        rows::session(&self.t, self.txn, id)
    }

    /// Stores a new session after checking what Consul checks: its node and checks exist and
    /// no check is critical (a session tied to a failing check would be invalid at birth).
    fn session_create(&mut self, session: &Session) -> Result<Outcome, StoreError> {
        let reject = |why: String| Ok(Outcome::Abort(CommandResult::Rejected(why)));
        if session.id.is_empty() || !rows::storable(session.id.as_bytes()) {
            return reject(format!("invalid session ID {:?}", session.id));
        }
        if self.get_session(&session.id)?.is_some() {
            return reject(format!("session {:?} already exists", session.id));
        }
        if self.get_node(&session.node)?.is_none() {
            return reject(format!("Missing node registration for {:?}", session.node));
        }
        for check_id in session.check_ids() {
            match self.get_check(&session.node, check_id)? {
                None => return reject(format!("Missing check '{check_id}' registration")),
                Some(check) if check.status == CheckStatus::Critical => {
                    return reject(format!("Check '{check_id}' is in critical state"))
                }
                Some(_) => {}
            }
        }
        let mut refs = vec![session_ref::node(&session.node, &session.id)];
        refs.extend(session.check_ids().map(|check| session_ref::check(&session.node, check, &session.id)));
        if !refs.iter().all(|r| rows::storable(r)) {
            return reject("node name or check ID too long to tie a session to".into());
        }
        let stored = Session { create_index: self.index, modify_index: self.index, ..session.clone() };
        self.t.sessions.put(self.txn, session.id.as_bytes(), &codec::encode_json(&stored))?;
        for r in &refs {
            self.t.session_refs.put(self.txn, r, &[])?;
        }
        self.touch_table(Table::Sessions)?;
        Ok(Outcome::Commit(CommandResult::Done))
    }

    /// Ends session `id` (if it exists): the keys it holds are released or deleted per its
    /// behavior and, with a lock delay, cannot be acquired again until it has passed.
    fn invalidate_session(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(session) = self.get_session(id)? else { return Ok(()) };
        let held_prefix = session_ref::held_key_prefix(id);
        let mut held = Vec::new();
        for row in super::prefix_rows(self.t.session_refs, self.txn, &held_prefix)? {
            let (key, _) = row?;
            held.push((key.to_vec(), session_ref::tail(key, 2)));
        }
        let delay_until = self.now_ms.filter(|_| session.lock_delay_ms > 0).map(|now| now + session.lock_delay_ms);
        for (ref_key, key) in held {
            self.t.session_refs.delete(self.txn, &ref_key)?;
            let Some(mut entry) = self.kv_get(&key)? else { continue };
            if entry.session.as_deref() != Some(id) {
                continue;
            }
            match session.behavior {
                SessionBehavior::Release => {
                    entry.session = None;
                    entry.modify_index = self.index;
                    self.t.kv.put(self.txn, key.as_bytes(), &codec::encode_kv(&entry))?;
                    self.touch_kv(&key)?;
                }
                SessionBehavior::Delete => self.tombstone(&entry)?,
            }
            if let Some(until) = delay_until {
                self.t.lock_delays.put(self.txn, key.as_bytes(), &codec::encode_u64(until))?;
            }
        }
        self.t.session_refs.delete(self.txn, &session_ref::node(&session.node, id))?;
        for check in session.check_ids() {
            self.t.session_refs.delete(self.txn, &session_ref::check(&session.node, check, id))?;
        }
        self.t.sessions.delete(self.txn, id.as_bytes())?;
        self.touch_table(Table::Sessions)
    }

    /// The sessions whose ref keys start with `prefix` (the session ID is their last part).
    fn sessions_under(&self, prefix: &[u8], skip: usize) -> Result<Vec<String>, StoreError> {
        if !rows::storable(prefix) {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        for row in self.t.session_refs.prefix_iter(self.txn, prefix)? {
            let (key, _) = row?;
            ids.push(session_ref::tail(key, skip));
        }
        Ok(ids)
    }

    /// A check turned critical or was removed: the sessions tied to it end.
    fn invalidate_check_sessions(&mut self, node: &str, check: &str) -> Result<(), StoreError> {
        for id in self.sessions_under(&session_ref::check_prefix(node, check), 3)? {
            self.invalidate_session(&id)?;
        }
        Ok(())
    }

    /// A node was deregistered: its sessions end.
    fn invalidate_node_sessions(&mut self, node: &str) -> Result<(), StoreError> {
        for id in self.sessions_under(&session_ref::node_prefix(node), 2)? {
            self.invalidate_session(&id)?;
        }
        Ok(())
    }

    // ---- KV --------------------------------------------------------------------------------

    fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, StoreError> {
        rows::kv_get(&self.t, self.txn, key)
    }

    fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, StoreError> {
        rows::kv_list(&self.t, self.txn, prefix)
    }

    fn touch_kv(&mut self, key: &str) -> Result<(), StoreError> {
        self.touched.kv_keys.insert(key.to_string());
        self.touch_table(Table::Kv)
    }

    /// Sets `key` unless `cas` says otherwise; returns whether it was set.
    fn kv_set(&mut self, key: &str, value: Option<Vec<u8>>, flags: u64, cas: Option<u64>) -> Result<bool, StoreError> {
        Ok(self.kv_set_entry(key, value, flags, cas)?.is_some())
    }

    fn kv_set_entry(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
        flags: u64,
        cas: Option<u64>,
    ) -> Result<Option<KvEntry>, StoreError> {
        let old = self.kv_get(key)?;
        if let Some(expected) = cas {
            let current = old.as_ref().map_or(0, |e| e.modify_index);
            if current != expected {
                return Ok(None);
            }
        }
        let entry = KvEntry {
            key: key.to_string(),
            flags,
            value: value.filter(|v| !v.is_empty()),
            lock_index: old.as_ref().map_or(0, |e| e.lock_index),
            session: old.as_ref().and_then(|e| e.session.clone()),
            create_index: old.as_ref().map_or(self.index, |e| e.create_index),
            modify_index: self.index,
        };
        self.t.kv.put(self.txn, key.as_bytes(), &codec::encode_kv(&entry))?;
        self.t.kv_tombstones.delete(self.txn, key.as_bytes())?;
        self.touch_kv(key)?;
        Ok(Some(entry))
    }

    fn tombstone(&mut self, entry: &KvEntry) -> Result<(), StoreError> {
        let key = entry.key.as_str();
        self.t.kv.delete(self.txn, key.as_bytes())?;
        self.t.kv_tombstones.put(self.txn, key.as_bytes(), &codec::encode_u64(self.index))?;
        if let Some(session) = &entry.session {
            self.t.session_refs.delete(self.txn, &session_ref::held_key(session, key))?;
        }
        self.touch_kv(key)
    }

    /// Deletes `key` (only at ModifyIndex `cas` when given); returns false on a CAS mismatch.
    /// A key that does not exist is "deleted" whatever `cas` says, as in Consul.
    fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> Result<bool, StoreError> {
        let Some(old) = self.kv_get(key)? else { return Ok(true) };
        if cas.is_some_and(|expected| old.modify_index != expected) {
            return Ok(false);
        }
        self.tombstone(&old)?;
        Ok(true)
    }

    fn kv_delete_tree(&mut self, prefix: &str) -> Result<usize, StoreError> {
        let entries = self.kv_list(prefix)?;
        for entry in &entries {
            self.tombstone(entry)?;
        }
        Ok(entries.len())
    }

    /// Acquires or releases `key`'s lock for `session`, setting its value and flags. The
    /// inner `Err` is a rejection (an unknown session); `Ok(None)` means the lock was not
    /// acquired (held by another session, or within a lock delay) or not released (not held
    /// by this session), as Consul answers `false`.
    fn kv_lock(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
        flags: u64,
        session: &str,
        op: KvLockOp,
    ) -> Result<Result<Option<KvEntry>, String>, StoreError> {
        let old = self.kv_get(key)?;
        let held_ref = session_ref::held_key(session, key);
        let entry = match op {
            KvLockOp::Acquire => {
                if self.get_session(session)?.is_none() {
                    return Ok(Err(format!("invalid session {session:?}")));
                }
                if !rows::storable(&held_ref) {
                    return Ok(Err(format!("key {key:?} is too long to be locked")));
                }
                if self.in_lock_delay(key)? {
                    return Ok(Ok(None));
                }
                let held_by_us = match old.as_ref().and_then(|e| e.session.as_deref()) {
                    Some(holder) if holder != session => return Ok(Ok(None)),
                    Some(_) => true,
                    None => false,
                };
                let lock_index = old.as_ref().map_or(0, |e| e.lock_index);
                self.t.session_refs.put(self.txn, &held_ref, &[])?;
                KvEntry {
                    key: key.to_string(),
                    flags,
                    value: value.filter(|v| !v.is_empty()),
                    lock_index: if held_by_us { lock_index } else { lock_index + 1 },
                    session: Some(session.to_string()),
                    create_index: old.as_ref().map_or(self.index, |e| e.create_index),
                    modify_index: self.index,
                }
            }
            KvLockOp::Release => {
                let Some(old) = old.filter(|e| e.session.as_deref() == Some(session)) else {
                    return Ok(Ok(None));
                };
                self.t.session_refs.delete(self.txn, &held_ref)?;
                KvEntry {
                    flags,
                    value: value.filter(|v| !v.is_empty()),
                    session: None,
                    modify_index: self.index,
                    ..old
                }
            }
        };
        self.t.kv.put(self.txn, key.as_bytes(), &codec::encode_kv(&entry))?;
        self.t.kv_tombstones.delete(self.txn, key.as_bytes())?;
        self.touch_kv(key)?;
        Ok(Ok(Some(entry)))
    }

    /// Whether `key` is within the lock delay of a session that held it, by the leader's
    /// clock of this entry (entries without one ignore delays).
    fn in_lock_delay(&self, key: &str) -> Result<bool, StoreError> {
        let Some(now) = self.now_ms else { return Ok(false) };
        if !rows::storable(key.as_bytes()) {
            return Ok(false);
        }
        Ok(match self.t.lock_delays.get(self.txn, key.as_bytes())? {
            Some(bytes) => codec::decode_u64("sm_kv_lock_delays", key.as_bytes(), bytes)? > now,
            None => false,
        })
    }

    fn txn(&mut self, ops: &[TxnKvOp]) -> Result<Outcome, StoreError> {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            match self.txn_op(op, &mut results)? {
                Ok(()) => {}
                Err(what) => errors.push(TxnError { op_index, what }),
            }
        }
        if errors.is_empty() {
            Ok(Outcome::Commit(CommandResult::TxnCommitted(results)))
        } else {
            Ok(Outcome::Abort(CommandResult::TxnRolledBack(errors)))
        }
    }

    /// Applies one transaction op; the inner `Err` is the op's failure text (Consul's wording).
    fn txn_op(&mut self, op: &TxnKvOp, results: &mut Vec<TxnResult>) -> Result<Result<(), String>, StoreError> {
        let key = op.key.as_str();
        let without_value = |mut e: KvEntry| {
            e.value = None;
            TxnResult { entry: e }
        };
        let outcome = match op.verb {
            TxnKvVerb::Set => {
                let entry = self.kv_set_entry(key, op.value.clone(), op.flags, None)?;
                results.extend(entry.map(without_value));
                Ok(())
            }
            TxnKvVerb::Cas => match self.kv_set_entry(key, op.value.clone(), op.flags, Some(op.index))? {
                Some(entry) => {
                    results.push(without_value(entry));
                    Ok(())
                }
                None => Err(format!("failed to set key {key:?}, index is stale")),
            },
            TxnKvVerb::Get => match self.kv_get(key)? {
                Some(entry) => {
                    results.push(TxnResult { entry });
                    Ok(())
                }
                None => Err(format!("key {key:?} doesn't exist")),
            },
            TxnKvVerb::GetTree => {
                results.extend(self.kv_list(key)?.into_iter().map(|entry| TxnResult { entry }));
                Ok(())
            }
            TxnKvVerb::CheckIndex => match self.kv_get(key)? {
                Some(entry) if entry.modify_index == op.index => {
                    results.push(without_value(entry));
                    Ok(())
                }
                Some(entry) => Err(format!("current modify index {} != {}", entry.modify_index, op.index)),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            TxnKvVerb::CheckNotExists => match self.kv_get(key)? {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(()),
            },
            TxnKvVerb::Delete => {
                self.kv_delete(key, None)?;
                Ok(())
            }
            TxnKvVerb::DeleteTree => {
                self.kv_delete_tree(key)?;
                Ok(())
            }
            TxnKvVerb::DeleteCas => {
                if self.kv_delete(key, Some(op.index))? {
                    Ok(())
                } else {
                    Err(format!("failed to delete key {key:?}, index is stale"))
                }
            }
            TxnKvVerb::Lock | TxnKvVerb::Unlock => {
                let session = op.session.as_deref().unwrap_or_default();
                let lock_op = if op.verb == TxnKvVerb::Lock { KvLockOp::Acquire } else { KvLockOp::Release };
                match self.kv_lock(key, op.value.clone(), op.flags, session, lock_op)? {
                    Ok(Some(entry)) => {
                        results.push(without_value(entry));
                        Ok(())
                    }
                    Ok(None) if lock_op == KvLockOp::Acquire => {
                        Err(format!("failed to lock key {key:?}, lock is already held"))
                    }
                    Ok(None) => {
                        Err(format!("failed to unlock key {key:?}, lock isn't held, or is held by another session"))
                    }
                    Err(why) => Err(why),
                }
            }
            TxnKvVerb::CheckSession => match self.kv_get(key)? {
                Some(entry) if entry.session == op.session => {
                    results.push(without_value(entry));
                    Ok(())
                }
                Some(entry) => Err(format!(
                    "failed session check for key {key:?}, current session {:?} != {:?}",
                    entry.session.unwrap_or_default(),
                    op.session.as_deref().unwrap_or_default()
                )),
                None => Err(format!("key {key:?} doesn't exist")),
            },
        };
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A copy of a restore's parts that this server cannot read back is a storage error here
    /// (Raft stops on this server rather than leave it apart from the others); bytes that
    /// read fine but are no archive are a refusal, as on every server holding the same parts.
    #[test]
    fn a_local_copy_that_cannot_be_read_back_is_a_storage_error_not_a_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("data"), 64 << 20).expect("open store");
        let req = RestoreParts { restore: "r1".into(), size_bytes: 64, checksum: 1 };
        let mut wtxn = store.env().write_txn().expect("write txn");
        let mut tx = ApplyTx {
            txn: &mut wtxn,
            t: store.sm,
            index: 10,
            offset: 0,
            staging_dir: store.staging_dir(),
            touched: Touched::default(),
            now_ms: None,
        };

        // A directory opened as a file: every read of it fails (EISDIR).
        let unreadable = std::fs::File::open(dir.path()).expect("open the directory");
        match tx.restore_from_copy(&LocalCopy::new(unreadable), &req) {
            Err(StoreError::SnapshotIo(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::IsADirectory, "{e}");
                assert!(e.to_string().starts_with("reading back this server's copy of restore r1: "), "{e}");
            }
            Err(e) => panic!("want the read failure, got {e}"),
            Ok(_) => panic!("an unreadable copy must be a storage error, not an outcome"),
        }

        let mut garbage = tempfile::tempfile().expect("tempfile");
        garbage.write_all(&[7u8; 64]).expect("write");
        match tx.restore_from_copy(&LocalCopy::new(garbage), &req) {
            Ok(Outcome::Commit(CommandResult::Rejected(why))) => {
                assert!(why.starts_with("restore r1: ") && why.contains("missing CAIRNBK1 header"), "{why}")
            }
            Ok(_) => panic!("bytes that are no archive must be refused"),
            Err(e) => panic!("bytes that are no archive must be refused, not a storage error: {e}"),
        }
    }
}

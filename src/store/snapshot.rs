//! Whole-state-machine snapshots: a point-in-time copy of every state-machine table from one
//! read transaction, and the reverse, which replaces them in one write transaction. The byte
//! format is `crate::backup`'s.

use super::{Store, StoreError};
use crate::backup::SnapshotWriter;

/// `sm_meta` values read alongside a snapshot, in the order asked for.
pub type MetaValues = Vec<Option<Vec<u8>>>;

impl Store {
    /// Serializes every state-machine table from one read transaction, and returns the
    /// `sm_meta` values of `meta_keys` as that same transaction saw them.
    pub fn snapshot(&self, meta_keys: &[&str]) -> Result<(Vec<u8>, MetaValues), StoreError> {
        let mut out = Vec::new();
        let mut writer = SnapshotWriter::begin(&mut out)?;
        let meta = self.snapshot_to(&mut writer, meta_keys)?;
        writer.finish()?;
        Ok((out, meta))
    }

    /// [`Store::snapshot`]'s records, written to `out` as they are read (a backup streams
    /// them to a file and never holds the state in memory); the caller finishes `out`.
    pub fn snapshot_to<W: std::io::Write>(
        &self,
        out: &mut SnapshotWriter<W>,
        meta_keys: &[&str],
    ) -> Result<MetaValues, StoreError> {
        // The state copied must be on disk before the snapshot lets the log be purged (the
        // invariant at `Store::commit_durably`).
        self.sync()?;
        let rtxn = self.env().read_txn()?;
        let mut meta = Vec::with_capacity(meta_keys.len());
        for key in meta_keys {
            meta.push(self.sm.meta.get(&rtxn, key.as_bytes())?.map(<[u8]>::to_vec));
        }
        for (tag, db) in self.sm.all() {
            for row in db.iter(&rtxn)? {
                let (key, value) = row?;
                out.record(tag, key, value)?;
            }
        }
        Ok(meta)
    }

    /// Replaces the state machine with the state snapshot of `len` bytes read from `snapshot`
    /// (streamed: one record in memory at a time), then writes `meta`, in one transaction
    /// committed only if the whole snapshot checked out; wakes every blocking query.
    pub fn restore_snapshot(
        &self,
        snapshot: impl std::io::Read,
        len: u64,
        meta: &[(&str, Vec<u8>)],
        index: u64,
    ) -> Result<(), StoreError> {
        let mut records = crate::backup::SnapshotReader::begin(snapshot, len)?;
        let tables = self.sm.all();
        let mut wtxn = self.env().write_txn()?;
        for (_, db) in tables {
            db.clear(&mut wtxn)?;
        }
        while let Some((tag, key, value)) = records.next_record()? {
            tables[tag as usize].1.put(&mut wtxn, key, value)?;
        }
        // A damaged snapshot returns here, and dropping `wtxn` aborts it: nothing changed.
        records.finish()?;
        for (key, value) in meta {
            self.sm.meta.put(&mut wtxn, key.as_bytes(), value)?;
        }
        self.commit_durably(wtxn)?;
        self.rebuild_directory()?;
        self.watches().notify_all(index);
        Ok(())
    }
}

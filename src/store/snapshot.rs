//! Whole-state-machine snapshots: a point-in-time copy of every state-machine table from one
//! read transaction, and the reverse, which replaces them in one write transaction.
//!
//! Layout (version 1): magic `CAIRNSM1`, then records `table u8, key_len u32 BE, key,
//! value_len u32 BE, value`, then `record_count u64 BE` and an FNV-1a 64 checksum of
//! everything before it (u64 BE).

use super::{Store, StoreError};

const MAGIC: &[u8; 8] = b"CAIRNSM1";

/// `sm_meta` values read alongside a snapshot, in the order asked for.
pub type MetaValues = Vec<Option<Vec<u8>>>;

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

impl Store {
    /// Serializes every state-machine table from one read transaction, and returns the
    /// `sm_meta` values of `meta_keys` as that same transaction saw them.
    pub fn snapshot(&self, meta_keys: &[&str]) -> Result<(Vec<u8>, MetaValues), StoreError> {
        let mut out = Vec::new();
        let meta = self.snapshot_into(&mut out, meta_keys)?;
        Ok((out, meta))
    }

    /// [`Store::snapshot`], appended to `out` (so that a backup archive is built in one
    /// buffer, without a copy of the state).
    pub fn snapshot_into(&self, out: &mut Vec<u8>, meta_keys: &[&str]) -> Result<MetaValues, StoreError> {
        // The state copied must be on disk before the snapshot lets the log be purged (the
        // invariant at `Store::commit_durably`).
        self.sync()?;
        let rtxn = self.env().read_txn()?;
        let mut meta = Vec::with_capacity(meta_keys.len());
        for key in meta_keys {
            meta.push(self.sm.meta.get(&rtxn, key.as_bytes())?.map(<[u8]>::to_vec));
        }
        let start = out.len();
        out.extend_from_slice(MAGIC);
        let mut count: u64 = 0;
        for (tag, db) in self.sm.all() {
            for row in db.iter(&rtxn)? {
                let (key, value) = row?;
                out.push(tag);
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
                count += 1;
            }
        }
        out.extend_from_slice(&count.to_be_bytes());
        let sum = fnv1a(&out[start..]);
        out.extend_from_slice(&sum.to_be_bytes());
        Ok(meta)
    }

    /// Replaces the state machine with `bytes` (checked before anything is touched), then
    /// writes `meta`, in one transaction, and wakes every blocking query.
    pub fn restore_snapshot(&self, bytes: &[u8], meta: &[(&str, Vec<u8>)], index: u64) -> Result<(), StoreError> {
        let records = parse(bytes)?;
        let tables = self.sm.all();
        let mut wtxn = self.env().write_txn()?;
        for (_, db) in tables {
            db.clear(&mut wtxn)?;
        }
        for (tag, key, value) in records {
            let (_, db) = tables[tag as usize];
            db.put(&mut wtxn, key, value)?;
        }
        for (key, value) in meta {
            self.sm.meta.put(&mut wtxn, key.as_bytes(), value)?;
        }
        self.commit_durably(wtxn)?;
        self.rebuild_directory()?;
        self.watches().notify_all(index);
        Ok(())
    }
}

pub(super) type Record<'a> = (u8, &'a [u8], &'a [u8]);

/// Splits the next `n` bytes off `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
    if rest.len() < n {
        return Err(StoreError::BadSnapshot("record runs past the end".into()));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

pub(super) fn parse(bytes: &[u8]) -> Result<Vec<Record<'_>>, StoreError> {
    let mut out = Vec::new();
    walk(bytes, |record| out.push(record))?;
    Ok(out)
}

/// Checks `bytes` like [`parse`] and counts the records of each table tag.
pub(super) fn count_by_tag(bytes: &[u8]) -> Result<[u64; super::TABLE_TAGS], StoreError> {
    let mut counts = [0u64; super::TABLE_TAGS];
    walk(bytes, |(tag, _, _)| counts[tag as usize] += 1)?;
    Ok(counts)
}

/// Checks the magic, checksum and record count of `bytes`, calling `each` for every record.
fn walk<'a>(bytes: &'a [u8], mut each: impl FnMut(Record<'a>)) -> Result<(), StoreError> {
    let bad = |why: &str| StoreError::BadSnapshot(why.to_string());
    if bytes.len() < MAGIC.len() + 16 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("missing CAIRNSM1 header"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if fnv1a(body) != u64::from_be_bytes(sum.try_into().map_err(|_| bad("short trailer"))?) {
        return Err(bad("checksum mismatch"));
    }
    let (records, count) = body.split_at(body.len() - 8);
    let count = u64::from_be_bytes(count.try_into().map_err(|_| bad("short trailer"))?);
    let mut seen: u64 = 0;
    let mut rest = &records[MAGIC.len()..];
    while !rest.is_empty() {
        let tag = take(&mut rest, 1)?[0];
        if tag as usize >= super::TABLE_TAGS {
            return Err(bad("unknown table tag"));
        }
        let key_len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap_or([0; 4])) as usize;
        // LMDB refuses such a key at apply time, which would stop Raft: refuse it here, when
        // the archive or Raft snapshot is checked.
        if key_len == 0 || key_len > super::rows::KEY_BYTES_MAX {
            return Err(StoreError::BadSnapshot(format!(
                "a key of {key_len} bytes cannot be stored (keys are 1 to {} bytes)",
                super::rows::KEY_BYTES_MAX
            )));
        }
        let key = take(&mut rest, key_len)?;
        let value_len = u32::from_be_bytes(take(&mut rest, 4)?.try_into().unwrap_or([0; 4])) as usize;
        let value = take(&mut rest, value_len)?;
        each((tag, key, value));
        seen += 1;
    }
    if seen != count {
        return Err(bad("record count mismatch"));
    }
    Ok(())
}

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
    fnv1a_more(FNV1A_START, bytes)
}

const FNV1A_START: u64 = 0xcbf29ce484222325;

/// Continues an FNV-1a 64 hash over `bytes`.
pub(super) fn fnv1a_more(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// A writer that hashes (FNV-1a 64) what passes through it.
pub(super) struct Fnv1a<W> {
    pub inner: W,
    pub hash: u64,
}

impl<W: std::io::Write> Fnv1a<W> {
    pub fn new(inner: W) -> Self {
        Fnv1a { inner, hash: FNV1A_START }
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash = fnv1a_more(self.hash, bytes);
        self.inner.write_all(bytes)
    }
}

impl Store {
    /// Serializes every state-machine table from one read transaction, and returns the
    /// `sm_meta` values of `meta_keys` as that same transaction saw them.
    pub fn snapshot(&self, meta_keys: &[&str]) -> Result<(Vec<u8>, MetaValues), StoreError> {
        let mut out = Vec::new();
        let (meta, _) = self.snapshot_to(&mut out, meta_keys)?;
        Ok((out, meta))
    }

    /// [`Store::snapshot`], written to `out` as it is read (a backup streams it to a file
    /// and never holds the state in memory). Also returns the records written per table tag.
    pub fn snapshot_to(
        &self,
        out: &mut impl std::io::Write,
        meta_keys: &[&str],
    ) -> Result<(MetaValues, [u64; super::TABLE_TAGS]), StoreError> {
        // The state copied must be on disk before the snapshot lets the log be purged (the
        // invariant at `Store::commit_durably`).
        self.sync()?;
        let rtxn = self.env().read_txn()?;
        let mut meta = Vec::with_capacity(meta_keys.len());
        for key in meta_keys {
            meta.push(self.sm.meta.get(&rtxn, key.as_bytes())?.map(<[u8]>::to_vec));
        }
        let mut out = Fnv1a::new(out);
        let mut counts = [0u64; super::TABLE_TAGS];
        out.write_all(MAGIC)?;
        for (tag, db) in self.sm.all() {
            for row in db.iter(&rtxn)? {
                let (key, value) = row?;
                out.write_all(&[tag])?;
                out.write_all(&(key.len() as u32).to_be_bytes())?;
                out.write_all(key)?;
                out.write_all(&(value.len() as u32).to_be_bytes())?;
                out.write_all(value)?;
                counts[tag as usize] += 1;
            }
        }
        out.write_all(&counts.iter().sum::<u64>().to_be_bytes())?;
        let sum = out.hash;
        out.inner.write_all(&sum.to_be_bytes())?;
        Ok((meta, counts))
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

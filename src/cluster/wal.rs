//! The Raft log's entries in segment files of their own, beside the LMDB environment
//! (`<store dir>/raft-log/`): an append is one `pwrite` and one `fdatasync`, where an LMDB
//! commit costs two flushes (its pages, then its meta page) and shares one writer lock with
//! the state machine's commits.
//!
//! A segment, `<index of its first entry, 20 digits>.seg`, is preallocated to
//! `segment_bytes`, starts with the format's magic `CAIRNWL1`, and holds batches, one per
//! append, back to back; the preallocated space reads as zeros, and a zero header ends the
//! segment's data:
//!
//! ```text
//! batch:  body length u32 LE | first index u64 LE | count u32 LE | FNV-1a 64 of the three
//!         fields and the body u64 LE | body
//! body:   count records: payload length u32 LE | FNV-1a 64 of (index u64 LE ++ payload)
//!         u64 LE | payload
//! marker: a batch of no records (length 0, count 0): the entries from its index on are void
//! ```
//!
//! Architecture Invariant: the files are only ever appended to, past their last batch, and
//! [`Wal::append`] returns only once its batch is on disk, [`Wal::truncate`] only once its
//! marker is. So after any crash the files hold what was acknowledged, then at most the
//! start of one unacknowledged batch, a torn tail, which [`Wal::open`] zeroes. A truncation
//! writes a marker rather than rewriting in place: a batch cut in place could be torn by a
//! crash and take the entries before the cut with it. Whatever else fails a check — a
//! damaged batch with an intact one after it, a damaged segment that is not the last,
//! segments that do not follow on — stops the open with an error naming the file and the
//! byte: acknowledged entries are never dropped to make a log readable.
//!
//! Every write and flush goes through [`Store::raft_write`] and [`Store::sync_file`], so a
//! full disk is waited out, a stalled one is seen by the leader's step-down check, and the
//! syncs are counted with the environment's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::backup::{fnv1a, fnv1a_more};
use crate::store::{OutOfSpace, Store};

/// The first bytes of every segment: the format and its version. Pinned, like every disk
/// format (`tests::batch_bytes_are_pinned`).
const MAGIC: &[u8; 8] = b"CAIRNWL1";
const BATCH_HEADER_BYTES: usize = 24;
const RECORD_HEADER_BYTES: usize = 12;
/// What one segment is preallocated to; a batch larger than what is left starts a new one
/// (a batch larger than this gets a segment of its own, grown to fit). Small enough that a
/// server on a small disk is not refused a segment, large enough that one is started every
/// few seconds at most under a full write load.
pub const SEGMENT_BYTES: u64 = 16 << 20;
const SEGMENT_SUFFIX: &str = ".seg";
/// Zeroes are written over a torn tail in pieces of this size.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("Raft log {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("Raft log {} is damaged at byte {offset}: {reason}; it holds acknowledged entries, so the server does not start on it (restore this server's data dir from a backup, or remove it and let the server rejoin its cluster)", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("Raft log: an append at index {got} does not follow the last entry {last}")]
    Hole { got: u64, last: u64 },
    #[error("Raft log: the append of entries from {first_index} is {bytes} bytes, over the 4 GiB a batch can hold")]
    TooLarge { first_index: u64, bytes: usize },
    /// The blocking task that did the I/O failed (panicked).
    #[error("Raft log: {0}")]
    Task(#[from] std::io::Error),
}

impl OutOfSpace for WalError {
    fn os_error(&self) -> Option<i32> {
        match self {
            WalError::Io { source, .. } | WalError::Task(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Where records are: each one's byte offset and its length with its header.
type RecordSpans = Vec<(u64, u32)>;

/// One segment file and where its records are.
struct Segment {
    /// The index of its first record (its name).
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Record `first + i` at byte `records[i].0`, `records[i].1` bytes with its header.
    records: RecordSpans,
    /// Where the next batch goes.
    end: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.records.is_empty()).then(|| self.first + self.records.len() as u64 - 1)
    }
}

struct Segments {
    list: Vec<Segment>,
    /// Entries up to this index are purged: never read, and their segments removed once
    /// every entry in them is.
    purged: Option<u64>,
}

impl Segments {
    fn last(&self) -> Option<u64> {
        self.list.iter().rev().find_map(Segment::last)
    }
}

pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    store: Store,
    segments: RwLock<Segments>,
    /// One append, truncation or purge at a time (openraft never overlaps them; this keeps
    /// the files right if a caller ever did).
    writer: Mutex<()>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of a torn tail zeroed (an append cut short by a crash; never acknowledged).
    pub torn_bytes: u64,
    /// Segments removed: every entry in them was purged, or they held none.
    pub removed_segments: usize,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, whose entries up to `purged` are purged.
    pub fn open(dir: &Path, purged: Option<u64>, segment_bytes: u64, store: Store) -> Result<(Wal, Opened), WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut names = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            let Some(first) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)).and_then(|n| n.parse().ok())
            else {
                tracing::warn!(file = %item.path().display(), "ignoring a file that is not a Raft log segment");
                continue;
            };
            names.push((first, item.path()));
        }
        names.sort();
        let mut opened = Opened::default();
        let mut list: Vec<Segment> = Vec::new();
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(&path))?;
            let is_last = n + 1 == count;
            let (records, end, torn) = scan(&file, &path, first, is_last)?;
            if torn > 0 {
                tracing::warn!(
                    file = %path.display(),
                    offset = end,
                    bytes = torn,
                    "the Raft log ends in an append a crash cut short (never acknowledged): zeroing it"
                );
                zero(&file, end, end + torn).map_err(io_err(&path))?;
                store.sync_file(&file).map_err(io_err(&path))?;
                opened.torn_bytes += torn;
            }
            let segment = Segment { first, path, file: Arc::new(file), records, end };
            let all_purged = match (segment.last(), purged) {
                (None, _) => true,
                (Some(last), Some(purged)) => last <= purged,
                (Some(_), None) => false,
            };
            if all_purged {
                std::fs::remove_file(&segment.path).map_err(io_err(&segment.path))?;
                opened.removed_segments += 1;
                continue;
            }
            if let Some(previous) = list.last().and_then(Segment::last) {
                if segment.first != previous + 1 {
                    return Err(WalError::Corrupt {
                        path: segment.path,
                        offset: 0,
                        reason: format!("it starts at entry {first} but the segment before ends at entry {previous}"),
                    });
                }
            } else if let Some(purged) = purged.filter(|p| segment.first > p + 1) {
                return Err(WalError::Corrupt {
                    path: segment.path,
                    offset: 0,
                    reason: format!("it starts at entry {first} but the log was purged only up to entry {purged}"),
                });
            }
            list.push(segment);
        }
        if opened.removed_segments > 0 {
            sync_dir(dir)?;
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            store,
            segments: RwLock::new(Segments { list, purged }),
            writer: Mutex::new(()),
        };
        Ok((wal, opened))
    }

    /// The index of the last entry, if the log holds any (purged ones not counted).
    pub fn last_index(&self) -> Option<u64> {
        let segments = self.read_segments();
        segments.last().filter(|last| segments.purged.is_none_or(|p| *last > p))
    }

    /// The payloads of the entries from `from` up to, not including, `until` that the log
    /// holds, in order, each checked against its checksum.
    pub fn read(&self, from: u64, until: u64) -> Result<Vec<(u64, Vec<u8>)>, WalError> {
        let segments = self.read_segments();
        let from = segments.purged.map_or(from, |p| from.max(p + 1));
        let mut out = Vec::new();
        for segment in &segments.list {
            let Some(last) = segment.last() else { continue };
            let (lo, hi) = (from.max(segment.first), until.min(last + 1));
            if lo >= hi {
                continue;
            }
            let first_record = (lo - segment.first) as usize;
            let last_record = (hi - 1 - segment.first) as usize;
            let start = segment.records[first_record].0;
            let (last_at, last_len) = segment.records[last_record];
            let mut span = vec![0u8; (last_at + u64::from(last_len) - start) as usize];
            segment.file.read_exact_at(&mut span, start).map_err(io_err(&segment.path))?;
            for (i, &(at, len)) in segment.records[first_record..=last_record].iter().enumerate() {
                let index = lo + i as u64;
                let bytes = &span[(at - start) as usize..(at - start) as usize + len as usize];
                let payload = check_record(bytes, index).map_err(|reason| WalError::Corrupt {
                    path: segment.path.clone(),
                    offset: at,
                    reason,
                })?;
                out.push((index, payload.to_vec()));
            }
        }
        Ok(out)
    }

    /// Appends entries `first_index..` (their payloads, in order) and returns once they are
    /// on disk. `first_index` must follow the last entry or, when the log holds none, the
    /// last purged one (any index starts a log never purged); entries it replaces are
    /// truncated first, and entries up to the last purged one are dropped.
    pub fn append(&self, first_index: u64, payloads: &[Vec<u8>]) -> Result<(), WalError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (last, purged) = {
            let segments = self.read_segments();
            (segments.last(), segments.purged)
        };
        // Entries a snapshot already covers are not kept (openraft's storage suite appends
        // some; openraft itself does not).
        let covered = purged.map_or(0, |p| (p + 1).saturating_sub(first_index).min(payloads.len() as u64));
        let (first_index, payloads) = (first_index + covered, &payloads[covered as usize..]);
        if payloads.is_empty() {
            return Ok(());
        }
        let last = match last {
            // Entries that replace some of the log's: the old ones from there on go first
            // (openraft truncates before it overwrites; its storage suite does not).
            Some(last) if first_index <= last => {
                self.truncate_locked(first_index)?;
                self.read_segments().last()
            }
            Some(last) if first_index != last + 1 => return Err(WalError::Hole { got: first_index, last }),
            None => {
                if let Some(purged) = purged.filter(|p| first_index != p + 1) {
                    return Err(WalError::Hole { got: first_index, last: purged });
                }
                None
            }
            last => last,
        };
        let (batch, offsets) = encode_batch(first_index, payloads)?;
        let (file, path, at) = {
            let tail = {
                let segments = self.read_segments();
                segments.list.last().map(|s| (Arc::clone(&s.file), s.path.clone(), s.end, s.last().is_some()))
            };
            match tail {
                Some((file, path, end, used))
                    if last.is_some() && !(used && end + batch.len() as u64 > self.segment_bytes) =>
                {
                    (file, path, end)
                }
                _ => self.start_segment(first_index)?,
            }
        };
        self.store.raft_write("appending to the Raft log", || {
            file.write_all_at(&batch, at).map_err(io_err(&path))?;
            self.store.sync_file(&file).map_err(io_err(&path))
        })?;
        // The segment written to is still the last: only the writer, held here, changes the
        // list's end.
        let mut segments = self.write_segments();
        if let Some(segment) = segments.list.last_mut() {
            segment.records.extend(offsets.iter().map(|&(offset, len)| (at + offset, len)));
            segment.end = at + batch.len() as u64;
        }
        Ok(())
    }

    /// Creates, preallocates and syncs the segment whose first entry is `first`, and makes
    /// it the last one.
    fn start_segment(&self, first: u64) -> Result<(Arc<File>, PathBuf, u64), WalError> {
        let path = self.dir.join(format!("{first:020}{SEGMENT_SUFFIX}"));
        let file = self.store.raft_write("starting a Raft log segment", || {
            let file = crate::durable_file::create_owner_only(&path).map_err(io_err(&path))?;
            preallocate(&file, self.segment_bytes).map_err(io_err(&path))?;
            file.write_all_at(MAGIC, 0).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
            sync_dir(&self.dir)?;
            Ok::<_, WalError>(file)
        })?;
        let file = Arc::new(file);
        let mut segments = self.write_segments();
        // A segment left empty (the log emptied by a purge) makes way for this one.
        if let Some(empty) = segments.list.last().filter(|s| s.records.is_empty()) {
            let stale = empty.path.clone();
            segments.list.pop();
            if stale != path {
                let _ = std::fs::remove_file(&stale);
            }
        }
        let end = MAGIC.len() as u64;
        segments.list.push(Segment { first, path: path.clone(), file: Arc::clone(&file), records: Vec::new(), end });
        Ok((file, path, end))
    }

    /// Removes the entries from `from` on, and returns once that is on disk.
    pub fn truncate(&self, from: u64) -> Result<(), WalError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.truncate_locked(from)
    }

    /// [`Wal::truncate`], with the writer lock held.
    fn truncate_locked(&self, from: u64) -> Result<(), WalError> {
        // Segments that start at or after `from` go first, whole; a crash before the marker
        // is written leaves a prefix of the log, which is what a truncation asked for.
        let (removed, marker) = {
            let mut segments = self.write_segments();
            let keep = segments.list.iter().take_while(|s| s.first < from).count();
            let removed: Vec<_> = segments.list.drain(keep..).map(|s| s.path).collect();
            let marker = segments.list.last_mut().filter(|s| s.last().is_some_and(|last| last >= from)).map(|s| {
                s.records.truncate((from - s.first) as usize);
                let at = s.end;
                s.end += BATCH_HEADER_BYTES as u64;
                (Arc::clone(&s.file), s.path.clone(), at)
            });
            (removed, marker)
        };
        if !removed.is_empty() {
            for path in &removed {
                std::fs::remove_file(path).map_err(io_err(path))?;
            }
            sync_dir(&self.dir)?;
        }
        if let Some((file, path, at)) = marker {
            let bytes = encode_marker(from);
            self.store.raft_write("truncating the Raft log", || {
                file.write_all_at(&bytes, at).map_err(io_err(&path))?;
                self.store.sync_file(&file).map_err(io_err(&path))
            })?;
        }
        Ok(())
    }

    /// Marks the entries up to `upto` purged and removes the segments that hold only those.
    /// The caller has made `upto` durable first (the next open is told it), so a crash before
    /// the files are gone just has that open remove them.
    pub fn purge(&self, upto: u64) -> Result<(), WalError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let removed: Vec<PathBuf> = {
            let mut segments = self.write_segments();
            segments.purged = Some(segments.purged.map_or(upto, |p| p.max(upto)));
            let keep_from = segments.list.iter().take_while(|s| s.last().is_some_and(|last| last <= upto)).count();
            segments.list.drain(..keep_from).map(|s| s.path).collect()
        };
        for path in &removed {
            std::fs::remove_file(path).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn read_segments(&self) -> std::sync::RwLockReadGuard<'_, Segments> {
        self.segments.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_segments(&self) -> std::sync::RwLockWriteGuard<'_, Segments> {
        self.segments.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// One batch's bytes, and each record's offset in them and length.
fn encode_batch(first_index: u64, payloads: &[Vec<u8>]) -> Result<(Vec<u8>, RecordSpans), WalError> {
    let body_len: usize = payloads.iter().map(|p| RECORD_HEADER_BYTES + p.len()).sum();
    if body_len > u32::MAX as usize {
        // Unreachable through the write queue's byte bound, far below this.
        return Err(WalError::TooLarge { first_index, bytes: body_len });
    }
    let mut batch = Vec::with_capacity(BATCH_HEADER_BYTES + body_len);
    batch.extend_from_slice(&(body_len as u32).to_le_bytes());
    batch.extend_from_slice(&first_index.to_le_bytes());
    batch.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
    batch.extend_from_slice(&[0; 8]);
    let mut offsets = Vec::with_capacity(payloads.len());
    for (i, payload) in payloads.iter().enumerate() {
        offsets.push((batch.len() as u64, (RECORD_HEADER_BYTES + payload.len()) as u32));
        let index = first_index + i as u64;
        batch.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        batch.extend_from_slice(&record_checksum(index, payload).to_le_bytes());
        batch.extend_from_slice(payload);
    }
    let checksum = fnv1a_more(fnv1a(&batch[..16]), &batch[BATCH_HEADER_BYTES..]);
    batch[16..24].copy_from_slice(&checksum.to_le_bytes());
    Ok((batch, offsets))
}

/// The marker that voids the entries from `from` on.
fn encode_marker(from: u64) -> [u8; BATCH_HEADER_BYTES] {
    let mut marker = [0u8; BATCH_HEADER_BYTES];
    marker[4..12].copy_from_slice(&from.to_le_bytes());
    let checksum = fnv1a(&marker[..16]);
    marker[16..24].copy_from_slice(&checksum.to_le_bytes());
    marker
}

fn record_checksum(index: u64, payload: &[u8]) -> u64 {
    fnv1a_more(fnv1a(&index.to_le_bytes()), payload)
}

/// The payload of the record `bytes` (header included) if it is entry `index` intact.
fn check_record(bytes: &[u8], index: u64) -> Result<&[u8], String> {
    let (header, payload) = bytes.split_at_checked(RECORD_HEADER_BYTES).ok_or("record shorter than its header")?;
    let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
    let sum = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
    if len != payload.len() {
        return Err(format!("record of entry {index} says {len} bytes, {} are there", payload.len()));
    }
    if sum != record_checksum(index, payload) {
        return Err(format!("record of entry {index} fails its checksum"));
    }
    Ok(payload)
}

/// A batch read back: what it claims, whether it checks out.
enum Batch {
    /// Zeroes: the end of the segment's data.
    End,
    Valid {
        first: u64,
        records: Vec<(u64, u32)>,
        len: u64,
    },
    /// A truncation marker: the entries from `from` on are void.
    Marker {
        from: u64,
    },
    Damaged(String),
}

/// Reads the batch at `at` (of a file `file_len` long).
fn read_batch(file: &File, at: u64, file_len: u64) -> std::io::Result<Batch> {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    let available = file_len.saturating_sub(at);
    if available < BATCH_HEADER_BYTES as u64 {
        let mut rest = vec![0u8; available as usize];
        file.read_exact_at(&mut rest, at)?;
        return Ok(if rest.iter().all(|b| *b == 0) {
            Batch::End
        } else {
            Batch::Damaged("a batch header cut short by the end of the file".into())
        });
    }
    file.read_exact_at(&mut header, at)?;
    if header.iter().all(|b| *b == 0) {
        return Ok(Batch::End);
    }
    let body_len = u64::from(u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()));
    let first = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
    let count = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
    let sum = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
    if count == 0 && body_len == 0 {
        return Ok(if fnv1a(&header[..16]) == sum {
            Batch::Marker { from: first }
        } else {
            Batch::Damaged(format!("the truncation marker from entry {first} fails its checksum"))
        });
    }
    if count == 0 || body_len > available - BATCH_HEADER_BYTES as u64 {
        return Ok(Batch::Damaged(format!("a batch header claims {count} entries in {body_len} bytes")));
    }
    let mut body = vec![0u8; body_len as usize];
    file.read_exact_at(&mut body, at + BATCH_HEADER_BYTES as u64)?;
    if fnv1a_more(fnv1a(&header[..16]), &body) != sum {
        return Ok(Batch::Damaged(format!("the batch of entries from {first} fails its checksum")));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut offset = 0usize;
    for i in 0..u64::from(count) {
        let Some(len_bytes) = body.get(offset..offset + 4) else {
            return Ok(Batch::Damaged(format!("entry {} runs past its batch", first + i)));
        };
        let len = RECORD_HEADER_BYTES + u32::from_le_bytes(len_bytes.try_into().unwrap_or_default()) as usize;
        let Some(bytes) = body.get(offset..offset + len) else {
            return Ok(Batch::Damaged(format!("entry {} runs past its batch", first + i)));
        };
        if let Err(reason) = check_record(bytes, first + i) {
            return Ok(Batch::Damaged(reason));
        }
        records.push((at + (BATCH_HEADER_BYTES + offset) as u64, len as u32));
        offset += len;
    }
    if offset != body.len() {
        return Ok(Batch::Damaged(format!("the batch of entries from {first} has bytes past its last entry")));
    }
    Ok(Batch::Valid { first, records, len: BATCH_HEADER_BYTES as u64 + body_len })
}

/// Reads a segment's batches: its records, where its data ends, and how many bytes after
/// that are a torn tail to zero (the last segment only; anywhere else damage is an error).
fn scan(file: &File, path: &Path, first: u64, is_last: bool) -> Result<(RecordSpans, u64, u64), WalError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut magic = [0u8; MAGIC.len()];
    let read = file.read_at(&mut magic, 0).map_err(io_err(path))?;
    if magic == [0; MAGIC.len()] || read < MAGIC.len() && magic[..read].iter().all(|b| *b == 0) {
        // Created, but a crash came before its first bytes were synced: it holds nothing.
        return Ok((Vec::new(), 0, 0));
    }
    if &magic != MAGIC {
        let found = String::from_utf8_lossy(&magic[..read]).into_owned();
        return Err(WalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("it starts with {found:?}, not the segment format {:?}", "CAIRNWL1"),
        });
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len() as u64;
    loop {
        let expected = first + records.len() as u64;
        let damage = match read_batch(file, at, file_len).map_err(io_err(path))? {
            Batch::End => return Ok((records, at, 0)),
            Batch::Valid { first: batch_first, records: batch, len } if batch_first == expected => {
                records.extend(batch);
                at += len;
                continue;
            }
            Batch::Valid { first: batch_first, .. } => {
                format!("a batch starts at entry {batch_first} where entry {expected} belongs")
            }
            Batch::Marker { from } if (first..=expected).contains(&from) => {
                records.truncate((from - first) as usize);
                at += BATCH_HEADER_BYTES as u64;
                continue;
            }
            Batch::Marker { from } => {
                format!("a truncation marker from entry {from} is outside entries {first}..={expected}")
            }
            Batch::Damaged(reason) => reason,
        };
        let corrupt = |reason| WalError::Corrupt { path: path.to_path_buf(), offset: at, reason };
        if !is_last {
            return Err(corrupt(damage));
        }
        let (extent, intact_after) = damaged_extent(file, at, expected).map_err(io_err(path))?;
        // Damage with an intact batch after it is not a torn append: every append is synced
        // before the next one is written.
        if let Some(next) = intact_after {
            return Err(corrupt(format!("{damage}, with an intact batch after it at byte {next}")));
        }
        return Ok((records, at, extent));
    }
}

/// How far the damaged bytes at `from` reach (up to the first 64 KiB of zeros, the
/// preallocated space, or the end of the file), and where in them an intact batch of
/// entries after `expected` starts, if one does.
fn damaged_extent(file: &File, from: u64, expected: u64) -> std::io::Result<(u64, Option<u64>)> {
    const CHUNK: usize = 64 << 10;
    let mut damaged = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut at = from;
    loop {
        let n = file.read_at(&mut chunk, at)?;
        if n == 0 || chunk[..n].iter().all(|b| *b == 0) {
            break;
        }
        damaged.extend_from_slice(&chunk[..n]);
        at += n as u64;
    }
    // Trailing zeros are the preallocated space, not damage.
    let extent = damaged.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    for offset in 1..extent {
        let Some(header) = damaged.get(offset..offset + BATCH_HEADER_BYTES) else { break };
        let body_len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
        let first = u64::from_le_bytes(header[4..12].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
        let sum = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        // Cheap filters first, so random bytes cost no checksum.
        let plausible = (count == 0 && body_len == 0 && first > 0)
            || (first > expected && first - expected < 1 << 32 && count > 0 && body_len >= count * RECORD_HEADER_BYTES);
        let body_at = offset + BATCH_HEADER_BYTES;
        if let Some(body) = damaged.get(body_at..body_at + body_len).filter(|_| plausible) {
            if fnv1a_more(fnv1a(&header[..16]), body) == sum {
                return Ok((extent as u64, Some(from + offset as u64)));
            }
        }
    }
    Ok((extent as u64, None))
}

/// Writes zeros over `from..until`.
fn zero(file: &File, from: u64, until: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(until.saturating_sub(from) as usize)];
    let mut at = from;
    while at < until {
        let n = zeros.len().min((until - at) as usize);
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reserves `bytes` for the file on disk, so appends do not allocate. Where that cannot be
/// done the file grows as it is written instead: on a file system without preallocation,
/// and on a disk without that much room (the entries may still fit; if they do not, their
/// write meets the full disk and waits for space like any other).
fn preallocate(file: &File, bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(bytes).map_err(std::io::Error::other)?;
    // SAFETY: a valid open file descriptor; posix_fallocate reads nothing else.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        libc::ENOSPC | libc::EDQUOT => {
            tracing::warn!(bytes, "no room to preallocate a Raft log segment: it grows as it is written");
            file.set_len(0)
        }
        code => Err(std::io::Error::from_raw_os_error(code)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    crate::durable_file::sync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64, len: usize) -> Vec<u8> {
        format!("{index:>len$}").into_bytes()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        wal_dir: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(&dir.path().join("lmdb"), 16 << 20).expect("store");
            let wal_dir = dir.path().join("wal");
            Fixture { _dir: dir, store, wal_dir }
        }

        fn open(&self, purged: Option<u64>, segment_bytes: u64) -> Result<(Wal, Opened), WalError> {
            Wal::open(&self.wal_dir, purged, segment_bytes, self.store.clone())
        }

        /// A log with entries `1..=count`, one append each, payloads `len` bytes.
        fn filled(&self, count: u64, len: usize, segment_bytes: u64) -> Wal {
            let (wal, _) = self.open(None, segment_bytes).expect("open");
            for i in 1..=count {
                wal.append(i, &[payload(i, len)]).expect("append");
            }
            wal
        }

        fn segments(&self) -> Vec<PathBuf> {
            let mut files: Vec<_> =
                std::fs::read_dir(&self.wal_dir).expect("dir").map(|e| e.expect("entry").path()).collect();
            files.sort();
            files
        }
    }

    fn indexes(wal: &Wal, from: u64, until: u64) -> Vec<u64> {
        wal.read(from, until).expect("read").into_iter().map(|(i, _)| i).collect()
    }

    #[test]
    fn entries_survive_a_reopen_across_segments() {
        let f = Fixture::new();
        let (wal, _) = f.open(None, 4096).expect("open");
        for first in (1..=200).step_by(5) {
            let batch: Vec<_> = (first..first + 5).map(|i| payload(i, 100)).collect();
            wal.append(first, &batch).expect("append");
        }
        assert!(f.segments().len() > 5, "small segments rotate: {:?}", f.segments());
        drop(wal);
        let (wal, opened) = f.open(None, 4096).expect("reopen");
        assert_eq!(opened, Opened::default());
        assert_eq!(wal.last_index(), Some(200));
        let read = wal.read(37, 163).expect("read");
        assert_eq!(read.len(), 126);
        for (index, bytes) in read {
            assert_eq!(bytes, payload(index, 100));
        }
        assert_eq!(wal.append(202, &[payload(202, 1)]).unwrap_err().to_string(), Wal::hole_message(202, 200));
    }

    impl Wal {
        fn hole_message(got: u64, last: u64) -> String {
            WalError::Hole { got, last }.to_string()
        }
    }

    #[test]
    fn a_torn_append_is_cut_off_and_the_log_goes_on() {
        let f = Fixture::new();
        let wal = f.filled(10, 50, 1 << 20);
        let path = f.segments().pop().expect("a segment");
        drop(wal);
        // A crash in the middle of the eleventh append: part of its batch reached the disk.
        let (torn, _) = encode_batch(11, &[payload(11, 50), payload(12, 50)]).expect("encode");
        let end = (MAGIC.len() + 10 * (BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 50)) as u64;
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("segment");
        file.write_all_at(&torn[..torn.len() / 2], end).expect("torn write");
        drop(file);

        let (wal, opened) = f.open(None, 1 << 20).expect("a torn tail is not damage");
        assert_eq!(opened.torn_bytes, (torn.len() / 2) as u64);
        assert_eq!(wal.last_index(), Some(10));
        wal.append(11, &[payload(11, 7)]).expect("append after the cut");
        drop(wal);
        let (wal, opened) = f.open(None, 1 << 20).expect("reopen");
        assert_eq!(opened.torn_bytes, 0, "the torn bytes were zeroed");
        assert_eq!(indexes(&wal, 0, 100), (1..=11).collect::<Vec<_>>());
        assert_eq!(wal.read(11, 12).expect("read")[0].1, payload(11, 7));
    }

    #[test]
    fn damage_before_intact_entries_stops_the_open() {
        let f = Fixture::new();
        let wal = f.filled(5, 50, 1 << 20);
        let path = f.segments().pop().expect("a segment");
        drop(wal);
        // One bit of entry 2's payload flipped (a disk's damage, not a torn append).
        let batch_2 = MAGIC.len() + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 50;
        let at = (batch_2 + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 10) as u64;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("segment");
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).expect("read");
        file.write_all_at(&[byte[0] ^ 1], at).expect("flip");

        let err = f.open(None, 1 << 20).err().expect("damage is an error");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(&format!("at byte {batch_2}:")), "{text}");
        assert!(text.contains("with an intact batch after it"), "{text}");
        assert_eq!(std::fs::read(&path).expect("read").len() as u64, 1 << 20, "nothing was cut");
    }

    #[test]
    fn a_damaged_segment_that_is_not_the_last_stops_the_open() {
        let f = Fixture::new();
        let wal = f.filled(20, 100, 512);
        drop(wal);
        let first = f.segments().remove(0);
        let file = std::fs::OpenOptions::new().write(true).open(&first).expect("segment");
        file.write_all_at(b"XXXX", 200).expect("damage the tail of the first segment");
        let text = f.open(None, 512).err().expect("damage is an error").to_string();
        assert!(text.contains(&first.display().to_string()) && text.contains("damaged"), "{text}");

        // A missing middle segment is a gap, refused too.
        let f = Fixture::new();
        let wal = f.filled(20, 100, 512);
        drop(wal);
        let segments = f.segments();
        std::fs::remove_file(&segments[1]).expect("remove");
        let text = f.open(None, 512).err().expect("a gap is an error").to_string();
        assert!(text.contains("but the segment before ends at entry"), "{text}");
    }

    #[test]
    fn truncated_entries_never_come_back() {
        let f = Fixture::new();
        let wal = f.filled(30, 60, 1024);
        let before = f.segments().len();
        // Entries 8.. go, across segments: the later segments are removed, the old 8..=10
        // stay in the first one behind a marker, and a new 8 follows it.
        wal.truncate(8).expect("truncate");
        assert_eq!(wal.last_index(), Some(7));
        assert!(f.segments().len() < before, "later segments removed");
        wal.append(8, &[b"new entry eight".repeat(4)]).expect("append");
        let new_8 = wal.read(8, 9).expect("read")[0].1.clone();
        drop(wal);
        let (wal, opened) = f.open(None, 1024).expect("reopen");
        assert_eq!(opened, Opened::default());
        assert_eq!(indexes(&wal, 0, 100), (1..=8).collect::<Vec<_>>());
        assert_eq!(wal.read(8, 9).expect("read")[0].1, new_8);
        // Truncating what is not there changes nothing.
        wal.truncate(50).expect("truncate past the end");
        assert_eq!(wal.last_index(), Some(8));
        // Truncating everything leaves an empty log that takes any first entry.
        wal.truncate(1).expect("truncate all");
        assert_eq!(wal.last_index(), None);
        wal.append(1, &[payload(1, 5)]).expect("append");
        drop(wal);
        assert_eq!(f.open(None, 1024).expect("reopen").0.last_index(), Some(1));
    }

    #[test]
    fn a_truncation_inside_a_batch_keeps_the_entries_before_it() {
        let f = Fixture::new();
        let (wal, _) = f.open(None, 1 << 20).expect("open");
        wal.append(1, &(1..=5).map(|i| payload(i, 20)).collect::<Vec<_>>()).expect("append");
        wal.truncate(3).expect("truncate");
        wal.append(3, &[b"three".to_vec()]).expect("append");
        // Overwriting entries without a truncation (openraft's storage suite does) truncates.
        wal.append(4, &[b"four".to_vec(), b"five".to_vec()]).expect("append");
        wal.append(5, &[b"FIVE".to_vec()]).expect("overwrite");
        drop(wal);
        let (wal, opened) = f.open(None, 1 << 20).expect("reopen");
        assert_eq!(opened, Opened::default());
        let read: Vec<_> = wal.read(0, 10).expect("read").into_iter().map(|(_, p)| p).collect();
        assert_eq!(read, vec![payload(1, 20), payload(2, 20), b"three".to_vec(), b"four".to_vec(), b"FIVE".to_vec()]);
    }

    #[test]
    fn purged_segments_are_removed_and_the_log_restarts_after_them() {
        let f = Fixture::new();
        let wal = f.filled(30, 60, 1024);
        let before = f.segments().len();
        wal.purge(12).expect("purge");
        assert!(f.segments().len() < before, "segments holding only purged entries removed");
        assert_eq!(indexes(&wal, 0, 15), vec![13, 14]);
        drop(wal);
        // The next open is told what was purged; entries at or below it are never read.
        let (wal, _) = f.open(Some(12), 1024).expect("reopen");
        assert_eq!(indexes(&wal, 0, 15), vec![13, 14]);
        // A purge past the last entry (a snapshot installed) empties the log; it goes on
        // right after the snapshot, and nowhere else.
        wal.purge(40).expect("purge all");
        assert_eq!(wal.last_index(), None);
        assert!(f.segments().is_empty(), "{:?}", f.segments());
        assert_eq!(wal.append(45, &[payload(45, 5)]).unwrap_err().to_string(), Wal::hole_message(45, 40));
        wal.append(41, &[payload(41, 5)]).expect("append after the snapshot");
        drop(wal);
        let (wal, _) = f.open(Some(40), 1024).expect("reopen");
        assert_eq!(indexes(&wal, 0, 100), vec![41]);

        // A crash between the durable purge point and the files' removal: the open removes them.
        let f = Fixture::new();
        let wal = f.filled(30, 60, 1024);
        drop(wal);
        let (wal, opened) = f.open(Some(12), 1024).expect("reopen");
        assert!(opened.removed_segments > 0);
        assert_eq!(indexes(&wal, 0, 15), vec![13, 14]);
        // A log that starts after a gap from the purge point is refused.
        drop(wal);
        let text = f.open(Some(2), 1024).err().expect("gap").to_string();
        assert!(text.contains("but the log was purged only up to entry 2"), "{text}");
    }

    /// The segment format is a disk format: these bytes never change (a new format gets a
    /// new magic).
    #[test]
    fn batch_bytes_are_pinned() {
        let (batch, offsets) = encode_batch(7, &[b"ab".to_vec()]).expect("encode");
        let hex: String = batch.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0e000000070000000000000001000000c5fcec50bc83be990200000001e3f495c12ca11e6162");
        assert_eq!(offsets, vec![(24, 14)]);
        assert_eq!(MAGIC, b"CAIRNWL1");
    }
}

//! The byte formats of state snapshots and backup archives: framing, header and checksums.
//!
//! A **state snapshot** (`CAIRNSM1`, Raft snapshots and the body of an archive): records
//! `table u8, key_len u32 BE, key, value_len u32 BE, value`, then `record_count u64 BE` and an
//! FNV-1a 64 checksum of everything before it (u64 BE).
//!
//! A **backup archive** (`CAIRNBK1`, version 1; `GET /v1/snapshot`, `cairn snapshot save`):
//! magic; `header_len u32 BE`; the header as JSON ([`ArchiveHeader`]; cairn pads it with
//! spaces to 1 KiB, so the state can be written before the header is known); a state
//! snapshot; then an FNV-1a 64 checksum (u64 BE) of everything before it, the archive's
//! checksum.
//!
//! Architecture Invariant: this module knows how the bytes are laid out, not what the rows
//! mean. It sits below `store`, which fills snapshots from its tables, applies them, and
//! checks that every row of an archive decodes as its table's type before a restore, and
//! below `cli`, which checks and inspects archives offline (Consul's `snapshot inspect` needs
//! no agent). *Why:* the CLI stays an HTTP client plus file formats and never reaches into the
//! store.

use std::io::{Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};

const SNAPSHOT_MAGIC: &[u8; 8] = b"CAIRNSM1";
const ARCHIVE_MAGIC: &[u8; 8] = b"CAIRNBK1";
pub const ARCHIVE_VERSION: u32 = 1;
const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Room for the header at the front of an archive being written (see the module doc).
const HEADER_ROOM: usize = 1024;
const STATE_START: u64 = (ARCHIVE_MAGIC.len() + 4 + HEADER_ROOM) as u64;
/// Bytes buffered on the way to or from a snapshot's or an archive's file.
pub const BUFFER_BYTES: usize = 64 * 1024;

/// LMDB's key size limit: a record with a longer (or empty) key could never be stored, and
/// applying it would stop Raft, so such a snapshot is refused when checked.
pub const KEY_BYTES_MAX: usize = 511;
/// Indexes stay below 2^53 so every JSON client reads them exactly (and sums cannot wrap).
pub const INDEX_MAX: u64 = 1 << 53;

/// How many tables snapshots carry (tags `0..TABLE_TAGS`). The tags are the format: never
/// renumber them.
pub const TABLE_TAGS: usize = 14;
pub const TAG_META: u8 = 0;
pub const TAG_NODES: u8 = 1;
pub const TAG_SERVICES: u8 = 2;
pub const TAG_SERVICE_NAMES: u8 = 3;
pub const TAG_CHECKS: u8 = 4;
pub const TAG_KV: u8 = 5;
pub const TAG_KV_TOMBSTONES: u8 = 6;
pub const TAG_INDEXES: u8 = 7;
pub const TAG_SESSIONS: u8 = 8;
pub const TAG_LOCK_DELAYS: u8 = 10;
pub const TAG_PREPARED_QUERIES: u8 = 11;
pub const TAG_ACL: u8 = 12;
pub const TAG_RESTORE_PARTS: u8 = 13;

/// One record of a state snapshot: table tag, key, value.
pub type Record<'a> = (u8, &'a [u8], &'a [u8]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid cairn snapshot archive: {0}")]
pub struct ArchiveError(pub String);

/// A state snapshot that is not one, or is damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(pub String);

impl From<SnapshotError> for ArchiveError {
    fn from(e: SnapshotError) -> Self {
        ArchiveError(e.0)
    }
}

/// What an archive says about itself (`cairn snapshot inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    pub version: u32,
    /// The highest index the state had issued: every index after a restore exceeds it.
    pub index: u64,
    pub term: u64,
    pub created_unix: u64,
    pub nodes: u64,
    pub services: u64,
    pub checks: u64,
    pub kv: u64,
    /// Absent in archives made before sessions existed.
    #[serde(default)]
    pub sessions: u64,
    pub state_bytes: u64,
}

/// An archive whose framing checked out: its header, its checksum and where its state is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub header: ArchiveHeader,
    pub checksum: u64,
    state: std::ops::Range<usize>,
}

impl Verified {
    pub fn state<'a>(&self, archive: &'a [u8]) -> &'a [u8] {
        &archive[self.state.clone()]
    }
}

const FNV1A_START: u64 = 0xcbf29ce484222325;

pub(crate) fn fnv1a_more(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_more(FNV1A_START, bytes)
}

/// A writer that hashes (FNV-1a 64) what passes through it.
struct Fnv1a<W> {
    inner: W,
    hash: u64,
}

impl<W: Write> Fnv1a<W> {
    fn new(inner: W) -> Self {
        Fnv1a { inner, hash: FNV1A_START }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash = fnv1a_more(self.hash, bytes);
        self.inner.write_all(bytes)
    }
}

/// Writes a state snapshot record by record, as it is read (nothing held in memory).
pub struct SnapshotWriter<W: Write> {
    out: Fnv1a<W>,
    counts: [u64; TABLE_TAGS],
}

impl<W: Write> SnapshotWriter<W> {
    pub fn begin(out: W) -> std::io::Result<Self> {
        let mut out = Fnv1a::new(out);
        out.write_all(SNAPSHOT_MAGIC)?;
        Ok(SnapshotWriter { out, counts: [0; TABLE_TAGS] })
    }

    /// One row of table `tag` (below [`TABLE_TAGS`]: a bug otherwise).
    pub fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        assert!((tag as usize) < TABLE_TAGS, "snapshot table tag {tag} out of range");
        self.out.write_all(&[tag])?;
        self.out.write_all(&(key.len() as u32).to_be_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&(value.len() as u32).to_be_bytes())?;
        self.out.write_all(value)?;
        self.counts[tag as usize] += 1;
        Ok(())
    }

    /// Writes the trailer; returns the records written per table tag.
    pub fn finish(mut self) -> std::io::Result<[u64; TABLE_TAGS]> {
        self.out.write_all(&self.counts.iter().sum::<u64>().to_be_bytes())?;
        let sum = self.out.hash;
        self.out.inner.write_all(&sum.to_be_bytes())?;
        Ok(self.counts)
    }
}

/// Reads a state snapshot of `len` bytes from `input` record by record, checking the framing
/// (tags, key lengths, lengths that stay inside `len`) as it goes and the record count and
/// checksum at [`SnapshotReader::finish`]. Memory stays at one record whatever the size, so
/// a Raft snapshot streams from its file into the store; nothing read may be trusted (or
/// committed) until `finish` says the whole snapshot is intact.
pub struct SnapshotReader<R: Read> {
    records_left: RecordBytes<R>,
    records: u64,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// The trailer: record count and checksum, u64 BE each.
const SNAPSHOT_TRAILER: u64 = 16;

/// The records part of a snapshot being read: how much of it is left, and the checksum of
/// everything read so far.
struct RecordBytes<R: Read> {
    input: R,
    hash: u64,
    remaining: u64,
}

impl<R: Read> RecordBytes<R> {
    /// Replaces `buf` with the next `n` bytes.
    fn fill(&mut self, buf: &mut Vec<u8>, n: u64) -> Result<(), SnapshotError> {
        let past_end = || SnapshotError("record runs past the end".into());
        if n > self.remaining {
            return Err(past_end());
        }
        buf.clear();
        let read =
            self.input.by_ref().take(n).read_to_end(buf).map_err(|e| SnapshotError(format!("cannot read: {e}")))?;
        if read as u64 != n {
            return Err(past_end());
        }
        self.hash = fnv1a_more(self.hash, buf);
        self.remaining -= n;
        Ok(())
    }

    fn u32(&mut self, scratch: &mut Vec<u8>) -> Result<u32, SnapshotError> {
        self.fill(scratch, 4)?;
        Ok(u32::from_be_bytes(scratch[..4].try_into().unwrap_or([0; 4])))
    }
}

impl<R: Read> SnapshotReader<R> {
    pub fn begin(mut input: R, len: u64) -> Result<Self, SnapshotError> {
        let magic_len = SNAPSHOT_MAGIC.len() as u64;
        let mut magic = [0u8; 8];
        if len < magic_len + SNAPSHOT_TRAILER || input.read_exact(&mut magic).is_err() || &magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError("missing CAIRNSM1 header".into()));
        }
        let records_left = RecordBytes { input, hash: fnv1a(&magic), remaining: len - magic_len - SNAPSHOT_TRAILER };
        Ok(SnapshotReader { records_left, records: 0, key: Vec::new(), value: Vec::new() })
    }

    /// The next record, or `None` after the last.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, SnapshotError> {
        let bytes = &mut self.records_left;
        if bytes.remaining == 0 {
            return Ok(None);
        }
        bytes.fill(&mut self.value, 1)?;
        let tag = self.value[0];
        if tag as usize >= TABLE_TAGS {
            return Err(SnapshotError("unknown table tag".into()));
        }
        let key_len = bytes.u32(&mut self.value)? as usize;
        if key_len == 0 || key_len > KEY_BYTES_MAX {
            return Err(SnapshotError(format!(
                "a key of {key_len} bytes cannot be stored (keys are 1 to {KEY_BYTES_MAX} bytes)"
            )));
        }
        bytes.fill(&mut self.key, key_len as u64)?;
        let value_len = bytes.u32(&mut self.value)?;
        bytes.fill(&mut self.value, u64::from(value_len))?;
        self.records += 1;
        Ok(Some((tag, &self.key, &self.value)))
    }

    /// Checks the trailer once every record is read; returns the number of records.
    pub fn finish(self) -> Result<u64, SnapshotError> {
        let bad = |why: &str| SnapshotError(why.to_string());
        let RecordBytes { mut input, hash, remaining } = self.records_left;
        if remaining != 0 {
            return Err(bad("records left unread"));
        }
        let mut trailer = [0u8; SNAPSHOT_TRAILER as usize];
        input.read_exact(&mut trailer).map_err(|_| bad("short trailer"))?;
        let (count, sum) = trailer.split_at(8);
        if fnv1a_more(hash, count) != u64::from_be_bytes(sum.try_into().map_err(|_| bad("short trailer"))?) {
            return Err(bad("checksum mismatch"));
        }
        if u64::from_be_bytes(count.try_into().map_err(|_| bad("short trailer"))?) != self.records {
            return Err(bad("record count mismatch"));
        }
        Ok(self.records)
    }
}

/// Reads every record of a state snapshot held in memory through `visit`, then checks the
/// trailer (see [`SnapshotReader`]); returns the number of records.
pub fn visit_snapshot<E: From<SnapshotError>>(
    bytes: &[u8],
    mut visit: impl FnMut(Record<'_>) -> Result<(), E>,
) -> Result<u64, E> {
    let mut reader = SnapshotReader::begin(bytes, bytes.len() as u64)?;
    while let Some(record) = reader.next_record()? {
        visit(record)?;
    }
    Ok(reader.finish()?)
}

/// A record copied out of its snapshot.
pub type OwnedRecord = (u8, Vec<u8>, Vec<u8>);

/// The records of a state snapshot held in memory, copied out, once its framing, record
/// count and checksum have checked out.
pub fn parse_snapshot(bytes: &[u8]) -> Result<Vec<OwnedRecord>, SnapshotError> {
    let mut records = Vec::new();
    visit_snapshot(bytes, |(tag, key, value)| {
        records.push((tag, key.to_vec(), value.to_vec()));
        Ok::<_, SnapshotError>(())
    })?;
    Ok(records)
}

/// Writes an archive into `file` (empty, open for reading and writing) and rewinds it.
/// `fill` writes the state snapshot through the writer it is given (straight to the file,
/// through one buffer) and returns the archive's index and term; then the header goes into
/// its room, and the checksum is computed by reading the file back once.
pub fn write_archive<E: From<std::io::Error> + From<ArchiveError>>(
    file: &mut std::fs::File,
    created_unix: u64,
    fill: impl FnOnce(&mut SnapshotWriter<&mut std::io::BufWriter<&mut std::fs::File>>) -> Result<(u64, u64), E>,
) -> Result<ArchiveHeader, E> {
    file.write_all(ARCHIVE_MAGIC)?;
    file.write_all(&(HEADER_ROOM as u32).to_be_bytes())?;
    file.write_all(&[b' '; HEADER_ROOM])?;
    let mut buffered = std::io::BufWriter::with_capacity(BUFFER_BYTES, &mut *file);
    let mut snapshot = SnapshotWriter::begin(&mut buffered)?;
    let (index, term) = fill(&mut snapshot)?;
    let counts = snapshot.finish()?;
    buffered.flush()?;
    drop(buffered);
    let state_bytes = file.stream_position()? - STATE_START;
    let header = ArchiveHeader {
        version: ARCHIVE_VERSION,
        index,
        term,
        created_unix,
        nodes: counts[TAG_NODES as usize],
        services: counts[TAG_SERVICES as usize],
        checks: counts[TAG_CHECKS as usize],
        kv: counts[TAG_KV as usize],
        sessions: counts[TAG_SESSIONS as usize],
        state_bytes,
    };
    let json = serde_json::to_vec(&header).map_err(|e| ArchiveError(e.to_string()))?;
    if json.len() > HEADER_ROOM {
        return Err(ArchiveError(format!("header of {} bytes does not fit in {HEADER_ROOM}", json.len())).into());
    }
    file.seek(SeekFrom::Start((ARCHIVE_MAGIC.len() + 4) as u64))?;
    file.write_all(&json)?;
    file.seek(SeekFrom::Start(0))?;
    let mut hash = Fnv1a::new(std::io::sink());
    let mut chunk = vec![0u8; BUFFER_BYTES];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        hash.write_all(&chunk[..n])?;
    }
    file.write_all(&hash.hash.to_be_bytes())?;
    file.seek(SeekFrom::Start(0))?;
    Ok(header)
}

/// Checks an archive's framing (magic, version, header, checksum, index range, and the state
/// snapshot's own framing and checksum) before anything trusts it. What the rows hold is the
/// store's to check (`store::archive::verify`).
pub fn verify_archive(archive: &[u8]) -> Result<Verified, ArchiveError> {
    read_archive(|| Ok(archive), archive.len() as u64, |_| Ok::<_, ArchiveError>(()))
}

/// Reads an archive of `len` bytes from what `open` gives (a file, or bytes in memory),
/// streaming, so memory stays at one record whatever its size. `open` is called twice:
/// first the whole archive is checked against its checksum (a truncated or damaged one is
/// refused as such before anything in it is parsed), then the header and the state
/// snapshot's framing are checked as each state record is handed to `visit`.
pub fn read_archive<R: Read, E: From<ArchiveError>>(
    mut open: impl FnMut() -> std::io::Result<R>,
    len: u64,
    mut visit: impl FnMut(Record<'_>) -> Result<(), E>,
) -> Result<Verified, E> {
    let bad = |why: String| ArchiveError(why);
    let unreadable = |e: std::io::Error| ArchiveError(format!("cannot read the archive: {e}"));
    let magic_len = ARCHIVE_MAGIC.len() as u64;
    let not_ours = || bad("missing CAIRNBK1 header (not a cairn archive, or empty)".into());
    let mut input = open().map_err(unreadable)?;
    let mut magic = [0u8; 8];
    if len < magic_len + 4 + 8 || input.read_exact(&mut magic).is_err() || &magic != ARCHIVE_MAGIC {
        return Err(not_ours().into());
    }
    let mut hash = fnv1a(&magic);
    let mut chunk = vec![0u8; BUFFER_BYTES];
    let mut left = len - magic_len - 8;
    while left > 0 {
        let n = input.read(&mut chunk[..BUFFER_BYTES.min(left as usize)]).map_err(unreadable)?;
        if n == 0 {
            return Err(bad("checksum mismatch (truncated or damaged)".into()).into());
        }
        hash = fnv1a_more(hash, &chunk[..n]);
        left -= n as u64;
    }
    let mut sum = [0u8; 8];
    input.read_exact(&mut sum).map_err(|_| bad("checksum mismatch (truncated or damaged)".into()))?;
    let checksum = u64::from_be_bytes(sum);
    if hash != checksum {
        return Err(bad("checksum mismatch (truncated or damaged)".into()).into());
    }
    drop(input);

    let mut input = open().map_err(unreadable)?;
    let mut start = [0u8; 12];
    input.read_exact(&mut start).map_err(unreadable)?;
    let header_len = u32::from_be_bytes([start[8], start[9], start[10], start[11]]) as u64;
    if header_len > HEADER_BYTES_MAX as u64 || 12 + header_len + 8 > len {
        return Err(bad(format!("header length {header_len} runs past the archive")).into());
    }
    let mut header = Vec::new();
    input.by_ref().take(header_len).read_to_end(&mut header).map_err(unreadable)?;
    let header: ArchiveHeader = serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable header: {e}")))?;
    if header.version != ARCHIVE_VERSION {
        return Err(bad(format!("format version {} is not {ARCHIVE_VERSION}", header.version)).into());
    }
    if header.index >= INDEX_MAX {
        return Err(bad(format!("index {} is out of range", header.index)).into());
    }
    let state_len = len - 12 - header_len - 8;
    if state_len != header.state_bytes {
        return Err(bad(format!("state is {state_len} bytes, the header says {}", header.state_bytes)).into());
    }
    let mut records = SnapshotReader::begin(input.by_ref().take(state_len), state_len).map_err(ArchiveError::from)?;
    while let Some(record) = records.next_record().map_err(ArchiveError::from)? {
        visit(record)?;
    }
    records.finish().map_err(ArchiveError::from)?;
    let state = (12 + header_len) as usize..(len - 8) as usize;
    Ok(Verified { header, checksum, state })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(rows: &[Record<'_>]) -> Vec<u8> {
        let mut file = tempfile::tempfile().expect("tempfile");
        write_archive::<ArchiveError>(&mut file, 1_700_000_000, |snapshot| {
            for (tag, key, value) in rows {
                snapshot.record(*tag, key, value).map_err(|e| ArchiveError(e.to_string()))?;
            }
            Ok((42, 3))
        })
        .expect("write");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read back");
        bytes
    }

    impl From<std::io::Error> for ArchiveError {
        fn from(e: std::io::Error) -> Self {
            ArchiveError(e.to_string())
        }
    }

    #[test]
    fn round_trips_and_rejects_damage_truncation_and_foreign_files() {
        let bytes = archive(&[(TAG_NODES, b"n1", b"{}"), (TAG_KV, b"k", b"v"), (TAG_KV, b"k2", b"")]);
        let verified = verify_archive(&bytes).expect("valid");
        assert_eq!((verified.header.index, verified.header.term), (42, 3));
        assert_eq!((verified.header.nodes, verified.header.kv, verified.header.services), (1, 2, 0));
        let records = parse_snapshot(verified.state(&bytes)).expect("state");
        assert_eq!(records[1], (TAG_KV, b"k".to_vec(), b"v".to_vec()));
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        assert!(verify_archive(&damaged).expect_err("damaged").0.contains("checksum"));
        assert!(verify_archive(&bytes[..bytes.len() - 3]).is_err(), "truncated");
        assert!(verify_archive(b"{\"not\": \"an archive\"}").expect_err("foreign").0.contains("CAIRNBK1"));
        assert!(verify_archive(b"").is_err());
    }

    #[test]
    fn a_snapshot_with_a_key_lmdb_cannot_hold_is_refused() {
        let long = vec![b'k'; KEY_BYTES_MAX + 1];
        let mut bytes = Vec::new();
        let mut writer = SnapshotWriter::begin(&mut bytes).expect("begin");
        writer.record(TAG_KV, &long, b"v").expect("record");
        writer.finish().expect("finish");
        assert!(parse_snapshot(&bytes).expect_err("long key").0.contains("cannot be stored"));
    }
}

//! Backup archives (`GET /v1/snapshot`, `cairn snapshot save`): the whole replicated state at
//! one index, versioned and checksummed, restorable with `PUT /v1/snapshot`.
//!
//! Layout (version 1): magic `CAIRNBK1`; `header_len u32 BE`; the header as JSON
//! ([`ArchiveHeader`]; cairn pads it with spaces to 1 KiB, so the state can be written before
//! the header is known); the state-machine snapshot (`store::snapshot`'s `CAIRNSM1` bytes, with
//! their own checksum); then an FNV-1a 64 checksum (u64 BE) of everything before it, which
//! is the archive's checksum.
//!
//! Raft's own metadata (`last_applied`, membership) is not part of what a restore applies:
//! the archive's state replaces the catalog and KV, never the cluster's log position.

use serde::{Deserialize, Serialize};

use super::snapshot::{fnv1a, parse};
use super::StoreError;

const MAGIC: &[u8; 8] = b"CAIRNBK1";
pub const VERSION: u32 = 1;
const HEADER_BYTES_MAX: usize = 64 * 1024;

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

/// A verified archive: its header, its checksum and where its state bytes are.
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid cairn snapshot archive: {0}")]
pub struct ArchiveError(pub String);

/// Room for the header at the front of an archive being built: its JSON is padded with spaces
/// to fill it, so the state can be written after it before the header is known.
const HEADER_ROOM: usize = 1024;

/// Where the state bytes of an archive start.
const STATE_START: u64 = (MAGIC.len() + 4 + HEADER_ROOM) as u64;

/// Bytes a backup buffers on their way to or from its file.
const BUFFER_BYTES: usize = 64 * 1024;

/// Writes a backup archive of `store` into `file` (empty, opened for reading and writing).
/// The state streams from one read transaction into the file, so memory stays at one
/// buffer whatever the state's size; the header then goes into its room, and the checksum
/// is computed by reading the file back once. `position` turns the `sm_meta` values of
/// `meta_keys`, read in that same transaction, into the archive's index and term.
pub fn write(
    store: &super::Store,
    file: &mut std::fs::File,
    meta_keys: &[&str],
    position: impl FnOnce(&super::snapshot::MetaValues) -> Result<(u64, u64), StoreError>,
    created_unix: u64,
) -> Result<ArchiveHeader, StoreError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    file.write_all(MAGIC)?;
    file.write_all(&(HEADER_ROOM as u32).to_be_bytes())?;
    file.write_all(&[b' '; HEADER_ROOM])?;
    let mut buffered = std::io::BufWriter::with_capacity(BUFFER_BYTES, &mut *file);
    let (meta, counts) = store.snapshot_to(&mut buffered, meta_keys)?;
    buffered.flush()?;
    drop(buffered);
    let state_bytes = file.stream_position()? - STATE_START;
    let (index, term) = position(&meta)?;
    let header = ArchiveHeader {
        version: VERSION,
        index,
        term,
        created_unix,
        nodes: counts[super::TAG_NODES as usize],
        services: counts[super::TAG_SERVICES as usize],
        checks: counts[super::TAG_CHECKS as usize],
        kv: counts[super::TAG_KV as usize],
        sessions: counts[super::TAG_SESSIONS as usize],
        state_bytes,
    };
    let json = serde_json::to_vec(&header).map_err(|e| StoreError::BadSnapshot(e.to_string()))?;
    if json.len() > HEADER_ROOM {
        return Err(StoreError::BadSnapshot(format!("header of {} bytes does not fit in {HEADER_ROOM}", json.len())));
    }
    file.seek(SeekFrom::Start((MAGIC.len() + 4) as u64))?;
    file.write_all(&json)?;
    file.seek(SeekFrom::Start(0))?;
    let mut hash = super::snapshot::Fnv1a::new(std::io::sink());
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

/// Checks everything (magic, version, header, checksum, the state's own structure and
/// checksum) before anything trusts the archive.
pub fn verify(archive: &[u8]) -> Result<Verified, ArchiveError> {
    let bad = |why: String| ArchiveError(why);
    if archive.len() < MAGIC.len() + 4 + 8 || &archive[..MAGIC.len()] != MAGIC {
        return Err(bad("missing CAIRNBK1 header (not a cairn archive, or empty)".into()));
    }
    let (body, sum) = archive.split_at(archive.len() - 8);
    let checksum = u64::from_be_bytes(sum.try_into().map_err(|_| bad("short trailer".into()))?);
    if fnv1a(body) != checksum {
        return Err(bad("checksum mismatch (truncated or damaged)".into()));
    }
    let header_len = u32::from_be_bytes(body[8..12].try_into().map_err(|_| bad("short header".into()))?) as usize;
    if header_len > HEADER_BYTES_MAX || 12 + header_len > body.len() {
        return Err(bad(format!("header length {header_len} runs past the archive")));
    }
    let header: ArchiveHeader =
        serde_json::from_slice(&body[12..12 + header_len]).map_err(|e| bad(format!("unreadable header: {e}")))?;
    if header.version != VERSION {
        return Err(bad(format!("format version {} is not {VERSION}", header.version)));
    }
    if header.index >= super::apply::archive_index_max() {
        return Err(bad(format!("index {} is out of range", header.index)));
    }
    let state = 12 + header_len..body.len();
    if state.len() as u64 != header.state_bytes {
        return Err(bad(format!("state is {} bytes, the header says {}", state.len(), header.state_bytes)));
    }
    // Every row must read back as what its table holds: a restore replaces the tables, and
    // a row the server cannot decode afterwards would stop it.
    for (tag, key, value) in parse(&archive[state.clone()]).map_err(|e| bad(e.to_string()))? {
        let decoded = match tag {
            super::TAG_NODES => json_row::<crate::model::Node>(value),
            super::TAG_SERVICES => json_row::<crate::model::Service>(value),
            super::TAG_CHECKS => json_row::<crate::model::HealthCheck>(value),
            super::TAG_KV => super::codec::decode_kv(key, value).map(drop).map_err(|e| e.to_string()),
            super::TAG_SESSIONS => json_row::<crate::model::Session>(value),
            super::TAG_LOCK_DELAYS => {
                super::codec::decode_u64("sm_kv_lock_delays", key, value).map(drop).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        };
        decoded.map_err(|e| bad(format!("a row of table {tag} does not decode: {e}")))?;
    }
    Ok(Verified { header, checksum, state })
}

fn json_row<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<T>(value).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(dir.path(), 16 << 20).expect("store");
        let mut file = tempfile::tempfile().expect("tempfile");
        write(&store, &mut file, &[], |_| Ok((42, 3)), 1_700_000_000).expect("write");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read back");
        bytes
    }

    #[test]
    fn round_trips_and_rejects_damage_truncation_and_foreign_files() {
        let bytes = archive();
        let verified = verify(&bytes).expect("valid");
        assert_eq!((verified.header.index, verified.header.term), (42, 3));
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        assert!(verify(&damaged).expect_err("damaged").0.contains("checksum"));
        assert!(verify(&bytes[..bytes.len() - 3]).is_err(), "truncated");
        assert!(verify(b"{\"not\": \"an archive\"}").expect_err("foreign").0.contains("CAIRNBK1"));
        assert!(verify(b"").is_err());
    }
}

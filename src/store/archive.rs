//! The store's side of backup archives (`GET /v1/snapshot`, `cairn snapshot save`; restored
//! with `PUT /v1/snapshot`): writing one from the state machine's tables, and checking, before
//! a restore, that every row of one decodes as what its table holds. The byte format is
//! `crate::backup`'s.
//!
//! Raft's own metadata (`last_applied`, membership) is not part of what a restore applies:
//! the archive's state replaces the catalog and KV, never the cluster's log position.

use super::{
    MetaValues, Store, StoreError, TAG_ACL, TAG_CHECKS, TAG_INDEXES, TAG_KV, TAG_KV_TOMBSTONES, TAG_LOCK_DELAYS,
    TAG_NODES, TAG_PREPARED_QUERIES, TAG_SERVICES, TAG_SERVICE_NAMES, TAG_SESSIONS,
};
use crate::backup::{ArchiveError, ArchiveHeader, Verified};

/// Writes a backup archive of `store` into `file` (empty, open for reading and writing) and
/// rewinds it. The state streams from one read transaction into the file, so memory stays at
/// one buffer whatever the state's size. `position` turns the `sm_meta` values of
/// `meta_keys`, read in that same transaction, into the archive's index and term.
pub fn write(
    store: &Store,
    file: &mut std::fs::File,
    meta_keys: &[&str],
    position: impl FnOnce(&MetaValues) -> Result<(u64, u64), StoreError>,
    created_unix: u64,
) -> Result<ArchiveHeader, StoreError> {
    crate::backup::write_archive(file, created_unix, |snapshot| position(&store.snapshot_to(snapshot, meta_keys)?))
}

/// Checks an archive of `len` bytes completely, streaming it from what `open` gives (twice:
/// `crate::backup::read_archive`): its framing, then that every row reads back as what its
/// table holds — a restore replaces the tables, and a row the server cannot decode
/// afterwards would stop it.
pub fn check<R: std::io::Read>(open: impl FnMut() -> std::io::Result<R>, len: u64) -> Result<Verified, ArchiveError> {
    crate::backup::read_archive(open, len, |(tag, key, value)| {
        let decoded = match tag {
            TAG_NODES => json_row::<crate::model::Node>(value),
            TAG_SERVICES => json_row::<crate::model::Service>(value),
            TAG_CHECKS => json_row::<crate::model::HealthCheck>(value),
            TAG_KV => super::codec::decode_kv(key, value).map(drop).map_err(|e| e.to_string()),
            TAG_SESSIONS => json_row::<crate::model::Session>(value),
            TAG_PREPARED_QUERIES => json_row::<crate::model::PreparedQuery>(value),
            TAG_LOCK_DELAYS => {
                super::codec::decode_u64("sm_kv_lock_delays", key, value).map(drop).map_err(|e| e.to_string())
            }
            // Read when tombstones are reaped and by KV reads: a row that does not decode
            // would fail a later apply, which stops Raft.
            TAG_KV_TOMBSTONES => {
                super::codec::decode_u64("sm_kv_tombstones", key, value).map(drop).map_err(|e| e.to_string())
            }
            TAG_INDEXES => super::codec::decode_u64("sm_indexes", key, value).map(drop).map_err(|e| e.to_string()),
            TAG_SERVICE_NAMES => match super::codec::split_key(key).as_slice() {
                [_, _, _] => Ok(()),
                _ => Err("a service-name row needs three parts".to_string()),
            },
            TAG_ACL => super::acl::check_row(key, value),
            _ => Ok(()),
        };
        decoded.map_err(|e| ArchiveError(format!("a row of table {tag} does not decode: {e}")))
    })
}

fn json_row<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<(), String> {
    serde_json::from_slice::<T>(value).map(drop).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(archive: &[u8]) -> Result<Verified, ArchiveError> {
        check(|| Ok(archive), archive.len() as u64)
    }

    #[test]
    fn a_row_that_does_not_decode_as_its_table_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 16 << 20).expect("store");
        let mut file = tempfile::tempfile().expect("tempfile");
        write(&store, &mut file, &[], |_| Ok((42, 3)), 1_700_000_000).expect("write");
        let mut good = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut good).expect("read back");
        assert_eq!(verify(&good).expect("an empty store's archive").header.index, 42);

        // Found by the snapshot_records fuzz target: a tombstone that is no index passed, and
        // the next apply that reaped tombstones failed, stopping Raft.
        let rows: [(u8, &[u8], &[u8]); 5] = [
            (TAG_NODES, b"n1", b"not json"),
            (TAG_KV_TOMBSTONES, b"app/x", b""),
            (TAG_INDEXES, b"t:kvs", b"\x01"),
            (TAG_SERVICE_NAMES, b"web", b""),
            (TAG_ACL, b"t\0abc", b"{}x"),
        ];
        for (tag, key, value) in rows {
            let mut bad = tempfile::tempfile().expect("tempfile");
            crate::backup::write_archive::<StoreError>(&mut bad, 0, |snapshot| {
                snapshot.record(tag, key, value)?;
                Ok((1, 1))
            })
            .expect("write");
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut bad, &mut bytes).expect("read back");
            assert!(crate::backup::verify_archive(&bytes).is_ok(), "the framing is fine");
            assert!(verify(&bytes).expect_err("row").0.contains("does not decode"), "table {tag}");
        }
    }
}

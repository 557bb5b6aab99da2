//! Backup archives on restore, through the command a `PUT /v1/snapshot` commits
//! (`Command::RestoreArchive`), applied to a store holding a known state. Invariant: an archive
//! either restores exactly (every table but Raft's metadata and the blocking indexes holds
//! the archive's rows) or is rejected with nothing changed; the store never fails.

use std::sync::{Mutex, OnceLock};

use std::collections::BTreeMap;

use cairn::backup::TABLE_TAGS;
use cairn::model::{CheckStatus, Command, CommandResult, RestoreArchive};
use cairn::store::{AppliedBatch, Store};

/// Tables a restore does not copy: Raft's metadata (0), the blocking indexes (7), which
/// move to the restore's index, and the parts of a restore under way (13), dropped.
const NOT_RESTORED: [u8; 3] = [0, 7, cairn::backup::TAG_RESTORE_PARTS];

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    /// An archive of the fixture's own state, restored after each successful restore.
    original: Vec<u8>,
    next_index: u64,
}

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("lmdb"), 64 << 20).expect("store");
        let commands = [
            super::register("n1", "10.0.0.1", Some(("web", "web", &["v1"])), CheckStatus::Passing),
            Command::KvSet { key: "app/config".into(), value: Some(b"hello".to_vec()), flags: 7, cas: None },
        ];
        store.apply(&[AppliedBatch { index: 2, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
        let original = archive_of(&store.snapshot(&[]).expect("snapshot").0);
        Mutex::new(Fixture { _dir: dir, store, original, next_index: 3 })
    })
}

/// A backup archive around a state snapshot's records (valid framing and checksums).
fn archive_of(state: &[u8]) -> Vec<u8> {
    let records = cairn::backup::parse_snapshot(state).expect("a valid state snapshot");
    let borrowed: Vec<(u8, &[u8], &[u8])> =
        records.iter().map(|(tag, key, value)| (*tag, &key[..], &value[..])).collect();
    archive_of_records(&borrowed)
}

fn archive_of_records(records: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
    use std::io::Read;
    let mut file = tempfile::tempfile().expect("tempfile");
    cairn::backup::write_archive::<cairn::store::StoreError>(&mut file, 0, |snapshot| {
        for (tag, key, value) in records {
            snapshot.record(*tag, key, value)?;
        }
        Ok((100, 1))
    })
    .expect("write archive");
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).expect("read archive");
    bytes
}

/// The rows of every table a restore copies (a key written twice keeps its last value, as
/// a restore writes them in order).
fn restored_rows(state: &[u8]) -> BTreeMap<(u8, Vec<u8>), Vec<u8>> {
    cairn::backup::parse_snapshot(state)
        .expect("a valid state snapshot")
        .into_iter()
        .filter(|(tag, _, _)| !NOT_RESTORED.contains(tag))
        .map(|(tag, key, value)| ((tag, key), value))
        .collect()
}

impl Fixture {
    fn restore(&mut self, archive: &[u8]) -> CommandResult {
        let checksum =
            archive.len().checked_sub(8).map_or(0, |at| u64::from_be_bytes(archive[at..].try_into().expect("8 bytes")));
        let command = Command::RestoreArchive(RestoreArchive { archive: archive.to_vec(), checksum });
        let index = self.next_index;
        self.next_index += 1;
        let mut results = self
            .store
            .apply(&[AppliedBatch { index, commands: std::slice::from_ref(&command), leader_time_ms: None }], &[])
            .unwrap_or_else(|e| panic!("the store failed applying a restore (Raft would stop): {e}"));
        results.remove(0).remove(0)
    }

    fn state(&self) -> Vec<u8> {
        self.store.snapshot(&[]).expect("snapshot").0
    }
}

/// Raw archive bytes.
pub fn check_archive(archive: &[u8]) {
    let mut f = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let before = f.state();
    match f.restore(archive) {
        CommandResult::Rejected(_) => {
            assert!(restored_rows(&f.state()) == restored_rows(&before), "a rejected archive changed the state");
        }
        _ => {
            let verified = cairn::backup::verify_archive(archive).expect("a restored archive verifies");
            let expected = restored_rows(verified.state(archive));
            let restored = restored_rows(&f.state());
            assert!(restored == expected, "the restored state differs from the archive");
            // Back to the known state for the next input.
            let original = f.original.clone();
            assert!(!matches!(f.restore(&original), CommandResult::Rejected(_)), "the fixture's own archive");
        }
    }
}

/// Records built from the input (tag, key and value lengths from its bytes), framed with
/// valid checksums, so the row checks and the restore itself are reached.
pub fn check_records(data: &[u8]) {
    let mut records = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 {
        let tag = rest[0] % TABLE_TAGS as u8;
        let key_len = (rest[1] as usize).min(rest.len() - 3);
        let value_len = (rest[2] as usize * 4).min(rest.len() - 3 - key_len);
        let key = &rest[3..3 + key_len];
        let value = &rest[3 + key_len..3 + key_len + value_len];
        records.push((tag, key, value));
        rest = &rest[3 + key_len + value_len..];
    }
    if records.iter().any(|(_, key, _)| key.is_empty()) {
        // Framing refuses empty keys before anything else; the raw target covers that.
        records.retain(|(_, key, _)| !key.is_empty());
    }
    check_archive(&archive_of_records(&records));
}

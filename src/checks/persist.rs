//! The agent's local state on disk, outside the replicated state: services and checks
//! registered through the API, and the last status of every check (so a restart does not
//! flap instances out of DNS). One JSON file, replaced atomically (write, fsync, rename,
//! fsync the directory): after a crash it holds the old or the new state, never a mix.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::agent::{CheckSpec, ServiceSpec};
use crate::model::CheckStatus;

pub const FILE_NAME: &str = "agent-local.json";
pub const VERSION: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub version: u32,
    pub services: Vec<ServiceSpec>,
    pub checks: Vec<CheckSpec>,
    pub statuses: Vec<PersistedStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedStatus {
    pub id: String,
    pub status: CheckStatus,
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("agent state file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("agent state file {} is damaged ({reason}); move it away to start without the services registered through the API", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Reads the file; a missing file is an empty state.
pub fn load(path: &Path) -> Result<Persisted, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Persisted::default()),
        Err(source) => return Err(PersistError::Io { path: path.to_path_buf(), source }),
    };
    let persisted: Persisted = serde_json::from_slice(&bytes)
        .map_err(|e| PersistError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })?;
    if persisted.version != VERSION {
        return Err(PersistError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("format version {} is not {VERSION}", persisted.version),
        });
    }
    Ok(persisted)
}

/// What [`encode`] writes: borrowed from the live state, so a save copies nothing but bytes.
#[derive(Serialize)]
pub struct PersistedRef<'a> {
    pub services: Vec<&'a ServiceSpec>,
    pub checks: Vec<&'a CheckSpec>,
    pub statuses: Vec<PersistedStatusRef<'a>>,
}

#[derive(Serialize)]
pub struct PersistedStatusRef<'a> {
    pub id: &'a str,
    pub status: CheckStatus,
    pub output: &'a str,
}

/// The file's bytes for `state`: one buffer, not a copy of the state's many small parts
/// (which, made every save, fragment the heap).
pub fn encode(state: &PersistedRef<'_>) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct File<'r, 'a> {
        version: u32,
        #[serde(flatten)]
        state: &'r PersistedRef<'a>,
    }
    serde_json::to_vec(&File { version: VERSION, state })
}

/// Replaces the file with `bytes`, durably.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    crate::durable_file::replace_file_durably(path, &[bytes])
        .map_err(|source| PersistError::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_a_damaged_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE_NAME);
        assert_eq!(load(&path).expect("missing is empty"), Persisted::default());
        let state = Persisted {
            version: VERSION,
            statuses: vec![PersistedStatus { id: "c".into(), status: CheckStatus::Warning, output: "o".into() }],
            ..Default::default()
        };
        let status = PersistedStatusRef { id: "c", status: CheckStatus::Warning, output: "o" };
        let bytes =
            encode(&PersistedRef { services: vec![], checks: vec![], statuses: vec![status] }).expect("encodes");
        save(&path, &bytes).expect("saved");
        assert_eq!(load(&path).expect("loads"), state);
        std::fs::write(&path, b"{\"version\":1,").expect("damage");
        let err = load(&path).expect_err("damaged").to_string();
        assert!(err.contains(FILE_NAME) && err.contains("damaged"), "{err}");
    }
}

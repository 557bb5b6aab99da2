//! The agent's data directory: creation (0700), the exclusive lock that keeps a second agent
//! out, the marker that tells a cairn directory from a foreign one, and the node ID.
//!
//! Layout: `cairn-data-dir` (marker, format version), `lock` (flock'd while running),
//! `node-id` (UUID), `lmdb/` (the LMDB environment), `agent-local.json` (the agent's own
//! services and checks), `keyring.json` (gossip keys, 0600, once `encrypt` is set).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const MARKER: &str = "cairn-data-dir";
const MARKER_CONTENT: &str = "cairn data directory, format 1\n";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data dir {path}: {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    #[error("data dir {0} is in use by another cairn agent (its lock file is held); stop that agent or choose another -data-dir")]
    Locked(PathBuf),
    #[error("data dir {0} is not a cairn data directory: it holds other files and no {MARKER} marker; use an empty or new directory")]
    Foreign(PathBuf),
    #[error("data dir {path}: {MARKER} marker is unreadable or of an unknown format ({found:?})")]
    BadMarker { path: PathBuf, found: String },
    #[error("data dir {path}: node-id file holds {found:?}, not a UUID")]
    BadNodeId { path: PathBuf, found: String },
}

/// An open, locked data directory. The lock is released when this is dropped; a temporary
/// (dev) directory is removed then too.
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    _temp: Option<tempfile::TempDir>,
}

fn io_err<'p>(path: &'p Path, action: &'static str) -> impl FnOnce(std::io::Error) -> DataDirError + 'p {
    move |source| DataDirError::Io { path: path.to_path_buf(), action, source }
}

impl DataDir {
    /// A temporary directory for `-dev`, removed on exit.
    pub fn temporary() -> Result<DataDir, DataDirError> {
        let temp = tempfile::Builder::new()
            .prefix("cairn-dev-")
            .tempdir()
            .map_err(io_err(Path::new("(temporary)"), "cannot create"))?;
        let mut dir = DataDir::open(temp.path())?;
        dir._temp = Some(temp);
        Ok(dir)
    }

    /// Opens `path`, creating it (mode 0700) if missing, checks it is ours and locks it.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        if !path.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io_err(path, "cannot create"))?;
        }
        if !path.is_dir() {
            return Err(DataDirError::Io {
                path: path.to_path_buf(),
                action: "cannot use",
                source: std::io::Error::other("not a directory"),
            });
        }
        let marker = path.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(content) if content == MARKER_CONTENT => {}
            Ok(content) => return Err(DataDirError::BadMarker { path: path.to_path_buf(), found: content }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut entries = fs::read_dir(path).map_err(io_err(path, "cannot list"))?;
                if entries.next().is_some() {
                    return Err(DataDirError::Foreign(path.to_path_buf()));
                }
                write_synced(&marker, MARKER_CONTENT.as_bytes()).map_err(io_err(path, "cannot write marker"))?;
            }
            Err(e) => return Err(DataDirError::Io { path: marker, action: "cannot read marker", source: e }),
        }
        let lock_path = path.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(path, "cannot open lock file"))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(DataDirError::Locked(path.to_path_buf()));
            }
            return Err(DataDirError::Io { path: lock_path, action: "cannot lock", source: e });
        }
        Ok(DataDir { path: path.to_path_buf(), _lock: lock, _temp: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lmdb_path(&self) -> PathBuf {
        self.path.join("lmdb")
    }

    /// The node's UUID: read from `node-id`, or created from `configured` (or at random) on
    /// first start and kept from then on.
    pub fn node_id(&self, configured: Option<&str>) -> Result<String, DataDirError> {
        let file = self.path.join("node-id");
        match fs::read_to_string(&file) {
            Ok(content) => {
                let id = content.trim().to_ascii_lowercase();
                if uuid::Uuid::parse_str(&id).is_err() {
                    return Err(DataDirError::BadNodeId { path: file, found: id });
                }
                if let Some(c) = configured.filter(|c| *c != id) {
                    tracing::warn!(configured = c, kept = %id, "node_id differs from the one in the data dir; keeping the data dir's");
                }
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = configured.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
                write_synced(&file, format!("{id}\n").as_bytes())
                    .map_err(io_err(&self.path, "cannot write node-id"))?;
                Ok(id)
            }
            Err(e) => Err(DataDirError::Io { path: file, action: "cannot read", source: e }),
        }
    }
}

/// Writes `bytes` to a temporary file, fsyncs it and renames it over `path`.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        crate::durable_file::sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_locked_out_and_foreign_dirs_refused() {
        let temp = tempfile::tempdir().expect("tempdir");
        let path = temp.path().join("data");
        let first = DataDir::open(&path).expect("first open");
        assert!(matches!(DataDir::open(&path), Err(DataDirError::Locked(_))));
        let id = first.node_id(None).expect("node id");
        assert_eq!(first.node_id(None).expect("node id again"), id, "node id must persist");
        drop(first);
        DataDir::open(&path).expect("reopen after the lock is released");

        let foreign = temp.path().join("foreign");
        fs::create_dir(&foreign).expect("mkdir");
        fs::write(foreign.join("something"), b"x").expect("write");
        assert!(matches!(DataDir::open(&foreign), Err(DataDirError::Foreign(_))));
    }
}

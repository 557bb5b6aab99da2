//! Files replaced durably: after a crash a path holds its old content or its new one, never
//! a mix and never nothing (the agent's local state, Raft snapshots, saved backups).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Replaces `path` with `parts` written in order: a temporary file beside it, fsync, rename,
/// directory fsync. The file is readable by its owner only: these files hold the state, and
/// with it ACL secrets.
pub fn replace_file_durably(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut file = create_owner_only(&tmp)?;
    for part in parts {
        file.write_all(part)?;
    }
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable (files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `path` empty, readable and writable by its owner only (replacing any file there:
/// a leftover of a crash may have other permissions, and the mode applies only to a new file).
pub fn create_owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(path)
}

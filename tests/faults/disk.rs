//! Small tmpfs mounts for the servers' data dirs, so the harness can fill one to the last
//! byte (`ENOSPC`) and free it again. Needs the right to mount (root or `CAP_SYS_ADMIN`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Room for a server's data dir during a scenario, with space to spare until filled.
const SIZE: &str = "size=64m";

/// A tmpfs mounted on a directory, unmounted when dropped.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", SIZE, "cairn-faults"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "`mount -t tmpfs` on {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir: dir.to_path_buf() })
    }

    fn filler(&self) -> PathBuf {
        self.dir.join("filler")
    }

    /// Writes a file until the file system has no byte left.
    pub fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            if let Err(e) = file.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling {}: {e}", self.dir.display());
                return;
            }
        }
        panic!("{} never filled", self.dir.display());
    }

    /// Frees what [`Tmpfs::fill`] took.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: an agent still starting or exiting may hold it for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// Whether tmpfs can be mounted here: `Err` says why not.
pub fn probe() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    Tmpfs::mount(&dir.path().join("probe")).map(drop)
}

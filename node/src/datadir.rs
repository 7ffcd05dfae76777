//! The node's data directory: who holds it, and the node's own secrets in it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Why a data dir cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data_dir_in_use: {path} is held by a running node{pid}; stop that node, or use its API with --node URL"
    )]
    InUse { path: PathBuf, pid: String },
    #[error("cannot open data dir {path}: {source}; check that the path exists and is writable")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive hold on a data dir, released when dropped (or when the process dies, however it dies:
/// the lock is the kernel's `flock`, not the file's existence).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and takes its lock, or fails with `data_dir_in_use`.
    pub fn acquire(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |source| DataDirError::Io {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path.join("LOCK"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(DataDirError::InUse {
                    path: path.to_owned(),
                    pid: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("log")
    }

    /// The admin token kept in the data dir, made on first use with 256 bits from the OS.
    pub fn admin_token(&self) -> std::io::Result<String> {
        let file = self.path.join("admin_token");
        match std::fs::read_to_string(&file) {
            Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        self.write_secret("admin_token", &token)?;
        Ok(token)
    }

    /// Writes a file readable by its owner only, and syncs it.
    pub fn write_secret(&self, name: &str, content: &str) -> std::io::Result<()> {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(self.path.join(name))?;
        f.write_all(content.as_bytes())?;
        f.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_data_dir_is_refused_with_data_dir_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDir::acquire(dir.path()).unwrap();
        let err = DataDir::acquire(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("data_dir_in_use"), "{text}");
        assert!(text.contains(&std::process::id().to_string()), "{text}");
        drop(held);
        assert!(DataDir::acquire(dir.path()).is_ok());
    }

    #[test]
    fn the_admin_token_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::acquire(dir.path()).unwrap();
        let a = d.admin_token().unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(d.admin_token().unwrap(), a);
    }
}

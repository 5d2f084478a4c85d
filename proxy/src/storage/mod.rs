//! Files in the storage directory: written atomically (temp file, fsync, rename, fsync of the
//! directory), private material with mode 0600. [`Layout`] names every one of them.

mod layout;

pub use layout::{Layout, PairPaths};

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage directory {} is not usable: {source}", path.display())]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the directory if needed and proves it writable by writing and removing a file.
pub fn ensure_writable(dir: &Path) -> Result<(), StorageError> {
    let err = |source| StorageError::NotWritable {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    fs::write(&probe, b"").map_err(err)?;
    fs::remove_file(&probe).map_err(err)?;
    sweep_temp_files(dir);
    Ok(())
}

/// How old a temp file of a live process must be before it counts as abandoned.
const TEMP_FILE_ABANDONED: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes temp files that an interrupted write (a crash, `kill -9`) left behind: those of
/// processes that no longer run here, and any older than a write could take. Returns how many.
pub fn sweep_temp_files(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_file_pid(&name) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TEMP_FILE_ABANDONED);
        if (!alive || old) && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temp file left by an interrupted write");
            removed += 1;
        }
    }
    removed
}

/// The pid in a temp file name made by [`temp_path`] (`.NAME.tmp-PID`).
fn temp_file_pid(name: &str) -> Option<u32> {
    let (head, pid) = name.rsplit_once(".tmp-")?;
    if !head.starts_with('.') || head.len() < 2 {
        return None;
    }
    pid.parse().ok()
}

/// Writes `data` to `path` so that readers see the old file or the new one, never a part.
/// `mode` applies from creation (0o600 for keys), so the secret is never readable by others.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StorageError> {
    write_all_atomic(&[(path, data, mode)])
}

/// Writes several files that belong together (a certificate and its key): every temp file is
/// written and synced first, then all are renamed in a row, so the window in which a reader
/// could see one new file beside one old one is a few renames, not a disk sync.
pub fn write_all_atomic(files: &[(&Path, &[u8], u32)]) -> Result<(), StorageError> {
    let mut staged: Vec<(PathBuf, &Path)> = Vec::new();
    let result = (|| {
        for &(path, data, mode) in files {
            let tmp = temp_path(path);
            staged.push((tmp.clone(), path));
            write_synced(&tmp, data, mode).map_err(|source| StorageError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        for (tmp, path) in &staged {
            fs::rename(tmp, path).map_err(|source| StorageError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let mut dirs: Vec<&Path> = files.iter().map(|f| parent(f.0)).collect();
        dirs.dedup();
        for dir in dirs {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StorageError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    })();
    if result.is_err() {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
    }
    result
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    parent(path).join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ))
}

fn write_synced(tmp: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    // A leftover from a crash could carry looser permissions: start from nothing.
    let _ = fs::remove_file(tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_of_dead_processes_are_swept_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("mcp-edge-sweep-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let keep = [
            "a.test.cert.pem".to_string(),
            format!(".a.test.key.pem.tmp-{}", std::process::id()),
            ".tmp-1".to_string(),
        ];
        // pid_max on Linux is at most 2^22: this pid cannot be running.
        let dead = ".a.test.key.pem.tmp-4294967295";
        for f in keep.iter().map(String::as_str).chain([dead]) {
            fs::write(dir.join(f), b"x").unwrap();
        }
        assert_eq!(sweep_temp_files(&dir), 1);
        assert!(!dir.join(dead).exists());
        for f in &keep {
            assert!(dir.join(f).exists(), "{f}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}

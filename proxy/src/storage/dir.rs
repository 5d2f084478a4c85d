//! The directory backend: one file per key, written atomically (temp file, fsync, rename, fsync
//! of the directory), private material with mode 0600. Locks are files under `locks/` holding
//! their owner and expiry, so the directory can be shared by replicas on one machine (or a
//! network file system that honours `O_EXCL`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{Backend, Holder, Key, StorageError};

/// A storage directory.
#[derive(Debug, Clone)]
pub(super) struct Dir {
    dir: PathBuf,
}

impl Dir {
    /// The directory, created if needed and proved writable.
    pub(super) fn open(dir: &Path) -> Result<Self, StorageError> {
        ensure_writable(dir)?;
        Ok(Self::at(dir))
    }

    /// The directory as it is, for reading (a command that only looks).
    pub(super) fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.dir.join(key.as_str())
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.dir.join("locks").join(format!("{name}.lock"))
    }

    pub(super) fn read(&self, key: &Key) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StorageError::Read { path, source }),
        }
    }

    pub(super) fn write(&self, items: &[(&Key, &[u8])]) -> Result<(), StorageError> {
        let paths: Vec<(PathBuf, &[u8], u32)> = items
            .iter()
            .map(|(k, v)| (self.path(k), *v, mode(k)))
            .collect();
        for (p, _, _) in &paths {
            let dir = parent(p);
            if dir != self.dir {
                fs::create_dir_all(dir).map_err(|source| StorageError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let files: Vec<(&Path, &[u8], u32)> = paths
            .iter()
            .map(|(p, v, m)| (p.as_path(), *v, *m))
            .collect();
        write_all_atomic(&files)
    }

    /// Writes `key` only if it does not exist: the new file is linked into place, which fails
    /// when another writer was first.
    fn write_new(&self, key: &Key, value: &[u8]) -> Result<bool, StorageError> {
        let path = self.path(key);
        let err = |source| StorageError::Write {
            path: path.clone(),
            source,
        };
        let tmp = temp_path(&path);
        write_synced(&tmp, value, mode(key)).map_err(err)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    fn read_lock(&self, name: &str) -> Option<(String, SystemTime)> {
        let text = fs::read_to_string(self.lock_path(name)).ok()?;
        let (value, expires) = text.trim_end().rsplit_once('\n')?;
        let ms: u64 = expires.parse().ok()?;
        Some((
            value.to_string(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
        ))
    }

    fn lock_text(value: &str, lease: Duration) -> String {
        let until = SystemTime::now() + lease;
        let ms = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("{value}\n{ms}\n")
    }
}

/// Whether a lock's holder was a process on this machine that no longer runs (a restart after
/// a crash need not wait for the lease).
fn holder_gone(value: &str) -> bool {
    let replica = value.split(' ').next().unwrap_or_default();
    let Some((host, pid)) = replica.rsplit_once(':') else {
        return false;
    };
    let this = super::replica_name();
    let this_host = this.rsplit_once(':').map_or("", |(h, _)| h);
    host == this_host
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

fn mode(key: &Key) -> u32 {
    if key.is_private() {
        0o600
    } else {
        0o644
    }
}

#[async_trait]
impl Backend for Dir {
    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StorageError> {
        self.read(key)
    }

    async fn put(&self, items: &[(&Key, &[u8])]) -> Result<(), StorageError> {
        self.write(items)
    }

    async fn put_new(&self, key: &Key, value: &[u8]) -> Result<bool, StorageError> {
        self.write_new(key, value)
    }

    async fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Write { path, source }),
        }
    }

    async fn list(&self) -> Result<Vec<Key>, StorageError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StorageError::Read {
            path: self.dir.clone(),
            source,
        })?;
        let mut keys: Vec<Key> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| Key::parse(&e.file_name().to_string_lossy()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn try_lock(
        &self,
        name: &str,
        value: &str,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let path = self.lock_path(name);
        let err = |source| StorageError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(parent(&path)).map_err(err)?;
        for _ in 0..2 {
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path);
            match created {
                Ok(mut f) => {
                    f.write_all(Self::lock_text(value, lease).as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(err)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = match self.read_lock(name) {
                        Some((value, until)) => until <= SystemTime::now() || holder_gone(&value),
                        // Half-written by a holder that died at once: stale once it is old.
                        None => fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_none_or(|age| age > lease),
                    };
                    if !stale {
                        return Ok(false);
                    }
                    let _ = fs::remove_file(&path);
                }
                Err(e) => return Err(err(e)),
            }
        }
        Ok(false)
    }

    async fn renew(&self, name: &str, value: &str, lease: Duration) -> Result<bool, StorageError> {
        match self.read_lock(name) {
            Some((v, _)) if v == value => {
                let path = self.lock_path(name);
                write_atomic(&path, Self::lock_text(value, lease).as_bytes(), 0o644)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn unlock(&self, name: &str, value: &str) -> Result<(), StorageError> {
        if self.read_lock(name).is_some_and(|(v, _)| v == value) {
            let _ = fs::remove_file(self.lock_path(name));
        }
        Ok(())
    }

    async fn lock_holder(&self, name: &str) -> Result<Option<Holder>, StorageError> {
        Ok(self.read_lock(name).and_then(|(value, until)| {
            let left = until.duration_since(SystemTime::now()).ok()?;
            Some(Holder::from_value(&value, left))
        }))
    }
}

/// Creates the directory if needed and proves it writable by writing and removing a file.
pub(super) fn ensure_writable(dir: &Path) -> Result<(), StorageError> {
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
const TEMP_FILE_ABANDONED: Duration = Duration::from_secs(600);

/// Removes temp files that an interrupted write (a crash, `kill -9`) left behind: those of
/// processes that no longer run here, and any older than a write could take. Returns how many.
pub(super) fn sweep_temp_files(dir: &Path) -> usize {
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
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StorageError> {
    write_all_atomic(&[(path, data, mode)])
}

/// Writes several files that belong together (a certificate and its key): every temp file is
/// written and synced first, then all are renamed in a row, so the window in which a reader
/// could see one new file beside one old one is a few renames, not a disk sync.
fn write_all_atomic(files: &[(&Path, &[u8], u32)]) -> Result<(), StorageError> {
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

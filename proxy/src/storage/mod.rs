//! Everything the proxy persists, behind one interface ([`Backend`]) with two implementations:
//! a directory (the default) and Redis (shared by replicas; the directory then keeps a local
//! copy that is read while Redis is unreachable). Certificates and keys, ACME accounts and
//! status, the session-seal key, HTTP-01 challenge responses and the per-host ACME locks all go
//! through [`Storage`]; [`Key`] names each of them.
//!
//! The interface is async; [`Storage::block_on`] runs an operation from synchronous code (start,
//! reload, commands). The Redis backend runs its I/O on a runtime of its own, so an operation
//! can be awaited from any runtime or none, and nothing on the request path waits for Redis.

mod dir;
mod key;
mod redis;

pub use key::Key;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::config::StorageConfig;

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
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Redis did not answer (down, unreachable, timed out); what it said, never the password.
    #[error("Redis at {at} is unavailable: {reason}")]
    Unavailable { at: String, reason: String },
    /// Redis answered but refused: credentials, ACL, a read-only replica.
    #[error("Redis at {at} refused: {reason}")]
    Refused { at: String, reason: String },
    #[error("storage.redis: {0}")]
    Setup(String),
}

impl StorageError {
    /// Whether the store could not be reached at all (as opposed to refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Who holds a lock and for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The replica: `HOSTNAME:PID`.
    pub replica: String,
    pub expires_in: Duration,
}

impl Holder {
    /// A lock's value is `REPLICA TOKEN`.
    fn from_value(value: &str, expires_in: Duration) -> Self {
        Self {
            replica: value.split(' ').next().unwrap_or_default().to_string(),
            expires_in,
        }
    }
}

/// What another replica changed in a shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This item was written.
    Put(Key),
    /// Notifications may have been missed (the store was unreachable): re-read everything.
    Resync,
}

/// One storage backend.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Where it is, for log lines: never a password.
    fn describe(&self) -> String;
    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes items that belong together (a chain and its key) so that readers see all or none
    /// of the new ones as far as the backend allows.
    async fn put(&self, items: &[(&Key, &[u8])]) -> Result<(), StorageError>;
    /// Writes `key` unless it exists; whether it was written.
    async fn put_new(&self, key: &Key, value: &[u8]) -> Result<bool, StorageError>;
    async fn delete(&self, key: &Key) -> Result<(), StorageError>;
    /// Every persisted item (no challenge responses, no locks).
    async fn list(&self) -> Result<Vec<Key>, StorageError>;
    /// Takes the lock `name` for `lease` unless someone holds it; whether it was taken.
    async fn try_lock(
        &self,
        name: &str,
        value: &str,
        lease: Duration,
    ) -> Result<bool, StorageError>;
    /// Extends the lease if `value` still holds the lock; whether it did.
    async fn renew(&self, name: &str, value: &str, lease: Duration) -> Result<bool, StorageError>;
    /// Releases the lock if `value` still holds it.
    async fn unlock(&self, name: &str, value: &str) -> Result<(), StorageError>;
    async fn lock_holder(&self, name: &str) -> Result<Option<Holder>, StorageError>;
    /// Changes made by other replicas, for a shared store.
    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        None
    }
    /// Checks that the store answers (and accepts the credentials).
    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Starts asking the store, every second, whether it answers: `storage_available` and one
    /// log line per change follow at once, whatever else uses the store.
    fn watch_health(&self) {}
}

/// The store in use and this replica's name in its locks.
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    replica: Arc<str>,
    lease: Duration,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.backend.describe())
    }
}

/// This replica's name in locks and status: `HOSTNAME:PID`.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

impl Storage {
    /// Opens the configured store: the directory (created and proved writable) and, with
    /// `redis`, a client that connects on first use. Nothing here waits for Redis.
    pub fn open(config: &StorageConfig) -> Result<Self, StorageError> {
        Self::open_dir(config, dir::Dir::open(&config.dir)?, true)
    }

    /// Opens the configured store to look at it: the directory is neither created, tidied nor
    /// written (what Redis holds is not copied into it).
    pub fn open_for_reading(config: &StorageConfig) -> Result<Self, StorageError> {
        let storage = Self::open_dir(config, dir::Dir::at(&config.dir), false)?;
        Ok(storage)
    }

    fn open_dir(
        config: &StorageConfig,
        dir: dir::Dir,
        write_copy: bool,
    ) -> Result<Self, StorageError> {
        let backend: Arc<dyn Backend> = match &config.redis {
            None => Arc::new(dir),
            Some(r) => Arc::new(redis::Redis::open(r, dir, write_copy)?),
        };
        Ok(Self {
            backend,
            replica: replica_name().into(),
            lease: config.lock_lease,
        })
    }

    /// A store on `backend` (tests, the copy command).
    pub fn with_backend(backend: Arc<dyn Backend>, lease: Duration) -> Self {
        Self {
            backend,
            replica: replica_name().into(),
            lease,
        }
    }

    /// Opens a store named on the command line: a directory path or a `redis://`/`rediss://`
    /// URL (the password from the URL or `password_env`), with no local copy.
    pub fn open_location(
        location: &str,
        prefix: &str,
        password_env: Option<&str>,
        ca: Option<PathBuf>,
    ) -> Result<Self, StorageError> {
        if location.starts_with("redis://") || location.starts_with("rediss://") {
            let config = crate::config::RedisConfig::from_parts(location, prefix, password_env, ca)
                .map_err(StorageError::Setup)?;
            let backend = redis::Redis::open_without_copy(&config)?;
            return Ok(Self::with_backend(
                Arc::new(backend),
                Duration::from_secs(30),
            ));
        }
        let dir = dir::Dir::open(std::path::Path::new(location))?;
        Ok(Self::with_backend(Arc::new(dir), Duration::from_secs(30)))
    }

    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Runs a storage operation to completion from synchronous code.
    pub fn block_on<F: Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    pub async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StorageError> {
        self.backend.get(key).await
    }

    pub async fn put(&self, items: &[(&Key, &[u8])]) -> Result<(), StorageError> {
        self.backend.put(items).await
    }

    pub async fn put_new(&self, key: &Key, value: &[u8]) -> Result<bool, StorageError> {
        self.backend.put_new(key, value).await
    }

    pub async fn delete(&self, key: &Key) -> Result<(), StorageError> {
        self.backend.delete(key).await
    }

    pub async fn list(&self) -> Result<Vec<Key>, StorageError> {
        self.backend.list().await
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        self.backend.ping().await
    }

    /// See [`Backend::watch_health`]; for a serving process.
    pub fn watch_health(&self) {
        self.backend.watch_health();
    }

    pub fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        self.backend.changes()
    }

    pub async fn lock_holder(&self, name: &str) -> Result<Option<Holder>, StorageError> {
        self.backend.lock_holder(name).await
    }

    /// Takes the lock `name` for this replica, or None while another holder's lease runs. The
    /// lease is renewed in the background until [`Lock::release`] (or drop, after which it
    /// runs out); renewal and release act only while the lock is still this one's.
    pub async fn lock(&self, name: &str) -> Result<Option<Lock>, StorageError> {
        let token: u64 = rand::random();
        let value = format!("{} {token:016x}", self.replica);
        if !self.backend.try_lock(name, &value, self.lease).await? {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = {
            let (backend, name, value, lease, lost) = (
                self.backend.clone(),
                name.to_string(),
                value.clone(),
                self.lease,
                lost.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    match backend.renew(&name, &value, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::Relaxed);
                            tracing::warn!(lock = %name, "the lock's lease ran out and another replica may have taken it");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(lock = %name, error = %e, "cannot renew the lock's lease; retrying");
                        }
                    }
                }
            })
        };
        Ok(Some(Lock {
            backend: self.backend.clone(),
            name: name.to_string(),
            value,
            keeper,
            lost,
        }))
    }
}

/// A held lock (see [`Storage::lock`]).
pub struct Lock {
    backend: Arc<dyn Backend>,
    name: String,
    value: String,
    keeper: tokio::task::JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Lock {
    /// Whether the lease ran out while held (another replica may have taken the lock).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub async fn release(self) {
        self.keeper.abort();
        if let Err(e) = self.backend.unlock(&self.name, &self.value).await {
            tracing::warn!(lock = %self.name, error = %e, "cannot release the lock; its lease will run out");
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_storage(name: &str, lease: Duration) -> (Storage, PathBuf) {
        let path = std::env::temp_dir().join(format!("mcp-edge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let dir = dir::Dir::open(&path).unwrap();
        (Storage::with_backend(Arc::new(dir), lease), path)
    }

    #[tokio::test]
    async fn directory_lock_is_exclusive_until_released_or_expired() {
        // Leases long enough that a loaded machine (the whole suite on 2 cores) does not let one
        // run out between two steps of the test.
        let (a, path) = temp_storage("lock", Duration::from_millis(1500));
        let mut b = a.clone();
        b.replica = "other:1".into();
        let held = a.lock("issue_cert_a.test").await.unwrap().unwrap();
        assert!(b.lock("issue_cert_a.test").await.unwrap().is_none());
        let holder = a.lock_holder("issue_cert_a.test").await.unwrap().unwrap();
        assert_eq!(holder.replica, a.replica());
        held.release().await;
        assert_eq!(a.lock_holder("issue_cert_a.test").await.unwrap(), None);
        // A holder that stops renewing (it died) loses the lock when the lease runs out.
        let dead = b.lock("issue_cert_a.test").await.unwrap().unwrap();
        dead.keeper.abort();
        std::mem::forget(dead);
        assert!(a.lock("issue_cert_a.test").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(1700)).await;
        let taken = a.lock("issue_cert_a.test").await.unwrap().unwrap();
        // A live holder's lease is renewed past its first term.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(b.lock("issue_cert_a.test").await.unwrap().is_none());
        assert!(!taken.lost());
        taken.release().await;
        // A holder on this machine whose process is gone (pid_max is at most 2^22) does not
        // hold up a restart for the rest of its lease.
        let mut dead = a.clone();
        let host = replica_name().rsplit_once(':').unwrap().0.to_string();
        dead.replica = format!("{host}:4294967295").into();
        let held = dead.lock("issue_cert_b.test").await.unwrap().unwrap();
        std::mem::forget(held);
        assert!(a.lock("issue_cert_b.test").await.unwrap().is_some());
        std::fs::remove_dir_all(path).unwrap();
    }

    #[tokio::test]
    async fn directory_keeps_file_names_and_modes_and_put_new_does_not_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let (s, path) = temp_storage("files", Duration::from_secs(5));
        let host = crate::names::HostName::parse("a.test").unwrap();
        let (c, k) = (Key::acme_cert(&host), Key::acme_key(&host));
        s.put(&[(&k, b"key"), (&c, b"chain")]).await.unwrap();
        let mode = |f: &str| {
            std::fs::metadata(path.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("a.test.key.pem"), 0o600);
        assert_eq!(mode("a.test.cert.pem"), 0o644);
        assert!(s.put_new(&Key::seal_key(), b"one").await.unwrap());
        assert!(!s.put_new(&Key::seal_key(), b"two").await.unwrap());
        assert_eq!(s.get(&Key::seal_key()).await.unwrap().unwrap(), b"one");
        assert_eq!(mode("session-seal.key"), 0o600);
        let t = Key::challenge("tok").unwrap();
        s.put(&[(&t, b"ka")]).await.unwrap();
        let listed: Vec<String> = s
            .list()
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            listed,
            ["a.test.cert.pem", "a.test.key.pem", "session-seal.key"]
        );
        s.delete(&t).await.unwrap();
        assert_eq!(s.get(&t).await.unwrap(), None);
        std::fs::remove_dir_all(path).unwrap();
    }
}

//! The Redis backend (redis-rs with its reconnecting connection manager). Every operation runs
//! on this backend's own one-thread runtime with a deadline, so callers on any runtime (or none)
//! can await it and a Redis that stops answering costs them [`OP_TIMEOUT`], never a hang.
//!
//! Keys are `PREFIX` + the key's name; locks are `PREFIX locks/NAME` (`SET NX PX`, renewed and
//! released by a script that checks the holder's token); challenge responses expire on their
//! own. Each write is announced on `PREFIX changes`, which every replica follows (re-reading
//! everything after a reconnection). Values read are copied to the local directory, which
//! answers reads while Redis is unreachable.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, Script};
use tokio::sync::broadcast;

use super::dir::Dir;
use super::{Backend, Change, Holder, Key, StorageError};
use crate::config::RedisConfig;
use crate::metrics;

/// Deadline of one operation, connection included.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a challenge response stays if nobody deletes it.
const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// Longest wait between attempts to re-subscribe.
const MAX_RESUBSCRIBE: Duration = Duration::from_secs(10);
/// How often a serving process asks Redis whether it answers, and how long it waits.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then \
           return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end",
    )
});
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('get', KEYS[1]) == ARGV[1] then \
           return redis.call('del', KEYS[1]) else return 0 end",
    )
});

pub(super) struct Redis {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    /// `HOST:PORT/DB`, for messages.
    at: String,
    copy: Option<Dir>,
    /// Reads refresh the local copy (not when the store is only looked at: `certs`).
    write_copy: bool,
    changes: OnceLock<broadcast::Sender<Change>>,
    health: OnceLock<()>,
}

impl Redis {
    pub(super) fn open(
        config: &RedisConfig,
        copy: Dir,
        write_copy: bool,
    ) -> Result<Self, StorageError> {
        let mut r = Self::open_without_copy(config)?;
        r.copy = Some(copy);
        r.write_copy = write_copy;
        Ok(r)
    }

    pub(super) fn open_without_copy(config: &RedisConfig) -> Result<Self, StorageError> {
        let setup = |m: String| StorageError::Setup(m);
        let mut info = redis::IntoConnectionInfo::into_connection_info(config.url.as_str())
            .map_err(|e| setup(format!("not a usable Redis URL: {}", kind(&e))))?;
        if let Some(pw) = &config.password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let at = format!("{}/{}", info.addr(), info.redis_settings().db());
        let client = match &config.ca {
            None => redis::Client::open(info),
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
        .map_err(|e| setup(format!("{at}: {}", kind(&e))))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("mcp-edge-redis")
            .enable_all()
            .build()
            .map_err(|e| setup(format!("cannot start its runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let conn = {
            let _in_runtime = handle.enter();
            let c = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(2)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            ConnectionManager::new_lazy_with_config(client.clone(), c)
                .map_err(|e| setup(format!("{at}: {}", kind(&e))))?
        };
        Ok(Self {
            runtime: Some(runtime),
            handle,
            client,
            conn,
            prefix: config.prefix.clone(),
            at,
            copy: None,
            write_copy: false,
            changes: OnceLock::new(),
            health: OnceLock::new(),
        })
    }

    fn name(&self, key: &Key) -> String {
        format!("{}{key}", self.prefix)
    }

    fn lock_name(&self, name: &str) -> String {
        format!("{}locks/{name}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    fn error(&self, e: &RedisError) -> StorageError {
        let reason = e.to_string();
        let at = self.at.clone();
        // A certificate the configured roots do not accept is a setting to fix, not an outage.
        let tls_refused = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
            || reason.contains("peer certificate");
        if tls_refused {
            return StorageError::Refused { at, reason };
        }
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
        {
            StorageError::Unavailable { at, reason }
        } else {
            StorageError::Refused { at, reason }
        }
    }

    /// Runs `op` on a connection on this backend's runtime, within [`OP_TIMEOUT`].
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let conn = self.conn.clone();
        let task = self
            .handle
            .spawn(async move { tokio::time::timeout(OP_TIMEOUT, op(conn)).await });
        let result = match task.await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(self.error(&e)),
            Ok(Err(_)) => Err(StorageError::Unavailable {
                at: self.at.clone(),
                reason: format!("no answer within {}s", OP_TIMEOUT.as_secs()),
            }),
            Err(e) => Err(StorageError::Unavailable {
                at: self.at.clone(),
                reason: format!("the operation failed: {e}"),
            }),
        };
        if self.health.get().is_none() {
            // Without the health loop (a command, not a serving process), operations say it.
            metrics::get().storage_available.set(i64::from(!matches!(
                result,
                Err(StorageError::Unavailable { .. })
            )));
        }
        result
    }

    /// Keeps the local copy equal to what Redis holds.
    fn refresh_copy(&self, key: &Key, value: &[u8]) {
        let Some(copy) = self.copy.as_ref().filter(|_| self.write_copy) else {
            return;
        };
        if key.is_challenge() || copy.read(key).ok().flatten().as_deref() == Some(value) {
            return;
        }
        if let Err(e) = copy.write(&[(key, value)]) {
            tracing::warn!(key = %key, error = %e, "cannot update the local copy of the shared storage");
        }
    }

    /// Follows the change channel for as long as the process runs, reconnecting with backoff.
    /// After every (re)subscription it asks for a full re-read: notifications sent while this
    /// replica was not listening are lost.
    async fn follow(
        client: redis::Client,
        channel: String,
        prefix: String,
        at: String,
        tx: broadcast::Sender<Change>,
    ) {
        let mut wait = Duration::from_millis(200);
        let mut down_since: Option<Instant> = None;
        loop {
            let subscribed = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, RedisError>(ps)
            };
            match tokio::time::timeout(OP_TIMEOUT, subscribed).await {
                Ok(Ok(mut ps)) => {
                    if let Some(since) = down_since.take() {
                        tracing::info!(%at, down_s = since.elapsed().as_secs(), "Redis is reachable again; re-reading the shared storage");
                    }
                    wait = Duration::from_millis(200);
                    let _ = tx.send(Change::Resync);
                    let mut messages = ps.on_message();
                    while let Some(msg) = messages.next().await {
                        let name: String = msg.get_payload().unwrap_or_default();
                        if let Some(key) = name.strip_prefix(&prefix).and_then(Key::parse_announced)
                        {
                            let _ = tx.send(Change::Put(key));
                        }
                    }
                }
                Ok(Err(e)) if down_since.is_none() => {
                    tracing::warn!(%at, error = %e, "cannot follow changes in Redis; certificates renewed by other replicas arrive once it is back");
                }
                Err(_) if down_since.is_none() => {
                    tracing::warn!(%at, "cannot follow changes in Redis (no answer); certificates renewed by other replicas arrive once it is back");
                }
                _ => {}
            }
            down_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RESUBSCRIBE);
        }
    }
}

/// `text` as a SCAN pattern that matches it literally (its glob characters escaped).
fn glob_literal(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// What kind of failure, without the text (which could quote the URL).
fn kind(e: &RedisError) -> String {
    format!("{:?}", e.kind())
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; this never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[async_trait]
impl Backend for Redis {
    fn describe(&self) -> String {
        format!("Redis at {} (prefix {:?})", self.at, self.prefix)
    }

    async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StorageError> {
        let name = self.name(key);
        let read = self
            .run(move |mut c| async move { c.get::<_, Option<Vec<u8>>>(name).await })
            .await;
        match read {
            Ok(Some(v)) => {
                self.refresh_copy(key, &v);
                Ok(Some(v))
            }
            Ok(None) => Ok(None),
            Err(e) if e.is_unavailable() && !key.is_challenge() => {
                match self.copy.as_ref().map(|c| c.read(key)) {
                    Some(Ok(Some(v))) => {
                        tracing::debug!(key = %key, error = %e, "Redis unavailable: read the local copy");
                        Ok(Some(v))
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn put(&self, items: &[(&Key, &[u8])]) -> Result<(), StorageError> {
        let owned: Vec<(String, Vec<u8>, bool, bool)> = items
            .iter()
            .map(|(k, v)| (self.name(k), v.to_vec(), k.is_challenge(), k.is_announced()))
            .collect();
        let channel = self.channel();
        self.run(move |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (name, value, expiring, _) in &owned {
                let set = pipe.cmd("SET").arg(name).arg(value);
                if *expiring {
                    set.arg("PX").arg(CHALLENGE_TTL.as_millis() as u64);
                }
                set.ignore();
            }
            for (name, _, _, announced) in &owned {
                if *announced {
                    pipe.cmd("PUBLISH").arg(&channel).arg(name).ignore();
                }
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await?;
        for (k, v) in items {
            self.refresh_copy(k, v);
        }
        Ok(())
    }

    async fn put_new(&self, key: &Key, value: &[u8]) -> Result<bool, StorageError> {
        let (name, v, channel) = (self.name(key), value.to_vec(), self.channel());
        let written = self
            .run(move |mut c| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(&name)
                    .arg(v)
                    .arg("NX")
                    .query_async(&mut c)
                    .await?;
                if set.is_some() {
                    c.publish::<_, _, ()>(channel, &name).await?;
                }
                Ok(set.is_some())
            })
            .await?;
        if written {
            self.refresh_copy(key, value);
        }
        Ok(written)
    }

    async fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let name = self.name(key);
        self.run(move |mut c| async move { c.del::<_, ()>(name).await })
            .await
    }

    async fn list(&self) -> Result<Vec<Key>, StorageError> {
        let (pattern, prefix) = (
            format!("{}*", glob_literal(&self.prefix)),
            self.prefix.clone(),
        );
        let names: Vec<String> = self
            .run(move |mut c| async move {
                let mut names = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(200)
                        .query_async(&mut c)
                        .await?;
                    names.extend(batch);
                    if next == 0 {
                        return Ok(names);
                    }
                    cursor = next;
                }
            })
            .await?;
        let mut keys: Vec<Key> = names
            .iter()
            .filter_map(|n| n.strip_prefix(&prefix).and_then(Key::parse))
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn try_lock(
        &self,
        name: &str,
        value: &str,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let (name, value) = (self.lock_name(name), value.to_string());
        self.run(move |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(name)
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    async fn renew(&self, name: &str, value: &str, lease: Duration) -> Result<bool, StorageError> {
        let (name, value) = (self.lock_name(name), value.to_string());
        self.run(move |mut c| async move {
            let n: i64 = RENEW
                .key(name)
                .arg(value)
                .arg(lease.as_millis() as u64)
                .invoke_async(&mut c)
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn unlock(&self, name: &str, value: &str) -> Result<(), StorageError> {
        let (name, value) = (self.lock_name(name), value.to_string());
        self.run(move |mut c| async move {
            UNLOCK
                .key(name)
                .arg(value)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    async fn lock_holder(&self, name: &str) -> Result<Option<Holder>, StorageError> {
        let name = self.lock_name(name);
        let (value, ttl) = self
            .run(move |mut c| async move {
                redis::pipe()
                    .get(&name)
                    .cmd("PTTL")
                    .arg(&name)
                    .query_async::<(Option<String>, i64)>(&mut c)
                    .await
            })
            .await?;
        Ok(value.map(|v| Holder::from_value(&v, Duration::from_millis(ttl.max(0) as u64))))
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        let tx = self.changes.get_or_init(|| {
            let (tx, _) = broadcast::channel(256);
            self.handle.spawn(Self::follow(
                self.client.clone(),
                self.channel(),
                self.prefix.clone(),
                self.at.clone(),
                tx.clone(),
            ));
            tx
        });
        Some(tx.subscribe())
    }

    fn watch_health(&self) {
        if self.health.set(()).is_err() {
            return;
        }
        let (conn, at) = (self.conn.clone(), self.at.clone());
        self.handle.spawn(async move {
            let (mut up, mut failed) = (true, 0);
            loop {
                tokio::time::sleep(HEALTH_EVERY).await;
                let mut c = conn.clone();
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut c);
                let answered = matches!(tokio::time::timeout(HEALTH_TIMEOUT, ping).await, Ok(Ok(_)));
                // Two failures in a row: one PING stuck behind a slow command is no outage.
                failed = if answered { 0 } else { failed + 1 };
                let now_up = answered || (up && failed < 2);
                metrics::get().storage_available.set(i64::from(now_up));
                match (up, now_up) {
                    (true, false) => tracing::error!(%at, "shared storage became unreachable: certificates and session keys are served from the local copy; orders wait"),
                    (false, true) => tracing::info!(%at, "shared storage reachable again"),
                    _ => {}
                }
                up = now_up;
            }
        });
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_scanned_literally() {
        assert_eq!(glob_literal("mcp-edge:"), "mcp-edge:");
        assert_eq!(glob_literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}

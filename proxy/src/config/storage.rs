//! `storage:`: a directory path, or `{ dir, redis, prefix, password_env, ca, lock_lease, poll }`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{opt_duration, resolve_path};
use super::{Collector, KeyPath};

/// `storage:` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Where everything is kept; with `redis`, the local copy read while Redis is unreachable.
    pub dir: PathBuf,
    pub redis: Option<RedisConfig>,
    /// How long a replica's per-host ACME lock lasts unless renewed (it is renewed every third
    /// of it while the order runs): how soon another replica takes over from one that died.
    pub lock_lease: Duration,
    /// How often every certificate is re-read from shared storage, in case a change
    /// notification was lost.
    pub poll: Duration,
}

impl StorageConfig {
    pub fn dir(dir: PathBuf) -> Self {
        Self {
            dir,
            redis: None,
            lock_lease: Duration::from_secs(30),
            poll: Duration::from_secs(60),
        }
    }
}

/// `storage.redis` and what goes with it. `Debug` never shows a password.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]` or `rediss://…` (TLS).
    pub url: String,
    /// Prepended to every key, so several installations can share one Redis.
    pub prefix: String,
    /// From the environment variable named by `password_env`.
    pub password: Option<String>,
    /// PEM roots trusted for `rediss://` instead of the system's.
    pub ca: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("prefix", &self.prefix)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

/// The URL with any password replaced, for logs and messages.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("<redacted>"));
            }
            u.to_string()
        }
        Err(_) => "<not a URL>".into(),
    }
}

pub const DEFAULT_PREFIX: &str = "mcp-edge:";

impl RedisConfig {
    /// Checks a URL, a prefix, the password variable and the CA file; errors never quote the URL
    /// (it may hold a password).
    pub fn from_parts(
        url: &str,
        prefix: &str,
        password_env: Option<&str>,
        ca: Option<PathBuf>,
    ) -> Result<Self, String> {
        let u = url::Url::parse(url).map_err(|e| {
            format!("not a URL like redis://HOST:6379/0 or rediss://USER@HOST:6380 ({e})")
        })?;
        if !matches!(u.scheme(), "redis" | "rediss") {
            return Err(format!(
                "the scheme must be redis:// or rediss:// (TLS), not {}://",
                u.scheme()
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err("the URL names no host".into());
        }
        if prefix.is_empty()
            || prefix.len() > 64
            || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err("prefix must be 1 to 64 characters without spaces".into());
        }
        let password = match password_env {
            None => None,
            Some(_) if u.password().is_some() => {
                return Err(
                    "the URL has a password and password_env names another: keep one".into(),
                )
            }
            Some(var) => match std::env::var(var) {
                Ok(p) if !p.is_empty() => Some(p),
                _ => {
                    return Err(format!(
                        "password_env: the environment variable {var} is not set"
                    ))
                }
            },
        };
        let ca = match ca {
            None => None,
            Some(_) if u.scheme() != "rediss" => {
                return Err("ca is for rediss:// (TLS) URLs".into());
            }
            Some(path) => {
                let pem = std::fs::read(&path)
                    .map_err(|e| format!("ca: cannot read {}: {e}", path.display()))?;
                crate::pem::parse_certificates(&pem, &path).map_err(|e| format!("ca: {e}"))?;
                Some(pem)
            }
        };
        Ok(Self {
            url: url.to_string(),
            prefix: prefix.to_string(),
            password,
            ca,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    /// The directory (default `certs` beside the configuration file).
    dir: Option<String>,
    /// A Redis URL: the store shared by replicas.
    redis: Option<String>,
    /// Prefix of every Redis key (`mcp-edge:`).
    prefix: Option<String>,
    /// The environment variable holding the Redis password (instead of the URL).
    password_env: Option<String>,
    /// PEM file of the CA that signed Redis's TLS certificate.
    ca: Option<String>,
    /// Per-host ACME lock lease (30s).
    lock_lease: Option<String>,
    /// Re-read of every certificate from shared storage (60s).
    poll: Option<String>,
}

pub(super) fn build_storage(raw: Option<Value>, base: &Path, c: &mut Collector) -> StorageConfig {
    let p = KeyPath::default().key("storage");
    let default_dir = || resolve_path(base, "certs");
    let raw = match raw {
        None => return StorageConfig::dir(default_dir()),
        Some(Value::String(s)) => return StorageConfig::dir(resolve_path(base, &s)),
        Some(v @ Value::Mapping(_)) => match c.deserialize::<RawStorage>(v, &p) {
            Some(r) => r,
            None => return StorageConfig::dir(default_dir()),
        },
        Some(_) => {
            c.err(
                &p,
                "expected a directory, or { dir: DIR, redis: redis://HOST:6379 }",
            );
            return StorageConfig::dir(default_dir());
        }
    };
    let mut s = StorageConfig::dir(
        raw.dir
            .as_deref()
            .map_or_else(default_dir, |d| resolve_path(base, d)),
    );
    s.lock_lease = opt_duration(
        c,
        &p.key("lock_lease"),
        raw.lock_lease.as_deref(),
        s.lock_lease,
    );
    if s.lock_lease < Duration::from_secs(1) {
        c.err(&p.key("lock_lease"), "must be at least 1s");
    }
    s.poll = opt_duration(c, &p.key("poll"), raw.poll.as_deref(), s.poll);
    if s.poll < Duration::from_secs(1) {
        c.err(&p.key("poll"), "must be at least 1s");
    }
    match raw.redis {
        Some(url) => {
            let prefix = raw.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
            let ca = raw.ca.as_deref().map(|f| resolve_path(base, f));
            match RedisConfig::from_parts(&url, prefix, raw.password_env.as_deref(), ca) {
                Ok(r) => s.redis = Some(r),
                Err(e) => c.err(&p.key("redis"), e),
            }
        }
        None => {
            for (set, key) in [
                (raw.prefix.is_some(), "prefix"),
                (raw.password_env.is_some(), "password_env"),
                (raw.ca.is_some(), "ca"),
            ] {
                if set {
                    c.err(&p.key(key), "only used with storage.redis");
                }
            }
        }
    }
    s
}

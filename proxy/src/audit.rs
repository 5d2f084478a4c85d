//! The audit log: one JSON line per MCP call (who, what, decided how, with what outcome), to
//! stdout, a file rotated by size, or both. Records are queued for one writer thread; when the
//! sink is slower than the calls the queue fills and new records are dropped and counted, so a
//! request never waits for the audit log. Credentials are never part of a record: the caller is
//! named by subject, client and key name; argument values only for the tools the configuration
//! lists, truncated, with secret-shaped values masked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::Identity;
use crate::config::{glob_match, AuditConfig};
use crate::metrics;

/// What is written in place of a masked value.
pub const MASK: &str = "***";

/// Who called, as a record says it (never the credential).
#[derive(Serialize, Default)]
pub struct Caller<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// How the credential was checked (`api_key`, `jwt`, `introspection`); `none`: an open route.
    pub via: &'a str,
    /// The client's address (the real client's behind `trusted_proxies`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl<'a> Caller<'a> {
    pub fn of(id: Option<&'a Identity>, address: Option<String>) -> Self {
        match id {
            None => Self {
                via: "none",
                address,
                ..Self::default()
            },
            Some(id) => Self {
                subject: id.subject.as_deref(),
                client_id: id.client_id.as_deref(),
                key: id.key_name.as_deref(),
                via: if id.via.is_empty() { "none" } else { id.via },
                address,
            },
        }
    }
}

/// One record: one MCP call.
#[derive(Serialize)]
pub struct Record<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub host: &'a str,
    pub route: &'a str,
    pub caller: Caller<'a>,
    pub method: &'a str,
    /// The JSON-RPC id (JSON text); none for a notification.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// The tool or prompt name, or the resource URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// The argument names, sorted.
    pub arguments: Vec<&'a str>,
    /// Argument values, for the tools `audit.values` lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Map<String, Value>>,
    /// A key in the arguments (at any depth) written twice, or in two spellings (`path` and
    /// `PATH`): servers differ in the value they run with (`values` holds the last of a key
    /// written twice).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeated_argument: bool,
    /// `allow` or `deny` by the route's policy; `none`: the route has none.
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// `ok`, `tool_error`, `jsonrpc_error`, `http_error`, `cancelled`, `refused`, or
    /// `accepted` (a legacy call, answered on its session's stream).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    pub status: u16,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<&'a str>,
}

impl Record<'_> {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// Names whose values are secrets whatever they look like.
const SECRET_NAMES: [&str; 14] = [
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "accesskey",
    "access_key",
    "authorization",
    "credential",
    "private_key",
];

/// Whether a string looks like a credential: a JWT, a bearer or basic header value, a PEM
/// block, or a long unbroken run of key-like characters.
pub fn looks_secret(v: &str) -> bool {
    let t = v.trim();
    let lower = t.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("basic ") || t.contains("-----BEGIN") {
        return true;
    }
    // A URL with a password in it (`postgres://user:pw@host`).
    if url::Url::parse(t).is_ok_and(|u| u.password().is_some()) {
        return true;
    }
    let keyish = |c: char| c.is_ascii_alphanumeric() || "-_+/=.".contains(c);
    let jwt = t.split('.').count() == 3
        && t.len() > 40
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    let long_key = t.len() >= 32
        && t.chars().all(keyish)
        && t.chars().any(|c| c.is_ascii_digit())
        && t.chars().any(|c| c.is_ascii_alphabetic());
    jwt || long_key
}

/// The recorded form of an argument value: masked when its name or shape says secret,
/// truncated to `max` characters, nested objects and arrays alike.
pub fn recorded(name: &str, v: &Value, max: usize) -> Value {
    let lname = name.to_ascii_lowercase();
    if SECRET_NAMES.iter().any(|s| lname.contains(s)) {
        return Value::from(MASK);
    }
    match v {
        Value::String(s) if looks_secret(s) => Value::from(MASK),
        Value::String(s) if s.chars().count() > max => {
            let cut: String = s.chars().take(max).collect();
            Value::from(format!("{cut}…"))
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .take(max)
                .map(|i| recorded(name, i, max))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .take(max)
                .map(|(k, v)| (k.clone(), recorded(k, v, max)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The argument values of a call to `tool`, when the configuration records them.
pub fn values_of(
    cfg: &AuditConfig,
    tool: Option<&str>,
    args: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let tool = tool?;
    if !cfg.values.iter().any(|g| glob_match(g, tool)) {
        return None;
    }
    Some(
        args.iter()
            .map(|(k, v)| (k.clone(), recorded(k, v, cfg.max_value)))
            .collect(),
    )
}

/// The most bytes of records waiting for the writer; past it, records are dropped like past
/// `audit.buffer` records.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The audit log's writer, shared by every request.
#[derive(Default)]
pub struct Audit {
    tx: OnceLock<SyncSender<String>>,
    queued_bytes: AtomicUsize,
    enabled: AtomicBool,
    /// Settings the writer takes up at its next record (or within a second).
    pending: Mutex<Option<AuditConfig>>,
    /// The settings the writer runs with.
    current: Mutex<Option<AuditConfig>>,
}

impl Audit {
    /// Applies `cfg` (at start and on every reload): the writer (re)opens its file. The queue's
    /// size is fixed by the first configuration that enables the log.
    pub fn configure(self: &Arc<Self>, cfg: &AuditConfig) {
        self.enabled.store(cfg.enabled(), Ordering::Release);
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg.clone());
        if cfg.enabled() && self.tx.get().is_none() {
            let (tx, rx) = sync_channel(cfg.buffer);
            if self.tx.set(tx).is_ok() {
                let this = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("mcp-edge-audit".into())
                    .spawn(move || this.run(rx));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the audit writer");
                }
            }
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Waits (at most `limit`) until every queued record is written: before the process exits.
    pub fn flush(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.queued_bytes.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Queues one record; never waits.
    pub fn send(&self, line: String) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        let len = line.len();
        if self.queued_bytes.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            metrics::get()
                .audit_dropped
                .with_label_values(&["queue_full"])
                .inc();
            return;
        }
        let sent = tx.try_send(line);
        if sent.is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        }
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics::get()
                .audit_dropped
                .with_label_values(&["queue_full"])
                .inc(),
            Err(TrySendError::Disconnected(_)) => metrics::get()
                .audit_dropped
                .with_label_values(&["write_error"])
                .inc(),
        }
    }

    fn run(&self, rx: Receiver<String>) {
        let mut w = Writer::default();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let next = rx.recv_timeout(Duration::from_secs(1));
            if let Some(cfg) = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg.clone());
                w.configure(cfg);
            }
            match next {
                Ok(line) => batch.push(line),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Records arriving meanwhile are queued without waking this thread, and go out in
            // the same write: under load, one wake-up and one system call for many records
            // instead of one each (which cost a third of the requests/s on a busy core).
            std::thread::sleep(GATHER);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            let bytes: usize = batch.iter().map(String::len).sum();
            w.write(&batch);
            // Counted until written, so `flush` knows when every record is out.
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            batch.clear();
        }
    }
}

/// The most records written in one go.
const BATCH: usize = 4096;

/// How long the writer lets records gather after the first one: how late a record may reach
/// its sink.
const GATHER: Duration = Duration::from_millis(20);

/// The writer thread's state: the sinks and the open file.
#[derive(Default)]
struct Writer {
    cfg: AuditConfig,
    file: Option<File>,
    size: u64,
}

impl Writer {
    fn configure(&mut self, cfg: AuditConfig) {
        self.cfg = cfg;
        self.file = None;
        self.open();
    }

    fn open(&mut self) {
        let Some(path) = self.cfg.file.clone() else {
            return;
        };
        match open_private(&path) {
            Ok(f) => {
                self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot open the audit file");
            }
        }
    }

    /// Writes `lines` to each sink, each in as few writes as rotation allows.
    fn write(&mut self, lines: &[String]) {
        let m = metrics::get();
        let n = lines.len() as u64;
        if self.cfg.stdout {
            let mut out = std::io::stdout().lock();
            let written = lines
                .iter()
                .try_for_each(|l| out.write_all(l.as_bytes()))
                .and_then(|()| out.flush());
            match written {
                Ok(()) => m.audit_records.with_label_values(&["stdout"]).inc_by(n),
                Err(_) => m
                    .audit_dropped
                    .with_label_values(&["write_error"])
                    .inc_by(n),
            }
        }
        let Some(path) = self.cfg.file.clone() else {
            return;
        };
        let mut chunk = Vec::with_capacity(lines.iter().map(String::len).sum());
        let mut count = 0;
        for line in lines {
            let pending = self.size + (chunk.len() + line.len()) as u64;
            if self.size + chunk.len() as u64 > 0 && pending > self.cfg.max_size {
                self.append(&mut chunk, &mut count);
                self.rotate(&path);
            }
            chunk.extend_from_slice(line.as_bytes());
            count += 1;
        }
        self.append(&mut chunk, &mut count);
    }

    /// Appends `chunk` (`count` records) to the file, reopening it if needed.
    fn append(&mut self, chunk: &mut Vec<u8>, count: &mut u64) {
        if chunk.is_empty() {
            return;
        }
        let m = metrics::get();
        if self.file.is_none() {
            self.open();
        }
        match self.file.as_mut().map(|f| f.write_all(chunk)) {
            Some(Ok(())) => {
                self.size += chunk.len() as u64;
                m.audit_records.with_label_values(&["file"]).inc_by(*count);
            }
            _ => {
                m.audit_dropped
                    .with_label_values(&["write_error"])
                    .inc_by(*count);
                // Tried again with a fresh handle next time.
                self.file = None;
            }
        }
        chunk.clear();
        *count = 0;
    }

    /// `FILE` → `FILE.1` → … → `FILE.keep` (the oldest removed), then a new `FILE`.
    fn rotate(&mut self, path: &Path) {
        self.file = None;
        let numbered = |i: usize| -> PathBuf {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.cfg.keep == 0 {
            let _ = std::fs::remove_file(path);
        } else {
            let _ = std::fs::remove_file(numbered(self.cfg.keep));
            for i in (1..self.cfg.keep).rev() {
                let _ = std::fs::rename(numbered(i), numbered(i + 1));
            }
            let _ = std::fs::rename(path, numbered(1));
        }
        self.size = 0;
        self.open();
    }
}

/// Opens `path` for appending, 0600 (records may hold argument values), never through a
/// symbolic link.
fn open_private(path: &Path) -> std::io::Result<File> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other("is a symbolic link"));
    }
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(0o600);
        let f = o.open(path)?;
        // A file that was there before keeps no wider mode.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    o.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_masked_by_name_and_by_shape() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyIiwiZXhwIjo5OTk5fQ.c2lnbmF0dXJlLWJ5dGVz";
        for secret in [
            jwt,
            "Bearer abc",
            "sk-live-0123456789abcdefghijklmnopqrstuv",
            "-----BEGIN PRIVATE KEY-----\nMII",
        ] {
            assert_eq!(recorded("q", &json!(secret), 128), json!(MASK), "{secret}");
        }
        assert_eq!(recorded("db_password", &json!("hunter2"), 128), json!(MASK));
        assert_eq!(
            recorded("dsn", &json!("postgres://u:pw@db/x"), 128),
            json!(MASK)
        );
        assert_eq!(recorded("accessKey", &json!("x"), 128), json!(MASK));
        assert_eq!(recorded("sql", &json!("select 1"), 128), json!("select 1"));
        assert_eq!(recorded("sql", &json!("abcdef"), 3), json!("abc…"));
        assert_eq!(
            recorded("opts", &json!({"token": "x", "n": 3}), 128),
            json!({"token": MASK, "n": 3})
        );
        // An ordinary long sentence is not a key.
        assert!(!looks_secret(
            "the quick brown fox jumps over the lazy dog 42 times"
        ));
    }
}

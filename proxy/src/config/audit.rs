//! `audit:`: one JSON line per MCP call, to stdout, a file, or both. Data only: the writer is
//! `audit`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::resolve_path;
use super::upstream::parse_size;
use super::{Collector, KeyPath};

/// Where audit records go and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub stdout: bool,
    /// Appended to; rotated past `max_size` into `FILE.1` … `FILE.keep`.
    pub file: Option<PathBuf>,
    pub max_size: u64,
    pub keep: usize,
    /// Records queued for the writer; past it they are dropped (counted), never waited for.
    pub buffer: usize,
    /// Tools (globs) whose argument values are recorded (truncated, secrets masked); for the
    /// others only the argument names.
    pub values: Vec<String>,
    /// The longest value recorded, in characters.
    pub max_value: usize,
}

impl AuditConfig {
    pub fn enabled(&self) -> bool {
        self.stdout || self.file.is_some()
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            stdout: false,
            file: None,
            max_size: 100 * 1024 * 1024,
            keep: 5,
            buffer: 10_000,
            values: Vec::new(),
            max_value: 128,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// Write records to standard output (logs go to standard error).
    stdout: Option<bool>,
    /// Append records to this file (relative to the config file), created 0600.
    file: Option<String>,
    /// Rotate the file past this size (default 100MiB).
    max_size: Option<Value>,
    /// Rotated files kept (default 5).
    keep: Option<usize>,
    /// Records queued for a slow sink before new ones are dropped (default 10000).
    buffer: Option<usize>,
    /// Tools (globs) whose argument values are recorded, truncated and with secrets masked.
    #[serde(default)]
    values: Vec<String>,
    /// The longest value recorded, in characters (default 128).
    max_value: Option<usize>,
}

pub(super) fn build_audit(
    raw: Option<RawAudit>,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> AuditConfig {
    let d = AuditConfig::default();
    let Some(raw) = raw else {
        return d;
    };
    let max_size = match raw.max_size.as_ref().map(parse_size) {
        None => d.max_size,
        Some(Ok(n)) if n >= 4096 => n,
        Some(Ok(_)) => {
            c.err(&p.key("max_size"), "must be at least 4KiB");
            d.max_size
        }
        Some(Err(e)) => {
            c.err(&p.key("max_size"), e);
            d.max_size
        }
    };
    let buffer = raw.buffer.unwrap_or(d.buffer);
    if !(1..=1_000_000).contains(&buffer) {
        c.err(&p.key("buffer"), "must be between 1 and 1000000");
    }
    let keep = raw.keep.unwrap_or(d.keep);
    if keep > 1000 {
        c.err(&p.key("keep"), "must be at most 1000");
    }
    let max_value = raw.max_value.unwrap_or(d.max_value);
    if !(1..=65536).contains(&max_value) {
        c.err(&p.key("max_value"), "must be between 1 and 65536");
    }
    let file = raw.file.map(|f| resolve_path(base, &f));
    if let Some(dir) = file.as_ref().and_then(|f| f.parent()) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            c.err(
                &p.key("file"),
                format!("{} is not a directory", dir.display()),
            );
        }
    }
    AuditConfig {
        stdout: raw.stdout.unwrap_or(false),
        file,
        max_size,
        keep,
        buffer: buffer.clamp(1, 1_000_000),
        values: raw.values,
        max_value: max_value.clamp(1, 65536),
    }
}

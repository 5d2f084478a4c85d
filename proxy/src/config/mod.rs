//! Configuration: YAML file → raw serde layer → validated model.
//!
//! Every problem is reported with its key path and, where the YAML parser knows it, its line;
//! all problems of a file are reported in one run, not just the first.

mod acme;
mod admin;
mod audit;
mod auth;
mod dns;
mod host;
mod lines;
mod listen;
mod model;
mod policy;
mod policy_yaml;
mod rate;
mod raw;
mod storage;
mod upstream;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

pub use acme::*;
pub use admin::{client_roots, AdminConfig, AdminTls};
pub use audit::AuditConfig;
pub use auth::*;
pub use dns::*;
pub use host::normalize_origin;
pub use listen::*;
pub use model::*;
pub use policy::*;
pub use rate::{Rate, RateLimit};
pub use storage::*;
pub use upstream::*;

/// One segment of a key path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value sits in the YAML document, e.g. `hosts."docs.example.com".routes[0].path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        Self(v)
    }
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }
    fn starts_with(&self, other: &Self) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Index(n) => write!(f, "[{n}]")?,
                Seg::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One problem in a configuration file.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub path: KeyPath,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Collects problems while a file is converted, and suppresses follow-up problems under a key
/// that was already reported as malformed.
pub(crate) struct Collector {
    errors: Vec<ConfigError>,
    removed: Vec<KeyPath>,
    lines: lines::LineIndex,
}

impl Collector {
    pub(crate) fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        if self.removed.iter().any(|r| path.starts_with(r)) {
            return;
        }
        self.push(path.clone(), message.into());
    }

    /// Problems reported so far.
    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    fn push(&mut self, path: KeyPath, message: String) {
        let line = self.lines.line_of(&path);
        self.errors.push(ConfigError {
            path,
            line,
            message,
        });
    }

    /// Deserializes `value` into `T`, recording every serde error (unknown keys, wrong types)
    /// rather than only the first: each bad key is reported, removed, and the rest retried.
    pub(crate) fn deserialize<T: DeserializeOwned>(
        &mut self,
        mut value: Value,
        at: &KeyPath,
    ) -> Option<T> {
        for _ in 0..64 {
            match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(v) => return Some(v),
                Err(e) => {
                    let mut rel: Vec<Seg> = e
                        .path()
                        .iter()
                        .filter_map(|s| match s {
                            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                            serde_path_to_error::Segment::Map { key } => {
                                Some(Seg::Key(key.clone()))
                            }
                            _ => None,
                        })
                        .collect();
                    let full_rel =
                        KeyPath(at.0.iter().cloned().chain(rel.iter().cloned()).collect());
                    let msg = e.into_inner().to_string();
                    let names_a_key =
                        msg.starts_with("unknown field `") || msg.starts_with("missing field `");
                    let msg = if is_secret(&full_rel) && !names_a_key {
                        // serde quotes the offending value ("invalid type: integer `1234`"):
                        // never for a secret, whatever its type.
                        "wrong type (the value is a secret and is not shown)".to_string()
                    } else {
                        msg
                    };
                    if let Some(field) = backticked(&msg, "unknown field `") {
                        if rel.last() != Some(&Seg::Key(field.clone())) {
                            rel.push(Seg::Key(field));
                        }
                    } else if let Some(field) = backticked(&msg, "missing field `") {
                        let mut full = rel.clone();
                        full.push(Seg::Key(field));
                        let full = KeyPath(at.0.iter().cloned().chain(full).collect());
                        // A required key reported missing because we removed it ourselves.
                        if !self.removed.iter().any(|r| full.starts_with(r)) {
                            let parent = KeyPath(at.0.iter().cloned().chain(rel).collect());
                            self.err(&parent, msg);
                        }
                        return None;
                    }
                    let full = KeyPath(at.0.iter().cloned().chain(rel.iter().cloned()).collect());
                    self.err(&full, msg);
                    if rel.is_empty() || !remove_at(&mut value, &rel) {
                        return None;
                    }
                    self.removed.push(full);
                }
            }
        }
        None
    }
}

/// Keys whose values are secrets: a message about them never quotes the value.
const SECRET_KEYS: &[&str] = &["eab", "hmac_key", "client_secret"];

fn is_secret(path: &KeyPath) -> bool {
    path.0
        .iter()
        .any(|s| matches!(s, Seg::Key(k) if SECRET_KEYS.contains(&k.as_str())))
}

fn backticked(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

fn remove_at(value: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Sequence(s)) => match s.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        // Removing a sequence element would shift the indexes of later errors: stop instead.
        _ => false,
    }
}

/// A custom YAML tag (`threads: !Foo 2`) means nothing here; serde would quietly read past it.
fn report_tags(v: &Value, path: &KeyPath, c: &mut Collector) {
    match v {
        Value::Tagged(t) => c.err(
            path,
            format!(
                "the YAML tag {} is not supported; write the plain value",
                t.tag
            ),
        ),
        Value::Mapping(m) => {
            for (k, v) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => format!("{other:?}"),
                };
                report_tags(v, &path.key(&key), c);
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                report_tags(v, &path.index(i), c);
            }
        }
        _ => {}
    }
}

/// Reads, parses and validates a configuration file. Reads referenced key material too (to
/// validate it) but binds nothing and writes nothing.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError {
            path: KeyPath::default(),
            line: None,
            message,
        }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    parse(&text, &base_dir(path), path).map_err(|errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    })
}

/// The folder relative paths of the configuration file `path` start from: its own.
pub fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parses configuration text; relative paths are resolved against `base`.
pub fn parse(text: &str, base: &Path, file: &Path) -> Result<Config, Vec<ConfigError>> {
    // A byte-order mark (editors on Windows write one) is allowed at the start of a YAML stream.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = match serde_yaml_ng::from_str(text) {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            return Err(vec![ConfigError {
                path: KeyPath::default(),
                line: e.location().map(|l| l.line()),
                message: format!("not valid YAML: {e}"),
            }])
        }
    };
    let mut c = Collector {
        errors: Vec::new(),
        removed: Vec::new(),
        lines: lines::LineIndex::build(text),
    };
    let root = KeyPath::default();
    if !matches!(value, Value::Mapping(_)) {
        c.err(&root, "expected a mapping of settings at the top level");
        return Err(c.errors);
    }
    report_tags(&value, &root, &mut c);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    let raw: Option<raw::RawConfig> = c.deserialize(value, &root);
    let config = raw.and_then(|raw| build(raw, base, file, &mut c));
    c.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    if c.errors.is_empty() {
        config.ok_or_else(|| {
            vec![ConfigError {
                path: root,
                line: None,
                message: "invalid configuration".into(),
            }]
        })
    } else {
        Err(c.errors)
    }
}

#[cfg(test)]
mod tests;

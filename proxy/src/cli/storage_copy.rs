//! `mcp-edge storage-copy FROM TO`: copies everything persisted (certificates and keys, ACME
//! accounts and status, the session-seal key) from one store to another, a directory or Redis
//! either way, so that a single-node install becomes a cluster without new orders (and back).

use std::fmt::Write;
use std::path::PathBuf;

use crate::storage::Storage;

/// Options of the Redis side(s).
pub struct CopyOptions {
    pub prefix: String,
    pub password_env: Option<String>,
    pub ca: Option<PathBuf>,
    /// Replace items the destination holds with other content (by default they are kept).
    pub overwrite: bool,
}

/// Copies and returns what it did, one line per item; an error when a store cannot be used or
/// an item was kept because it differs (nothing is lost either way).
pub fn copy(from: &str, to: &str, o: &CopyOptions) -> Result<String, String> {
    let open = |loc: &str| {
        Storage::open_location(loc, &o.prefix, o.password_env.as_deref(), o.ca.clone())
            .map_err(|e| e.to_string())
    };
    let (src, dst) = (open(from)?, open(to)?);
    Storage::block_on(async {
        for s in [&src, &dst] {
            s.ping().await.map_err(|e| e.to_string())?;
        }
        let keys = src.list().await.map_err(|e| e.to_string())?;
        let mut out = String::new();
        let mut kept = Vec::new();
        for key in &keys {
            let err = |e: crate::storage::StorageError| format!("{key}: {e}");
            let Some(value) = src.get(key).await.map_err(err)? else {
                continue; // deleted meanwhile
            };
            let verb = match dst.get(key).await.map_err(err)? {
                Some(v) if v == value => "unchanged",
                Some(_) if !o.overwrite => {
                    kept.push(key.to_string());
                    "kept (the destination's differs)"
                }
                Some(_) => "replaced",
                None => "copied",
            };
            if verb == "copied" || verb == "replaced" {
                dst.put(&[(key, &value)]).await.map_err(err)?;
            }
            let _ = writeln!(out, "{verb:>9}  {key}");
        }
        let _ = writeln!(
            out,
            "{} items from {} to {}",
            keys.len(),
            src.describe(),
            dst.describe()
        );
        if kept.is_empty() {
            Ok(out)
        } else {
            Err(format!(
                "{out}{} items differ in the destination and were kept: {} (--overwrite replaces them)",
                kept.len(),
                kept.join(", ")
            ))
        }
    })
}

//! Every path the proxy writes in its storage directory, in one place.

use std::path::{Path, PathBuf};

use crate::names::HostName;

/// The storage directory and the name of each file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

/// A certificate chain and its key, side by side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An ACME host's chain and key: `HOST.cert.pem`, `HOST.key.pem`.
    pub fn acme_cert(&self, host: &HostName) -> PairPaths {
        PairPaths {
            cert: self.dir.join(format!("{host}.cert.pem")),
            key: self.dir.join(format!("{host}.key.pem")),
        }
    }

    /// A generated self-signed certificate and key: `HOST.self-signed.{cert,key}.pem`.
    pub fn self_signed(&self, host: &HostName) -> PairPaths {
        PairPaths {
            cert: self.dir.join(format!("{host}.self-signed.cert.pem")),
            key: self.dir.join(format!("{host}.self-signed.key.pem")),
        }
    }

    /// The ACME account credentials for one directory URL: `acme-account-SLUG.json`.
    pub fn acme_account(&self, directory: &str) -> PathBuf {
        let slug: String = directory
            .trim_start_matches("https://")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        self.dir
            .join(format!("acme-account-{}.json", slug.trim_matches('-')))
    }

    /// What the running proxy records of each ACME host, for `mcp-edge certs`.
    pub fn acme_status(&self) -> PathBuf {
        self.dir.join("acme-status.json")
    }

    /// The key that seals session ids.
    pub fn seal_key(&self) -> PathBuf {
        self.dir.join("session-seal.key")
    }
}

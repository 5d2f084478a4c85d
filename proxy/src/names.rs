//! Host names as the configuration, the certificate store and the route table key them, and
//! whether a CA could issue for one.

use std::fmt;
use std::net::IpAddr;

/// Why a string is not a [`HostName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a host name")]
    Empty(String),
    #[error("{0:?} is not a host name (letters, digits, '-' and '.' only; no wildcards)")]
    BadLabel(String),
}

/// A DNS name or IP literal, lower case, without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.parse::<IpAddr>().is_ok() {
            return Ok(Self(lower));
        }
        if lower.is_empty() || lower.len() > 253 {
            return Err(NameError::Empty(s.to_string()));
        }
        for label in lower.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(NameError::BadLabel(s.to_string()));
            }
        }
        Ok(Self(lower))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_ip(&self) -> bool {
        self.0.parse::<IpAddr>().is_ok()
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a CA can issue for `name`: a DNS name under a public suffix, not `localhost`, an IP,
/// a single label, or a name reserved for local use (`.local`, `.test`, `.internal`, ...).
pub fn is_public_name(name: &str) -> bool {
    const LOCAL: &[&str] = &[
        "localhost",
        "local",
        "test",
        "example",
        "invalid",
        "internal",
        "lan",
        "home.arpa",
    ];
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    n.contains('.')
        && n.parse::<IpAddr>().is_err()
        && !LOCAL
            .iter()
            .any(|l| n == *l || n.ends_with(&format!(".{l}")))
}

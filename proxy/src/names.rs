//! Host names as the configuration, the certificate store and the route table key them, and
//! whether a CA could issue for one.

use std::fmt;
use std::net::IpAddr;

/// Why a string is not a [`HostName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a host name")]
    Empty(String),
    #[error("{0:?} is not a host name (letters, digits, '-' and '.' only; a wildcard is `*.` before at least two labels)")]
    BadLabel(String),
}

/// A DNS name or IP literal, lower case, without trailing dot. A wildcard (`*.example.com`)
/// stands for exactly one more label (`a.example.com`, not `example.com` or `a.b.example.com`,
/// as certificates match, RFC 6125 §6.4.3).
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
        let rest = lower.strip_prefix("*.").unwrap_or(&lower);
        if rest.contains('*') || (rest.len() != lower.len() && !rest.contains('.')) {
            return Err(NameError::BadLabel(s.to_string()));
        }
        for label in rest.split('.') {
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

    /// `*.example.com`.
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }
}

/// The wildcard that would cover `name` (`a.example.com` → `*.example.com`), if any: names of
/// at least three labels, not IP addresses, not wildcards themselves.
pub fn wildcard_of(name: &str) -> Option<String> {
    if name.parse::<IpAddr>().is_ok() {
        return None;
    }
    let (first, parent) = name.split_once('.')?;
    // The label a wildcard stands for is a DNS label: a Host of `.example.com` or
    // `x!.example.com` is no name under it.
    let label = !first.is_empty()
        && first.len() <= 63
        && !first.starts_with('-')
        && !first.ends_with('-')
        && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    (label && parent.contains('.')).then(|| format!("*.{parent}"))
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a public CA can issue for `name`: a DNS name under a suffix the Public Suffix List
/// knows (ICANN or private, like `github.io`), not itself a public suffix, and not a name reserved
/// for local use (`localhost`, `.local`, `.test`, `.internal`, `home.arpa`...). `nas.home` or
/// `x.corp` end in no public suffix: a CA would refuse them.
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
    if n.parse::<IpAddr>().is_ok()
        || LOCAL
            .iter()
            .any(|l| n == *l || n.ends_with(&format!(".{l}")))
    {
        return false;
    }
    psl::domain(n.as_bytes()).is_some_and(|d| d.suffix().is_known())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_one_leftmost_label_over_at_least_two() {
        let w = HostName::parse("*.Example.com.").unwrap();
        assert_eq!(w.as_str(), "*.example.com");
        assert!(w.is_wildcard() && !HostName::parse("a.example.com").unwrap().is_wildcard());
        for bad in [
            "*.com",
            "a.*.example.com",
            "*a.example.com",
            "**.example.com",
            "*",
            "*.*.example.com",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            wildcard_of("a.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(wildcard_of("example.com"), None);
        assert_eq!(wildcard_of("*.example.com"), None);
        assert_eq!(wildcard_of("10.0.0.1"), None);
        for bad in [
            ".example.com",
            "x!.example.com",
            "-a.example.com",
            "a/b.example.com",
        ] {
            assert_eq!(wildcard_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn public_names_by_the_public_suffix_list() {
        for n in [
            "mcp.example.com",
            "docs.example.co.uk",
            "me.github.io",
            "a.b.example.dev",
            "Example.COM.",
        ] {
            assert!(is_public_name(n), "{n}");
        }
        for n in [
            "localhost",
            "nas.home",
            "x.corp",
            "printer.lan",
            "svc.internal",
            "a.test",
            "box.local",
            "router.home.arpa",
            "co.uk",
            "com",
            "192.168.1.2",
            "::1",
        ] {
            assert!(!is_public_name(n), "{n}");
        }
    }
}

//! The name of everything the proxy persists, in one place. A key is also a file name in the
//! storage directory and, after the prefix, a Redis key; the directory's files are unchanged
//! from the releases that knew only a directory.

use crate::names::HostName;

/// A stored item's name: `[A-Za-z0-9._-]`, not starting with a dot; challenge responses live
/// under `acme-challenge/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

const CERT_SUFFIX: &str = ".cert.pem";
const SELF_SIGNED_SUFFIX: &str = ".self-signed.cert.pem";
const CHALLENGE_DIR: &str = "acme-challenge/";
const ALPN_PREFIX: &str = "alpn.";
/// Longest HTTP-01 token looked up (RFC 8555 tokens are 43 characters).
const MAX_TOKEN: usize = 128;

/// A host name as it appears in a key: a wildcard's `*.` as `wildcard_.` (certmagic's file
/// name for it), an IPv6 address with `_` for each `:` (no key has `*` or `:`; no host name
/// has an underscore).
fn file_part(host: &HostName) -> String {
    match host.as_str().strip_prefix("*.") {
        Some(rest) => format!("{WILDCARD}{rest}"),
        None => host.as_str().replace(':', "_"),
    }
}

/// The host name a key's `file_part` stands for.
fn host_part(part: &str) -> String {
    match part.strip_prefix(WILDCARD) {
        Some(rest) => format!("*.{rest}"),
        None => part.replace('_', ":"),
    }
}

const WILDCARD: &str = "wildcard_.";

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

impl Key {
    /// An ACME host's chain: `HOST.cert.pem`.
    pub fn acme_cert(host: &HostName) -> Self {
        Self(format!("{}{CERT_SUFFIX}", file_part(host)))
    }

    /// An ACME host's private key: `HOST.key.pem` (private).
    pub fn acme_key(host: &HostName) -> Self {
        Self(format!("{}.key.pem", file_part(host)))
    }

    /// A generated self-signed certificate: `HOST.self-signed.cert.pem`.
    pub fn self_signed_cert(host: &HostName) -> Self {
        Self(format!("{}{SELF_SIGNED_SUFFIX}", file_part(host)))
    }

    /// Its key: `HOST.self-signed.key.pem` (private).
    pub fn self_signed_key(host: &HostName) -> Self {
        Self(format!("{}.self-signed.key.pem", file_part(host)))
    }

    /// The ACME account credentials for one directory URL: `acme-account-SLUG.json` (private).
    pub fn acme_account(directory: &str) -> Self {
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
        Self(format!("acme-account-{}.json", slug.trim_matches('-')))
    }

    /// When a host's recent ACME orders were placed (the runaway guard): `HOST.orders.json`.
    pub fn acme_orders(host: &HostName) -> Self {
        Self(format!("{}.orders.json", file_part(host)))
    }

    /// What the running proxies record of each ACME host, for `mcp-edge certs`.
    pub fn acme_status() -> Self {
        Self("acme-status.json".into())
    }

    /// The key that seals session ids (private).
    pub fn seal_key() -> Self {
        Self("session-seal.key".into())
    }

    /// The response to the HTTP-01 challenge `token`, if `token` could be one.
    pub fn challenge(token: &str) -> Option<Self> {
        let ok = !token.is_empty()
            && token.len() <= MAX_TOKEN
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        ok.then(|| Self(format!("{CHALLENGE_DIR}{token}")))
    }

    /// The key authorization of a pending TLS-ALPN-01 challenge for `identifier` (a DNS name or
    /// an IP address): `acme-challenge/alpn.NAME`, which no HTTP-01 token can be (tokens have no
    /// dot). Expiring like a challenge response, and announced to other replicas.
    pub fn alpn_challenge(identifier: &str) -> Option<Self> {
        let id: String = identifier
            .trim_matches(['[', ']'])
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c == ':' { '_' } else { c })
            .collect();
        let ok = !id.is_empty() && id.len() <= 253 && id.chars().all(name_char);
        ok.then(|| Self(format!("{CHALLENGE_DIR}{ALPN_PREFIX}{id}")))
    }

    /// The identifier of a TLS-ALPN-01 challenge key (an IPv6 address is kept with `_` for
    /// `:`, which no host name has).
    pub fn alpn_identifier(&self) -> Option<String> {
        let id = self
            .0
            .strip_prefix(CHALLENGE_DIR)?
            .strip_prefix(ALPN_PREFIX)?;
        Some(id.replace('_', ":"))
    }

    /// A key found by listing a store (a file name, a Redis key after the prefix), if it is one
    /// of the persisted kinds: challenge responses, locks and temp files are not.
    pub fn parse(name: &str) -> Option<Self> {
        let ok = !name.is_empty() && !name.starts_with('.') && name.chars().all(name_char);
        ok.then(|| Self(name.to_string()))
    }

    /// A key named in a change notification: a persisted kind, or a TLS-ALPN-01 challenge.
    pub fn parse_announced(name: &str) -> Option<Self> {
        Self::parse(name).or_else(|| {
            let id = name
                .strip_prefix(CHALLENGE_DIR)?
                .strip_prefix(ALPN_PREFIX)?;
            let ok = !id.is_empty() && id.len() <= 253 && id.chars().all(name_char);
            ok.then(|| Self(name.to_string()))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether only the proxy may read it (mode 0600 on disk).
    pub fn is_private(&self) -> bool {
        self.0.ends_with(".key.pem")
            || self.0 == "session-seal.key"
            || (self.0.starts_with("acme-account-") && self.0.ends_with(".json"))
    }

    /// A challenge response: short-lived, never copied or cached.
    pub fn is_challenge(&self) -> bool {
        self.0.starts_with(CHALLENGE_DIR)
    }

    /// Whether other replicas are told when it is written: everything persisted, and the
    /// TLS-ALPN-01 challenges (a handshake cannot wait for a storage look-up).
    pub fn is_announced(&self) -> bool {
        !self.is_challenge() || self.alpn_identifier().is_some()
    }

    /// The host whose ACME chain this is.
    pub fn acme_cert_host(&self) -> Option<String> {
        let host = self.0.strip_suffix(CERT_SUFFIX)?;
        (!host.ends_with(".self-signed")).then(|| host_part(host))
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_directory_layout() {
        let h = HostName::parse("a.example").unwrap();
        assert_eq!(Key::acme_cert(&h).as_str(), "a.example.cert.pem");
        assert_eq!(Key::acme_key(&h).as_str(), "a.example.key.pem");
        assert_eq!(
            Key::self_signed_key(&h).as_str(),
            "a.example.self-signed.key.pem"
        );
        assert_eq!(
            Key::acme_account("https://127.0.0.1:14000/dir").as_str(),
            "acme-account-127.0.0.1-14000-dir.json"
        );
        assert_eq!(
            Key::acme_cert(&h).acme_cert_host().as_deref(),
            Some("a.example")
        );
        // An IPv6 host: a key like any other, listed and announced, and back to its name.
        let v6 = HostName::parse("2001:db8::1").unwrap();
        for k in [
            Key::acme_cert(&v6),
            Key::acme_key(&v6),
            Key::acme_orders(&v6),
        ] {
            assert_eq!(Key::parse(k.as_str()), Some(k.clone()), "{k}");
        }
        assert_eq!(
            Key::acme_cert(&v6).acme_cert_host().as_deref(),
            Some("2001:db8::1")
        );
        let w = HostName::parse("*.w.example").unwrap();
        assert_eq!(Key::acme_cert(&w).as_str(), "wildcard_.w.example.cert.pem");
        assert!(Key::parse(Key::acme_key(&w).as_str()).is_some());
        assert_eq!(
            Key::acme_cert(&w).acme_cert_host().as_deref(),
            Some("*.w.example")
        );
        assert_eq!(Key::self_signed_cert(&h).acme_cert_host(), None);
        assert!(Key::acme_key(&h).is_private() && Key::seal_key().is_private());
        assert!(Key::acme_account("https://x/d").is_private());
        assert!(!Key::acme_cert(&h).is_private() && !Key::acme_status().is_private());
    }

    #[test]
    fn only_plain_names_and_tokens_are_keys() {
        assert!(Key::challenge("abc_DEF-123").is_some_and(|k| k.is_challenge()));
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(129)] {
            assert_eq!(Key::challenge(bad), None, "{bad}");
        }
        assert!(Key::parse("a.test.cert.pem").is_some());
        for bad in [
            "",
            ".a.test.key.pem.tmp-1",
            "locks/x",
            "acme-challenge/t",
            "a b",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn tls_alpn_challenges_are_announced_challenge_keys_of_their_own() {
        for id in ["a.example", "127.0.0.1", "2001:db8::1", "dead-beef.example"] {
            let k = Key::alpn_challenge(id).unwrap();
            assert!(k.is_challenge() && k.is_announced(), "{k}");
            assert_eq!(k.alpn_identifier().as_deref(), Some(id));
            assert_eq!(Key::parse_announced(k.as_str()), Some(k.clone()));
            // No HTTP-01 token is one (tokens have no dot).
            assert_ne!(
                Key::challenge(k.as_str().trim_start_matches("acme-challenge/")),
                Some(k)
            );
        }
        assert_eq!(
            Key::alpn_challenge("[::1]")
                .unwrap()
                .alpn_identifier()
                .as_deref(),
            Some("::1")
        );
        assert!(!Key::challenge("tok").unwrap().is_announced());
        assert!(Key::acme_cert(&HostName::parse("a.example").unwrap()).is_announced());
        for bad in ["", "a/b", "a b", "../x"] {
            assert_eq!(Key::alpn_challenge(bad), None, "{bad}");
        }
        assert_eq!(Key::parse_announced("acme-challenge/tok"), None);
    }
}

//! `acme.dns:`: how DNS-01 puts its TXT records in place. An RFC 2136 dynamic update signed with
//! TSIG (BIND, Knot, PowerDNS and most self-hosted servers take it), or a command of the
//! operator's (`exec`, called like lego's: `COMMAND present|cleanup FQDN VALUE`) for any other
//! DNS service. The TSIG secret comes from a file or the environment and is never printed.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::model::{opt_duration, resolve_path};
use super::{Collector, KeyPath};

/// `acme.dns:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    /// `rfc2136` or `exec`.
    pub provider: String,
    /// rfc2136: the primary server taking updates, `HOST[:PORT]`.
    pub server: Option<String>,
    /// rfc2136: the zone the records go into (`example.com`).
    pub zone: Option<String>,
    /// rfc2136: the TSIG key's name.
    pub key_name: Option<String>,
    /// rfc2136: a file holding the TSIG secret (base64).
    pub key_file: Option<String>,
    /// rfc2136: an environment variable holding the TSIG secret (base64).
    pub key_env: Option<String>,
    /// rfc2136: `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: Option<String>,
    /// exec: the command and its first arguments.
    pub command: Option<Vec<String>>,
    /// Where the record is looked up before the CA is told (`HOST[:PORT]`; default: the
    /// rfc2136 server; none: no look-up).
    pub nameserver: Option<String>,
    /// Longest wait for the record to be visible there (default 2m).
    pub propagation_timeout: Option<String>,
    /// TTL of the TXT records (default 60).
    pub ttl: Option<u32>,
}

/// `acme.dns:` validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub provider: DnsProvider,
    /// Where the TXT record must be visible before the CA looks; `None`: not checked.
    pub nameserver: Option<SocketAddr>,
    pub propagation_timeout: Duration,
    pub ttl: u32,
}

/// Who writes the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsProvider {
    Rfc2136 {
        server: SocketAddr,
        zone: String,
        key_name: String,
        key: Secret,
        /// `hmac-sha256`, `hmac-sha384`, `hmac-sha512`.
        algorithm: String,
    },
    Exec {
        command: Vec<String>,
    },
}

/// Key material: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `HOST[:PORT]`, port 53 by default.
fn dns_server(s: &str, p: &KeyPath, c: &mut Collector) -> Option<SocketAddr> {
    let found = if let Ok(a) = s.parse::<SocketAddr>() {
        Some(a)
    } else if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Some(SocketAddr::new(ip, 53))
    } else if s.contains(':') {
        s.to_socket_addrs().ok().and_then(|mut a| a.next())
    } else {
        (s, 53).to_socket_addrs().ok().and_then(|mut a| a.next())
    };
    if found.is_none() {
        c.err(
            p,
            format!("{s:?} is not a DNS server address (HOST[:PORT])"),
        );
    }
    found
}

/// The TSIG secret from `key_file` or `key_env`, base64; errors name the source, never the value.
fn tsig_secret(raw: &RawDns, base: &Path, p: &KeyPath, c: &mut Collector) -> Option<Secret> {
    use base64::Engine;
    let (text, at) = match (&raw.key_file, &raw.key_env) {
        (Some(f), None) => {
            let path = resolve_path(base, f);
            match std::fs::read_to_string(&path) {
                Ok(t) => (t, p.key("key_file")),
                Err(e) => {
                    c.err(&p.key("key_file"), format!("{}: {e}", path.display()));
                    return None;
                }
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) => (t, p.key("key_env")),
            Err(_) => {
                c.err(
                    &p.key("key_env"),
                    format!("environment variable {var} is not set"),
                );
                return None;
            }
        },
        (Some(_), Some(_)) => {
            c.err(
                &p.key("key_file"),
                "give either key_file or key_env, not both",
            );
            return None;
        }
        (None, None) => {
            c.err(p, "rfc2136 needs the TSIG secret: key_file or key_env");
            return None;
        }
    };
    match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
        Ok(k) if !k.is_empty() => Some(Secret(k)),
        _ => {
            c.err(
                &at,
                "the TSIG secret is not base64 (as `tsig-keygen` prints it)",
            );
            None
        }
    }
}

fn rfc2136(raw: &RawDns, base: &Path, p: &KeyPath, c: &mut Collector) -> Option<DnsProvider> {
    let server = match &raw.server {
        Some(s) => dns_server(s, &p.key("server"), c),
        None => {
            c.err(p, "rfc2136 needs `server` (the primary taking updates)");
            None
        }
    };
    let zone = match raw.zone.as_deref().map(crate::names::HostName::parse) {
        Some(Ok(z)) if !z.is_ip() && !z.is_wildcard() => Some(z.as_str().to_string()),
        Some(_) => {
            c.err(&p.key("zone"), "not a DNS zone name");
            None
        }
        None => {
            c.err(p, "rfc2136 needs `zone` (the zone the records go into)");
            None
        }
    };
    let key_name = raw.key_name.clone().or_else(|| {
        c.err(p, "rfc2136 needs `key_name` (the TSIG key's name)");
        None
    });
    let algorithm = raw.algorithm.as_deref().unwrap_or("hmac-sha256");
    if !matches!(algorithm, "hmac-sha256" | "hmac-sha384" | "hmac-sha512") {
        c.err(
            &p.key("algorithm"),
            format!("{algorithm:?}: expected hmac-sha256, hmac-sha384 or hmac-sha512"),
        );
    }
    let key = tsig_secret(raw, base, p, c);
    Some(DnsProvider::Rfc2136 {
        server: server?,
        zone: zone?,
        key_name: key_name?,
        key: key?,
        algorithm: algorithm.to_string(),
    })
}

pub(super) fn build_dns(
    raw: RawDns,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<DnsConfig> {
    let provider = match raw.provider.as_str() {
        "rfc2136" => rfc2136(&raw, base, p, c),
        "exec" => match &raw.command {
            Some(cmd) if !cmd.is_empty() && !cmd[0].is_empty() => {
                let mut command = cmd.clone();
                if command[0].contains('/') {
                    command[0] = resolve_path(base, &command[0]).display().to_string();
                }
                Some(DnsProvider::Exec { command })
            }
            _ => {
                c.err(
                    &p.key("command"),
                    "exec needs `command: [PROGRAM, ARGS...]`",
                );
                None
            }
        },
        other => {
            c.err(
                &p.key("provider"),
                format!("{other:?}: expected rfc2136 or exec"),
            );
            None
        }
    };
    let nameserver = match (&raw.nameserver, &provider) {
        (Some(s), _) => dns_server(s, &p.key("nameserver"), c),
        (None, Some(DnsProvider::Rfc2136 { server, .. })) => Some(*server),
        (None, _) => None,
    };
    let propagation_timeout = opt_duration(
        c,
        &p.key("propagation_timeout"),
        raw.propagation_timeout.as_deref(),
        Duration::from_secs(120),
    );
    Some(DnsConfig {
        provider: provider?,
        nameserver,
        propagation_timeout,
        ttl: raw.ttl.unwrap_or(60),
    })
}

//! `upstream:`: where a route goes, and how an `https://` upstream is trusted. Everything here
//! is data read and checked from what the operator wrote (pins as bytes, CA certificates and the
//! client certificate as DER, its key as PEM); the rustls client and the connector are built
//! from it by `upstream`.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName};
use serde_yaml_ng::Value;

use super::model::{opt_duration, resolve_path};
use super::raw::{RawHealthCheck, RawUpstream};
use super::{Collector, KeyPath};
use crate::pem;

/// One upstream: one or more replicas of the same server.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub urls: Vec<UpstreamUrl>,
    pub read_timeout: Duration,
    /// The whole response header, from the request on (then 504).
    pub response_header_timeout: Duration,
    pub write_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_request_body: u64,
    pub preserve_host: bool,
    /// How to reach `https://` URLs: trust, name, client certificate.
    pub tls: Option<UpstreamTls>,
    /// Active probing of each replica; `None`: passive health only.
    pub health_check: Option<HealthCheck>,
}

/// `health_check:`: each replica gets `GET path` every `interval`; a 2xx or 3xx answer within
/// `timeout` keeps it in the round robin, anything else takes it out until a probe passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// One replica: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    /// As written, normalised (`scheme://host:port`).
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `host:port` for the Host header (port omitted when the scheme's default).
    pub authority: String,
    pub https: bool,
}

/// How the TLS connections of an `https://` upstream are made and verified.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// SNI sent and the name a `ca`/system-verified certificate must carry. Never empty:
    /// pingora's own connector would skip verification on an empty SNI.
    pub server_name: ServerName<'static>,
    pub trust: Trust,
    /// A client certificate for upstreams that require one (mTLS).
    pub client: Option<ClientIdentity>,
}

/// Whom an HTTPS upstream's certificate must come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The leaf's SHA-256 is one of these (`pin_sha256`).
    Pins(Vec<[u8; 32]>),
    /// Standard WebPKI verification against these CAs only (`ca`).
    Ca(Vec<CertificateDer<'static>>),
    /// The system's roots.
    System,
}

impl Trust {
    /// `pin`, `ca` or `system`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pins(_) => "pin",
            Self::Ca(_) => "ca",
            Self::System => "system",
        }
    }
}

/// A client certificate chain and its private key, checked to belong together.
#[derive(Clone)]
pub struct ClientIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key as PEM. Never shown by `Debug`.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl UpstreamTls {
    /// A fingerprint of everything this trust was built from: the name, the pins, the CA
    /// certificates' and the client certificate's contents, the client key. Pooled upstream
    /// connections are keyed by it, so a connection made under one trust is never reused under
    /// another, even when a reload changed a file in place and not its path.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |tag: &[u8], bytes: &[u8]| {
            ctx.update(tag);
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(b"name", self.server_name.to_str().as_bytes());
        field(b"trust", self.trust.kind().as_bytes());
        match &self.trust {
            Trust::Pins(pins) => pins.iter().for_each(|p| field(b"pin", p)),
            Trust::Ca(certs) => certs.iter().for_each(|c| field(b"ca", c)),
            Trust::System => {}
        }
        if let Some(id) = &self.client {
            id.chain.iter().for_each(|c| field(b"client", c));
            field(b"key", &id.key_pem);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// MCP messages are small; a file upload through a route can raise it.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 4 * 1024 * 1024;

/// A size: bytes as a number, or with a unit (`512KiB`, `4MiB`, `1GiB`, `10kB`, `2MB`).
pub fn parse_size(v: &Value) -> Result<u64, String> {
    let text = match v {
        Value::Number(n) => return n.as_u64().ok_or_else(|| format!("{n} is not a size")),
        Value::String(s) => s.trim(),
        _ => return Err("expected a size like 4MiB or a number of bytes".into()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "{text:?}: expected a size like 4MiB, 512KiB or bytes"
            ))
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?}: expected a size like 4MiB, 512KiB or bytes"))
}

/// A pin as 32 bytes: hex (colons allowed) or base64.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let t = s.trim();
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
                Ok(v) => *b = v,
                Err(_) => return Err(format!("{t:?} is not a SHA-256 fingerprint")),
            }
        }
        return Ok(out);
    }
    let b64 = base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('='))
        });
    match b64.ok().and_then(|v| <[u8; 32]>::try_from(v).ok()) {
        Some(pin) => Ok(pin),
        None => Err(format!(
            "{t:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed, or base64 of 32 bytes)"
        )),
    }
}

/// Whom an `https://` upstream's certificate must satisfy: pins, a CA file, or the system roots.
fn build_trust(
    raw: &RawUpstream,
    pins: Vec<[u8; 32]>,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Trust> {
    let pinned = raw.pin_sha256.as_ref().is_some_and(|v| !v.is_empty());
    match (pinned, &raw.ca) {
        (true, Some(_)) => {
            c.err(
                &p.key("pin_sha256"),
                "give either `ca` or `pin_sha256`, not both",
            );
            None
        }
        (true, None) => Some(Trust::Pins(pins)),
        (false, Some(ca)) => {
            let path = resolve_path(base, ca);
            match pem::read_certificates(&path) {
                Ok(certs) => {
                    let mut roots = rustls::RootCertStore::empty();
                    match certs.iter().try_for_each(|c| roots.add(c.clone())) {
                        Ok(()) => Some(Trust::Ca(certs)),
                        Err(e) => {
                            c.err(
                                &p.key("ca"),
                                format!("{}: not a usable CA: {e}", path.display()),
                            );
                            None
                        }
                    }
                }
                Err(e) => {
                    c.err(&p.key("ca"), e.to_string());
                    None
                }
            }
        }
        (false, None) => Some(Trust::System),
    }
}

/// The client certificate an `https://` upstream may ask for: `Some(None)` when none is set,
/// `None` when the setting is broken.
fn build_client_identity(
    raw: &RawUpstream,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Option<ClientIdentity>> {
    match (&raw.client_cert, &raw.client_key) {
        (None, None) => Some(None),
        (Some(_), None) => {
            c.err(&p.key("client_key"), "client_cert needs client_key");
            None
        }
        (None, Some(_)) => {
            c.err(&p.key("client_cert"), "client_key needs client_cert");
            None
        }
        (Some(cert), Some(key)) => {
            let (cert, key) = (resolve_path(base, cert), resolve_path(base, key));
            let checked = pem::read_pair(&cert, &key).and_then(|(cert_pem, key_pem)| {
                let pair = pem::key_pair_from_pem(&cert_pem, &cert, &key_pem, &key)?;
                Ok(ClientIdentity {
                    chain: pair.certified.cert.clone(),
                    key_pem,
                })
            });
            match checked {
                Ok(id) => Some(Some(id)),
                Err(e) => {
                    let at = if e.is_about_key() {
                        "client_key"
                    } else {
                        "client_cert"
                    };
                    c.err(&p.key(at), e.to_string());
                    None
                }
            }
        }
    }
}

/// Reads and checks the TLS keys of an `https://` upstream; problems go to `c` under `p`.
fn build_tls(
    url_host: &str,
    raw: &RawUpstream,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<UpstreamTls> {
    let mut ok = true;
    let name = raw.server_name.as_deref().unwrap_or(url_host);
    let server_name = match ServerName::try_from(name.trim_matches(['[', ']']).to_string()) {
        Ok(n) if !name.is_empty() => Some(n),
        _ => {
            c.err(
                &p.key("server_name"),
                format!("{name:?} is not a DNS name or IP address"),
            );
            None
        }
    };
    let mut pins = Vec::new();
    for pin in raw.pin_sha256.iter().flatten() {
        match parse_pin(pin) {
            Ok(pin) => pins.push(pin),
            Err(e) => {
                c.err(&p.key("pin_sha256"), e);
                ok = false;
            }
        }
    }
    let trust = build_trust(raw, pins, base, p, c);
    let client = build_client_identity(raw, base, p, c);
    Some(UpstreamTls {
        server_name: server_name?,
        trust: trust.filter(|_| ok)?,
        client: client?,
    })
}

pub(super) fn build_upstream(
    v: Value,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Upstream> {
    let shorthand = matches!(v, Value::String(_));
    let raw = match v {
        Value::String(url) => RawUpstream {
            urls: vec![url],
            ..RawUpstream::default()
        },
        v @ Value::Mapping(_) => c.deserialize::<RawUpstream>(v, p)?,
        _ => {
            c.err(p, "expected a URL (http://host:port) or a map with `urls:`");
            return None;
        }
    };
    let up = if shorthand { p.clone() } else { p.key("urls") };
    if raw.urls.is_empty() {
        c.err(&up, "must list at least one URL");
    }
    let mut urls = Vec::new();
    for (i, u) in raw.urls.iter().enumerate() {
        let at = if shorthand { up.clone() } else { up.index(i) };
        match parse_upstream_url(u) {
            Ok(x) if urls.contains(&x) => c.err(&at, format!("{} is listed twice", x.url)),
            Ok(x) => urls.push(x),
            Err(e) => c.err(&at, e),
        }
    }
    let https = urls.iter().filter(|u| u.https).count();
    if https > 0 && https < urls.len() {
        c.err(
            &up,
            "mix of http:// and https:// URLs: one upstream speaks one of them",
        );
    }
    let tls = if https > 0 {
        build_tls(&urls[0].host, &raw, base, p, c)
    } else {
        for (key, set) in [
            ("ca", raw.ca.is_some()),
            ("pin_sha256", raw.pin_sha256.is_some()),
            ("server_name", raw.server_name.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
        ] {
            if set {
                c.err(&p.key(key), "applies to https:// upstreams only");
            }
        }
        None
    };
    let timeouts = build_upstream_timeouts(&raw, p, c);
    let max_request_body =
        build_max_body(raw.max_request_body.as_ref(), &p.key("max_request_body"), c);
    let health_check = raw
        .health_check
        .as_ref()
        .map(|h| build_health_check(h, &p.key("health_check"), c));
    let [read_timeout, response_header_timeout, write_timeout, connect_timeout] = timeouts;
    Some(Upstream {
        urls,
        read_timeout,
        response_header_timeout,
        write_timeout,
        connect_timeout,
        max_request_body,
        preserve_host: raw.preserve_host,
        tls,
        health_check,
    })
}

/// read, response-header, write and connect timeouts, in that order; none may be 0.
fn build_upstream_timeouts(raw: &RawUpstream, p: &KeyPath, c: &mut Collector) -> [Duration; 4] {
    let settings = [
        ("read_timeout", raw.read_timeout.as_deref(), 3600),
        (
            "response_header_timeout",
            raw.response_header_timeout.as_deref(),
            60,
        ),
        ("write_timeout", raw.write_timeout.as_deref(), 60),
        ("connect_timeout", raw.connect_timeout.as_deref(), 10),
    ];
    settings.map(|(k, v, default)| {
        let d = opt_duration(c, &p.key(k), v, Duration::from_secs(default));
        if d.is_zero() {
            c.err(&p.key(k), "must be longer than 0");
        }
        d
    })
}

fn build_max_body(raw: Option<&Value>, p: &KeyPath, c: &mut Collector) -> u64 {
    match raw.map(parse_size) {
        None => DEFAULT_MAX_REQUEST_BODY,
        Some(Ok(0)) => {
            c.err(p, "must be more than 0");
            DEFAULT_MAX_REQUEST_BODY
        }
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            c.err(p, e);
            DEFAULT_MAX_REQUEST_BODY
        }
    }
}

fn build_health_check(h: &RawHealthCheck, hp: &KeyPath, c: &mut Collector) -> HealthCheck {
    if !h.path.starts_with('/') {
        c.err(&hp.key("path"), "must start with /");
    }
    let interval = opt_duration(
        c,
        &hp.key("interval"),
        h.interval.as_deref(),
        Duration::from_secs(10),
    );
    let timeout = opt_duration(
        c,
        &hp.key("timeout"),
        h.timeout.as_deref(),
        Duration::from_secs(2),
    );
    for (k, d) in [("interval", interval), ("timeout", timeout)] {
        if d < Duration::from_millis(100) {
            c.err(&hp.key(k), "must be at least 100ms");
        }
    }
    if timeout > interval {
        // Probes would pile up, one more every interval.
        c.err(&hp.key("timeout"), "must not be longer than the interval");
    }
    HealthCheck {
        path: h.path.clone(),
        interval,
        timeout,
    }
}

/// `s` with any `user:password@` replaced by `***@`, for messages: credentials are never echoed.
pub fn redact_userinfo(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &s[..start], &s[start + at..]),
        None => s.to_string(),
    }
}

fn parse_upstream_url(raw: &str) -> Result<UpstreamUrl, String> {
    let s = &redact_userinfo(raw);
    let u = url::Url::parse(raw).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let https = match u.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "{s}: scheme {other} is not supported; use http:// or https://"
            ))
        }
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "{s}: credentials in upstream URLs are not supported"
        ));
    }
    if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "{s}: an upstream URL has no path; requests keep their own path (http://host:port)"
        ));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{s}: no host")),
    };
    let default_port = if https { 443 } else { 80 };
    let port = u.port_or_known_default().unwrap_or(default_port);
    if port == 0 {
        return Err(format!("{s}: port 0 is not a port an upstream listens on"));
    }
    let host_for_authority = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if port == default_port {
        host_for_authority.clone()
    } else {
        format!("{host_for_authority}:{port}")
    };
    Ok(UpstreamUrl {
        url: format!("{}://{host_for_authority}:{port}", u.scheme()),
        host,
        port,
        authority,
        https,
    })
}

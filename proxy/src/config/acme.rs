//! `acme:`: the CA, the account and when to renew.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde_yaml_ng::Value;

use super::model::{parse_duration, resolve_path};
use super::raw::{RawAcme, RawCa, RawEab};
use super::{Collector, DnsConfig, KeyPath};

/// `acme:` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Vec<String>,
    pub accept_terms: bool,
    /// Extra roots trusted for the CA's own HTTPS (`directory_root`), as DER.
    pub directory_root: Option<Vec<CertificateDer<'static>>>,
    pub eab: Option<Eab>,
    pub profile: Option<String>,
    pub renew_when_remaining: RenewThreshold,
    pub key_type: KeyType,
    pub concurrency: usize,
    /// Backoff after failed orders: first wait, doubled per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// `challenge:` for hosts that name none; `None`: by whether port 80 is open.
    pub challenge: Option<Challenge>,
    /// The runaway guard: at most this many orders per host in the window.
    pub order_limit: OrderLimit,
    /// Longest wait between two looks at a certificate's ARI renewal window.
    pub renewal_check: Duration,
    /// DNS-01's provider; required when a host uses DNS-01.
    pub dns: Option<DnsConfig>,
    /// CAs to order from when orders keep failing at `directory`, in order.
    pub fallbacks: Vec<CaConfig>,
}

/// One CA: its directory, the roots for its HTTPS, its External Account Binding. Each has its
/// own account.
#[derive(Debug, Clone, PartialEq)]
pub struct CaConfig {
    pub directory: String,
    pub directory_root: Option<Vec<CertificateDer<'static>>>,
    pub eab: Option<Eab>,
}

impl AcmeConfig {
    /// How many CAs are listed.
    pub fn ca_count(&self) -> usize {
        1 + self.fallbacks.len()
    }

    /// The directory URL of CA `i` (0: the first).
    pub fn ca_directory(&self, i: usize) -> Option<&str> {
        match i {
            0 => Some(&self.directory),
            _ => self.fallbacks.get(i - 1).map(|c| c.directory.as_str()),
        }
    }

    /// Every CA in order of preference, each as the configuration of its own account (the
    /// first is this one).
    pub fn cas(&self) -> Vec<Self> {
        let mut out = vec![Self {
            fallbacks: Vec::new(),
            ..self.clone()
        }];
        for ca in &self.fallbacks {
            out.push(Self {
                directory: ca.directory.clone(),
                directory_root: ca.directory_root.clone(),
                eab: ca.eab.clone(),
                fallbacks: Vec::new(),
                ..self.clone()
            });
        }
        out
    }
}

/// How a host proves control of its names to the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A response on port 80 (`/.well-known/acme-challenge/TOKEN`).
    Http01,
    /// A certificate on the TLS listener for `acme-tls/1` handshakes (RFC 8737).
    TlsAlpn01,
    /// A TXT record `_acme-challenge.NAME` (`acme.dns`); the only one for wildcards.
    Dns01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Dns01 => "dns-01",
        }
    }

    pub(super) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "http-01" => Ok(Self::Http01),
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "dns-01" => Ok(Self::Dns01),
            other => Err(format!(
                "{other:?}: expected http-01, tls-alpn-01 or dns-01"
            )),
        }
    }
}

/// At most `orders` orders per host in any `window` (failed ones included): a floor under
/// every retry and renewal path, so a loop cannot burn the CA's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLimit {
    pub orders: u32,
    pub window: Duration,
}

impl Default for OrderLimit {
    fn default() -> Self {
        Self {
            orders: 3,
            window: Duration::from_secs(24 * 3600),
        }
    }
}

/// `order_limit: N/DURATION` (`3/24h`).
fn build_order_limit(raw: Option<&str>, p: &KeyPath, c: &mut Collector) -> OrderLimit {
    let Some(s) = raw else {
        return OrderLimit::default();
    };
    let parsed = s.split_once('/').and_then(|(n, w)| {
        let orders = n.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
        let window = parse_duration(w.trim())
            .ok()
            .filter(|d| *d >= Duration::from_secs(60))?;
        Some(OrderLimit { orders, window })
    });
    parsed.unwrap_or_else(|| {
        c.err(
            p,
            format!("{s:?}: expected orders per window, like 3/24h (at least 1 order, a window of at least 1m)"),
        );
        OrderLimit::default()
    })
}

/// External Account Binding credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: Vec<u8>,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// When to renew without an ARI window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RenewThreshold {
    /// Share of the lifetime remaining, 0 < f < 1.
    Fraction(f64),
    /// Time remaining.
    Remaining(Duration),
}

/// Key type of issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
}

pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

fn build_directory(raw: Option<&str>, p: &KeyPath, c: &mut Collector) -> String {
    match raw.unwrap_or("letsencrypt") {
        "letsencrypt" => LETSENCRYPT.to_string(),
        "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
        other => {
            match url::Url::parse(other) {
                Ok(u) if u.scheme() == "https" => {}
                _ => c.err(
                    p,
                    format!(
                        "{other:?}: expected letsencrypt, letsencrypt-staging or an https:// URL"
                    ),
                ),
            }
            other.to_string()
        }
    }
}

/// `retry_initial` and `retry_max`: the backoff after a failed order.
fn build_retry(a: &RawAcme, p: &KeyPath, c: &mut Collector) -> (Duration, Duration) {
    let mut duration = |key: &str, v: Option<&str>, default: Duration| match v.map(parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            c.err(&p.key(key), "must be longer than 0s");
            default
        }
        Some(Err(e)) => {
            c.err(&p.key(key), e);
            default
        }
    };
    let retry_initial = duration(
        "retry_initial",
        a.retry_initial.as_deref(),
        Duration::from_secs(120),
    );
    let retry_max = duration(
        "retry_max",
        a.retry_max.as_deref(),
        Duration::from_secs(6 * 3600),
    );
    if retry_max < retry_initial {
        c.err(
            &p.key("retry_max"),
            "must not be shorter than retry_initial",
        );
    }
    (retry_initial, retry_max)
}

/// `eab:` with its key decoded (never echoed in an error).
fn build_eab(e: RawEab, p: &KeyPath, c: &mut Collector) -> Option<Eab> {
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(e.hmac_key.trim().trim_end_matches('='));
    match key {
        Ok(k) if !k.is_empty() => Some(Eab {
            kid: e.kid,
            hmac_key: k,
        }),
        _ => {
            c.err(&p.key("hmac_key"), "not a base64url-encoded key");
            None
        }
    }
}

/// `renewal_check:` at least a second.
fn build_renewal_check(raw: Option<&str>, p: &KeyPath, c: &mut Collector) -> Duration {
    match raw.map(parse_duration) {
        None => Duration::from_secs(6 * 3600),
        Some(Ok(d)) if d >= Duration::from_secs(1) => d,
        Some(Ok(_)) => {
            c.err(p, "must be at least 1s");
            Duration::from_secs(6 * 3600)
        }
        Some(Err(e)) => {
            c.err(p, e);
            Duration::from_secs(6 * 3600)
        }
    }
}

/// `contact:` as `mailto:` URLs.
fn build_contact(raw: &[String], p: &KeyPath, c: &mut Collector) -> Vec<String> {
    let mut contact = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let s = s.trim();
        let mail = s.strip_prefix("mailto:").unwrap_or(s);
        if !mail.contains('@') || mail.starts_with('@') || mail.ends_with('@') {
            c.err(&p.index(i), format!("{s:?} is not an e-mail address"));
        }
        contact.push(format!("mailto:{mail}"));
    }
    contact
}

/// `renew_when_remaining:` a share of the lifetime (`33%`) or a duration (`30d`).
fn build_threshold(raw: Option<&str>, p: &KeyPath, c: &mut Collector) -> RenewThreshold {
    let default = RenewThreshold::Fraction(1.0 / 3.0);
    let Some(s) = raw else {
        return default;
    };
    match s.trim().strip_suffix('%') {
        Some(pct) => match pct.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v < 100.0 => RenewThreshold::Fraction(v / 100.0),
            _ => {
                c.err(
                    p,
                    format!("{s:?}: a percentage must be between 0% and 100%"),
                );
                default
            }
        },
        None => match parse_duration(s) {
            Ok(d) => RenewThreshold::Remaining(d),
            Err(e) => {
                c.err(p, format!("{e}, or a share like 33%"));
                default
            }
        },
    }
}

/// A directory root file read as DER.
fn read_root(
    r: &str,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Vec<CertificateDer<'static>>> {
    match crate::pem::read_certificates(&resolve_path(base, r)) {
        Ok(certs) => Some(certs),
        Err(e) => {
            c.err(p, e.to_string());
            None
        }
    }
}

/// `directory` (with the top-level `directory_root` and `eab`), or a list of CAs: the first
/// and the fallbacks.
fn build_cas(
    raw: Option<Value>,
    root: Option<String>,
    eab: Option<RawEab>,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> (CaConfig, Vec<CaConfig>) {
    let top = CaConfig {
        directory: String::new(),
        directory_root: root.and_then(|r| read_root(&r, base, &p.key("directory_root"), c)),
        eab: eab.and_then(|e| build_eab(e, &p.key("eab"), c)),
    };
    let dp = p.key("directory");
    let (items, listed) = match raw {
        None => (vec![None], false),
        Some(v @ Value::String(_)) => (vec![Some(v)], false),
        Some(Value::Sequence(list)) if !list.is_empty() => {
            (list.into_iter().map(Some).collect(), true)
        }
        Some(_) => {
            c.err(
                &dp,
                "expected a directory (letsencrypt, an https:// URL) or a list of them",
            );
            (vec![None], false)
        }
    };
    let mut cas: Vec<CaConfig> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let at = if listed { dp.index(i) } else { dp.clone() };
        // The top-level `directory_root` and `eab` belong to the first CA.
        let inherited = if i == 0 {
            top.clone()
        } else {
            CaConfig {
                directory: String::new(),
                directory_root: None,
                eab: None,
            }
        };
        let ca = match item {
            None => CaConfig {
                directory: build_directory(None, &at, c),
                ..inherited
            },
            Some(Value::String(s)) => CaConfig {
                directory: build_directory(Some(&s), &at, c),
                ..inherited
            },
            Some(v) => match c.deserialize::<RawCa>(v, &at) {
                Some(r) => CaConfig {
                    directory: build_directory(Some(&r.url), &at.key("url"), c),
                    directory_root: r
                        .directory_root
                        .and_then(|f| read_root(&f, base, &at.key("directory_root"), c))
                        .or(inherited.directory_root),
                    eab: r
                        .eab
                        .and_then(|e| build_eab(e, &at.key("eab"), c))
                        .or(inherited.eab),
                },
                None => continue,
            },
        };
        if cas.iter().any(|x| x.directory == ca.directory) {
            c.err(&at, format!("{} is listed twice", ca.directory));
        }
        cas.push(ca);
    }
    let mut it = cas.into_iter();
    let first = it.next().unwrap_or(top);
    (first, it.collect())
}

pub(super) fn build_acme(a: RawAcme, base: &Path, p: &KeyPath, c: &mut Collector) -> AcmeConfig {
    let (retry_initial, retry_max) = build_retry(&a, p, c);
    let (first, fallbacks) = build_cas(a.directory, a.directory_root, a.eab, base, p, c);
    let contact = build_contact(&a.contact, &p.key("contact"), c);
    let renew_when_remaining = build_threshold(
        a.renew_when_remaining.as_deref(),
        &p.key("renew_when_remaining"),
        c,
    );
    let key_type = match a.key_type.as_deref() {
        None | Some("ecdsa-p256") => KeyType::EcdsaP256,
        Some("ecdsa-p384") => KeyType::EcdsaP384,
        Some(other) => {
            c.err(
                &p.key("key_type"),
                format!("{other:?}: expected ecdsa-p256 or ecdsa-p384"),
            );
            KeyType::EcdsaP256
        }
    };
    let concurrency = match a.concurrency {
        Some(0) => {
            c.err(&p.key("concurrency"), "must be at least 1");
            1
        }
        Some(n) => n,
        None => 4,
    };
    if let Some(profile) = &a.profile {
        if profile.is_empty() {
            c.err(&p.key("profile"), "must not be empty");
        }
    }
    let challenge = a.challenge.as_deref().and_then(|s| {
        Challenge::parse(s)
            .map_err(|e| c.err(&p.key("challenge"), e))
            .ok()
    });
    let order_limit = build_order_limit(a.order_limit.as_deref(), &p.key("order_limit"), c);
    let renewal_check = build_renewal_check(a.renewal_check.as_deref(), &p.key("renewal_check"), c);
    let dns = a
        .dns
        .and_then(|d| super::dns::build_dns(d, base, &p.key("dns"), c));
    AcmeConfig {
        dns,
        challenge,
        order_limit,
        renewal_check,
        directory: first.directory,
        contact,
        accept_terms: a.accept_terms,
        directory_root: first.directory_root,
        eab: first.eab,
        fallbacks,
        profile: a.profile,
        renew_when_remaining,
        key_type,
        concurrency,
        retry_initial,
        retry_max,
    }
}

//! The validated configuration model. Built once from the raw layer; nothing else reads YAML.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::raw::{RawAcme, RawConfig, RawHost, RawTlsFiles, RawUpstream};
use super::{Collector, KeyPath};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub listen: Listen,
    /// Certificates, keys and ACME accounts.
    pub storage: PathBuf,
    pub acme: Option<AcmeConfig>,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub watch_interval: Duration,
    /// Hosts in file order.
    pub hosts: Vec<Arc<Host>>,
}

impl Config {
    /// The host serving `name` (primary name or alias), if any.
    pub fn host(&self, name: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.serves(name))
    }
}

/// Listen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    /// Port put in http→https redirects (443 is left out of the URL).
    pub redirect_https_port: u16,
}

/// A DNS name or IP literal, lower case, without trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn parse(s: &str) -> Result<HostName, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.parse::<IpAddr>().is_ok() {
            return Ok(HostName(lower));
        }
        if lower.is_empty() || lower.len() > 253 {
            return Err(format!("{s:?} is not a host name"));
        }
        for label in lower.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(format!(
                    "{s:?} is not a host name (letters, digits, '-' and '.' only; no wildcards)"
                ));
            }
        }
        Ok(HostName(lower))
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

/// Where a host's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Obtained and renewed from the ACME CA.
    Acme,
    /// Generated locally at start, persisted in storage.
    SelfSigned,
    /// Plain HTTP on the HTTP listener only.
    None,
    /// Operator-provided files, re-read when they change.
    Files { cert: PathBuf, key: PathBuf },
}

impl TlsSource {
    pub fn kind(&self) -> &'static str {
        match self {
            TlsSource::Acme => "acme",
            TlsSource::SelfSigned => "self-signed",
            TlsSource::None => "none",
            TlsSource::Files { .. } => "files",
        }
    }
}

/// One served host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: HostName,
    pub aliases: Vec<HostName>,
    pub tls: TlsSource,
    /// Normalised origins (`scheme://host[:port]`); `None` means any Origin is accepted.
    pub allowed_origins: Option<Vec<String>>,
    /// Sorted longest prefix first.
    pub routes: Vec<Route>,
}

impl Host {
    /// Primary name and aliases.
    pub fn names(&self) -> impl Iterator<Item = &HostName> {
        std::iter::once(&self.name).chain(self.aliases.iter())
    }
    pub fn serves(&self, name: &str) -> bool {
        self.names().any(|n| n.as_str() == name)
    }
    /// The route whose prefix matches `path` (longest wins), on segment boundaries.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.route_index(path).map(|i| &self.routes[i])
    }

    /// Index in `routes` of the route matching `path`.
    pub fn route_index(&self, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| prefix_matches(&r.path, path))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
        None => false,
    }
}

/// A path prefix and where it goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub path: String,
    pub upstream: Arc<Upstream>,
}

/// One upstream: one or more replicas of the same server.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub urls: Vec<UpstreamUrl>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub connect_timeout: Duration,
    pub preserve_host: bool,
    /// How to reach `https://` URLs: trust, name, client certificate.
    pub tls: Option<Arc<crate::upstream_tls::UpstreamTls>>,
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

/// `acme:` validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: String,
    pub contact: Vec<String>,
    pub accept_terms: bool,
    pub directory_root: Option<PathBuf>,
    pub eab: Option<Eab>,
    pub profile: Option<String>,
    pub renew_when_remaining: RenewThreshold,
    pub key_type: KeyType,
    pub concurrency: usize,
    /// Backoff after failed orders: first wait, doubled per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 15m, 1h, 30d ({e})"))
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn listen_addr(c: &mut Collector, path: &KeyPath, v: Option<&str>, default: &str) -> SocketAddr {
    let s = v.unwrap_or(default);
    match s.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => a,
        _ => {
            c.err(path, format!("{s:?} is not an address like 0.0.0.0:443"));
            // Placeholder; the error above makes the whole load fail.
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    }
}

fn opt_duration(c: &mut Collector, path: &KeyPath, v: Option<&str>, default: Duration) -> Duration {
    match v.map(parse_duration) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            c.err(path, e);
            default
        }
    }
}

pub(super) fn build(raw: RawConfig, base: &Path, file: &Path, c: &mut Collector) -> Option<Config> {
    let root = KeyPath::default();
    let lp = root.key("listen");
    let https = listen_addr(
        c,
        &lp.key("https"),
        raw.listen.https.as_deref(),
        "0.0.0.0:443",
    );
    let listen = Listen {
        http: listen_addr(c, &lp.key("http"), raw.listen.http.as_deref(), "0.0.0.0:80"),
        https,
        metrics: listen_addr(
            c,
            &lp.key("metrics"),
            raw.listen.metrics.as_deref(),
            "127.0.0.1:9100",
        ),
        redirect_https_port: raw.listen.redirect_https_port.unwrap_or(https.port()),
    };
    let ports = [
        ("http", listen.http),
        ("https", listen.https),
        ("metrics", listen.metrics),
    ];
    for (i, (a, x)) in ports.iter().enumerate() {
        for (b, y) in &ports[i + 1..] {
            if x.port() != 0 && x == y {
                c.err(&lp.key(b), format!("same address as listen.{a}"));
            }
        }
    }

    let storage = resolve_path(base, raw.storage.as_deref().unwrap_or("certs"));
    let threads = match raw.threads {
        Some(0) => {
            c.err(&root.key("threads"), "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let shutdown_grace = opt_duration(
        c,
        &root.key("shutdown_grace"),
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(5),
    );
    let watch_interval = opt_duration(
        c,
        &root.key("watch_interval"),
        raw.watch_interval.as_deref(),
        Duration::from_secs(2),
    );
    if watch_interval.is_zero() {
        c.err(&root.key("watch_interval"), "must be longer than 0");
    }

    let acme = raw.acme.map(|a| build_acme(a, base, &root.key("acme"), c));

    let mut hosts: Vec<Arc<Host>> = Vec::new();
    let hp = root.key("hosts");
    if raw.hosts.is_empty() {
        c.err(&hp, "no hosts configured: add at least one under `hosts:`");
    }
    for (k, v) in raw.hosts {
        let Value::String(name) = k else {
            c.err(&hp, format!("host keys must be strings, found {k:?}"));
            continue;
        };
        let path = hp.key(&name);
        let Some(rh) = c.deserialize::<RawHost>(v, &path) else {
            continue;
        };
        if let Some(h) = build_host(&name, rh, base, &path, c) {
            hosts.push(Arc::new(h));
        }
    }

    // Every name belongs to exactly one host.
    let mut seen: Vec<(&HostName, &HostName)> = Vec::new();
    for h in &hosts {
        for n in h.names() {
            if let Some((_, owner)) = seen.iter().find(|(s, _)| *s == n) {
                c.err(
                    &hp.key(h.name.as_str()),
                    format!("name {n} is already served by host {owner}"),
                );
            } else {
                seen.push((n, &h.name));
            }
        }
    }
    let acme_hosts: Vec<&HostName> = hosts
        .iter()
        .filter(|h| h.tls == TlsSource::Acme)
        .map(|h| &h.name)
        .collect();
    if let Some(first) = acme_hosts.first() {
        match &acme {
            None => c.err(
                &hp.key(first.as_str()).key("tls"),
                "`tls: acme` needs an `acme:` block (directory, contact, accept_terms)",
            ),
            Some(a) if !a.accept_terms => c.err(
                &root.key("acme").key("accept_terms"),
                "must be true to obtain certificates (you agree to the CA's terms of service)",
            ),
            _ => {}
        }
        for h in hosts.iter().filter(|h| h.tls == TlsSource::Acme) {
            if let Some(ip) = h.names().find(|n| n.is_ip()) {
                c.err(
                    &hp.key(h.name.as_str()),
                    format!("{ip}: ACME certificates here are for DNS names, not IP addresses"),
                );
            }
        }
    }

    Some(Config {
        file: file.to_path_buf(),
        listen,
        storage,
        acme,
        threads,
        shutdown_grace,
        watch_interval,
        hosts,
    })
}

fn build_acme(a: RawAcme, base: &Path, p: &KeyPath, c: &mut Collector) -> AcmeConfig {
    let directory = match a.directory.as_deref().unwrap_or("letsencrypt") {
        "letsencrypt" => LETSENCRYPT.to_string(),
        "letsencrypt-staging" => LETSENCRYPT_STAGING.to_string(),
        other => {
            match url::Url::parse(other) {
                Ok(u) if u.scheme() == "https" => {}
                _ => c.err(
                    &p.key("directory"),
                    format!(
                        "{other:?}: expected letsencrypt, letsencrypt-staging or an https:// URL"
                    ),
                ),
            }
            other.to_string()
        }
    };
    let mut contact = Vec::new();
    for (i, s) in a.contact.iter().enumerate() {
        let s = s.trim();
        let mail = s.strip_prefix("mailto:").unwrap_or(s);
        if !mail.contains('@') || mail.starts_with('@') || mail.ends_with('@') {
            c.err(
                &p.key("contact").index(i),
                format!("{s:?} is not an e-mail address"),
            );
        }
        contact.push(format!("mailto:{mail}"));
    }
    let eab = a.eab.and_then(|e| {
        use base64::Engine;
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(e.hmac_key.trim().trim_end_matches('='));
        match key {
            Ok(k) if !k.is_empty() => Some(Eab {
                kid: e.kid,
                hmac_key: k,
            }),
            _ => {
                // Never echo the key itself.
                c.err(&p.key("eab").key("hmac_key"), "not a base64url-encoded key");
                None
            }
        }
    });
    let renew_when_remaining = match a.renew_when_remaining.as_deref() {
        None => RenewThreshold::Fraction(1.0 / 3.0),
        Some(s) => match s.trim().strip_suffix('%') {
            Some(pct) => match pct.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v < 100.0 => RenewThreshold::Fraction(v / 100.0),
                _ => {
                    c.err(
                        &p.key("renew_when_remaining"),
                        format!("{s:?}: a percentage must be between 0% and 100%"),
                    );
                    RenewThreshold::Fraction(1.0 / 3.0)
                }
            },
            None => match parse_duration(s) {
                Ok(d) => RenewThreshold::Remaining(d),
                Err(e) => {
                    c.err(
                        &p.key("renew_when_remaining"),
                        format!("{e}, or a share like 33%"),
                    );
                    RenewThreshold::Fraction(1.0 / 3.0)
                }
            },
        },
    };
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
    let directory_root = a.directory_root.map(|r| resolve_path(base, &r));
    if let Some(root) = &directory_root {
        if let Err(e) = crate::tls::read_certificates(root) {
            c.err(&p.key("directory_root"), e.to_string());
        }
    }
    AcmeConfig {
        directory,
        contact,
        accept_terms: a.accept_terms,
        directory_root,
        eab,
        profile: a.profile,
        renew_when_remaining,
        key_type,
        concurrency,
        retry_initial,
        retry_max,
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
        && n.parse::<std::net::IpAddr>().is_err()
        && !LOCAL
            .iter()
            .any(|l| n == *l || n.ends_with(&format!(".{l}")))
}

fn build_host(
    name: &str,
    rh: RawHost,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Host> {
    let host_name = match HostName::parse(name) {
        Ok(n) => Some(n),
        Err(e) => {
            c.err(p, e);
            None
        }
    };
    let mut aliases = Vec::new();
    for (i, a) in rh.aliases.iter().enumerate() {
        match HostName::parse(a) {
            Ok(n) => aliases.push(n),
            Err(e) => c.err(&p.key("aliases").index(i), e),
        }
    }

    let tp = p.key("tls");
    let tls = match rh.tls {
        None => {
            c.err(
                &tp,
                "missing: one of auto, acme, self-signed, none, or { cert: FILE, key: FILE }",
            );
            None
        }
        Some(Value::String(s)) => match s.as_str() {
            "acme" => Some(TlsSource::Acme),
            "self-signed" => Some(TlsSource::SelfSigned),
            "none" => Some(TlsSource::None),
            // A public name gets a CA certificate, a local one a self-signed certificate.
            "auto" => Some(if is_public_name(name) {
                TlsSource::Acme
            } else {
                TlsSource::SelfSigned
            }),
            other => {
                c.err(
                    &tp,
                    format!("{other:?}: expected auto, acme, self-signed, none, or {{ cert: FILE, key: FILE }}"),
                );
                None
            }
        },
        Some(v @ Value::Mapping(_)) => c.deserialize::<RawTlsFiles>(v, &tp).and_then(|f| {
            let cert = resolve_path(base, &f.cert);
            let key = resolve_path(base, &f.key);
            match crate::tls::load_key_pair(&cert, &key) {
                Ok(_) => Some(TlsSource::Files { cert, key }),
                Err(e) => {
                    let at = if e.is_about_key() { "key" } else { "cert" };
                    c.err(&tp.key(at), e.to_string());
                    None
                }
            }
        }),
        Some(_) => {
            c.err(
                &tp,
                "expected acme, self-signed, none, or { cert: FILE, key: FILE }",
            );
            None
        }
    };

    let allowed_origins = rh.allowed_origins.map(|list| {
        let mut out = Vec::new();
        for (i, o) in list.iter().enumerate() {
            match normalize_origin(o) {
                Ok(n) => out.push(n),
                Err(e) => c.err(&p.key("allowed_origins").index(i), e),
            }
        }
        out
    });

    let mut routes = Vec::new();
    match (rh.upstream, rh.routes) {
        (Some(_), Some(_)) => c.err(
            p,
            "set either `upstream` (every path) or `routes`, not both",
        ),
        (None, None) => c.err(p, "missing `upstream` (every path) or `routes`"),
        (Some(u), None) => {
            if let Some(up) = build_upstream(u, base, &p.key("upstream"), c) {
                routes.push(Route {
                    path: "/".into(),
                    upstream: Arc::new(up),
                });
            }
        }
        (None, Some(rs)) => {
            if rs.is_empty() {
                c.err(&p.key("routes"), "must list at least one route");
            }
            for (i, r) in rs.into_iter().enumerate() {
                let rp = p.key("routes").index(i);
                let path_ok = if !r.path.starts_with('/') {
                    c.err(&rp.key("path"), format!("{:?} must start with /", r.path));
                    false
                } else if r.path.contains(['?', '#']) {
                    c.err(&rp.key("path"), "a path prefix has no query or fragment");
                    false
                } else if routes.iter().any(|x: &Route| x.path == r.path) {
                    c.err(&rp.key("path"), format!("{} is listed twice", r.path));
                    false
                } else {
                    true
                };
                // Built even under a bad path, so its own problems are reported in the same run.
                let upstream = build_upstream(r.upstream, base, &rp.key("upstream"), c);
                if let (true, Some(up)) = (path_ok, upstream) {
                    routes.push(Route {
                        path: r.path,
                        upstream: Arc::new(up),
                    });
                }
            }
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));

    Some(Host {
        name: host_name?,
        aliases,
        tls: tls?,
        allowed_origins,
        routes,
    })
}

/// `scheme://host[:port]`, lower case, default ports removed.
pub fn normalize_origin(o: &str) -> Result<String, String> {
    let u = url::Url::parse(o)
        .map_err(|_| format!("{o:?} is not an origin like https://chatgpt.com"))?;
    if !(u.path() == "/" || u.path().is_empty()) || u.query().is_some() || !u.username().is_empty()
    {
        return Err(format!("{o:?}: an origin has no path, query or user"));
    }
    match u.origin() {
        url::Origin::Tuple(..) => Ok(u.origin().ascii_serialization()),
        url::Origin::Opaque(_) => Err(format!("{o:?} is not an http(s) origin")),
    }
}

fn build_upstream(v: Value, base: &Path, p: &KeyPath, c: &mut Collector) -> Option<Upstream> {
    let shorthand = matches!(v, Value::String(_));
    let raw = match v {
        Value::String(url) => RawUpstream {
            urls: vec![url],
            read_timeout: None,
            write_timeout: None,
            connect_timeout: None,
            preserve_host: false,
            ca: None,
            pin_sha256: None,
            server_name: None,
            client_cert: None,
            client_key: None,
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
            Ok(x) if urls.contains(&x) => c.err(&at, format!("{u} is listed twice")),
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
        let settings = crate::upstream_tls::Settings {
            ca: raw.ca.as_deref().map(|f| resolve_path(base, f)),
            pins: raw.pin_sha256.clone().unwrap_or_default(),
            server_name: raw.server_name.clone(),
            client_cert: raw.client_cert.as_deref().map(|f| resolve_path(base, f)),
            client_key: raw.client_key.as_deref().map(|f| resolve_path(base, f)),
        };
        match crate::upstream_tls::UpstreamTls::build(&urls[0].host, &settings) {
            Ok(t) => Some(Arc::new(t)),
            Err(errors) => {
                for (key, msg) in errors {
                    c.err(&p.key(key), msg);
                }
                None
            }
        }
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
    let read_timeout = opt_duration(
        c,
        &p.key("read_timeout"),
        raw.read_timeout.as_deref(),
        Duration::from_secs(3600),
    );
    let write_timeout = opt_duration(
        c,
        &p.key("write_timeout"),
        raw.write_timeout.as_deref(),
        Duration::from_secs(60),
    );
    let connect_timeout = opt_duration(
        c,
        &p.key("connect_timeout"),
        raw.connect_timeout.as_deref(),
        Duration::from_secs(10),
    );
    for (k, d) in [
        ("read_timeout", read_timeout),
        ("write_timeout", write_timeout),
        ("connect_timeout", connect_timeout),
    ] {
        if d.is_zero() {
            c.err(&p.key(k), "must be longer than 0");
        }
    }
    Some(Upstream {
        urls,
        read_timeout,
        write_timeout,
        connect_timeout,
        preserve_host: raw.preserve_host,
        tls,
    })
}

fn parse_upstream_url(s: &str) -> Result<UpstreamUrl, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
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

#[cfg(test)]
pub(super) fn prefix_matches_for_test(prefix: &str, path: &str) -> bool {
    prefix_matches(prefix, path)
}

//! The validated configuration model. Built once from the raw layer; nothing else reads YAML.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::acme::{build_acme, AcmeConfig, Challenge};
use super::admin::AdminConfig;
use super::audit::{build_audit, AuditConfig};
use super::auth::AuthConfig;
use super::host::build_host;
use super::listen::{
    build_limits, build_listen, build_timeouts, build_trusted_proxies, ClientTimeouts, Limits,
    Listen,
};
use super::policy::Policy;
use super::rate::RateLimit;
use super::raw::{RawConfig, RawHost};
use super::storage::StorageConfig;
use super::upstream::Upstream;
use super::{Collector, KeyPath};
use crate::names::HostName;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    pub listen: Listen,
    /// Certificates, keys and ACME accounts: a directory, or Redis.
    pub storage: StorageConfig,
    pub acme: Option<AcmeConfig>,
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub watch_interval: Duration,
    pub timeouts: ClientTimeouts,
    pub limits: Limits,
    /// Proxies in front of this one whose forwarding headers are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The host served to TLS clients that send no SNI.
    pub default_host: Option<HostName>,
    /// Hosts in file order.
    pub hosts: Vec<Arc<Host>>,
    /// The audit log of MCP calls.
    pub audit: AuditConfig,
    /// Who may read `/metrics` and `/status`: a bearer token, a client certificate, both.
    pub admin: AdminConfig,
}

impl Config {
    /// The host serving `name` (primary name or alias; else the one whose wildcard covers it).
    pub fn host(&self, name: &str) -> Option<&Arc<Host>> {
        let exact = |n: &str| {
            self.hosts
                .iter()
                .find(|h| h.names().any(|x| x.as_str() == n))
        };
        exact(name).or_else(|| crate::names::wildcard_of(name).and_then(|w| exact(&w)))
    }

    /// The name a TLS handshake's certificate is chosen by: its SNI, or without one (a client
    /// connecting to an IP address) the default host.
    pub fn tls_name<'a>(&'a self, sni: Option<&'a str>) -> Option<&'a str> {
        sni.or(self.default_host.as_ref().map(HostName::as_str))
    }

    /// The ACME challenge `host` proves its names with.
    pub fn challenge(&self, host: &Host) -> Challenge {
        challenge_for(host, self.acme.as_ref(), self.listen.http.is_some())
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
            Self::Acme => "acme",
            Self::SelfSigned => "self-signed",
            Self::None => "none",
            Self::Files { .. } => "files",
        }
    }
}

/// One served host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: HostName,
    pub aliases: Vec<HostName>,
    pub tls: TlsSource,
    /// `tls: auto` chose `tls` (by the Public Suffix List).
    pub tls_auto: bool,
    /// Normalised origins (`scheme://host[:port]`); `None` means any Origin is accepted.
    pub allowed_origins: Option<Vec<String>>,
    /// Sorted longest prefix first.
    pub routes: Vec<Route>,
    /// `challenge:` of the host, over `acme.challenge`.
    pub challenge: Option<Challenge>,
}

impl Host {
    /// Primary name and aliases.
    pub fn names(&self) -> impl Iterator<Item = &HostName> {
        std::iter::once(&self.name).chain(self.aliases.iter())
    }
    /// Whether `name` is one of its names or covered by one of its wildcards.
    pub fn serves(&self, name: &str) -> bool {
        let wildcard = crate::names::wildcard_of(name);
        self.names()
            .any(|n| n.as_str() == name || wildcard.as_deref() == Some(n.as_str()))
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
    /// Who may call: the route's own `auth`, else the host's; `None`: anyone.
    pub auth: Option<Arc<AuthConfig>>,
    /// The route's own `rate_limit`, else the host's; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    pub mcp: McpOptions,
    /// Which caller may make which MCP call: the route's own `policy`, else the host's.
    pub policy: Option<Arc<Policy>>,
}

/// How the edge reads the MCP traffic of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpOptions {
    /// Read calls and outcomes for metrics and the access log.
    pub observe: bool,
    /// Names counted by name per route before `_other`.
    pub max_tools: usize,
    /// Refuse POSTs whose MCP headers disagree with their body (-32020).
    pub validate: bool,
    /// With `validate`, refuse protocol versions that predate header validation.
    pub strict: bool,
}

impl Default for McpOptions {
    fn default() -> Self {
        Self {
            observe: true,
            max_tools: 50,
            validate: false,
            strict: false,
        }
    }
}

const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 15m, 1h, 30d ({e})"))?;
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 10 years"));
    }
    Ok(d)
}

/// Most worker threads `threads` may ask for.
const MAX_THREADS: usize = 1024;

pub(super) fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(super) fn opt_duration(
    c: &mut Collector,
    path: &KeyPath,
    v: Option<&str>,
    default: Duration,
) -> Duration {
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
    let listen = build_listen(&raw.listen, base, &root.key("listen"), c);
    let storage = super::storage::build_storage(raw.storage.clone(), base, c);
    let threads = build_threads(raw.threads, &root.key("threads"), c);
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
    let timeouts = build_timeouts(&raw.timeouts, &root.key("timeouts"), c);
    let limits = build_limits(&raw.limits, &root.key("limits"), c);
    let trusted_proxies =
        build_trusted_proxies(&raw.trusted_proxies, &root.key("trusted_proxies"), c);
    let acme = raw.acme.map(|a| build_acme(a, base, &root.key("acme"), c));
    let audit = build_audit(raw.audit, base, &root.key("audit"), c);
    let admin = super::admin::build_admin(raw.admin, base, &root.key("admin"), c);
    let hosts = build_hosts(raw.hosts, base, &root.key("hosts"), c);
    check_acme_hosts(&hosts, acme.as_ref(), listen.http.is_some(), &root, c);
    let default_host = build_default_host(
        raw.default_host.as_deref(),
        &hosts,
        &root.key("default_host"),
        c,
    );

    Some(Config {
        file: file.to_path_buf(),
        listen,
        storage,
        acme,
        threads,
        shutdown_grace,
        watch_interval,
        timeouts,
        limits,
        trusted_proxies,
        default_host,
        hosts,
        audit,
        admin,
    })
}

fn build_threads(raw: Option<usize>, p: &KeyPath, c: &mut Collector) -> usize {
    match raw {
        Some(0) => {
            c.err(p, "must be at least 1");
            1
        }
        Some(n) if n > MAX_THREADS => {
            c.err(
                p,
                format!("{n} is more than {MAX_THREADS} (about one per core is right)"),
            );
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn build_hosts(
    raw: serde_yaml_ng::Mapping,
    base: &Path,
    hp: &KeyPath,
    c: &mut Collector,
) -> Vec<Arc<Host>> {
    let mut hosts: Vec<Arc<Host>> = Vec::new();
    if raw.is_empty() {
        c.err(hp, "no hosts configured: add at least one under `hosts:`");
    }
    for (k, v) in raw {
        let Value::String(name) = k else {
            c.err(hp, format!("host keys must be strings, found {k:?}"));
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
    hosts
}

/// `tls: acme` hosts need an `acme:` block whose terms are accepted, and DNS names.
fn check_acme_hosts(
    hosts: &[Arc<Host>],
    acme: Option<&AcmeConfig>,
    port_80: bool,
    root: &KeyPath,
    c: &mut Collector,
) {
    let hp = root.key("hosts");
    let mut acme_hosts = hosts.iter().filter(|h| h.tls == TlsSource::Acme).peekable();
    let Some(first) = acme_hosts.peek() else {
        return;
    };
    match acme {
        None => c.err(
            &hp.key(first.name.as_str()).key("tls"),
            "`tls: acme` needs an `acme:` block (directory, contact, accept_terms)",
        ),
        Some(a) if !a.accept_terms => c.err(
            &root.key("acme").key("accept_terms"),
            "must be true to obtain certificates (you agree to the CA's terms of service)",
        ),
        _ => {}
    }
    for h in acme_hosts {
        let challenge = challenge_for(h, acme, port_80);
        let at = if h.challenge.is_some() {
            hp.key(h.name.as_str()).key("challenge")
        } else {
            root.key("acme").key("challenge")
        };
        if challenge == Challenge::Http01 && !port_80 {
            c.err(
                &at,
                "http-01 needs port 80, and `listen.http` is none: use tls-alpn-01",
            );
        }
        if let Some(w) = h.names().find(|n| n.is_wildcard()) {
            if challenge != Challenge::Dns01 {
                c.err(
                    &at,
                    format!("{w}: a wildcard can be proved with dns-01 only"),
                );
            }
        }
        if challenge == Challenge::Dns01 {
            if acme.is_some_and(|a| a.dns.is_none()) {
                c.err(
                    &root.key("acme").key("dns"),
                    format!(
                        "{}: dns-01 needs `acme.dns` (provider rfc2136 or exec)",
                        h.name
                    ),
                );
            }
            if let Some(ip) = h.names().find(|n| n.is_ip()) {
                c.err(&at, format!("{ip}: dns-01 cannot prove an IP address"));
            }
        }
    }
}

/// The challenge `host` proves its names with: its own, else DNS-01 for a wildcard, else
/// `acme.challenge`, else HTTP-01 when port 80 is open and TLS-ALPN-01 when it is not.
pub(super) fn challenge_for(host: &Host, acme: Option<&AcmeConfig>, port_80: bool) -> Challenge {
    // A wildcard can be proved with DNS-01 only: that is its default.
    let wildcard = host
        .names()
        .any(HostName::is_wildcard)
        .then_some(Challenge::Dns01);
    host.challenge
        .or(wildcard)
        .or(acme.and_then(|a| a.challenge))
        .unwrap_or(if port_80 {
            Challenge::Http01
        } else {
            Challenge::TlsAlpn01
        })
}

/// Clients send no SNI to an IP address: such a host needs a certificate chosen without one.
fn build_default_host(
    raw: Option<&str>,
    hosts: &[Arc<Host>],
    dp: &KeyPath,
    c: &mut Collector,
) -> Option<HostName> {
    let tls_hosts = || hosts.iter().filter(|h| h.tls != TlsSource::None);
    match raw.map(HostName::parse) {
        Some(Ok(name)) => match tls_hosts().find(|h| h.serves(name.as_str())) {
            Some(h) => Some(h.name.clone()),
            None => {
                c.err(dp, format!("{name} is not a name of a host with TLS"));
                None
            }
        },
        Some(Err(e)) => {
            c.err(dp, e.to_string());
            None
        }
        None => {
            let mut ip_hosts = tls_hosts().filter(|h| h.names().any(HostName::is_ip));
            match (ip_hosts.next(), ip_hosts.next()) {
                (Some(h), None) => Some(h.name.clone()),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
pub(super) fn prefix_matches_for_test(prefix: &str, path: &str) -> bool {
    prefix_matches(prefix, path)
}

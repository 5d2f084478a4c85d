//! The validated configuration model. Built once from the raw layer; nothing else reads YAML.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::acme::{build_acme, AcmeConfig, Challenge};
use super::auth::{AuthConfig, RateLimit};
use super::host::build_host;
use super::raw::{RawConfig, RawHost, RawLimits, RawListen, RawTimeouts};
use super::storage::StorageConfig;
use super::upstream::{parse_size, Upstream};
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
}

impl Config {
    /// The host serving `name` (primary name or alias), if any.
    pub fn host(&self, name: &str) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.serves(name))
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

/// How long a client may take, or stay idle, before the connection is closed. Long, quiet
/// streams are not bounded by any of these: an open request keeps its connection busy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// An HTTP/1 request header, from its first byte to its end (nginx: 60s per header).
    pub header: Duration,
    /// An HTTP/1 connection idle between requests (nginx: 75s).
    pub keepalive: Duration,
    /// An HTTP/2 connection with no open stream.
    pub h2_idle: Duration,
    /// An HTTP/2 client's preface and settings, from the end of the TLS handshake.
    pub h2_handshake: Duration,
    /// One write to a client that stopped reading (nginx `send_timeout`: 60s).
    pub write: Duration,
    /// A TLS handshake, from the connection's accept.
    pub tls_handshake: Duration,
}

/// What clients may hold open or send. Beyond a connection cap a connection is closed before
/// its handshake; a request header over the limits gets 431.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections; `None`: half the open-files limit, known at start.
    pub connections: Option<usize>,
    /// Open client connections per address (IPv6: per /64); `None`: 1024, at most half of the
    /// total.
    pub connections_per_address: Option<usize>,
    /// Largest HTTP/1 request header, bytes.
    pub header_size: usize,
    /// Most request header fields.
    pub header_count: usize,
    /// HTTP/2 streams open at once per connection.
    pub h2_streams: u32,
}

impl Limits {
    /// The total and per-address connection caps, given the open-files limit.
    pub fn connection_caps(&self, open_files: u64) -> (usize, usize) {
        // Each client connection may hold an upstream connection too; some descriptors are
        // kept for listeners, files and the admin listener.
        let budget = usize::try_from(open_files.saturating_sub(64) / 2).unwrap_or(usize::MAX);
        let total = self.connections.unwrap_or(budget.max(1));
        let per_address = self
            .connections_per_address
            .unwrap_or_else(|| DEFAULT_PER_ADDRESS.min(total.div_ceil(2)));
        (total, per_address)
    }
}

const DEFAULT_PER_ADDRESS: usize = 1024;

/// Listen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `None`: `listen.http: none`, no port 80.
    pub http: Option<SocketAddr>,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    /// Port put in http→https redirects (443 is left out of the URL).
    pub redirect_https_port: u16,
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
    /// Who may call: the route's own `auth`, else the host's; `None`: anyone.
    pub auth: Option<Arc<AuthConfig>>,
    /// The route's own `rate_limit`, else the host's; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    pub mcp: McpOptions,
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
    let listen = build_listen(&raw.listen, &root.key("listen"), c);
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
    let trusted_proxies = build_trusted_proxies(&raw.trusted_proxies, &root.key("trusted_proxies"), c);
    let acme = raw.acme.map(|a| build_acme(a, base, &root.key("acme"), c));
    let hosts = build_hosts(raw.hosts, base, &root.key("hosts"), c);
    check_acme_hosts(&hosts, acme.as_ref(), listen.http.is_some(), &root, c);
    let default_host = build_default_host(raw.default_host.as_deref(), &hosts, &root.key("default_host"), c);

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
    })
}

fn build_listen(raw: &RawListen, lp: &KeyPath, c: &mut Collector) -> Listen {
    let https = listen_addr(c, &lp.key("https"), raw.https.as_deref(), "0.0.0.0:443");
    let listen = Listen {
        http: match raw.http.as_deref() {
            Some("none") => None,
            v => Some(listen_addr(c, &lp.key("http"), v, "0.0.0.0:80")),
        },
        https,
        metrics: listen_addr(
            c,
            &lp.key("metrics"),
            raw.metrics.as_deref(),
            "127.0.0.1:9100",
        ),
        redirect_https_port: raw.redirect_https_port.unwrap_or(https.port()),
    };
    let ports: Vec<(&str, SocketAddr)> = [
        ("http", listen.http),
        ("https", Some(listen.https)),
        ("metrics", Some(listen.metrics)),
    ]
    .into_iter()
    .filter_map(|(k, a)| Some((k, a?)))
    .collect();
    for (i, (a, x)) in ports.iter().enumerate() {
        for (b, y) in &ports[i + 1..] {
            // 0.0.0.0:P (or [::]:P) takes port P on every address: nothing else can bind it.
            let overlap = x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified();
            if x.port() != 0 && x.port() == y.port() && overlap {
                c.err(
                    &lp.key(b),
                    format!("{y} overlaps listen.{a} ({x}): both cannot be bound"),
                );
            }
        }
    }
    listen
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

fn build_timeouts(t: &RawTimeouts, tp: &KeyPath, c: &mut Collector) -> ClientTimeouts {
    let mut timeout = |key: &str, v: Option<&str>, default: Duration| {
        let d = opt_duration(c, &tp.key(key), v, default);
        if d < Duration::from_secs(1) {
            c.err(&tp.key(key), "must be at least 1s");
        }
        d
    };
    ClientTimeouts {
        header: timeout("header", t.header.as_deref(), Duration::from_secs(30)),
        keepalive: timeout("keepalive", t.keepalive.as_deref(), Duration::from_secs(60)),
        h2_idle: timeout("h2_idle", t.h2_idle.as_deref(), Duration::from_secs(60)),
        h2_handshake: timeout(
            "h2_handshake",
            t.h2_handshake.as_deref(),
            Duration::from_secs(10),
        ),
        write: timeout("write", t.write.as_deref(), Duration::from_secs(60)),
        tls_handshake: timeout(
            "tls_handshake",
            t.tls_handshake.as_deref(),
            Duration::from_secs(10),
        ),
    }
}

fn build_trusted_proxies(raw: &[String], tpp: &KeyPath, c: &mut Collector) -> Vec<ipnet::IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let parsed = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => Some(net.trunc()),
                Err(_) => {
                    c.err(
                        &tpp.index(i),
                        format!("{s:?} is not an IP address or CIDR range (10.0.0.0/8)"),
                    );
                    None
                }
            }
        })
        .collect()
}

fn build_hosts(raw: serde_yaml_ng::Mapping, base: &Path, hp: &KeyPath, c: &mut Collector) -> Vec<Arc<Host>> {
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
        if challenge == Challenge::Http01 && !port_80 {
            let at = if h.challenge.is_some() {
                hp.key(h.name.as_str()).key("challenge")
            } else {
                root.key("acme").key("challenge")
            };
            c.err(
                &at,
                "http-01 needs port 80, and `listen.http` is none: use tls-alpn-01",
            );
        }

    }
}

/// The challenge `host` proves its names with: its own, else `acme.challenge`, else HTTP-01
/// when port 80 is open and TLS-ALPN-01 when it is not.
pub(super) fn challenge_for(host: &Host, acme: Option<&AcmeConfig>, port_80: bool) -> Challenge {
    host.challenge
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

/// Header fields the HTTP/1 parser can hold.
const MAX_HEADER_COUNT: usize = 256;

fn build_limits(raw: &RawLimits, p: &KeyPath, c: &mut Collector) -> Limits {
    let mut at_least_one = |key: &str, v: Option<usize>| {
        if v == Some(0) {
            c.err(&p.key(key), "must be at least 1");
        }
        v.filter(|&n| n > 0)
    };
    let connections = at_least_one("connections", raw.connections);
    let connections_per_address =
        at_least_one("connections_per_address", raw.connections_per_address);
    if let (Some(total), Some(per)) = (connections, connections_per_address) {
        if per > total {
            c.err(
                &p.key("connections_per_address"),
                format!("{per} is more than limits.connections ({total})"),
            );
        }
    }
    let header_size = match raw.header_size.as_ref().map(parse_size) {
        None => 32 * 1024,
        Some(Ok(n)) if (1024..=1024 * 1024).contains(&n) => n as usize,
        Some(Ok(n)) => {
            c.err(
                &p.key("header_size"),
                format!("{n} bytes: must be between 1KiB and 1MiB"),
            );
            32 * 1024
        }
        Some(Err(e)) => {
            c.err(&p.key("header_size"), e);
            32 * 1024
        }
    };
    let header_count = match raw.header_count {
        None => 100,
        Some(n) if (1..=MAX_HEADER_COUNT).contains(&n) => n,
        Some(n) => {
            c.err(
                &p.key("header_count"),
                format!("{n}: must be between 1 and {MAX_HEADER_COUNT}"),
            );
            100
        }
    };
    let h2_streams = match raw.h2_streams {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(n) => {
            c.err(
                &p.key("h2_streams"),
                format!("{n}: must be between 1 and 1000"),
            );
            100
        }
    };
    Limits {
        connections,
        connections_per_address,
        header_size,
        header_count,
        h2_streams,
    }
}

#[cfg(test)]
pub(super) fn prefix_matches_for_test(prefix: &str, path: &str) -> bool {
    prefix_matches(prefix, path)
}

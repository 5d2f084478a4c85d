//! The server's own settings: listen addresses, client timeouts and limits, trusted proxies.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::model::opt_duration;
use super::raw::{RawLimits, RawListen, RawTimeouts};
use super::upstream::parse_size;
use super::{Collector, KeyPath};

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
    /// Largest HTTP/1 request header, bytes (and HTTP/2 header list, as HTTP/2 counts it).
    pub header_size: usize,
    /// Most request header fields.
    pub header_count: usize,
    /// HTTP/2 streams open at once per connection.
    pub h2_streams: u32,
}

impl Limits {
    /// The total and per-address connection caps, given the open-files limit.
    pub fn connection_caps(&self, open_files: u64) -> (usize, usize) {
        // As many upstream connections in use as client connections (`UpstreamGate` holds
        // them to it, HTTP/2 streams included); the idle upstream pool and 64 more (listeners,
        // files, outbound clients, the admin listener) are kept aside.
        let reserved = 64 + UPSTREAM_POOL_SIZE as u64;
        let budget = usize::try_from(open_files.saturating_sub(reserved) / 2).unwrap_or(usize::MAX);
        // A cap the descriptors cannot back would end in "too many open files": lowered (and
        // said at start, see `caps_warning`).
        let total = self.connections.unwrap_or(budget).min(budget).max(1);
        let per_address = self
            .connections_per_address
            .unwrap_or_else(|| DEFAULT_PER_ADDRESS.min(total.div_ceil(2)));
        (total, per_address)
    }
}

const DEFAULT_PER_ADDRESS: usize = 1024;

/// Idle upstream connections the proxy keeps (`upstream::idle`), over all upstreams.
pub const UPSTREAM_POOL_SIZE: usize = 256;

impl Limits {
    /// The warning of a `limits.connections` the open-files limit cannot back, if it is one.
    pub fn caps_warning(&self, open_files: u64) -> Option<String> {
        let configured = self.connections?;
        let (total, _) = self.connection_caps(open_files);
        (total < configured).then(|| {
            format!(
                "limits.connections {configured} needs about {} open files, the limit is {open_files}: lowered to {total} (raise LimitNOFILE / ulimit -n)",
                configured * 2 + 64 + UPSTREAM_POOL_SIZE
            )
        })
    }
}

/// Listen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// `None`: `listen.http: none`, no port 80.
    pub http: Option<SocketAddr>,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    /// Port put in http→https redirects (443 is left out of the URL).
    pub redirect_https_port: u16,
    /// Where a new process waits for the listening sockets of the running one (`run
    /// --upgrade-from`); the running one sends them there on SIGQUIT.
    pub upgrade_socket: PathBuf,
    /// Whether the https listener lets clients resume TLS sessions.
    pub session_resumption: bool,
}

/// `listen.metrics` when the file names none.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9100";

/// The upgrade socket's default: systemd's `RuntimeDirectory=mcp-edge` (a directory only the
/// service's user can write, so nobody else can stand in for the new process).
pub const DEFAULT_UPGRADE_SOCKET: &str = "/run/mcp-edge/upgrade.sock";

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

pub(super) fn build_listen(
    raw: &RawListen,
    base: &Path,
    lp: &KeyPath,
    c: &mut Collector,
) -> Listen {
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
            DEFAULT_METRICS,
        ),
        redirect_https_port: raw.redirect_https_port.unwrap_or(https.port()),
        upgrade_socket: match raw.upgrade_socket.as_deref() {
            Some("") => {
                c.err(&lp.key("upgrade_socket"), "must be a path");
                PathBuf::new()
            }
            Some(p) => base.join(p),
            None => PathBuf::from(DEFAULT_UPGRADE_SOCKET),
        },
        session_resumption: raw.session_resumption.unwrap_or(true),
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

pub(super) fn build_timeouts(t: &RawTimeouts, tp: &KeyPath, c: &mut Collector) -> ClientTimeouts {
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

pub(super) fn build_trusted_proxies(
    raw: &[String],
    tpp: &KeyPath,
    c: &mut Collector,
) -> Vec<ipnet::IpNet> {
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

/// Header fields the HTTP/1 parser can hold.
const MAX_HEADER_COUNT: usize = 256;

pub(super) fn build_limits(raw: &RawLimits, p: &KeyPath, c: &mut Collector) -> Limits {
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

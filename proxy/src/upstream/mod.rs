//! Reaching a backend: its replicas and round robin, DNS, HTTPS trust and the connector that
//! makes its TLS connections, and session affinity (sealing the replica into session ids).
//!
//! A [`Pool`] is built from one `upstream:` of the configuration and lives in the route table;
//! a reload builds new pools, so nothing made under an old configuration is reused under a new
//! one (pooled HTTPS connections are keyed by the contents of their trust, too).

pub mod affinity;
pub mod health;
pub mod idle;
pub mod trust;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pingora::protocols::l4::ext::TcpKeepalive;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Upstream, UpstreamUrl};
pub use trust::TrustError;
use trust::{TlsConnect, UpstreamTls};

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(10);
/// How long an idle pooled upstream connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a replica whose connection failed stays out of the round robin.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

/// The replicas of one upstream, with round-robin state, a small DNS cache and, for HTTPS, the
/// prepared TLS connector.
pub struct Pool {
    pub upstream: Upstream,
    /// HTTPS: the connector (pins, per-upstream CA, client certificate) and its pool key.
    tls: Option<(Arc<TlsConnect>, u64)>,
    next: AtomicUsize,
    dns: Mutex<HashMap<usize, (Instant, SocketAddr)>>,
    /// Per replica: whether it takes requests.
    health: Mutex<Vec<ReplicaHealth>>,
    /// When the active health check next probes the replicas.
    next_probe: Mutex<Option<Instant>>,
}

#[derive(Clone, Copy, Default)]
struct ReplicaHealth {
    /// Out of the round robin until this moment after a failed connection (passive).
    down_until: Option<Instant>,
    /// Its last active probe failed: out until one passes.
    probe_failed: bool,
}

impl ReplicaHealth {
    fn is_up(&self, now: Instant) -> bool {
        !self.probe_failed && self.down_until.is_none_or(|until| now >= until)
    }
}

impl Pool {
    /// The pool for one configured upstream; builds its TLS client when it speaks HTTPS.
    pub fn build(upstream: &Upstream) -> Result<Self, TrustError> {
        let tls = match &upstream.tls {
            Some(settings) => {
                let tls = Arc::new(UpstreamTls::build(settings)?);
                let key = tls.group_key;
                Some((tls.connector(upstream.connect_timeout), key))
            }
            None => None,
        };
        Ok(Self {
            upstream: upstream.clone(),
            tls,
            next: AtomicUsize::new(0),
            dns: Mutex::new(HashMap::new()),
            health: Mutex::new(vec![ReplicaHealth::default(); upstream.urls.len()]),
            next_probe: Mutex::new(None),
        })
    }

    /// Several replicas: session ids are sealed so each session sticks to its replica.
    pub fn is_replicated(&self) -> bool {
        self.upstream.urls.len() > 1
    }

    /// The next replica in round-robin order, skipping replicas out after a failed
    /// connection (all of them out: plain round robin, so the first to recover is found).
    pub fn next_replica(&self) -> usize {
        let n = self.upstream.urls.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.is_up(i))
            .unwrap_or(start % n)
    }

    /// Changes replica `i`'s health with `f`; returns whether it was up before and is after.
    fn update_health(&self, i: usize, f: impl FnOnce(&mut ReplicaHealth)) -> (bool, bool) {
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match health.get_mut(i) {
            Some(h) => {
                let before = h.is_up(now);
                f(h);
                (before, h.is_up(now))
            }
            None => (false, false),
        }
    }

    /// Whether replica `i` takes requests (it is not out after a failed connection or probe).
    pub fn is_up(&self, i: usize) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.get(i).is_some_and(|h| h.is_up(Instant::now()))
    }

    /// Takes replica `i` out of the round robin for [`DOWN_FOR`]; returns whether it was up.
    pub fn mark_down(&self, i: usize) -> bool {
        self.update_health(i, |h| h.down_until = Some(Instant::now() + DOWN_FOR))
            .0
    }

    /// Replica `i` answered a request: its failed connections are forgotten (a failed probe
    /// is not: only a probe brings it back).
    pub fn mark_up(&self, i: usize) {
        self.update_health(i, |h| h.down_until = None);
    }

    /// How many replicas take requests now.
    pub fn up_count(&self) -> usize {
        (0..self.upstream.urls.len())
            .filter(|&i| self.is_up(i))
            .count()
    }

    /// The replica whose normalised URL is `url`.
    pub fn replica_by_url(&self, url: &str) -> Option<usize> {
        self.upstream.urls.iter().position(|u| u.url == url)
    }

    pub fn url(&self, i: usize) -> &UpstreamUrl {
        &self.upstream.urls[i]
    }

    /// The socket address of replica `i`: IP literals directly, names through the resolver with
    /// a short cache so a busy route does not resolve on every request.
    pub async fn address(&self, i: usize) -> std::io::Result<SocketAddr> {
        let u = &self.upstream.urls[i];
        if let Ok(ip) = u.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, u.port));
        }
        let cached = self
            .dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&i)
            .filter(|(at, _)| at.elapsed() < DNS_TTL)
            .map(|(_, a)| *a);
        if let Some(a) = cached {
            return Ok(a);
        }
        let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} has no address", u.host)))?;
        self.dns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(i, (Instant::now(), addr));
        Ok(addr)
    }

    /// pingora's peer for a replica at `addr`: timeouts, keep-alive and, for HTTPS, our
    /// connector.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let up = &self.upstream;
        let mut peer = HttpPeer::new(addr, false, String::new());
        if let Some((connector, group_key)) = &self.tls {
            // TLS is made by our connector; pingora speaks HTTP/1.1 over the secured stream.
            peer.options.custom_l4 = Some(connector.clone());
            peer.group_key = *group_key;
        }
        peer.options.connection_timeout = Some(up.connect_timeout);
        peer.options.read_timeout = Some(up.read_timeout);
        peer.options.response_header_timeout = Some(up.response_header_timeout);
        peer.options.write_timeout = Some(up.write_timeout);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        // Detects a vanished upstream under a quiet stream long before the read timeout.
        peer.options.tcp_keepalive = Some(TcpKeepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::from_secs(0),
        });
        peer
    }
}

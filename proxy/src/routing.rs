//! The route table: built from a validated [`Config`], swapped whole on reload.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Host, Upstream, UpstreamUrl};

/// How long a resolved upstream address is reused.
const DNS_TTL: Duration = Duration::from_secs(10);

/// Hosts by every name they answer to, with their upstream pools.
pub struct Table {
    pub config: Arc<Config>,
    by_name: HashMap<String, Arc<HostEntry>>,
}

pub struct HostEntry {
    pub host: Arc<Host>,
    /// In the order of `host.routes`, so `Host::route_index` indexes both.
    pub routes: Vec<RouteEntry>,
}

pub struct RouteEntry {
    pub path: String,
    pub pool: Arc<Pool>,
}

/// The replicas of one upstream, with round-robin state and a small DNS cache.
pub struct Pool {
    pub upstream: Upstream,
    next: AtomicUsize,
    dns: Mutex<HashMap<usize, (Instant, SocketAddr)>>,
}

impl Table {
    pub fn new(config: Arc<Config>) -> Table {
        let mut by_name = HashMap::new();
        for host in &config.hosts {
            let entry = Arc::new(HostEntry {
                host: host.clone(),
                routes: host
                    .routes
                    .iter()
                    .map(|r| RouteEntry {
                        path: r.path.clone(),
                        pool: Arc::new(Pool::new((*r.upstream).clone())),
                    })
                    .collect(),
            });
            for n in host.names() {
                by_name.insert(n.as_str().to_string(), entry.clone());
            }
        }
        Table { config, by_name }
    }

    /// The host answering to `name` (lower case, no port).
    pub fn host(&self, name: &str) -> Option<&Arc<HostEntry>> {
        self.by_name.get(name)
    }
}

impl Pool {
    fn new(upstream: Upstream) -> Pool {
        Pool {
            upstream,
            next: AtomicUsize::new(0),
            dns: Mutex::new(HashMap::new()),
        }
    }

    /// Several replicas: session ids are sealed so each session sticks to its replica.
    pub fn is_replicated(&self) -> bool {
        self.upstream.urls.len() > 1
    }

    /// The next replica in round-robin order.
    pub fn next_replica(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.upstream.urls.len()
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
}

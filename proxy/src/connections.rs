//! Connection caps: how many client connections are open at once, in total and per client
//! address. pingora asks before a connection's handshake (`ConnectionGate`), so a refused one
//! costs an accept and a close, nothing more, and one address cannot take every descriptor.
//!
//! The upstream connections requests use are held to the same caps (`UpstreamGate`), in total
//! and per client: the descriptor budget gives each client connection one, and the streams of
//! one HTTP/2 connection could otherwise hold `limits.h2_streams` each.
//!
//! The caps are read from the live configuration on every accept, so a reload changes them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use pingora::apps::Permit;
use prometheus::IntGauge;

use crate::live::Live;
use crate::metrics;

/// Places under the connection caps of the live configuration, counted in total and per
/// client address.
#[derive(Debug)]
struct Gate {
    live: Arc<Live>,
    /// The process's open-files limit, from which the default caps are derived.
    open_files: u64,
    counts: Arc<Mutex<Counts>>,
}

impl Gate {
    fn new(live: Arc<Live>, open_files: u64) -> Self {
        Self {
            live,
            open_files,
            counts: Arc::default(),
        }
    }

    /// A place for `client`. A trusted proxy carries many clients: only the total applies to
    /// it. `gauge`: set to the places taken.
    fn take(&self, client: Option<IpAddr>, gauge: &'static IntGauge) -> Result<Held, Cap> {
        let snap = self.live.load();
        let config = &snap.config;
        let caps = config.limits.connection_caps(self.open_files);
        let address = client
            .map(|ip| ip.to_canonical())
            .filter(|ip| !config.trusted_proxies.iter().any(|n| n.contains(ip)))
            .map(crate::limits::address_key);
        Counts::take(&self.counts, address, caps, gauge)
    }
}

/// Counts open client connections and admits new ones within the configured caps.
#[derive(Debug)]
pub struct ConnectionGate(Gate);

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses with an open connection have an entry: bounded by the total cap.
    by_address: HashMap<IpAddr, usize>,
}

impl Counts {
    /// One more place for `address` within the caps: `Err`: which cap refused it.
    /// `gauge`: set to the total whenever it changes.
    fn take(
        counts: &Arc<Mutex<Self>>,
        address: Option<IpAddr>,
        (total_cap, per_address_cap): (usize, usize),
        gauge: &'static IntGauge,
    ) -> Result<Held, Cap> {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= total_cap {
            return Err(Cap::Total);
        }
        if let Some(a) = address {
            let n = c.by_address.entry(a).or_insert(0);
            if *n >= per_address_cap {
                return Err(Cap::PerAddress);
            }
            *n += 1;
        }
        c.total += 1;
        gauge.set(c.total as i64);
        Ok(Held {
            counts: counts.clone(),
            address,
            gauge,
        })
    }
}

/// The cap that refused a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Total,
    PerAddress,
}

/// A place within the caps; dropping it frees it.
#[derive(Debug)]
pub struct Held {
    counts: Arc<Mutex<Counts>>,
    address: Option<IpAddr>,
    gauge: &'static IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(a) = self.address {
            if let Some(n) = c.by_address.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    c.by_address.remove(&a);
                }
            }
        }
        self.gauge.set(c.total as i64);
    }
}

impl ConnectionGate {
    pub fn new(live: Arc<Live>, open_files: u64) -> Self {
        Self(Gate::new(live, open_files))
    }
}

impl pingora::apps::ConnectionGate for ConnectionGate {
    fn admit(&self, peer: Option<&SocketAddr>) -> Option<Permit> {
        let gauge = &metrics::get().connections_open;
        match self.0.take(peer.map(SocketAddr::ip), gauge) {
            Ok(held) => Some(Box::new(held)),
            Err(cap) => {
                let reason = match cap {
                    Cap::Total => "connections",
                    Cap::PerAddress => "connections_per_address",
                };
                metrics::get()
                    .connections_refused
                    .with_label_values(&[reason])
                    .inc();
                None
            }
        }
    }
}

/// Upstream connections in use, under the same caps as client connections: the descriptor
/// budget gives each client connection one (`Limits::connection_caps`), and the streams of
/// one HTTP/2 connection could otherwise hold `limits.h2_streams` each. Counted per client,
/// the real one behind `trusted_proxies` (a balancer speaking HTTP/2 carries many).
#[derive(Debug)]
pub struct UpstreamGate(Gate);

impl UpstreamGate {
    pub fn new(live: Arc<Live>, open_files: u64) -> Self {
        Self(Gate::new(live, open_files))
    }

    /// A place for one upstream connection of a request from `client`, held while the
    /// request uses it. A trusted proxy's own requests (no forwarded client it names) count
    /// toward the total only, as its connections do.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<Held, Cap> {
        self.0
            .take(client, &metrics::get().upstream_connections_in_use)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::address_key;

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}

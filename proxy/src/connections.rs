//! Connection caps: how many client connections are open at once, in total and per client
//! address. pingora asks before a connection's handshake (`ConnectionGate`), so a refused one
//! costs an accept and a close, nothing more, and one address cannot take every descriptor.
//!
//! The caps are read from the live configuration on every accept, so a reload changes them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use pingora::apps::Permit;

use crate::live::Live;
use crate::metrics;

/// Counts open client connections and admits new ones within the configured caps.
#[derive(Debug)]
pub struct ConnectionGate {
    live: Arc<Live>,
    /// The process's open-files limit, from which the default caps are derived.
    open_files: u64,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only addresses with an open connection have an entry: bounded by the total cap.
    by_address: HashMap<IpAddr, usize>,
}

/// Held by an admitted connection; dropping it frees its place.
struct Admitted {
    counts: Arc<Mutex<Counts>>,
    address: Option<IpAddr>,
}

impl Drop for Admitted {
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
        metrics::get().connections_open.set(c.total as i64);
    }
}

/// The address a client is counted under: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64, the smallest block one subscriber is commonly given.
impl ConnectionGate {
    pub fn new(live: Arc<Live>, open_files: u64) -> Self {
        Self {
            live,
            open_files,
            counts: Arc::default(),
        }
    }

    fn refuse(reason: &str) -> Option<Permit> {
        metrics::get()
            .connections_refused
            .with_label_values(&[reason])
            .inc();
        None
    }
}

impl pingora::apps::ConnectionGate for ConnectionGate {
    fn admit(&self, peer: Option<&SocketAddr>) -> Option<Permit> {
        let snap = self.live.load();
        let config = &snap.config;
        let (total_cap, per_address_cap) = config.limits.connection_caps(self.open_files);
        // A trusted proxy carries many clients' connections: only the total applies to it.
        let address = peer
            .map(|p| p.ip().to_canonical())
            .filter(|ip| !config.trusted_proxies.iter().any(|n| n.contains(ip)))
            .map(crate::limits::address_key);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= total_cap {
            return Self::refuse("connections");
        }
        if let Some(a) = address {
            let n = c.by_address.entry(a).or_insert(0);
            if *n >= per_address_cap {
                return Self::refuse("connections_per_address");
            }
            *n += 1;
        }
        c.total += 1;
        metrics::get().connections_open.set(c.total as i64);
        Some(Box::new(Admitted {
            counts: self.counts.clone(),
            address,
        }))
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

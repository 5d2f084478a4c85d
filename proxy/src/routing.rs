//! The route table: hosts by every name they answer to, each route with its upstream pool.
//! Built from a validated [`Config`]; part of the live snapshot, replaced whole on reload.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Host};
use crate::names::HostName;
use crate::upstream::{Pool, TrustError};

/// An upstream that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("host {host}, route {route}: {source}")]
pub struct RouteError {
    pub host: HostName,
    pub route: String,
    pub source: TrustError,
}

/// Hosts by every name they answer to, with their upstream pools.
pub struct Table {
    by_name: HashMap<String, Arc<HostEntry>>,
    /// Each host once, in file order.
    hosts: Vec<Arc<HostEntry>>,
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

impl Table {
    /// Builds every host's routes and upstream pools; every upstream that cannot be set up is
    /// reported.
    pub fn build(config: &Config) -> Result<Self, Vec<RouteError>> {
        let mut by_name = HashMap::new();
        let mut hosts = Vec::new();
        let mut errors = Vec::new();
        for host in &config.hosts {
            let mut routes = Vec::new();
            for r in &host.routes {
                match Pool::build(&r.upstream) {
                    Ok(pool) => routes.push(RouteEntry {
                        path: r.path.clone(),
                        pool: Arc::new(pool),
                    }),
                    Err(source) => errors.push(RouteError {
                        host: host.name.clone(),
                        route: r.path.clone(),
                        source,
                    }),
                }
            }
            let entry = Arc::new(HostEntry {
                host: host.clone(),
                routes,
            });
            for n in host.names() {
                by_name.insert(n.as_str().to_string(), entry.clone());
            }
            hosts.push(entry);
        }
        if errors.is_empty() {
            Ok(Self { by_name, hosts })
        } else {
            Err(errors)
        }
    }

    /// The host answering to `name` (lower case, no port).
    pub fn host(&self, name: &str) -> Option<&Arc<HostEntry>> {
        self.by_name.get(name)
    }

    /// Every host once, in file order.
    pub fn hosts(&self) -> &[Arc<HostEntry>] {
        &self.hosts
    }
}

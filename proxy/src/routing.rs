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
    /// Metric labels of the host and the route, made once: requests share them.
    pub host_label: Arc<str>,
    pub label: Arc<str>,
    /// This route's request counters and duration histogram.
    pub series: crate::metrics::RouteSeries,
    pub pool: Arc<Pool>,
    /// The tool (prompt, resource) names this route counts by name.
    pub names: NameLabels,
}

/// Metric labels for names clients send: the first `max` seen are themselves, the rest
/// `_other`, so a client inventing names cannot multiply the series.
pub struct NameLabels {
    max: usize,
    seen: std::sync::Mutex<Vec<String>>,
}

impl NameLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn label(&self, name: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.iter().any(|s| s == name) {
            return name.to_string();
        }
        if seen.len() < self.max {
            seen.push(name.to_string());
            return name.to_string();
        }
        "_other".to_string()
    }

    /// The names counted by name so far.
    pub fn known(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
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
                        host_label: host.name.as_str().into(),
                        label: r.path.as_str().into(),
                        series: crate::metrics::RouteSeries::new(host.name.as_str(), &r.path),
                        pool: Arc::new(pool),
                        names: NameLabels::new(r.mcp.max_tools),
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

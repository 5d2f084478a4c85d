//! The route table: hosts by every name they answer to, each route with its upstream pool.
//! Built from a validated [`Config`]; part of the live snapshot, replaced whole on reload.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, Host, Route};
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
    /// In the order of `host.routes`: `Host::route_index` indexes this list, the one place the
    /// request path reads route data from.
    pub routes: Vec<RouteEntry>,
}

/// Everything the request path knows about one route.
pub struct RouteEntry {
    pub path: String,
    /// The route as configured (auth, limits, MCP options, upstream).
    pub config: Route,
    /// Metric labels of the host and the route, made once: requests share them.
    pub host_label: Arc<str>,
    pub label: Arc<str>,
    /// This route's request counters and duration histogram.
    pub series: crate::metrics::RouteSeries,
    pub pool: Arc<Pool>,
    /// The tool (prompt, resource) names this route counts by name.
    pub names: NameLabels,
}

/// Metric labels for the tools, prompts and resources of a route. A name a client sends is
/// only a claim: it becomes a label once the upstream has vouched for it (listed it, or
/// answered a call to it with a successful result), up to `max` names of at most
/// `MAX_NAME_LABEL` bytes; everything else is `_other`. So strangers inventing names, however
/// many or long, add no series and cannot crowd out the real tools.
pub struct NameLabels {
    max: usize,
    known: std::sync::Mutex<Vec<String>>,
}

pub const OTHER: &str = "_other";

impl NameLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            known: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The label for `name`: itself once vouched for, else `_other`.
    pub fn label(&self, name: &str) -> String {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.iter().any(|k| k == name) {
            name.to_string()
        } else {
            OTHER.to_string()
        }
    }

    /// The upstream vouched for `name`: it gets its own label while there is room.
    pub fn vouch(&self, name: &str) {
        if name.is_empty() || name.len() > crate::mcp::MAX_NAME_LABEL || name == OTHER {
            return;
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() < self.max && !known.iter().any(|k| k == name) {
            known.push(name.to_string());
        }
    }

    /// The names counted by name so far.
    pub fn known(&self) -> Vec<String> {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()
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
                        config: r.clone(),
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
        self.by_name
            .get(name)
            .or_else(|| crate::names::wildcard_of(name).and_then(|w| self.by_name.get(&w)))
    }

    /// Every host once, in file order.
    pub fn hosts(&self) -> &[Arc<HostEntry>] {
        &self.hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_labels_only_when_vouched_for_and_within_bounds() {
        let names = NameLabels::new(2);
        assert_eq!(names.label("search"), OTHER, "a name sent is only a claim");
        names.vouch("search");
        assert_eq!(names.label("search"), "search");
        names.vouch(&"x".repeat(crate::mcp::MAX_NAME_LABEL + 1));
        assert_eq!(names.known(), ["search"], "too long to be a label");
        names.vouch("fetch");
        names.vouch("third");
        assert_eq!(names.label("third"), OTHER, "past max");
        names.vouch("search");
        assert_eq!(names.known(), ["search", "fetch"]);
    }
}

//! mcp-edge: an edge reverse proxy that puts plain-HTTP MCP servers on public HTTPS.
//!
//! Data flow: config → cert sources → cert store → SNI resolver (TLS); config → route table →
//! proxy → upstream. Both the certificate store and the route table are swapped whole at run
//! time (reload, renewed or changed certificates).
#![forbid(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod affinity;
pub mod certs;
pub mod config;
pub mod http01;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod storage;
pub mod tls;
pub mod upstream_tls;

use std::sync::Arc;

use arc_swap::ArcSwap;

/// State shared by the listeners and background tasks.
pub struct Edge {
    /// Hosts and routes of the configuration in force.
    pub table: ArcSwap<routing::Table>,
    /// Certificate sources feeding the live store.
    pub certs: certs::CertSources,
    /// Pending ACME HTTP-01 challenges.
    pub challenges: Arc<http01::ChallengeStore>,
    /// Seals replica identity into client-facing session ids.
    pub sealer: affinity::Sealer,
    /// Wakes the ACME manager after the configuration changed.
    pub acme_wake: tokio::sync::Notify,
}

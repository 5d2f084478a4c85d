//! mcp-edge: an edge reverse proxy that puts plain-HTTP MCP servers on public HTTPS.
//!
//! Data flow: config → cert sources (certs, acme) → certificate set; config → route table with
//! upstream pools; both in one live snapshot (`live`) that the SNI resolver and the request path
//! (`proxy`) read and a reload (`server`) replaces whole. Modules import only from the rows
//! below them:
//!
//! ```text
//! cli, server                commands; assembly and reload
//! proxy, admin               the request path, by phase; metrics, health and the status page
//! access, observe, audit,    access decisions at the door; MCP calls observed and audited; the
//! status, connections,       status page; connection caps; active health checks
//! health
//! live                       the snapshot in force: config, routes, certificates
//! routing                    the route table built from a Config
//! limits, auth               rate budgets; API keys, JWT, introspection
//! upstream                   replicas, DNS, HTTPS trust, sealing
//! acme                       the certificate manager: orders, renewals, challenge solvers
//! certs                      certificate sources: files, self-signed, stored
//! tls, http01, tls_alpn      the certificate set and SNI resolver; HTTP-01, TLS-ALPN-01 answers
//! storage, outbound, reply   every byte persisted; the edge's own HTTPS requests; its answers
//! config                     the YAML's data model: parsed, validated, typed; builds nothing live
//! mcp, path, pem, metrics,   leaves: MCP on the wire, request paths, key material, metrics,
//! time, logs                 clocks, log plumbing
//! names                      host names
//! ```
#![forbid(unsafe_code)]

pub mod access;
pub mod acme;
pub mod admin;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod cli;
pub mod config;
pub mod connections;
pub mod health;
pub mod http01;
pub mod limits;
pub mod live;
pub mod logs;
pub mod mcp;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod outbound;
pub mod path;
pub mod pem;
pub mod proxy;
pub mod reply;
pub mod routing;
pub mod server;
pub mod status;
pub mod storage;
pub mod time;
pub mod tls;
pub mod tls_alpn;
pub mod upstream;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod layers_tests;

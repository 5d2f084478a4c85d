//! The request path, for both listeners: on the HTTP port ACME challenges, redirects and
//! `tls: none` hosts; on the TLS port the MCP traffic of every TLS host. One file per phase, in
//! the order `serve.rs` (the loop every request runs in, HTTP/1 and HTTP/2) calls them:
//!
//! ```text
//! serve.rs      the loop: head, phases, body and response relayed in one task
//! request.rs    request_phase: host, TLS name, Origin, path, route, access, MCP plan, session
//!   plain.rs      the HTTP listener's own answers (challenges, redirects)
//! body.rs       body_phase: limits; the body into the one MCP model; held checks
//! upstream.rs   peer, upstream_head: replica and request head
//! response.rs   response_head, response_chunk: sealing, streams, MCP outcomes
//! finish.rs     connect_failed, proxy_error, proxy_failed, log_request
//! answer.rs     the one writer of every answer the edge makes itself
//! ctx.rs        the state a request carries
//! ```

mod answer;
mod audited;
mod body;
mod ctx;
mod finish;
mod plain;
mod request;
mod response;
mod serve;
mod upstream;

use std::sync::Arc;

use pingora::protocols::http::ServerSession;

use crate::auth::Authenticator;
use crate::http01::ChallengeStore;
use crate::limits::Limiter;
use crate::live::Live;
use crate::observe::LegacyCalls;
use crate::upstream::affinity::Sealer;
pub use ctx::Ctx;
pub use serve::EdgeApp;

/// What the TLS handshake told us, carried on the connection's TLS digest.
#[derive(Debug)]
pub struct TlsInfo {
    /// The name the certificate was chosen by: the SNI, or without one the default host.
    pub server_name: Option<String>,
}

const SESSION_HEADER: &str = "mcp-session-id";

/// The request path. It reads the live snapshot (routes, configuration), answers ACME
/// challenges from the challenge store and seals session ids; nothing else. `serve` drives it.
pub struct EdgeProxy {
    pub live: Arc<Live>,
    pub challenges: Arc<ChallengeStore>,
    pub sealer: Arc<Sealer>,
    pub auth: Arc<Authenticator>,
    /// Every route's rate-limit budgets.
    pub limiter: Arc<Limiter>,
    /// Legacy-transport calls waiting for their answer on their session's stream.
    pub legacy: Arc<LegacyCalls>,
    /// One record per MCP call.
    pub audit: Arc<crate::audit::Audit>,
}

/// A request field as text. Names the `http` crate knows go as its constants (`header::HOST`):
/// a `&str` is parsed as a name again on every lookup.
fn header_str(session: &ServerSession, name: impl http::header::AsHeaderName) -> Option<&str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// The host the client asked for: lower case, without port and trailing dot.
fn request_host(session: &ServerSession) -> Option<String> {
    let raw = session
        .req_header()
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| header_str(session, http::header::HOST))?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

//! The request path, for both listeners: on the HTTP port ACME challenges, redirects and
//! `tls: none` hosts; on the TLS port the MCP traffic of every TLS host. One file per phase, in
//! the order they run; HTTP/1 requests are driven by the edge's own loop (`h1.rs`), HTTP/2
//! streams by pingora-proxy through [`ProxyHttp`]:
//!
//! ```text
//! h1.rs         the HTTP/1 loop: head, phases, body and response relayed in one task
//! request.rs    request_filter: host, TLS name, Origin, path, route, access, MCP plan, session
//!   plain.rs      the HTTP listener's own answers (challenges, redirects)
//! body.rs       request_body_filter: limits; the body into the one MCP model; held checks
//! upstream.rs   upstream_peer, upstream_request_filter: replica and request head
//! response.rs   response_filter, response_body_filter: sealing, streams, MCP outcomes
//! finish.rs     fail_to_connect, fail_to_proxy, logging
//! answer.rs     the one writer of every answer the edge makes itself
//! ctx.rs        the state a request carries
//! ```

mod answer;
mod audited;
mod body;
mod ctx;
mod finish;
mod h1;
mod plain;
mod request;
mod response;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Error;

use crate::auth::Authenticator;
use crate::http01::ChallengeStore;
use crate::limits::Limiter;
use crate::live::Live;
use crate::observe::LegacyCalls;
use crate::upstream::affinity::Sealer;
pub use ctx::Ctx;
pub use h1::EdgeApp;

/// What the TLS handshake told us, carried on the connection's TLS digest.
#[derive(Debug)]
pub struct TlsInfo {
    /// The name the certificate was chosen by: the SNI, or without one the default host.
    pub server_name: Option<String>,
}

const SESSION_HEADER: &str = "mcp-session-id";

/// The request path. It reads the live snapshot (routes, configuration), answers ACME
/// challenges from the challenge store and seals session ids; nothing else. Cloned for the two
/// loops that drive it (HTTP/1 in `h1`, HTTP/2 in pingora-proxy): the same shared parts.
#[derive(Clone)]
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

fn header_str<'a>(session: &'a ServerSession, name: &str) -> Option<&'a str> {
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
        .or_else(|| header_str(session, "host"))?;
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next()?
    } else {
        raw.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(raw, |(h, _)| h)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.request_phase(session.as_downstream_mut(), ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.peer(ctx).await
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.upstream_head(session.client_addr(), req, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.response_head(session.as_downstream(), resp, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.body_phase(body, end_of_stream, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        self.response_chunk(body, end_of_stream, ctx);
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.log_request(session.as_downstream(), e, ctx);
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        self.proxy_error(session.as_downstream(), e, ctx, client_reused)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        // pingora's own line carries the request URI with its query string (tokens, session
        // ids): never logged. `logging` writes the access line, and for an upstream failure a
        // line with the reason, the path only.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> pingora::proxy::FailToProxy {
        self.proxy_failed(session.as_downstream_mut(), e, ctx).await
    }
}

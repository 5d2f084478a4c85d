//! `request_phase`: everything decided from the request head, in order. Which host (and, on
//! TLS, that it is the certificate's), its Origin, the normalised path, the route, access control,
//! what the body will be read for, and the session's replica. Each step returns `Ok(None)` to go
//! on or the [`Answer`] that ends the request.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession as Session;
use pingora::Error;

use super::ctx::{Ctx, Restore, Target};
use super::{header_str, plain, request_host, EdgeProxy, TlsInfo};
use crate::access::{self, Caller, Decision, PublicUrl};
use crate::config::{normalize_origin, TlsSource};
use crate::live::Snapshot;
use crate::mcp::request::{Declared, Header, Request as McpRequest, VERSION_HEADER};
use crate::metrics;
use crate::observe::Exchange;
use crate::reply::Answer;
use crate::upstream::affinity;

const SESSION_HEADER: &str = super::SESSION_HEADER;

/// One step of the request phase: `None` goes on, `Some` answers.
type Step = Result<Option<Answer>>;

impl EdgeProxy {
    /// The request phase; `Ok(true)`: answered here.
    pub(super) async fn request_phase(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.live.load();
        ctx.snap = Some(snap.clone());
        // pingora keeps an HTTP/1.1 connection idle between requests forever unless told; a
        // connection the client (or HTTP/1.0) asked to close stays closing.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(snap.config.timeouts.keepalive.as_secs().max(1)));
        }
        // A client that stops reading (a stream nobody consumes) is let go, and with it the
        // upstream stream; a quiet stream never waits on a write, so this never cuts it.
        session.set_write_timeout(Some(snap.config.timeouts.write));
        match self.decide(session, ctx, &snap).await? {
            Some(answer) => super::answer::send(session, ctx, answer).await,
            None => Ok(false),
        }
    }

    async fn decide(&self, session: &mut Session, ctx: &mut Ctx, snap: &Snapshot) -> Step {
        // The host before the path is normalised: an HTTP/2 request's authority is in its URI,
        // which normalising rewrites.
        let host = request_host(session);
        if let Some(a) = self.target(session, ctx, snap, host.as_deref()).await? {
            return Ok(Some(a));
        }
        let Some(entry) = entry_of(ctx) else {
            return Ok(Some(Answer::text(404, "unknown host\n")));
        };
        if let Some(a) = check_origin(session, &entry.host) {
            return Ok(Some(a));
        }
        let host = host.unwrap_or_default();
        let path = match normalized_path(session)? {
            Ok(p) => p,
            Err(a) => return Ok(Some(a)),
        };
        let port = if ctx.tls {
            snap.config.listen.redirect_https_port
        } else {
            // A plain-HTTP request came in on port 80, so it is configured.
            snap.config.listen.http.map_or(80, |a| a.port())
        };
        let public = PublicUrl::new(ctx.tls, &host, port);
        ctx.origin = header_str(session, header::ORIGIN).map(str::to_string);
        let origin = ctx.origin.as_deref();
        let req = session.req_header();
        if let Some(a) = access::well_known(req, &entry.host, &public, &path, origin) {
            return Ok(Some(a));
        }
        let Some(i) = entry.host.route_index(&path) else {
            return Ok(Some(Answer::text(404, "no route\n")));
        };
        if let Some(t) = ctx.target.as_mut() {
            t.route = Some(i);
        }
        let route = &entry.routes[i];
        ctx.body.limit = route.pool.upstream.max_request_body;
        let declared =
            header_str(session, header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > ctx.body.limit) {
            return Ok(Some(
                Answer::text(413, "request body too large\n").refused("body_too_large"),
            ));
        }
        if let Some(a) = self.admit(session, ctx, &public).await? {
            return Ok(Some(a));
        }
        if let Some(a) = plan_mcp(session, ctx) {
            return Ok(Some(a));
        }
        if ctx.body.hold && entry.routes[i].config.policy.is_some() {
            ctx.body.policy = Some(public.metadata_url(&entry.routes[i].config));
        }
        if ctx.body.charge && session.is_body_empty() {
            // No body will come to spend the budgets with: spent now.
            if let Some(refused) = self.spend_held(ctx, false) {
                return Ok(Some(refused));
            }
        }
        if let Some(a) = self.session_replica(session, ctx) {
            return Ok(Some(a));
        }
        ctx.pool = Some(entry.routes[i].pool.clone());
        Ok(None)
    }

    /// Finds the host; on port 80 answers what belongs there, on TLS insists that the request
    /// is for the host whose certificate was presented.
    async fn target(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
        host: Option<&str>,
    ) -> Step {
        let tls_info = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|d| {
                d.extension
                    .get::<TlsInfo>()
                    .and_then(|i| i.server_name.clone())
            });
        ctx.tls = tls_info.is_some();
        ctx.client_host = header_str(session, header::HOST)
            .map(str::to_string)
            .or_else(|| session.req_header().uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        ctx.target = host.and_then(|h| snap.table.host(h)).map(|entry| Target {
            entry: entry.clone(),
            route: None,
        });
        let Some(sni) = tls_info else {
            return plain::answer(self, session, ctx, snap).await;
        };
        // The certificate was chosen by SNI; the request must be for that same host, so one
        // host's certificate can never front another.
        // (A server name spelled as the request's host names its host: no second lookup.)
        let same = match (&ctx.target, sni) {
            (Some(t), Some(name)) => {
                t.entry.host.tls != TlsSource::None
                    && (host == Some(name.as_str())
                        || snap
                            .table
                            .host(&name)
                            .is_some_and(|e| e.host.name == t.entry.host.name))
            }
            _ => false,
        };
        if !same {
            return Ok(Some(Answer::text(
                421,
                "misdirected request: Host does not match the TLS server name\n",
            )));
        }
        Ok(None)
    }

    /// Access control: credentials and rate limits, decided by `access`.
    async fn admit(&self, session: &Session, ctx: &mut Ctx, public: &PublicUrl<'_>) -> Step {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = ctx
            .snap
            .as_ref()
            .map_or(&[][..], |s| &s.config.trusted_proxies[..]);
        ctx.client_ip =
            peer.map(|p| access::real_client(p, &session.req_header().headers, trusted));
        let Some(route) = ctx.route_entry() else {
            return Ok(None);
        };
        let caller = Caller {
            req: session.req_header(),
            client: ctx.client_ip,
            origin: ctx.origin.as_deref(),
        };
        let labels = (&*route.host_label, &*route.label);
        let decision = access::check(
            &self.auth,
            &self.limiter,
            labels,
            &route.config,
            public,
            &caller,
        )
        .await;
        match decision {
            Decision::Answer(a) => Ok(Some(a)),
            Decision::Allow(admitted) => {
                ctx.identity = admitted.identity;
                ctx.rate_headers = admitted.rate_headers;
                ctx.budget = admitted.budget;
                ctx.body.charge = admitted.charge_with_body;
                Ok(None)
            }
        }
    }

    /// A request in a sealed session goes to the replica that holds it, or is told the session
    /// is gone (404, -32001).
    fn session_replica(&self, session: &Session, ctx: &mut Ctx) -> Option<Answer> {
        let pool = ctx.route_entry()?.pool.clone();
        if !pool.is_replicated() {
            return None;
        }
        let from_header = header_str(session, SESSION_HEADER).map(|s| (None, s.to_string()));
        let from_query = session
            .req_header()
            .uri
            .query()
            .and_then(affinity::query_session)
            .map(|(k, v)| (Some(k), v));
        let (key, token) = from_header.or(from_query)?;
        // A replica that is out (its connection failed) is treated like one that is no longer
        // configured: the client re-initializes on a healthy one.
        let opened = self
            .sealer
            .open(&token)
            .and_then(|(replica, id)| Some((pool.replica_by_url(&replica)?, id)))
            .filter(|(replica, _)| pool.is_up(*replica));
        let Some((replica, id)) = opened else {
            metrics::get()
                .session_rejected
                .with_label_values(&[ctx.host_label(), ctx.route_label()])
                .inc();
            return Some(Answer::json(
                404,
                Bytes::from_static(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#),
            ));
        };
        ctx.replica = Some(replica);
        ctx.in_session = true;
        ctx.restore = Some(match key {
            None => Restore::Header(id),
            Some(key) => Restore::Query { key, value: id },
        });
        None
    }
}

/// One Origin or none, and an allowed one where the host lists them.
fn check_origin(session: &Session, host: &crate::config::Host) -> Option<Answer> {
    // With two, a check of one and a server reading the other would disagree.
    let origins = session.req_header().headers.get_all(header::ORIGIN);
    if origins.iter().count() > 1 {
        return Some(Answer::text(400, "more than one Origin header\n").refused("repeated_origin"));
    }
    let (allowed, origin) = (
        host.allowed_origins.as_ref()?,
        header_str(session, header::ORIGIN)?,
    );
    if normalize_origin(origin).is_ok_and(|o| allowed.contains(&o)) {
        None
    } else {
        Some(Answer::text(403, "origin not allowed\n"))
    }
}

/// Routed, and sent upstream, by its normalised path only (dot-segments removed in every
/// spelling), so no request reaches beyond its route's prefix.
fn normalized_path(session: &mut Session) -> Result<std::result::Result<String, Answer>> {
    let uri = &session.req_header().uri;
    let path = match crate::path::normalize(uri.path()) {
        Ok(p) => p.into_owned(),
        Err(_) => return Ok(Err(Answer::text(400, "bad path\n").refused("bad_path"))),
    };
    if path != uri.path() {
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let new = pq
            .parse::<http::Uri>()
            .map_err(|e| Error::because(InternalError, "normalised path", e))?;
        session.req_header_mut().set_uri(new);
    }
    Ok(Ok(path))
}

/// What the body of this request will be read for, and the MCP model that reads it: header
/// validation (`mcp.validate`), tool budgets and observation all share one parse of the body.
fn plan_mcp(session: &Session, ctx: &mut Ctx) -> Option<Answer> {
    let route = ctx.route_entry()?;
    let options = route.config.mcp.clone();
    let host_label = route.host_label.clone();
    let route_label = route.label.clone();
    let m = metrics::get();
    if let Some(v) = header_str(session, &VERSION_HEADER) {
        m.mcp_versions
            .with_label_values(&[&*host_label, crate::mcp::version_label(v.trim())])
            .inc();
    }
    let req = session.req_header();
    let post = req.method == http::Method::POST;
    let declared = Declared::from_headers(|n| req.headers.get(n).map(|v| v.as_bytes()));
    let tools_budget = ctx.body.charge;
    // A policy reads every call before any of the body is forwarded.
    let policy = route.config.policy.is_some();
    if policy && post {
        if let Some(a) = unreadable_encoding(req) {
            return Some(a);
        }
    }
    if options.validate && post && options.strict {
        // Strict: a version from before header validation is refused (for `initialize`, which
        // carries no header yet, by the version its body asks for).
        let old = declared
            .version
            .text()
            .is_some_and(|v| v < crate::mcp::VALIDATED_SINCE);
        if old || declared.version == Header::Undecodable {
            let body = crate::mcp::mismatch_body("null", "MCP-Protocol-Version");
            return Some(Answer::json(400, body).refused("mcp_version"));
        }
    }
    if options.observe && (post || req.method == http::Method::GET) {
        let text = |h: &Header| h.text().map(str::to_string);
        ctx.exchange = Some(Exchange::new(
            host_label,
            route_label,
            req.uri.query(),
            text(&declared.method),
            text(&declared.name),
        ));
    }
    // The audit log records every call of the body.
    let audit = ctx.snap.as_ref().is_some_and(|s| s.config.audit.enabled());
    if post && (options.validate || tools_budget || options.observe || policy || audit) {
        ctx.body.hold = options.validate || tools_budget || policy;
        ctx.body.validate = options.validate.then_some(options.strict);
        // Only a policy and the audit log read a call's arguments: otherwise never built.
        ctx.mcp = Some(McpRequest::new(declared).with_arguments(policy || audit));
    }
    None
}

/// A body the policy could not read as the server will: compressed (servers inflate it), or
/// in a charset other than UTF-8 (servers decode it). 415, never forwarded unread.
fn unreadable_encoding(req: &RequestHeader) -> Option<Answer> {
    let text = |name| {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let coded = text(header::CONTENT_ENCODING)
        .iter()
        .any(|e| !e.is_empty() && e != "identity");
    let charset = text(header::CONTENT_TYPE).iter().any(|t| {
        t.split(';').skip(1).any(|p| {
            p.trim()
                .strip_prefix("charset=")
                .is_some_and(|c| !matches!(c.trim_matches('"'), "utf-8" | "utf8"))
        })
    });
    (coded || charset).then(|| {
        Answer::text(
            415,
            "this route's policy reads the body: send it uncompressed, in UTF-8\n",
        )
        .refused("policy_unreadable")
    })
}

/// The entry of the request's host in the route table.
pub(super) fn entry_of(ctx: &Ctx) -> Option<Arc<crate::routing::HostEntry>> {
    ctx.target.as_ref().map(|t| t.entry.clone())
}

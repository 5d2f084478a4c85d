//! The request path, for both listeners: on the HTTP port ACME challenges, redirects and
//! `tls: none` hosts; on the TLS port the MCP traffic of every TLS host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::{Error, ErrorSource};

use crate::access::{self, Budget, PublicUrl, Refusal};
use crate::auth::{Authenticator, Identity};
use crate::config::IdentityHeaders;
use crate::config::{normalize_origin, TlsSource};
use crate::http01::{ChallengeStore, CHALLENGE_PREFIX};
use crate::live::{Live, Snapshot};
use crate::metrics::{self, NO_ROUTE, UNKNOWN_HOST};
use crate::observe::{Exchange, LegacyCalls, LogFields};
use crate::reply::{respond, respond_text};
use crate::routing::{HostEntry, RouteEntry};
use crate::upstream::affinity::{self, EndpointRewriter, Sealer};
use crate::upstream::{trust, Pool};

/// What the TLS handshake told us, carried on the connection's TLS digest.
#[derive(Debug)]
pub struct TlsInfo {
    /// The name the certificate was chosen by: the SNI, or without one the default host.
    pub server_name: Option<String>,
}

const SESSION_HEADER: &str = "mcp-session-id";

/// Hop-by-hop headers (RFC 9110 §7.6.1) a proxy must not forward. Framing headers
/// (`Transfer-Encoding`, `Content-Length`) are pingora's to manage and stay.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The hop-by-hop headers present in `headers`: the fixed set plus what `Connection` lists.
/// Allocates nothing when there are none (most requests).
fn hop_by_hop(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut present: Vec<HeaderName> = HOP_BY_HOP
        .iter()
        .filter(|h| headers.contains_key(**h))
        .map(|h| HeaderName::from_static(h))
        .collect();
    let listed = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("content-length")
                && !t.eq_ignore_ascii_case("transfer-encoding")
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    for name in listed {
        if headers.contains_key(&name) && !present.contains(&name) {
            present.push(name);
        }
    }
    present
}

/// Per-request state.
pub struct Ctx {
    start: Instant,
    tls: bool,
    entry: Option<Arc<HostEntry>>,
    /// Index of the matched route in `entry.routes`.
    route: Option<usize>,
    pool: Option<Arc<Pool>>,
    replica: Option<usize>,
    /// The backend's own session id to restore in the upstream request.
    restore: Option<Restore>,
    client_host: String,
    stream_open: bool,
    rewriter: Option<EndpointRewriter>,
    /// The request belongs to a sealed session: it must reach its replica or none.
    in_session: bool,
    /// Connection attempts moved to another replica.
    retried: usize,
    /// Request body bytes seen so far, and the route's limit.
    body_seen: u64,
    body_limit: u64,
    /// Who called, when the route checks credentials.
    identity: Option<Identity>,
    /// Rate-limit headers for the response.
    rate_headers: Vec<(HeaderName, String)>,
    /// The caller's budgets, and whether the tool's is decided by the body.
    budget: Option<Budget>,
    tool_in_body: bool,
    /// The MCP headers to check against the body (`mcp.validate`).
    declared: Option<crate::mcp::Declared>,
    /// The body is held back (in `body_buf`) until complete, for the two checks above.
    hold_body: bool,
    body_buf: Vec<u8>,
    /// A refusal decided after the request went upstream, answered by `fail_to_proxy`.
    late: Option<Late>,
    origin: Option<String>,
    /// The MCP calls of this request and their outcomes, as observed.
    mcp: Option<Exchange>,
}

impl Ctx {
    /// Metric label: the configured host name, or `_unknown`.
    fn host_label(&self) -> &str {
        self.entry
            .as_ref()
            .map_or(UNKNOWN_HOST, |e| e.host.name.as_str())
    }

    /// Counts a request refused at the edge for `reason`.
    fn count_refused(&self, reason: &str) {
        metrics::get()
            .refused
            .with_label_values(&[self.host_label(), reason])
            .inc();
    }

    /// The matched route's entry in the route table.
    fn route_entry(&self) -> Option<&RouteEntry> {
        self.entry.as_ref()?.routes.get(self.route?)
    }

    /// Metric label: the matched route's prefix, or `_none`.
    fn route_label(&self) -> &str {
        match (&self.entry, self.route) {
            (Some(e), Some(i)) => e.routes[i].path.as_str(),
            _ => NO_ROUTE,
        }
    }
}

/// A refusal decided once the body was read, answered by `fail_to_proxy`.
enum Late {
    RateLimited(Refusal),
    /// The MCP headers disagree with the body: this JSON-RPC error, with 400.
    Invalid(String),
}

enum Restore {
    Header(String),
    Query { key: &'static str, value: String },
}

/// The request path. It reads the live snapshot (routes, configuration), answers ACME
/// challenges from the challenge store and seals session ids; nothing else.
pub struct EdgeProxy {
    pub live: Arc<Live>,
    pub challenges: Arc<ChallengeStore>,
    pub sealer: Arc<Sealer>,
    pub auth: Arc<Authenticator>,
    /// Legacy-transport calls waiting for their answer on their session's stream.
    pub legacy: Arc<LegacyCalls>,
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// The host the client asked for: lower case, without port and trailing dot.
fn request_host(session: &Session) -> Option<String> {
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

/// Answers `status` with a short text, counted as refused for `reason`.
async fn refuse(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    reason: &str,
    body: &'static str,
) -> Result<bool> {
    ctx.count_refused(reason);
    respond_text(session, status, body).await
}

fn upstream_reason(e: &Error) -> &'static str {
    // A TLS reason anywhere in the chain: a failed handshake, or the alert a TLS 1.3 server
    // sends on the first read when it refuses our client certificate.
    if let Some(r) = trust::reason_in(e.root_cause()) {
        return r;
    }
    match e.etype() {
        Custom(reason) => reason,
        ConnectTimedout => "connect_timeout",
        ConnectRefused => "connect_refused",
        ConnectNoRoute | ConnectError | SocketError => "connect_error",
        ReadTimedout => "read_timeout",
        WriteTimedout => "write_timeout",
        ConnectionClosed | ReadError | WriteError => "connection_closed",
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => "protocol_error",
        TLSHandshakeFailure | InvalidCert | HandshakeError => "tls",
        _ => "other",
    }
}

/// The largest request body read for the tool it calls; a larger one is let through with the
/// route's budget only (MCP messages are small).
const MAX_PARSED_BODY: usize = 64 * 1024;

impl EdgeProxy {
    /// Holds a POST body back until it is complete (`hold_body`), then checks its MCP headers
    /// against it (`mcp.validate`: -32020) and spends the budget of the tool it calls; refused,
    /// the request ends in `fail_to_proxy` and nothing of the body reaches the upstream.
    fn check_held_body(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body.take() {
            ctx.body_buf.extend_from_slice(&chunk);
        }
        if ctx.body_buf.len() > MAX_PARSED_BODY {
            ctx.hold_body = false;
            *body = Some(Bytes::from(std::mem::take(&mut ctx.body_buf)));
            return Ok(());
        }
        if !end_of_stream {
            // Held: an empty chunk, which pingora skips. `None` would tell it the body ended
            // (it then closed a chunked body empty, or left a Content-Length one unwritten).
            *body = Some(Bytes::new());
            return Ok(());
        }
        ctx.hold_body = false;
        let buf = Bytes::from(std::mem::take(&mut ctx.body_buf));
        if let Some(declared) = &ctx.declared {
            if let Err((id, header)) = crate::mcp::validate(declared, &buf) {
                ctx.count_refused("mcp_header_mismatch");
                ctx.late = Some(Late::Invalid(crate::mcp::mismatch_body(&id, header)));
                return Err(Error::explain(
                    HTTPStatus(400),
                    "MCP headers disagree with the body",
                ));
            }
        }
        if let (Some(budget), true) = (&ctx.budget, ctx.tool_in_body) {
            for tool in access::tools_called(&buf) {
                if let Err(refusal) = budget.spend(&self.auth, Some(&tool), false) {
                    ctx.late = Some(Late::RateLimited(refusal));
                    return Err(Error::explain(
                        HTTPStatus(429),
                        "over the tool's rate limit",
                    ));
                }
            }
        }
        *body = Some(buf);
        Ok(())
    }

    /// Who called, told to the upstream in the headers the route names (a client's own values
    /// for them are dropped first); the client's credentials stay at the edge unless the route
    /// forwards tokens.
    fn identity_headers(&self, req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
        let route = match (&ctx.entry, ctx.route) {
            (Some(e), Some(i)) => e.host.routes.get(i),
            _ => None,
        };
        let auth = route.and_then(|r| r.auth.as_deref());
        let default = IdentityHeaders::default();
        let names = auth.map_or(&default, |a| &a.identity);
        for h in names.all() {
            req.remove_header(h);
        }
        let (Some(auth), Some(id)) = (auth, &ctx.identity) else {
            return Ok(());
        };
        let forward = auth.oauth.as_ref().is_some_and(|o| o.forward_token) && id.key_name.is_none();
        if id.bearer && !forward {
            req.remove_header(&header::AUTHORIZATION);
        }
        if let Some(h) = auth.api_keys.as_ref().and_then(|k| k.header.as_ref()) {
            req.remove_header(h);
        }
        let values = [
            (&names.subject, id.subject.clone()),
            (&names.client_id, id.client_id.clone()),
            (&names.key, id.key_name.clone()),
            (
                &names.scopes,
                (!id.scopes.is_empty()).then(|| id.scopes.join(" ")),
            ),
        ];
        for (name, value) in values {
            // A value that is no header value (a control character in a `sub`) is not sent.
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
                req.insert_header(name.clone(), v)?;
            }
        }
        Ok(())
    }

    /// Port 80: ACME challenges for anyone, plain proxying for `tls: none` hosts, a redirect to
    /// https for TLS hosts, 404 for anything else (never a redirect to an unknown host).
    async fn plain_listener(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Result<bool> {
        let path = session.req_header().uri.path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            let token = token.to_string();
            return match self.challenges.lookup(&token).await {
                Some(key_auth) => {
                    respond(
                        session,
                        200,
                        "application/octet-stream",
                        Bytes::from(key_auth),
                        &[],
                    )
                    .await
                }
                None => respond_text(session, 404, "unknown challenge\n").await,
            };
        }
        let Some(entry) = ctx.entry.clone() else {
            return respond_text(session, 404, "unknown host\n").await;
        };
        if entry.host.tls == TlsSource::None {
            return Ok(false);
        }
        // `entry` was found by this exact name, so it is one of the configured names: the
        // redirect can only ever point at a host this proxy serves.
        let host = request_host(session).unwrap_or_else(|| entry.host.name.to_string());
        let port = snap.config.listen.redirect_https_port;
        let authority = if port == 443 {
            host
        } else {
            format!("{host}:{port}")
        };
        let pq = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str());
        let location = format!("https://{authority}{pq}");
        respond(
            session,
            308,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"use https\n"),
            &[(header::LOCATION, location)],
        )
        .await
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            tls: false,
            entry: None,
            route: None,
            pool: None,
            replica: None,
            restore: None,
            client_host: String::new(),
            stream_open: false,
            rewriter: None,
            in_session: false,
            retried: 0,
            body_seen: 0,
            body_limit: u64::MAX,
            identity: None,
            rate_headers: Vec::new(),
            budget: None,
            tool_in_body: false,
            declared: None,
            hold_body: false,
            body_buf: Vec::new(),
            late: None,
            origin: None,
            mcp: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.live.load();
        // pingora keeps an HTTP/1.1 connection idle between requests forever unless told; a
        // connection the client (or HTTP/1.0) asked to close stays closing.
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(snap.config.timeouts.keepalive.as_secs().max(1)));
        }
        // A client that stops reading (a stream nobody consumes) is let go, and with it the
        // upstream stream; a quiet stream never waits on a write, so this never cuts it.
        session.set_write_timeout(Some(snap.config.timeouts.write));
        let tls_info = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|d| {
                d.extension
                    .get::<TlsInfo>()
                    .and_then(|i| i.server_name.clone())
            });
        ctx.tls = tls_info.is_some();
        let host = request_host(session);
        ctx.client_host = header_str(session, "host")
            .map(str::to_string)
            .or_else(|| session.req_header().uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        ctx.entry = host.as_deref().and_then(|h| snap.table.host(h)).cloned();

        if !ctx.tls {
            if self.plain_listener(session, ctx, &snap).await? {
                return Ok(true);
            }
        } else {
            // The certificate was chosen by SNI; the request must be for that same host, so one
            // host's certificate can never front another.
            let sni_host = tls_info
                .flatten()
                .and_then(|name| snap.table.host(&name).map(|e| e.host.name.clone()));
            let same = match (&ctx.entry, sni_host) {
                (Some(e), Some(s)) => e.host.name == s && e.host.tls != TlsSource::None,
                _ => false,
            };
            if !same {
                return respond_text(
                    session,
                    421,
                    "misdirected request: Host does not match the TLS server name\n",
                )
                .await;
            }
        }
        let Some(entry) = ctx.entry.clone() else {
            return respond_text(session, 404, "unknown host\n").await;
        };

        // One Origin or none: with two, a check of one and a server reading the other would
        // disagree.
        if session
            .req_header()
            .headers
            .get_all(header::ORIGIN)
            .iter()
            .count()
            > 1
        {
            return refuse(
                session,
                ctx,
                400,
                "repeated_origin",
                "more than one Origin header\n",
            )
            .await;
        }
        if let (Some(allowed), Some(origin)) =
            (&entry.host.allowed_origins, header_str(session, "origin"))
        {
            let ok = normalize_origin(origin).is_ok_and(|o| allowed.contains(&o));
            if !ok {
                return respond_text(session, 403, "origin not allowed\n").await;
            }
        }

        // Routed, and sent upstream, by its normalised path only (dot-segments removed in
        // every spelling), so no request reaches beyond its route's prefix.
        let uri = &session.req_header().uri;
        let path = match crate::path::normalize(uri.path()) {
            Ok(p) => p.into_owned(),
            Err(_) => return refuse(session, ctx, 400, "bad_path", "bad path\n").await,
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
        let public = PublicUrl::new(
            ctx.tls,
            host.as_deref().unwrap_or_default(),
            if ctx.tls {
                snap.config.listen.redirect_https_port
            } else {
                snap.config.listen.http.port()
            },
        );
        let origin = header_str(session, "origin").map(str::to_string);
        if let Some(done) =
            access::well_known(session, &entry.host, &public, &path, origin.as_deref()).await?
        {
            return Ok(done);
        }
        let Some(i) = entry.host.route_index(&path) else {
            return respond_text(session, 404, "no route\n").await;
        };
        ctx.route = Some(i);
        let pool = entry.routes[i].pool.clone();
        ctx.body_limit = pool.upstream.max_request_body;
        let declared =
            header_str(session, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > ctx.body_limit) {
            return refuse(
                session,
                ctx,
                413,
                "body_too_large",
                "request body too large\n",
            )
            .await;
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let route_entry = &entry.routes[i];
        let labels = (&route_entry.host_label, &route_entry.label);
        let admitted = access::check(
            &self.auth,
            session,
            (labels.0, labels.1),
            &entry.host.routes[i],
            &public,
            client,
            origin.as_deref(),
        )
        .await?;
        match admitted {
            Err(handled) => return Ok(handled),
            Ok(a) => {
                ctx.identity = a.identity;
                ctx.rate_headers = a.rate_headers;
                ctx.budget = a.budget;
                ctx.tool_in_body = a.tool_in_body;
                ctx.origin = origin;
            }
        }
        let m = metrics::get();
        if let Some(v) = header_str(session, "mcp-protocol-version") {
            m.mcp_versions
                .with_label_values(&[labels.0, crate::mcp::version_label(v.trim())])
                .inc();
        }
        let mcp_options = &entry.host.routes[i].mcp;
        let method = &session.req_header().method;
        let h = |n: &str| header_str(session, n).and_then(crate::mcp::header_text);
        let (mcp_method, mcp_name) = (h("mcp-method"), h("mcp-name"));
        if mcp_options.validate && method == http::Method::POST {
            let declared = crate::mcp::Declared {
                method: mcp_method.clone(),
                name: mcp_name.clone(),
                version: h("mcp-protocol-version"),
                strict: mcp_options.strict,
            };
            // Strict: a version from before header validation is refused (for `initialize`,
            // which carries no header yet, by the version its body asks for).
            let old = declared
                .version
                .as_deref()
                .is_some_and(|v| v < crate::mcp::VALIDATED_SINCE);
            if mcp_options.strict && old {
                ctx.count_refused("mcp_version");
                let body = crate::mcp::mismatch_body("null", "MCP-Protocol-Version");
                return respond(session, 400, "application/json", Bytes::from(body), &[]).await;
            }
            ctx.declared = Some(declared);
            ctx.hold_body = true;
        }
        ctx.hold_body |= ctx.tool_in_body;
        if mcp_options.observe && (method == http::Method::POST || method == http::Method::GET) {
            ctx.mcp = Some(Exchange::new(
                labels.0.clone(),
                labels.1.clone(),
                session.req_header().uri.query(),
                mcp_method,
                mcp_name,
            ));
        }

        if pool.is_replicated() {
            let from_header = header_str(session, SESSION_HEADER).map(|s| (None, s.to_string()));
            let from_query = session
                .req_header()
                .uri
                .query()
                .and_then(affinity::query_session)
                .map(|(k, v)| (Some(k), v));
            if let Some((key, token)) = from_header.or(from_query) {
                // A replica that is out (its connection failed) is treated like one that is no
                // longer configured: the client re-initializes on a healthy one.
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
                    return respond(
                        session,
                        404,
                        "application/json",
                        Bytes::from_static(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"Session not found"}}"#),
                        &[],
                    )
                    .await;
                };
                ctx.replica = Some(replica);
                ctx.in_session = true;
                ctx.restore = Some(match key {
                    None => Restore::Header(id),
                    Some(key) => Restore::Query { key, value: id },
                });
            }
        }
        ctx.pool = Some(pool);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(pool) = ctx.pool.clone() else {
            return Err(Error::explain(InternalError, "no upstream selected"));
        };
        let i = *ctx.replica.get_or_insert_with(|| pool.next_replica());
        let addr = pool.address(i).await.map_err(|e| {
            let mut err =
                Error::because(Custom("dns"), format!("resolving {}", pool.url(i).host), e);
            err.as_up();
            err
        })?;
        let peer = pool.peer(addr);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for h in hop_by_hop(&req.headers) {
            req.remove_header(&h);
        }

        if let (Some(pool), Some(i)) = (&ctx.pool, ctx.replica) {
            if !pool.upstream.preserve_host {
                req.insert_header(header::HOST, pool.url(i).authority.as_str())?;
            } else if !ctx.client_host.is_empty() {
                req.insert_header(header::HOST, ctx.client_host.as_str())?;
            }
        }
        self.identity_headers(req, ctx)?;
        let peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = peer_ip.is_some_and(|ip| {
            let snap = self.live.load();
            snap.config.trusted_proxies.iter().any(|n| n.contains(&ip))
        });
        // What a client says about the path it came by is not evidence: every proxy-set header
        // it sent is dropped, and ours are set below. A configured proxy in front of us (a load
        // balancer) is believed: its headers stay, and it is added to X-Forwarded-For.
        let sent_for = if trusted {
            req.headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            let forged: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|k| {
                    let k = k.as_str();
                    k.starts_with("x-forwarded-") || k == "forwarded" || k == "x-real-ip"
                })
                .cloned()
                .collect();
            for h in forged {
                req.remove_header(&h);
            }
            String::new()
        };
        let forwarded_for = match (peer_ip, sent_for.is_empty()) {
            (Some(ip), true) => Some(ip.to_string()),
            (Some(ip), false) => Some(format!("{sent_for}, {ip}")),
            (None, true) => None,
            (None, false) => Some(sent_for),
        };
        match forwarded_for {
            Some(v) => req.insert_header("x-forwarded-for", v)?,
            None => {
                req.remove_header("x-forwarded-for");
            }
        }
        // From a trusted proxy, what it says about the scheme and host stands.
        let sent = |name: &str| trusted && req.headers.contains_key(name);
        let (keep_proto, keep_host) = (sent("x-forwarded-proto"), sent("x-forwarded-host"));
        if !keep_proto {
            let proto = if ctx.tls { "https" } else { "http" };
            req.insert_header("x-forwarded-proto", HeaderValue::from_static(proto))?;
        }
        if !keep_host && !ctx.client_host.is_empty() {
            req.insert_header("x-forwarded-host", ctx.client_host.as_str())?;
        }

        match ctx.restore.take() {
            Some(Restore::Header(id)) => {
                req.insert_header(SESSION_HEADER, id)?;
            }
            Some(Restore::Query { key, value }) => {
                let uri = &req.uri;
                let query = affinity::replace_query_session(uri.query().unwrap_or(""), key, &value);
                let new = format!("{}?{query}", uri.path());
                let uri = new
                    .parse::<http::Uri>()
                    .map_err(|e| Error::because(InternalError, "rewriting session id", e))?;
                req.set_uri(uri);
            }
            None => {}
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for h in hop_by_hop(&resp.headers) {
            resp.remove_header(&h);
        }
        for (name, value) in &ctx.rate_headers {
            resp.insert_header(name.clone(), value.as_str())?;
        }

        let is_stream = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("text/event-stream")
            });
        if let Some(x) = ctx.mcp.as_mut() {
            let ct = resp
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            x.response(resp.status.as_u16(), ct);
        }
        if is_stream {
            // Never buffered, cached or compressed on the way out, here or further down.
            resp.insert_header("x-accel-buffering", "no")?;
            if !resp.headers.contains_key(header::CACHE_CONTROL) {
                resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
            }
            if !ctx.stream_open {
                ctx.stream_open = true;
                metrics::get()
                    .open_streams
                    .with_label_values(&[ctx.host_label()])
                    .inc();
            }
        }

        if let (Some(pool), Some(i)) = (&ctx.pool, ctx.replica) {
            if pool.is_replicated() {
                let replica = pool.url(i).url.clone();
                if let Some(id) = resp
                    .headers
                    .get(SESSION_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    let sealed = self
                        .sealer
                        .seal(&replica, id)
                        .ok_or_else(|| Error::explain(InternalError, "sealing session id"))?;
                    resp.insert_header(
                        SESSION_HEADER,
                        HeaderValue::from_str(&sealed)
                            .map_err(|e| Error::because(InternalError, "session header", e))?,
                    )?;
                }
                let legacy_stream = is_stream
                    && session.req_header().method == http::Method::GET
                    && !session.req_header().headers.contains_key(SESSION_HEADER);
                if legacy_stream {
                    // The first event's length changes: let pingora frame the body itself.
                    resp.remove_header(&header::CONTENT_LENGTH);
                    ctx.rewriter = Some(EndpointRewriter::new(replica));
                }
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked bodies declare no length: counted as they come.
        ctx.body_seen += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_seen > ctx.body_limit {
            ctx.count_refused("body_too_large");
            return Err(Error::explain(HTTPStatus(413), "request body too large"));
        }
        if let Some(x) = ctx.mcp.as_mut() {
            x.request_chunk(body.as_deref().unwrap_or_default(), end_of_stream);
        }
        if ctx.hold_body {
            self.check_held_body(body, end_of_stream, ctx)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(rw) = ctx.rewriter.as_mut() {
            let chunk = body.take().unwrap_or_default();
            let out = rw.feed(&self.sealer, &chunk, end_of_stream);
            *body = Some(Bytes::from(out));
        }
        // What the client sees (session ids as sealed for it) is what is observed.
        if let (Some(x), Some(entry)) = (ctx.mcp.as_mut(), ctx.entry.as_ref()) {
            if let Some(route) = ctx.route.and_then(|i| entry.routes.get(i)) {
                let chunk = body.as_deref().unwrap_or_default();
                x.response_chunk(chunk, end_of_stream, &route.names, &self.legacy);
            }
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let exchange = ctx.mcp.take();
        let m = metrics::get();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let labels = [ctx.host_label(), ctx.route_label()];
        let elapsed = ctx.start.elapsed();
        match ctx.route_entry() {
            Some(route) => {
                route.series.requests[metrics::status_index(status)].inc();
                route.series.duration.observe(elapsed.as_secs_f64());
            }
            None => {
                m.requests
                    .with_label_values(&[labels[0], labels[1], metrics::status_class(status)])
                    .inc();
                m.duration
                    .with_label_values(&labels)
                    .observe(elapsed.as_secs_f64());
            }
        }
        if ctx.stream_open {
            m.open_streams.with_label_values(&[labels[0]]).dec();
            m.stream_duration
                .with_label_values(&labels)
                .observe(elapsed.as_secs_f64());
        }
        let mut rpc = LogFields::default();
        if let Some(mut x) = exchange {
            if let Some(route) = ctx.route_entry() {
                x.finish(e.is_some(), &route.names, &self.legacy);
            }
            rpc = x.log;
        }
        let mut error_reason = None;
        if let Some(e) = e {
            if e.esource() == &ErrorSource::Upstream {
                let reason = upstream_reason(e);
                error_reason = Some(reason);
                m.upstream_errors
                    .with_label_values(&[labels[0], labels[1], reason])
                    .inc();
            }
        }
        let upstream = match (&ctx.pool, ctx.replica) {
            (Some(p), Some(i)) => p.url(i).url.as_str(),
            _ => "-",
        };
        if let (None, Some(p), Some(i)) = (e, &ctx.pool, ctx.replica) {
            if p.is_replicated() {
                p.mark_up(i);
                m.replica_up
                    .with_label_values(&[labels[0], labels[1], &p.url(i).url])
                    .set(i64::from(p.is_up(i)));
            }
        }
        let req = session.req_header();
        if let (Some(e), Some(reason)) = (e, error_reason) {
            tracing::warn!(
                host = %ctx.host_label(),
                method = %req.method,
                path = %req.uri.path(),
                upstream,
                reason,
                error = %e,
                "upstream request failed"
            );
        }
        tracing::info!(
            target: "access",
            host = %ctx.host_label(),
            method = %req.method,
            // The path only: query strings can carry secrets (tokens, session ids).
            path = %req.uri.path(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream,
            bytes = session.body_bytes_sent(),
            client = session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = ctx.tls,
            caller = ctx.identity.as_ref().and_then(Identity::caller).unwrap_or_default(),
            error = error_reason.unwrap_or(""),
            mcp_method = rpc.method,
            mcp_tool = rpc.tool,
            rpc_id = rpc.id,
            rpc_error = rpc.error,
        );
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let (Some(pool), Some(i)) = (ctx.pool.clone(), ctx.replica) else {
            return e;
        };
        let unreachable = matches!(
            e.etype(),
            ConnectRefused | ConnectTimedout | ConnectError | ConnectNoRoute
        );
        if !unreachable {
            return e;
        }
        if pool.mark_down(i) {
            metrics::get()
                .replica_up
                .with_label_values(&[ctx.host_label(), ctx.route_label(), &pool.url(i).url])
                .set(0);
            tracing::warn!(
                host = %ctx.host_label(),
                replica = %pool.url(i).url,
                "replica out of the round robin for {}s: its connection failed",
                crate::upstream::DOWN_FOR.as_secs()
            );
        }
        // Nothing was sent yet: a request outside a session may try another replica.
        if !ctx.in_session && ctx.retried + 1 < pool.upstream.urls.len() && pool.up_count() > 0 {
            ctx.retried += 1;
            ctx.replica = None;
            e.set_retry(true);
        }
        e
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
        if let Some(late) = ctx.late.take() {
            let unanswered = session.response_written().is_none();
            let code = match late {
                Late::RateLimited(refusal) => {
                    if unanswered {
                        let _ = refusal.send(session, ctx.origin.as_deref()).await;
                    }
                    429
                }
                Late::Invalid(body) => {
                    if unanswered {
                        let _ =
                            respond(session, 400, "application/json", Bytes::from(body), &[]).await;
                    }
                    400
                }
            };
            return pingora::proxy::FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ConnectTimedout | ReadTimedout => 504,
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        pingora::proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

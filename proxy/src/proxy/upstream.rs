//! `peer` and `upstream_head`: the replica, and the request head it gets, written once.
//! Hop-by-hop headers dropped, Host as the upstream expects it, the caller's identity in the
//! route's headers (never the client's own values for them), the forwarding headers only we set
//! (or a trusted balancer's), and the backend's own session id restored.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::Error;

use super::ctx::{Ctx, Restore};
use super::{EdgeProxy, SESSION_HEADER};
use crate::auth::Identity;
use crate::config::IdentityHeaders;
use crate::upstream::affinity;

/// Hop-by-hop headers (RFC 9110 §7.6.1) a proxy must not forward. Framing headers
/// (`Transfer-Encoding`, `Content-Length`) are the proxy loop's to write and stay.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

/// A header a client (or an upstream) cannot make hop-by-hop by listing it in `Connection`:
/// framing, Host, and the forwarding headers (`forwarding_headers` decides those: a trusted
/// balancer's stay).
fn end_to_end(name: &str) -> bool {
    let fixed = [
        "content-length",
        "transfer-encoding",
        "host",
        "forwarded",
        "x-real-ip",
    ];
    fixed.iter().any(|f| name.eq_ignore_ascii_case(f))
        || name
            .get(..12)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-forwarded-"))
}

/// The headers `Connection` names (other than the ones it may not), present in `headers`.
fn connection_listed(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut listed = Vec::new();
    let names = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !end_to_end(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    for name in names {
        if headers.contains_key(&name) && !listed.contains(&name) {
            listed.push(name);
        }
    }
    listed
}

/// The hop-by-hop headers present in `headers`: the fixed set plus what `Connection` lists.
/// One pass over the names; allocates nothing when there are none (most messages).
pub(super) fn hop_by_hop(headers: &http::HeaderMap) -> Vec<HeaderName> {
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_hop_by_hop(k))
        .cloned()
        .collect();
    if headers.contains_key(header::CONNECTION) {
        for name in connection_listed(headers) {
            if !present.contains(&name) {
                present.push(name);
            }
        }
    }
    present
}

/// The request head an upstream gets: the bytes written (`wire`), and what pingora's client
/// session keeps of it to frame the body and read the response (`framing`: the method and
/// the framing fields, as `wire` has them).
pub(super) struct UpstreamHead {
    pub wire: BytesMut,
    pub framing: Box<RequestHeader>,
}

/// Which of the client's fields the upstream does not get as they are: dropped, or replaced
/// by the edge's own value written after them.
struct Dropped<'a> {
    /// Named by the client's `Connection` (rare: a list only when it has one).
    listed: Vec<HeaderName>,
    /// The client's forwarding headers are a trusted balancer's: they stay (X-Forwarded-For
    /// is extended).
    trusted: bool,
    /// The edge writes Host, X-Forwarded-Host, the session id, one Cookie line, chunked
    /// framing (dropping Content-Length).
    host: bool,
    forwarded_host: bool,
    forwarded_proto: bool,
    session: bool,
    cookie: bool,
    chunked: bool,
    /// A policy reads the route's list answers: asked for uncompressed.
    accept_encoding: bool,
    /// The caller's credentials, kept at the edge.
    authorization: bool,
    dpop: bool,
    api_key: Option<&'a HeaderName>,
    identity: [&'a HeaderName; 4],
}

impl<'a> Dropped<'a> {
    fn new(
        req: &RequestHeader,
        h2: bool,
        has_body: bool,
        host: bool,
        trusted: bool,
        names: &'a IdentityHeaders,
        ctx: &'a Ctx,
    ) -> Self {
        let headers = &req.headers;
        let auth = ctx.route_entry().and_then(|r| r.config.auth.as_deref());
        let caller = auth.zip(ctx.identity.as_ref());
        let forward_token = caller.is_some_and(|(a, id)| {
            a.oauth.as_ref().is_some_and(|o| o.forward_token) && id.key_name.is_none()
        });
        let keep = |name: &str| trusted && headers.contains_key(name);
        Dropped {
            listed: if headers.contains_key(header::CONNECTION) {
                connection_listed(headers)
            } else {
                Vec::new()
            },
            trusted,
            host,
            forwarded_host: !keep("x-forwarded-host") && !ctx.client_host.is_empty(),
            forwarded_proto: !keep("x-forwarded-proto"),
            session: matches!(ctx.restore, Some(Restore::Header(_))),
            cookie: h2 && headers.get_all(header::COOKIE).iter().nth(1).is_some(),
            chunked: headers.contains_key(header::TRANSFER_ENCODING)
                || (has_body && !headers.contains_key(header::CONTENT_LENGTH)),
            accept_encoding: ctx.route_entry().is_some_and(|r| r.config.policy.is_some()),
            authorization: caller.is_some_and(|(_, id)| id.bearer && !forward_token),
            dpop: caller.is_some(),
            api_key: caller.and_then(|(a, _)| a.api_keys.as_ref()?.header.as_ref()),
            identity: names.all(),
        }
    }

    fn drops(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        // How the body is framed is decided here alone (configuration refuses these names for
        // identity and API-key headers too): what is written and `framing_head` must agree.
        match n {
            "transfer-encoding" => return true,
            "content-length" => return self.chunked,
            _ => {}
        }
        let edge_sets = match n {
            "host" => self.host,
            "x-forwarded-for" => true,
            "x-forwarded-host" => self.forwarded_host || !self.trusted,
            "x-forwarded-proto" => self.forwarded_proto || !self.trusted,
            "cookie" => self.cookie,
            "accept-encoding" => self.accept_encoding,
            "authorization" => self.authorization,
            "dpop" => self.dpop,
            "forwarded" | "x-real-ip" => !self.trusted,
            _ if n.starts_with("x-forwarded-") => !self.trusted,
            _ => false,
        };
        edge_sets
            || is_hop_by_hop(name)
            || (self.session && n == SESSION_HEADER)
            || self.identity.contains(&name)
            || self.api_key == Some(name)
            || self.listed.contains(name)
    }
}

/// Header names HTTP/2 requests (which keep no case) are written with: pingora's titled ones.
fn titled(name: &HeaderName) -> &str {
    match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    }
}

/// `name: value` and its line end.
fn field(wire: &mut BytesMut, name: &[u8], value: &[u8]) {
    wire.put_slice(name);
    wire.put_slice(b": ");
    wire.put_slice(value);
    wire.put_slice(b"\r\n");
}

/// A value the edge makes from what it read (a Host, an address, an id): never one that
/// could end its line or start another field.
fn checked(value: &str) -> Result<&str> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Error::e_explain(InvalidHTTPHeader, "a header value with a control character");
    }
    Ok(value)
}

/// The request-target: origin form (an absolute-form target, or an HTTP/2 request's URI, gives
/// its path and query; the upstream gets the authority the edge chose, in Host), with the
/// backend's session id restored in the query it came in.
fn target(req: &RequestHeader, ctx: &Ctx) -> Result<Vec<u8>> {
    let raw = req.raw_path();
    let absolute = !raw.starts_with(b"/") && raw != b"*";
    let mut target = if !absolute && req.uri.authority().is_none() {
        raw.to_vec()
    } else {
        let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let pq = if pq.starts_with('/') { pq } else { "/" };
        pq.as_bytes().to_vec()
    };
    if let Some(Restore::Query { key, value }) = &ctx.restore {
        let query = affinity::replace_query_session(req.uri.query().unwrap_or(""), key, value);
        target = format!("{}?{query}", req.uri.path()).into_bytes();
    }
    if target.iter().any(|b| *b <= b' ' || *b == 0x7f) {
        return Error::e_explain(InvalidHTTPHeader, "request target");
    }
    Ok(target)
}

impl EdgeProxy {
    pub(super) async fn peer(&self, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
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
        Ok(Box::new(pool.peer(addr)))
    }

    /// The client's request head as the upstream gets it, written once: the request line in
    /// origin form, Host first, the client's fields in their order and case less what
    /// [`Dropped`] takes out, then the edge's own (identity, forwarding, session id, framing).
    pub(super) fn upstream_head(
        &self,
        client: Option<&SocketAddr>,
        req: &RequestHeader,
        h2: bool,
        has_body: bool,
        ctx: &Ctx,
    ) -> Result<UpstreamHead> {
        let headers = &req.headers;
        let peer_ip = client.and_then(|a| a.as_inet()).map(|a| a.ip());
        let trusted = peer_ip.is_some_and(|ip| {
            ctx.snap
                .as_ref()
                .is_some_and(|s| s.config.trusted_proxies.iter().any(|n| n.contains(&ip)))
        });
        let host = match (&ctx.pool, ctx.replica) {
            (Some(pool), Some(i)) if !pool.upstream.preserve_host => {
                Some(pool.url(i).authority.as_str())
            }
            (Some(_), Some(_)) if !ctx.client_host.is_empty() => Some(ctx.client_host.as_str()),
            _ => None,
        };
        let auth = ctx.route_entry().and_then(|r| r.config.auth.as_deref());
        static DEFAULT_NAMES: IdentityHeaders = IdentityHeaders::DEFAULT;
        let names = auth.map_or(&DEFAULT_NAMES, |a| &a.identity);
        let caller = auth.zip(ctx.identity.as_ref());
        let dropped = Dropped::new(req, h2, has_body, host.is_some(), trusted, names, ctx);
        let (chunked, cookie) = (dropped.chunked, dropped.cookie);

        let mut wire = BytesMut::with_capacity(512);
        wire.put_slice(req.method.as_str().as_bytes());
        wire.put_u8(b' ');
        wire.put_slice(&target(req, ctx)?);
        wire.put_slice(b" HTTP/1.1\r\n");
        if let Some(host) = host {
            field(&mut wire, b"Host", checked(host)?.as_bytes());
        }
        let mut cases = req.case_header_iter();
        for (name, value) in headers {
            let case = cases.next().map(|(c, _)| c.as_slice());
            if !dropped.drops(name) {
                let written = case.unwrap_or_else(|| titled(name).as_bytes());
                field(&mut wire, written, value.as_bytes());
            }
        }
        if let Some((_, id)) = caller {
            identity_fields(&mut wire, names, id);
        }
        forwarding_fields(&mut wire, peer_ip, req, &dropped, ctx)?;
        if let Some(Restore::Header(id)) = &ctx.restore {
            field(
                &mut wire,
                SESSION_HEADER.as_bytes(),
                checked(id)?.as_bytes(),
            );
        }
        if cookie {
            // HTTP/2 clients may send each cookie as a field of its own; an HTTP/1 upstream
            // reads one line (RFC 9113 §8.2.3: joined with "; ").
            let values: Vec<&[u8]> = headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            field(&mut wire, b"Cookie", &values.join(&b"; "[..]));
        }
        if chunked {
            // The body is read de-chunked and written chunked again: the upstream gets that one
            // coding as the edge spells it (pingora reads only a list that ends in chunked),
            // and never a Content-Length beside it. An HTTP/2 body of no declared length too.
            field(&mut wire, b"Transfer-Encoding", b"chunked");
        }
        // Expect only as written (a `Connection` that lists it drops it).
        let expect = headers
            .get(header::EXPECT)
            .filter(|_| !dropped.drops(&header::EXPECT));
        let framing = framing_head(req, chunked, expect)?;
        wire.put_slice(b"\r\n");
        Ok(UpstreamHead { wire, framing })
    }
}

/// What pingora's client session keeps of the upstream head: the method and the fields that
/// frame the body (as the written head has them) and say whether the upstream may answer 100
/// first.
fn framing_head(
    req: &RequestHeader,
    chunked: bool,
    expect: Option<&http::HeaderValue>,
) -> Result<Box<RequestHeader>> {
    let headers = &req.headers;
    // From parts: the default target ("/", unused: the wire has the real one) is not parsed
    // again, as `build_no_case` would.
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = req.method.clone();
    let mut framing = RequestHeader::from(parts);
    if chunked {
        framing.insert_header(header::TRANSFER_ENCODING, "chunked")?;
    } else {
        for v in headers.get_all(header::CONTENT_LENGTH) {
            framing.append_header(header::CONTENT_LENGTH, v.clone())?;
        }
    }
    if let Some(v) = expect {
        framing.insert_header(header::EXPECT, v.clone())?;
    }
    Ok(Box::new(framing))
}

/// Who called, told to the upstream in the headers the route names (a client's own values for
/// them were dropped). A value that is no header value (a control character in a `sub`) is not
/// sent.
fn identity_fields(wire: &mut BytesMut, names: &IdentityHeaders, id: &Identity) {
    let values = [
        (&names.subject, id.subject.as_deref()),
        (&names.client_id, id.client_id.as_deref()),
        (&names.key, id.key_name.as_deref()),
    ];
    for (name, value) in values {
        if let Some(v) = value.filter(|v| checked(v).is_ok()) {
            field(wire, name.as_str().as_bytes(), v.as_bytes());
        }
    }
    if !id.scopes.is_empty() {
        let scopes = id.scopes.join(" ");
        if checked(&scopes).is_ok() {
            field(wire, names.scopes.as_str().as_bytes(), scopes.as_bytes());
        }
    }
}

/// What a client says about the path it came by is not evidence: its proxy-set headers were
/// dropped, and ours are written. A configured proxy in front of us (a load balancer) is
/// believed: its headers stay, and it is added to X-Forwarded-For.
fn forwarding_fields(
    wire: &mut BytesMut,
    peer_ip: Option<std::net::IpAddr>,
    req: &RequestHeader,
    dropped: &Dropped,
    ctx: &Ctx,
) -> Result<()> {
    let mut sent_for = Vec::new();
    if dropped.trusted {
        for v in req.headers.get_all("x-forwarded-for") {
            if !sent_for.is_empty() {
                sent_for.extend_from_slice(b", ");
            }
            sent_for.extend_from_slice(v.as_bytes());
        }
    }
    if let Some(ip) = peer_ip {
        use std::io::Write;
        if !sent_for.is_empty() {
            sent_for.extend_from_slice(b", ");
        }
        let _ = write!(sent_for, "{ip}");
    }
    if !sent_for.is_empty() {
        field(wire, b"x-forwarded-for", &sent_for);
    }
    if dropped.forwarded_proto {
        let proto: &[u8] = if ctx.tls { b"https" } else { b"http" };
        field(wire, b"x-forwarded-proto", proto);
    }
    if dropped.forwarded_host {
        let host = checked(&ctx.client_host)?;
        field(wire, b"x-forwarded-host", host.as_bytes());
    }
    Ok(())
}

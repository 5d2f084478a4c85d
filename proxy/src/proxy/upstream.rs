//! `peer` and `upstream_head`: the replica, and the request head it gets.
//! Hop-by-hop headers dropped, Host as the upstream expects it, the caller's identity in the
//! route's headers (never the client's own values for them), the forwarding headers only we set
//! (or a trusted balancer's), and the backend's own session id restored.

use http::header::{self, HeaderName, HeaderValue};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::Error;

use super::ctx::{Ctx, Restore};
use super::{EdgeProxy, SESSION_HEADER};
use crate::config::IdentityHeaders;
use crate::upstream::affinity;

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

/// Names a `Connection` header may not make hop-by-hop: framing (pingora's), Host, and the
/// forwarding headers (`forwarding_headers` decides those: a trusted balancer's stay).
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

/// The hop-by-hop headers present in `headers`: the fixed set plus what `Connection` lists.
/// Allocates nothing when there are none (most requests).
pub(super) fn hop_by_hop(headers: &http::HeaderMap) -> Vec<HeaderName> {
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
        .filter(|t| !t.is_empty() && !end_to_end(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok());
    for name in listed {
        if headers.contains_key(&name) && !present.contains(&name) {
            present.push(name);
        }
    }
    present
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

    pub(super) fn upstream_head(
        &self,
        client: Option<&SocketAddr>,
        req: &mut RequestHeader,
        ctx: &Ctx,
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
        if ctx.route_entry().is_some_and(|r| r.config.policy.is_some()) {
            // Its list answers are read and filtered: asked for uncompressed.
            req.remove_header(&header::ACCEPT_ENCODING);
        }
        identity_headers(req, ctx)?;
        forwarding_headers(client, req, ctx)?;
        restore_session(req, ctx)
    }
}

/// Who called, told to the upstream in the headers the route names (a client's own values for
/// them are dropped first); the client's credentials stay at the edge unless the route forwards
/// tokens.
fn identity_headers(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let auth = ctx.route_entry().and_then(|r| r.config.auth.as_deref());
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
    // A DPoP proof names this request at this edge: nothing for the upstream to use.
    req.remove_header("dpop");
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

/// What a client says about the path it came by is not evidence: every proxy-set header it sent
/// is dropped, and ours are set. A configured proxy in front of us (a load balancer) is
/// believed: its headers stay, and it is added to X-Forwarded-For.
fn forwarding_headers(
    client: Option<&SocketAddr>,
    req: &mut RequestHeader,
    ctx: &Ctx,
) -> Result<()> {
    let peer_ip = client.and_then(|a| a.as_inet()).map(|a| a.ip());
    let trusted = peer_ip.is_some_and(|ip| {
        ctx.snap
            .as_ref()
            .is_some_and(|s| s.config.trusted_proxies.iter().any(|n| n.contains(&ip)))
    });
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
    Ok(())
}

/// The backend's own session id, in the header or query parameter it came in. Kept in `ctx`: a
/// request sent again on a fresh connection (its pooled one was closed) carries it too.
fn restore_session(req: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    match &ctx.restore {
        Some(Restore::Header(id)) => {
            req.insert_header(SESSION_HEADER, id.as_str())?;
        }
        Some(Restore::Query { key, value }) => {
            let uri = &req.uri;
            let query = affinity::replace_query_session(uri.query().unwrap_or(""), key, value);
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

//! Access control on the request path: the discovery documents a client starts from (RFC 9728),
//! CORS preflights for protected routes, the credential check of a route's `auth`, and its
//! `rate_limit`. The proxy calls in once per request, after routing; every outcome is a
//! [`Decision`], and every answer data ([`Answer`]) the request path writes.

pub mod lists;
pub mod policy;

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::http::RequestHeader;

use crate::auth::{self, Authenticator, Denied, Identity, Scheme};
use crate::config::{Dpop, Host, Route};
use crate::limits::{Budget, Limiter};
use crate::metrics;
use crate::reply::Answer;

/// Where RFC 9728 metadata lives; a route's is this plus the route's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The most path prefixes of a request accepted as its resource identifier.
const MAX_PREFIXES: usize = 8;

/// Headers a browser client sends to a protected route, and those it may read back.
const ALLOW_HEADERS: &str =
    "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name, last-event-id";
const EXPOSE_HEADERS: &str = "www-authenticate, mcp-session-id, mcp-protocol-version";

/// The public origin clients reach a host at (`https://name[:port]`), written out only when an
/// answer needs it (most requests never do).
pub struct PublicUrl<'a> {
    scheme: &'static str,
    host: &'a str,
    /// None for the scheme's default port.
    port: Option<u16>,
}

impl<'a> PublicUrl<'a> {
    pub fn new(tls: bool, host: &'a str, port: u16) -> Self {
        let (scheme, default) = if tls { ("https", 443) } else { ("http", 80) };
        Self {
            scheme,
            host,
            port: (port != default).then_some(port),
        }
    }

    pub fn base(&self) -> String {
        match self.port {
            None => format!("{}://{}", self.scheme, self.host),
            Some(p) => format!("{}://{}:{p}", self.scheme, self.host),
        }
    }

    /// The resource identifier of `route` (RFC 8707): its configured one, or its URL.
    pub fn resource(&self, route: &Route) -> String {
        let configured = route
            .auth
            .as_ref()
            .and_then(|a| a.oauth.as_ref())
            .and_then(|o| o.resource.clone());
        configured.unwrap_or_else(|| format!("{}{}", self.base(), route.path))
    }

    /// The resource identifiers a token for a request to `path` on `route` may name: the
    /// route's, and without a configured one the request URL's own path prefixes within the
    /// route (a client of `https://host/mcp` on a host-wide route asks for that, RFC 9728 §3.3),
    /// space-separated.
    pub fn resources(&self, route: &Route, path: &str) -> String {
        let mut out = self.resource(route);
        let configured = route
            .auth
            .as_ref()
            .and_then(|a| a.oauth.as_ref())
            .is_some_and(|o| o.resource.is_some());
        if configured {
            return out;
        }
        let base = self.base();
        let within = path
            .strip_prefix(route.path.trim_end_matches('/'))
            .unwrap_or("");
        let mut prefix = route.path.trim_end_matches('/').to_string();
        for segment in within
            .split('/')
            .filter(|s| !s.is_empty())
            .take(MAX_PREFIXES)
        {
            prefix.push('/');
            prefix.push_str(segment);
            out.push(' ');
            out.push_str(&base);
            out.push_str(&prefix);
        }
        out
    }

    /// Where `route`'s metadata is served.
    pub fn metadata_url(&self, route: &Route) -> String {
        let suffix = if route.path == "/" {
            ""
        } else {
            route.path.as_str()
        };
        format!("{}{METADATA_PATH}{suffix}", self.base())
    }
}

/// What the request path learns from a route's access control.
#[derive(Default)]
pub struct Admitted {
    pub identity: Option<Identity>,
    /// `RateLimit-Policy` and `RateLimit` for the response.
    pub rate_headers: Vec<(HeaderName, String)>,
    /// The caller's budgets on this route.
    pub budget: Option<Budget>,
    /// The budgets are spent once the body's tool calls are known (`Budget::spend`).
    pub charge_with_body: bool,
}

/// What access control decided about a request.
// Returned once per request and unpacked at once: boxing `Allow` would cost an allocation on
// every admitted request to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// It goes on, with what was learned.
    Allow(Admitted),
    /// It is answered here: a preflight, a challenge (401/403), or a refusal (429).
    Answer(Answer),
}

/// The CORS headers of an answer to a browser client from `origin`.
pub fn cors_headers(origin: Option<&str>) -> Vec<(HeaderName, String)> {
    vec![
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin.unwrap_or("*").to_string(),
        ),
        (header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS.into()),
        (header::VARY, "origin".into()),
    ]
}

fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight(origin: Option<&str>) -> Answer {
    let mut h = cors_headers(origin);
    h.push((
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, DELETE, OPTIONS".into(),
    ));
    h.push((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS.into()));
    h.push((header::ACCESS_CONTROL_MAX_AGE, "86400".into()));
    Answer::new(204, "text/plain", Bytes::new()).with_headers(h)
}

/// The route whose metadata `path` asks for, in every form a client derives from its MCP URL
/// (`https://host/mcp`): RFC 9728's `/.well-known/oauth-protected-resource/mcp` (the route that
/// serves `/mcp`, whether it is `/mcp` or a host-wide `/`), the bare `/.well-known/…` (the route
/// `/`, or the host's only OAuth route), and the path-appended `/mcp/.well-known/…` some
/// clients try. Only a route with OAuth has metadata.
fn metadata_route<'a, 'p>(host: &'a Host, path: &'p str) -> Option<(&'a Route, Option<&'p str>)> {
    let has_oauth = |r: &&Route| r.auth.as_ref().is_some_and(|a| a.oauth.is_some());
    let served = |p: &'p str| {
        let route = host
            .route_index(p)
            .map(|i| &host.routes[i])
            .filter(has_oauth)?;
        Some((route, Some(p)))
    };
    let Some(rest) = path.strip_prefix(METADATA_PATH) else {
        // Path-appended: `/mcp/.well-known/oauth-protected-resource`.
        let prefix = path
            .strip_suffix(METADATA_PATH)
            .or_else(|| path.strip_suffix(&format!("{METADATA_PATH}/")))?;
        return served(if prefix.is_empty() { "/" } else { prefix });
    };
    if rest.is_empty() || rest == "/" {
        let mut oauth = host.routes.iter().filter(has_oauth);
        let root = host.routes.iter().find(|r| r.path == "/").filter(has_oauth);
        let route = root.or_else(|| match (oauth.next(), oauth.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        })?;
        return Some((route, None));
    }
    if !rest.starts_with('/') {
        return None;
    }
    served(rest)
}

/// The answer to a request for protected resource metadata (or its preflight); `None`: the path
/// is not one.
pub fn well_known(
    req: &RequestHeader,
    host: &Host,
    public: &PublicUrl<'_>,
    path: &str,
    origin: Option<&str>,
) -> Option<Answer> {
    if !path.contains(METADATA_PATH) {
        return None;
    }
    let (route, derived_from) = metadata_route(host, path)?;
    let oauth = route.auth.as_ref().and_then(|a| a.oauth.as_ref())?;
    if is_preflight(req) {
        return Some(preflight(origin));
    }
    // The resource a client derived this URL from (RFC 9728 §3.3): its MCP URL, which tokens
    // may then name (`PublicUrl::resources`); a configured resource is named as written.
    let resource = match derived_from.map(|p| p.trim_end_matches('/')) {
        Some(p) if oauth.resource.is_none() && p.len() > route.path.trim_end_matches('/').len() => {
            format!("{}{p}", public.base())
        }
        _ => public.resource(route),
    };
    let body = auth::resource_metadata(&resource, oauth);
    Some(Answer::json(200, body).with_headers(cors_headers(origin)))
}

/// The address a request comes from: the peer's, or behind `trusted` proxies (a balancer) the
/// client's as the nearest of them says: the rightmost `X-Forwarded-For` entry that is not
/// itself a trusted proxy (what the client wrote itself stands to the left of what the balancer
/// appended, and is never reached), else the peer. IPv4-mapped IPv6 addresses are read as IPv4
/// (a dual-stack listener sees the balancer so).
pub fn real_client(
    peer: std::net::IpAddr,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    let parse = |s: &str| -> Option<std::net::IpAddr> {
        let s = s.trim();
        s.parse::<std::net::IpAddr>()
            .ok()
            .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
            .map(|ip| ip.to_canonical())
    };
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        match parse(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return ip,
            // Not an address where the balancer writes one: counted as the balancer's own.
            None => return peer,
        }
    }
    peer
}

/// Who asks, as access control sees it.
pub struct Caller<'a> {
    pub req: &'a RequestHeader,
    pub client: Option<std::net::IpAddr>,
    pub origin: Option<&'a str>,
}

impl Caller<'_> {
    /// The key of an address's budgets: IPv6 by its /64 (one host holds a whole one).
    fn address(&self) -> String {
        self.client.map_or_else(
            || "ip:-".into(),
            |ip| format!("ip:{}", crate::limits::address_key(ip)),
        )
    }
}

/// Runs `route`'s access control: its credentials, then its rate limit.
pub async fn check(
    authn: &Authenticator,
    limiter: &Limiter,
    labels: (&str, &str),
    route: &Route,
    public: &PublicUrl<'_>,
    caller: &Caller<'_>,
) -> Decision {
    let mut admitted = Admitted::default();
    // `who` is asked only when the route has a rate limit: naming the caller formats its
    // address, work a route without budgets would do on every request for nothing.
    let budget = |who: &dyn Fn() -> String| {
        route.rate_limit.as_ref().map(|limit| Budget {
            labels: (labels.0.to_string(), labels.1.to_string()),
            caller: who(),
            limit: limit.clone(),
        })
    };
    if let Some(auth) = &route.auth {
        match authenticate(authn, limiter, labels, auth, route, public, caller, budget).await {
            Ok(id) => admitted.identity = Some(id),
            Err(answer) => return Decision::Answer(answer),
        }
    }
    let who = || {
        (admitted.identity.as_ref())
            .and_then(Identity::caller)
            .unwrap_or_else(|| caller.address())
    };
    if let Some(b) = budget(&who) {
        // A POST to a route with tool budgets spends the route's with its tool calls, once the
        // body says which (a call its tool refuses does not use up the route's); until then the
        // route's is only checked.
        let deferred = b.has_tools() && caller.req.method == http::Method::POST;
        let spent = if deferred {
            b.peek(limiter).map(|()| Vec::new())
        } else {
            b.spend(limiter, &[])
        };
        match spent {
            Ok(h) => admitted.rate_headers = h,
            Err(refusal) => {
                return Decision::Answer(refusal.with_headers(cors_headers(caller.origin)))
            }
        }
        admitted.charge_with_body = deferred;
        admitted.budget = Some(b);
    }
    Decision::Allow(admitted)
}

/// A route's credential check, guarded by the address's budget of refused credentials (`budget`
/// makes the address's budget): the caller, or the answer (preflight, challenge, 429).
#[allow(clippy::too_many_arguments)]
async fn authenticate(
    authn: &Authenticator,
    limiter: &Limiter,
    labels: (&str, &str),
    auth: &crate::config::AuthConfig,
    route: &Route,
    public: &PublicUrl<'_>,
    caller: &Caller<'_>,
    budget: impl Fn(&dyn Fn() -> String) -> Option<Budget>,
) -> Result<Identity, Answer> {
    let m = metrics::get();
    if is_preflight(caller.req) {
        return Err(preflight(caller.origin));
    }
    // An address that spent its budget on refused credentials is refused before any
    // credential is checked: past it, a right guess costs a guesser the same 429.
    // A request without any credential guesses nothing and is not held back (an OAuth
    // client's discovery starts so, from behind the same NAT as a guesser maybe).
    let offers = caller.req.headers.contains_key(header::AUTHORIZATION)
        || auth
            .api_keys
            .as_ref()
            .and_then(|k| k.header.as_ref())
            .is_some_and(|h| caller.req.headers.contains_key(h));
    let guard = budget(&|| caller.address());
    let spent = guard
        .as_ref()
        .filter(|_| offers)
        .map(|g| g.failures(limiter, false));
    if let Some(Err(refusal)) = spent {
        return Err(refusal.with_headers(cors_headers(caller.origin)));
    }
    let resource = public.resources(route, caller.req.uri.path());
    // Behind a balancer that terminates TLS the edge sees http; the configured resource names
    // the origin clients use.
    let origin = auth
        .oauth
        .as_ref()
        .and_then(|o| o.resource.as_deref())
        .and_then(|r| url::Url::parse(r).ok())
        .map(|u| u.origin().ascii_serialization());
    let url = format!(
        "{}{}",
        origin.unwrap_or_else(|| public.base()),
        caller.req.uri.path()
    );
    let presented = auth::Presented {
        method: caller.req.method.as_str(),
        url: &url,
    };
    let checked = authn
        .check(auth, &resource, &caller.req.headers, &presented)
        .await;
    let label = checked.as_ref().map_or_else(|d| d.label(), |_| "ok");
    m.auth_results
        .with_label_values(&[labels.0, labels.1, label])
        .inc();
    checked.map_err(|denied| {
        // A refused credential spends the client address's budget of failures, so guessing
        // keys or tokens (each one a signature check) is throttled. Asking without one
        // (every OAuth client's first request) guesses nothing.
        if let (Some(g), true) = (&guard, denied.is_a_guess()) {
            if let Err(refusal) = g.failures(limiter, true) {
                return refusal.with_headers(cors_headers(caller.origin));
            }
        }
        challenge(denied, auth, route, public, caller.origin)
    })
}

/// The 401/403/503 of a refused credential, with its RFC 6750 challenge.
fn challenge(
    denied: Denied,
    auth: &crate::config::AuthConfig,
    route: &Route,
    public: &PublicUrl<'_>,
    origin: Option<&str>,
) -> Answer {
    let oauth = auth.oauth.as_ref();
    let metadata = oauth.map(|_| public.metadata_url(route));
    let scopes = oauth.map_or(&[][..], |o| &o.scopes[..]);
    let mut h = cors_headers(origin);
    let dpop = oauth.map_or(Dpop::Off, |o| o.dpop);
    let schemes: &[Scheme] = match dpop {
        Dpop::Off => &[Scheme::Bearer],
        Dpop::Allowed => &[Scheme::Bearer, Scheme::DPoP],
        Dpop::Required => &[Scheme::DPoP],
    };
    for scheme in schemes {
        h.push((
            header::WWW_AUTHENTICATE,
            denied.challenge_for(*scheme, metadata.as_deref(), scopes),
        ));
    }
    if denied == Denied::IssuerUnavailable {
        h.push((header::RETRY_AFTER, "5".into()));
    }
    Answer::json(denied.status(), denied.body()).with_headers(h)
}

/// The answer to a request the route's policy refuses: 403 `insufficient_scope` with every scope
/// the call needs (the route's and the allowing rule's) when a scope would allow it; otherwise
/// 403 with a JSON-RPC error naming what is not allowed (clients surface its message).
/// `metadata` is the route's metadata URL (see [`PublicUrl::metadata_url`]).
pub fn policy_refusal(
    refusal: &policy::Refusal,
    route: &Route,
    metadata: &str,
    origin: Option<&str>,
) -> Answer {
    let mut h = cors_headers(origin);
    let oauth = route.auth.as_ref().and_then(|a| a.oauth.as_ref());
    if let (Some(needs), Some(oauth)) = (&refusal.needs_scopes, oauth) {
        let mut scopes = oauth.scopes.clone();
        for s in needs {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        h.push((
            header::WWW_AUTHENTICATE,
            Denied::InsufficientScope.challenge(Some(metadata), &scopes),
        ));
        return Answer::json(403, Denied::InsufficientScope.body())
            .with_headers(h)
            .refused("policy");
    }
    Answer::json(403, policy::error_body(refusal))
        .with_headers(h)
        .refused("policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, v.parse().unwrap());
            }
            h
        };
        let balancer: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.9")]);
        for peer in [balancer, mapped] {
            assert_eq!(
                real_client(peer, &xff, &trusted).to_string(),
                "198.51.100.7",
                "{peer}"
            );
        }
        // X-Real-IP is not read: a balancer that sets only X-Forwarded-For passes the client's.
        let real_ip = headers(&[("x-real-ip", "192.0.2.1")]);
        assert_eq!(real_client(balancer, &real_ip, &trusted), balancer);
        // From anyone else, nothing forwarded counts.
        let stranger: std::net::IpAddr = "192.0.2.50".parse().unwrap();
        assert_eq!(real_client(stranger, &xff, &trusted), stranger);
        // Garbage where the balancer writes: the balancer's own address.
        let junk = headers(&[("x-forwarded-for", "1.2.3.4, not-an-address")]);
        assert_eq!(real_client(balancer, &junk, &trusted), balancer);
    }
}

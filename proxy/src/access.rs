//! Access control on the request path: the discovery documents a client starts from (RFC 9728),
//! CORS preflights for protected routes, the credential check of a route's `auth`, and its
//! `rate_limit`. The proxy calls in once per request, after routing.

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::proxy::Session;
use pingora::Result;

use crate::auth::{self, Authenticator, Denied, Identity};
use crate::config::{Host, Rate, Route};
use crate::metrics;
use crate::reply::respond;

/// Where RFC 9728 metadata lives; a route's is this plus the route's path.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

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
    /// The caller's budgets on this route, for a decision the body completes.
    pub budget: Option<Budget>,
    /// The tool budget waits for the body (a `tools/call` named there, not in headers).
    pub tool_in_body: bool,
}

fn cors(origin: Option<&str>) -> Vec<(HeaderName, String)> {
    vec![
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            origin.unwrap_or("*").to_string(),
        ),
        (header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS.into()),
        (header::VARY, "origin".into()),
    ]
}

fn is_preflight(session: &Session) -> bool {
    let req = session.req_header();
    req.method == http::Method::OPTIONS
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

async fn preflight(session: &mut Session, origin: Option<&str>) -> Result<bool> {
    let mut h = cors(origin);
    h.push((
        header::ACCESS_CONTROL_ALLOW_METHODS,
        "GET, POST, DELETE, OPTIONS".into(),
    ));
    h.push((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS.into()));
    h.push((header::ACCESS_CONTROL_MAX_AGE, "86400".into()));
    respond(session, 204, "text/plain", Bytes::new(), &h).await
}

/// The route whose metadata `path` asks for: `/.well-known/oauth-protected-resource/mcp` the
/// route `/mcp`; the bare path the route `/`, or the host's only OAuth route.
fn metadata_route<'a>(host: &'a Host, path: &str) -> Option<&'a Route> {
    let rest = path.strip_prefix(METADATA_PATH)?;
    let has_oauth = |r: &&Route| r.auth.as_ref().is_some_and(|a| a.oauth.is_some());
    if rest.is_empty() || rest == "/" {
        let mut oauth = host.routes.iter().filter(has_oauth);
        let root = host.routes.iter().find(|r| r.path == "/").filter(has_oauth);
        return root.or_else(|| match (oauth.next(), oauth.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        });
    }
    if !rest.starts_with('/') {
        return None;
    }
    host.routes
        .iter()
        .filter(has_oauth)
        .find(|r| r.path == rest)
}

/// Answers a request for protected resource metadata (and its preflight). `None`: the path is
/// not one; `Some(handled)` otherwise.
pub async fn well_known(
    session: &mut Session,
    host: &Host,
    public: &PublicUrl<'_>,
    path: &str,
    origin: Option<&str>,
) -> Result<Option<bool>> {
    if !path.starts_with(METADATA_PATH) {
        return Ok(None);
    }
    let Some(route) = metadata_route(host, path) else {
        return Ok(None);
    };
    let Some(oauth) = route.auth.as_ref().and_then(|a| a.oauth.as_ref()) else {
        return Ok(None);
    };
    if is_preflight(session) {
        return preflight(session, origin).await.map(Some);
    }
    let body = auth::resource_metadata(&public.resource(route), oauth);
    respond(
        session,
        200,
        "application/json",
        Bytes::from(body),
        &cors(origin),
    )
    .await
    .map(Some)
}

/// The response headers that describe budget `name` after decision `d`
/// (draft-ietf-httpapi-ratelimit-headers).
fn rate_headers(name: &str, rate: Rate, d: auth::rate::Decision) -> Vec<(HeaderName, String)> {
    let reset = d.reset.as_secs_f64().ceil() as u64;
    vec![
        (
            HeaderName::from_static("ratelimit-policy"),
            format!(
                "\"{name}\";q={};w={}",
                rate.requests,
                rate.per.as_secs().max(1)
            ),
        ),
        (
            HeaderName::from_static("ratelimit"),
            format!("\"{name}\";r={};t={reset}", d.remaining),
        ),
    ]
}

/// Runs `route`'s access control. `Ok(Err(handled))`: the request was answered (preflight,
/// refusal); `Ok(Ok(admitted))`: it goes on.
pub async fn check(
    authn: &Authenticator,
    session: &mut Session,
    labels: (&str, &str),
    route: &Route,
    public: &PublicUrl<'_>,
    client: Option<std::net::IpAddr>,
    origin: Option<&str>,
) -> Result<std::result::Result<Admitted, bool>> {
    let m = metrics::get();
    let mut admitted = Admitted::default();
    if let Some(auth) = &route.auth {
        if is_preflight(session) {
            return preflight(session, origin).await.map(Err);
        }
        let resource = public.resource(route);
        match authn
            .check(auth, &resource, &session.req_header().headers)
            .await
        {
            Ok(id) => {
                m.auth_results
                    .with_label_values(&[labels.0, labels.1, "ok"])
                    .inc();
                admitted.identity = Some(id);
            }
            Err(denied) => {
                m.auth_results
                    .with_label_values(&[labels.0, labels.1, denied.label()])
                    .inc();
                // Refusals spend the client address's budget too, so guessing keys or
                // tokens (each one a signature check) is throttled like any other traffic.
                if let Some(limit) = &route.rate_limit {
                    let budget = Budget {
                        labels: (labels.0.to_string(), labels.1.to_string()),
                        caller: client.map_or_else(|| "ip:-".into(), |ip| format!("ip:{ip}")),
                        limit: limit.clone(),
                    };
                    if let Err(refusal) = budget.spend(authn, None, true) {
                        return refusal.send(session, origin).await.map(Err);
                    }
                }
                let oauth = auth.oauth.as_ref();
                let metadata = oauth.map(|_| public.metadata_url(route));
                let scopes = oauth.map_or(&[][..], |o| &o.scopes[..]);
                let mut h = cors(origin);
                h.push((
                    header::WWW_AUTHENTICATE,
                    denied.challenge(metadata.as_deref(), scopes),
                ));
                if denied == Denied::IssuerUnavailable {
                    h.push((header::RETRY_AFTER, "5".into()));
                }
                return respond(
                    session,
                    denied.status(),
                    "application/json",
                    Bytes::from(denied.body()),
                    &h,
                )
                .await
                .map(Err);
            }
        }
    }
    if let Some(limit) = &route.rate_limit {
        let caller = admitted
            .identity
            .as_ref()
            .and_then(Identity::caller)
            .or_else(|| client.map(|ip| format!("ip:{ip}")))
            .unwrap_or_else(|| "ip:-".into());
        let req = session.req_header();
        let text = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
        let method = text("mcp-method");
        let tool = (method == Some("tools/call"))
            .then(|| text("mcp-name"))
            .flatten();
        // A client that predates the Mcp-Method/Mcp-Name headers names the tool in the body:
        // its tool budget is decided there (`tool_in_body`).
        admitted.tool_in_body =
            !limit.tools.is_empty() && method.is_none() && req.method == http::Method::POST;
        let budget = Budget {
            labels: (labels.0.to_string(), labels.1.to_string()),
            caller,
            limit: limit.clone(),
        };
        match budget.spend(authn, tool, true) {
            Ok(h) => admitted.rate_headers = h,
            Err(refusal) => return refusal.send(session, origin).await.map(Err),
        }
        admitted.budget = Some(budget);
    }
    Ok(Ok(admitted))
}

/// A caller's budgets on one route.
pub struct Budget {
    labels: (String, String),
    caller: String,
    limit: crate::config::RateLimit,
}

/// A request over a budget: the 429 it gets.
pub struct Refusal {
    headers: Vec<(HeaderName, String)>,
}

impl Refusal {
    pub async fn send(&self, session: &mut Session, origin: Option<&str>) -> Result<bool> {
        let mut h = cors(origin);
        h.extend(self.headers.iter().cloned());
        respond(
            session,
            429,
            "application/json",
            Bytes::from_static(br#"{"error":"rate_limited","error_description":"too many requests; see Retry-After"}"#),
            &h,
        )
        .await
    }
}

impl Budget {
    /// Spends one request of the route's budget (with `route_too`) and of `tool`'s, if it has
    /// one. Every budget must allow the request before any is spent: a call refused by its
    /// tool's budget does not use up the route's.
    pub fn spend(
        &self,
        authn: &Authenticator,
        tool: Option<&str>,
        route_too: bool,
    ) -> std::result::Result<Vec<(HeaderName, String)>, Refusal> {
        let mut budgets = Vec::new();
        if route_too {
            budgets.push(("default", self.limit.default));
        }
        if let Some((name, rate)) = tool.and_then(|t| self.limit.tools.iter().find(|(n, _)| n == t))
        {
            budgets.push((name.as_str(), *rate));
        }
        let (host, route) = (&self.labels.0, &self.labels.1);
        let key = |name: &str| format!("{host}\u{0}{route}\u{0}{name}\u{0}{}", self.caller);
        let now = Instant::now();
        for (name, rate) in &budgets {
            let d = authn.limiter.peek(&key(name), *rate, now);
            if !d.allowed {
                metrics::get()
                    .rate_limited
                    .with_label_values(&[host.as_str(), route.as_str(), name])
                    .inc();
                let mut headers = rate_headers(name, *rate, d);
                headers.push((
                    header::RETRY_AFTER,
                    d.reset.as_secs_f64().ceil().max(1.0).to_string(),
                ));
                return Err(Refusal { headers });
            }
        }
        let mut headers = Vec::new();
        for (name, rate) in budgets {
            let d = authn.limiter.check(&key(name), rate, now);
            headers = rate_headers(name, rate, d);
        }
        Ok(headers)
    }
}

/// The tools a JSON-RPC body calls (`tools/call` requests; a batch may hold several).
pub fn tools_called(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let messages = match v {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    messages
        .iter()
        .filter(|m| m["method"] == "tools/call")
        .filter_map(|m| m["params"]["name"].as_str().map(str::to_string))
        .collect()
}

//! One host of the configuration: its TLS source, names, routes (with their upstreams, access
//! control and MCP options), built from the raw layer.

use std::path::Path;
use std::sync::Arc;

use serde_yaml_ng::Value;

use super::acme::Challenge;
use super::auth::{build_auth, AuthConfig};
use super::model::*;
use super::policy::Policy;
use super::policy_yaml::build_policy;
use super::rate::{build_rate_limit, RateLimit};
use super::raw::{RawHost, RawMcp, RawRoute, RawTlsFiles};
use super::upstream::build_upstream;
use super::{Collector, KeyPath};
use crate::names::{is_public_name, HostName};

/// The route's `mcp:` over the host's over the defaults.
pub(super) fn build_mcp(
    host: Option<&RawMcp>,
    route: Option<&RawMcp>,
    p: &KeyPath,
    c: &mut Collector,
) -> McpOptions {
    let d = McpOptions::default();
    let pick = |f: fn(&RawMcp) -> Option<usize>| route.and_then(f).or(host.and_then(f));
    let flag = |f: fn(&RawMcp) -> Option<bool>| route.and_then(f).or(host.and_then(f));
    let max_tools = pick(|m| m.max_tools).unwrap_or(d.max_tools);
    if !(1..=1000).contains(&max_tools) {
        c.err(
            &p.key("mcp").key("max_tools"),
            format!("{max_tools}: must be between 1 and 1000"),
        );
    }
    let observe = flag(|m| m.observe).unwrap_or(d.observe);
    let validate = flag(|m| m.validate).unwrap_or(d.validate);
    let strict = flag(|m| m.strict).unwrap_or(d.strict);
    if strict && !validate {
        c.err(
            &p.key("mcp").key("strict"),
            "applies with `validate: true` only",
        );
    }
    McpOptions {
        observe,
        max_tools: max_tools.clamp(1, 1000),
        validate,
        strict,
    }
}

/// One host: its names, TLS source, allowed origins and routes.
pub(super) fn build_host(
    name: &str,
    rh: RawHost,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Host> {
    let host_name = match HostName::parse(name) {
        Ok(n) => Some(n),
        Err(e) => {
            c.err(p, e.to_string());
            None
        }
    };
    let mut aliases = Vec::new();
    for (i, a) in rh.aliases.iter().enumerate() {
        match HostName::parse(a) {
            Ok(n) => aliases.push(n),
            Err(e) => c.err(&p.key("aliases").index(i), e.to_string()),
        }
    }
    let tls_auto = matches!(&rh.tls, Some(Value::String(k)) if k == "auto");
    let tls = build_tls_source(rh.tls, name, base, &p.key("tls"), c);
    let challenge = rh.challenge.as_deref().and_then(|s| {
        Challenge::parse(s)
            .map_err(|e| c.err(&p.key("challenge"), e))
            .ok()
    });
    let allowed_origins = rh.allowed_origins.map(|list| {
        let mut out = Vec::new();
        for (i, o) in list.iter().enumerate() {
            match normalize_origin(o) {
                Ok(n) => out.push(n),
                Err(e) => c.err(&p.key("allowed_origins").index(i), e),
            }
        }
        out
    });
    let host_auth = rh
        .auth
        .and_then(|v| build_auth(v, base, &p.key("auth"), c))
        .flatten();
    let host_rate = rh
        .rate_limit
        .and_then(|v| build_rate_limit(v, &p.key("rate_limit"), c))
        .flatten();
    let inherited = Inherited {
        auth: host_auth,
        rate_limit: host_rate,
        mcp: rh.mcp,
        policy: rh.policy.map(|v| (v, p.key("policy"))),
    };
    let mut routes = build_routes(rh.upstream, rh.routes, &inherited, base, p, c);
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));

    Some(Host {
        name: host_name?,
        aliases,
        tls: tls?,
        tls_auto,
        allowed_origins,
        routes,
        challenge,
    })
}

/// `upstream:` (one route `/`) or `routes:`, exactly one of them.
fn build_routes(
    upstream: Option<Value>,
    raw_routes: Option<Vec<RawRoute>>,
    inherited: &Inherited,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Vec<Route> {
    let mut routes = Vec::new();
    match (upstream, raw_routes) {
        (Some(_), Some(_)) => c.err(
            p,
            "set either `upstream` (every path) or `routes`, not both",
        ),
        (None, None) => c.err(p, "missing `upstream` (every path) or `routes`"),
        (Some(u), None) => {
            let up = build_upstream(u, base, &p.key("upstream"), c);
            let policy = route_policy(None, inherited, inherited.auth.as_deref(), c);
            if let (Some(up), Some(policy)) = (up, policy) {
                routes.push(Route {
                    path: "/".into(),
                    upstream: Arc::new(up),
                    auth: inherited.auth.clone(),
                    rate_limit: inherited.rate_limit.clone(),
                    mcp: build_mcp(inherited.mcp.as_ref(), None, p, c),
                    policy,
                });
            }
        }
        (None, Some(rs)) => {
            if rs.is_empty() {
                c.err(&p.key("routes"), "must list at least one route");
            }
            for (i, r) in rs.into_iter().enumerate() {
                let rp = p.key("routes").index(i);
                if let Some(route) = build_route(r, &routes, inherited, base, &rp, c) {
                    routes.push(route);
                }
            }
        }
    }
    routes
}

/// What a host's routes take from it unless they say otherwise.
struct Inherited {
    auth: Option<Arc<AuthConfig>>,
    rate_limit: Option<RateLimit>,
    mcp: Option<RawMcp>,
    /// The host's `policy:` and where it stands: built per route, against the route's `auth`.
    policy: Option<(Value, KeyPath)>,
}

/// A route's policy: its own `policy:` (at `own`), else the host's, checked against the
/// route's `auth`. `None`: refused (reported).
fn route_policy(
    own: Option<(Value, KeyPath)>,
    inherited: &Inherited,
    auth: Option<&AuthConfig>,
    c: &mut Collector,
) -> Option<Option<Arc<Policy>>> {
    let Some((v, at)) = own.or_else(|| inherited.policy.clone()) else {
        return Some(None);
    };
    build_policy(v, auth, &at, c).map(|p| p.map(Arc::new))
}

/// `tls:` of a host: a keyword or `{ cert, key }` (checked by loading the pair).
fn build_tls_source(
    raw: Option<Value>,
    name: &str,
    base: &Path,
    tp: &KeyPath,
    c: &mut Collector,
) -> Option<TlsSource> {
    match raw {
        None => {
            c.err(
                tp,
                "missing: one of auto, acme, self-signed, none, or { cert: FILE, key: FILE }",
            );
            None
        }
        Some(Value::String(s)) => match s.as_str() {
            "acme" => Some(TlsSource::Acme),
            "self-signed" => Some(TlsSource::SelfSigned),
            "none" => Some(TlsSource::None),
            // A public name gets a CA certificate, a local one a self-signed certificate.
            "auto" => Some(if is_public_name(name) {
                TlsSource::Acme
            } else {
                TlsSource::SelfSigned
            }),
            other => {
                c.err(
                    tp,
                    format!("{other:?}: expected auto, acme, self-signed, none, or {{ cert: FILE, key: FILE }}"),
                );
                None
            }
        },
        Some(v @ Value::Mapping(_)) => c.deserialize::<RawTlsFiles>(v, tp).and_then(|f| {
            let cert = resolve_path(base, &f.cert);
            let key = resolve_path(base, &f.key);
            match crate::pem::load_key_pair(&cert, &key) {
                Ok(_) => Some(TlsSource::Files { cert, key }),
                Err(e) => {
                    let at = if e.is_about_key() { "key" } else { "cert" };
                    c.err(&tp.key(at), e.to_string());
                    None
                }
            }
        }),
        Some(_) => {
            c.err(
                tp,
                "expected acme, self-signed, none, or { cert: FILE, key: FILE }",
            );
            None
        }
    }
}

/// One entry of `routes:`; its upstream, auth and limits are built (and their problems
/// reported) even under a bad path.
fn build_route(
    r: RawRoute,
    earlier: &[Route],
    inherited: &Inherited,
    base: &Path,
    rp: &KeyPath,
    c: &mut Collector,
) -> Option<Route> {
    let path_ok = check_route_path(&r.path, earlier, &rp.key("path"), c);
    let upstream = build_upstream(r.upstream, base, &rp.key("upstream"), c);
    let auth = match r.auth {
        None => Some(inherited.auth.clone()),
        Some(v) => build_auth(v, base, &rp.key("auth"), c),
    };
    let rate_limit = match r.rate_limit {
        None => Some(inherited.rate_limit.clone()),
        Some(v) => build_rate_limit(v, &rp.key("rate_limit"), c),
    };
    let (true, Some(up), Some(auth), Some(rate_limit)) = (path_ok, upstream, auth, rate_limit)
    else {
        return None;
    };
    let own = r.policy.map(|v| (v, rp.key("policy")));
    let policy = route_policy(own, inherited, auth.as_deref(), c)?;
    Some(Route {
        policy,
        mcp: build_mcp(inherited.mcp.as_ref(), r.mcp.as_ref(), rp, c),
        path: r.path,
        upstream: Arc::new(up),
        auth,
        rate_limit,
    })
}

/// A route's path prefix: absolute, without query or fragment, normalised, listed once.
fn check_route_path(path: &str, earlier: &[Route], pp: &KeyPath, c: &mut Collector) -> bool {
    if !path.starts_with('/') {
        c.err(pp, format!("{path:?} must start with /"));
    } else if path.contains(['?', '#']) {
        c.err(pp, "a path prefix has no query or fragment");
    } else if crate::path::normalize(path).map_or(true, |n| {
        n.trim_end_matches('/') != path.trim_end_matches('/')
    }) {
        // Requests are routed by their normalised path: this prefix could never match one.
        c.err(
            pp,
            format!("{path:?} has dot-segments or an escape no request path keeps after normalisation; write it normalised"),
        );
    } else if earlier.iter().any(|x| x.path == path) {
        c.err(pp, format!("{path} is listed twice"));
    } else {
        return true;
    }
    false
}

/// `scheme://host[:port]`, lower case, default ports removed.
pub fn normalize_origin(o: &str) -> Result<String, String> {
    let u = url::Url::parse(o)
        .map_err(|_| format!("{o:?} is not an origin like https://chatgpt.com"))?;
    if !(u.path() == "/" || u.path().is_empty()) || u.query().is_some() || !u.username().is_empty()
    {
        return Err(format!("{o:?}: an origin has no path, query or user"));
    }
    match u.origin() {
        url::Origin::Tuple(..) => Ok(u.origin().ascii_serialization()),
        url::Origin::Opaque(_) => Err(format!("{o:?} is not an http(s) origin")),
    }
}

//! One host of the configuration: its TLS source, names, routes (with their upstreams, access
//! control and MCP options), built from the raw layer.

use std::path::Path;
use std::sync::Arc;

use serde_yaml_ng::Value;

use super::auth::{build_auth, build_rate_limit};
use super::model::*;
use super::raw::{RawHost, RawMcp, RawTlsFiles};
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

/// Longest duration any setting takes: longer ones are typos, and would overflow the clock.
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

    let tp = p.key("tls");
    let tls_auto = matches!(&rh.tls, Some(Value::String(k)) if k == "auto");
    let tls = match rh.tls {
        None => {
            c.err(
                &tp,
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
                    &tp,
                    format!("{other:?}: expected auto, acme, self-signed, none, or {{ cert: FILE, key: FILE }}"),
                );
                None
            }
        },
        Some(v @ Value::Mapping(_)) => c.deserialize::<RawTlsFiles>(v, &tp).and_then(|f| {
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
                &tp,
                "expected acme, self-signed, none, or { cert: FILE, key: FILE }",
            );
            None
        }
    };

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
    let mut routes = Vec::new();
    match (rh.upstream, rh.routes) {
        (Some(_), Some(_)) => c.err(
            p,
            "set either `upstream` (every path) or `routes`, not both",
        ),
        (None, None) => c.err(p, "missing `upstream` (every path) or `routes`"),
        (Some(u), None) => {
            if let Some(up) = build_upstream(u, base, &p.key("upstream"), c) {
                routes.push(Route {
                    path: "/".into(),
                    upstream: Arc::new(up),
                    auth: host_auth.clone(),
                    rate_limit: host_rate.clone(),
                    mcp: build_mcp(rh.mcp.as_ref(), None, p, c),
                });
            }
        }
        (None, Some(rs)) => {
            if rs.is_empty() {
                c.err(&p.key("routes"), "must list at least one route");
            }
            for (i, r) in rs.into_iter().enumerate() {
                let rp = p.key("routes").index(i);
                let path_ok = if !r.path.starts_with('/') {
                    c.err(&rp.key("path"), format!("{:?} must start with /", r.path));
                    false
                } else if r.path.contains(['?', '#']) {
                    c.err(&rp.key("path"), "a path prefix has no query or fragment");
                    false
                } else if crate::path::normalize(&r.path).map_or(true, |n| {
                    n.trim_end_matches('/') != r.path.trim_end_matches('/')
                }) {
                    // Requests are routed by their normalised path: this prefix could never
                    // match one.
                    c.err(
                        &rp.key("path"),
                        format!(
                            "{:?} has dot-segments or an escape no request path keeps after normalisation; write it normalised",
                            r.path
                        ),
                    );
                    false
                } else if routes.iter().any(|x: &Route| x.path == r.path) {
                    c.err(&rp.key("path"), format!("{} is listed twice", r.path));
                    false
                } else {
                    true
                };
                // Built even under a bad path, so its own problems are reported in the same run.
                let upstream = build_upstream(r.upstream, base, &rp.key("upstream"), c);
                let auth = match r.auth {
                    None => Some(host_auth.clone()),
                    Some(v) => build_auth(v, base, &rp.key("auth"), c),
                };
                let rate_limit = match r.rate_limit {
                    None => Some(host_rate.clone()),
                    Some(v) => build_rate_limit(v, &rp.key("rate_limit"), c),
                };
                if let (true, Some(up), Some(auth), Some(rate_limit)) =
                    (path_ok, upstream, auth, rate_limit)
                {
                    let mcp = build_mcp(rh.mcp.as_ref(), r.mcp.as_ref(), &rp, c);
                    routes.push(Route {
                        path: r.path,
                        upstream: Arc::new(up),
                        auth,
                        rate_limit,
                        mcp,
                    });
                }
            }
        }
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));

    Some(Host {
        name: host_name?,
        aliases,
        tls: tls?,
        tls_auto,
        allowed_origins,
        routes,
    })
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

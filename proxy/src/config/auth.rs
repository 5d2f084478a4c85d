//! `auth:` and `rate_limit:` of a host or a route: who may call, and how often. Data only: the
//! verifiers (JWKS cache, introspection client) are built by `auth`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{opt_duration, resolve_path};
use super::{Collector, KeyPath};

/// Who may call a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// mcp-edge as an OAuth 2.1 resource server.
    pub oauth: Option<OAuthConfig>,
    /// Named keys, compared by their SHA-256.
    pub api_keys: Option<ApiKeys>,
    /// Headers that tell the upstream who called; stripped from every client request.
    pub identity: IdentityHeaders,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// The authorization server's issuer identifier (`https://…`), exactly as its tokens' `iss`.
    pub issuer: String,
    /// The resource identifier tokens must be issued for (`aud`); `None`: the route's public
    /// `https` URL.
    pub resource: Option<String>,
    /// Scopes every token must carry.
    pub scopes: Vec<String>,
    /// JWS algorithms accepted (never `none`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Opaque tokens are checked at the introspection endpoint with these credentials.
    pub introspection: Option<Introspection>,
    /// How long an introspection answer is reused (bounded by the token's `exp`).
    pub introspection_cache: Duration,
    /// A token naming an unknown key refetches the key set at most this often.
    pub jwks_min_refresh: Duration,
    /// Extra roots trusted for the authorization server's HTTPS, as DER.
    pub ca: Vec<CertificateDer<'static>>,
    /// Send the client's token on to the upstream (for upstreams that check it themselves).
    pub forward_token: bool,
    /// `aud` values accepted (any of them); empty: the resource identifier.
    pub audiences: Vec<String>,
    /// Which claims say who the caller is, what it may do and which groups it is in.
    pub claims: ClaimMap,
    /// Sender-constrained tokens (RFC 9449).
    pub dpop: Dpop,
}

/// Whether tokens may, or must, be proven with a DPoP key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dpop {
    /// `Authorization: DPoP` refused; bearer tokens only.
    #[default]
    Off,
    /// Bearer tokens, and DPoP-bound tokens with their proof.
    Allowed,
    /// DPoP-bound tokens with their proof only.
    Required,
}

/// Where an identity provider puts the caller's identity in its tokens: Entra ID's `scp` is a
/// space-separated string and its app roles are `roles`, Okta's `scp` an array, Auth0's
/// `scope` a string (and `permissions` an array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMap {
    /// The subject (default `sub`; Entra ID's stable user id is `oid`).
    pub subject: String,
    /// Claims whose values are scopes, unioned: a space-separated string or an array of strings
    /// (default `scope`, `scp`; `roles` is opt-in: app roles describe the caller, not what it
    /// was granted for this client).
    pub scopes: Vec<String>,
    /// The claim holding the caller's groups (default `groups`).
    pub groups: String,
}

impl Default for ClaimMap {
    fn default() -> Self {
        Self {
            subject: "sub".into(),
            scopes: vec!["scope".into(), "scp".into()],
            groups: "groups".into(),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Introspection {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeys {
    /// The header carrying the key; `None`: `Authorization: Bearer KEY`.
    pub header: Option<http::HeaderName>,
    /// Key names and the SHA-256 of each key.
    pub keys: Vec<(String, [u8; 32])>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub subject: http::HeaderName,
    pub client_id: http::HeaderName,
    pub scopes: http::HeaderName,
    pub key: http::HeaderName,
}

impl IdentityHeaders {
    /// The names a route without `identity_headers` uses.
    pub const DEFAULT: Self = Self {
        subject: http::HeaderName::from_static("x-auth-subject"),
        client_id: http::HeaderName::from_static("x-auth-client-id"),
        scopes: http::HeaderName::from_static("x-auth-scopes"),
        key: http::HeaderName::from_static("x-auth-key-name"),
    };
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl IdentityHeaders {
    pub fn all(&self) -> [&http::HeaderName; 4] {
        [&self.subject, &self.client_id, &self.scopes, &self.key]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// OAuth 2.1 resource server.
    oauth: Option<RawOAuth>,
    /// API keys.
    api_keys: Option<RawApiKeys>,
    /// Header names for the caller's identity sent upstream.
    identity_headers: Option<RawIdentity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOAuth {
    issuer: String,
    resource: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    introspection: Option<RawIntrospection>,
    introspection_cache: Option<String>,
    jwks_min_refresh: Option<String>,
    ca: Option<String>,
    #[serde(default)]
    forward_token: bool,
    audiences: Option<Vec<String>>,
    claims: Option<RawClaimMap>,
    /// `allowed` or `required`: DPoP-bound tokens (RFC 9449).
    dpop: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimMap {
    subject: Option<String>,
    scopes: Option<Vec<String>>,
    groups: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    client_id: String,
    client_secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKeys {
    header: Option<String>,
    /// `name: sha256:HEX`.
    #[serde(default)]
    keys: serde_yaml_ng::Mapping,
    /// A file of `name sha256:HEX` lines.
    file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    subject: Option<String>,
    client_id: Option<String>,
    scopes: Option<String>,
    key: Option<String>,
}

const DEFAULT_ALGORITHMS: [jsonwebtoken::Algorithm; 5] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::ES384,
    jsonwebtoken::Algorithm::EdDSA,
];

/// `auth:` of a host or route: `none` (a route opting out of its host's), or the map.
/// `Some(None)` is `none`.
pub(super) fn build_auth(
    v: Value,
    base: &Path,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Option<Arc<AuthConfig>>> {
    if matches!(&v, Value::String(s) if s == "none") {
        return Some(None);
    }
    let raw = c.deserialize::<RawAuth>(v, p)?;
    let oauth = raw
        .oauth
        .and_then(|o| build_oauth(o, base, &p.key("oauth"), c));
    let api_keys = raw
        .api_keys
        .and_then(|k| build_api_keys(k, base, &p.key("api_keys"), c));
    if oauth.is_none() && api_keys.is_none() {
        c.err(
            p,
            "needs `oauth`, `api_keys` or both (or `none` for no auth)",
        );
        return None;
    }
    let mut identity = IdentityHeaders::default();
    if let Some(r) = raw.identity_headers {
        let ip = p.key("identity_headers");
        for (key, value, slot) in [
            ("subject", r.subject, &mut identity.subject),
            ("client_id", r.client_id, &mut identity.client_id),
            ("scopes", r.scopes, &mut identity.scopes),
            ("key", r.key, &mut identity.key),
        ] {
            if let Some(v) = value {
                match http::HeaderName::from_bytes(v.as_bytes()) {
                    Ok(h) if edge_managed(&h) => c.err(&ip.key(key), managed(&v)),
                    Ok(h) => *slot = h,
                    Err(_) => c.err(&ip.key(key), format!("{v:?} is not a header name")),
                }
            }
        }
    }
    Some(Some(Arc::new(AuthConfig {
        oauth,
        api_keys,
        identity,
    })))
}

/// Headers the edge writes or removes itself: how the request is framed (length, chunking,
/// `Expect`), hop-by-hop ones, Host, the forwarding headers and the session id. A route's
/// identity or API-key header with one of these names would change what the upstream reads
/// as the request (dropping a Content-Length the body is still sent by is request smuggling).
pub fn edge_managed(name: &http::HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "expect"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "cookie"
            | "forwarded"
            | "x-real-ip"
            | "mcp-session-id"
    ) || n.starts_with("x-forwarded-")
}

fn managed(name: &str) -> String {
    format!(
        "{name:?} is a header the edge manages (framing, hop-by-hop, Host, forwarding or the \
         session id): choose another name"
    )
}

/// Audiences are compared byte for byte: blanks around one are a mistake.
fn check_audiences(audiences: &[String], p: &KeyPath, c: &mut Collector) -> bool {
    let mut ok = true;
    for (i, a) in audiences.iter().enumerate() {
        if a.trim().is_empty() || a.trim() != a {
            c.err(
                &p.index(i),
                format!("{a:?}: an audience is compared byte for byte; no blanks around it"),
            );
            ok = false;
        }
    }
    ok
}

/// `claims:` over the defaults; claim names must not be empty.
fn build_claim_map(raw: Option<RawClaimMap>, p: &KeyPath, c: &mut Collector) -> ClaimMap {
    let d = ClaimMap::default();
    let Some(r) = raw else { return d };
    let mut name = |key: &str, v: Option<String>, default: String| match v {
        Some(n) if !n.is_empty() => n,
        Some(_) => {
            c.err(&p.key(key), "a claim name cannot be empty");
            default
        }
        None => default,
    };
    let subject = name("subject", r.subject, d.subject);
    let groups = name("groups", r.groups, d.groups);
    let scopes = match r.scopes {
        Some(list) if list.is_empty() || list.iter().any(String::is_empty) => {
            c.err(&p.key("scopes"), "list one or more claim names");
            d.scopes
        }
        Some(list) => list,
        None => d.scopes,
    };
    ClaimMap {
        subject,
        scopes,
        groups,
    }
}

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
fn check_scopes(scopes: &[String], p: &KeyPath, c: &mut Collector) -> bool {
    let mut ok = true;
    for (i, s) in scopes.iter().enumerate() {
        let valid = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            c.err(&p.index(i), format!("{s:?} is not a scope token"));
            ok = false;
        }
    }
    ok
}

/// `algorithms:` asymmetric JWS algorithms only; `None` when one is not.
fn build_algorithms(
    raw: Option<&[String]>,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Vec<jsonwebtoken::Algorithm>> {
    let Some(list) = raw else {
        return Some(DEFAULT_ALGORITHMS.to_vec());
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, a) in list.iter().enumerate() {
        match a.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg)
                if !matches!(
                    alg,
                    jsonwebtoken::Algorithm::HS256
                        | jsonwebtoken::Algorithm::HS384
                        | jsonwebtoken::Algorithm::HS512
                ) =>
            {
                out.push(alg)
            }
            _ => {
                c.err(
                    &p.index(i),
                    format!("{a:?}: expected an asymmetric JWS algorithm (RS256, PS256, ES256, ES384, EdDSA, …); never none or HS*"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn build_oauth(o: RawOAuth, base: &Path, p: &KeyPath, c: &mut Collector) -> Option<OAuthConfig> {
    let mut ok = true;
    match url::Url::parse(&o.issuer) {
        Ok(u) if u.scheme() == "https" && u.query().is_none() && u.fragment().is_none() => {}
        _ => {
            c.err(
                &p.key("issuer"),
                format!(
                    "{:?} must be an https:// URL without query or fragment",
                    o.issuer
                ),
            );
            ok = false;
        }
    }
    if let Some(r) = &o.resource {
        if !matches!(url::Url::parse(r), Ok(u) if u.scheme() == "https" && u.fragment().is_none()) {
            c.err(&p.key("resource"), format!("{r:?} must be an https:// URL"));
            ok = false;
        }
    }
    ok &= check_scopes(&o.scopes, &p.key("scopes"), c);
    let algorithms = build_algorithms(o.algorithms.as_deref(), &p.key("algorithms"), c);
    ok &= algorithms.is_some();
    let algorithms = algorithms.unwrap_or_default();
    let leeway = opt_duration(
        c,
        &p.key("leeway"),
        o.leeway.as_deref(),
        Duration::from_secs(30),
    );
    let introspection_cache = opt_duration(
        c,
        &p.key("introspection_cache"),
        o.introspection_cache.as_deref(),
        Duration::from_secs(30),
    );
    let jwks_min_refresh = opt_duration(
        c,
        &p.key("jwks_min_refresh"),
        o.jwks_min_refresh.as_deref(),
        Duration::from_secs(10),
    );
    let ca = match &o.ca {
        None => Vec::new(),
        Some(f) => match crate::pem::read_certificates(&resolve_path(base, f)) {
            Ok(certs) => certs,
            Err(e) => {
                c.err(&p.key("ca"), e.to_string());
                ok = false;
                Vec::new()
            }
        },
    };
    let audiences = o.audiences.unwrap_or_default();
    ok &= check_audiences(&audiences, &p.key("audiences"), c);
    let claims = build_claim_map(o.claims, &p.key("claims"), c);
    let dpop = build_dpop(o.dpop.as_deref(), &p.key("dpop"), c);
    ok &= dpop.is_some();
    let dpop = dpop.unwrap_or_default();
    ok.then(|| OAuthConfig {
        issuer: o.issuer,
        resource: o.resource,
        scopes: o.scopes,
        algorithms,
        leeway,
        introspection: o.introspection.map(|i| Introspection {
            client_id: i.client_id,
            client_secret: i.client_secret,
        }),
        introspection_cache,
        jwks_min_refresh,
        ca,
        forward_token: o.forward_token,
        audiences,
        claims,
        dpop,
    })
}

fn build_dpop(raw: Option<&str>, p: &KeyPath, c: &mut Collector) -> Option<Dpop> {
    match raw {
        None | Some("off") => Some(Dpop::Off),
        Some("allowed") => Some(Dpop::Allowed),
        Some("required") => Some(Dpop::Required),
        Some(other) => {
            c.err(p, format!("{other:?}: expected allowed, required or off"));
            None
        }
    }
}

/// `sha256:HEX` → the digest.
pub fn parse_key_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .trim()
        .strip_prefix("sha256:")
        .ok_or("expected sha256:HEX (from `mcp-edge api-key NAME`), never the key itself")?;
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() == 32 && hex.len() == 64)
        .ok_or("expected sha256: and 64 hex digits")?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn build_api_keys(k: RawApiKeys, base: &Path, p: &KeyPath, c: &mut Collector) -> Option<ApiKeys> {
    let header = match k.header.as_deref() {
        None => None,
        Some(h) if h.eq_ignore_ascii_case("authorization") => None,
        Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) if edge_managed(&name) => {
                c.err(&p.key("header"), managed(h));
                None
            }
            Ok(name) => Some(name),
            Err(_) => {
                c.err(&p.key("header"), format!("{h:?} is not a header name"));
                None
            }
        },
    };
    let mut keys: Vec<(String, [u8; 32])> = Vec::new();
    let mut add = |name: String, hash: Result<[u8; 32], String>, at: KeyPath, c: &mut Collector| {
        match hash {
            Ok(h) if keys.iter().any(|(n, _)| *n == name) => {
                let _ = h;
                c.err(&at, format!("key name {name:?} is used twice"));
            }
            Ok(h) => keys.push((name, h)),
            // The value may be a key pasted by mistake: never quoted.
            Err(e) => c.err(&at, e),
        }
    };
    for (name, v) in k.keys {
        let (Value::String(name), Value::String(v)) = (name, v) else {
            c.err(&p.key("keys"), "entries are `name: sha256:HEX`");
            continue;
        };
        let at = p.key("keys").key(&name);
        add(name, parse_key_hash(&v), at, c);
    }
    if let Some(f) = &k.file {
        let path = resolve_path(base, f);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let at = p.key("file").key(&format!("line {}", n + 1));
                    match line.split_once(char::is_whitespace) {
                        Some((name, hash)) => add(name.to_string(), parse_key_hash(hash), at, c),
                        None => c.err(&at, "expected `name sha256:HEX`"),
                    }
                }
            }
            Err(e) => c.err(&p.key("file"), format!("{}: {e}", path.display())),
        }
    }
    if keys.is_empty() {
        c.err(p, "no keys: add `keys: { name: sha256:HEX }` or a `file`");
        return None;
    }
    Some(ApiKeys { header, keys })
}

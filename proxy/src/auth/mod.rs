//! Who may call: API keys and OAuth 2.1 bearer tokens (JWT access tokens checked against the
//! issuer's keys, RFC 9068; opaque tokens by introspection, RFC 7662), the discovery document
//! a client starts from (RFC 9728), and the challenges of RFC 6750.
//!
//! One [`Authenticator`] serves every host: issuers (metadata, key sets) and introspection
//! answers are cached across requests and reloads, keyed by what identifies them.

pub mod claims;
mod denied;
pub mod dpop;
pub mod issuer;

pub use denied::{Denied, Scheme};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::HeaderMap;
use jsonwebtoken::{DecodingKey, Validation};
use subtle::ConstantTimeEq;

use crate::config::{ApiKeys, AuthConfig, ClaimMap, Dpop, OAuthConfig};
use crate::outbound::JsonClient;
use crate::pem::sha256;
use issuer::Issuer;

/// Answers about tokens kept at once (bounded whatever the number of tokens seen).
const MAX_ANSWERS: usize = 10_000;
/// How long a verified JWT is taken at its word without verifying its signature again (never
/// past its `exp`): the signature check is most of a request's cost (BENCHMARKS.md).
const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// Who called, as far as the edge could tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// Groups the token says the caller is in (`oauth.claims.groups`).
    pub groups: Vec<String>,
    /// The API key's name, for a caller that sent one.
    pub key_name: Option<String>,
    /// The caller sent its credential in `Authorization` (removed before the upstream).
    pub bearer: bool,
    /// How the credential was checked: `api_key`, `jwt` or `introspection`.
    pub via: &'static str,
    /// The token's claims (or the introspection answer), for policies on claim values.
    pub claims: Option<Arc<serde_json::Value>>,
    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`).
    pub cnf_jkt: Option<String>,
}

impl Identity {
    /// The name a caller is known by in logs and rate limits.
    pub fn caller(&self) -> Option<String> {
        if let Some(k) = &self.key_name {
            return Some(format!("key:{k}"));
        }
        self.subject
            .as_ref()
            .or(self.client_id.as_ref())
            .map(|s| format!("sub:{s}"))
    }
}

/// RFC 9728 protected resource metadata for a resource protected by `oauth`.
pub fn resource_metadata(resource: &str, oauth: &OAuthConfig) -> String {
    let mut m = serde_json::json!({
        "resource": resource,
        "authorization_servers": [oauth.issuer],
        "scopes_supported": oauth.scopes,
        "bearer_methods_supported": ["header"],
    });
    if oauth.dpop != Dpop::Off {
        let algs: Vec<String> = dpop::ALGORITHMS.iter().map(|a| format!("{a:?}")).collect();
        m["dpop_signing_alg_values_supported"] = algs.into();
        m["dpop_bound_access_tokens_required"] = (oauth.dpop == Dpop::Required).into();
    }
    m.to_string()
}

/// The request a credential comes with: what a DPoP proof must name.
pub struct Presented<'a> {
    pub method: &'a str,
    /// The request's public URL (`https://host/path`), without query.
    pub url: &'a str,
}

/// An issuer, the extra roots trusted for it (DER) and its key-refetch floor.
type IssuerKey = (String, Vec<Vec<u8>>, Duration);

struct Answer {
    until: Instant,
    result: Result<Identity, Denied>,
}

/// Answers about tokens by a SHA-256 key, each until its deadline; bounded.
#[derive(Default)]
struct Answers(Mutex<HashMap<[u8; 32], Answer>>);

impl Answers {
    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Result<Identity, Denied>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|a| now < a.until)
            .map(|a| a.result.clone())
    }

    fn put(&self, key: [u8; 32], until: Instant, result: Result<Identity, Denied>) {
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ANSWERS {
            map.retain(|_, a| now < a.until);
            if map.len() >= MAX_ANSWERS {
                map.clear();
            }
        }
        map.insert(key, Answer { until, result });
    }
}

/// How long from now until Unix time `exp` (zero if past).
fn until_exp(exp: Option<u64>, cap: Duration) -> Duration {
    match exp {
        Some(e) => cap.min(Duration::from_secs(e.saturating_sub(unix_now()))),
        None => cap,
    }
}

#[derive(Default)]
pub struct Authenticator {
    /// By issuer and the extra roots trusted for it.
    issuers: Mutex<HashMap<IssuerKey, Arc<Issuer>>>,
    /// Introspection answers, by SHA-256 of the token.
    introspected: Answers,
    /// Verified JWTs, by SHA-256 of issuer, resource, accepted algorithms and token.
    verified: Answers,
    /// DPoP proof ids lately accepted.
    replays: dpop::Replays,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The credential of `Authorization: Bearer …` or `DPoP …`; `Err` for a header that is there
/// but not one.
fn credential(headers: &HeaderMap) -> Result<Option<(Scheme, &str)>, Denied> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Denied::Malformed);
    }
    let v = v.to_str().map_err(|_| Denied::Malformed)?;
    let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Scheme::DPoP
    } else {
        return Err(Denied::UnsupportedScheme);
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(Denied::Malformed);
    }
    Ok(Some((scheme, token)))
}

/// The DPoP rules of `oauth` for a token presented under `scheme` with `identity`: a proof of
/// the key the token names when presented under DPoP, none of a bound token as a bearer token.
fn check_binding(
    oauth: &OAuthConfig,
    scheme: Scheme,
    identity: &Identity,
    headers: &HeaderMap,
    prove: impl FnOnce(&str, &str) -> Result<(), Denied>,
) -> Result<(), Denied> {
    match (scheme, oauth.dpop, identity.cnf_jkt.as_deref()) {
        (Scheme::Bearer, Dpop::Required, _) => Err(Denied::DpopRequired),
        (Scheme::Bearer, _, None) => Ok(()),
        (Scheme::Bearer, _, Some(_)) | (Scheme::DPoP, _, None) => Err(Denied::DpopBinding),
        (Scheme::DPoP, _, Some(jkt)) => {
            let mut proofs = headers.get_all("dpop").iter();
            let (Some(proof), None) = (proofs.next(), proofs.next()) else {
                return Err(Denied::InvalidDpopProof);
            };
            let proof = proof.to_str().map_err(|_| Denied::InvalidDpopProof)?;
            prove(proof, jkt)
        }
    }
}

/// The key named by `presented`, comparing its SHA-256 with every stored hash in constant time.
fn match_key<'a>(keys: &'a ApiKeys, presented: &str) -> Option<&'a str> {
    let digest = sha256(presented.as_bytes());
    let mut found = None;
    for (name, hash) in &keys.keys {
        if bool::from(hash.ct_eq(&digest)) {
            found = Some(name.as_str());
        }
    }
    found
}

/// Scopes from a `scope` string (RFC 9068) or an `scp` array.
/// The strings of a claim: a space-separated string (`scope`, Entra ID's `scp`) or an array
/// of strings (Okta's `scp`, `roles`, `groups`).
fn strings_of(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// The caller as the token (or introspection answer) says, read through `map`.
fn identity_of(claims: &serde_json::Value, via: &'static str, map: &ClaimMap) -> Identity {
    let text = |k: &str| claims[k].as_str().map(str::to_string);
    let mut scopes: Vec<String> = Vec::new();
    for name in &map.scopes {
        for s in strings_of(&claims[name.as_str()]) {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    Identity {
        subject: text(&map.subject),
        client_id: text("client_id")
            .or_else(|| text("azp"))
            .or_else(|| text("appid"))
            .or_else(|| text("cid")),
        scopes,
        groups: strings_of(&claims[map.groups.as_str()]),
        key_name: None,
        bearer: true,
        via,
        claims: Some(Arc::new(claims.clone())),
        cnf_jkt: claims["cnf"]["jkt"].as_str().map(str::to_string),
    }
}

/// The `aud` values a token may carry: `oauth.audiences`, else the resource identifiers
/// (`resource` lists them, space-separated: URLs hold no spaces).
fn accepted_audiences<'a>(oauth: &'a OAuthConfig, resource: &'a str) -> Vec<&'a str> {
    if oauth.audiences.is_empty() {
        resource.split(' ').collect()
    } else {
        oauth.audiences.iter().map(String::as_str).collect()
    }
}

/// What the JWT library is asked to check: the algorithm and the signature only. Every claim is
/// checked by `claims::check`, by type, so what the library skips or tolerates cannot matter.
fn signature_only(alg: jsonwebtoken::Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v
}

/// Whether `aud` (a string or an array) names one of `accepted`.
fn audience_has(aud: &serde_json::Value, accepted: &[&str]) -> bool {
    match aud {
        serde_json::Value::String(s) => accepted.contains(&s.as_str()),
        serde_json::Value::Array(a) => a
            .iter()
            .any(|v| v.as_str().is_some_and(|s| accepted.contains(&s))),
        _ => false,
    }
}

/// The caller named by an API key in its own header (`api_keys.header`); `None`: the route
/// has no such header, or the request does not carry it.
fn header_key(auth: &AuthConfig, headers: &HeaderMap) -> Option<Result<Identity, Denied>> {
    let keys = auth.api_keys.as_ref()?;
    let v = headers.get(keys.header.as_ref()?)?;
    let Ok(v) = v.to_str() else {
        return Some(Err(Denied::BadApiKey));
    };
    Some(
        match_key(keys, v.trim())
            .map(|name| Identity {
                key_name: Some(name.to_string()),
                via: "api_key",
                ..Identity::default()
            })
            .ok_or(Denied::BadApiKey),
    )
}

impl Authenticator {
    /// Checks the request's credentials against `auth` for `resource` (the resource
    /// identifiers a token may be for, space-separated: its audience must be one).
    pub async fn check(
        &self,
        auth: &AuthConfig,
        resource: &str,
        headers: &HeaderMap,
        presented: &Presented<'_>,
    ) -> Result<Identity, Denied> {
        if let Some(keyed) = header_key(auth, headers) {
            return keyed;
        }
        let Some((scheme, token)) = credential(headers)? else {
            return Err(Denied::Missing);
        };
        let dpop_off = auth.oauth.as_ref().is_none_or(|o| o.dpop == Dpop::Off);
        if scheme == Scheme::DPoP && dpop_off {
            return Err(Denied::UnsupportedScheme);
        }
        let keys = auth.api_keys.as_ref().filter(|k| k.header.is_none());
        if let Some(keys) = keys.filter(|_| scheme == Scheme::Bearer) {
            if let Some(name) = match_key(keys, token) {
                return Ok(Identity {
                    key_name: Some(name.to_string()),
                    bearer: true,
                    via: "api_key",
                    ..Identity::default()
                });
            }
        }
        let Some(oauth) = &auth.oauth else {
            return Err(Denied::BadApiKey);
        };
        let identity = if token.split('.').count() == 3 {
            // Keyed by everything the verdict depends on: a route that accepts fewer
            // algorithms never takes another route's verdict.
            let key = sha256(
                format!(
                    "{}\0{resource}\0{:?}\0{:?}\0{:?}\0{token}",
                    oauth.issuer, oauth.audiences, oauth.claims, oauth.algorithms
                )
                .as_bytes(),
            );
            match self.verified.get(&key, Instant::now()) {
                Some(hit) => hit?,
                None => {
                    let (identity, exp) = self.check_jwt(oauth, resource, token).await?;
                    let until = Instant::now() + until_exp(exp, VERIFIED_FOR);
                    self.verified.put(key, until, Ok(identity.clone()));
                    identity
                }
            }
        } else if oauth.introspection.is_some() {
            self.introspect(oauth, resource, token).await?
        } else {
            return Err(Denied::Malformed);
        };
        check_binding(oauth, scheme, &identity, headers, |proof, jkt| {
            let expected = dpop::Expected {
                method: presented.method,
                url: presented.url,
                token,
                now: unix_now(),
            };
            dpop::check(proof, jkt, &expected, &self.replays)
        })?;
        if !oauth.scopes.iter().all(|s| identity.scopes.contains(s)) {
            return Err(Denied::InsufficientScope);
        }
        Ok(identity)
    }

    fn issuer(&self, oauth: &OAuthConfig) -> Result<Arc<Issuer>, Denied> {
        let key = (
            oauth.issuer.clone(),
            oauth.ca.iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
            oauth.jwks_min_refresh,
        );
        let mut issuers = self.issuers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = issuers.get(&key) {
            return Ok(i.clone());
        }
        let client = JsonClient::new(&oauth.ca).map_err(|e| {
            tracing::error!(issuer = %oauth.issuer, error = %e, "cannot build the client for the authorization server");
            Denied::IssuerUnavailable
        })?;
        let issuer = Arc::new(Issuer::new(&oauth.issuer, client, oauth.jwks_min_refresh));
        issuers.insert(key, issuer.clone());
        Ok(issuer)
    }

    async fn check_jwt(
        &self,
        oauth: &OAuthConfig,
        resource: &str,
        token: &str,
    ) -> Result<(Identity, Option<u64>), Denied> {
        // The algorithm is read before anything else, so `none` (or HS256 with a public key as
        // its secret) never gets near a verifier.
        let head = token.split('.').next().unwrap_or_default();
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or(Denied::Malformed)?;
        let alg = head["alg"]
            .as_str()
            .and_then(|a| a.parse::<jsonwebtoken::Algorithm>().ok())
            .filter(|a| oauth.algorithms.contains(a))
            .ok_or(Denied::BadAlgorithm)?;
        let issuer = self.issuer(oauth)?;
        let jwk = issuer
            .key(head["kid"].as_str())
            .await
            .map_err(|e| {
                if !e.is_backing_off() {
                    tracing::warn!(issuer = %oauth.issuer, error = %e, "cannot fetch the issuer's keys");
                }
                Denied::IssuerUnavailable
            })?
            .ok_or(Denied::UnknownKey)?;
        if jwk
            .common
            .key_algorithm
            .is_some_and(|ka| format!("{ka:?}") != format!("{alg:?}"))
        {
            return Err(Denied::BadAlgorithm);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| Denied::UnknownKey)?;
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &signature_only(alg))
            .map_err(|e| match e.kind() {
                K::InvalidSignature => Denied::BadSignature,
                K::InvalidAlgorithm => Denied::BadAlgorithm,
                K::InvalidClaimFormat(_) | K::MissingRequiredClaim(_) => Denied::BadClaim,
                _ => Denied::Malformed,
            })?;
        let audiences = accepted_audiences(oauth, resource);
        let expected = claims::Expected {
            issuer: &oauth.issuer,
            audiences: &audiences,
            leeway: oauth.leeway.as_secs(),
        };
        let exp = claims::check(&data.claims, &expected, unix_now())?;
        Ok((identity_of(&data.claims, "jwt", &oauth.claims), Some(exp)))
    }

    async fn introspect(
        &self,
        oauth: &OAuthConfig,
        resource: &str,
        token: &str,
    ) -> Result<Identity, Denied> {
        let Some(creds) = &oauth.introspection else {
            return Err(Denied::Malformed);
        };
        // Keyed by everything the verdict depends on, like the verified-JWT cache: a token
        // accepted for one route's audience is not thereby accepted on another's.
        let digest = sha256(
            format!(
                "{}\0{resource}\0{:?}\0{:?}\0{token}",
                oauth.issuer, oauth.audiences, oauth.claims
            )
            .as_bytes(),
        );
        if let Some(hit) = self.introspected.get(&digest, Instant::now()) {
            return hit;
        }
        let issuer = self.issuer(oauth)?;
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(issuer = %oauth.issuer, error = %e, "token introspection failed");
            Denied::IssuerUnavailable
        };
        let endpoint = issuer
            .metadata()
            .await
            .map_err(|e| match e.is_backing_off() {
                true => Denied::IssuerUnavailable,
                false => unavailable(&e),
            })?
            .introspection_endpoint
            .ok_or_else(|| unavailable(&"the issuer publishes no introspection_endpoint"))?;
        let answer = issuer
            .client()
            .post_form(
                &endpoint,
                &[("token", token), ("token_type_hint", "access_token")],
                Some((&creds.client_id, &creds.client_secret)),
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let now_unix = unix_now();
        let exp = answer["exp"].as_u64();
        let result = if answer["active"] != serde_json::Value::Bool(true) {
            Err(Denied::Inactive)
        } else if exp.is_some_and(|e| e + oauth.leeway.as_secs() < now_unix) {
            Err(Denied::Expired)
        } else if answer["iss"].as_str().is_some_and(|i| i != oauth.issuer) {
            Err(Denied::BadIssuer)
        } else if !answer["aud"].is_null()
            && !audience_has(&answer["aud"], &accepted_audiences(oauth, resource))
        {
            Err(Denied::BadAudience)
        } else {
            Ok(identity_of(&answer, "introspection", &oauth.claims))
        };
        let until = Instant::now() + until_exp(exp, oauth.introspection_cache);
        self.introspected.put(digest, until, result.clone());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750_and_9728() {
        let scopes = vec!["mcp:tools".to_string()];
        let url = Some("https://h/.well-known/oauth-protected-resource/mcp");
        assert_eq!(
            Denied::Missing.challenge(url, &scopes),
            "Bearer resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp\", scope=\"mcp:tools\""
        );
        assert!(Denied::InsufficientScope
            .challenge(url, &scopes)
            .starts_with("Bearer error=\"insufficient_scope\""));
        assert!(Denied::Expired
            .challenge(None, &[])
            .contains("error=\"invalid_token\""));
        assert!(Denied::Malformed
            .challenge(url, &scopes)
            .starts_with("Bearer error=\"invalid_token\""));
        assert_eq!(
            Denied::UnsupportedScheme.challenge(url, &scopes),
            Denied::Missing.challenge(url, &scopes),
            "another scheme is answered as no credentials"
        );
    }

    /// jsonwebtoken 10 panics at the first decode when no crypto backend is compiled in: a real
    /// ES256 token, signed and verified by the backend the release build uses (RustCrypto),
    /// from a JWK as an issuer publishes it.
    #[test]
    fn a_real_token_verifies_through_the_compiled_backend() {
        let pair = rcgen::KeyPair::generate().unwrap();
        let point = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }))
        .unwrap();
        let claims =
            serde_json::json!({"iss": "https://as", "aud": "https://rs", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der()),
        )
        .unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let v = signature_only(jsonwebtoken::Algorithm::ES256);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims, claims);
        // Reject twin: one byte of the signature changed.
        let mut forged = token.into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let err = jsonwebtoken::decode::<serde_json::Value>(&forged, &key, &v).unwrap_err();
        assert_eq!(
            *err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn api_keys_match_by_hash_only() {
        let keys = ApiKeys {
            header: None,
            keys: vec![
                ("ci".into(), sha256(b"secret-1")),
                ("ops".into(), sha256(b"secret-2")),
            ],
        };
        assert_eq!(match_key(&keys, "secret-2"), Some("ops"));
        assert_eq!(match_key(&keys, "secret-3"), None);
        assert_eq!(match_key(&keys, ""), None);
    }
}

//! DPoP (RFC 9449): a token bound to a key its client holds, proven on every request with a
//! JWT signed by that key (`DPoP:` header) that names the request (`htm`, `htu`: the public URL,
//! which only the edge that terminates TLS knows), its time (`iat`), a unique id (`jti`, kept
//! to refuse a replay) and the token (`ath`). The token names the key by its RFC 7638
//! thumbprint (`cnf.jkt`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::Denied;

/// Signature algorithms accepted for proofs (asymmetric only), as the challenge lists them.
pub const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::EdDSA,
];

/// How old a proof may be, and how far in the future its `iat` may lie (clock skew).
pub const MAX_AGE: Duration = Duration::from_secs(120);
const SKEW: u64 = 30;

/// Keys whose proof ids are remembered at once; each key's ids at once (a key past it is
/// refused until its older proofs expire: one token holder cannot crowd out the others).
const MAX_KEYS: usize = 100_000;
const MAX_IDS_PER_KEY: usize = 20_000;

/// The `algs` of a `DPoP` challenge.
pub fn algs() -> String {
    ALGORITHMS
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the request says a proof must match.
pub struct Expected<'a> {
    pub method: &'a str,
    /// The public URL of the request, without query or fragment.
    pub url: &'a str,
    pub token: &'a str,
    /// Unix seconds.
    pub now: u64,
}

/// The ids of the proofs accepted lately, per key, bounded: a replay is refused.
#[derive(Default)]
pub struct Replays(Mutex<HashMap<String, HashMap<[u8; 32], Instant>>>);

impl Replays {
    /// Records `jti` of key `jkt`; `false`: seen before (or no room to remember it).
    fn first_use(&self, jkt: &str, jti: &str) -> bool {
        let id = super::sha256(jti.as_bytes());
        let now = Instant::now();
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.contains_key(jkt) && keys.len() >= MAX_KEYS {
            keys.retain(|_, ids| {
                ids.retain(|_, until| *until > now);
                !ids.is_empty()
            });
            if keys.len() >= MAX_KEYS {
                return false;
            }
        }
        let ids = keys.entry(jkt.to_string()).or_default();
        if ids.get(&id).is_some_and(|until| *until > now) {
            return false;
        }
        if ids.len() >= MAX_IDS_PER_KEY {
            ids.retain(|_, until| *until > now);
            if ids.len() >= MAX_IDS_PER_KEY {
                // This key's live ids fill its share: a proof that cannot be remembered is not
                // accepted (other keys are unaffected).
                return false;
            }
        }
        ids.insert(id, now + MAX_AGE + Duration::from_secs(SKEW));
        true
    }
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of a public JWK, from its required members
/// only; `None` for a key type proofs may not use (symmetric) or a key with private members.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let o = jwk.as_object()?;
    if ["d", "p", "q", "dp", "dq", "qi", "k"]
        .iter()
        .any(|k| o.contains_key(*k))
    {
        return None;
    }
    let s = |k: &str| o.get(k)?.as_str().map(|v| serde_json::to_string(v).ok())?;
    let canonical = match o.get("kty")?.as_str()? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, s("e")?, s("n")?),
        "OKP" => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, s("crv")?, s("x")?),
        _ => return None,
    };
    Some(b64(&super::sha256(canonical.as_bytes())))
}

/// Whether the public key in `jwk` is one `alg` verifies with, of a sound size: a curve point
/// of the curve's length (jsonwebtoken slices an Ed25519 key without checking it), an RSA
/// modulus of 2048 to 8192 bits.
fn key_fits(jwk: &Value, alg: Algorithm) -> bool {
    let len = |k: &str| {
        jwk[k]
            .as_str()
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
            .map(|b| b.len())
    };
    let (kty, crv) = (jwk["kty"].as_str(), jwk["crv"].as_str());
    match alg {
        Algorithm::ES256 => {
            kty == Some("EC")
                && crv == Some("P-256")
                && len("x") == Some(32)
                && len("y") == Some(32)
        }
        Algorithm::ES384 => {
            kty == Some("EC")
                && crv == Some("P-384")
                && len("x") == Some(48)
                && len("y") == Some(48)
        }
        Algorithm::EdDSA => kty == Some("OKP") && crv == Some("Ed25519") && len("x") == Some(32),
        Algorithm::RS256 | Algorithm::PS256 | Algorithm::PS384 => {
            kty == Some("RSA")
                && len("n").is_some_and(|n| (256..=1024).contains(&n))
                && len("e").is_some_and(|e| (1..=8).contains(&e))
                && jwk.get("oth").is_none()
        }
        _ => false,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The URL a proof names, as compared: scheme and host lower case, default port dropped,
/// dot-segments resolved, no query or fragment.
fn comparable(url: &str) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_query(None);
    u.set_fragment(None);
    Some(u.to_string())
}

/// Checks `proof` against the request and the key the token is bound to (`jkt`, its
/// `cnf.jkt`): `Err(DpopBinding)` for a proof by another key, before its id is remembered.
pub fn check(
    proof: &str,
    jkt: &str,
    expected: &Expected<'_>,
    replays: &Replays,
) -> Result<(), Denied> {
    let bad = Denied::InvalidDpopProof;
    let head = proof.split('.').next().unwrap_or_default();
    let header: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(bad)?;
    if header["typ"].as_str() != Some("dpop+jwt") {
        return Err(bad);
    }
    let alg = header["alg"]
        .as_str()
        .and_then(|a| a.parse::<Algorithm>().ok())
        .filter(|a| ALGORITHMS.contains(a))
        .ok_or(bad)?;
    if header.get("crit").is_some() || !key_fits(&header["jwk"], alg) {
        return Err(bad);
    }
    let proven = thumbprint(&header["jwk"]).ok_or(bad)?;
    let jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(header["jwk"].clone()).map_err(|_| bad)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| bad)?;
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(proof, &key, &v)
        .map_err(|_| bad)?
        .claims;
    let text = |k: &str| claims[k].as_str();
    if text("htm") != Some(expected.method) {
        return Err(bad);
    }
    let named = text("htu").and_then(comparable);
    if named.is_none() || named != comparable(expected.url) {
        return Err(bad);
    }
    let iat = claims["iat"].as_u64().ok_or(bad)?;
    if iat > expected.now + SKEW || iat + MAX_AGE.as_secs() < expected.now {
        return Err(bad);
    }
    if text("ath") != Some(b64(&super::sha256(expected.token.as_bytes())).as_str()) {
        return Err(bad);
    }
    let jti = text("jti")
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or(bad)?;
    if proven != jkt {
        return Err(Denied::DpopBinding);
    }
    if !replays.first_use(jkt, jti) {
        return Err(bad);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
        // A private key, a symmetric one, a missing member: none.
        let mut private = jwk.clone();
        private["d"] = "x".into();
        assert_eq!(thumbprint(&private), None);
        assert_eq!(
            thumbprint(&serde_json::json!({"kty": "oct", "k": "x"})),
            None
        );
        assert_eq!(
            thumbprint(&serde_json::json!({"kty": "EC", "crv": "P-256", "x": "a"})),
            None
        );
    }

    #[test]
    fn a_proof_id_is_accepted_once_per_key() {
        let r = Replays::default();
        assert!(r.first_use("k1", "a"));
        assert!(!r.first_use("k1", "a"));
        assert!(r.first_use("k2", "a"));
    }
}

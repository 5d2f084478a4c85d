//! DPoP (RFC 9449) through the real binary: a client that holds a key and signs a proof for
//! every request, with tokens bound to that key (`cnf.jkt`) signed by the test authorization
//! server's key. Then every way a proof can be wrong (replayed, another URL or method, another
//! key, stale, for another token, missing, symmetric), a bound token sent as a bearer token, and
//! the `required` route that takes nothing but DPoP.
#![forbid(unsafe_code)]

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use mcp_edge_tests::auth_server::{mint, now, tls_edge, AuthServer};
use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

const AUD: &str = "api://dpop-tests";

/// A DPoP client key: its signing key, its public JWK and thumbprint.
struct ProofKey {
    key: EncodingKey,
    jwk: Jwk,
    jkt: String,
}

impl ProofKey {
    fn new() -> Self {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        // jsonwebtoken's own RFC 7638 thumbprint: an implementation apart from the edge's.
        let jkt = jwk.thumbprint(ThumbprintHash::SHA256);
        Self { key, jwk, jkt }
    }

    /// A proof for `method url` carrying `token`, issued at `iat`, with id `jti`.
    fn proof(&self, method: &str, url: &str, token: &str, iat: u64, jti: &str) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(self.jwk.clone());
        let ath = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
        let claims = json!({"htm": method, "htu": url, "iat": iat, "jti": jti, "ath": ath});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn route(path: &str, up: &str, issuer: &str, ca: &std::path::Path, dpop: &str) -> String {
    format!(
        "      - path: {path}\n        upstream: \"{up}\"\n        auth:\n          oauth:\n            issuer: {issuer}\n            ca: {}\n            scopes: [mcp:tools]\n            audiences: [\"{AUD}\"]\n{dpop}",
        ca.display()
    )
}

#[tokio::test]
async fn a_bound_token_passes_with_its_proof_and_every_wrong_proof_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let up = Upstream::start("a").await;
    let ca_pem = tmp.path().join("ca.pem");
    let host = format!(
        "    routes:\n{}{}{}",
        route(
            "/mcp",
            &up.url(),
            &auth.issuer(),
            &ca_pem,
            "            dpop: allowed\n"
        ),
        route(
            "/strict",
            &up.url(),
            &auth.issuer(),
            &ca_pem,
            "            dpop: required\n"
        ),
        route("/plain", &up.url(), &auth.issuer(), &ca_pem, ""),
    );
    let edge = tls_edge(tmp.path(), &ca, &host).await;
    let base = format!("https://localhost:{}", edge.https.port());
    let client = edge.client(ca.root_store(), &["localhost"]);
    let iss = auth.issuer();
    // Every token its own (ES256 signatures here are deterministic: equal claims, equal token).
    let minted = std::cell::Cell::new(0);
    let token = |cnf: Option<&str>| {
        minted.set(minted.get() + 1);
        let mut c = json!({"iss": iss, "aud": AUD, "sub": "agent", "scope": "mcp:tools",
                           "iat": now(), "exp": now() + 600, "jti": minted.get()});
        if let Some(jkt) = cnf {
            c["cnf"] = json!({"jkt": jkt});
        }
        mint(&auth.k1, "k1", c)
    };
    let key = ProofKey::new();
    let bound = token(Some(&key.jkt));
    let send =
        |method: reqwest::Method, path: &str, auth: Option<String>, proof: Option<String>| {
            let mut r = client.request(method, format!("{base}{path}"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            if let Some(p) = proof {
                r = r.header("dpop", p);
            }
            r.send()
        };
    let get = reqwest::Method::GET;
    let url = |path: &str| format!("{base}{path}");

    // The bound token with its proof: through, and neither token nor proof goes upstream.
    let p = key.proof("GET", &url("/mcp/headers"), &bound, now(), "j1");
    let r = send(
        get.clone(),
        "/mcp/headers",
        Some(format!("DPoP {bound}")),
        Some(p.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("dpop").is_none(), "{seen}");
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-auth-subject"], "agent");
    // A proof for a query-carrying URL names it without the query.
    let p2 = key.proof("POST", &url("/mcp/x"), &bound, now(), "j2");
    let r = send(
        reqwest::Method::POST,
        "/mcp/x?a=1",
        Some(format!("DPoP {bound}")),
        Some(p2),
    );
    assert_eq!(r.await.unwrap().status(), 200);
    // An unbound token as a bearer token: still fine where DPoP is only allowed.
    let r = send(
        get.clone(),
        "/mcp/x",
        Some(format!("Bearer {}", token(None))),
        None,
    );
    assert_eq!(r.await.unwrap().status(), 200);

    // Reject twins, each a 401 naming the proof (or the binding) as the reason.
    let other = ProofKey::new();
    let stale = now() - 600;
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "replayed",
            format!("DPoP {bound}"),
            Some(p),
            "invalid_dpop_proof",
        ),
        (
            "another URL",
            format!("DPoP {bound}"),
            Some(key.proof("GET", &url("/mcp/other"), &bound, now(), "j3")),
            "invalid_dpop_proof",
        ),
        (
            "another host",
            format!("DPoP {bound}"),
            Some(key.proof(
                "GET",
                &format!("https://evil.example{}", "/mcp/x"),
                &bound,
                now(),
                "j4",
            )),
            "invalid_dpop_proof",
        ),
        (
            "another method",
            format!("DPoP {bound}"),
            Some(key.proof("POST", &url("/mcp/x"), &bound, now(), "j5")),
            "invalid_dpop_proof",
        ),
        (
            "stale",
            format!("DPoP {bound}"),
            Some(key.proof("GET", &url("/mcp/x"), &bound, stale, "j6")),
            "invalid_dpop_proof",
        ),
        (
            "from the future",
            format!("DPoP {bound}"),
            Some(key.proof("GET", &url("/mcp/x"), &bound, now() + 600, "j7")),
            "invalid_dpop_proof",
        ),
        (
            "for another token",
            format!("DPoP {bound}"),
            Some(key.proof("GET", &url("/mcp/x"), &token(Some(&key.jkt)), now(), "j8")),
            "invalid_dpop_proof",
        ),
        (
            "no proof",
            format!("DPoP {bound}"),
            None,
            "invalid_dpop_proof",
        ),
        (
            "another key",
            format!("DPoP {bound}"),
            Some(other.proof("GET", &url("/mcp/x"), &bound, now(), "j9")),
            "invalid_token",
        ),
        (
            "a bound token as a bearer token",
            format!("Bearer {bound}"),
            None,
            "invalid_token",
        ),
        (
            "an unbound token under DPoP",
            format!("DPoP {}", token(None)),
            Some(key.proof("GET", &url("/mcp/x"), "x", now(), "j10")),
            "invalid_",
        ),
    ];
    for (what, authz, proof, code) in cases {
        let r = send(get.clone(), "/mcp/x", Some(authz), proof)
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        let challenges: Vec<String> = r
            .headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            challenges
                .iter()
                .any(|c| c.starts_with("DPoP ") && c.contains("algs=\"") && c.contains(code)),
            "{what}: {challenges:?}"
        );
    }
    // A proof signed with a symmetric key, or an HS256 header over the public key: refused.
    let mut h = Header::new(Algorithm::HS256);
    h.typ = Some("dpop+jwt".into());
    let forged = jsonwebtoken::encode(
        &h,
        &json!({"htm": "GET", "htu": url("/mcp/x"), "iat": now(), "jti": "j11"}),
        &EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    let r = send(
        get.clone(),
        "/mcp/x",
        Some(format!("DPoP {bound}")),
        Some(forged),
    );
    assert_eq!(r.await.unwrap().status(), 401);
    // A key too short for its curve (jsonwebtoken slices an Ed25519 key unchecked): refused,
    // the process unharmed.
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let short = format!(
        "{}.{}.AAAA",
        b64(
            &json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}})
        ),
        b64(&json!({"htm": "GET", "htu": url("/mcp/x"), "iat": now(), "jti": "j14"}))
    );
    let r = send(
        get.clone(),
        "/mcp/x",
        Some(format!("DPoP {bound}")),
        Some(short),
    );
    assert_eq!(r.await.unwrap().status(), 401);

    // Asking without credentials: a challenge in each scheme the route takes.
    let r = send(get.clone(), "/mcp/x", None, None).await.unwrap();
    let schemes: Vec<String> = r
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(schemes, ["Bearer", "DPoP"]);

    // `required`: a bearer token is answered with the DPoP challenge alone; a proof passes.
    let r = send(
        get.clone(),
        "/strict/x",
        Some(format!("Bearer {}", token(None))),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges.len(), 1);
    assert!(challenges[0].to_str().unwrap().starts_with("DPoP algs="));
    let p = key.proof("GET", &url("/strict/x"), &bound, now(), "j12");
    let r = send(
        get.clone(),
        "/strict/x",
        Some(format!("DPoP {bound}")),
        Some(p),
    );
    assert_eq!(r.await.unwrap().status(), 200);
    let m: Value = client
        .get(url("/.well-known/oauth-protected-resource/strict"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["dpop_bound_access_tokens_required"], true);
    assert!(m["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("ES256")));

    // A route without DPoP: the scheme is not one it takes.
    let p = key.proof("GET", &url("/plain/x"), &bound, now(), "j13");
    let r = send(
        get.clone(),
        "/plain/x",
        Some(format!("DPoP {bound}")),
        Some(p),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error="));
    let mut edge = edge;
    assert!(edge.is_running());
    assert!(!edge.log().contains("panicked"), "{}", edge.log());
    wait_for(Duration::from_secs(5), "the refusals counted", || async {
        (edge
            .try_metric("mcp_edge_auth_results_total{host=\"localhost\",result=\"invalid_dpop_proof\",route=\"/mcp\"}")
            .await?
            >= 8.0)
            .then_some(())
    })
    .await;
}

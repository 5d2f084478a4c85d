//! mcp-edge as an OAuth 2.1 resource server in front of an MCP server, against a real
//! authorization server (tests/python/auth_server.py, Authlib) and the official MCP Python SDK's
//! OAuth clients, which are told nothing but the MCP URL. Then every way a token can be wrong,
//! each asserted on status, challenge and metric.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::json;

use mcp_edge_tests::auth_server::{mint, now, oauth_block, tls_edge, AuthServer};
use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// Runs `tests/python/mcp_oauth_check.py`; on failure, shows the authorization server's log.
async fn sdk(
    auth: &AuthServer,
    url: &str,
    transport: &str,
    flow: &str,
    ca: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mcp_oauth_check.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script)
        .args([url, transport, flow, "--ca"])
        .arg(ca)
        .args(extra);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the MCP client finished within 90s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| {
            panic!(
                "no JSON:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "{v}\n{}\nauthorization server:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&auth.log).unwrap_or_default()
    );
    v
}

fn corpus(dir: &Path) -> PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(
        c.join("tls.md"),
        "# TLS\n\nCertificates for TLS are renewed by the edge.\n",
    )
    .unwrap();
    c
}

#[tokio::test]
async fn the_sdk_oauth_clients_find_their_way_from_a_401_to_a_tool_call_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let docs = DocsServer::start(tmp.path(), &corpus(tmp.path()), &[]).await;
    let host = format!(
        "{}    upstream: {}\n",
        oauth_block(&auth.issuer(), tmp.path(), "mcp:tools", "    "),
        docs.url()
    );
    let edge = tls_edge(tmp.path(), &ca, &host).await;
    let base = format!("https://localhost:{}", edge.https.port());
    let ca_pem = tmp.path().join("ca.pem");
    // README's own shape (host-wide `upstream:` and `auth:`): the metadata answers at every
    // URL a client derives from `/mcp` or `/sse`, naming the resource its tokens are for.
    let client = edge.client(ca.root_store(), &["localhost"]);
    // The resource each names is the MCP URL the client derived it from (RFC 9728 §3.3).
    for (url, resource) in [
        ("/.well-known/oauth-protected-resource/mcp", "/mcp"),
        ("/.well-known/oauth-protected-resource/sse", "/sse"),
        ("/.well-known/oauth-protected-resource", "/"),
        ("/mcp/.well-known/oauth-protected-resource", "/mcp"),
    ] {
        let r = client.get(format!("{base}{url}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let m: serde_json::Value = r.json().await.unwrap();
        assert_eq!(m["resource"], format!("{base}{resource}"), "{url}");
        assert_eq!(m["authorization_servers"][0], auth.issuer(), "{url}");
    }
    // A token for that resource is taken on its path; for another path of the host it is not.
    let iss = auth.issuer();
    let for_resource = |aud: String| {
        let c = json!({"iss": iss, "aud": aud, "sub": "s", "scope": "mcp:tools",
                       "iat": now(), "exp": now() + 600});
        mint(&auth.k1, "k1", c)
    };
    let r = client
        .get(format!("{base}/mcp"))
        .bearer_auth(for_resource(format!("{base}/mcp")))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 401);
    let r = client
        .get(format!("{base}/sse"))
        .bearer_auth(for_resource(format!("{base}/mcp")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let machine = [
        "--client-id",
        "machine",
        "--client-secret",
        "machine-secret",
    ];
    for (path, transport) in [("/mcp", "streamable"), ("/sse", "sse")] {
        let v = sdk(
            &auth,
            &format!("{base}{path}"),
            transport,
            "client_credentials",
            &ca_pem,
            &machine,
        )
        .await;
        assert!(
            v["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("search_docs")),
            "{v}"
        );
        assert_eq!(v["search_hits"], 1, "{v}");
        let flow = v["flow"].to_string();
        // It started from the 401's resource_metadata, then the authorization server.
        assert!(
            flow.contains("/.well-known/oauth-protected-resource"),
            "{flow}"
        );
        assert!(flow.contains(&format!("{}/token", auth.issuer())), "{flow}");
    }
    // A person's client: registration, authorization code with PKCE, then the tool call.
    for (path, transport) in [("/mcp", "streamable"), ("/sse", "sse")] {
        let v = sdk(
            &auth,
            &format!("{base}{path}"),
            transport,
            "authorization_code",
            &ca_pem,
            &["--scope", "mcp:tools"],
        )
        .await;
        assert_eq!(v["search_hits"], 1, "{transport}: {v}");
        assert!(v["flow"].to_string().contains("/register"), "{v}");
    }
    let ok = "mcp_edge_auth_results_total{host=\"localhost\",result=\"ok\",route=\"/\"}";
    assert!(edge.metric(ok).await >= 8.0);
    assert!(
        edge.metric(
            "mcp_edge_auth_results_total{host=\"localhost\",result=\"missing\",route=\"/\"}"
        )
        .await
            >= 3.0
    );
    // No token ever reached the MCP server, nor a log line.
    let log = edge.log();
    assert!(!log.contains("eyJ"), "a token was logged");
    assert!(log.contains("caller=\"sub:machine\""), "{log}");
}

#[tokio::test]
async fn every_wrong_token_is_refused_with_its_reason_and_rotation_needs_no_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let up = Upstream::start("a").await;
    let host = format!(
        "    routes:\n      - path: /mcp\n        upstream: \"{}\"\n{}      - {{ path: /, upstream: \"{}\" }}\n",
        up.url(),
        oauth_block(&auth.issuer(), tmp.path(), "mcp:tools", "        "),
        up.url()
    );
    let edge = tls_edge(tmp.path(), &ca, &host).await;
    let base = format!("https://localhost:{}", edge.https.port());
    let resource = format!("{base}/mcp");
    let metadata_url = format!("{base}/.well-known/oauth-protected-resource/mcp");
    let client = edge.client(ca.root_store(), &["localhost"]);
    // The twin of metadata everywhere: a path the open route `/` serves has none (the request
    // goes to the upstream like any other), and `/mcp`'s is the same at either spelling.
    for (url, metadata) in [
        ("/.well-known/oauth-protected-resource/elsewhere", false),
        ("/elsewhere/.well-known/oauth-protected-resource", false),
        ("/mcp/.well-known/oauth-protected-resource", true),
        ("/.well-known/oauth-protected-resource/mcp/x", true),
    ] {
        let r = client.get(format!("{base}{url}")).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert_eq!(
            text.contains("authorization_servers"),
            metadata,
            "{url}: {text}"
        );
        if metadata {
            // `/mcp`'s resource, or the deeper URL a client derived the path from.
            let named = if url.ends_with("/x") {
                "/mcp/x"
            } else {
                "/mcp"
            };
            assert!(
                text.contains(&format!("\"{base}{named}\"")),
                "{url}: {text}"
            );
        }
    }
    let get = |token: Option<String>, extra: Option<(&'static str, &'static str)>| {
        let mut r = client.get(format!("{resource}/x"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };

    // Discovery: the challenge names the metadata; the metadata names the issuer.
    let r = get(None, None).await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata_url}\", scope=\"mcp:tools\"")
    );
    // These requests are HTTP/2, whose authority is in the URI: a path the edge normalises
    // keeps its host, and the challenge is the same.
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let r = client.get(format!("{resource}/%78")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], challenge.as_str());
    // HEAD over HTTP/2, answered by the edge and by the upstream: the header ends the stream.
    for url in [metadata_url.clone(), format!("{base}/elsewhere")] {
        let r = client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        assert!(r.bytes().await.unwrap().is_empty(), "{url}");
    }
    let get_json = |url: String| {
        let r = client.get(url).send();
        async move { r.await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let doc = get_json(metadata_url.clone()).await;
    assert_eq!(doc["resource"], resource.as_str());
    assert_eq!(doc["authorization_servers"], json!([auth.issuer()]));
    // The bare well-known URL describes the host's only protected route; a browser's preflight
    // is answered.
    let bare = get_json(format!("{base}/.well-known/oauth-protected-resource")).await;
    assert_eq!(bare["resource"], resource.as_str());
    let pre = client
        .request(reqwest::Method::OPTIONS, &metadata_url)
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://inspector.example"
    );
    // An unprotected route has no metadata, and needs no token.
    let open = client
        .get(format!("{base}/.well-known/oauth-protected-resource/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200, "falls through to the open route `/`");
    assert_eq!(
        client
            .get(format!("{base}/other"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The accept path: a token from the authorization server for this resource.
    let good = auth.token(&ca, "machine", &resource).await;
    let r = get(Some(good.clone()), Some(("x-auth-subject", "admin")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    let h = &seen["headers"];
    assert_eq!(
        h["x-auth-subject"], "machine",
        "the client's own value is dropped: {h}"
    );
    assert_eq!(h["x-auth-client-id"], "machine");
    assert!(h["x-auth-scopes"].as_str().unwrap().contains("mcp:tools"));
    assert!(
        h.get("authorization").is_none(),
        "token passed through: {h}"
    );

    // Reject twins.
    let iss = auth.issuer();
    let claims = |over: serde_json::Value| {
        let mut c = json!({"iss": iss, "aud": resource, "sub": "mallory", "client_id": "machine",
                           "scope": "mcp:tools", "iat": now(), "exp": now() + 600});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let stranger = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none_alg = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "at+jwt", "kid": "k1"})),
        b64(claims(json!({})))
    );
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "expired",
            mint(&auth.k1, "k1", claims(json!({"exp": now() - 3600}))),
            401,
        ),
        (
            "bad_signature",
            mint(&stranger, "k1", claims(json!({}))),
            401,
        ),
        ("unknown_key", mint(&stranger, "k9", claims(json!({}))), 401),
        ("bad_algorithm", none_alg, 401),
        (
            "bad_audience",
            auth.token(&ca, "machine", "https://other.example/mcp")
                .await,
            401,
        ),
        (
            "bad_issuer",
            mint(
                &auth.k1,
                "k1",
                claims(json!({"iss": "https://evil.example"})),
            ),
            401,
        ),
        (
            "insufficient_scope",
            auth.token(&ca, "narrow", &resource).await,
            403,
        ),
        ("malformed", "x.y.z".to_string(), 401),
    ];
    for (reason, token, status) in &cases {
        let r = get(Some(token.clone()), None).await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "{reason}");
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        let code = if *status == 403 {
            "insufficient_scope"
        } else {
            "invalid_token"
        };
        assert!(
            www.contains(&format!("error=\"{code}\"")),
            "{reason}: {www}"
        );
        assert!(
            www.contains(&format!("resource_metadata=\"{metadata_url}\"")),
            "{reason}: {www}"
        );
        assert_eq!(
            edge.metric(&format!("mcp_edge_auth_results_total{{host=\"localhost\",result=\"{reason}\",route=\"/mcp\"}}")).await,
            1.0,
            "{reason}"
        );
    }

    // Another scheme (`Basic …`) is answered like no credentials: the challenge without an
    // error code (RFC 6750 §3.1), so a client goes on to discover the authorization server.
    let r = get(None, Some(("authorization", "Basic bWFsbG9yeTpzZWNyZXQ=")))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        www,
        format!("Bearer resource_metadata=\"{metadata_url}\", scope=\"mcp:tools\""),
        "{www}"
    );
    assert!(
        !edge.log().contains("bWFsbG9yeTpzZWNyZXQ"),
        "a credential in the log"
    );

    // Registered claims are checked by type, whatever the JWT library does (CVE-2026-25537: a
    // claim of the wrong JSON type was taken as absent). Each bad shape is refused as an invalid
    // token; its twin, the same token with the claim well-formed, passes.
    let without_exp = {
        let mut c = claims(json!({}));
        c.as_object_mut().unwrap().remove("exp");
        c
    };
    let typed: Vec<(&str, serde_json::Value, serde_json::Value)> = vec![
        (
            "bad_claim",
            claims(json!({"exp": "never"})),
            claims(json!({"exp": now() + 600})),
        ),
        (
            "bad_claim",
            claims(json!({"nbf": "99999999999"})),
            claims(json!({"nbf": now() - 5})),
        ),
        (
            "bad_claim",
            claims(json!({"iat": "yesterday"})),
            claims(json!({"iat": now() - 5})),
        ),
        ("bad_claim", without_exp, claims(json!({"exp": now() + 60}))),
        (
            "not_yet_valid",
            claims(json!({"nbf": now() + 3600})),
            claims(json!({"nbf": now() + 5})),
        ),
        (
            "bad_audience",
            claims(json!({"aud": format!("{resource}/")})),
            claims(json!({"aud": ["api://other", resource.as_str()]})),
        ),
        (
            "bad_issuer",
            claims(json!({"iss": format!("{iss}/")})),
            claims(json!({"iss": iss.as_str()})),
        ),
    ];
    for (reason, bad, twin) in &typed {
        let r = get(Some(mint(&auth.k1, "k1", bad.clone())), None)
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{reason}: {bad}");
        let www = r.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.contains("error=\"invalid_token\""), "{reason}: {www}");
        let r = get(Some(mint(&auth.k1, "k1", twin.clone())), None)
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "twin of {reason}: {twin}");
    }
    for (reason, total) in [
        ("bad_claim", 4.0),
        ("not_yet_valid", 1.0),
        ("bad_audience", 2.0),
        ("bad_issuer", 2.0),
    ] {
        assert_eq!(
            edge.metric(&format!("mcp_edge_auth_results_total{{host=\"localhost\",result=\"{reason}\",route=\"/mcp\"}}")).await,
            total,
            "{reason}"
        );
    }

    // The authorization server rotates its key: a token under the new kid is accepted at once.
    auth.post(&ca, "/test/rotate", &[], "machine").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past jwks_min_refresh
    let rotated = auth.token(&ca, "machine", &resource).await;
    let head = rotated.split('.').next().unwrap();
    let head: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(head["kid"], "k2", "the server signs with its new key");
    assert_eq!(get(Some(rotated), None).await.unwrap().status(), 200);
    assert_eq!(
        get(Some(good), None).await.unwrap().status(),
        200,
        "k1 is still published"
    );

    // An opaque token is introspected; once revoked (and the short cache passed), refused.
    let opaque = auth.token(&ca, "opaque", &resource).await;
    assert_eq!(opaque.split('.').count(), 1);
    assert_eq!(get(Some(opaque.clone()), None).await.unwrap().status(), 200);
    auth.post(&ca, "/revoke", &[("token", &opaque)], "opaque")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(Some(opaque), None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        edge.metric(
            "mcp_edge_auth_results_total{host=\"localhost\",result=\"inactive\",route=\"/mcp\"}"
        )
        .await,
        1.0
    );
}

/// Tokens shaped as Entra ID (v1 and v2), Okta and Auth0 issue them, signed by the test
/// authorization server's key: each accepted through `audiences` and the claim mapping, with
/// the identity the upstream is told; each shape's twin without the audience or the scope
/// refused.
#[tokio::test]
async fn tokens_shaped_by_entra_okta_and_auth0_are_accepted_through_audiences_and_claim_mapping() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let up = Upstream::start("a").await;
    const ENTRA_APP: &str = "api://5f1c9f1e-mcp-edge";
    const ENTRA_CLIENT: &str = "5f1c9f1e-0000-4000-8000-000000000001";
    const AUTH0_API: &str = "https://mcp.example.com/api";
    let oauth = format!(
        "        auth:\n          oauth:\n            issuer: {}\n            ca: {}\n            scopes: [mcp.tools]\n            jwks_min_refresh: 1s\n            audiences: [\"{ENTRA_APP}\", \"{ENTRA_CLIENT}\", \"api://default\", \"{AUTH0_API}\"]\n            claims: {{ subject: oid, scopes: [scope, scp, roles], groups: groups }}\n",
        auth.issuer(),
        tmp.path().join("ca.pem").display()
    );
    let host = format!(
        "    routes:\n      - path: /mcp\n        upstream: \"{}\"\n{oauth}",
        up.url()
    );
    let edge = tls_edge(tmp.path(), &ca, &host).await;
    let base = format!("https://localhost:{}", edge.https.port());
    let client = edge.client(ca.root_store(), &["localhost"]);
    let iss = auth.issuer();
    let shaped = |over: serde_json::Value| {
        let mut c = json!({"iss": iss, "iat": now(), "nbf": now() - 5, "exp": now() + 600});
        for (k, v) in over.as_object().unwrap() {
            c[k] = v.clone();
        }
        mint(&auth.k1, "k1", c)
    };
    let shapes = [
        // Entra ID v1, delegated: `aud` the application ID URI, `scp` a space-separated string,
        // the stable user id in `oid`, groups as object ids.
        (
            "entra-v1",
            json!({"aud": ENTRA_APP, "ver": "1.0", "scp": "mcp.read mcp.tools", "oid": "u-1",
                   "sub": "pairwise-1", "appid": "client-1", "groups": ["g-readers", "g-ops"]}),
            "u-1",
        ),
        // Entra ID v2, app-only: `aud` the client id, app roles in `roles`, no `scp`.
        (
            "entra-v2",
            json!({"aud": ENTRA_CLIENT, "ver": "2.0", "roles": ["mcp.tools"], "oid": "sp-2",
                   "azp": "client-2"}),
            "sp-2",
        ),
        // Okta's default server: `aud` api://default, `scp` an array, `cid` the client.
        (
            "okta",
            json!({"aud": "api://default", "scp": ["mcp.tools", "openid"], "oid": "okta-3",
                   "sub": "user@example.com", "cid": "okta-client"}),
            "okta-3",
        ),
        // Auth0: `aud` an array (the API and userinfo), `scope` a string.
        (
            "auth0",
            json!({"aud": [AUTH0_API, "https://tenant.auth0.com/userinfo"],
                   "scope": "openid mcp.tools", "oid": "auth0-4", "azp": "auth0-client"}),
            "auth0-4",
        ),
    ];
    for (name, claims, subject) in &shapes {
        let r = client
            .get(format!("{base}/mcp/headers"))
            .bearer_auth(shaped(claims.clone()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let seen: serde_json::Value = r.json().await.unwrap();
        let h = &seen["headers"];
        assert_eq!(h["x-auth-subject"], *subject, "{name}: {h}");
        assert!(
            h["x-auth-scopes"].as_str().unwrap().contains("mcp.tools"),
            "{name}: {h}"
        );
        // Twins: another audience (a trailing slash is another audience), and no scope.
        let mut other = claims.clone();
        other["aud"] = json!(format!("{}/", ENTRA_APP));
        let r = client
            .get(format!("{base}/mcp/x"))
            .bearer_auth(shaped(other))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{name} with another audience");
        let mut narrow = claims.clone();
        for k in ["scp", "scope", "roles"] {
            if narrow.get(k).is_some() {
                narrow[k] = json!("mcp.read");
            }
        }
        let r = client
            .get(format!("{base}/mcp/x"))
            .bearer_auth(shaped(narrow))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name} without the scope");
    }
}

#[tokio::test]
async fn a_failing_metadata_or_jwks_endpoint_is_asked_again_only_after_a_back_off() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let auth = AuthServer::start(tmp.path(), &ca).await;
    let as_client = auth.client(&ca);
    let set_failing = |what: &'static str, on: bool| {
        as_client
            .post(format!("{}/test/fail", auth.issuer()))
            .form(&[("what", what), ("on", if on { "1" } else { "0" })])
            .send()
    };
    let counts = || async {
        let r = as_client
            .get(format!("{}/test/counts", auth.issuer()))
            .send()
            .await
            .unwrap();
        r.json::<serde_json::Value>().await.unwrap()
    };
    set_failing("metadata", true).await.unwrap();
    set_failing("jwks", true).await.unwrap();
    let up = Upstream::start("a").await;
    let host = format!(
        "    routes:\n      - path: /mcp\n        upstream: \"{}\"\n{}",
        up.url(),
        oauth_block(&auth.issuer(), tmp.path(), "mcp:tools", "        "),
    );
    let edge = tls_edge(tmp.path(), &ca, &host).await;
    let base = format!("https://localhost:{}", edge.https.port());
    let client = edge.client(ca.root_store(), &["localhost"]);
    let iss = auth.issuer();
    let token = |kid: &str| {
        let c = json!({"iss": iss, "aud": format!("{base}/mcp"), "sub": "s", "scope": "mcp:tools",
                       "iat": now(), "exp": now() + 600});
        mint(&auth.k1, kid, c)
    };
    let status = |t: String| {
        let r = client.get(format!("{base}/mcp/x")).bearer_auth(t).send();
        async move { r.await.unwrap().status().as_u16() }
    };
    // Metadata down: fifty tokens, a handful of requests to the server, every token 503.
    for _ in 0..50 {
        assert_eq!(status(token("k1")).await, 503);
    }
    let c = counts().await;
    assert!(c["metadata"].as_u64().unwrap() <= 5, "{c}");
    // Metadata back, keys down: a hundred tokens naming keys never seen.
    set_failing("metadata", false).await.unwrap();
    wait_for(
        Duration::from_secs(10),
        "the metadata after its back-off",
        || async {
            (counts().await["jwks"].as_u64()? > 0 || status(token("k1")).await != 503).then_some(())
        },
    )
    .await;
    let before = counts().await["jwks"].as_u64().unwrap();
    for i in 0..100 {
        assert_eq!(status(token(&format!("unknown-{i}"))).await, 503);
    }
    let c = counts().await;
    assert!(
        c["jwks"].as_u64().unwrap() - before <= 5,
        "{c} (from {before})"
    );
    // Both back: a good token is accepted once the back-off ends, without a restart.
    set_failing("jwks", false).await.unwrap();
    wait_for(Duration::from_secs(10), "a token accepted", || async {
        (status(token("k1")).await == 200).then_some(())
    })
    .await;
    assert!(
        edge.log().matches("cannot fetch the issuer's keys").count() <= 10,
        "a failure is logged per fetch, not per token"
    );
}

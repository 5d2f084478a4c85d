use std::path::Path;

use super::*;

fn parse_str(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse(
        text,
        Path::new("/etc/mcp-edge"),
        Path::new("/etc/mcp-edge/edge.yaml"),
    )
}

fn errors(text: &str) -> Vec<String> {
    parse_str(text)
        .expect_err("config should be refused")
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn shorthand_and_routes_build_the_model() {
    let c = parse_str(
        "hosts:\n  Docs.Example.com:\n    tls: none\n    upstream: http://backend:8080\n  t.example.com:\n    tls: self-signed\n    routes:\n      - path: /\n        upstream: http://a\n      - path: /mcp\n        upstream:\n          urls: [http://b:1, http://c:2]\n          read_timeout: 2h\n",
    )
    .unwrap();
    assert_eq!(c.listen.https.port(), 443);
    assert_eq!(c.storage.dir, Path::new("/etc/mcp-edge/certs"));
    assert_eq!(c.storage.redis, None);
    let d = c.host("docs.example.com").unwrap();
    assert_eq!(d.routes[0].upstream.urls[0].authority, "backend:8080");
    let t = c.host("t.example.com").unwrap();
    assert_eq!(t.route("/mcp").unwrap().upstream.urls.len(), 2);
    assert_eq!(t.route("/mcp/x").unwrap().path, "/mcp");
    assert_eq!(t.route("/mcpx").unwrap().path, "/");
    assert_eq!(
        t.route("/mcp").unwrap().upstream.read_timeout,
        std::time::Duration::from_secs(7200)
    );
}

#[test]
fn every_bad_key_is_reported_with_its_path_and_line() {
    let e = errors(
        "listen:\n  htps: x\nhosts:\n  a.example.com:\n    tls: acme\n    upstream: http://a\n    extra: 1\n  b.example.com:\n    tls: none\n    upstream: ftp://b\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("listen.htps (line 2): unknown field `htps`"),
        "{all}"
    );
    assert!(
        all.contains("hosts.\"a.example.com\".extra (line 7): unknown field"),
        "{all}"
    );
    assert!(
        all.contains("hosts.\"b.example.com\".upstream (line 10): ftp://b: scheme ftp"),
        "{all}"
    );
    assert!(all.contains("`tls: acme` needs an `acme:` block"), "{all}");
}

#[test]
fn names_belong_to_one_host_and_acme_needs_terms() {
    let all = errors(
        "acme:\n  contact: [ops@example.com]\nhosts:\n  a.example.com:\n    tls: acme\n    upstream: http://a\n  b.example.com:\n    tls: none\n    aliases: [A.example.com]\n    upstream: http://b\n",
    )
    .join("\n");
    assert!(
        all.contains("name a.example.com is already served by host a.example.com"),
        "{all}"
    );
    assert!(all.contains("acme.accept_terms"), "{all}");
}

#[test]
fn secrets_are_not_echoed() {
    let all = errors(
        "acme:\n  accept_terms: true\n  eab: { kid: k, hmac_key: \"!!!not-base64-SECRET\" }\nhosts:\n  a.example.com:\n    tls: acme\n    upstream: http://a\n",
    )
    .join("\n");
    assert!(all.contains("acme.eab.hmac_key"), "{all}");
    assert!(!all.contains("SECRET"), "{all}");
}

#[test]
fn syntax_errors_carry_a_line() {
    let e = parse_str("hosts:\n  a: [\n").unwrap_err();
    assert!(e[0].line.is_some(), "{e:?}");
}

#[test]
fn prefix_matching_is_on_segment_boundaries() {
    use super::model::prefix_matches_for_test as m;
    assert!(m("/", "/anything"));
    assert!(m("/sse", "/sse"));
    assert!(m("/sse", "/sse/x"));
    assert!(!m("/sse", "/ssex"));
    assert!(m("/api/", "/api/x"));
}

#[test]
fn https_upstream_material_is_checked_at_load_with_the_key_named() {
    let e = errors(
        "hosts:\n  a.example.com:\n    tls: none\n    upstream:\n      urls: [https://10.0.0.1:8443]\n      pin_sha256: [\"abcd\"]\n      client_cert: /nonexistent/c.pem\n  b.example.com:\n    tls: none\n    upstream:\n      urls: [http://10.0.0.2]\n      ca: /nonexistent/ca.pem\n  c.example.com:\n    tls: none\n    upstream:\n      urls: [https://10.0.0.3]\n      ca: /nonexistent/ca.pem\n      server_name: \"bad name!\"\n",
    );
    let all = e.join("\n");
    assert!(
        all.contains("a.example.com\".upstream.pin_sha256 (line 6): \"abcd\" is not a SHA-256"),
        "{all}"
    );
    assert!(all.contains("a.example.com\".upstream.client_key"), "{all}");
    assert!(
        all.contains("b.example.com\".upstream.ca (line 12): applies to https:// upstreams only"),
        "{all}"
    );
    assert!(all.contains("c.example.com\".upstream.ca"), "{all}");
    assert!(all.contains("/nonexistent/ca.pem"), "{all}");
    assert!(
        all.contains("c.example.com\".upstream.server_name"),
        "{all}"
    );
}

#[test]
fn pins_in_hex_with_colons_and_base64() {
    use crate::config::parse_pin;
    let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let a = parse_pin(hex).unwrap();
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
        .collect();
    assert_eq!(parse_pin(&colons.join(":")).unwrap(), a);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(a);
    assert_eq!(parse_pin(&b64).unwrap(), a);
    assert!(parse_pin("abc").is_err());
}

#[test]
fn tls_auto_is_acme_for_public_names_and_self_signed_for_local_ones() {
    use crate::names::is_public_name;
    for n in ["docs.example.com", "mcp.example.org", "a.b.co.uk"] {
        assert!(is_public_name(n), "{n}");
    }
    for n in [
        "localhost",
        "app.localhost",
        "nas.local",
        "x.test",
        "10.0.0.1",
        "::1",
        "intranet",
        "svc.internal",
        "a.example",
    ] {
        assert!(!is_public_name(n), "{n}");
    }
}

#[test]
fn check_refuses_what_would_silently_never_work() {
    let host =
        |routes: &str| format!("hosts:\n  a.example.com:\n    tls: none\n    routes:\n{routes}");
    // A route no normalised request path can match.
    for path in ["/mcp/../admin", "/a/./b", "/%2e%2e/x"] {
        let e = errors(&host(&format!(
            "      - {{ path: \"{path}\", upstream: http://a:1 }}\n"
        )));
        assert!(
            e.iter()
                .any(|e| e.contains("routes[0].path") && e.contains("normalis")),
            "{path}: {e:?}"
        );
    }
    // Reject twin: a normalised prefix, with or without its trailing slash.
    assert!(parse_str(&host("      - { path: /mcp/, upstream: http://a:1 }\n")).is_ok());
    // An upstream on port 0.
    let e = errors(&host("      - { path: /, upstream: \"http://a:0\" }\n"));
    assert!(e.iter().any(|e| e.contains("port 0")), "{e:?}");
    // A custom YAML tag, named with its key.
    let e = errors(&format!(
        "threads: !Foo 2\n{}",
        host("      - { path: /, upstream: http://a:1 }\n")
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("threads") && e.contains("!Foo")),
        "{e:?}"
    );
    // A byte-order mark is allowed at the start of the file.
    assert!(parse_str(&format!(
        "\u{feff}{}",
        host("      - { path: /, upstream: http://a:1 }\n")
    ))
    .is_ok());
}

#[test]
fn audiences_and_claim_mapping_are_read_and_checked() {
    let base = "hosts:\n  a.example.com:\n    tls: none\n    upstream: http://a\n    auth:\n      oauth:\n        issuer: https://login.example.com/t/v2.0\n";
    let ok = parse_str(&format!(
        "{base}        audiences: [\"api://mcp\", \"5f1c9f1e\"]\n        claims: {{ subject: oid, scopes: [scp, roles] }}\n"
    ))
    .unwrap();
    let oauth_of = |c: &Config| {
        c.hosts[0].routes[0]
            .auth
            .as_ref()
            .unwrap()
            .oauth
            .clone()
            .unwrap()
    };
    let oauth = oauth_of(&ok);
    assert_eq!(oauth.audiences, ["api://mcp", "5f1c9f1e"]);
    assert_eq!(oauth.claims.subject, "oid");
    assert_eq!(oauth.claims.scopes, ["scp", "roles"]);
    assert_eq!(oauth.claims.groups, "groups");
    // Defaults: the resource is the audience; scope and scp are read (roles only when asked).
    let oauth = oauth_of(&parse_str(base).unwrap());
    assert!(oauth.audiences.is_empty());
    assert_eq!(oauth.claims, ClaimMap::default());
    // Twins: a blank-padded audience, an empty claim name, no scope claims at all.
    let all = errors(&format!(
        "{base}        audiences: [\" api://mcp\"]\n        claims: {{ subject: \"\", scopes: [] }}\n"
    ))
    .join("\n");
    assert!(
        all.contains("audiences[0]") && all.contains("byte for byte"),
        "{all}"
    );
    assert!(all.contains("claims.subject"), "{all}");
    assert!(all.contains("claims.scopes"), "{all}");
}

#[test]
fn identity_and_api_key_headers_cannot_be_ones_the_edge_manages() {
    let base = "hosts:\n  a.example.com:\n    tls: none\n    upstream: http://a\n    auth:\n      api_keys:\n        keys: { k: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\" }\n";
    let ok = parse_str(&format!(
        "{base}        header: x-api-key\n      identity_headers: {{ subject: x-user }}\n"
    ))
    .unwrap();
    let auth = ok.hosts[0].routes[0].auth.clone().unwrap();
    assert_eq!(auth.identity.subject, "x-user");
    // Twins: a framing header, a forwarding one, Host, the session id.
    let all = errors(&format!(
        "{base}        header: Content-Length\n      identity_headers: {{ subject: transfer-encoding, client_id: X-Forwarded-For, scopes: host, key: mcp-session-id }}\n"
    ))
    .join("\n");
    for key in [
        "api_keys.header",
        "identity_headers.subject",
        "identity_headers.client_id",
        "identity_headers.scopes",
        "identity_headers.key",
    ] {
        assert!(
            all.contains(key) && all.contains("the edge manages"),
            "{key}: {all}"
        );
    }
}

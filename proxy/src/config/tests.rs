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
    assert_eq!(c.storage, Path::new("/etc/mcp-edge/certs"));
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
        "listen:\n  htps: x\nhosts:\n  a.example.com:\n    tls: acme\n    upstream: http://a\n    extra: 1\n  b.example.com:\n    tls: none\n    upstream: https://b\n",
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
        all.contains("hosts.\"b.example.com\".upstream (line 10): https://b"),
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

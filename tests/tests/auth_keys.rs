//! API keys and rate limits at the edge: a key admits its caller (named to the upstream, the key
//! itself never forwarded), a wrong or missing key gets the RFC 6750 challenge, a client's own
//! identity headers never reach the upstream, and a caller over its budget gets 429 while
//! another is served. Each accept path with its reject twin.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// A new key from `mcp-edge api-key NAME`: (key, the YAML line's hash).
fn new_key(name: &str) -> (String, String) {
    let out = Command::new(edge_bin())
        .args(["api-key", name])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("mcpe_"))
        .unwrap()
        .to_string();
    let hash = text
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string();
    (key, hash)
}

fn bearer(key: &str) -> String {
    format!("authorization: Bearer {key}\r\n")
}

#[tokio::test]
async fn an_api_key_admits_its_caller_and_nothing_else_does() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let (ci, ci_hash) = new_key("ci");
    let (ops, ops_hash) = new_key("ops");
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    auth:\n      api_keys:\n        keys:\n          ci: {ci_hash}\n          ops: {ops_hash}\n    routes:\n      - {{ path: /mcp, upstream: \"{u}\" }}\n      - {{ path: /public, upstream: \"{u}\", auth: none }}\n",
            u = up.url()
        ),
    )
    .await;
    let forged = "x-auth-subject: admin\r\nx-auth-key-name: ops\r\n";

    // The right key: admitted, named to the upstream, the key itself left at the edge.
    let raw = edge
        .get_from("127.0.0.1", "/mcp/x", &(bearer(&ci) + forged))
        .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let h = &raw_json(&raw)["headers"];
    assert_eq!(h["x-auth-key-name"], "ci");
    assert!(h.get("authorization").is_none(), "{h}");
    assert!(
        h.get("x-auth-subject").is_none(),
        "forged identity reached the upstream: {h}"
    );
    let raw = edge.get_from("127.0.0.1", "/mcp/x", &bearer(&ops)).await;
    assert_eq!(raw_json(&raw)["headers"]["x-auth-key-name"], "ops");

    // No key: 401 with a challenge; a wrong key, or the hash itself: 401 invalid_token.
    let raw = edge.get_from("127.0.0.1", "/mcp/x", forged).await;
    assert_eq!(raw_status(&raw), 401, "{raw}");
    assert_eq!(
        raw_header(&raw, "www-authenticate"),
        Some("Bearer realm=\"mcp-edge\"")
    );
    for wrong in [format!("{ci}x"), ci_hash.clone(), "mcpe_".to_string()] {
        let raw = edge.get_from("127.0.0.1", "/mcp/x", &bearer(&wrong)).await;
        assert_eq!(raw_status(&raw), 401, "{raw}");
        assert!(raw_header(&raw, "www-authenticate")
            .unwrap()
            .contains("error=\"invalid_token\""));
    }
    let raw = edge
        .get_from("127.0.0.1", "/mcp/x", "authorization: Basic Y2k6eA==\r\n")
        .await;
    assert_eq!(raw_status(&raw), 401);
    // Another scheme: a challenge without an error code (RFC 6750 §3.1).
    let www = raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_default();
    assert!(www.contains("Bearer") && !www.contains("error="), "{raw}");
    let m = |r: &str| {
        format!("mcp_edge_auth_results_total{{host=\"h.test\",result=\"{r}\",route=\"/mcp\"}}")
    };
    assert_eq!(edge.metric(&m("ok")).await, 2.0);
    assert_eq!(edge.metric(&m("missing")).await, 1.0);
    assert_eq!(edge.metric(&m("bad_api_key")).await, 3.0);
    assert_eq!(edge.metric(&m("unsupported_scheme")).await, 1.0);

    // A route that opts out is open, and still drops forged identity headers.
    let raw = edge.get_from("127.0.0.1", "/public", forged).await;
    assert_eq!(raw_status(&raw), 200);
    let h = &raw_json(&raw)["headers"];
    assert!(
        h.get("x-auth-subject").is_none() && h.get("x-auth-key-name").is_none(),
        "{h}"
    );
    // The access log names the caller, never the key.
    let log = edge.log();
    assert!(log.contains("caller=\"key:ci\""), "{log}");
    assert!(
        !log.contains(&ci) && !log.contains(&ops),
        "a key reached the log"
    );
}

#[tokio::test]
async fn a_key_in_its_own_header_is_checked_and_not_forwarded() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let (key, hash) = new_key("svc");
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    auth:\n      api_keys:\n        header: x-api-key\n        keys: {{ svc: \"{hash}\" }}\n    upstream: \"{}\"\n",
            up.url()
        ),
    )
    .await;
    let raw = edge
        .get_from("127.0.0.1", "/x", &format!("x-api-key: {key}\r\n"))
        .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let h = &raw_json(&raw)["headers"];
    assert!(h.get("x-api-key").is_none(), "{h}");
    assert_eq!(h["x-auth-key-name"], "svc");
    let raw = edge
        .get_from("127.0.0.1", "/x", "x-api-key: mcpe_nope\r\n")
        .await;
    assert_eq!(raw_status(&raw), 401);
    // In this mode a bearer token is not a key.
    let raw = edge.get_from("127.0.0.1", "/x", &bearer(&key)).await;
    assert_eq!(raw_status(&raw), 401);
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_while_another_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let (a, a_hash) = new_key("a");
    let (b, b_hash) = new_key("b");
    let (e, e_hash) = new_key("e");
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    auth:\n      api_keys:\n        keys: {{ a: \"{a_hash}\", b: \"{b_hash}\", e: \"{e_hash}\" }}\n    rate_limit:\n      requests: 3\n      per: 1m\n      tools:\n        search_docs: {{ requests: 1, per: 1m }}\n    upstream: \"{}\"\n",
            up.url()
        ),
    )
    .await;
    for i in 0..3 {
        let raw = edge.get_from("127.0.0.1", "/x", &bearer(&a)).await;
        assert_eq!(raw_status(&raw), 200, "request {i}: {raw}");
        assert_eq!(
            raw_header(&raw, "ratelimit-policy"),
            Some("\"default\";q=3;w=60")
        );
    }
    let raw = edge.get_from("127.0.0.1", "/x", &bearer(&a)).await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    let retry: u64 = raw_header(&raw, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(raw_header(&raw, "ratelimit").unwrap().contains("r=0"));
    // Guessing keys is throttled per address: refusals spend that address's budget.
    for _ in 0..3 {
        let raw = edge
            .get_from("127.0.0.3", "/x", &bearer("mcpe_guess"))
            .await;
        assert_eq!(raw_status(&raw), 401);
    }
    let raw = edge
        .get_from("127.0.0.3", "/x", &bearer("mcpe_guess"))
        .await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    // Past that budget the address is refused before any credential is checked: a right
    // guess gets the same 429 as a wrong one (it would have got 200 and told the guesser).
    let raw = edge.get_from("127.0.0.3", "/x", &bearer(&e)).await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    assert_eq!(
        raw_header(&raw, "ratelimit-policy"),
        Some("\"credentials\";q=3;w=60")
    );
    // A request with no credential guesses nothing: still the plain 401 (a client's discovery
    // from behind the same address goes on).
    let raw = edge.get_from("127.0.0.3", "/x", "").await;
    assert_eq!(raw_status(&raw), 401, "{raw}");
    // Another caller, from the same address, has its own budget.
    let raw = edge.get_from("127.0.0.1", "/x", &bearer(&b)).await;
    assert_eq!(raw_status(&raw), 200);
    // A tool with its own budget, decided by the call in the body (2026-07-28 clients send the
    // headers too; clients that predate them only the body): one call, then 429; other tools
    // pass; the body reaches the upstream intact when allowed.
    let post = |caller: &str, tool: &str, header: Option<&str>| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"query":"tls"}}}}}}"#
        );
        let named = header.map_or(String::new(), |h| {
            format!("mcp-method: tools/call\r\nmcp-name: {h}\r\n")
        });
        let head = format!(
            "POST /x HTTP/1.1\r\nhost: h.test\r\n{}{named}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            bearer(caller),
            body.len()
        );
        (head, body)
    };
    for (caller, header) in [(&b, Some("search_docs")), (&e, None)] {
        let (head, body) = post(caller, "search_docs", header);
        let raw = edge
            .raw_exchange(&head, &[body.as_bytes()], Duration::ZERO)
            .await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
        assert_eq!(raw_json(&raw)["body_len"], body.len());
        // The same call again, with headers that name another tool: the body is what runs.
        let (head, body) = post(caller, "search_docs", header.map(|_| "get_page"));
        let raw = edge
            .raw_exchange(&head, &[body.as_bytes()], Duration::ZERO)
            .await;
        assert_eq!(raw_status(&raw), 429, "{raw}");
        assert!(raw_header(&raw, "retry-after").is_some(), "{raw}");
        let (head, body) = post(caller, "get_page", header.map(|_| "get_page"));
        let raw = edge
            .raw_exchange(&head, &[body.as_bytes()], Duration::ZERO)
            .await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
    }

    assert_eq!(
        edge.metric("mcp_edge_rate_limited_total{host=\"h.test\",limit=\"default\",route=\"/\"}")
            .await,
        1.0,
        "caller a once"
    );
    assert_eq!(
        edge.metric(
            "mcp_edge_rate_limited_total{host=\"h.test\",limit=\"credentials\",route=\"/\"}"
        )
        .await,
        2.0,
        "the guessing address: its fourth guess, then its right key"
    );
    assert_eq!(
        edge.metric(
            "mcp_edge_rate_limited_total{host=\"h.test\",limit=\"search_docs\",route=\"/\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn behind_a_trusted_balancer_each_real_client_has_its_own_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let (k, k_hash) = new_key("k");
    let edge = plain_host_edge(
        tmp.path(),
        "trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]\n",
        &format!(
            "    auth:\n      api_keys:\n        keys: {{ k: \"{k_hash}\" }}\n    rate_limit: {{ requests: 2, per: 1h }}\n    upstream: \"{}\"\n",
            up.url()
        ),
    )
    .await;
    // The balancer (127.0.0.1, trusted) appends the client it saw; an inner proxy
    // (10.0.0.7, trusted) may stand between; the client's own entry (left) is never read.
    let via = |client: &str| format!("x-forwarded-for: 203.0.113.66, {client}, 10.0.0.7\r\n");
    for _ in 0..2 {
        let raw = edge
            .get_from(
                "127.0.0.1",
                "/x",
                &format!("{}{}", via("198.51.100.1"), bearer("mcpe_guess")),
            )
            .await;
        assert_eq!(raw_status(&raw), 401);
    }
    let raw = edge
        .get_from(
            "127.0.0.1",
            "/x",
            &format!("{}{}", via("198.51.100.1"), bearer(&k)),
        )
        .await;
    assert_eq!(raw_status(&raw), 429, "the guesser is out: {raw}");
    // Another client behind the same balancer is not locked out with it.
    let raw = edge
        .get_from(
            "127.0.0.1",
            "/x",
            &format!("{}{}", via("198.51.100.2"), bearer(&k)),
        )
        .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    // The twin: from an address that is not a trusted proxy, a forged X-Forwarded-For changes
    // nothing: every guess spends 127.0.0.3's own budget.
    for (i, forged) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let raw = edge
            .get_from(
                "127.0.0.3",
                "/x",
                &format!("x-forwarded-for: {forged}\r\n{}", bearer("mcpe_guess")),
            )
            .await;
        assert_eq!(
            raw_status(&raw),
            if i < 2 { 401 } else { 429 },
            "{forged}: {raw}"
        );
    }
}

#[tokio::test]
async fn without_auth_the_rate_limit_is_per_client_address() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    rate_limit: {{ requests: 1, per: 1h }}\n    upstream: \"{}\"\n",
            up.url()
        ),
    )
    .await;
    assert_eq!(raw_status(&edge.get_from("127.0.0.1", "/x", "").await), 200);
    assert_eq!(raw_status(&edge.get_from("127.0.0.1", "/x", "").await), 429);
    assert_eq!(raw_status(&edge.get_from("127.0.0.2", "/x", "").await), 200);
}

/// `mcp-edge check` on a host with this `auth:` block (indented for the host): its output,
/// which must be a failure.
fn check_fails(tmp: &std::path::Path, auth: &str) -> String {
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  h.test:\n    tls: none\n    upstream: \"http://127.0.0.1:9\"\n    auth:\n{auth}",
        ports.yaml(),
        tmp.join("certs").display(),
    );
    let (ok, text) = run_check(tmp, &cfg);
    assert!(!ok, "{text}");
    text
}

#[test]
fn check_refuses_a_plain_key_a_bad_hash_and_a_bad_issuer_and_never_echoes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let text = check_fails(
        tmp.path(),
        "      api_keys:\n        keys:\n          pasted: mcpe_THE_PLAIN_KEY\n          short: sha256:abcd\n      oauth:\n        issuer: http://as.test\n        scopes: [\"bad scope\"]\n        algorithms: [none, HS256]\n        introspection: { client_id: edge, client_secret: THE_SECRET }\n",
    );
    for key in [
        "auth.api_keys.keys.pasted",
        "auth.api_keys.keys.short",
        "auth.oauth.issuer",
        "auth.oauth.scopes[0]",
        "auth.oauth.algorithms[0]",
        "auth.oauth.algorithms[1]",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
    assert!(
        !text.contains("THE_PLAIN_KEY") && !text.contains("THE_SECRET"),
        "{text}"
    );
    // A secret of the wrong type is named, never shown.
    let text = check_fails(
        tmp.path(),
        "      oauth:\n        issuer: https://as.test\n        introspection: { client_id: edge, client_secret: 123456789 }\n",
    );
    assert!(
        text.contains("auth.oauth.introspection.client_secret"),
        "{text}"
    );
    assert!(!text.contains("123456789"), "{text}");
}

/// A POST of `body` (JSON-RPC) to `path` on `h.test` with `headers`, from address `from`.
async fn rpc_from(edge: &Edge, from: &str, path: &str, headers: &str, body: &str) -> String {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: h.test\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    edge.raw_exchange_from(
        from.parse().unwrap(),
        &head,
        &[body.as_bytes()],
        Duration::ZERO,
    )
    .await
}

fn tool_call(id: usize, tool: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}"}}}}"#)
}

#[tokio::test]
async fn a_tool_budget_counts_the_calls_in_the_body_whatever_the_headers_say() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let limit =
        "rate_limit: { requests: 1000, per: 1m, tools: { expensive: { requests: 2, per: 1h } } }";
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    routes:\n      - {{ path: /checked, upstream: \"{u}\", mcp: {{ validate: true }}, {limit} }}\n      - {{ path: /, upstream: \"{u}\", {limit} }}\n",
            u = up.url()
        ),
    )
    .await;
    let call = tool_call(1, "expensive");
    // Headers that name a cheap tool, or another method, do not hide the call in the body.
    let lying = "mcp-method: tools/call\r\nmcp-name: cheap\r\n";
    for _ in 0..2 {
        let raw = rpc_from(&edge, "127.0.0.11", "/x", lying, &call).await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
    }
    let raw = rpc_from(&edge, "127.0.0.11", "/x", lying, &call).await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    let raw = rpc_from(&edge, "127.0.0.11", "/x", "mcp-method: ping\r\n", &call).await;
    assert_eq!(raw_status(&raw), 429, "any Mcp-Method header: {raw}");
    // A repeated key: Python and Node read the last one, Go the first where the last is null.
    // Which tool runs cannot be told: refused unread, past the budget or not.
    let twice = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"cheap","name":"expensive"}}"#;
    let raw = rpc_from(&edge, "127.0.0.11", "/x", lying, twice).await;
    assert_eq!(raw_status(&raw), 400, "repeated key: {raw}");
    // Reject twin: another tool from the same caller passes.
    let raw = rpc_from(&edge, "127.0.0.11", "/x", lying, &tool_call(2, "cheap")).await;
    assert_eq!(raw_status(&raw), 200, "{raw}");

    // A batch spends one unit per call: fifty calls against a budget of two are refused;
    // two calls pass.
    let batch = |n: usize| {
        let calls: Vec<String> = (0..n).map(|i| tool_call(i, "expensive")).collect();
        format!("[{}]", calls.join(","))
    };
    let raw = rpc_from(&edge, "127.0.0.12", "/x", lying, &batch(50)).await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    let raw = rpc_from(&edge, "127.0.0.13", "/x", "", &batch(2)).await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert_eq!(raw_json(&raw)["body_len"], batch(2).len());

    // What the edge cannot read is never forwarded past a budget: a lone surrogate in the id
    // or in a field the call does not use (JavaScript's JSON.parse takes both). Each went
    // through uncounted, as "not JSON-RPC". So do bodies that read as one call to some servers
    // and as another (or none) to others: a read key written twice (`"method": null` after the
    // call: a call to Go, a response to Python) or in another case (`Name`: Go reads it).
    for body in [
        r#"{"jsonrpc":"2.0","id":"\ud800","method":"tools/call","params":{"name":"expensive"}}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"expensive","uri":"\ud800"}}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"expensive"},"method":null}"#,
        r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"cheap","Name":"expensive"}}"#,
    ] {
        let raw = rpc_from(&edge, "127.0.0.16", "/x", "", body).await;
        assert_eq!(raw_status(&raw), 400, "{raw}");
        assert_eq!(raw_json(&raw)["error"]["code"], -32700, "{raw}");
    }
    // Reject twin: the same caller's readable call passes; those spent none of its budget.
    for _ in 0..2 {
        let raw = rpc_from(&edge, "127.0.0.16", "/x", "", &call).await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
    }

    // With validation, the base64 form of the right name passes and counts against the same
    // budget; a name that does not decode is not "absent": -32020 naming Mcp-Name.
    let b64 = "mcp-method: tools/call\r\nmcp-name: =?base64?ZXhwZW5zaXZl?=\r\n";
    for _ in 0..2 {
        let raw = rpc_from(&edge, "127.0.0.14", "/checked/x", b64, &call).await;
        assert_eq!(raw_status(&raw), 200, "{raw}");
    }
    let raw = rpc_from(&edge, "127.0.0.14", "/checked/x", b64, &call).await;
    assert_eq!(raw_status(&raw), 429, "{raw}");
    let bad = "mcp-method: tools/call\r\nmcp-name: =?base64?***?=\r\n";
    let raw = rpc_from(&edge, "127.0.0.15", "/checked/x", bad, &call).await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    let err = raw_json(&raw);
    assert_eq!(err["error"]["code"], -32020);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Mcp-Name"),
        "{err}"
    );
}

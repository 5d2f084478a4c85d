//! The edge reads MCP off the wire: per-method and per-tool counts, outcomes and latencies for
//! the official Python SDK on both transports (tests/python/tool_server.py: a fast, a slow and a
//! failing tool), the `_other` bucket past `max_tools`, the access-log fields, and the opt-in
//! 2026-07-28 header validation (-32020) with its accept twin.
#![forbid(unsafe_code)]

use std::time::Duration;

use mcp_edge_tests::*;

fn calls(host: &str, tool: &str, outcome: &str) -> String {
    format!(
        "mcp_edge_mcp_calls_total{{error=\"\",host=\"{host}\",method=\"tools/call\",outcome=\"{outcome}\",route=\"/\",tool=\"{tool}\"}}"
    )
}

fn bucket(host: &str, tool: &str, le: &str) -> String {
    format!(
        "mcp_edge_mcp_call_duration_seconds_bucket{{host=\"{host}\",method=\"tools/call\",route=\"/\",tool=\"{tool}\",le=\"{le}\"}}"
    )
}

#[tokio::test]
async fn tools_are_counted_by_name_outcome_and_latency_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let sse_answers = ToolServer::start(tmp.path(), false).await;
    let json_answers = ToolServer::start(tmp.path(), true).await;
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  127.0.0.1:\n    tls: none\n    mcp: {{ max_tools: 4 }}\n    upstream: \"http://127.0.0.1:{}\"\n  localhost:\n    tls: none\n    upstream: \"http://127.0.0.1:{}\"\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
        sse_answers.port,
        json_answers.port,
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let port = edge.http.port();

    // Streamable HTTP answered in SSE: fast x3, slow, fail, an unknown tool, then three
    // invented names past `max_tools: 4`.
    let v = call_tools(&format!("http://127.0.0.1:{port}/mcp"), "streamable", 3).await;
    assert_eq!(v["slow"], "done");
    let h = "127.0.0.1";
    assert_eq!(edge.metric(&calls(h, "fast", "ok")).await, 3.0);
    assert_eq!(edge.metric(&calls(h, "slow", "ok")).await, 1.0);
    assert_eq!(edge.metric(&calls(h, "fail", "tool_error")).await, 1.0);
    // A tool the server does not have, and invented names, are answered with errors: none of
    // them is vouched for, so they share `_other` (a client cannot invent series).
    assert!(edge
        .try_metric(&calls(h, "no_such_tool", "tool_error"))
        .await
        .is_none());
    assert_eq!(
        edge.metric(&calls(h, "_other", "tool_error")).await,
        4.0,
        "unknown and invented names share _other"
    );
    assert!(edge
        .try_metric(&calls(h, "invented_0", "tool_error"))
        .await
        .is_none());
    // The slow tool (0.3 s) lands between the 0.25 s and 0.5 s buckets; the fast one below.
    assert_eq!(edge.metric(&bucket(h, "slow", "0.25")).await, 0.0);
    assert_eq!(edge.metric(&bucket(h, "slow", "0.5")).await, 1.0);
    assert_eq!(edge.metric(&bucket(h, "fast", "0.25")).await, 3.0);
    assert!(
        edge.metric("mcp_edge_mcp_protocol_version_requests_total{host=\"127.0.0.1\",version=\"2025-11-25\"}")
            .await
            >= 5.0
    );

    // The legacy transport: calls POSTed to /messages/, answered on the session's stream.
    call_tools(&format!("http://127.0.0.1:{port}/legacy/sse"), "sse", 0).await;
    assert_eq!(edge.metric(&calls(h, "fast", "ok")).await, 6.0);
    assert_eq!(edge.metric(&bucket(h, "slow", "0.5")).await, 2.0);
    assert_eq!(edge.metric(&calls(h, "fail", "tool_error")).await, 2.0);

    // Streamable HTTP answered in JSON.
    call_tools(&format!("http://localhost:{port}/mcp"), "streamable", 0).await;
    assert_eq!(edge.metric(&calls("localhost", "fast", "ok")).await, 3.0);
    assert_eq!(
        edge.metric(&calls("localhost", "fail", "tool_error")).await,
        1.0
    );

    // The access log names the method, tool and id, never the arguments.
    let log = edge.log();
    let line = log
        .lines()
        .find(|l| l.contains("mcp_tool=\"slow\""))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("mcp_method=\"tools/call\"") && line.contains("rpc_id="),
        "{line}"
    );
    assert!(!log.contains("hello 1"), "arguments reached the log");
}

/// A 2026-07-28-shaped POST (JSON-RPC in the body, MCP headers beside it) to `path`.
fn post(path: &str, body: &str, headers: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: h.test\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn headers_that_disagree_with_the_body_get_32020_when_validation_is_on() {
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream::Upstream::start("a").await;
    let edge = plain_host_edge(
        tmp.path(),
        "",
        &format!(
            "    routes:\n      - {{ path: /checked, upstream: \"{u}\", mcp: {{ validate: true }} }}\n      - {{ path: /strict, upstream: \"{u}\", mcp: {{ validate: true, strict: true }} }}\n      - {{ path: /, upstream: \"{u}\" }}\n",
            u = up.url()
        ),
    )
    .await;
    let call = r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"search_docs","arguments":{}}}"#;
    let send = |path: &'static str, headers: &'static str| {
        let raw = post(path, call, headers);
        let edge = &edge;
        async move { edge.raw_exchange(&raw, &[], Duration::ZERO).await }
    };
    // Agreeing headers (the name also in its base64 form), or none: forwarded, body intact.
    for headers in [
        "mcp-method: tools/call\r\nmcp-name: search_docs\r\n",
        "mcp-method: tools/call\r\nmcp-name: =?base64?c2VhcmNoX2RvY3M=?=\r\n",
        "",
    ] {
        let raw = send("/checked/x", headers).await;
        assert_eq!(raw_status(&raw), 200, "{headers}: {raw}");
        assert_eq!(raw_json(&raw)["body_len"], call.len());
    }
    // A mismatched name (plain or base64), or method: 400 with JSON-RPC error -32020.
    for headers in [
        "mcp-method: tools/call\r\nmcp-name: get_doc\r\n",
        "mcp-method: tools/call\r\nmcp-name: =?base64?Z2V0X2RvYw==?=\r\n",
        "mcp-method: tools/list\r\n",
    ] {
        let raw = send("/checked/x", headers).await;
        assert_eq!(raw_status(&raw), 400, "{headers}: {raw}");
        let err = raw_json(&raw);
        assert_eq!(err["error"]["code"], -32020, "{raw}");
        assert_eq!(err["id"], 11);
    }
    assert_eq!(
        edge.metric(
            "mcp_edge_requests_refused_total{host=\"h.test\",reason=\"mcp_header_mismatch\"}"
        )
        .await,
        3.0
    );
    // Off by default: the same mismatch passes where validation is not asked for.
    let raw = send("/x", "mcp-method: tools/call\r\nmcp-name: get_doc\r\n").await;
    assert_eq!(raw_status(&raw), 200);
    // Strict: a 2025-era version is refused; the 2026-07-28 one passes.
    let raw = send("/strict/x", "mcp-protocol-version: 2025-06-18\r\n").await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    let raw = send(
        "/strict/x",
        "mcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: search_docs\r\n",
    )
    .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
}

/// A JSON-RPC POST to `/mcp` on host 127.0.0.1 in `session` (none for `initialize`).
fn mcp_post(body: &str, session: Option<&str>) -> String {
    let session = session.map_or(String::new(), |s| format!("mcp-session-id: {s}\r\n"));
    format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-protocol-version: 2025-06-18\r\n{session}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn invented_tool_names_cannot_inflate_the_metrics_or_the_process() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = ToolServer::start(tmp.path(), true).await;
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  127.0.0.1:\n    tls: none\n    upstream: \"http://127.0.0.1:{}\"\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
        tools.port,
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"flood","version":"1"}}}"#;
    let raw = edge
        .raw_exchange(&mcp_post(init, None), &[], Duration::ZERO)
        .await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    let session = raw_header(&raw, "mcp-session-id").unwrap().to_string();
    let done = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    edge.raw_exchange(&mcp_post(done, Some(&session)), &[], Duration::ZERO)
        .await;

    // One call of each shape first, so that the flood is measured against steady state.
    let flood_call = |i: usize| {
        let name = format!("t{i}{}", "x".repeat(63 * 1024));
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"{name}","arguments":{{}}}}}}"#,
            i + 2
        );
        mcp_post(&body, Some(&session))
    };
    let raw = edge.raw_exchange(&flood_call(0), &[], Duration::ZERO).await;
    assert_eq!(raw_status(&raw), 200, "{}", &raw[..raw.len().min(300)]);
    let before = edge.metrics_text().await.len();
    let rss_before = rss_kb(edge.pid());

    // The flood: 100 calls of tools nobody has, each named by 63 KB.
    for i in 1..=100 {
        edge.raw_exchange(&flood_call(i), &[], Duration::ZERO).await;
    }
    let text = edge.metrics_text().await;
    assert!(
        text.len() < before + 1024,
        "/metrics grew from {before} to {} bytes",
        text.len()
    );
    assert!(
        text.lines().all(|l| l.len() < 1024),
        "a metric line carries an invented name"
    );
    assert_eq!(
        metric_value(&text, &calls("127.0.0.1", "_other", "tool_error")),
        101.0
    );
    let rss_after = rss_kb(edge.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    // Notifications naming tools (answered 202, nothing said about the name) vouch for none.
    for i in 0..5 {
        let note =
            format!(r#"{{"jsonrpc":"2.0","method":"tools/call","params":{{"name":"note_{i}"}}}}"#);
        edge.raw_exchange(&mcp_post(&note, Some(&session)), &[], Duration::ZERO)
            .await;
    }
    let text = edge.metrics_text().await;
    assert!(!text.contains("note_"), "a notification made a label");
    // The access log keeps a bounded prefix of the name.
    assert!(
        edge.log().lines().all(|l| l.len() < 4096),
        "a log line carries the name"
    );

    // A real client lists the tools and calls them: each keeps its own series.
    call_tools(
        &format!("http://127.0.0.1:{}/mcp", edge.http.port()),
        "streamable",
        0,
    )
    .await;
    assert_eq!(edge.metric(&calls("127.0.0.1", "fast", "ok")).await, 3.0);
    assert_eq!(
        edge.metric(&calls("127.0.0.1", "fail", "tool_error")).await,
        1.0
    );
}

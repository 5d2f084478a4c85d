//! The documentation MCP server with the official MCP Python SDK as the client: directly, and
//! through mcp-edge over TLS, on both transports.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use mcp_edge_tests::*;

/// A small corpus: front matter titles, a heading title, plain text, a nested page.
fn corpus(dir: &Path) -> std::path::PathBuf {
    let c = dir.join("corpus");
    std::fs::create_dir_all(c.join("guides")).unwrap();
    std::fs::write(
        c.join("guides/install.md"),
        "---\ntitle: Installing the widget\n---\nInstall the widget with the frobnicator. The frobnicator needs calibration first.\n",
    )
    .unwrap();
    std::fs::write(
        c.join("config.md"),
        "# Configuration\n\nSet the flux capacitor value in settings. Widgets read it at start.\n",
    )
    .unwrap();
    std::fs::write(
        c.join("notes.txt"),
        "Plain text notes about widgets and gadgets.\n",
    )
    .unwrap();
    std::fs::write(c.join(".hidden.md"), "secret frobnicator\n").unwrap();
    c
}

fn assert_session(v: &serde_json::Value, top: &str, doc_title: &str) {
    assert_eq!(v["server_name"], "mcp-docs", "{v}");
    assert!(v["instructions"].as_str().unwrap().contains("search_docs"));
    assert_eq!(
        v["tools"],
        serde_json::json!(["get_doc", "list_docs", "search_docs"])
    );
    // The input schema is exact: required query, bounded limit, nothing else.
    let schema = &v["search_schema"];
    assert_eq!(schema["required"], serde_json::json!(["query"]));
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["limit"]["maximum"], 50);
    assert_eq!(v["hits"][0], top, "{v}");
    assert!(v["top_snippet"].as_str().unwrap().contains("**"), "{v}");
    assert_eq!(v["doc_is_error"], false);
    assert!(v["doc_text"].as_str().unwrap().contains(doc_title), "{v}");
    assert_eq!(v["missing_is_error"], true);
    assert!(
        v["traversal"]["rpc_error"]
            .as_str()
            .is_some_and(|e| e.contains("outside the documentation set")),
        "{v}"
    );
    assert!(
        v["bad_args"]["rpc_error"]
            .as_str()
            .is_some_and(|e| e.contains("expected a string")),
        "{v}"
    );
    assert_eq!(v["resources"], 3, "hidden files are not served: {v}");
    assert!(v["resource_text"].as_str().is_some(), "{v}");
}

#[tokio::test]
async fn python_sdk_directly_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let docs = DocsServer::start(tmp.path(), &c, &[]).await;
    let v = mcp_check(
        &format!("{}/mcp", docs.url()),
        "streamable",
        "frobnicator calibration",
        "guides/install.md",
        None,
    )
    .await;
    assert_session(&v, "guides/install.md", "Installing the widget");
    let v = mcp_check(
        &format!("{}/sse", docs.url()),
        "sse",
        "flux capacitor",
        "config.md",
        None,
    )
    .await;
    assert_session(&v, "config.md", "# Configuration");
}

#[tokio::test]
async fn python_sdk_through_mcp_edge_over_tls_on_both_transports() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let docs = DocsServer::start(tmp.path(), &c, &[]).await;
    let ports = Ports::new();
    let storage = tmp.path().join("certs");
    let cfg = format!(
        "{}storage: {}\nhosts:\n  localhost:\n    tls: self-signed\n    upstream: {}\n",
        ports.yaml(),
        storage.display(),
        docs.url()
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let ca = storage.join("localhost.self-signed.cert.pem");
    let base = format!("https://localhost:{}", edge.https.port());
    let v = mcp_check(
        &format!("{base}/mcp"),
        "streamable",
        "frobnicator",
        "guides/install.md",
        Some(&ca),
    )
    .await;
    assert_session(&v, "guides/install.md", "Installing the widget");
    let v = mcp_check(
        &format!("{base}/sse"),
        "sse",
        "flux capacitor",
        "config.md",
        Some(&ca),
    )
    .await;
    assert_session(&v, "config.md", "# Configuration");
    // Both went through TLS on the proxy.
    let m = edge.metrics_text().await;
    assert!(
        metric_value(&m, "mcp_edge_tls_handshakes_total{host=\"localhost\"}") >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn index_rebuilds_on_change_keeps_streams_and_cleans_up_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let c = corpus(tmp.path());
    let mut docs = DocsServer::start(
        tmp.path(),
        &c,
        &["--watch-interval", "200ms", "--keep-alive", "200ms"],
    )
    .await;
    assert_eq!(docs.health().await.unwrap()["pages"], 3);

    // Legacy streams: each is a session; comment keep-alives flow while idle.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let r = reqwest::get(format!("{}/sse", docs.url())).await.unwrap();
        assert_eq!(r.status(), 200);
        let mut sse = SseReader::new(r);
        let (first, _) = sse.next_event().await.unwrap();
        assert!(first.contains("event: endpoint"), "{first}");
        assert!(first.contains("/message?sessionId="), "{first}");
        streams.push(sse);
    }
    assert_eq!(docs.health().await.unwrap()["legacy_sessions"], 4);

    // A new page: indexed without a restart, while the streams stay open.
    std::fs::write(
        c.join("guides/upgrade.md"),
        "# Upgrading\n\nThe quuxification step migrates old widgets.\n",
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the rebuilt index", || async {
        (docs.health().await?["pages"] == 4).then_some(())
    })
    .await;
    for s in streams.iter_mut() {
        let (ev, _) = s.next_event().await.expect("stream survives the rebuild");
        assert!(ev.contains("ping"), "{ev}");
    }
    let v = mcp_check(
        &format!("{}/mcp", docs.url()),
        "streamable",
        "quuxification",
        "guides/upgrade.md",
        None,
    )
    .await;
    assert_eq!(v["hits"][0], "guides/upgrade.md");

    // Clients that go away leave no session behind.
    drop(streams);
    wait_for(Duration::from_secs(10), "sessions cleaned up", || async {
        (docs.health().await?["legacy_sessions"] == 0).then_some(())
    })
    .await;

    // SIGTERM with a stream open: a clean exit, quickly.
    let r = reqwest::get(format!("{}/sse", docs.url())).await.unwrap();
    let mut open = SseReader::new(r);
    open.next_event().await.unwrap();
    docs.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let st = docs.wait_exit(Duration::from_secs(8));
        (st, docs)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "{:?}\n{}",
        status.0,
        status.1.log()
    );
}

//! The status page on the admin listener, as a person sees it: loaded in headless Chromium
//! (Debian package), it shows the hosts and their certificates, the replicas and their health,
//! and the MCP tools called with their latencies.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

use mcp_edge_tests::*;

/// Chromium, headless: the page's DOM after load, and a screenshot at `png`.
fn chromium(url: &str, png: &Path) -> String {
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ];
    let dom = Command::new("chromium")
        .args(common)
        .args(["--dump-dom", url])
        .output()
        .expect("chromium (Debian package) runs");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = Command::new("chromium")
        .args(common)
        .arg("--window-size=1280,860")
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    String::from_utf8_lossy(&dom.stdout).into_owned()
}

#[tokio::test]
async fn the_status_page_shows_hosts_certificates_replicas_and_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let tools = ToolServer::start(tmp.path(), false).await;
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  127.0.0.1:\n    tls: none\n    upstream: \"http://127.0.0.1:{}\"\n  docs.example.test:\n    tls: self-signed\n    upstream:\n      urls: [\"http://127.0.0.1:9\"]\n      health_check: {{ path: /mcp, interval: 300ms, timeout: 300ms }}\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
        tools.port,
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    call_tools(
        &format!("http://127.0.0.1:{}/mcp", edge.http.port()),
        "streamable",
        0,
    )
    .await;
    // The dead replica fails its health check.
    wait_for(std::time::Duration::from_secs(10), "replica marked down", || async {
        (edge
            .try_metric("mcp_edge_upstream_replica_up{host=\"docs.example.test\",replica=\"http://127.0.0.1:9\"")
            .await
            == Some(0.0))
        .then_some(())
    })
    .await;

    let png = tmp.path().join("status.png");
    let dom = chromium(&format!("http://{}/status", edge.metrics), &png);
    for expected in [
        "Hosts and certificates",
        "docs.example.test",
        "self-signed",
        "http://127.0.0.1:9",
        "out of the round robin",
        "tools/call",
        "slow",
        "fast",
    ] {
        assert!(dom.contains(expected), "{expected} not on the page:\n{dom}");
    }
    // The slow tool (0.3 s) shows a p50 in the hundreds of milliseconds.
    let slow_row = dom
        .split("<tr>")
        .find(|r| r.contains(">slow<"))
        .unwrap_or_else(|| panic!("{dom}"));
    assert!(slow_row.contains("ms"), "{slow_row}");
    let png = std::fs::read(&png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(dir) = std::env::var("MCP_EDGE_SCREENSHOT_DIR") {
        std::fs::write(Path::new(&dir).join("status.png"), png).unwrap();
    }
}

//! The TLS listener as a scanner sees it: `testssl` (Debian's testssl.sh) against a running
//! edge finds TLS 1.2 and 1.3 only, no weak cipher category and forward secrecy throughout.
#![forbid(unsafe_code)]

use std::process::Command;

use mcp_edge_tests::*;

#[tokio::test]
async fn testssl_finds_tls_1_2_and_1_3_only_and_no_weak_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    // An IP host: the scanner sends no SNI to 127.0.0.1, and this is the default host.
    let cfg = format!(
        "{}storage: {}\nhosts:\n  127.0.0.1:\n    tls: self-signed\n    upstream: \"http://127.0.0.1:9\"\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let json = tmp.path().join("testssl.json");
    let out = tokio::task::spawn_blocking({
        let (json, target) = (json.clone(), edge.https.to_string());
        move || {
            Command::new("testssl")
                .args([
                    "--quiet",
                    "--color",
                    "0",
                    "--warnings",
                    "batch",
                    "-p",
                    "-s",
                    "-f",
                ])
                .arg("--jsonfile")
                .arg(&json)
                .arg(target)
                .output()
                .expect("testssl (Debian package testssl.sh) runs")
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap_or_default())
            .unwrap_or_else(|e| panic!("testssl wrote no JSON ({e}):\n{text}"));
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("no {id} in the scan:\n{text}"))
            .to_string()
    };
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(id), "not offered", "{id}");
    }
    for id in ["TLS1_2", "TLS1_3"] {
        assert!(finding(id).starts_with("offered"), "{id}: {}", finding(id));
    }
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert_eq!(finding(id), "not offered", "{id}");
    }
    assert_eq!(finding("PFS"), "offered");
    let bad: Vec<&serde_json::Value> = findings
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL")
            )
        })
        .collect();
    assert!(bad.is_empty(), "weak findings: {bad:?}");
}

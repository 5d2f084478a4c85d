//! `mcp-edge check`: every shipped config passes; a bad one names each bad key and fails.

use std::path::Path;
use std::process::Command;

use mcp_edge_tests::edge_bin;

#[test]
fn every_config_in_the_repository_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let out = Command::new(edge_bin())
                .args(["check", "--config"])
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 3, "expected the shipped configs in {}", dir.display());
}

#[test]
fn check_names_every_bad_key_and_exits_non_zero_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    // Port 1 would need root: check must not try to bind it.
    std::fs::write(
        &p,
        "listen:\n  https: \"127.0.0.1:1\"\n  metrix: x\nhosts:\n  a.example.com:\n    tls: selfsigned\n    upstream: http://a\n  b.example.com:\n    tls: none\n    routes:\n      - path: mcp\n        upstream: { urls: [http://b], read_timeout: soon }\n",
    )
    .unwrap();
    let out = Command::new(edge_bin())
        .args(["check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listen.metrix (line 3)",
        "hosts.\"a.example.com\".tls (line 6)",
        "hosts.\"b.example.com\".routes[0].path (line 11)",
        "hosts.\"b.example.com\".routes[0].upstream.read_timeout (line 12)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The same config through the environment variable.
    let out = Command::new(edge_bin())
        .arg("check")
        .env("MCP_EDGE_CONFIG", &p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

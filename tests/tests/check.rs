//! `mcp-edge check`: every shipped config passes; a bad one names each bad key and fails.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_edge_tests::{edge_bin, TestCa};

/// Paths that exist only inside the compose containers, and what stands in for them here.
fn container_paths(dir: &Path) -> Vec<(&'static str, String)> {
    // pebble-start.sh makes pebble's listener CA at /pebble-ca/ca.pem on the container's first
    // start; a CA made now takes its place.
    let ca = dir.join("pebble-ca.pem");
    std::fs::write(&ca, TestCa::new("stand-in for pebble's listener CA").pem()).unwrap();
    vec![("/pebble-ca/ca.pem", ca.display().to_string())]
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_config_in_the_repository_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let tmp = tempfile::tempdir().unwrap();
    let mapped = container_paths(tmp.path());
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.sort();
    for p in &files {
        let mut text = std::fs::read_to_string(p).unwrap();
        for (from, to) in &mapped {
            text = text.replace(from, to);
        }
        // No shipped config names key material by a relative path, so a copy elsewhere checks
        // the same.
        let rel = p.strip_prefix(&dir).unwrap().display().to_string();
        let checked = tmp.path().join(rel.replace('/', "--"));
        std::fs::write(&checked, &text).unwrap();
        // config/ha reads the Redis password from the environment, as its deployer sets it.
        let out = Command::new(edge_bin())
            .args(["check", "--config"])
            .arg(&checked)
            .env("MCP_EDGE_REDIS_PASSWORD", "set-by-the-deployer")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            p.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    for shipped in ["local.yaml", "compose.yaml", "acme-demo/proxy.yaml"] {
        assert!(
            names.iter().any(|n| n == shipped),
            "{shipped} not checked: {names:?}"
        );
    }
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

//! The audit log's sinks through the real binary: a file rotated by size and reopened on
//! SIGHUP (as logrotate needs), and a standard output nobody reads, which must cost dropped
//! records (counted) and never a request. What the records hold is tested with the policy
//! (tests/tests/policy.rs).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

fn config(ports: &Ports, dir: &Path, upstream: &str, audit: &str) -> String {
    format!(
        "{}storage: {}\naudit: {audit}\nhosts:\n  localhost:\n    tls: none\n    upstream: \"{upstream}\"\n",
        ports.yaml(),
        dir.join("certs").display(),
    )
}

/// A body of `n` tool calls (a batch when more than one).
fn calls(n: usize) -> String {
    let call = |i: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search_docs","arguments":{{"q":"tls {i}"}}}}}}"#
        )
    };
    match n {
        1 => call(1),
        _ => format!("[{}]", (0..n).map(call).collect::<Vec<_>>().join(",")),
    }
}

async fn post(client: &reqwest::Client, port: u16, body: String) -> u16 {
    client
        .post(format!("http://localhost:{port}/rpc"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_file_rotates_by_size_and_is_reopened_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let ports = Ports::new();
    let file = tmp.path().join("audit.jsonl");
    let audit = format!("{{ file: {}, max_size: 4KiB, keep: 2 }}", file.display());
    let edge = Edge::start(
        tmp.path(),
        &ports,
        &config(&ports, tmp.path(), &up.url(), &audit),
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..40 {
        assert_eq!(post(&client, ports.http, calls(1)).await, 200);
    }
    wait_for(Duration::from_secs(10), "40 records written", || async {
        (edge
            .try_metric("mcp_edge_audit_records_total{sink=\"file\"}")
            .await?
            >= 40.0)
            .then_some(())
    })
    .await;
    let numbered = |i: usize| tmp.path().join(format!("audit.jsonl.{i}"));
    wait_for(Duration::from_secs(10), "two rotations", || async {
        numbered(2).exists().then_some(())
    })
    .await;
    assert!(!numbered(3).exists(), "keep: 2");
    for f in [file.clone(), numbered(1), numbered(2)] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["name"], "search_docs");
            // No policy on this route: the arguments are built for the audit log alone.
            assert_eq!(v["arguments"], serde_json::json!(["q"]), "{line}");
        }
    }

    // logrotate moves the file away and sends SIGHUP: the next record is in a new file.
    let moved = tmp.path().join("audit.jsonl.moved");
    std::fs::rename(&file, &moved).unwrap();
    let before = std::fs::read_to_string(&moved).unwrap().lines().count();
    edge.sighup();
    wait_for(Duration::from_secs(10), "the reload", || async {
        (edge
            .try_metric("mcp_edge_config_reloads_total{result=\"ok\"}")
            .await?
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(post(&client, ports.http, calls(1)).await, 200);
    wait_for(
        Duration::from_secs(10),
        "a record in the reopened file",
        || async {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| t.contains("search_docs"))
                .map(|_| ())
        },
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(&moved).unwrap().lines().count(),
        before,
        "nothing more went to the moved file"
    );
}

#[tokio::test]
async fn a_sink_nobody_reads_drops_records_and_never_holds_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        tmp.path(),
        &up.url(),
        "{ stdout: true, buffer: 16 }",
    );
    let mut edge = Edge::start_with_stdout(tmp.path(), &ports, &cfg, Stdio::piped()).await;
    // Nobody reads the pipe: once its 64 KiB are full, the writer waits and the queue fills.
    let stdout = edge.take_stdout().unwrap();
    // A request held by the audit log would never be answered: the deadline says so.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    // 3000 records of ~400 bytes: far past the pipe and the queue.
    for _ in 0..60 {
        assert_eq!(post(&client, ports.http, calls(50)).await, 200);
    }
    let dropped = edge
        .metric("mcp_edge_audit_dropped_total{reason=\"queue_full\"}")
        .await;
    let written = edge
        .metric("mcp_edge_audit_records_total{sink=\"stdout\"}")
        .await;
    assert!(dropped > 0.0, "drops are counted");
    assert!(
        written > 0.0 && written + dropped <= 3000.0,
        "{written} + {dropped}"
    );
    // What did get through is whole JSON lines (every record counted as written is in the
    // pipe, or on its way once the pipe is read), and reading the pipe lets records flow again:
    // one sent now arrives. How many got through depends on how many of the writer's gather
    // windows the requests spanned (the queue holds 16), so only what was counted is awaited.
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a record in the pipe");
        serde_json::from_str::<serde_json::Value>(&line).expect("a whole JSON line")
    };
    for _ in 0..written as usize {
        assert_eq!(next()["name"], "search_docs");
    }
    let after = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"after_reading","arguments":{}}}"#;
    assert_eq!(post(&client, ports.http, after.to_string()).await, 200);
    while next()["name"] != "after_reading" {}
    assert!(edge.is_running());
}

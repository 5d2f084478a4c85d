//! Facing the internet: what a hostile client sends (dot-segments in every spelling, forged
//! proxy headers, repeated Origin) and what an operator can get wrong (secrets of the wrong type,
//! credentials in URLs, listen addresses that overlap, absurd values, an unreadable seal key,
//! temp files left by a crash) are refused or handled, each with its accept twin; and HTTP/2
//! streams that stall hold none of their siblings.
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// The echo's JSON in a raw response (after the blank line).
fn body_json(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

fn status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn edge_for(dir: &Path, top: &str, host: &str) -> Edge {
    plain_host_edge(dir, top, host).await
}

async fn routed_edge(dir: &Path, files: &Upstream, root: &Upstream) -> Edge {
    let routes = format!(
        "    routes:\n      - {{ path: /files, upstream: \"{}\" }}\n      - {{ path: /, upstream: \"{}\" }}\n",
        files.url(),
        root.url()
    );
    edge_for(dir, "", &routes).await
}

async fn get_raw(edge: &Edge, path: &str, extra: &str) -> String {
    edge.raw_exchange(
        &format!("GET {path} HTTP/1.1\r\nhost: h.test\r\n{extra}connection: close\r\n\r\n"),
        &[],
        Duration::ZERO,
    )
    .await
}

#[tokio::test]
async fn dot_segments_never_reach_beyond_their_route() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, root) = (
        Upstream::start("files").await,
        Upstream::start("root").await,
    );
    let edge = routed_edge(tmp.path(), &files, &root).await;

    // Accept: inside the route, dot-segments resolved, the upstream gets the routed path.
    for (path, replica, seen) in [
        ("/files/a.txt", "files", "/files/a.txt"),
        ("/files/./sub/../a.txt", "files", "/files/a.txt"),
        ("/files/%2e/a.txt?x=1", "files", "/files/a.txt"),
        ("/file%73/a.txt", "files", "/files/a.txt"),
    ] {
        let raw = get_raw(&edge, path, "").await;
        assert_eq!(status(&raw), 200, "{path}: {raw}");
        let j = body_json(&raw);
        assert_eq!(j["replica"], replica, "{path}");
        assert_eq!(j["path"], seen, "{path}");
    }

    // Reject: every spelling of `..` that climbs out of /files lands on the route it names
    // (here /), with the path it names; none reaches the /files upstream.
    for path in [
        "/files/../private/secret.txt",
        "/files/%2e%2e/private/secret.txt",
        "/files/%2E%2E/private/secret.txt",
        "/files/.%2e/private/secret.txt",
        "/files/%2e./private/secret.txt",
        "/files/sub/../../private/secret.txt",
    ] {
        let raw = get_raw(&edge, path, "").await;
        assert_eq!(status(&raw), 200, "{path}: {raw}");
        let j = body_json(&raw);
        assert_eq!(j["replica"], "root", "{path} escaped its route");
        assert_eq!(j["path"], "/private/secret.txt", "{path}");
    }

    // Separators a server might decode, hiding a dot-segment, and encoded NULs: 400.
    for path in [
        "/files/..%2fprivate/secret.txt",
        "/files/..%2Fprivate/secret.txt",
        "/files/%2e%2e%2fprivate/secret.txt",
        "/files/..%5cprivate/secret.txt",
        "/files/..\\private/secret.txt",
        "/files/a%00.txt",
    ] {
        let raw = get_raw(&edge, path, "").await;
        assert_eq!(status(&raw), 400, "{path}: {raw}");
    }
}

#[tokio::test]
async fn proxy_headers_from_the_client_never_reach_the_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, root) = (
        Upstream::start("files").await,
        Upstream::start("root").await,
    );
    let edge = routed_edge(tmp.path(), &files, &root).await;
    let raw = get_raw(
        &edge,
        "/x",
        "forwarded: for=6.6.6.6;proto=https\r\nx-real-ip: 6.6.6.6\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-port: 443\r\nx-forwarded-host: evil.test\r\nx-forwarded-proto: https\r\nx-forwarded-prefix: /admin\r\n",
    )
    .await;
    assert_eq!(status(&raw), 200, "{raw}");
    let h = &body_json(&raw)["headers"];
    assert!(h.get("forwarded").is_none(), "{h}");
    assert!(h.get("x-real-ip").is_none(), "{h}");
    assert!(h.get("x-forwarded-port").is_none(), "{h}");
    assert!(h.get("x-forwarded-prefix").is_none(), "{h}");
    // Ours, set from what the proxy saw.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], "h.test");
    assert_eq!(h["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn a_repeated_origin_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, root) = (
        Upstream::start("files").await,
        Upstream::start("root").await,
    );
    let edge = routed_edge(tmp.path(), &files, &root).await;
    let one = get_raw(&edge, "/x", "origin: https://chatgpt.com\r\n").await;
    assert_eq!(status(&one), 200, "{one}");
    let two = get_raw(
        &edge,
        "/x",
        "origin: https://chatgpt.com\r\norigin: https://evil.test\r\n",
    )
    .await;
    assert_eq!(status(&two), 400, "{two}");
}

fn check(dir: &Path, yaml: &str) -> (bool, String) {
    run_check(dir, yaml)
}

#[test]
fn check_never_echoes_a_secret_whatever_its_type() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "hosts:\n  a.example.com:\n    tls: acme\n    upstream: http://127.0.0.1:1\n";
    let acme = "acme:\n  contact: [a@example.com]\n  accept_terms: true\n";
    for (what, yaml, secret) in [
        (
            "hmac_key as a number",
            format!("{acme}  eab: {{ kid: k1, hmac_key: 918273645546372819 }}\n{host}"),
            "918273645546372819",
        ),
        (
            "hmac_key as a list",
            format!("{acme}  eab: {{ kid: k1, hmac_key: [s3cr3tv4lue] }}\n{host}"),
            "s3cr3tv4lue",
        ),
        (
            "eab as a string",
            format!("{acme}  eab: \"k1:s3cr3tv4lue\"\n{host}"),
            "s3cr3tv4lue",
        ),
        (
            "hmac_key not base64",
            format!("{acme}  eab: {{ kid: k1, hmac_key: \"s3cr3t!v4lue\" }}\n{host}"),
            "s3cr3t!v4lue",
        ),
        (
            "userinfo in an upstream URL",
            "hosts:\n  a.example.com:\n    tls: none\n    upstream: \"http://admin:hunter2pass@127.0.0.1:1/x\"\n".to_string(),
            "hunter2pass",
        ),
        (
            "userinfo in an unparsable upstream URL",
            "hosts:\n  a.example.com:\n    tls: none\n    upstream: \"http://admin:hunter2pass@[::1\"\n".to_string(),
            "hunter2pass",
        ),
    ] {
        let (ok, out) = check(tmp.path(), &yaml);
        assert!(!ok, "{what}: accepted");
        assert!(!out.contains(secret), "{what}: the secret is echoed:\n{out}");
        assert!(out.contains("a.example.com") || out.contains("eab"), "{what}: no key named:\n{out}");
    }
    // Accept twin: a good key passes, and is not echoed either.
    let (ok, out) = check(
        tmp.path(),
        &format!("{acme}  eab: {{ kid: k1, hmac_key: \"c2VjcmV0LWhtYWMta2V5\" }}\n{host}"),
    );
    assert!(ok, "{out}");
    assert!(!out.contains("c2VjcmV0LWhtYWMta2V5"), "{out}");
}

#[test]
fn check_refuses_what_run_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let host = "hosts:\n  a.example.com:\n    tls: none\n    upstream: http://127.0.0.1:1\n";
    for (what, yaml, key) in [
        (
            "0.0.0.0:P and 127.0.0.1:P",
            format!("listen: {{ http: \"0.0.0.0:18080\", https: \"127.0.0.1:18080\" }}\n{host}"),
            "listen.https",
        ),
        (
            "[::]:P and 127.0.0.1:P",
            format!("listen: {{ http: \"127.0.0.1:18081\", https: \"[::]:18082\", metrics: \"127.0.0.1:18082\" }}\n{host}"),
            "listen.metrics",
        ),
        ("absurd threads", format!("threads: 100000\n{host}"), "threads"),
        (
            "an absurd duration",
            format!("acme:\n  contact: [a@example.com]\n  accept_terms: true\n  retry_initial: 1000000000d\n  retry_max: 2000000000d\n{host}"),
            "acme.retry_initial",
        ),
    ] {
        let (ok, out) = check(tmp.path(), &yaml);
        assert!(!ok, "{what}: accepted:\n{out}");
        assert!(out.contains(key), "{what}: {key} not named:\n{out}");
    }
    // Accept twin: the same port on two different specific addresses is fine.
    let (ok, out) = check(
        tmp.path(),
        &format!("listen: {{ http: \"127.0.0.1:18083\", https: \"127.0.0.2:18083\" }}\nthreads: 8\n{host}"),
    );
    assert!(ok, "{out}");
}

#[test]
fn check_says_what_tls_auto_chose_by_the_public_suffix_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check(
        tmp.path(),
        "acme:\n  contact: [a@example.com]\n  accept_terms: true\nhosts:\n  mcp.example.com:\n    tls: auto\n    upstream: http://127.0.0.1:1\n  nas.home:\n    tls: auto\n    upstream: http://127.0.0.1:1\n  x.corp:\n    tls: auto\n    upstream: http://127.0.0.1:1\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("mcp.example.com: tls: auto is acme"), "{out}");
    assert!(out.contains("nas.home: tls: auto is self-signed"), "{out}");
    assert!(out.contains("x.corp: tls: auto is self-signed"), "{out}");
}

fn start_fails(dir: &Path) -> String {
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  a.test:\n    tls: none\n    upstream: http://127.0.0.1:1\n",
        ports.yaml(),
        dir.join("certs").display()
    );
    let p = dir.join("edge.yaml");
    std::fs::write(&p, cfg).unwrap();
    let log = dir.join("start.log");
    let mut child = Command::new(edge_bin())
        .args(["run", "--config"])
        .arg(&p)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "mcp-edge started (or did not stop) instead of refusing:\n{err}"
    );
    err
}

#[tokio::test]
async fn an_unreadable_seal_key_stops_start_up_and_is_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // Unreadable whoever runs the test (root too): a symlink loop where the key file should be.
    // Writing a new key would replace the link, silently: that is what must not happen.
    let key = certs.join("session-seal.key");
    std::os::unix::fs::symlink("session-seal.key", &key).unwrap();
    let err = start_fails(tmp.path());
    assert!(err.contains("session-seal.key"), "{err}");
    assert!(
        std::fs::symlink_metadata(&key)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the key was replaced"
    );

    // Accept twin: with no key at all, one is made (0600) and start-up goes on.
    std::fs::remove_file(&key).unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  a.test:\n    tls: none\n    upstream: http://127.0.0.1:1\n",
        ports.yaml(),
        certs.display()
    );
    let _edge = Edge::start(tmp.path(), &ports, &cfg).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn temp_files_left_by_an_interrupted_write_are_removed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // What `kill -9` during a write leaves: a temp file of a process that is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let leftover = certs.join(format!(".a.test.key.pem.tmp-{gone}"));
    std::fs::write(&leftover, "half a key").unwrap();
    let unrelated = certs.join("notes.txt");
    std::fs::write(&unrelated, "keep").unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  a.test:\n    tls: self-signed\n    upstream: http://127.0.0.1:1\n",
        ports.yaml(),
        certs.display()
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    assert!(!leftover.exists(), "{}", edge.log());
    assert!(unrelated.exists());
    assert!(edge.log().contains("removed a temp file"), "{}", edge.log());
}

async fn timed_edge(dir: &Path, up: &Upstream) -> Edge {
    let host = format!("    upstream: \"{}\"\n", up.url());
    edge_for(dir, "timeouts: { header: 2s, keepalive: 2s }\n", &host).await
}

/// Reads until the proxy closes the connection (or resets it); panics after `limit`.
async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
    what: &str,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {limit:?}");
    seen
}

/// Sends a byte every half second, as a slowloris client does; whether the proxy cut the
/// connection (a write failed) within 10 s.
async fn drip_until_cut(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    let drip = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if s.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drip)
        .await
        .is_ok()
}

#[tokio::test]
async fn a_slowloris_header_is_cut_at_its_deadline_on_the_first_and_on_a_reused_connection() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let edge = timed_edge(tmp.path(), &up).await;

    // First request of a connection: a byte a second, never the end of the header. Each read
    // is well inside any per-read timeout; the header deadline (2s) cuts it.
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: h.test\r\n")
        .await
        .unwrap();
    assert!(
        drip_until_cut(&mut s).await,
        "the dripping client was never cut"
    );
    wait_closed(&mut s, Duration::from_secs(5), "slowloris").await;

    // The same on a kept-alive connection's second request.
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nhost: h.test\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut first)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /two HTTP/1.1\r\nhost: h.test\r\n")
        .await
        .unwrap();
    assert!(
        drip_until_cut(&mut s).await,
        "the second, dripping request was never cut"
    );

    // Accept twin: a client that sends its header at once is answered.
    let ok = edge
        .raw_exchange(
            "GET /fast HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_its_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let edge = timed_edge(tmp.path(), &up).await;
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let mut buf = vec![0u8; 4096];
    // Accept twin: requests in a row share the connection.
    for path in ["/a", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: h.test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Then nothing: closed after the keep-alive timeout (2s), not kept forever.
    let started = std::time::Instant::now();
    wait_closed(&mut s, Duration::from_secs(10), "idle keep-alive").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before its timeout"
    );
}

#[tokio::test]
async fn no_log_line_carries_a_query_string_and_failures_are_still_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let routes = format!(
        "    routes:\n      - {{ path: /down, upstream: \"http://127.0.0.1:1\" }}\n      - {{ path: /, upstream: \"{}\" }}\n",
        up.url()
    );
    let edge = edge_for(tmp.path(), "", &routes).await;
    let ok = get_raw(&edge, "/echo?token=SECRETQUERY1&sessionId=abc", "").await;
    assert_eq!(status(&ok), 200, "{ok}");
    let failed = get_raw(&edge, "/down/mcp?token=SECRETQUERY2", "").await;
    assert_eq!(status(&failed), 502, "{failed}");
    let log = wait_for(Duration::from_secs(5), "the failure logged", || {
        let log = edge.log();
        async move { log.contains("upstream request failed").then_some(log) }
    })
    .await;
    assert!(log.contains("connect_refused"), "{log}");
    assert!(log.contains("/down/mcp"), "{log}");
    assert!(
        !log.contains("SECRETQUERY"),
        "a query string reached the log:\n{log}"
    );
}

#[tokio::test]
async fn a_flood_of_refused_handshakes_is_logged_a_few_times_and_summed_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let (files, root) = (
        Upstream::start("files").await,
        Upstream::start("root").await,
    );
    let edge = routed_edge(tmp.path(), &files, &root).await;
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(edge.https).await.unwrap();
        let _ = s.write_all(b"this is not a TLS client hello\r\n\r\n").await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    let log = wait_for(Duration::from_secs(10), "the summary line", || {
        let log = edge.log();
        async move { log.contains("handshake errors not logged").then_some(log) }
    })
    .await;
    let lines = log.matches("Downstream handshake error").count();
    assert!(
        (1..=5).contains(&lines),
        "{lines} handshake lines for 40 refused handshakes:\n{log}"
    );
    assert!(log.contains("suppressed="), "{log}");
}

#[tokio::test]
async fn a_dead_replica_leaves_the_round_robin_and_new_requests_go_to_the_live_one() {
    let tmp = tempfile::tempdir().unwrap();
    let live = Upstream::start("live").await;
    // Nothing listens there: every connection is refused.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let host = format!(
        "    upstream:\n      urls: [\"{}\", \"{dead}\"]\n",
        live.url()
    );
    let edge = edge_for(tmp.path(), "", &host).await;
    // Requests outside a session: the one that meets the dead replica is retried on the live
    // one (nothing was sent), and after that the dead one is skipped.
    for i in 0..8 {
        let raw = get_raw(&edge, &format!("/echo/{i}"), "").await;
        assert_eq!(status(&raw), 200, "request {i}: {raw}");
        assert_eq!(body_json(&raw)["replica"], "live");
    }
    assert_eq!(
        edge.metric(&format!(
            "mcp_edge_upstream_replica_up{{host=\"h.test\",replica=\"{dead}\",route=\"/\"}}"
        ))
        .await,
        0.0
    );
    assert_eq!(
        edge.metric(&format!(
            "mcp_edge_upstream_replica_up{{host=\"h.test\",replica=\"{}\",route=\"/\"}}",
            live.url()
        ))
        .await,
        1.0
    );
    let log = edge.log();
    assert_eq!(
        log.matches("replica out of the round robin").count(),
        1,
        "the dead replica was tried again while out:\n{log}"
    );
}

#[tokio::test]
async fn a_request_body_over_the_route_limit_gets_413() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let host = format!(
        "    upstream: {{ urls: [\"{}\"], max_request_body: 1KiB }}\n",
        up.url()
    );
    let edge = edge_for(tmp.path(), "", &host).await;
    let post = |len: usize| {
        format!("POST /echo HTTP/1.1\r\nhost: h.test\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
    };
    // Accept twin: inside the limit.
    let small = vec![b'a'; 1000];
    let ok = edge
        .raw_exchange(&post(1000), &[&small], Duration::ZERO)
        .await;
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(body_json(&ok)["body_len"], 1000);
    // Declared too large: refused before anything goes upstream.
    let big = vec![b'a'; 2048];
    let refused = edge
        .raw_exchange(&post(2048), &[&big], Duration::ZERO)
        .await;
    assert_eq!(status(&refused), 413, "{refused}");
    // Chunked, no length declared: refused once the count passes the limit.
    let chunk = format!("258\r\n{}\r\n", "b".repeat(600));
    let head = "POST /echo HTTP/1.1\r\nhost: h.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunked = edge
        .raw_exchange(
            head,
            &[
                chunk.as_bytes(),
                chunk.as_bytes(),
                chunk.as_bytes(),
                b"0\r\n\r\n",
            ],
            Duration::from_millis(50),
        )
        .await;
    assert!(
        chunked.is_empty() || status(&chunked) == 413,
        "a 1800-byte chunked body went through: {chunked}"
    );
    assert!(
        edge.metric("mcp_edge_requests_refused_total{host=\"h.test\",reason=\"body_too_large\"}")
            .await
            >= 2.0
    );
}

/// An edge with `top` (top-level YAML), a self-signed host named `127.0.0.1` and the hosts in
/// `more`; with that host's certificate (PEM).
async fn ip_host_edge(dir: &Path, top: &str, more: &str, up: &Upstream) -> (Edge, String) {
    let ports = Ports::new();
    let certs = dir.join("certs");
    let cfg = format!(
        "{}storage: {}\n{top}hosts:\n  127.0.0.1:\n    tls: self-signed\n    upstream: \"{}\"\n{more}",
        ports.yaml(),
        certs.display(),
        up.url()
    );
    let edge = Edge::start(dir, &ports, &cfg).await;
    let pem = std::fs::read_to_string(certs.join("127.0.0.1.self-signed.cert.pem")).unwrap();
    (edge, pem)
}

#[tokio::test]
async fn an_ip_host_answers_clients_that_send_no_sni() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let also = format!(
        "  a.test:\n    tls: self-signed\n    upstream: \"{}\"\n",
        up.url()
    );
    let (edge, pem) = ip_host_edge(tmp.path(), "", &also, &up).await;
    // rustls, like every client, sends no SNI to an IP address.
    let client = edge.client(roots_from_pem(&pem), &[]);
    let r = client
        .get(format!("https://127.0.0.1:{}/echo", edge.https.port()))
        .send()
        .await
        .expect("https://127.0.0.1/ completes its handshake");
    assert_eq!(r.status(), 200);
    // Reject twin: a connection made without SNI cannot carry another host's requests (421,
    // or 400 where HTTP/2's :authority and the forged Host disagree).
    let r = client
        .get(format!("https://127.0.0.1:{}/echo", edge.https.port()))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 400 | 421), "{}", r.status());
}

#[test]
fn check_refuses_a_default_host_without_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check(
        tmp.path(),
        "default_host: a.test\nhosts:\n  a.test:\n    tls: none\n    upstream: http://127.0.0.1:1\n",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("default_host"), "{out}");
    // Accept twin.
    let (ok, out) = check(
        tmp.path(),
        "default_host: a.test\nhosts:\n  a.test:\n    tls: self-signed\n    upstream: http://127.0.0.1:1\n",
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn an_h2_client_that_never_sends_its_preface_is_closed() {
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let (edge, pem) = ip_host_edge(tmp.path(), "timeouts: { h2_handshake: 1s }\n", "", &up).await;
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots_from_pem(&pem))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(edge.https.ip().into());
    let mut silent = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    // TLS done, h2 negotiated, then silence: closed after the h2 handshake deadline.
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    wait_closed(
        &mut silent,
        Duration::from_secs(10),
        "a silent h2 connection kept past its deadline",
    )
    .await;

    // Accept twin: a real h2 client is served.
    let client = edge.client(roots_from_pem(&pem), &[]);
    let r = client
        .get(format!("https://127.0.0.1:{}/echo", edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

/// The streams of one HTTP/2 connection are served side by side (in the connection's task): one
/// waiting for an upstream that never answers and one the client stopped reading (its flow-control
/// window full) hold none of the others, which are answered at once. Reject twins: the stream the
/// client resets is ended, and its upstream stream closed; a connection that goes away with its
/// streams in flight ends them all, and is no longer counted.
#[tokio::test]
async fn stalled_http2_streams_hold_none_of_their_siblings_and_end_with_their_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let (edge, ca) = tls_host_edge(tmp.path(), "", &up.url(), "").await;
    let (h2, conn) = raw_h2_with_task(&edge, &ca).await;
    let get = |path: &str| {
        http::Request::get(format!("https://a.test{path}"))
            .body(())
            .unwrap()
    };
    let mut h2 = h2.ready().await.unwrap();
    let (silent, _) = h2.send_request(get("/silent"), true).unwrap();
    let mut h2 = h2.ready().await.unwrap();
    let (flood, _) = h2.send_request(get("/flood"), true).unwrap();
    // The flood's head arrives; its body is never read, so its window fills and the edge's
    // session for it waits on the client.
    let flood = tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("the flood's head")
        .unwrap();
    assert_eq!(flood.status(), 200);
    assert_eq!(up.open_streams(), 1);

    let mut answers = Vec::new();
    for i in 0..20 {
        h2 = h2.ready().await.unwrap();
        answers.push(
            h2.send_request(get(&format!("/echo?i={i}")), true)
                .unwrap()
                .0,
        );
    }
    // Each answered whole, head and body, while the two stay stalled.
    let whole = |answer: h2::client::ResponseFuture| async move {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200);
        let echo = h2_body(answer.into_body()).await;
        serde_json::from_slice::<serde_json::Value>(&echo).unwrap()["path"].clone()
    };
    let echoed = tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join_all(answers.into_iter().map(whole)),
    )
    .await
    .expect("siblings answered while two streams of their connection are stalled");
    assert!(echoed.iter().all(|p| p == "/echo"), "{echoed:?}");

    // Reject twin: the client resets the stalled flood; the edge ends its session and the
    // upstream's stream closes, while the connection and its silent stream stay.
    drop(flood);
    wait_for(
        Duration::from_secs(10),
        "the reset stream's upstream closed",
        || async { (up.open_streams() == 0).then_some(()) },
    )
    .await;
    assert!(!conn.is_finished());

    // And the connection going away with a stalled flood and the silent stream in flight ends
    // both: the upstream's stream closes, and the connection is no longer counted. (Both watch
    // their stream, so they end with it; a session that outlives its connection is handed to a
    // task of its own: pingora-core's test_the_loop_ends_with_its_connection_and_hands_back…)
    h2 = h2.ready().await.unwrap();
    let (flood, _) = h2.send_request(get("/flood"), true).unwrap();
    let flood = tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(up.open_streams(), 1);
    assert_eq!(edge.metric("mcp_edge_connections_open").await, 1.0);
    conn.abort();
    drop((h2, silent, flood));
    wait_for(
        Duration::from_secs(10),
        "the streams of a closed connection ended",
        || async {
            (up.open_streams() == 0 && edge.metric("mcp_edge_connections_open").await == 0.0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_stream_is_let_go_and_the_upstream_stream_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let host = format!("    upstream: \"{}\"\n", up.url());
    let edge = edge_for(tmp.path(), "timeouts: { write: 1s }\n", &host).await;
    let mut s = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    s.write_all(b"GET /flood HTTP/1.1\r\nhost: h.test\r\n\r\n")
        .await
        .unwrap();
    // The stream flows while it is read...
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0;
    while got < 512 * 1024 {
        got += s.read(&mut buf).await.unwrap();
    }
    assert_eq!(up.open_streams(), 1);
    // ...then the client stops reading, with the connection open. Once every buffer is full the
    // proxy's write waits; after `timeouts.write` it gives up and closes the upstream stream.
    wait_for(
        Duration::from_secs(60),
        "the upstream stream closed",
        || async { (up.open_streams() == 0).then_some(()) },
    )
    .await;
    drop(s);
}

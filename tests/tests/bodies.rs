//! Request bodies reach the upstream whole, byte for byte, on every route: with and without the
//! features that read a body before it is forwarded (`mcp.validate`, a per-tool rate limit), in
//! every size around the 64 KiB parse cap (and past the 1 MiB such routes hold: 413), written at once or dribbled in pieces, over HTTP/1.1 with
//! Content-Length and chunked and over HTTP/2 with and without a declared length.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;

use mcp_edge_tests::upstream::{hex_sha256, Upstream};
use mcp_edge_tests::*;

/// Around the edge's 64 KiB parse cap, and well past it.
const SIZES: [usize; 5] = [1024, 5 * 1024, 60 * 1024, 64 * 1024 + 1, 1_000_000];

/// Route prefixes, each with a different set of body readers.
const ROUTES: [&str; 4] = ["/plain", "/validated", "/budget", "/both"];

/// A `tools/call` of `search` padded to exactly `size` bytes.
fn call_body(size: usize) -> Vec<u8> {
    let head = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"pad":""#;
    let tail = r#""}}}"#;
    let pad = size - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

/// `body` in `n` pieces of about equal size.
fn pieces(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    body.chunks(body.len().div_ceil(n))
        .map(<[u8]>::to_vec)
        .collect()
}

fn routes_yaml(up: &Upstream) -> String {
    let u = up.url();
    let budget = "rate_limit: { requests: 100000, per: 1m, tools: { search: { requests: 100000, per: 1m } } }";
    format!(
        "    routes:\n      - {{ path: /plain, upstream: \"{u}\" }}\n      - {{ path: /validated, upstream: \"{u}\", mcp: {{ validate: true }} }}\n      - {{ path: /budget, upstream: \"{u}\", {budget} }}\n      - {{ path: /both, upstream: \"{u}\", mcp: {{ validate: true }}, {budget} }}\n"
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: TestCa,
    edge: Edge,
}

async fn setup(up: &Upstream) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d: &Path = dir.path();
    let ca = TestCa::new("bodies CA");
    let (cert, key) = ca.leaf(&["a.test"]);
    std::fs::write(d.join("a.pem"), cert).unwrap();
    std::fs::write(d.join("a.key"), key).unwrap();
    let ports = Ports::new();
    let routes = routes_yaml(up);
    let cfg = format!(
        "{}storage: {}\nhosts:\n  a.test:\n    tls: {{ cert: {}, key: {} }}\n{routes}  p.test:\n    tls: none\n{routes}",
        ports.yaml(),
        d.join("certs").display(),
        d.join("a.pem").display(),
        d.join("a.key").display(),
    );
    let edge = Edge::start(d, &ports, &cfg).await;
    Setup {
        _dir: dir,
        ca,
        edge,
    }
}

const MCP_HEADERS: &str = "content-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-method: tools/call\r\nmcp-name: search\r\n";

/// One HTTP/1.1 POST on the plain listener, the body framed by Content-Length or chunked and
/// written in `parts` pieces; the upstream's echo of what it received.
async fn h1(edge: &Edge, route: &str, body: &[u8], parts: usize, chunked: bool) -> String {
    let framing = if chunked {
        "transfer-encoding: chunked\r\n".to_string()
    } else {
        format!("content-length: {}\r\n", body.len())
    };
    let head = format!(
        "POST {route}/x HTTP/1.1\r\nhost: p.test\r\n{MCP_HEADERS}{framing}connection: close\r\n\r\n"
    );
    let mut wire: Vec<Vec<u8>> = Vec::new();
    for piece in pieces(body, parts) {
        if chunked {
            let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(&piece);
            c.extend_from_slice(b"\r\n");
            wire.push(c);
        } else {
            wire.push(piece);
        }
    }
    if chunked {
        wire.push(b"0\r\n\r\n".to_vec());
    }
    if parts == 1 {
        // One write: the head and the whole body together.
        let mut all = head.into_bytes();
        all.extend(wire.concat());
        let text = String::from_utf8(all).unwrap();
        return edge.raw_exchange(&text, &[], Duration::ZERO).await;
    }
    let refs: Vec<&[u8]> = wire.iter().map(Vec::as_slice).collect();
    edge.raw_exchange(&head, &refs, Duration::from_millis(20))
        .await
}

fn check_echo(raw: &str, body: &[u8], what: &str) {
    assert_eq!(
        raw_status(raw),
        200,
        "{what}: {}",
        &raw[..raw.len().min(400)]
    );
    let echo = raw_json(raw);
    assert_eq!(echo["body_len"], body.len(), "{what}");
    assert_eq!(echo["body_sha256"], hex_sha256(body), "{what}");
}

#[tokio::test]
async fn every_body_reaches_the_upstream_whole_on_every_route_over_http1() {
    let up = Upstream::start("r1").await;
    let s = setup(&up).await;
    for size in SIZES {
        let body = call_body(size);
        for route in ROUTES {
            for chunked in [false, true] {
                for parts in [1, 5] {
                    let raw = h1(&s.edge, route, &body, parts, chunked).await;
                    let what = format!("{route} {size} B chunked={chunked} parts={parts}");
                    check_echo(&raw, &body, &what);
                }
            }
        }
    }
    // Past the 1 MiB the edge holds to check MCP calls: refused where a check needs the body
    // (its calls could not be counted or validated), forwarded whole where none does.
    let big = call_body(1024 * 1024 + 1);
    for chunked in [false, true] {
        for route in ["/validated", "/budget"] {
            let raw = h1(&s.edge, route, &big, 5, chunked).await;
            assert_eq!(raw_status(&raw), 413, "{route} chunked={chunked}: {raw}");
        }
        let raw = h1(&s.edge, "/plain", &big, 5, chunked).await;
        check_echo(&raw, &big, "/plain 1 MiB + 1");
    }

    // A reject twin on the same routes: headers that disagree with the body are refused where
    // validation is on, whatever the framing, and nothing reaches the upstream.
    let body = call_body(5 * 1024);
    let head = "POST /validated/x HTTP/1.1\r\nhost: p.test\r\nmcp-method: tools/call\r\nmcp-name: other\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunks: Vec<Vec<u8>> = pieces(&body, 5)
        .into_iter()
        .map(|p| {
            [
                format!("{:x}\r\n", p.len()).into_bytes(),
                p,
                b"\r\n".to_vec(),
            ]
            .concat()
        })
        .chain([b"0\r\n\r\n".to_vec()])
        .collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let raw = s
        .edge
        .raw_exchange(head, &refs, Duration::from_millis(20))
        .await;
    assert_eq!(raw_status(&raw), 400, "{raw}");
    assert_eq!(raw_json(&raw)["error"]["code"], -32020);
}

#[tokio::test]
async fn every_body_reaches_the_upstream_whole_on_every_route_over_http2() {
    let up = Upstream::start("r1").await;
    let s = setup(&up).await;
    let client = s.edge.client(s.ca.root_store(), &["a.test"]);
    let port = s.edge.https.port();
    for size in SIZES {
        let body = call_body(size);
        for route in ROUTES {
            for (parts, declared) in [(1, true), (5, true), (5, false)] {
                let what = format!("{route} {size} B parts={parts} content-length={declared}");
                let mut req = client
                    .post(format!("https://a.test:{port}{route}/x"))
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "search");
                req = if parts == 1 {
                    req.body(body.clone())
                } else {
                    if declared {
                        req = req.header("content-length", body.len());
                    }
                    let stream = futures::stream::iter(pieces(&body, parts)).then(|p| async {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, std::io::Error>(p)
                    });
                    req.body(reqwest::Body::wrap_stream(stream))
                };
                let r = req.send().await.unwrap();
                assert_eq!(r.version(), reqwest::Version::HTTP_2, "{what}");
                assert_eq!(r.status(), 200, "{what}");
                let echo: serde_json::Value = r.json().await.unwrap();
                assert_eq!(echo["body_len"], body.len(), "{what}");
                assert_eq!(echo["body_sha256"], hex_sha256(&body), "{what}");
            }
        }
    }
}

/// HTTP/2 header lists are held to `limits.header_size` (32 KiB by default) like HTTP/1 heads:
/// a 40 KB header never reaches the upstream (h2 answers 431), a 20 KB one does.
#[tokio::test]
async fn http2_header_lists_get_the_header_size_limit() {
    let up = Upstream::start("r1").await;
    let s = setup(&up).await;
    let client = s.edge.client(s.ca.root_store(), &["a.test"]);
    let url = format!("https://a.test:{}/plain/x", s.edge.https.port());
    let get = |size: usize| client.get(&url).header("x-big", "a".repeat(size)).send();
    let fits = get(20_000).await.unwrap();
    assert_eq!(fits.version(), reqwest::Version::HTTP_2);
    assert_eq!(fits.status(), 200);
    match get(40_000).await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
}

//! Request smuggling and the other HTTP/1 shapes a proxy's framing must not be fooled by: two
//! lengths, a length and chunking, folded or bare-LF headers, chunk sizes that overflow,
//! pipelined requests, `Expect: 100-continue`, `Upgrade`. Each gets one answer (or none) at the
//! edge, and nothing the client hid inside a body reaches the upstream as a request of its own.
//! The same shapes over TLS, as HTTP/1.1 and HTTP/2, are in `edge.rs`.
#![forbid(unsafe_code)]

use std::time::Duration;

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// The status codes of every response in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter(|(i, _)| *i == 0 || raw[..*i].ends_with('\n') || raw[..*i].ends_with('}'))
        .filter_map(|(i, _)| raw[i + 9..].get(..3)?.parse().ok())
        .collect()
}

/// A hidden request the upstream would have answered: the echo names the path it saw.
fn smuggled(raw: &str) -> bool {
    raw.contains("\"path\":\"/smuggled\"")
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nhost: h.test\r\n\r\n";

#[tokio::test]
async fn smuggling_shapes_get_one_answer_and_never_reach_the_upstream_as_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let route = format!("    upstream: \"{}\"\n", up.url());
    let edge = plain_host_edge(tmp.path(), "", &route).await;
    let send = |raw: String| {
        let edge = &edge;
        async move { edge.raw_exchange(&raw, &[], Duration::ZERO).await }
    };

    // Accept twin: a well-formed POST, then, once it is answered, the next request on the
    // same connection.
    let second = "GET /second HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n";
    let out = edge
        .raw_exchange(
            "POST /echo HTTP/1.1\r\nhost: h.test\r\ncontent-length: 5\r\n\r\nhello",
            &[second.as_bytes()],
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(statuses(&out), [200, 200], "{out}");
    assert!(
        out.contains("\"body_len\":5") && out.contains("\"path\":\"/second\""),
        "{out}"
    );

    // Content-Length and Transfer-Encoding both: chunked wins (RFC 9112 6.3), the length never
    // reaches the upstream, and the connection is closed after the answer, so what follows the
    // chunked body's end never becomes a request.
    let out = send(format!(
        "POST /echo HTTP/1.1\r\nhost: h.test\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    ))
    .await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(
        out.contains("\"body_len\":0") && !out.contains("\"content-length\":\"5\""),
        "{out}"
    );
    assert!(out.contains("Connection: close"), "{out}");
    assert!(!smuggled(&out), "{out}");

    // Two Content-Length fields that disagree: refused.
    let out = send(format!(
        "POST /echo HTTP/1.1\r\nhost: h.test\r\ncontent-length: 5\r\ncontent-length: 40\r\n\r\nhello{SMUGGLED}"
    ))
    .await;
    assert_eq!(statuses(&out), [400], "{out}");
    assert!(!smuggled(&out), "{out}");

    // A header folded over two lines (obs-fold): refused.
    let out = send(
        "GET /echo HTTP/1.1\r\nhost: h.test\r\nx-folded: a\r\n b\r\nconnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    assert_eq!(statuses(&out), [400], "{out}");

    // A chunk size that overflows 64 bits: refused, nothing forwarded past it.
    let out = send(format!(
        "POST /echo HTTP/1.1\r\nhost: h.test\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000000005\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
    ))
    .await;
    assert_eq!(statuses(&out), [400], "{out}");
    assert!(!smuggled(&out), "{out}");

    // A chunked body whose chunk hides a request: it is body, forwarded as such.
    let hidden = SMUGGLED.len();
    let out = send(format!(
        "POST /echo HTTP/1.1\r\nhost: h.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{hidden:x}\r\n{SMUGGLED}\r\n0\r\n\r\n"
    ))
    .await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(out.contains(&format!("\"body_len\":{hidden}")), "{out}");
    assert!(!smuggled(&out), "{out}");

    // Lines ended by a bare LF: one request, read as one (httparse accepts them).
    let out = send("GET /echo HTTP/1.1\nhost: h.test\nconnection: close\n\n".to_string()).await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(out.contains("\"path\":\"/echo\""), "{out}");

    // Upgrade: hop-by-hop, never forwarded; the request is answered as a plain one.
    let out = send(
        "GET /echo HTTP/1.1\r\nhost: h.test\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n"
            .to_string(),
    )
    .await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(
        !out.contains("\"upgrade\"") && !out.contains("websocket"),
        "{out}"
    );

    // An absolute-form target: the upstream gets the path in origin form and the Host the edge
    // sets (an upstream would prefer a target's authority to Host). Its reject twin: a target
    // whose authority is not the Host is refused.
    let out = send(
        "GET http://h.test/echo?x=1 HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(
        out.contains("\"path\":\"/echo\"") && out.contains("\"query\":\"x=1\""),
        "{out}"
    );
    assert!(out.contains("\"target_authority\":null"), "{out}");
    assert!(out.contains(&format!("\"host\":\"{}\"", up.addr)), "{out}");
    let out = send(
        "GET http://elsewhere.test/echo HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    assert_eq!(statuses(&out), [400], "{out}");

    // Transfer-Encoding lists that end in chunked are read as chunked, and the upstream gets
    // one `chunked` (the body is read de-chunked and chunked again), never the client's list,
    // and nothing after the body's end as a request.
    for te in [
        "transfer-encoding: gzip, chunked\r\n",
        "transfer-encoding: identity\r\ntransfer-encoding: chunked\r\n",
    ] {
        let out = send(format!(
            "POST /echo HTTP/1.1\r\nhost: h.test\r\n{te}\r\n5\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        ))
        .await;
        assert_eq!(statuses(&out), [200], "{te}: {out}");
        assert!(out.contains("\"transfer-encoding\":\"chunked\""), "{out}");
        assert!(out.contains("\"body_len\":5") && !smuggled(&out), "{out}");
    }

    // Pipelined: the second request, sent before the first is answered, is not served: the
    // first is answered and the connection closed (the client sends it again, RFC 9112 9.3.2).
    let out = send(
        "GET /echo HTTP/1.1\r\nhost: h.test\r\n\r\nGET /second HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n"
            .to_string(),
    )
    .await;
    assert_eq!(statuses(&out), [200], "{out}");
    assert!(!out.contains("\"path\":\"/second\""), "{out}");
}

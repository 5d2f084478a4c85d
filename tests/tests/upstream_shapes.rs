//! What the edge makes of an upstream's less tidy answers, each written byte for byte by a
//! scripted upstream: an answer before the request body is read (then the connection reset),
//! interim 1xx responses with hop-by-hop headers, bodies delimited only by the close (and cut
//! short), and a `Connection` header that names the headers the edge sets. And the request head
//! the upstream gets, byte for byte, and HTTP/2 cookie fields, joined for the HTTP/1 upstream.
#![forbid(unsafe_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// An upstream that reads each connection's request head, writes `answer` and closes the
/// connection, whatever of the request is still unread (a request body: the close resets).
struct Scripted {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Scripted {
    async fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n @ 1..) => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = s.write_all(answer).await;
                });
            }
        });
        Self {
            url,
            heads,
            accepted,
        }
    }

    /// Connections the upstream accepted.
    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.heads.lock().unwrap().len()
    }
}

async fn edge_for(dir: &std::path::Path, url: &str) -> Edge {
    std::fs::create_dir_all(dir).unwrap();
    plain_host_edge(dir, "", &format!("    upstream: \"{url}\"\n")).await
}

/// The part of `raw` from the response whose status line is `status` on.
fn from_status<'a>(raw: &'a str, status: &str) -> &'a str {
    let at = raw
        .find(&format!("HTTP/1.1 {status}"))
        .unwrap_or_else(|| panic!("no {status} in {raw}"));
    &raw[at..]
}

/// The head of the first response in `raw` (up to its blank line).
fn first_head(raw: &str) -> &str {
    raw.split("\r\n\r\n").next().unwrap()
}

/// An upstream that refuses a large body from its head alone, then resets the connection
/// (the body unread): the client gets that answer, whether the edge's body write failed
/// first or the answer came first; not a 502 for the failed write.
#[tokio::test]
async fn an_answer_before_the_body_is_read_reaches_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Scripted::start(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nconnection: close\r\n\r\nnope\n",
    )
    .await;
    let edge = edge_for(tmp.path(), &up.url).await;
    let body = vec![b'x'; 4_000_000];
    // `connection: close`: when the whole body fit in the buffers before the upstream closed,
    // the request was complete and its connection may stay open; the exchange reads to the
    // close.
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: h.test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    for _ in 0..10 {
        let out = edge.raw_exchange(&head, &[&body], Duration::ZERO).await;
        assert_eq!(raw_status(&out), 413, "{}", first_head(&out));
        assert!(out.ends_with("nope\n"), "{}", first_head(&out));
    }
    // Reject twin: an upstream that resets without any answer is the edge's 502.
    let mute = Scripted::start(b"").await;
    let edge2 = edge_for(&tmp.path().join("mute"), &mute.url).await;
    let out = edge2.raw_exchange(&head, &[&body], Duration::ZERO).await;
    assert_eq!(raw_status(&out), 502, "{}", first_head(&out));
    // Neither request was sent twice: a POST is not replayed.
    assert_eq!(mute.requests(), 1);
}

/// A 103 with hop-by-hop headers and a session id: passed on with neither, then the final
/// answer.
#[tokio::test]
async fn interim_responses_lose_hop_by_hop_headers_and_session_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Scripted::start(
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\nconnection: x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\nmcp-session-id: backend-own-id\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-hop: kept\r\n\r\nok\n",
    )
    .await;
    let edge = edge_for(tmp.path(), &up.url).await;
    let out = edge
        .raw_exchange(
            "GET /hints HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    let interim = first_head(from_status(&out, "103"));
    assert!(
        interim.to_ascii_lowercase().contains("link: </style.css>"),
        "{out}"
    );
    for gone in ["x-hop", "keep-alive", "mcp-session-id", "connection: x-hop"] {
        assert!(
            !interim.to_ascii_lowercase().contains(gone),
            "{gone}: {out}"
        );
    }
    // The final answer follows, whole; an ordinary header of its own is kept (the interim's
    // Connection named it only for the interim).
    let fin = from_status(&out, "200");
    assert!(fin.ends_with("\r\n\r\nok\n"), "{out}");
    assert!(fin.to_ascii_lowercase().contains("x-hop: kept"), "{out}");
}

const TO_THE_CLOSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nread to the close\n";

/// A body delimited by the upstream's close goes chunked to an HTTP/1.1 client (whose
/// connection stays usable, and whose body ends with the last chunk) and delimited by the close
/// to an HTTP/1.0 client, which cannot read chunks.
#[tokio::test]
async fn a_close_delimited_body_is_chunked_for_http11_and_left_for_http10() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Scripted::start(TO_THE_CLOSE).await;
    let edge = edge_for(tmp.path(), &up.url).await;
    let next = "GET /again HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n";
    let out = edge
        .raw_exchange(
            "GET /close HTTP/1.1\r\nhost: h.test\r\n\r\n",
            &[next.as_bytes()],
            Duration::from_millis(300),
        )
        .await;
    let head = first_head(&out).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{out}");
    assert!(
        out.contains("\r\n\r\n12\r\nread to the close\n\r\n0\r\n\r\nHTTP/1.1 200"),
        "{out}"
    );
    assert_eq!(
        up.requests(),
        2,
        "the second request on the same connection"
    );

    let out = edge
        .raw_exchange(
            "GET /close HTTP/1.0\r\nhost: h.test\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    let head = first_head(&out).to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{out}");
    assert!(out.ends_with("\r\n\r\nread to the close\n"), "{out}");
}

/// Reject twins: a body cut short (shorter than its Content-Length, or a chunked body without
/// its last chunk) never reaches the client as a whole one: the connection ends without the
/// missing bytes or a last chunk.
#[tokio::test]
async fn a_body_cut_short_never_passes_for_a_whole_one() {
    let tmp = tempfile::tempdir().unwrap();
    let short = Scripted::start(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b").await;
    let edge = edge_for(tmp.path(), &short.url).await;
    let out = edge
        .raw_exchange(
            "GET /short HTTP/1.1\r\nhost: h.test\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        first_head(&out).contains("200") && body.len() < 100,
        "{out}"
    );

    let cut =
        Scripted::start(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
    let edge = edge_for(&tmp.path().join("cut"), &cut.url).await;
    let out = edge
        .raw_exchange(
            "GET /cut HTTP/1.1\r\nhost: h.test\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    assert!(out.contains("hello"), "{out}");
    assert!(
        !out.ends_with("0\r\n\r\n"),
        "a cut body ended as a whole one: {out}"
    );
}

/// `Connection` may make ordinary headers hop-by-hop, but not Host or the forwarding headers
/// the edge sets: the upstream still gets them, as the edge set them.
#[tokio::test]
async fn connection_cannot_strip_host_or_the_forwarding_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let edge = edge_for(tmp.path(), &up.url()).await;
    let out = edge
        .raw_exchange(
            "GET /echo HTTP/1.1\r\nhost: h.test\r\nconnection: close, host, x-forwarded-for, x-forwarded-proto, x-forwarded-host, forwarded, x-drop\r\nx-drop: 1\r\nx-forwarded-for: 6.6.6.6\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    let echo = raw_json(&out);
    let h = &echo["headers"];
    assert_eq!(h["host"], up.addr.to_string(), "{echo}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{echo}");
    assert_eq!(h["x-forwarded-proto"], "http", "{echo}");
    assert_eq!(h["x-forwarded-host"], "h.test", "{echo}");
    // Accept twin: an ordinary header Connection names is dropped.
    assert!(h.get("x-drop").is_none(), "{echo}");
}

/// The upstream's request head, byte for byte: origin form, Host first, the client's other
/// fields in their order and case, then the edge's; what is hop-by-hop, forged or named by
/// `Connection` is gone, and a Content-Length beside chunked never reaches it.
#[tokio::test]
async fn the_upstream_head_keeps_the_clients_fields_in_order_and_case() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let edge = edge_for(tmp.path(), &up.url).await;
    let addr = up.url.trim_start_matches("http://").to_string();
    let out = edge
        .raw_exchange(
            "GET http://h.test/a/b?c=d HTTP/1.1\r\nUser-Agent: t/1\r\nX-Mixed-Case: One\r\n\
             host: h.test\r\nTE: trailers\r\nConnection: close, X-Gone\r\nX-Gone: 1\r\n\
             Proxy-Authorization: Basic eA==\r\nX-Forwarded-Proto: gopher\r\nX-Real-IP: 6.6.6.6\r\n\
             accept: */*\r\nX-Mixed-Case: Two\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(
        heads,
        [format!(
            "GET /a/b?c=d HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: t/1\r\nX-Mixed-Case: One\r\n\
             X-Mixed-Case: Two\r\naccept: */*\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: h.test\r\n\r\n"
        )]
    );

    // Reject twin: a length beside chunked never reaches the upstream; it gets the body
    // chunked, as the edge spells it.
    let up = Scripted::start(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let edge = edge_for(&tmp.path().join("2"), &up.url).await;
    let out = edge
        .raw_exchange(
            "POST /p HTTP/1.1\r\nhost: h.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n",
            &[],
            Duration::ZERO,
        )
        .await;
    assert!(out.starts_with("HTTP/1.1 204"), "{out}");
    let head = up.heads.lock().unwrap()[0].clone();
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(
        head.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{head}"
    );
}

/// A chunked answer whose whole (empty) body came with its head: the client gets one end of
/// body, and its connection serves the next request cleanly (no stray last chunk between the
/// two responses).
#[tokio::test]
async fn an_empty_chunked_body_read_with_its_head_ends_once() {
    let tmp = tempfile::tempdir().unwrap();
    let up =
        Scripted::start(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").await;
    let edge = edge_for(tmp.path(), &up.url).await;
    let out = edge
        .raw_exchange(
            "GET /a HTTP/1.1\r\nhost: h.test\r\n\r\n",
            // The second request once the first is answered, on the same connection.
            &[b"GET /b HTTP/1.1\r\nhost: h.test\r\nconnection: close\r\n\r\n"],
            Duration::from_millis(500),
        )
        .await;
    let responses: Vec<&str> = out.split("HTTP/1.1 ").filter(|r| !r.is_empty()).collect();
    assert_eq!(responses.len(), 2, "{out}");
    for r in responses {
        assert!(r.starts_with("200"), "{out}");
        // The head, then exactly one last chunk.
        assert!(r.ends_with("\r\n\r\n0\r\n\r\n"), "{out}");
        assert_eq!(r.matches("0\r\n\r\n").count(), 1, "{out}");
    }
    assert_eq!(up.requests(), 2);
}

/// An HTTP/2 client that sends `Expect: 100-continue` and waits for `100 Continue` before its
/// body gets the upstream's 100 as an informational HEADERS frame, then sends the body, which
/// arrives whole. Reject twin: an upstream that refuses at once (417) answers without a 100,
/// and the body is never sent.
#[tokio::test]
async fn http2_expect_100_continue_gets_the_upstreams_100() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let (edge, ca) = tls_host_edge(tmp.path(), "", &up.url(), "").await;
    let mut h2 = raw_h2(&edge, &ca).await;
    let body = vec![b'b'; 100_000];
    let post = |path: &str| {
        http::Request::post(format!("https://a.test{path}"))
            .header("expect", "100-continue")
            .header("content-length", body.len())
            .body(())
            .unwrap()
    };

    h2 = h2.ready().await.unwrap();
    let (mut answer, mut send) = h2.send_request(post("/echo"), false).unwrap();
    let interim = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::poll_fn(|cx| answer.poll_informational(cx)),
    )
    .await
    .expect("100 Continue before the body (the client's own timer would be 1 s in curl)")
    .expect("an informational response")
    .unwrap();
    assert_eq!(interim.status(), 100);
    send.send_data(bytes::Bytes::from(body.clone()), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo = h2_body(resp.into_body()).await;
    let echo: serde_json::Value = serde_json::from_slice(&echo).unwrap();
    assert_eq!(echo["body_len"], body.len(), "{echo}");

    // Reject twin: the upstream refuses from the head alone; the client gets that answer, no
    // 100, and never sends its body.
    let refuses =
        Scripted::start(b"HTTP/1.1 417 Expectation Failed\r\ncontent-length: 0\r\n\r\n").await;
    let dir = tmp.path().join("refuses");
    std::fs::create_dir_all(&dir).unwrap();
    let (edge, ca) = tls_host_edge(&dir, "", &refuses.url, "").await;
    let mut h2 = raw_h2(&edge, &ca).await;
    h2 = h2.ready().await.unwrap();
    let (mut answer, _send) = h2.send_request(post("/echo"), false).unwrap();
    let interim = tokio::time::timeout(
        Duration::from_secs(5),
        futures::future::poll_fn(|cx| answer.poll_informational(cx)),
    )
    .await
    .expect("the final answer within 5 s");
    assert!(interim.is_none(), "{interim:?}");
    let resp = answer.await.unwrap();
    assert_eq!(resp.status(), 417);
    assert_eq!(refuses.requests(), 1);
}

/// HTTP/2 streams opened and reset at once (rapid reset, CVE-2023-44487) cost the upstream
/// nothing: a stream reset before its upstream connection is made never makes one. The
/// client's connection stays usable (accept twin: a stream it does not reset is answered).
#[tokio::test]
async fn http2_streams_reset_at_once_cost_no_upstream_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Scripted::start(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
    let (edge, ca) = tls_host_edge(tmp.path(), "", &up.url, "").await;
    let mut h2 = raw_h2(&edge, &ca).await;
    let request = || http::Request::get("https://a.test/reset").body(()).unwrap();
    let streams = 100;
    for _ in 0..streams {
        h2 = h2.ready().await.unwrap();
        let (_answer, mut body) = h2.send_request(request(), false).unwrap();
        // HEADERS and RST_STREAM go out together (the connection task writes both at once).
        body.send_reset(h2::Reason::CANCEL);
        // Paced: h2 sends GOAWAY when more than 20 streams wait reset before they are taken
        // (80 ms of the edge not taking streams, here).
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    h2 = h2.ready().await.unwrap();
    let (answer, _) = h2.send_request(request(), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the stream not reset is answered")
        .unwrap();
    assert_eq!(answer.status(), 200);
    // Without the checks every stream made one (201 of 201 when this test sent 200 streams:
    // h2 hands a stream reset in the same read to the server all the same); with them only the
    // last, which is not reset.
    let connections = up.connections();
    assert!(
        connections <= streams / 10,
        "{connections} upstream connections for {streams} reset streams"
    );
}

/// An HTTP/2 client's cookie fields reach the HTTP/1 upstream as one `Cookie` line, joined with
/// "; " in their order (RFC 9113 §8.2.3); one field is passed as it is.
#[tokio::test]
async fn http2_cookie_fields_are_joined_for_the_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("r1").await;
    let (edge, ca) = tls_host_edge(tmp.path(), "", &up.url(), "").await;
    let client = edge.client(ca.root_store(), &["a.test"]);
    let url = format!("https://a.test:{}/echo", edge.https.port());
    let r = client
        .get(&url)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["cookie"], "a=1; b=2; c=3", "{echo}");
    let r = client
        .get(&url)
        .header("cookie", "only=1")
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["cookie"], "only=1", "{echo}");
}

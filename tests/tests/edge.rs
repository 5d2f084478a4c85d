//! The edge proxy end to end: the real binary, real TLS handshakes, a real upstream.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

/// Two TLS hosts with CA-signed certificates from files, one plain host, all to `up`.
struct TwoHosts {
    _dir: tempfile::TempDir,
    ca: TestCa,
    edge: Edge,
    a_cert: String,
    b_cert: String,
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

async fn two_hosts(up: &Upstream, extra_a: &str) -> TwoHosts {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test CA");
    let (a_cert, a_key) = ca.leaf(&["a.test", "www.a.test"]);
    let (b_cert, b_key) = ca.leaf(&["b.test"]);
    let d = dir.path();
    let cfg = format!(
        "{listen}storage: {store}\nhosts:\n  a.test:\n    tls: {{ cert: {ac}, key: {ak} }}\n    aliases: [www.a.test]\n{extra_a}    upstream: {u}\n  b.test:\n    tls: {{ cert: {bc}, key: {bk} }}\n    upstream: {u}\n  plain.test:\n    tls: none\n    upstream: {u}\n",
        listen = Ports::new().yaml(),
        store = d.join("certs").display(),
        ac = write(d, "a.pem", &a_cert),
        ak = write(d, "a.key", &a_key),
        bc = write(d, "b.pem", &b_cert),
        bk = write(d, "b.key", &b_key),
        u = up.url(),
    );
    let ports = ports_of(&cfg);
    let edge = Edge::start(d, &ports, &cfg).await;
    TwoHosts {
        _dir: dir,
        ca,
        edge,
        a_cert,
        b_cert,
    }
}

/// The ports written in a config produced by `Ports::yaml`.
fn ports_of(cfg: &str) -> Ports {
    let port = |key: &str| -> u16 {
        let line = cfg
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap();
        line.rsplit(':')
            .next()
            .unwrap()
            .trim_matches(|c| c == '"' || c == ' ')
            .parse()
            .unwrap()
    };
    Ports {
        http: port("http:"),
        https: port("https:"),
        metrics: port("metrics:"),
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_of_each_host_and_unknown_names_fail() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let roots = || t.ca.root_store();

    let (leaf_a, alpn, _) = t
        .edge
        .handshake(Some("a.test"), roots(), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf_a, pem_to_der(&t.a_cert));
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 is offered by ALPN");
    let (leaf_alias, _, _) = t
        .edge
        .handshake(Some("www.a.test"), roots(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf_alias, pem_to_der(&t.a_cert));
    let (leaf_b, alpn, _) = t
        .edge
        .handshake(Some("b.test"), roots(), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(leaf_b, pem_to_der(&t.b_cert));
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

    // Reject twins: no SNI, an unknown name, a tls:none host.
    assert!(t.edge.handshake(None, roots(), &[]).await.is_err());
    assert!(t
        .edge
        .handshake(Some("c.test"), roots(), &[])
        .await
        .is_err());
    assert!(t
        .edge
        .handshake(Some("plain.test"), roots(), &[])
        .await
        .is_err());
    assert_eq!(
        t.edge
            .metric("mcp_edge_tls_handshake_failures_total{reason=\"unknown_name\"}")
            .await,
        2.0
    );
    assert_eq!(
        t.edge
            .metric("mcp_edge_tls_handshake_failures_total{reason=\"no_sni\"}")
            .await,
        1.0
    );
    assert_eq!(
        t.edge
            .metric("mcp_edge_tls_handshakes_total{host=\"a.test\"}")
            .await,
        2.0
    );

    // Both HTTP versions reach the upstream.
    let client = t.edge.client(roots(), &["a.test", "b.test"]);
    let r = client
        .get(format!("https://a.test:{}/x", t.edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn host_that_does_not_match_sni_gets_421() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let port = t.edge.https.port();
    let ok = client
        .get(format!("https://a.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // SNI a.test, Host b.test: a's certificate must not front b. Over HTTP/1.1 the Host header
    // can differ from the SNI.
    let h1 = reqwest::Client::builder()
        .use_preconfigured_tls({
            let mut c = rustls::ClientConfig::builder()
                .with_root_certificates(t.ca.root_store())
                .with_no_client_auth();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            c
        })
        .resolve("a.test", t.edge.https)
        .build()
        .unwrap();
    for host in ["b.test", "plain.test", "other.test"] {
        let r = h1
            .get(format!("https://a.test:{port}/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 421, "Host {host} over a.test's certificate");
    }
    // An alias of the same host is fine.
    let r = h1
        .get(format!("https://a.test:{port}/"))
        .header("host", "www.a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn port_80_redirects_tls_hosts_serves_plain_hosts_and_refuses_unknown_hosts() {
    install_crypto();
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", t.edge.http);
    let r = c
        .get(format!("{base}/mcp?x=1"))
        .header("host", "www.a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://www.a.test:{}/mcp?x=1", t.edge.https.port()).as_str()
    );
    let r = c
        .get(format!("{base}/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("location").is_none());
    let r = c
        .get(format!("{base}/hello"))
        .header("host", "plain.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    // Unknown challenge tokens are 404, for any host.
    let r = c
        .get(format!("{base}/.well-known/acme-challenge/nope"))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn headers_pass_both_ways_forwarding_headers_are_set_and_hop_by_hop_stripped() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let r = client
        .post(format!(
            "https://a.test:{}/mcp/echo?q=1",
            t.edge.https.port()
        ))
        .header("mcp-session-id", "abc")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "search_docs")
        .header("last-event-id", "42")
        .header("x-forwarded-for", "6.6.6.6")
        .header("proxy-authorization", "Basic secret")
        .header("te", "trailers")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rh = r.headers().clone();
    assert_eq!(rh["mcp-protocol-version"], "2025-06-18");
    assert_eq!(rh["mcp-session-id"], "upstream-session-1");
    assert_eq!(rh["mcp-method"], "tools/call");
    assert_eq!(rh["mcp-name"], "search_docs");
    assert!(
        rh.get("keep-alive").is_none(),
        "hop-by-hop response header stripped"
    );
    let j: serde_json::Value = r.json().await.unwrap();
    let h = &j["headers"];
    assert_eq!(h["mcp-session-id"], "abc");
    assert_eq!(h["mcp-protocol-version"], "2025-06-18");
    assert_eq!(h["mcp-method"], "tools/call");
    assert_eq!(h["mcp-name"], "search_docs");
    assert_eq!(h["last-event-id"], "42");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "client-supplied XFF is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(
        h["x-forwarded-host"],
        format!("a.test:{}", t.edge.https.port())
    );
    assert_eq!(
        h["host"],
        up.addr.to_string(),
        "upstream sees its own authority"
    );
    assert!(h.get("proxy-authorization").is_none());
    assert!(h.get("te").is_none());
    assert_eq!(j["query"], "q=1");
}

/// The request header goes upstream together with the first bytes of the body (one write, not
/// two): whatever the body's shape, it arrives whole and the upstream answers once it has it.
#[tokio::test]
async fn request_bodies_arrive_whole_whatever_their_shape() {
    use mcp_edge_tests::upstream::hex_sha256;
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let url = format!("https://a.test:{}/echo", t.edge.https.port());

    // Large, with a Content-Length: many writes upstream, the first with the header.
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i * 7 % 251) as u8).collect();
    let echo = |body: reqwest::Body| {
        let request = client.post(&url).body(body);
        async move {
            let r = request.send().await.unwrap();
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let j = echo(big.clone().into()).await;
    assert_eq!(j["body_len"], 1_048_576);
    assert_eq!(j["body_sha256"], hex_sha256(&big));

    // Chunked (no Content-Length): streamed in pieces.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..5).map(|i| Ok(vec![b'a' + i; 3000])).collect();
    let all: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.as_ref().unwrap().clone())
        .collect();
    let j = echo(reqwest::Body::wrap_stream(futures::stream::iter(pieces))).await;
    assert_eq!(j["body_len"], 15_000);
    assert_eq!(j["body_sha256"], hex_sha256(&all));

    // A body that trickles in after its header: nothing waits for anything that never comes.
    let head = "POST /echo HTTP/1.1\r\nhost: plain.test\r\ncontent-length: 10\r\nconnection: close\r\n\r\n";
    let out = t
        .edge
        .raw_exchange(head, &[b"01234", b"56789"], Duration::from_millis(300))
        .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(&hex_sha256(b"0123456789")), "{out}");

    // A client that waits for `100 Continue` before it sends the body (curl does, for large
    // uploads): the header must reach the upstream without the body, or both sides would wait.
    let head = "POST /echo HTTP/1.1\r\nhost: plain.test\r\ncontent-length: 4\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n";
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.edge.http).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first))
        .await
        .expect("100 Continue (or an answer) without the body having been sent")
        .unwrap();
    let first = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 100"), "{first}");
    s.write_all(b"ping").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest).into_owned();
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains(&hex_sha256(b"ping")), "{rest}");
}

#[tokio::test]
async fn origin_outside_the_allowlist_gets_403() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "    allowed_origins: [\"https://chatgpt.com\"]\n").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test", "b.test"]);
    let port = t.edge.https.port();
    let url = format!("https://a.test:{port}/echo");
    let send = |origin: Option<&'static str>| {
        let mut r = client.post(&url).body("{}");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    assert_eq!(
        send(Some("https://chatgpt.com")).await.unwrap().status(),
        200
    );
    assert_eq!(
        send(Some("https://ChatGPT.com:443"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(send(None).await.unwrap().status(), 200);
    assert_eq!(
        send(Some("https://evil.example")).await.unwrap().status(),
        403
    );
    assert_eq!(send(Some("null")).await.unwrap().status(), 403);
    // b.test has no allowlist.
    let r = client
        .post(format!("https://b.test:{port}/echo"))
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let resp = client
        .get(format!(
            "https://a.test:{}/ticks?n=6&gap_ms=250",
            t.edge.https.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(resp.headers().get("content-encoding").is_none());
    let mut sse = SseReader::new(resp);
    let mut arrivals = Vec::new();
    while let Some((ev, at)) = sse.next_event().await {
        arrivals.push((ev, at));
    }
    assert_eq!(arrivals.len(), 6, "every event arrives");
    // Buffering would deliver them together; streaming delivers them ~250 ms apart (the
    // margin absorbs scheduling jitter on a loaded CI machine).
    for w in arrivals.windows(2) {
        let gap = w[1].1 - w[0].1;
        assert!(
            gap >= Duration::from_millis(100),
            "events {:?} and {:?} arrived {gap:?} apart",
            w[0].0,
            w[1].0
        );
    }
}

#[tokio::test]
async fn post_mcp_answered_with_sse_streams_through() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let resp = client
        .post(format!("https://a.test:{}/mcp", t.edge.https.port()))
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(
        resp.headers()["mcp-session-id"],
        "r1-0",
        "single upstream: ids pass untouched"
    );
    let mut sse = SseReader::new(resp);
    let (ev, _) = sse.next_event().await.unwrap();
    assert!(ev.contains("\"replica\":\"r1\""), "{ev}");
}

#[tokio::test]
async fn session_affinity_with_two_replicas_and_tampered_ids_refused() {
    let r1 = Upstream::start("r1").await;
    let r2 = Upstream::start("r2").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  mcp.test:\n    tls: self-signed\n    routes:\n      - path: /\n        upstream:\n          urls: [{}, {}]\n",
        ports.yaml(),
        dir.path().join("certs").display(),
        r1.url(),
        r2.url()
    );
    let edge = Edge::start(dir.path(), &ports, &cfg).await;
    let cert =
        std::fs::read_to_string(dir.path().join("certs/mcp.test.self-signed.cert.pem")).unwrap();
    let client = edge.client(roots_from_pem(&cert), &["mcp.test"]);
    let base = format!("https://mcp.test:{}", edge.https.port());

    // Streamable HTTP: sessions on both replicas (round robin), each request sticks.
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let r = client
            .post(format!("{base}/mcp"))
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
            .send()
            .await
            .unwrap();
        let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
        assert!(
            !sid.starts_with("r1-") && !sid.starts_with("r2-"),
            "client sees a sealed id, got {sid}"
        );
        let body = r.text().await.unwrap();
        let replica = if body.contains("\"r1\"") { "r1" } else { "r2" };
        sessions.push((sid, replica));
    }
    assert!(
        sessions.iter().any(|s| s.1 == "r1") && sessions.iter().any(|s| s.1 == "r2"),
        "round robin"
    );
    for (sid, replica) in &sessions {
        for _ in 0..3 {
            let r = client
                .post(format!("{base}/mcp"))
                .header("mcp-session-id", sid)
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let j: serde_json::Value = r.json().await.unwrap();
            assert_eq!(j["replica"], *replica);
            assert!(
                j["session"].as_str().unwrap().starts_with(replica),
                "backend sees its own id"
            );
        }
    }
    // Tampered, forged and raw backend ids are refused, not routed at random.
    let mut bad = sessions[0].0.clone().into_bytes();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    for forged in [
        String::from_utf8(bad).unwrap(),
        "r1-0".to_string(),
        "s1AAAA".to_string(),
    ] {
        let r = client
            .post(format!("{base}/mcp"))
            .header("mcp-session-id", &forged)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "forged id {forged}");
    }
    assert!(
        edge.metric("mcp_edge_session_rejected_total{host=\"mcp.test\"")
            .await
            >= 3.0
    );

    // Legacy HTTP+SSE: the endpoint event carries a sealed id; POSTs reach the stream's replica.
    for _ in 0..2 {
        let resp = client.get(format!("{base}/sse")).send().await.unwrap();
        let mut sse = SseReader::new(resp);
        let (ev, _) = sse.next_event().await.unwrap();
        assert!(ev.starts_with("event: endpoint"), "{ev}");
        let endpoint = ev
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap()
            .to_string();
        assert!(endpoint.starts_with("/message?sessionId=s1"), "{endpoint}");
        let r = client
            .post(format!("{base}{endpoint}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let j: serde_json::Value = r.json().await.unwrap();
        let replica = j["replica"].as_str().unwrap();
        assert!(j["session"].as_str().unwrap().starts_with(replica));
        // The stream keeps flowing after the first event was rewritten.
        let (ping, _) = sse.next_event().await.unwrap();
        assert_eq!(ping, ": ping");
    }
    let r = client
        .post(format!("{base}/message?sessionId=r1-0"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn certificate_replaced_on_disk_is_served_to_new_handshakes_while_a_stream_flows() {
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let resp = client
        .get(format!("https://a.test:{}/forever", t.edge.https.port()))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    sse.next_event().await.unwrap();

    // Replace a.test's certificate and key on disk (key first, as an operator's tool might).
    let (new_cert, new_key) = t.ca.leaf(&["a.test", "www.a.test"]);
    std::fs::write(t.edge.dir.join("a.key"), &new_key).unwrap();
    std::fs::write(t.edge.dir.join("a.pem"), &new_cert).unwrap();
    let want = pem_to_der(&new_cert);
    wait_for(
        Duration::from_secs(10),
        "the new certificate to be served",
        || {
            let roots = t.ca.root_store();
            let want = want.clone();
            let edge = &t.edge;
            async move {
                let (leaf, _, _) = edge.handshake(Some("a.test"), roots, &[]).await.ok()?;
                (leaf == want).then_some(())
            }
        },
    )
    .await;
    // The stream opened before the swap still flows.
    for _ in 0..5 {
        sse.next_event().await.expect("stream survives the swap");
    }
    // A bad key on disk keeps the current certificate.
    std::fs::write(t.edge.dir.join("a.key"), "not a key").unwrap();
    wait_for(Duration::from_secs(10), "the bad key noticed", || {
        let log = t.edge.log();
        async move { log.contains("cannot be used").then_some(()) }
    })
    .await;
    let (leaf, _, _) = t
        .edge
        .handshake(Some("a.test"), t.ca.root_store(), &[])
        .await
        .unwrap();
    assert_eq!(leaf, want);
    assert!(
        t.edge.log().contains("cannot be used"),
        "the refusal is logged"
    );
}

#[tokio::test]
async fn reload_swaps_routes_keeps_streams_and_refuses_a_bad_config() {
    let up = Upstream::start("r1").await;
    let other = Upstream::start("r2").await;
    let mut t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let port = t.edge.https.port();
    let resp = client
        .get(format!("https://a.test:{port}/forever"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    sse.next_event().await.unwrap();

    // A bad config (unknown key) is refused; the old one keeps serving.
    let good = std::fs::read_to_string(&t.edge.config_path).unwrap();
    std::fs::write(&t.edge.config_path, good.replace("aliases:", "aliasses:")).unwrap();
    t.edge.sighup();
    wait_for(Duration::from_secs(10), "the refused reload", || {
        let e = &t.edge;
        async move {
            (e.try_metric("mcp_edge_config_reloads_total{result=\"error\"}")
                .await?
                >= 1.0)
                .then_some(())
        }
    })
    .await;
    assert!(t.edge.is_running());
    let r = client
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    let j: serde_json::Value = r.json().await.unwrap();
    assert_eq!(j["replica"], "r1");
    assert!(
        t.edge.log().contains("aliasses"),
        "the bad key is named in the log"
    );

    // A good config pointing a.test elsewhere takes effect without a restart.
    std::fs::write(&t.edge.config_path, good.replace(&up.url(), &other.url())).unwrap();
    t.edge.sighup();
    wait_for(Duration::from_secs(10), "the new route", || {
        let c = client.clone();
        async move {
            let r = c
                .get(format!("https://a.test:{port}/x"))
                .send()
                .await
                .ok()?;
            let j: serde_json::Value = r.json().await.ok()?;
            (j["replica"] == "r2").then_some(())
        }
    })
    .await;
    // Counted once the swap is done, an instant after the new route answers.
    wait_for(Duration::from_secs(5), "the reload counted", || {
        let e = &t.edge;
        async move {
            (e.try_metric("mcp_edge_config_reloads_total{result=\"ok\"}")
                .await?
                >= 1.0)
                .then_some(())
        }
    })
    .await;
    for _ in 0..5 {
        sse.next_event()
            .await
            .expect("stream opened before the reload keeps flowing");
    }
}

#[tokio::test]
async fn metrics_count_what_happened() {
    install_crypto();
    let up = Upstream::start("r1").await;
    let t = two_hosts(&up, "").await;
    let client = t.edge.client(t.ca.root_store(), &["a.test"]);
    let port = t.edge.https.port();
    for _ in 0..3 {
        assert_eq!(
            client
                .get(format!("https://a.test:{port}/x"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let resp = client
        .get(format!("https://a.test:{port}/forever"))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    sse.next_event().await.unwrap();
    let m = t.edge.metrics_text().await;
    assert_eq!(
        metric_value(
            &m,
            "mcp_edge_requests_total{host=\"a.test\",route=\"/\",status=\"2xx\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "mcp_edge_open_streams{host=\"a.test\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "mcp_edge_request_duration_seconds_count{host=\"a.test\",route=\"/\"}"
        ),
        3.0
    );
    assert!(
        metric_value(
            &m,
            "mcp_edge_certificate_not_after_seconds{host=\"a.test\"}"
        ) > 1.7e9
    );
    drop(sse);
    wait_for(Duration::from_secs(10), "the stream gauge to drop", || {
        let e = &t.edge;
        async move { (e.metric("mcp_edge_open_streams{host=\"a.test\"}").await == 0.0).then_some(()) }
    })
    .await;

    // An upstream that is down: 502 and the reason counted.
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let dead = free_port();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  plain.test:\n    tls: none\n    upstream: http://127.0.0.1:{dead}\n",
        ports.yaml(),
        dir.path().join("certs").display()
    );
    let e = Edge::start(dir.path(), &ports, &cfg).await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/", e.http))
        .header("host", "plain.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    // Counted when the request is logged, just after the response went out.
    wait_for(Duration::from_secs(5), "the upstream error counted", || {
        let e = &e;
        async move {
            (e.try_metric("mcp_edge_upstream_errors_total{host=\"plain.test\",reason=\"connect_refused\",route=\"/\"}").await? == 1.0).then_some(())
        }
    })
    .await;
    assert_eq!(
        e.metric("mcp_edge_requests_total{host=\"plain.test\",route=\"/\",status=\"5xx\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_stops_the_process_with_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "listen:\n  http: \"127.0.0.1:{}\"\n  https: \"{}\"\n  metrics: \"127.0.0.1:{}\"\nstorage: {}\nhosts:\n  x.test:\n    tls: none\n    upstream: http://127.0.0.1:1\n",
        ports.http,
        busy.local_addr().unwrap(),
        ports.metrics,
        dir.path().join("certs").display()
    );
    let path = dir.path().join("edge.yaml");
    std::fs::write(&path, cfg).unwrap();
    edge_bin(); // built first, so that the bound below is the process's own
    let start = Instant::now();
    let err = start_refused(&path);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("listen.https") && err.contains(&busy.local_addr().unwrap().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn sigterm_stops_within_the_configured_grace_period() {
    let up = Upstream::start("r1").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    // Ports::yaml sets shutdown_grace: 0s; pingora then stops the runtimes within ~1 s.
    let cfg = format!(
        "{}storage: {}\nhosts:\n  plain.test:\n    tls: none\n    upstream: {}\n",
        ports.yaml(),
        dir.path().join("certs").display(),
        up.url()
    );
    let mut edge = Edge::start(dir.path(), &ports, &cfg).await;
    let start = Instant::now();
    edge.signal("-TERM");
    wait_for(
        Duration::from_secs(10),
        "mcp-edge to exit after SIGTERM",
        || {
            let running = edge.is_running();
            async move { (!running).then_some(()) }
        },
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(edge.log().contains("SIGTERM received"));
}

#[tokio::test]
async fn tls_sessions_resume_unless_listen_session_resumption_is_false() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let ca = TestCa::new("resumption CA");
    let (cert, key) = ca.leaf(&["a.test"]);
    let cert_path = write(tmp.path(), "a.pem", &cert);
    let key_path = write(tmp.path(), "a.key", &key);
    for (setting, want) in [
        ("", rustls::HandshakeKind::Resumed),
        ("  session_resumption: false\n", rustls::HandshakeKind::Full),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let cfg = format!(
            "{}storage: {}\nhosts:\n  a.test:\n    tls: {{ cert: {cert_path}, key: {key_path} }}\n    upstream: \"{}\"\n",
            ports.yaml().replacen("listen:\n", &format!("listen:\n{setting}"), 1),
            dir.path().join("certs").display(),
            up.url()
        );
        let e = Edge::start(dir.path(), &ports, &cfg).await;
        for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let client = rustls::ClientConfig::builder_with_protocol_versions(&[versions])
                .with_root_certificates(ca.root_store())
                .with_no_client_auth();
            let kinds = handshake_kinds(e.https, "a.test", client, 3).await;
            assert_eq!(
                kinds[0],
                rustls::HandshakeKind::Full,
                "{setting:?} {versions:?}"
            );
            assert!(
                kinds[1..].iter().all(|k| *k == want),
                "{setting:?} {versions:?}: {kinds:?}"
            );
        }
    }
}

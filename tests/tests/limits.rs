//! Limits a client cannot go past and timeouts it cannot stretch: connection caps (one address
//! cannot starve the others), request-header size and count, the TLS handshake deadline, the
//! upstream response-header timeout (a quiet stream lives on); and what the operator sets for
//! the path in front (trusted proxies) and behind (active health checks). Each with its accept
//! twin.
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn edge(dir: &Path, top: &str, upstream: &str) -> Edge {
    plain_host_edge(dir, top, upstream).await
}

async fn get_from(edge: &Edge, from: &str, path: &str, extra: &str) -> String {
    edge.get_from(from, path, extra).await
}

/// Whether the proxy closes `s` within `limit` without answering anything.
async fn closed_unanswered(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(limit, s.read(&mut buf)).await;
    matches!(r, Ok(Ok(0)) | Ok(Err(_)))
}

async fn wait_open(edge: &Edge, n: f64) {
    wait_for(Duration::from_secs(10), "open connections", || async {
        (edge.metric("mcp_edge_connections_open").await == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_refused_while_other_addresses_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let edge = edge(
        tmp.path(),
        "limits:\n  connections: 6\n  connections_per_address: 3\n",
        &format!("    upstream: \"{}\"\n", up.url()),
    )
    .await;

    // One client holds its three idle connections. (Not 127.0.0.1: right after start, a
    // connection from there is sometimes still counted; see the stop note.)
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(ip("127.0.0.5"), edge.http).await.unwrap());
    }
    wait_open(&edge, 3.0).await;
    // Its fourth is closed unanswered, even with a request on it.
    let mut fourth = connect_from(ip("127.0.0.5"), edge.http).await.unwrap();
    let _ = fourth
        .write_all(b"GET / HTTP/1.1\r\nhost: h.test\r\n\r\n")
        .await;
    assert!(closed_unanswered(&mut fourth, Duration::from_secs(5)).await);
    assert_eq!(
        edge.metric("mcp_edge_connections_refused_total{reason=\"connections_per_address\"}")
            .await,
        1.0
    );
    // Another address is served meanwhile.
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.2", "/x", "").await),
        200
    );
    wait_open(&edge, 3.0).await;

    // The total cap: three more from a third address fill it; a fourth address is refused.
    for _ in 0..3 {
        held.push(connect_from(ip("127.0.0.3"), edge.http).await.unwrap());
    }
    wait_open(&edge, 6.0).await;
    let mut over = connect_from(ip("127.0.0.4"), edge.http).await.unwrap();
    assert!(closed_unanswered(&mut over, Duration::from_secs(5)).await);
    assert_eq!(
        edge.metric("mcp_edge_connections_refused_total{reason=\"connections\"}")
            .await,
        1.0
    );

    // A closed connection frees its place: the first client is served again.
    held.truncate(5);
    drop(held.remove(0));
    wait_open(&edge, 4.0).await;
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.5", "/x", "").await),
        200
    );
}

#[tokio::test]
async fn a_trusted_proxy_is_exempt_from_the_per_address_cap_and_its_headers_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let edge = edge(
        tmp.path(),
        "trusted_proxies: [127.0.0.2/32]\nlimits:\n  connections_per_address: 2\n",
        &format!("    upstream: \"{}\"\n", up.url()),
    )
    .await;
    let forwarded = "x-forwarded-for: 203.0.113.9\r\nx-forwarded-proto: https\r\nx-real-ip: 203.0.113.9\r\nforwarded: for=203.0.113.9\r\n";

    // From the balancer: its headers reach the upstream, with the balancer appended.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(ip("127.0.0.2"), edge.http).await.unwrap());
    }
    let seen = raw_json(&get_from(&edge, "127.0.0.2", "/x", forwarded).await);
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.2");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-real-ip"], "203.0.113.9");
    assert_eq!(h["forwarded"], "for=203.0.113.9");

    // From anyone else, the same headers are replaced or dropped, and the cap applies.
    let seen = raw_json(&get_from(&edge, "127.0.0.1", "/x", forwarded).await);
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("x-real-ip").is_none() && h.get("forwarded").is_none());
    for _ in 0..2 {
        held.push(connect_from(ip("127.0.0.6"), edge.http).await.unwrap());
    }
    wait_open(&edge, 5.0).await;
    let mut third = connect_from(ip("127.0.0.6"), edge.http).await.unwrap();
    assert!(closed_unanswered(&mut third, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_request_header_over_the_size_or_field_limit_gets_431() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let edge = edge(
        tmp.path(),
        "limits:\n  header_size: 2KiB\n  header_count: 20\n",
        &format!("    upstream: \"{}\"\n", up.url()),
    )
    .await;
    let fields = |n: usize| (0..n).map(|i| format!("x-f{i}: v\r\n")).collect::<String>();

    let long = format!("x-long: {}\r\n", "a".repeat(3000));
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.1", "/x", &long).await),
        431
    );
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.1", "/x", &fields(25)).await),
        431
    );
    // More than the parser holds at all.
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.1", "/x", &fields(300)).await),
        431
    );
    assert_eq!(
        edge.metric(
            "mcp_edge_requests_refused_total{host=\"_unknown\",reason=\"header_too_large\"}"
        )
        .await,
        3.0
    );
    // Within both limits.
    let fits = format!("x-long: {}\r\n{}", "a".repeat(1000), fields(15));
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.1", "/x", &fits).await),
        200
    );
}

#[tokio::test]
async fn a_tls_client_that_never_completes_its_handshake_is_closed_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\ntimeouts:\n  tls_handshake: 1s\nhosts:\n  h.test:\n    tls: self-signed\n    upstream: \"http://127.0.0.1:9\"\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
    );
    let edge = Edge::start(tmp.path(), &ports, &cfg).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    assert!(closed_unanswered(&mut silent, Duration::from_secs(10)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that does complete it is served.
    let roots = rustls::RootCertStore::empty();
    let err = edge
        .handshake(Some("h.test"), roots, &[])
        .await
        .unwrap_err();
    // The self-signed certificate is not trusted by an empty store: the handshake got as far as
    // the certificate, which is all this twin shows.
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_silent_upstream_gets_504_at_the_response_header_timeout_while_a_quiet_stream_lives_on() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let edge = edge(
        tmp.path(),
        "",
        &format!(
            "    upstream:\n      urls: [\"{}\"]\n      response_header_timeout: 1s\n      read_timeout: 1h\n",
            up.url()
        ),
    )
    .await;

    let started = Instant::now();
    let raw = get_from(&edge, "127.0.0.1", "/silent", "").await;
    assert_eq!(raw_status(&raw), 504, "{raw}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A stream whose header came at once, then 2.5 s of silence, is not cut.
    let raw = get_from(&edge, "127.0.0.1", "/ticks?n=2&gap_ms=2500", "").await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
    assert!(raw.contains("id: 0") && raw.contains("id: 1"), "{raw}");
}

/// Which replica answered a plain request.
async fn replica_of(edge: &Edge) -> String {
    let seen = raw_json(&get_from(edge, "127.0.0.1", "/x", "").await);
    seen["replica"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_replica_failing_its_health_check_leaves_the_round_robin_until_it_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let edge = edge(
        tmp.path(),
        "",
        &format!(
            "    upstream:\n      urls: [\"{}\", \"{}\"]\n      health_check: {{ path: /healthz, interval: 300ms, timeout: 300ms }}\n",
            a.url(),
            b.url()
        ),
    )
    .await;
    let up_a = format!(
        "mcp_edge_upstream_replica_up{{host=\"h.test\",replica=\"{}\",route=\"/\"}}",
        a.url()
    );
    wait_for(Duration::from_secs(10), "probes", || async {
        (edge
            .try_metric("mcp_edge_health_probes_total{host=\"h.test\",result=\"ok\",route=\"/\"}")
            .await
            .unwrap_or(0.0)
            >= 2.0)
            .then_some(())
    })
    .await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..4 {
        seen.push(replica_of(&edge).await);
    }
    assert!(
        seen.contains(&"a".into()) && seen.contains(&"b".into()),
        "{seen:?}"
    );

    a.set_healthy(false);
    wait_for(Duration::from_secs(10), "a marked down", || async {
        (edge.try_metric(&up_a).await == Some(0.0)).then_some(())
    })
    .await;
    for _ in 0..6 {
        assert_eq!(replica_of(&edge).await, "b");
    }
    assert!(edge.log().contains("its health check failed"));

    a.set_healthy(true);
    wait_for(Duration::from_secs(10), "a back up", || async {
        (edge.try_metric(&up_a).await == Some(1.0)).then_some(())
    })
    .await;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..4 {
        seen.push(replica_of(&edge).await);
    }
    assert!(seen.contains(&"a".into()), "{seen:?}");
}

#[test]
fn check_names_the_key_of_a_bad_limit_proxy_or_health_check() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\ntrusted_proxies: [10.0.0.0/8, not-an-ip]\nlimits:\n  connections: 10\n  connections_per_address: 20\n  header_size: 10\n  header_count: 1000\n  h2_streams: 0\ntimeouts:\n  tls_handshake: 0s\nhosts:\n  h.test:\n    tls: none\n    upstream:\n      urls: [\"http://127.0.0.1:9\"]\n      response_header_timeout: 0s\n      health_check: {{ path: healthz, interval: 1ms }}\n",
        ports.yaml(),
        tmp.path().join("certs").display(),
    );
    let (ok, text) = run_check(tmp.path(), &cfg);
    assert!(!ok, "{text}");
    for key in [
        "trusted_proxies[1]",
        "limits.connections_per_address",
        "limits.header_size",
        "limits.header_count",
        "limits.h2_streams",
        "timeouts.tls_handshake",
        "upstream.response_header_timeout",
        "upstream.health_check.path",
        "upstream.health_check.interval",
        "upstream.health_check.timeout",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
}

#[tokio::test]
async fn the_admin_listener_can_require_a_token_and_says_when_it_is_open_to_all() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let token = "mcpe_prometheus-0123456789abcdef";
    let hash: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let e = edge(
        tmp.path(),
        &format!("admin: {{ token: \"sha256:{hash}\" }}\nlimits: {{ connections: 1000000 }}\n"),
        &format!("    upstream: \"{}\"\n", up.url()),
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut r = client.get(format!("http://{}{path}", e.metrics));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for path in ["/metrics", "/status"] {
        let r = get(path, None).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let wrong = get(path, Some("Bearer mcpe_guess")).await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let hash_itself = get(path, Some(&format!("Bearer sha256:{hash}")))
            .await
            .unwrap();
        assert_eq!(hash_itself.status(), 401, "{path}");
        let right = get(path, Some(&format!("Bearer {token}"))).await.unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    // Health checks need no token.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(get(path, None).await.unwrap().status(), 200, "{path}");
    }
    // A cap the open-files limit cannot back is lowered, and said.
    assert!(e.log().contains("lowered to"), "{}", e.log());
    assert!(!e.log().contains("serves /metrics and /status to anyone"));

    // Bound beyond loopback without a token: a warning at start.
    let tmp2 = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let open = format!(
        "listen:\n  http: \"127.0.0.1:{}\"\n  https: \"127.0.0.1:{}\"\n  metrics: \"0.0.0.0:{}\"\nstorage: {}\nhosts:\n  h.test:\n    tls: none\n    upstream: \"{}\"\n",
        ports.http,
        ports.https,
        ports.metrics,
        tmp2.path().join("certs").display(),
        up.url()
    );
    let e2 = Edge::start(tmp2.path(), &ports, &open).await;
    assert!(
        e2.log()
            .contains("serves /metrics and /status to anyone who reaches it"),
        "{}",
        e2.log()
    );
}

/// Accepts connections and never answers (`reset: false`), or resets each at once.
async fn bad_replica(reset: bool) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            if reset {
                // Read the request, begin an answer, then reset: a replica that dies mid-way.
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut s = s;
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-ty").await;
                    // A zero linger resets on drop without blocking (what the deprecation is about).
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                });
            } else {
                held.push(s);
            }
        }
    });
    port
}

/// An edge whose upstream is `good`, a silent replica and a resetting one (1 s response-header
/// timeout); the two bad replicas' ports.
async fn good_silent_resetting(dir: &Path, good: &Upstream) -> (Edge, u16, u16) {
    let silent = bad_replica(false).await;
    let resetting = bad_replica(true).await;
    let e = edge(
        dir,
        "",
        &format!(
            "    upstream:\n      urls: [\"{}\", \"http://127.0.0.1:{silent}\", \"http://127.0.0.1:{resetting}\"]\n      response_header_timeout: 1s\n",
            good.url()
        ),
    )
    .await;
    (e, silent, resetting)
}

#[tokio::test]
async fn a_replica_that_takes_requests_and_never_answers_or_resets_leaves_the_round_robin() {
    let tmp = tempfile::tempdir().unwrap();
    let good = Upstream::start("good").await;
    let (e, silent, resetting) = good_silent_resetting(tmp.path(), &good).await;
    // A POST is not replayed (it may have run): round robin, one to each replica: the good
    // one's 200, the silent one's 504 at the timeout, the resetting one's 502; each bad one
    // then leaves the round robin.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let head = "POST /x HTTP/1.1\r\nhost: h.test\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n";
        let raw = e.raw_exchange(head, &[b"{}"], Duration::ZERO).await;
        statuses.push(raw_status(&raw));
    }
    assert_eq!(statuses, [200, 504, 502]);
    let down = |port: u16| {
        format!("mcp_edge_upstream_replica_up{{host=\"h.test\",replica=\"http://127.0.0.1:{port}\",route=\"/\"}}")
    };
    assert_eq!(e.metric(&down(silent)).await, 0.0);
    assert_eq!(e.metric(&down(resetting)).await, 0.0);
    let log = e.log();
    assert_eq!(
        log.matches("it took a request and did not answer").count(),
        2,
        "{log}"
    );
    // Idempotent requests meanwhile: every one answered by `good`.
    for i in 0..6 {
        let raw = get_from(&e, "127.0.0.1", "/x", "").await;
        assert_eq!(raw_status(&raw), 200, "request {i}: {raw}");
        assert_eq!(raw_json(&raw)["replica"], "good", "request {i}");
    }
}

#[tokio::test]
async fn an_idempotent_request_on_a_silent_or_resetting_replica_is_retried_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let good = Upstream::start("good").await;
    let (e, _, _) = good_silent_resetting(tmp.path(), &good).await;
    // Round robin lands requests 2 and 3 on the bad replicas: each is retried on another and
    // answered; the bad ones leave the round robin.
    for i in 0..9 {
        let raw = get_from(&e, "127.0.0.1", "/x", "").await;
        assert_eq!(raw_status(&raw), 200, "request {i}: {raw}");
        assert_eq!(raw_json(&raw)["replica"], "good", "request {i}");
    }
    assert_eq!(
        e.log()
            .matches("it took a request and did not answer")
            .count(),
        2,
        "{}",
        e.log()
    );
}

/// TLS to the admin listener trusting `ca`, presenting `identity` (chain, key) if given.
fn admin_tls(ca: &TestCa, identity: Option<(&str, &str)>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder().with_root_certificates(ca.root_store());
    match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// An HTTPS client of the admin listener ([`admin_tls`]).
fn admin_client(ca: &TestCa, identity: Option<(&str, &str)>) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(admin_tls(ca, identity))
        .build()
        .unwrap()
}

/// `mcp-edge health --config FILE`: whether it succeeded, and what it printed.
fn health(config: &Path) -> (bool, String) {
    outcome(
        std::process::Command::new(edge_bin())
            .args(["health", "--config"])
            .arg(config),
    )
}

#[tokio::test]
async fn the_admin_listener_can_serve_tls_and_require_a_client_certificate() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let up = Upstream::start("a").await;
    let server_ca = TestCa::new("admin listener CA");
    let scrapers = TestCa::new("scrapers");
    let stranger = TestCa::new("stranger");
    let (cert, key) = server_ca.leaf(&["127.0.0.1"]);
    let (other_cert, other_key) = server_ca.leaf(&["127.0.0.1"]);
    for (name, text) in [
        ("admin.pem", cert.as_str()),
        ("admin.key", key.as_str()),
        ("other.pem", other_cert.as_str()),
        ("other.key", other_key.as_str()),
        ("scrapers.pem", &scrapers.pem()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let ports = Ports::new();
    let config = |cert: &str, key: &str, ca: &str| {
        format!(
            "{}storage: {}\nadmin:\n  tls: {{ cert: {cert}, key: {key}, client_ca: {ca} }}\nhosts:\n  h.test:\n    tls: none\n    upstream: \"{}\"\n",
            ports.yaml(),
            dir.join("certs").display(),
            up.url()
        )
    };
    std::fs::write(
        dir.join("edge.yaml"),
        config("admin.pem", "admin.key", "scrapers.pem"),
    )
    .unwrap();
    let mut e = Edge::spawn(
        &edge_bin(),
        dir,
        &ports,
        &[],
        "edge.log",
        std::process::Stdio::null(),
    );
    // `mcp-edge health` speaks TLS to it, trusting the configured certificate: ready soon.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = health(&e.config_path);
        if ok {
            assert!(text.contains("/readyz: ready"), "{text}");
            break;
        }
        assert!(
            e.wait_exit(Duration::ZERO).is_none(),
            "exited:\n{}",
            e.log()
        );
        assert!(Instant::now() < deadline, "{text}\n{}", e.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!e.log().contains("serves /metrics and /status to anyone"));

    let base = format!("https://127.0.0.1:{}", ports.metrics);
    let scraper = scrapers.leaf(&["prometheus"]);
    let with_cert = admin_client(&server_ca, Some((&scraper.0, &scraper.1)));
    let without = admin_client(&server_ca, None);
    for path in ["/metrics", "/status"] {
        let ok = with_cert.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{path}");
        let refused = without.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{path}");
        assert!(refused
            .text()
            .await
            .unwrap()
            .contains("admin.tls.client_ca"));
    }
    // Probes need no certificate.
    for path in ["/healthz", "/readyz"] {
        let r = without.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // No session is resumed: each connection's certificate is verified anew.
    let scraper_tls = admin_tls(&server_ca, Some((&scraper.0, &scraper.1)));
    let kinds = handshake_kinds(
        ([127, 0, 0, 1], ports.metrics).into(),
        "127.0.0.1",
        scraper_tls,
        3,
    )
    .await;
    assert!(
        kinds.iter().all(|k| *k == rustls::HandshakeKind::Full),
        "{kinds:?}"
    );

    // A certificate from another CA: the handshake is refused. Plain HTTP: no answer.
    let forged = stranger.leaf(&["prometheus"]);
    let r = admin_client(&server_ca, Some((&forged.0, &forged.1)))
        .get(format!("{base}/metrics"))
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    let plain = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports.metrics)).await;
    assert!(plain.is_err(), "{plain:?}");

    // A reload adds a token: both are needed now (the certificate alone gets 401). A reload
    // that drops admin.tls changes nothing until a restart, and says so.
    let token = "mcpe_scraper-token-0123456789";
    let hash: String = {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let reloaded = |n: usize| {
        let done = e.log().matches("configuration reloaded").count() >= n;
        async move { done.then_some(()) }
    };
    std::fs::write(
        dir.join("edge.yaml"),
        config("admin.pem", "admin.key", "scrapers.pem")
            .replace("admin:\n", &format!("admin:\n  token: \"sha256:{hash}\"\n")),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the reload adding a token", || {
        reloaded(1)
    })
    .await;
    let cert_only = with_cert
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(cert_only.status(), 401);
    let both = with_cert
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 200);
    let token_only = without
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(token_only.status(), 403);
    std::fs::write(
        dir.join("edge.yaml"),
        format!(
            "{}storage: {}\nhosts:\n  h.test:\n    tls: none\n    upstream: \"{}\"\n",
            ports.yaml(),
            dir.join("certs").display(),
            up.url()
        ),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "the reload dropping admin", || {
        reloaded(2)
    })
    .await;
    assert!(
        e.log()
            .contains("admin.tls changed: it takes effect only after a restart"),
        "{}",
        e.log()
    );
    let still = without.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(still.status(), 403, "a reload opened /metrics");

    // Given the address (no file read: the edits above do not matter), over TLS with the
    // listener's certificate; plain HTTP to a TLS listener fails.
    let at = format!("127.0.0.1:{}", ports.metrics);
    let by_address = |args: &[&str]| {
        std::process::Command::new(edge_bin())
            .args(["health", "--address", &at])
            .args(args)
            .output()
            .unwrap()
    };
    let pinned = dir.join("admin.pem");
    let ok = by_address(&["--tls-cert", pinned.to_str().unwrap()]);
    assert!(ok.status.success(), "{ok:?}");
    assert!(!by_address(&[]).status.success());

    // A listener that accepts and never answers: the probe gives up within its timeout, TLS
    // handshake included.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_at = silent.local_addr().unwrap().to_string();
    for tls in [true, false] {
        let mut cmd = std::process::Command::new(edge_bin());
        cmd.args(["health", "--timeout", "1", "--address", &silent_at]);
        if tls {
            cmd.args(["--tls-cert", pinned.to_str().unwrap()]);
        }
        let started = Instant::now();
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "tls {tls}: {:?}",
            started.elapsed()
        );
    }
    drop(silent);

    // The health probe takes no other certificate than the configured one.
    std::fs::write(
        dir.join("pinned-other.yaml"),
        config("other.pem", "other.key", "scrapers.pem"),
    )
    .unwrap();
    let (ok, text) = health(&dir.join("pinned-other.yaml"));
    assert!(
        !ok && text.contains("not the certificate of admin.tls.cert"),
        "{text}"
    );

    // Bad files are named by their key.
    let (ok, text) = run_check(dir, &config("admin.pem", "admin.key", "missing.pem"));
    assert!(!ok && text.contains("admin.tls.client_ca"), "{text}");
    let (ok, text) = run_check(dir, &config("admin.pem", "other.pem", "scrapers.pem"));
    assert!(!ok && text.contains("admin.tls.key"), "{text}");
    let (ok, text) = run_check(dir, &config("admin.pem", "other.key", "scrapers.pem"));
    assert!(
        !ok && text.contains("does not belong to the certificate"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

/// An HTTP/1 request for an endless stream from `from` to host `h.test`, once its first event
/// came: its upstream connection is in use while the connection is held.
async fn hold_stream(edge: &Edge, from: &str) -> tokio::net::TcpStream {
    let mut s = connect_from(ip(from), edge.http).await.unwrap();
    s.write_all(b"GET /forever HTTP/1.1\r\nhost: h.test\r\n\r\n")
        .await
        .unwrap();
    first_event(&mut s).await;
    s
}

/// Reads `s` until the first event of a stream arrives.
async fn first_event(s: &mut tokio::net::TcpStream) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data:") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the stream's first event")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The descriptor budget gives each client connection one upstream connection; HTTP/2 streams
/// could hold one each. So the upstream connections in use are held to the connection caps:
/// one client address's (its HTTP/2 streams and HTTP/1 requests alike) to
/// `connections_per_address`, all of them to `connections`. One more gets 503 with
/// Retry-After and no upstream connection; other addresses are served meanwhile, and a place
/// is free again once its request ends (refused requests hold none).
#[tokio::test]
async fn upstream_connections_in_use_are_held_to_the_connection_caps() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Upstream::start("a").await;
    let (edge, ca) = tls_host_edge(
        tmp.path(),
        "trusted_proxies: [127.0.0.4/32]\nlimits:\n  connections: 4\n  connections_per_address: 2\n",
        &up.url(),
        &format!("  h.test:\n    tls: none\n    upstream: \"{}\"\n", up.url()),
    )
    .await;
    let refused = |reason: &str| {
        format!("mcp_edge_requests_refused_total{{host=\"{{}}\",reason=\"{reason}\"}}")
    };
    let in_use = || edge.metric("mcp_edge_upstream_connections_in_use");

    // 127.0.0.1: two HTTP/2 streams on one connection fill its share.
    let client = edge.client(ca.root_store(), &["a.test"]);
    let url = format!("https://a.test:{}/forever", edge.https.port());
    let mut streams = Vec::new();
    for _ in 0..2 {
        let s = client.get(&url).send().await.unwrap();
        assert_eq!(s.version(), reqwest::Version::HTTP_2);
        assert_eq!(s.status(), 200);
        streams.push(s);
    }
    assert_eq!(up.open_streams(), 2);
    assert_eq!(in_use().await, 2.0);
    // A third stream, and an HTTP/1 request from the same address: refused, no upstream
    // connection.
    for _ in 0..3 {
        let over = client.get(&url).send().await.unwrap();
        assert_eq!(over.status(), 503);
        assert_eq!(over.headers()["retry-after"], "1");
    }
    let h1 = get_from(&edge, "127.0.0.1", "/x", "").await;
    assert_eq!(raw_status(&h1), 503, "{h1}");
    let per_address = refused("upstream_connections_per_address");
    assert_eq!(edge.metric(&per_address.replace("{}", "a.test")).await, 3.0);
    assert_eq!(edge.metric(&per_address.replace("{}", "h.test")).await, 1.0);
    assert_eq!(up.open_streams(), 2);
    assert_eq!(in_use().await, 2.0);

    // 127.0.0.2 is served: two HTTP/1 streams of its own fill the total.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(hold_stream(&edge, "127.0.0.2").await);
    }
    assert_eq!(in_use().await, 4.0);
    // 127.0.0.3, with no place of its own in use: the total refuses it.
    let over = get_from(&edge, "127.0.0.3", "/x", "").await;
    assert_eq!(raw_status(&over), 503, "{over}");
    let total = refused("upstream_connections").replace("{}", "h.test");
    assert_eq!(edge.metric(&total).await, 1.0);

    // Requests that end give their places back: 127.0.0.3 and 127.0.0.1 are served again.
    drop(held);
    drop(streams.remove(0));
    wait_for(
        Duration::from_secs(10),
        "the streams' end upstream",
        || async { (up.open_streams() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        raw_status(&get_from(&edge, "127.0.0.3", "/x", "").await),
        200
    );
    let again = client.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(in_use().await, 2.0);

    // A trusted proxy's own requests (it names no client) count toward the total only: three
    // streams from it, past the per-address two.
    drop((again, streams));
    wait_for(Duration::from_secs(10), "no place in use", || async {
        (in_use().await == 0.0).then_some(())
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hold_stream(&edge, "127.0.0.4").await);
    }
    assert_eq!(in_use().await, 3.0);
}

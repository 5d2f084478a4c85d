//! HTTPS upstreams end to end: real TLS upstreams with certificates made at test time (by the
//! `openssl` command line where the issue is what openssl makes), the real proxy in front.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::Duration;

use mcp_edge_tests::tls_front::TlsFront;
use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

/// `openssl req -x509` with its defaults: v3, `CA:TRUE`, CN only, no SAN.
fn openssl_self_signed(dir: &Path, name: &str, cn: &str) -> (String, String) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "30",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    (
        read(dir, &format!("{name}.pem")),
        read(dir, &format!("{name}.key")),
    )
}

/// A version-1 RSA certificate with only a CN (`openssl x509 -req -signkey`, no extensions).
fn openssl_v1_rsa(dir: &Path, name: &str, cn: &str) -> (String, String) {
    openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-signkey",
            &format!("{name}.key"),
            "-days",
            "30",
            "-out",
            &format!("{name}.pem"),
        ],
    );
    (
        read(dir, &format!("{name}.pem")),
        read(dir, &format!("{name}.key")),
    )
}

fn pin_of(cert_pem: &str) -> String {
    upstream::hex_sha256(&pem_to_der(cert_pem))
}

struct Case {
    name: &'static str,
    upstream_yaml: String,
}

/// One proxy with a plain (`tls: none`) host per case, each to its own HTTPS upstream.
async fn edge_with(dir: &Path, cases: &[Case]) -> (Edge, Ports) {
    let ports = Ports::new();
    let mut cfg = format!(
        "{}storage: {}\nhosts:\n",
        ports.yaml(),
        dir.join("certs").display()
    );
    for c in cases {
        cfg.push_str(&format!(
            "  {}:\n    tls: none\n    upstream:\n{}",
            c.name, c.upstream_yaml
        ));
    }
    let edge = Edge::start(dir, &ports, &cfg).await;
    (edge, ports)
}

async fn get(edge: &Edge, host: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{}{path}", edge.http))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

async fn reason_count(edge: &Edge, host: &str, reason: &str) -> Option<f64> {
    edge.try_metric(&format!(
        "mcp_edge_upstream_errors_total{{host=\"{host}\",reason=\"{reason}\""
    ))
    .await
}

#[tokio::test]
async fn pins_ca_and_client_certificates_decide_who_is_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let up = Upstream::start("r1").await;

    // openssl req -x509 (CA:TRUE, no SAN), pinned.
    let (ss_cert, ss_key) = openssl_self_signed(d, "ss", "nas.local");
    let ss = TlsFront::start(&ss_cert, &ss_key, None, up.addr).await;
    // A v1 RSA certificate with only a CN, pinned.
    let (v1_cert, v1_key) = openssl_v1_rsa(d, "v1", "appliance");
    let v1 = TlsFront::start(&v1_cert, &v1_key, None, up.addr).await;
    // A private CA and a leaf for 127.0.0.1.
    let ca = TestCa::new("internal CA");
    let (leaf, leaf_key) = ca.leaf(&["127.0.0.1"]);
    let private = TlsFront::start(&leaf, &leaf_key, None, up.addr).await;
    // Mutual TLS: the upstream wants a client certificate from its client CA.
    let client_ca = TestCa::new("client CA");
    let (client_cert, client_key) = client_ca.leaf(&["edge.client"]);
    let mtls = TlsFront::start(&leaf, &leaf_key, Some(&client_ca.pem()), up.addr).await;

    let ca_file = write(d, "internal-ca.pem", &ca.pem());
    let other_ca = write(d, "other-ca.pem", &TestCa::new("someone else").pem());
    let cc = write(d, "client.pem", &client_cert);
    let ck = write(d, "client.key", &client_key);
    let wrong_pin = pin_of(&v1_cert);
    let cases = [
        Case {
            name: "pinned.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      pin_sha256: [\"{}\"]\n",
                ss.url(),
                pin_of(&ss_cert)
            ),
        },
        Case {
            name: "wrongpin.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      pin_sha256: [\"{wrong_pin}\"]\n",
                ss.url()
            ),
        },
        Case {
            name: "v1.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      pin_sha256: [\"{}\"]\n      server_name: appliance\n",
                v1.url(),
                pin_of(&v1_cert)
            ),
        },
        Case {
            name: "ca.test",
            upstream_yaml: format!("      urls: [{}]\n      ca: {ca_file}\n", private.url()),
        },
        Case {
            name: "otherca.test",
            upstream_yaml: format!("      urls: [{}]\n      ca: {other_ca}\n", private.url()),
        },
        Case {
            name: "wrongname.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      ca: {ca_file}\n      server_name: db.internal\n",
                private.url()
            ),
        },
        Case {
            name: "system.test",
            upstream_yaml: format!("      urls: [{}]\n", private.url()),
        },
        Case {
            name: "mtls.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      ca: {ca_file}\n      client_cert: {cc}\n      client_key: {ck}\n",
                mtls.url()
            ),
        },
        Case {
            name: "nocert.test",
            upstream_yaml: format!("      urls: [{}]\n      ca: {ca_file}\n", mtls.url()),
        },
    ];
    let (edge, _) = edge_with(d, &cases).await;

    for host in ["pinned.test", "v1.test", "ca.test", "mtls.test"] {
        let r = get(&edge, host, "/hello").await;
        assert_eq!(r.status(), 200, "{host}: {}", edge.log());
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["path"], "/hello", "{host}");
    }
    // Each of these reaches an upstream a host above reached already (pinned.test's, ca.test's,
    // mtls.test's): the connection parked for that host, with its trust, is never taken for
    // another trust (the idle pool keys by it).
    for (host, reason) in [
        ("wrongpin.test", "tls_pin_mismatch"),
        ("otherca.test", "tls_unknown_issuer"),
        ("system.test", "tls_unknown_issuer"),
        ("wrongname.test", "tls_name_mismatch"),
        ("nocert.test", "tls_client_cert_refused"),
    ] {
        let r = get(&edge, host, "/hello").await;
        assert_eq!(r.status(), 502, "{host}");
        // Counted when the request is logged, just after the response went out.
        wait_for(Duration::from_secs(5), reason, || async {
            (reason_count(&edge, host, reason).await? >= 1.0).then_some(())
        })
        .await;
    }
    let log = edge.log();
    assert!(
        log.contains("the certificate matches none of pin_sha256"),
        "{log}"
    );
}

#[tokio::test]
async fn two_pins_allow_rotation_and_streams_flow_through_a_pinned_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let up = Upstream::start("r1").await;
    let (old_cert, old_key) = openssl_self_signed(d, "old", "svc.internal");
    let (new_cert, new_key) = openssl_self_signed(d, "new", "svc.internal");
    let front = TlsFront::start(&old_cert, &old_key, None, up.addr).await;
    let cases = [Case {
        name: "rot.test",
        upstream_yaml: format!(
            "      urls: [{}]\n      server_name: svc.internal\n      pin_sha256: [\"{}\", \"{}\"]\n",
            front.url(),
            pin_of(&old_cert),
            pin_of(&new_cert)
        ),
    }];
    let (edge, _) = edge_with(d, &cases).await;
    assert_eq!(get(&edge, "rot.test", "/a").await.status(), 200);

    // SSE through the pinned upstream: each event arrives on its own, not buffered.
    let resp = get(&edge, "rot.test", "/ticks?n=4&gap_ms=250").await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    let mut arrivals = Vec::new();
    while let Some((_, at)) = sse.next_event().await {
        arrivals.push(at);
    }
    assert_eq!(arrivals.len(), 4);
    for w in arrivals.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(100), "{arrivals:?}");
    }

    // The upstream rotates to the second pinned certificate: new connections still work.
    front.replace_certificate(&new_cert, &new_key);
    // Concurrent requests: more than the pooled connection, so new handshakes happen.
    let requests = (0..8).map(|i| {
        let edge = &edge;
        async move { get(edge, "rot.test", &format!("/b{i}")).await.status() }
    });
    for status in futures::future::join_all(requests).await {
        assert_eq!(status, 200);
    }
    assert!(
        front.handshakes() >= 1,
        "new connections saw the new certificate"
    );
    // A certificate outside the pins is refused.
    let (third_cert, third_key) = openssl_self_signed(d, "third", "svc.internal");
    let refused = TlsFront::start(&third_cert, &third_key, None, up.addr).await;
    let cases = [Case {
        name: "rot.test",
        upstream_yaml: format!(
            "      urls: [{}]\n      server_name: svc.internal\n      pin_sha256: [\"{}\", \"{}\"]\n",
            refused.url(),
            pin_of(&old_cert),
            pin_of(&new_cert)
        ),
    }];
    let second = d.join("second");
    std::fs::create_dir_all(&second).unwrap();
    let (edge2, _) = edge_with(&second, &cases).await;
    assert_eq!(get(&edge2, "rot.test", "/c").await.status(), 502);
}

/// Connections to an HTTPS upstream are pooled like plain ones: requests after the first reuse
/// the TLS connection instead of paying a handshake each (pinned and private-CA upstreams alike),
/// and the pool holds as many idle connections as were needed at once.
#[tokio::test]
async fn pinned_upstream_reuses_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let up = Upstream::start("r1").await;
    let (cert, key) = openssl_self_signed(d, "ss", "svc.internal");
    let pinned = TlsFront::start(&cert, &key, None, up.addr).await;
    let ca = TestCa::new("internal CA");
    let (leaf, leaf_key) = ca.leaf(&["127.0.0.1"]);
    let private = TlsFront::start(&leaf, &leaf_key, None, up.addr).await;
    let ca_file = write(d, "internal-ca.pem", &ca.pem());
    let cases = [
        Case {
            name: "pinned.test",
            upstream_yaml: format!(
                "      urls: [{}]\n      server_name: svc.internal\n      pin_sha256: [\"{}\"]\n",
                pinned.url(),
                pin_of(&cert)
            ),
        },
        Case {
            name: "ca.test",
            upstream_yaml: format!("      urls: [{}]\n      ca: {ca_file}\n", private.url()),
        },
    ];
    let (edge, _) = edge_with(d, &cases).await;

    for (host, front) in [("pinned.test", &pinned), ("ca.test", &private)] {
        // One client connection, one request at a time: one upstream connection does it all.
        // (the edge parks the upstream connection just after the response, so a request can
        // now and then find it not yet back: a second handshake, never twenty.)
        for i in 0..20 {
            assert_eq!(get(&edge, host, &format!("/s{i}")).await.status(), 200);
        }
        let sequential = front.handshakes();
        assert!(
            (1..=2).contains(&sequential),
            "{host}: {sequential} handshakes for 20 sequential requests"
        );

        // Four at a time, five rounds: the pool keeps (up to) four idle connections between rounds.
        for round in 0..5 {
            let requests = (0..4).map(|i| {
                let edge = &edge;
                async move { get(edge, host, &format!("/c{round}-{i}")).await.status() }
            });
            for status in futures::future::join_all(requests).await {
                assert_eq!(status, 200);
            }
        }
        let concurrent = front.handshakes() - sequential;
        assert!(
            concurrent <= 8,
            "{host}: {concurrent} handshakes for 5 rounds of 4 concurrent requests"
        );
    }
}

/// Pooled upstream connections are keyed by the contents of the trust they were made under,
/// not by file paths: after `ca.pem` is replaced in place and the configuration reloaded, the
/// connection verified under the old CA is not reused (the request fails the new trust), while
/// a reload that leaves the trust as it was keeps reusing it.
#[tokio::test]
async fn a_reload_that_changes_the_ca_file_in_place_never_reuses_old_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let up = Upstream::start("r1").await;
    let ca = TestCa::new("internal CA");
    let other = TestCa::new("another CA");
    let (leaf, leaf_key) = ca.leaf(&["127.0.0.1"]);
    let front = TlsFront::start(&leaf, &leaf_key, None, up.addr).await;
    let ca_file = write(d, "ca.pem", &ca.pem());
    let cases = [Case {
        name: "ca.test",
        upstream_yaml: format!("      urls: [{}]\n      ca: {ca_file}\n", front.url()),
    }];
    let (edge, _) = edge_with(d, &cases).await;
    let reloads = |n: f64| {
        let edge = &edge;
        async move {
            wait_for(Duration::from_secs(10), "the reload", || async move {
                (edge
                    .try_metric("mcp_edge_config_reloads_total{result=\"ok\"}")
                    .await?
                    >= n)
                    .then_some(())
            })
            .await
        }
    };

    assert_eq!(get(&edge, "ca.test", "/a").await.status(), 200);
    assert_eq!(front.handshakes(), 1);

    // Accept twin: the same trust after a reload reuses the pooled connection.
    edge.sighup();
    reloads(1.0).await;
    assert_eq!(get(&edge, "ca.test", "/b").await.status(), 200);
    assert_eq!(
        front.handshakes(),
        1,
        "same trust: the pooled connection is reused"
    );

    // Reject: another CA in the same file. The old connection must not carry the request.
    std::fs::write(d.join("ca.pem"), other.pem()).unwrap();
    edge.sighup();
    reloads(2.0).await;
    let r = get(&edge, "ca.test", "/c").await;
    assert_eq!(
        r.status(),
        502,
        "a connection made under the old CA was reused"
    );
    wait_for(Duration::from_secs(5), "the TLS reason", || async {
        (reason_count(&edge, "ca.test", "tls_unknown_issuer").await? >= 1.0).then_some(())
    })
    .await;
}

/// What `mcp-edge upstream-cert URL` prints (it must succeed).
async fn upstream_cert(url: &str) -> String {
    let (bin, url) = (edge_bin(), url.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["upstream-cert", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn upstream_cert_prints_the_chain_fingerprint_and_a_pin_snippet() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let up = Upstream::start("r1").await;
    let (cert, key) = openssl_self_signed(d, "ss", "nas.local");
    let front = TlsFront::start(&cert, &key, None, up.addr).await;
    let text = upstream_cert(&front.url()).await;
    let pin = pin_of(&cert);
    assert!(text.contains(&format!("pin_sha256: [\"{pin}\"]")), "{text}");
    let colons = pin
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(text.contains(&colons), "{text}");
    assert!(text.contains("CN=nas.local"), "{text}");
    assert!(text.contains("self-signed: yes (CA:TRUE)"), "{text}");
    // Connected by IP: the certificate does not name it.
    assert!(
        text.contains("WARNING: the certificate does not name 127.0.0.1"),
        "{text}"
    );

    // A certificate with the IP in its SAN: shown as an address, no warning.
    let ca = TestCa::new("internal CA");
    let (leaf, leaf_key) = ca.leaf(&["127.0.0.1"]);
    let named = TlsFront::start(&leaf, &leaf_key, None, up.addr).await;
    let text = upstream_cert(&named.url()).await;
    assert!(text.contains("SAN:         127.0.0.1"), "{text}");
    assert!(!text.contains("does not name"), "{text}");
}

//! Certificates beyond HTTP-01, against pebble 2.10 (ARI, profiles, IP identifiers): TLS-ALPN-01
//! with port 80 closed, an IP-address host, the CA's profile list, the runaway guard.
#![forbid(unsafe_code)]

use std::time::Duration;

use mcp_edge_tests::pebble::Pebble;
use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

const ACME_TLS: &[u8] = b"acme-tls/1";

/// A listen block without port 80.
fn listen_without_80(ports: &Ports) -> String {
    format!(
        "listen:\n  http: none\n  https: \"127.0.0.1:{}\"\n  metrics: \"127.0.0.1:{}\"\nwatch_interval: 200ms\nshutdown_grace: 0s\n",
        ports.https, ports.metrics
    )
}

fn config(listen: &str, storage: &std::path::Path, acme: &str, hosts: &str) -> String {
    format!(
        "{listen}storage: {}\n{acme}hosts:\n{hosts}",
        storage.display()
    )
}

fn lifetime(der: &[u8]) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

fn has_acme_identifier(der: &[u8]) -> bool {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.extensions()
        .iter()
        .any(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
}

#[tokio::test]
async fn tls_alpn_01_issues_with_port_80_closed_and_answers_only_validations() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let up = Upstream::start("r1").await;
    // pebble validates on the proxy's TLS listener; nothing listens on its HTTP-01 port.
    let mut pebble = Pebble::with_ports(dir.path(), free_port(), ports.https);
    pebble.start().await;
    let yaml = config(
        &listen_without_80(&ports),
        &dir.path().join("certs"),
        &pebble.acme_yaml(""),
        &format!("  a.test:\n    tls: acme\n    upstream: {}\n", up.url()),
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    let roots = pebble.issuing_root().await;
    let leaf = pebble.wait_served(&edge, "a.test", 30).await;
    assert_eq!(san_names(&leaf), vec!["a.test"]);
    assert!(edge.log().contains("tls-alpn-01"), "{}", edge.log());

    // Port 80 is not bound: `listen.http: none`.
    assert!(std::net::TcpStream::connect(("127.0.0.1", ports.http)).is_err());

    // The validation is over: an acme-tls/1-only handshake gets nothing (reject twin), and a
    // client offering acme-tls/1 next to h2 is an ordinary client: the CA's certificate, h2.
    let err = tls_handshake_unverified(edge.https, "a.test", &[ACME_TLS]).await;
    assert!(
        err.is_err(),
        "a challenge certificate after validation: {err:?}"
    );
    let (leaf2, proto) = tls_handshake_unverified(edge.https, "a.test", &[b"h2", ACME_TLS])
        .await
        .unwrap();
    assert_eq!(leaf2, leaf);
    assert!(!has_acme_identifier(&leaf2));
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
    // And requests are served as before.
    let r = edge
        .client(roots, &["a.test"])
        .get(format!("https://a.test:{}/x", ports.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = edge.metrics_text().await;
    assert!(
        metrics.contains("mcp_edge_tls_handshake_failures_total{reason=\"acme_tls_unknown\"}"),
        "the refused validation handshake is counted"
    );
    // How the certificate is obtained, and when the manager looks next, as metrics.
    assert!(
        metrics.contains(&format!(
            "mcp_edge_acme_certificate_info{{ca=\"{}\",challenge=\"tls-alpn-01\",host=\"a.test\",profile=\"\"}} 1",
            pebble.directory()
        )),
        "{metrics}"
    );
    assert!(metrics.contains("mcp_edge_acme_next_check_seconds{host=\"a.test\"}"));
}

#[tokio::test]
async fn an_ip_address_host_is_certified_over_tls_alpn_01_and_served_without_sni() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let up = Upstream::start("r1").await;
    let mut pebble = Pebble::with_ports(dir.path(), free_port(), ports.https);
    pebble.start().await;
    let yaml = config(
        &listen_without_80(&ports),
        &dir.path().join("certs"),
        &pebble.acme_yaml("  profile: shortlived\n"),
        &format!("  127.0.0.1:\n    tls: acme\n    upstream: {}\n", up.url()),
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    let roots = pebble.issuing_root().await;
    // A client connecting to an IP address sends no SNI: the IP host's certificate, verified
    // for the address.
    let leaf = wait_for(
        Duration::from_secs(30),
        "a certificate for 127.0.0.1",
        || {
            let edge = &edge;
            let roots = roots.clone();
            async move {
                let (leaf, _, _) = edge.handshake(None, roots.clone(), &[]).await.ok()?;
                let verified = tls_handshake(edge.https, Some("127.0.0.1"), roots, &[]).await;
                verified.ok().map(|_| leaf)
            }
        },
    )
    .await;
    assert_eq!(san_names(&leaf), vec!["127.0.0.1"]);
    // The shortlived profile: 6 days.
    assert_eq!(lifetime(&leaf), 518_400 - 1, "{}", lifetime(&leaf));
}

#[tokio::test]
async fn a_profile_the_ca_does_not_offer_is_refused_by_check_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let mut pebble = Pebble::new(dir.path(), ports.http);
    pebble.start().await;
    let hosts = "  a.test:\n    tls: acme\n    upstream: http://127.0.0.1:9\n";
    let storage = dir.path().join("certs");
    let bad = config(
        &ports.yaml(),
        &storage,
        &pebble.acme_yaml("  profile: nonexistent\n"),
        hosts,
    );
    let (ok, out) = run_check(dir.path(), &bad);
    assert!(!ok, "{out}");
    assert!(
        out.contains("acme.profile")
            && out.contains("\"nonexistent\"")
            && out.contains("default, shortlived"),
        "{out}"
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, &bad).unwrap();
    let err = start_refused(&path);
    assert!(err.contains("default, shortlived"), "{err}");

    // The twin: a profile the CA offers passes.
    let good = config(
        &ports.yaml(),
        &storage,
        &pebble.acme_yaml("  profile: shortlived\n"),
        hosts,
    );
    let (ok, out) = run_check(dir.path(), &good);
    assert!(ok, "{out}");
    // With the CA unreachable, `check` says it could not ask, and passes.
    pebble.stop();
    let (ok, out) = run_check(dir.path(), &good);
    assert!(ok && out.contains("not checked"), "{out}");
}

#[tokio::test]
async fn the_runaway_guard_caps_orders_per_host_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    // Every validation fails: pebble looks for HTTP-01 answers on a port nobody listens on.
    let mut pebble = Pebble::new(dir.path(), free_port());
    pebble.start().await;
    let yaml = config(
        &ports.yaml(),
        &dir.path().join("certs"),
        &pebble.acme_yaml("  order_limit: 2/1h\n"),
        "  a.test:\n    tls: acme\n    upstream: http://127.0.0.1:9\n",
    );
    let refused = "mcp_edge_acme_orders_total{host=\"a.test\",result=\"refused\"}";
    let failed = "mcp_edge_acme_orders_total{host=\"a.test\",result=\"error\"}";
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    // retry_initial is 500ms: without the guard this would be a dozen orders in 10 s.
    wait_for(Duration::from_secs(30), "an order refused", || async {
        edge.try_metric(refused).await.filter(|v| *v >= 1.0)
    })
    .await;
    assert_eq!(edge.metric(failed).await, 2.0);
    assert!(edge
        .log()
        .contains("order limit reached: 2 orders for a.test within 1h"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(edge.metric(failed).await, 2.0, "no third order");
    drop(edge);

    // A restart does not start the count afresh.
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    wait_for(
        Duration::from_secs(30),
        "an order refused after restart",
        || async { edge.try_metric(refused).await.filter(|v| *v >= 1.0) },
    )
    .await;
    assert_eq!(edge.try_metric(failed).await.unwrap_or(0.0), 0.0);
    let report = certs_report(&edge.config_path);
    assert!(report.contains("order limit reached"), "{report}");
}

#[test]
fn challenge_settings_that_cannot_work_are_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let acme = "acme:\n  directory: https://127.0.0.1:1/dir\n  contact: [ops@example.com]\n  accept_terms: true\n";
    let storage = dir.path().join("certs");
    let host = |extra: &str| {
        format!("  a.test:\n    tls: acme\n{extra}    upstream: http://127.0.0.1:9\n")
    };
    // HTTP-01 without port 80, globally and per host.
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &listen_without_80(&ports),
            &storage,
            &format!("{acme}  challenge: http-01\n"),
            &host(""),
        ),
    );
    assert!(
        !ok && out.contains("acme.challenge") && out.contains("needs port 80"),
        "{out}"
    );
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &listen_without_80(&ports),
            &storage,
            acme,
            &host("    challenge: http-01\n"),
        ),
    );
    assert!(!ok && out.contains("hosts.\"a.test\".challenge"), "{out}");
    // A challenge type that does not exist.
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  challenge: http-02\n"),
            &host(""),
        ),
    );
    assert!(
        !ok && out.contains("expected http-01, tls-alpn-01 or dns-01"),
        "{out}"
    );
    // dns-01 without a provider; a wildcard with another challenge; dns-01 for an IP.
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  challenge: dns-01\n"),
            &host(""),
        ),
    );
    assert!(
        !ok && out.contains("acme.dns") && out.contains("needs `acme.dns`"),
        "{out}"
    );
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            acme,
            "  \"*.w.test\":\n    tls: acme\n    challenge: http-01\n    upstream: http://127.0.0.1:9\n",
        ),
    );
    assert!(
        !ok && out.contains("a wildcard can be proved with dns-01 only"),
        "{out}"
    );
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  dns: {{ provider: exec, command: [/bin/true] }}\n"),
            "  127.0.0.1:\n    tls: acme\n    challenge: dns-01\n    upstream: http://127.0.0.1:9\n",
        ),
    );
    assert!(
        !ok && out.contains("dns-01 cannot prove an IP address"),
        "{out}"
    );
    // A TSIG secret that is not base64 is named, never printed; a missing provider key too.
    std::fs::write(dir.path().join("bad.key"), "not-base64-SECRETVALUE!\n").unwrap();
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  dns: {{ provider: rfc2136, server: 127.0.0.1, zone: test, key_name: k, key_file: bad.key }}\n"),
            &host("    challenge: dns-01\n"),
        ),
    );
    assert!(
        !ok && out.contains("acme.dns.key_file") && !out.contains("SECRETVALUE"),
        "{out}"
    );
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  dns: {{ provider: route99 }}\n"),
            &host(""),
        ),
    );
    assert!(!ok && out.contains("expected rfc2136 or exec"), "{out}");
    // A bad order limit.
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            &format!("{acme}  order_limit: 0/1h\n"),
            &host(""),
        ),
    );
    assert!(!ok && out.contains("acme.order_limit"), "{out}");
    // The twins: TLS-ALPN-01 without port 80 (the default there), HTTP-01 with it.
    let (ok, out) = run_check(
        dir.path(),
        &config(&listen_without_80(&ports), &storage, acme, &host("")),
    );
    assert!(ok, "{out}");
    let (ok, out) = run_check(
        dir.path(),
        &config(
            &ports.yaml(),
            &storage,
            acme,
            &host("    challenge: tls-alpn-01\n"),
        ),
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_renewal_window_moved_into_the_past_is_acted_on_within_one_check() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let up = Upstream::start("r1").await;
    let mut pebble = Pebble::new(dir.path(), ports.http);
    pebble.start().await;
    let storage = dir.path().join("certs");
    let yaml = config(
        &ports.yaml(),
        &storage,
        &pebble.acme_yaml("  renewal_check: 2s\n"),
        &format!("  a.test:\n    tls: acme\n    upstream: {}\n", up.url()),
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    let roots = pebble.issuing_root().await;
    let served = || {
        let roots = roots.clone();
        let edge = &edge;
        async move {
            edge.handshake(Some("a.test"), roots, &[])
                .await
                .ok()
                .map(|r| r.0)
        }
    };
    let first = wait_for(Duration::from_secs(30), "a certificate", served).await;
    // The CA's own window (around two thirds of the lifetime) is days away: nothing happens.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(served().await.unwrap(), first, "renewed without cause");
    assert_eq!(
        edge.metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"ok\"}")
            .await,
        1.0
    );

    // The CA's window is published, and where the next look stands.
    let window_start = "mcp_edge_acme_renewal_window_seconds{edge=\"start\",host=\"a.test\"}";
    assert!(edge.metric(window_start).await > 0.0);
    // The drill: the CA moves the window into the past.
    pebble
        .move_window_to_past(&storage.join("a.test.cert.pem"))
        .await;
    // Within one check (2 s) and an order.
    let renewed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(l) = served().await.filter(|l| *l != first) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not renewed within 20 s:\n{}", edge.log()));
    assert_eq!(san_names(&renewed), vec!["a.test"]);
    assert!(
        pebble.log().contains("is a replacement of"),
        "the new order names the certificate it replaces:\n{}",
        pebble.log()
    );
}

/// pebble resolving through a BIND primary for `test.`, and an edge whose `acme.dns` updates it.
struct DnsSetup {
    dir: tempfile::TempDir,
    ports: Ports,
    bind: bind::Bind,
    pebble: Pebble,
    up: Upstream,
}

impl DnsSetup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let bind = bind::Bind::start(dir.path(), "test").await;
        let mut pebble = Pebble::new(dir.path(), ports.http);
        pebble.use_dns(bind.addr);
        pebble.start().await;
        let up = Upstream::start("r1").await;
        bind.write_secret(&dir.path().join("tsig.key"));
        Self {
            dir,
            ports,
            bind,
            pebble,
            up,
        }
    }

    fn rfc2136(&self, key_file: &str) -> String {
        format!(
            "  dns:\n    provider: rfc2136\n    server: \"{}\"\n    zone: test\n    key_name: {}\n    key_file: {key_file}\n    propagation_timeout: 10s\n",
            self.bind.addr, self.bind.key_name
        )
    }

    fn config(&self, acme_extra: &str, hosts: &str) -> String {
        config(
            &self.ports.yaml(),
            &self.dir.path().join("certs"),
            &self.pebble.acme_yaml(acme_extra),
            &hosts.replace("UPSTREAM", &self.up.url()),
        )
    }
}

fn all_san_names(der: &[u8]) -> Vec<String> {
    let mut n = san_names(der);
    n.sort();
    n
}

#[tokio::test]
async fn dns_01_over_rfc_2136_certifies_a_wildcard_and_removes_its_records() {
    let s = DnsSetup::new().await;
    let yaml = s.config(
        &s.rfc2136("tsig.key"),
        "  \"*.w.test\":\n    tls: acme\n    aliases: [w.test]\n    upstream: UPSTREAM\n",
    );
    let edge = Edge::start(s.dir.path(), &s.ports, &yaml).await;
    let roots = s.pebble.issuing_root().await;
    let leaf = s.pebble.wait_served(&edge, "x.w.test", 30).await;
    assert_eq!(all_san_names(&leaf), vec!["*.w.test", "w.test"]);
    // The same certificate for the apex and any one label under it; requests are routed.
    let (apex, _, _) = edge
        .handshake(Some("w.test"), roots.clone(), &[])
        .await
        .unwrap();
    assert_eq!(apex, leaf);
    let r = edge
        .client(roots.clone(), &["y.w.test"])
        .get(format!("https://y.w.test:{}/x", s.ports.https))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Reject twin: two labels under the wildcard are not covered.
    assert!(edge
        .handshake(Some("a.b.w.test"), roots, &[])
        .await
        .is_err());
    // The proof records are gone again (removed after the validation).
    wait_for(
        Duration::from_secs(10),
        "the TXT records removed",
        || async {
            s.bind
                .txt("_acme-challenge.w.test")
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert!(
        edge.log().contains("challenge=\"dns-01\""),
        "{}",
        edge.log()
    );
}

#[tokio::test]
async fn dns_01_with_a_wrong_tsig_key_fails_cleanly_and_an_exec_hook_succeeds() {
    let s = DnsSetup::new().await;
    // Reject twin: a key BIND does not know. The update is refused, the order fails, nothing
    // is served, and the secret is never printed.
    std::fs::write(
        s.dir.path().join("wrong.key"),
        "d3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmcgd3Jvbmc=\n",
    )
    .unwrap();
    let bad = s.config(
        &s.rfc2136("wrong.key"),
        "  e.test:\n    tls: acme\n    challenge: dns-01\n    upstream: UPSTREAM\n",
    );
    let edge = Edge::start(s.dir.path(), &s.ports, &bad).await;
    wait_for(Duration::from_secs(20), "a refused update", || async {
        edge.log().contains("refused the update").then_some(())
    })
    .await;
    assert!(!edge.log().contains("d3Jvbmcg"), "the secret was printed");
    drop(edge);

    // An exec hook (nsupdate with the right key) does the same job.
    let hook = s.dir.path().join("hook.sh");
    let calls = s.dir.path().join("calls.log");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nset -e\necho \"$1 $2\" >> {calls}\nif [ \"$1\" = present ]; then op=add; ttl=60; else op=delete; ttl=; fi\nprintf 'server 127.0.0.1 {port}\\nzone test\\nupdate %s %s %s TXT \"%s\"\\nsend\\n' $op \"$2\" \"$ttl\" \"$3\" | nsupdate -y hmac-sha256:{name}:{secret}\n",
            calls = calls.display(),
            port = s.bind.addr.port(),
            name = s.bind.key_name,
            secret = s.bind.secret,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec = format!(
        "  dns:\n    provider: exec\n    command: [{}]\n    nameserver: \"{}\"\n    propagation_timeout: 10s\n",
        hook.display(),
        s.bind.addr
    );
    let good = s.config(
        &exec,
        "  e.test:\n    tls: acme\n    challenge: dns-01\n    upstream: UPSTREAM\n",
    );
    let edge = Edge::start(s.dir.path(), &s.ports, &good).await;
    let leaf = s.pebble.wait_served(&edge, "e.test", 30).await;
    assert_eq!(san_names(&leaf), vec!["e.test"]);
    wait_for(Duration::from_secs(10), "the hook's cleanup", || async {
        let log = std::fs::read_to_string(&calls).unwrap_or_default();
        log.contains("cleanup _acme-challenge.e.test.")
            .then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(log.contains("present _acme-challenge.e.test."), "{log}");
    assert!(s.bind.txt("_acme-challenge.e.test").is_empty());
}

#[tokio::test]
async fn the_second_ca_takes_over_while_the_first_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let up = Upstream::start("r1").await;
    // The first CA is down (never started); the second is there.
    let first = Pebble::new(&dir.path().join("first"), ports.http);
    let mut second = Pebble::new(&dir.path().join("second"), ports.http);
    second.start().await;
    let acme = format!(
        "acme:\n  directory:\n    - {{ url: \"{}\", directory_root: {} }}\n    - {{ url: \"{}\", directory_root: {} }}\n  contact: [ops@example.com]\n  accept_terms: true\n  retry_initial: 300ms\n  retry_max: 1s\n",
        first.directory(),
        first.directory_root().display(),
        second.directory(),
        second.directory_root().display()
    );
    let yaml = config(
        &ports.yaml(),
        &dir.path().join("certs"),
        &acme,
        &format!("  a.test:\n    tls: acme\n    upstream: {}\n", up.url()),
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    let leaf = second.wait_served(&edge, "a.test", 30).await;
    assert_eq!(san_names(&leaf), vec!["a.test"]);
    assert_eq!(
        edge.metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"error\"}")
            .await,
        2.0,
        "two failed orders at the first CA, then the second"
    );
    assert!(edge
        .log()
        .contains("the next order goes to the next one in acme.directory"));
    wait_for(
        Duration::from_secs(10),
        "the status naming the CA",
        || async {
            let report = certs_report(&edge.config_path);
            report
                .contains(&format!("issued by:    {}", second.directory()))
                .then_some(())
        },
    )
    .await;

    // Reject twins: a CA listed twice, and a list item that is not a CA.
    let twice = yaml.replace(&first.directory(), &second.directory());
    let (ok, out) = run_check(dir.path(), &twice);
    assert!(!ok && out.contains("is listed twice"), "{out}");
    let (ok, out) = run_check(
        dir.path(),
        &yaml.replace("    - {", "    - { nonsense: 1, "),
    );
    assert!(!ok && out.contains("acme.directory[0]"), "{out}");
}

#[tokio::test]
async fn clients_without_sni_get_the_certificate_of_the_address_they_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let up = Upstream::start("r1").await;
    let listen = format!(
        "listen:\n  http: \"127.0.0.1:{}\"\n  https: \"0.0.0.0:{}\"\n  metrics: \"127.0.0.1:{}\"\n",
        ports.http, ports.https, ports.metrics
    );
    let hosts = format!(
        "  127.0.0.1:\n    tls: self-signed\n    upstream: {u}\n  127.0.0.2:\n    tls: self-signed\n    upstream: {u}\n",
        u = up.url()
    );
    let yaml = format!(
        "{listen}storage: {}\nhosts:\n{hosts}",
        dir.path().join("certs").display()
    );
    let _edge = Edge::start(dir.path(), &ports, &yaml).await;
    let roots = TestCa::new("unused").root_store();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let addr: std::net::SocketAddr = format!("{ip}:{}", ports.https).parse().unwrap();
        let (leaf, _, _) = tls_handshake(addr, None, roots.clone(), &[]).await.unwrap();
        assert_eq!(san_names(&leaf), vec![ip.to_string()], "dialled {ip}");
        // And the connection's requests are that host's (not 421).
        let r = insecure_client()
            .get(format!("https://{ip}:{}/x", ports.https))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a request to {ip}");
    }
    // Reject twin: an address no host is named by, and no default host (two IP hosts).
    let other: std::net::SocketAddr = format!("127.0.0.3:{}", ports.https).parse().unwrap();
    assert!(tls_handshake(other, None, roots, &[]).await.is_err());
}

//! ACME end to end: the real binary against pebble with real HTTP-01 validation.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mcp_edge_tests::pebble::Pebble;
use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;

struct Setup {
    dir: tempfile::TempDir,
    ports: Ports,
    pebble: Pebble,
    up: Upstream,
}

impl Setup {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let pebble = Pebble::new(dir.path(), ports.http);
        let up = Upstream::start("r1").await;
        Self {
            dir,
            ports,
            pebble,
            up,
        }
    }

    fn storage(&self) -> std::path::PathBuf {
        self.dir.path().join("certs")
    }

    /// A configuration with `names` (`host` or `host+alias`) as ACME hosts.
    fn config(&self, hosts: &[&str], acme_extra: &str) -> String {
        let mut s = format!(
            "{}storage: {}\n{}hosts:\n",
            self.ports.yaml(),
            self.storage().display(),
            self.pebble.acme_yaml(acme_extra)
        );
        for h in hosts {
            let mut parts = h.split('+');
            let name = parts.next().unwrap();
            s.push_str(&format!("  {name}:\n    tls: acme\n"));
            let aliases: Vec<&str> = parts.collect();
            if !aliases.is_empty() {
                s.push_str(&format!("    aliases: [{}]\n", aliases.join(", ")));
            }
            s.push_str(&format!("    upstream: {}\n", self.up.url()));
        }
        s
    }

    async fn start_edge(&self, config: &str) -> Edge {
        Edge::start(self.dir.path(), &self.ports, config).await
    }
}

/// Waits until the metric sample `name` satisfies `ok`.
async fn wait_metric(edge: &Edge, name: &str, secs: u64, what: &str, ok: impl Fn(f64) -> bool) {
    wait_for(Duration::from_secs(secs), what, || async {
        edge.try_metric(name).await.filter(|v| ok(*v)).map(|_| ())
    })
    .await;
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn issues_per_host_serves_by_sni_and_a_restart_reuses_the_certificates() {
    let mut s = Setup::new().await;
    s.pebble.start().await;
    // bad.test resolves to an address where nothing listens: its validation fails.
    s.pebble.add_a("bad.test", "127.0.0.2").await;
    let config = s.config(&["a.test+www.a.test", "b.test", "bad.test"], "");
    let edge = s.start_edge(&config).await;

    let a = s.pebble.wait_served(&edge, "a.test", 30).await;
    let b = s.pebble.wait_served(&edge, "b.test", 30).await;
    assert_eq!(san_names(&a), vec!["a.test", "www.a.test"]);
    assert_eq!(san_names(&b), vec!["b.test"]);
    // The alias is served the host's certificate; the proxy answers through it.
    assert_eq!(
        served(&edge, "www.a.test", s.pebble.issuing_root().await).await,
        Some(a.clone())
    );
    let client = edge.client(s.pebble.issuing_root().await, &["a.test"]);
    let r = client
        .get(format!("https://a.test:{}/hello", edge.https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The failing host is served nothing, and its failure is visible with the CA's reason.
    wait_metric(
        &edge,
        "mcp_edge_acme_orders_total{host=\"bad.test\",result=\"error\"}",
        30,
        "bad.test's failure",
        |v| v >= 1.0,
    )
    .await;
    assert!(served(&edge, "bad.test", s.pebble.issuing_root().await)
        .await
        .is_none());
    let log = edge.log();
    assert!(
        log.contains("urn:ietf:params:acme:error:connection")
            && log.contains("next_attempt")
            && log.contains("bad.test"),
        "{log}"
    );

    // Storage: chain + key per host, keys and account credentials 0600.
    let st = s.storage();
    for h in ["a.test", "b.test"] {
        assert_eq!(mode(&st.join(format!("{h}.key.pem"))), 0o600);
        let chain = std::fs::read_to_string(st.join(format!("{h}.cert.pem"))).unwrap();
        assert!(
            chain.matches("BEGIN CERTIFICATE").count() >= 2,
            "full chain"
        );
    }
    let account = std::fs::read_dir(&st)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("acme-account-")
        })
        .expect("account credentials saved");
    assert_eq!(mode(&account), 0o600);
    assert_eq!(
        edge.metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"ok\"}")
            .await,
        1.0
    );
    assert!(
        edge.metric("mcp_edge_certificate_next_renewal_seconds{host=\"a.test\"}")
            .await
            > 0.0
    );

    // `mcp-edge certs` lists names, issuer, expiry, next renewal and the last error.
    let report = certs_report(&edge.config_path);
    assert!(report.contains("a.test (tls: acme)"), "{report}");
    assert!(report.contains("www.a.test"), "{report}");
    assert!(report.contains("Pebble"), "{report}");
    assert!(report.contains("next renewal: 20"), "{report}");
    assert!(
        report.contains("urn:ietf:params:acme:error:connection"),
        "{report}"
    );

    // A restart serves the same certificates from disk without ordering.
    drop(edge);
    let edge = s.start_edge(&config).await;
    let roots = s.pebble.issuing_root().await;
    assert_eq!(served(&edge, "a.test", roots.clone()).await, Some(a));
    assert_eq!(served(&edge, "b.test", roots).await, Some(b));
    // The manager looked at a.test (its ARI window) and planned its renewal days ahead: no order.
    let in_a_day = (std::time::SystemTime::now() + Duration::from_secs(86_400))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    for host in ["a.test", "b.test"] {
        wait_metric(
            &edge,
            &format!("mcp_edge_certificate_next_renewal_seconds{{host=\"{host}\"}}"),
            10,
            "the renewal planned",
            |v| v > in_a_day,
        )
        .await;
    }
    // The plan is published after the manager's look at the certificate has completed, and an
    // order would have been counted before it: none was.
    let metrics = edge.metrics_text().await;
    assert_eq!(
        try_metric_value(&metrics, "mcp_edge_acme_orders_total{host=\"a.test\""),
        None,
        "{metrics}"
    );
    assert_eq!(
        try_metric_value(&metrics, "mcp_edge_acme_orders_total{host=\"b.test\""),
        None
    );
    let log = edge.log();
    assert!(!log.contains("ordering certificate host=a.test"), "{log}");
}

#[tokio::test]
async fn forced_renewal_swaps_the_certificate_without_failing_a_request_or_a_stream() {
    let mut s = Setup::new().await;
    s.pebble.start().await;
    let config = s.config(&["a.test"], "  renewal_check: 1s\n");
    let edge = s.start_edge(&config).await;
    let first = s.pebble.wait_served(&edge, "a.test", 30).await;
    let roots = s.pebble.issuing_root().await;

    // A stream opened before the renewal.
    let client = edge.client(roots.clone(), &["a.test"]);
    let resp = client
        .get(format!("https://a.test:{}/forever", edge.https.port()))
        .send()
        .await
        .unwrap();
    let mut sse = SseReader::new(resp);
    sse.next_event().await.unwrap();

    // A client in a loop, a new connection (so a new handshake) per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looping = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("https://a.test:{}/loop", edge.https.port());
        let roots = roots.clone();
        let https = edge.https;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let c = https_client(roots.clone(), &["a.test"], https);
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };

    // Renewal forced by the CA: its renewal window moved into the past.
    wait_for(Duration::from_secs(10), "requests flowing", || {
        let ok = ok.clone();
        async move { (ok.load(Ordering::SeqCst) >= 3).then_some(()) }
    })
    .await;
    s.pebble
        .move_window_to_past(&s.storage().join("a.test.cert.pem"))
        .await;
    let second = wait_for(Duration::from_secs(30), "the renewed certificate", || {
        let roots = roots.clone();
        let first = first.clone();
        let edge = &edge;
        async move {
            let leaf = served(edge, "a.test", roots).await?;
            (leaf != first).then_some(leaf)
        }
    })
    .await;
    assert_eq!(san_names(&second), vec!["a.test"]);
    // Requests go on after the swap.
    let after_swap = ok.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(10), "requests after the swap", || {
        let ok = ok.clone();
        async move { (ok.load(Ordering::SeqCst) >= after_swap + 3).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    looping.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed during the swap"
    );
    assert!(ok.load(Ordering::SeqCst) > 5);
    for _ in 0..3 {
        sse.next_event()
            .await
            .expect("the stream outlives the swap");
    }

    // The new certificate's window is the CA's usual one: looked at every second, not re-ordered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        edge.metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"ok\"}")
            .await,
        2.0
    );
    // What is on disk is what is served.
    let disk = std::fs::read_to_string(s.storage().join("a.test.cert.pem")).unwrap();
    assert_eq!(pem_to_der(&disk), second);
}

#[tokio::test]
async fn ca_outage_keeps_the_old_certificate_backs_off_and_recovers_without_restart() {
    let mut s = Setup::new().await;
    s.pebble.start().await;
    let edge = s.start_edge(&s.config(&["a.test"], "")).await;
    let first = s.pebble.wait_served(&edge, "a.test", 30).await;
    let old_roots = s.pebble.issuing_root().await;

    // The CA goes away, then a renewal is due.
    s.pebble.stop();
    std::fs::write(
        &edge.config_path,
        s.config(&["a.test"], "  renew_when_remaining: 3650d\n"),
    )
    .unwrap();
    wait_metric(
        &edge,
        "mcp_edge_acme_consecutive_failures{host=\"a.test\"}",
        30,
        "three failed renewals",
        |v| v >= 3.0,
    )
    .await;
    assert_eq!(
        served(&edge, "a.test", old_roots.clone()).await,
        Some(first.clone()),
        "the old certificate keeps serving"
    );
    let log = edge.log();
    assert!(
        log.contains("the current certificate keeps serving"),
        "{log}"
    );
    let report = certs_report(&edge.config_path);
    assert!(report.contains("last error:"), "{report}");
    assert!(report.contains("in a row, next attempt"), "{report}");

    // Backoff: attempts spaced 0.5s, 1s, 2s, 2s... not a tight loop.
    let before = edge
        .metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"error\"}")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = edge
        .metric("mcp_edge_acme_orders_total{host=\"a.test\",result=\"error\"}")
        .await;
    assert!(after - before <= 3.0, "{before} → {after}");

    // The CA comes back (empty: the account must be registered again); no restart.
    s.pebble.start().await;
    let renewed = s.pebble.wait_served(&edge, "a.test", 30).await;
    assert_ne!(renewed, first);
    wait_metric(
        &edge,
        "mcp_edge_acme_consecutive_failures{host=\"a.test\"}",
        5,
        "failures reset",
        |v| v == 0.0,
    )
    .await;
    assert!(edge.log().contains("registering a new one"));
}

#[tokio::test]
async fn a_first_order_that_fails_serves_nothing_then_recovers_when_the_ca_is_back() {
    let mut s = Setup::new().await;
    // The CA is not there yet.
    let edge = s.start_edge(&s.config(&["a.test"], "")).await;
    wait_metric(
        &edge,
        "mcp_edge_acme_consecutive_failures{host=\"a.test\"}",
        30,
        "a failed first order",
        |v| v >= 1.0,
    )
    .await;
    // Nothing is served for the host, not even a wrong certificate; port 80 still works.
    let roots = TestCa::new("unrelated").root_store();
    assert!(edge.handshake(Some("a.test"), roots, &[]).await.is_err());
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{}/x", edge.http))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert!(edge
        .log()
        .contains("no certificate is served for this host until an order succeeds"));

    s.pebble.start().await;
    let leaf = s.pebble.wait_served(&edge, "a.test", 30).await;
    assert_eq!(san_names(&leaf), vec!["a.test"]);
}

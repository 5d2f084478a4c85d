//! Several replicas on one Redis: real `redis-server`, pebble with real validation (HTTP-01,
//! TLS-ALPN-01, DNS-01 through BIND), three
//! `mcp-edge` processes and HAProxy round-robining connections over their listeners, so the CA's
//! validation requests and a client's requests land on arbitrary replicas.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcp_edge_tests::balancer::Balancer;
use mcp_edge_tests::bind::Bind;
use mcp_edge_tests::pebble::Pebble;
use mcp_edge_tests::redis::RedisServer;
use mcp_edge_tests::*;

const HOSTS: [&str; 2] = ["a.test", "b.test"];

/// One replica's configuration: its own listeners and local copy, the shared Redis, pebble.
fn replica_yaml(ports: &Ports, dir: &Path, redis_url: &str, acme: &str, upstream: &str) -> String {
    let mut s = format!(
        "{}storage:\n  dir: {}\n  redis: \"{redis_url}\"\n  lock_lease: 3s\n  poll: 2s\n{acme}hosts:\n",
        ports.yaml(),
        dir.join("certs").display(),
    );
    for h in HOSTS {
        s.push_str(&format!(
            "  {h}:\n    tls: acme\n    upstream: {upstream}\n"
        ));
    }
    // Plain HTTP through the balancer, for the MCP session spread over the replicas.
    s.push_str(&format!(
        "  127.0.0.1:\n    tls: none\n    upstream: {upstream}\n"
    ));
    s
}

/// Three replicas of the same configuration (`acme`, `upstream`) on `redis_url`, each with its
/// own listeners and local copy under `dir/rN`, started together.
async fn start_three(
    dir: &Path,
    ports: &[Ports],
    redis_url: &str,
    acme: &str,
    upstream: &str,
) -> (Vec<PathBuf>, [Edge; 3]) {
    let dirs: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("r{i}"))).collect();
    let configs: Vec<String> = (0..3)
        .map(|i| {
            std::fs::create_dir_all(&dirs[i]).unwrap();
            replica_yaml(&ports[i], &dirs[i], redis_url, acme, upstream)
        })
        .collect();
    let (r0, r1, r2) = tokio::join!(
        Edge::start(&dirs[0], &ports[0], &configs[0]),
        Edge::start(&dirs[1], &ports[1], &configs[1]),
        Edge::start(&dirs[2], &ports[2], &configs[2]),
    );
    (dirs, [r0, r1, r2])
}

/// Waits until every replica serves one and the same leaf for `sni`, other than `not`.
async fn same_leaf_everywhere(
    edges: &[&Edge],
    pebble: &Pebble,
    sni: &str,
    not: Option<&[u8]>,
    what: &str,
) -> Vec<u8> {
    wait_for(Duration::from_secs(60), what, || async {
        let roots = pebble.issuing_root().await;
        let mut leaves = Vec::new();
        for e in edges {
            leaves.push(served(e, sni, roots.clone()).await?);
        }
        let first = leaves[0].clone();
        let same = leaves.iter().all(|l| *l == first);
        (same && not != Some(first.as_slice())).then_some(first)
    })
    .await
}

/// A metric summed over replicas (absent counts as 0).
async fn total(edges: &[&Edge], name: &str) -> f64 {
    let mut sum = 0.0;
    for e in edges {
        sum += e.try_metric(name).await.unwrap_or(0.0);
    }
    sum
}

fn orders(host: &str, result: &str) -> String {
    format!("mcp_edge_acme_orders_total{{host=\"{host}\",result=\"{result}\"}}")
}

#[tokio::test]
async fn three_replicas_share_one_order_per_host_the_session_key_and_renewals_and_ride_out_redis_down(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path(), None).await;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
    let lb = Balancer::start(dir.path(), &ports.iter().collect::<Vec<_>>()).await;
    let mut pebble = Pebble::new(dir.path(), lb.http);
    pebble.start().await;
    let tools = ToolServer::start(dir.path(), false).await;
    let upstream = format!("http://127.0.0.1:{}", tools.port);
    // Three replicas starting together, every one finding both hosts without a certificate.
    let (dirs, [r0, r1, r2]) = start_three(
        dir.path(),
        &ports,
        &redis.url(),
        &pebble.acme_yaml("  renewal_check: 2s\n"),
        &upstream,
    )
    .await;
    let edges = [&r0, &r1, &r2];
    let mut first = Vec::new();
    for h in HOSTS {
        first.push(
            same_leaf_everywhere(&edges, &pebble, h, None, "one certificate on all three").await,
        );
    }
    // Exactly one order per host, by whichever replica took the host's lock.
    for h in HOSTS {
        assert_eq!(total(&edges, &orders(h, "ok")).await, 1.0, "{h}");
        // (On failure: what the replicas said of ACME, for the flake seen twice under load.)
        let said: Vec<String> = edges
            .iter()
            .flat_map(|e| {
                e.log()
                    .lines()
                    .filter(|l| l.contains("acme"))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            total(&edges, &orders(h, "error")).await,
            0.0,
            "{h}:\n{}",
            said.join("\n")
        );
        let adopted = format!("mcp_edge_acme_certificates_adopted_total{{host=\"{h}\"}}");
        assert_eq!(
            total(&edges, &adopted).await,
            2.0,
            "{h}: the other two installed it"
        );
    }
    let report = certs_report(&r0.config_path);
    assert!(
        report.contains("a.test.cert.pem in Redis at 127.0.0.1:"),
        "{report}"
    );
    assert!(report.contains("lock:         free"), "{report}");
    assert!(report.contains("Pebble"), "{report}");

    // An MCP session whose every request opens a new connection through the balancer, so its
    // requests land on all three replicas: the session id sealed by one opens on the others.
    for transport in ["streamable", "sse"] {
        let path = if transport == "sse" {
            "/legacy/sse"
        } else {
            "/mcp"
        };
        let url = format!("http://127.0.0.1:{}{path}", lb.http);
        let v = call_tools_with(&url, transport, &["--fresh-connections"]).await;
        assert_eq!(v["fast"], "hello 2", "{v}");
    }
    for e in edges {
        let requests = e.metric("mcp_edge_requests_total{host=\"127.0.0.1\"").await;
        assert!(
            requests >= 3.0,
            "every replica served part of the sessions: {requests}"
        );
        assert_eq!(
            e.try_metric("mcp_edge_session_rejected_total")
                .await
                .unwrap_or(0.0),
            0.0
        );
    }

    // A renewal the CA asks for (its window moved into the past) is ordered once and reaches
    // every replica without a restart.
    let stored = dirs[0].join("certs").join("a.test.cert.pem");
    pebble.move_window_to_past(&stored).await;
    let renewed = same_leaf_everywhere(
        &edges,
        &pebble,
        "a.test",
        Some(&first[0]),
        "the renewed certificate on all three",
    )
    .await;
    assert_eq!(total(&edges, &orders("a.test", "ok")).await, 2.0);

    // Redis gone: every replica keeps serving its certificates and sessions...
    redis.kill();
    for e in edges {
        let roots = pebble.issuing_root().await;
        assert_eq!(
            served(e, "a.test", roots).await.as_deref(),
            Some(renewed.as_slice())
        );
    }
    let url = format!("http://127.0.0.1:{}/mcp", lb.http);
    let v = call_tools_with(&url, "streamable", &["--fresh-connections"]).await;
    assert_eq!(v["fast"], "hello 2", "{v}");
    // ...and a renewal due meanwhile backs off and retries, the old certificate serving.
    wait_for(
        Duration::from_secs(10),
        "the renewed certificate in the local copy",
        || async {
            let pem = std::fs::read_to_string(&stored).ok()?;
            (pem_to_der(&pem) == renewed).then_some(())
        },
    )
    .await;
    pebble.move_window_to_past(&stored).await;
    wait_for(
        Duration::from_secs(30),
        "failed renewals while Redis is down",
        || async {
            let failures = r1
                .try_metric("mcp_edge_acme_consecutive_failures{host=\"a.test\"}")
                .await?;
            (failures >= 2.0).then_some(())
        },
    )
    .await;
    assert_eq!(r1.metric("mcp_edge_storage_available").await, 0.0);
    let log = r1.log();
    assert!(
        log.contains("certificate order failed; the current certificate keeps serving host=a.test")
            && log.contains("is unavailable"),
        "{log}"
    );
    let roots = pebble.issuing_root().await;
    assert_eq!(
        served(&r1, "a.test", roots).await.as_deref(),
        Some(renewed.as_slice())
    );

    // Redis back: the renewal goes through and reaches the other replicas.
    redis.restart().await;
    same_leaf_everywhere(
        &edges,
        &pebble,
        "a.test",
        Some(&renewed),
        "the renewal after Redis came back",
    )
    .await;
    // r1 may have taken the renewal from another replica before its own connection to the
    // restarted Redis is back (its health PING, once a second, says so then).
    wait_for(
        Duration::from_secs(15),
        "storage available again on r1",
        || async {
            let up = r1.try_metric("mcp_edge_storage_available").await?;
            (up == 1.0).then_some(())
        },
    )
    .await;
    wait_for(Duration::from_secs(10), "failures reset", || async {
        let f = r1
            .try_metric("mcp_edge_acme_consecutive_failures{host=\"a.test\"}")
            .await?;
        (f == 0.0).then_some(())
    })
    .await;
}

/// Accepts connections and never answers: an ACME directory that hangs.
async fn tarpit() -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_replica_killed_holding_the_lock_is_replaced_once_its_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), None).await;
    let ports: Vec<Ports> = (0..2).map(|_| Ports::new()).collect();
    let lb = Balancer::start(dir.path(), &ports.iter().collect::<Vec<_>>()).await;
    let mut pebble = Pebble::new(dir.path(), lb.http);
    pebble.start().await;
    let (hang, _tarpit) = tarpit().await;
    let dirs: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("r{i}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // Replica A's CA never answers: it takes the lock for each host, then hangs mid-order.
    let stuck = pebble.acme_yaml("").replace(
        &pebble.directory(),
        &format!("https://127.0.0.1:{hang}/dir"),
    );
    let a = Edge::start(
        &dirs[0],
        &ports[0],
        &replica_yaml(
            &ports[0],
            &dirs[0],
            &redis.url(),
            &stuck,
            "http://127.0.0.1:9",
        ),
    )
    .await;
    let holder = "held by ";
    wait_for(Duration::from_secs(20), "A holding the lock", || async {
        let report = certs_report(&a.config_path);
        report
            .contains(&format!(":{} (lease", a.pid()))
            .then_some(())
    })
    .await;
    let b_yaml = replica_yaml(
        &ports[1],
        &dirs[1],
        &redis.url(),
        &pebble.acme_yaml(""),
        "http://127.0.0.1:9",
    );
    let b = Edge::start(&dirs[1], &ports[1], &b_yaml).await;
    // While A's lease runs, B does not order: it waits (twice at least, a lease apart).
    wait_for(Duration::from_secs(20), "B waiting for A", || async {
        let waits = b
            .log()
            .matches("another replica is ordering this certificate")
            .count();
        (waits >= 4).then_some(())
    })
    .await;
    assert_eq!(
        b.try_metric("mcp_edge_acme_orders_total")
            .await
            .unwrap_or(0.0),
        0.0
    );
    let report = certs_report(&b.config_path);
    assert!(report.contains(holder), "{report}");

    // A dies without releasing anything; once its lease runs out B takes over and orders.
    a.signal("-KILL");
    let edges = [&b];
    for h in HOSTS {
        same_leaf_everywhere(&edges, &pebble, h, None, "B's certificate after A died").await;
        assert_eq!(b.metric(&orders(h, "ok")).await, 1.0);
    }
    let report = certs_report(&b.config_path);
    assert!(report.contains("lock:         free"), "{report}");
    assert!(
        !redis.cli(&["KEYS", "*"]).contains("locks/"),
        "no lock left behind"
    );
}

fn copy_command(from: &str, to: &str, password: &str, extra: &[&str]) -> std::process::Output {
    Command::new(edge_bin())
        .args([
            "storage-copy",
            from,
            to,
            "--password-env",
            "TEST_REDIS_PASSWORD",
        ])
        .args(extra)
        .env("TEST_REDIS_PASSWORD", password)
        .output()
        .unwrap()
}

#[tokio::test]
async fn storage_copy_moves_a_single_node_into_password_protected_redis_and_back_without_new_orders(
) {
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let mut pebble = Pebble::new(dir.path(), ports.http);
    pebble.start().await;
    let files = dir.path().join("single");
    std::fs::create_dir_all(&files).unwrap();
    let single = format!(
        "{}storage: {}\n{}hosts:\n  a.test:\n    tls: acme\n    upstream: http://127.0.0.1:9\n",
        ports.yaml(),
        files.join("certs").display(),
        pebble.acme_yaml("")
    );
    let edge = Edge::start(&files, &ports, &single).await;
    let roots = pebble.issuing_root().await;
    let leaf = wait_for(
        Duration::from_secs(30),
        "the single node's certificate",
        || async { served(&edge, "a.test", roots.clone()).await },
    )
    .await;
    drop(edge);

    let password = "s3cret-redis-pw";
    let redis = RedisServer::start(dir.path(), Some(password)).await;
    let certs_dir = files.join("certs");
    let src = certs_dir.to_str().unwrap();
    // The wrong password: refused, said so, and the password is not echoed.
    let out = copy_command(src, &redis.url(), "wrong-pw-123", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("refused"), "{err}");
    assert!(!err.contains("wrong-pw-123"), "{err}");
    let out = copy_command(src, &redis.url(), password, &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for item in [
        "a.test.cert.pem",
        "a.test.key.pem",
        "session-seal.key",
        "acme-account-",
    ] {
        assert!(report.contains(&format!("copied  {item}")), "{report}");
    }

    // A replica on Redis with an empty local copy: the same certificate, no new order.
    let ports2 = Ports::new();
    let clustered = dir.path().join("clustered");
    std::fs::create_dir_all(&clustered).unwrap();
    let url = format!("redis://:{password}@127.0.0.1:{}/0", redis.port);
    let yaml = replica_yaml(
        &ports2,
        &clustered,
        &url,
        &pebble.acme_yaml(""),
        "http://127.0.0.1:9",
    )
    .replace(
        "  127.0.0.1:\n    tls: none\n    upstream: http://127.0.0.1:9\n",
        "",
    )
    .replace(
        "  b.test:\n    tls: acme\n    upstream: http://127.0.0.1:9\n",
        "",
    );
    let edge = Edge::start(&clustered, &ports2, &yaml).await;
    assert_eq!(
        served(&edge, "a.test", roots.clone()).await,
        Some(leaf.clone())
    );
    assert!(edge
        .try_metric("mcp_edge_acme_orders_total")
        .await
        .is_none());
    assert!(
        !edge.log().contains(password),
        "the password stays out of the log"
    );
    // What it read from Redis is kept locally, private material 0600.
    let local = clustered.join("certs");
    wait_for(Duration::from_secs(5), "the local copy", || async {
        local.join("a.test.key.pem").exists().then_some(())
    })
    .await;
    drop(edge);

    // The same replica with a wrong password does not start, and says why without echoing it.
    let bad = yaml.replace(password, "not-the-password");
    std::fs::write(clustered.join("bad.yaml"), &bad).unwrap();
    let err = start_refused(&clustered.join("bad.yaml"));
    assert!(err.contains("Redis at 127.0.0.1:"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");

    // And back to a directory: the same files, the same modes.
    let back = dir.path().join("back");
    let out = copy_command(&redis.url(), back.to_str().unwrap(), password, &[]);
    assert!(out.status.success(), "{out:?}");
    for f in ["a.test.cert.pem", "a.test.key.pem", "session-seal.key"] {
        assert_eq!(
            std::fs::read(back.join(f)).unwrap(),
            std::fs::read(certs_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(back.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("a.test.key.pem"), 0o600);
    assert_eq!(mode("session-seal.key"), 0o600);
    assert_eq!(mode("a.test.cert.pem"), 0o644);
    // An item the destination holds with other content is kept unless --overwrite.
    std::fs::write(back.join("a.test.cert.pem"), "changed").unwrap();
    let out = copy_command(&redis.url(), back.to_str().unwrap(), password, &[]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(back.join("a.test.cert.pem")).unwrap(),
        b"changed"
    );
    let out = copy_command(
        &redis.url(),
        back.to_str().unwrap(),
        password,
        &["--overwrite"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read(back.join("a.test.cert.pem")).unwrap(),
        std::fs::read(certs_dir.join("a.test.cert.pem")).unwrap()
    );
}

#[tokio::test]
async fn storage_copy_reaches_redis_over_tls_trusting_only_the_configured_ca() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("redis test CA");
    let redis = RedisServer::start_tls(dir.path(), &ca).await;
    let src = dir.path().join("single");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("session-seal.key"), [7u8; 32]).unwrap();
    let ca_file = redis.ca_file().unwrap().to_str().unwrap().to_string();
    let copy = |extra: &[&str]| {
        Command::new(edge_bin())
            .args(["storage-copy", src.to_str().unwrap(), &redis.url()])
            .args(extra)
            .output()
            .unwrap()
    };
    // The system's roots do not know the test CA: refused, nothing written.
    let out = copy(&[]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(redis.cli(&["EXISTS", "mcp-edge:session-seal.key"]), "0");
    // Trusting the CA that signed Redis's certificate: copied over TLS.
    let out = copy(&["--ca", &ca_file]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(redis.cli(&["EXISTS", "mcp-edge:session-seal.key"]), "1");
    // A proxy that does not trust the CA does not start (a setting to fix, not an outage).
    let ports = Ports::new();
    let untrusting = format!(
        "{}storage:\n  dir: {}\n  redis: \"{}\"\nhosts:\n  h.test:\n    tls: self-signed\n    upstream: http://127.0.0.1:9\n",
        ports.yaml(),
        dir.path().join("local").display(),
        redis.url()
    );
    std::fs::write(dir.path().join("untrusting.yaml"), untrusting).unwrap();
    let err = start_refused(&dir.path().join("untrusting.yaml"));
    assert!(err.contains("refused: invalid peer certificate"), "{err}");
    // A proxy configured with the CA reads it.
    let yaml = format!(
        "{}storage:\n  dir: {}\n  redis: \"{}\"\n  ca: {ca_file}\nhosts:\n  h.test:\n    tls: self-signed\n    upstream: http://127.0.0.1:9\n",
        ports.yaml(),
        dir.path().join("local").display(),
        redis.url()
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    assert_eq!(edge.metric("mcp_edge_storage_available").await, 1.0);
    assert_eq!(
        redis.cli(&["EXISTS", "mcp-edge:h.test.self-signed.cert.pem"]),
        "1"
    );
    assert_eq!(
        std::fs::read(dir.path().join("local/session-seal.key")).unwrap(),
        [7u8; 32],
        "the proxy sealed with the copied key (and kept a local copy)"
    );
}

#[tokio::test]
async fn three_replicas_answer_tls_alpn_01_whichever_one_the_ca_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), None).await;
    let ports: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
    let lb = Balancer::start(dir.path(), &ports.iter().collect::<Vec<_>>()).await;
    // The CA validates on the balancer's TLS front: round robin over the three replicas, of
    // which one placed the order and published the challenge.
    let mut pebble = Pebble::with_ports(dir.path(), free_port(), lb.https);
    pebble.start().await;
    let (_, [r0, r1, r2]) = start_three(
        dir.path(),
        &ports,
        &redis.url(),
        &pebble.acme_yaml("  challenge: tls-alpn-01\n"),
        "http://127.0.0.1:9",
    )
    .await;
    let edges = [&r0, &r1, &r2];
    for h in HOSTS {
        same_leaf_everywhere(&edges, &pebble, h, None, "one certificate on all three").await;
        assert_eq!(total(&edges, &orders(h, "ok")).await, 1.0, "{h}");
        assert_eq!(
            total(&edges, &orders(h, "error")).await,
            0.0,
            "{h}:\n{}\n{}\n{}\n{}",
            r0.log(),
            r1.log(),
            r2.log(),
            pebble.log()
        );
    }
    let report = certs_report(&r1.config_path);
    assert!(
        report.contains("acme:         tls-alpn-01 from https://127.0.0.1:"),
        "{report}"
    );
}

#[tokio::test]
async fn three_replicas_place_one_dns_01_order_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path(), None).await;
    let bind = Bind::start(dir.path(), "test").await;
    bind.write_secret(&dir.path().join("tsig.key"));
    let ports: Vec<Ports> = (0..3).map(|_| Ports::new()).collect();
    let mut pebble = Pebble::new(dir.path(), free_port());
    pebble.use_dns(bind.addr);
    pebble.start().await;
    let dns = format!(
        "  challenge: dns-01\n  dns:\n    provider: rfc2136\n    server: \"{}\"\n    zone: test\n    key_name: {}\n    key_file: {}\n    propagation_timeout: 10s\n",
        bind.addr,
        bind.key_name,
        dir.path().join("tsig.key").display()
    );
    let (_, [r0, r1, r2]) = start_three(
        dir.path(),
        &ports,
        &redis.url(),
        &pebble.acme_yaml(&dns),
        "http://127.0.0.1:9",
    )
    .await;
    let edges = [&r0, &r1, &r2];
    for h in HOSTS {
        same_leaf_everywhere(&edges, &pebble, h, None, "one certificate on all three").await;
        assert_eq!(total(&edges, &orders(h, "ok")).await, 1.0, "{h}");
        assert_eq!(total(&edges, &orders(h, "error")).await, 0.0, "{h}");
        let name = format!("_acme-challenge.{h}");
        wait_for(Duration::from_secs(10), "the records removed", || async {
            bind.txt(&name).is_empty().then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_replica_without_acme_hosts_sees_redis_go_and_come_back_at_once_and_certs_only_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path(), None).await;
    let ports = Ports::new();
    let local = dir.path().join("local");
    let yaml = format!(
        "{}storage:\n  dir: {}\n  redis: \"{}\"\nhosts:\n  h.test:\n    tls: self-signed\n    upstream: http://127.0.0.1:9\n",
        ports.yaml(),
        local.display(),
        redis.url()
    );
    let edge = Edge::start(dir.path(), &ports, &yaml).await;
    assert_eq!(edge.metric("mcp_edge_storage_available").await, 1.0);

    // No ACME host, no request touching storage: the edge still notices within seconds, and
    // says so once.
    redis.kill();
    wait_for(
        Duration::from_secs(10),
        "storage seen unavailable",
        || async { (edge.try_metric("mcp_edge_storage_available").await? == 0.0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // several health checks fail meanwhile
    let down = edge
        .log()
        .matches("shared storage became unreachable")
        .count();
    assert_eq!(down, 1, "one line per outage:\n{}", edge.log());
    redis.restart().await;
    wait_for(Duration::from_secs(10), "storage seen back", || async {
        (edge.try_metric("mcp_edge_storage_available").await? == 1.0).then_some(())
    })
    .await;
    assert!(
        edge.log().contains("shared storage reachable again"),
        "{}",
        edge.log()
    );

    // `certs` reads: it copies nothing from Redis into the directory it is given.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let report_yaml = dir.path().join("report.yaml");
    std::fs::write(
        &report_yaml,
        yaml.replace(&local.display().to_string(), &empty.display().to_string()),
    )
    .unwrap();
    let report = certs_report(&report_yaml);
    assert!(report.contains("h.test"), "{report}");
    let copied: Vec<_> = std::fs::read_dir(&empty).unwrap().collect();
    assert!(copied.is_empty(), "certs wrote {copied:?}");
}

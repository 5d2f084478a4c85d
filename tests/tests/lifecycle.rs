//! Stopping and replacing the process without dropping anything: SIGTERM drains (open requests
//! finish, streams get the grace period, the process leaves as soon as nothing is open), a
//! second SIGTERM or a SIGINT stops at once, and `run --upgrade-from PID` takes the listening
//! sockets over from a running process of another build under HTTP/1.1 and HTTP/2 load, with
//! no failed request, no refused connection, and sessions that go on.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use mcp_edge_tests::upstream::Upstream;
use mcp_edge_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The previous build (`scripts/previous-build`, run by the test command) and the current one.
fn builds() -> (PathBuf, PathBuf) {
    static BUILD: Once = Once::new();
    let previous = project_root().join("target/mcp-edge-previous");
    let current = edge_bin();
    BUILD.call_once(|| {
        if !previous.exists() {
            let ok = Command::new(project_root().join("scripts/previous-build"))
                .status()
                .unwrap()
                .success();
            assert!(ok, "scripts/previous-build failed");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .current_dir(project_root())
                .args(["build", "-q", "--workspace", "--bins"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "restoring the current build failed");
        }
    });
    (previous, current)
}

/// What `bin --version` says after the name.
fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().trim_start_matches("mcp-edge ").to_string()
}

/// `yaml` (from `Ports::yaml`) with `listen.upgrade_socket` in `dir`.
fn with_socket(yaml: &str, dir: &Path) -> String {
    yaml.replacen(
        "\nwatch_interval",
        &format!(
            "\n  upgrade_socket: {}/u.sock\nwatch_interval",
            dir.display()
        ),
        1,
    )
}

/// A plain-HTTP host (`plain.test`) in front of `up`, with `grace` as `shutdown_grace`.
async fn plain_edge(dir: &Path, up: &Upstream, grace: &str) -> Edge {
    use std::os::unix::fs::PermissionsExt;
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  plain.test:\n    tls: none\n    upstream: {}\n",
        with_socket(&ports.yaml(), &dir.join("run"))
            .replace("shutdown_grace: 0s", &format!("shutdown_grace: {grace}")),
        dir.join("certs").display(),
        up.url()
    );
    Edge::start(dir, &ports, &cfg).await
}

/// Sends one GET on `conn` and reads the answer's head and (Content-Length) body.
async fn get_on(conn: &mut tokio::net::TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: plain.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = raw_header(&text, "content-length").map_or(0, |v| v.parse().unwrap());
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        if n == 0 {
            return text;
        }
    }
}

/// Reads an SSE stream until it ends; how many events came and when it ended.
async fn read_until_closed(resp: reqwest::Response) -> (usize, Instant) {
    let mut sse = SseReader::new(resp);
    let mut n = 0;
    while sse.next_event().await.is_some() {
        n += 1;
    }
    (n, Instant::now())
}

#[tokio::test]
async fn sigterm_lets_open_requests_finish_and_closes_streams_at_the_end_of_the_grace_period() {
    let up = Upstream::start("r1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut edge = plain_edge(dir.path(), &up, "3s").await;
    let client = reqwest::Client::builder()
        .resolve("plain.test", edge.http)
        .build()
        .unwrap();
    let url = |p: &str| format!("http://plain.test:{}{p}", edge.http.port());
    // A request under way (four events 600 ms apart) and a stream that never ends.
    let finite = client
        .get(url("/ticks?n=4&gap_ms=600"))
        .send()
        .await
        .unwrap();
    let endless = client.get(url("/forever")).send().await.unwrap();
    assert_eq!(
        (finite.status().as_u16(), endless.status().as_u16()),
        (200, 200)
    );
    let finite = tokio::spawn(read_until_closed(finite));
    let endless = tokio::spawn(read_until_closed(endless));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stop = Instant::now();
    edge.signal("-TERM");
    // No new connections from the moment it stops (the listener is closed)...
    wait_for(Duration::from_secs(2), "the listener to close", || {
        let addr = edge.http;
        async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    // ...while the request under way finishes whole...
    let (events, _) = finite.await.unwrap();
    assert_eq!(events, 4, "the open request finished");
    // ...and the endless stream flows until the grace period ends, then is closed.
    let (events, closed) = endless.await.unwrap();
    let lived = closed - stop;
    assert!(
        lived >= Duration::from_millis(2800) && lived < Duration::from_secs(6),
        "the stream was closed {lived:?} after SIGTERM, grace 3s"
    );
    assert!(events > 40, "{events} events: the stream flowed meanwhile");
    let status = edge
        .wait_exit(Duration::from_secs(5))
        .expect("exited after the grace period");
    assert!(status.success(), "{status}");
    let log = edge.log();
    assert!(log.contains("grace period over"), "{log}");
}

#[tokio::test]
async fn sigterm_with_only_idle_connections_exits_without_waiting_out_the_grace_period() {
    let up = Upstream::start("r1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut edge = plain_edge(dir.path(), &up, "60s").await;
    // Two keep-alive connections, idle between requests.
    let mut idle = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    let mut late = tokio::net::TcpStream::connect(edge.http).await.unwrap();
    assert!(get_on(&mut idle, "/a").await.starts_with("HTTP/1.1 200"));
    let first = get_on(&mut late, "/b").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(raw_header(&first, "connection").is_none_or(|v| v != "close"));

    let stop = Instant::now();
    edge.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request sent on a kept-alive connection just after the stop began is answered, and
    // the answer says the connection closes (no reset for a client that had just sent one).
    let answer = get_on(&mut late, "/c").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(raw_header(&answer, "connection"), Some("close"), "{answer}");
    let status = edge
        .wait_exit(Duration::from_secs(10))
        .expect("exited without the 60 s grace period");
    assert!(status.success());
    assert!(
        stop.elapsed() < Duration::from_secs(5),
        "took {:?}",
        stop.elapsed()
    );
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).await.unwrap_or(0), 0, "idle one closed");
    assert!(edge.log().contains("drained"), "{}", edge.log());
}

#[tokio::test]
async fn a_second_sigterm_or_a_sigint_stops_at_once() {
    for second in ["-TERM", "-INT"] {
        let up = Upstream::start("r1").await;
        let dir = tempfile::tempdir().unwrap();
        let mut edge = plain_edge(dir.path(), &up, "60s").await;
        let client = reqwest::Client::builder()
            .resolve("plain.test", edge.http)
            .build()
            .unwrap();
        let endless = client
            .get(format!("http://plain.test:{}/forever", edge.http.port()))
            .send()
            .await
            .unwrap();
        let endless = tokio::spawn(read_until_closed(endless));
        edge.signal("-TERM");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(edge.is_running(), "draining, the stream still open");
        assert!(!endless.is_finished());
        let stop = Instant::now();
        edge.signal(second);
        edge.wait_exit(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{second} after SIGTERM stops at once"));
        assert!(stop.elapsed() < Duration::from_secs(3));
        let (_, closed) = endless.await.unwrap();
        assert!(closed - stop < Duration::from_secs(3));
    }
}

/// What the load saw: answers, failures (with what went wrong), and connections made.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

fn tls_client(
    cert: &str,
    https: std::net::SocketAddr,
    alpn: &[u8],
    pooled: bool,
) -> reqwest::Client {
    install_crypto();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots_from_pem(cert))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .resolve("mcp.test", https)
        .timeout(Duration::from_secs(20));
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().unwrap()
}

/// Requests in a loop until `stop`: GETs and POSTs on kept-alive connections, or each on a
/// new connection.
fn load(
    client: reqwest::Client,
    base: String,
    what: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let r = if i.is_multiple_of(2) {
                client.get(format!("{base}/load/{i}")).send().await
            } else {
                client
                    .post(format!("{base}/load/{i}"))
                    .body(vec![b'x'; 3000])
                    .send()
                    .await
            };
            let r = match r {
                Ok(r) => r.bytes().await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e:?}")),
            };
            match r {
                Ok(()) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tally.failed.lock().unwrap().push(format!("{what}: {e}")),
            }
        }
    })
}

#[tokio::test]
async fn a_new_build_takes_the_listeners_over_under_load_and_sessions_go_on() {
    let (previous, current) = builds();
    let (v_old, v_new) = (version(&previous), version(&current));
    assert!(
        v_old.ends_with("-previous") && v_old != v_new,
        "{v_old} / {v_new}"
    );

    let r1 = Upstream::start("r1").await;
    let r2 = Upstream::start("r2").await;
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  mcp.test:\n    tls: self-signed\n    routes:\n      - path: /\n        upstream:\n          urls: [{}, {}]\n",
        with_socket(&ports.yaml(), &run_dir).replace("shutdown_grace: 0s", "shutdown_grace: 3s"),
        dir.path().join("certs").display(),
        r1.url(),
        r2.url()
    );
    std::fs::write(dir.path().join("edge.yaml"), &cfg).unwrap();
    let mut old = Edge::spawn(&previous, dir.path(), &ports, &[], "old.log", Stdio::null());
    old.wait_ready().await;
    let cert =
        std::fs::read_to_string(dir.path().join("certs/mcp.test.self-signed.cert.pem")).unwrap();
    let base = format!("https://mcp.test:{}", old.https.port());

    // A session on each replica, and an open stream on the old process.
    let h1 = tls_client(&cert, old.https, b"http/1.1", true);
    let mut sessions = Vec::new();
    while sessions.len() < 2 || sessions.iter().all(|(_, r)| r == &sessions[0].1) {
        let r = h1
            .post(format!("{base}/mcp"))
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
            .send()
            .await
            .unwrap();
        let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_string();
        let body = r.text().await.unwrap();
        let replica = if body.contains("\"r1\"") { "r1" } else { "r2" };
        sessions.push((sid, replica.to_string()));
    }
    let endless = h1.get(format!("{base}/forever")).send().await.unwrap();
    let endless = tokio::spawn(read_until_closed(endless));

    // Load: HTTP/1.1 and HTTP/2 clients on kept-alive connections, and a client that opens a
    // new connection for every request (a refused connection would show there).
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        for (what, alpn, pooled) in [
            ("h1", &b"http/1.1"[..], true),
            ("h2", &b"h2"[..], true),
            ("h1-new-connection", &b"http/1.1"[..], false),
        ] {
            let c = tls_client(&cert, old.https, alpn, pooled);
            tasks.push(load(c, base.clone(), what, stop.clone(), tally.clone()));
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "load runs");

    // The new build takes over: it asks the old one (SIGQUIT) for the sockets.
    let old_pid = old.pid().to_string();
    let mut new = Edge::spawn(
        &current,
        dir.path(),
        &ports,
        &["--upgrade-from", &old_pid],
        "new.log",
        Stdio::null(),
    );
    let status = tokio::task::spawn_blocking(move || {
        let st = old.wait_exit(Duration::from_secs(20));
        (st, old)
    });
    let (status, old) = status.await.unwrap();
    let status = status.unwrap_or_else(|| panic!("the old process did not leave"));
    assert!(status.success(), "{status}");
    assert!(new.is_running(), "{}", new.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = tally.failed.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\nold:\n{}\nnew:\n{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)],
        old.log(),
        new.log()
    );
    assert!(
        ok > before * 2,
        "{ok} requests answered, {before} before the upgrade"
    );
    let old_log = old.log();
    assert!(
        old_log.contains(&format!("version=\"{v_old}\""))
            && old_log.contains("listener sockets sent"),
        "{old_log}"
    );
    let new_log = new.log();
    assert!(
        new_log.contains(&format!("version=\"{v_new}\""))
            && new_log.contains("ready: every listener accepts"),
        "{new_log}"
    );
    // The new process names itself for the next upgrade.
    let named = std::fs::read_to_string(run_dir.join("u.sock.pid")).unwrap();
    assert_eq!(named.trim(), new.pid().to_string());

    // The stream on the old process had the grace period, then closed; the sessions go on,
    // each on its replica, through the new process.
    let (events, _) = endless.await.unwrap();
    assert!(events > 20, "{events}");
    let h2 = tls_client(&cert, new.https, b"h2", true);
    for (sid, replica) in &sessions {
        let r = h2
            .post(format!("{base}/mcp"))
            .header("mcp-session-id", sid)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let j: serde_json::Value = r.json().await.unwrap();
        assert_eq!(j["replica"], replica.as_str());
    }
    // The new process now owns the ports alone, and stops like any other.
    new.signal("-TERM");
    assert!(new.wait_exit(Duration::from_secs(10)).is_some());
}

#[tokio::test]
async fn an_upgrade_that_cannot_be_done_leaves_the_running_process_serving() {
    let (_, current) = builds();
    let up = Upstream::start("r1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut old = plain_edge(dir.path(), &up, "1s").await;
    let client = reqwest::Client::builder()
        .resolve("plain.test", old.http)
        .build()
        .unwrap();
    let url = format!("http://plain.test:{}/x", old.http.port());

    // A socket directory others can reach (world-writable, or only readable: anyone could
    // connect and hand over sockets of their own): refused before anything is signalled.
    let ports = Ports {
        http: old.http.port(),
        https: old.https.port(),
        metrics: old.metrics.port(),
    };
    let cfg = std::fs::read_to_string(dir.path().join("edge.yaml")).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = dir.path().join("run").display().to_string();
    std::fs::write(
        dir.path().join("edge.yaml"),
        cfg.replace(&run, &shared.display().to_string()),
    )
    .unwrap();
    let pid = old.pid().to_string();
    let mut refused = Edge::spawn(
        &current,
        dir.path(),
        &ports,
        &["--upgrade-from", &pid],
        "refused.log",
        Stdio::null(),
    );
    let st = refused
        .wait_exit(Duration::from_secs(10))
        .expect("refused at once");
    assert!(!st.success());
    let log = refused.log();
    assert!(log.contains("open to group or others"), "{log}");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut refused = Edge::spawn(
        &current,
        dir.path(),
        &ports,
        &["--upgrade-from", &pid],
        "refused-755.log",
        Stdio::null(),
    );
    assert!(!refused
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .success());
    assert!(refused.log().contains("mode 755"), "{}", refused.log());
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // Not an mcp-edge: refused (no SIGQUIT to a stranger).
    std::fs::write(dir.path().join("edge.yaml"), &cfg).unwrap();
    let stranger = std::process::id().to_string();
    let mut refused = Edge::spawn(
        &current,
        dir.path(),
        &ports,
        &["--upgrade-from", &stranger],
        "stranger.log",
        Stdio::null(),
    );
    assert!(!refused
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .success());
    assert!(
        refused.log().contains("not {stranger}")
            || refused.log().contains(&format!("not {stranger}")),
        "{}",
        refused.log()
    );

    // SIGQUIT with no new process at the socket (one that died, or was never started): the
    // hand-over fails, and the running process says so and keeps serving.
    old.signal("-QUIT");
    wait_for(Duration::from_secs(15), "the failed hand-over", || {
        let log = old.log();
        async move { log.contains("keeps serving").then_some(()) }
    })
    .await;
    assert!(old.is_running());
    for _ in 0..5 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
}

/// A duration as the YAML writes it (`5s`, `15s`, `1m`).
fn seconds(v: &str) -> u64 {
    let v = v.trim().trim_matches('"');
    match v.strip_suffix('m') {
        Some(m) => m.parse::<u64>().unwrap() * 60,
        None => v.trim_end_matches('s').parse().unwrap(),
    }
}

#[test]
fn every_container_of_mcp_edge_in_compose_may_drain_before_it_is_killed() {
    let compose = std::fs::read_to_string(project_root().join("compose.yaml")).unwrap();
    let mut services = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in compose.lines() {
        let top =
            line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':')
                || line.starts_with("  ") && !line.starts_with("   ") && line.contains(": &");
        if top || (!line.starts_with(' ') && !line.is_empty()) {
            services.extend(current.take());
            if top {
                current = Some((line.trim().to_string(), String::new()));
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    services.extend(current);
    let edges: Vec<_> = services
        .iter()
        .filter(|(_, b)| b.contains("image: mcp-edge:local") || b.contains("<<: *proxy-ha"))
        .collect();
    assert!(edges.len() >= 4, "{edges:?}");
    let anchor = |b: &str| -> Option<u64> {
        b.lines()
            .find_map(|l| l.trim().strip_prefix("stop_grace_period:"))
            .map(seconds)
    };
    let ha = services
        .iter()
        .find(|(n, _)| n.contains("&proxy-ha"))
        .and_then(|(_, b)| anchor(b));
    for (name, body) in edges {
        let stop = anchor(body)
            .or(body.contains("<<: *proxy-ha").then_some(ha).flatten())
            .unwrap_or(10); // docker's default
        let config = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("MCP_EDGE_CONFIG: /etc/mcp-edge/"))
            .unwrap_or("compose.yaml");
        let yaml = std::fs::read_to_string(project_root().join("config").join(config)).unwrap();
        let grace = yaml
            .lines()
            .find_map(|l| l.strip_prefix("shutdown_grace:"))
            .map_or(5, seconds);
        // The grace period, the second a parked connection waits, and room to write out.
        assert!(
            stop >= grace + 5,
            "{name}: stop_grace_period {stop}s, shutdown_grace {grace}s"
        );
    }
}

#[tokio::test]
async fn the_service_manager_hears_ready_once_the_listeners_accept_and_stopping_on_sigterm() {
    let up = Upstream::start("r1").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  plain.test:\n    tls: none\n    upstream: {}\n",
        ports.yaml(),
        dir.path().join("certs").display(),
        up.url()
    );
    std::fs::write(dir.path().join("edge.yaml"), cfg).unwrap();
    // systemd's side of the notify protocol: a datagram socket named by NOTIFY_SOCKET.
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(edge_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("edge.yaml"))
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means accepting: both proxy listeners take a connection at once.
    for port in [ports.http, ports.https] {
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when ready");
    }
    send_signal(&child, "-TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    wait_child_exit(&mut child, Duration::from_secs(10)).expect("exits after SIGTERM");
}

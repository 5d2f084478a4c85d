//! Test harness: the real `mcp-edge` binary on ephemeral loopback ports, certificates made at
//! test time, a real HTTP upstream, real TLS clients. Every child process is killed on drop;
//! every test has its own directory.
#![forbid(unsafe_code)]

pub mod auth_server;
pub mod balancer;
pub mod bind;
pub mod pebble;
pub mod redis;
pub mod tls_front;
pub mod upstream;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

/// The `mcp-edge` binary, built once per test run so it is never stale (workspace-wide, so the
/// features match `cargo build --workspace` and nothing is rebuilt twice).
pub fn edge_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    if let Ok(p) = std::env::var("MCP_EDGE_BIN") {
        return PathBuf::from(p);
    }
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-q", "--workspace", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building mcp-edge failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join("mcp-edge")
}

/// The static musl build of mcp-edge that the container image ships (`scripts/static-build`:
/// release, stripped, with its dependency list inside); its SBOM is `mcp-edge.cdx.json` beside
/// it. Built once per test binary (a no-op when up to date).
pub fn static_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let root = project_root();
    BUILD.call_once(|| {
        run_ok(&mut Command::new(root.join("scripts/static-build")));
    });
    root.join("target/static/mcp-edge")
}

/// A docker CLI that builds with BuildKit (which skips the unused Rust builder stage): `docker`
/// with buildx, or a pre-23 CLI with BuildKit built in.
pub fn buildkit_docker() -> PathBuf {
    if Command::new("docker")
        .args(["buildx", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return PathBuf::from("docker");
    }
    let which = run_ok(Command::new("which").args(["-a", "docker"]));
    for cand in which.lines() {
        let v = Command::new(cand)
            .args(["version", "--format", "{{.Client.Version}}"])
            .output();
        if let Ok(v) = v {
            let ver = String::from_utf8_lossy(&v.stdout);
            if ver
                .split('.')
                .next()
                .and_then(|m| m.trim().parse::<u32>().ok())
                .is_some_and(|m| m < 23)
            {
                return PathBuf::from(cand);
            }
        }
    }
    panic!("no docker CLI here builds with BuildKit (no buildx, no docker < 23): cannot skip the Rust builder stage without a registry");
}

/// `target/docker-bins`, what the Dockerfile's `BINARIES=prebuilt` copies: mcp-docs built here
/// (Debian 12, like the runtime image), stripped; mcp-edge static on musl with its SBOM
/// (`scripts/static-build`), as the image ships it.
pub fn docker_bins() {
    let bins = project_root().join("target/docker-bins");
    std::fs::create_dir_all(&bins).unwrap();
    let docs = bins.join("mcp-docs");
    std::fs::copy(docs_bin(), &docs).unwrap();
    run_ok(Command::new("strip").arg(&docs));
    let edge = static_bin();
    std::fs::copy(&edge, bins.join("mcp-edge")).unwrap();
    std::fs::copy(
        edge.with_file_name("mcp-edge.cdx.json"),
        bins.join("mcp-edge.cdx.json"),
    )
    .unwrap();
}

/// The repository's root directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `cmd` and returns its standard output; panics with everything it said if it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (at most `limit`) for `child` to exit; its status, if it did.
pub fn wait_child_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A free loopback port, below the kernel's ephemeral range (32768+), so that no outgoing
/// connection of this or another process can take it between a proxy's stop and its restart.
/// Ports are handed out in turn from a per-process starting point, each checked bindable.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends a signal (`-TERM`, `-HUP`...) to a child with kill(1).
pub fn send_signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {}", child.id());
}

/// ring, as the proxy uses it (rustls 0.23.48 deprecates it for want of post-quantum key
/// exchange; see mcp_edge's `pem::ring_provider`).
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

pub fn install_crypto() {
    let _ = ring_provider().install_default();
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A test certificate authority that signs leaf certificates.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names`, returned as (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }
}

/// A root store trusting the first certificate of a PEM string.
pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_to_der(pem).into()).unwrap();
    roots
}

/// DER of the first certificate in a PEM string.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// A running `mcp-edge run` process, killed on drop.
pub struct Edge {
    child: Child,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub metrics: SocketAddr,
    log: PathBuf,
}

/// Listen block for a fresh set of ephemeral ports.
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub metrics: u16,
}

impl Ports {
    pub fn new() -> Self {
        Self {
            http: free_port(),
            https: free_port(),
            metrics: free_port(),
        }
    }
    pub fn yaml(&self) -> String {
        format!(
            "listen:\n  http: \"127.0.0.1:{}\"\n  https: \"127.0.0.1:{}\"\n  metrics: \"127.0.0.1:{}\"\nwatch_interval: 200ms\nshutdown_grace: 0s\n",
            self.http, self.https, self.metrics
        )
    }
}

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

impl Edge {
    /// Writes `config` (YAML, listen block included) to `dir/edge.yaml` and starts the proxy,
    /// waiting until `/readyz` says every listener is bound.
    pub async fn start(dir: &Path, ports: &Ports, config: &str) -> Self {
        Self::start_with_stdout(dir, ports, config, Stdio::null()).await
    }

    /// [`Edge::start`] with its standard output (the audit log's `stdout` sink) sent to
    /// `stdout`; `Stdio::piped()` leaves it for [`Edge::take_stdout`].
    pub async fn start_with_stdout(dir: &Path, ports: &Ports, config: &str, stdout: Stdio) -> Self {
        let config_path = dir.join("edge.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut edge = Self::spawn(&edge_bin(), dir, ports, &[], "edge.log", stdout);
        edge.wait_ready().await;
        edge
    }

    /// Starts `bin run --config dir/edge.yaml ARGS` (the file written already) without waiting,
    /// its log in `dir/LOG`: another build, or a process that takes the listeners over.
    pub fn spawn(
        bin: &Path,
        dir: &Path,
        ports: &Ports,
        args: &[&str],
        log: &str,
        stdout: Stdio,
    ) -> Self {
        install_crypto();
        let config_path = dir.join("edge.yaml");
        let log = dir.join(log);
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .args(args)
            .env("MCP_EDGE_LOG", "info")
            .stdout(stdout)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mcp-edge");
        Self {
            child,
            dir: dir.to_path_buf(),
            config_path,
            http: ([127, 0, 0, 1], ports.http).into(),
            https: ([127, 0, 0, 1], ports.https).into(),
            metrics: ([127, 0, 0, 1], ports.metrics).into(),
            log,
        }
    }

    /// Waits until `/readyz` says every listener is bound (panics if the process exits).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.metrics);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mcp-edge exited with {status}:\n{}", self.log());
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "mcp-edge not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (at most `limit`) for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, limit)
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// One raw HTTP/1.1 exchange on the plain listener: `head` is sent, then each part of
    /// `body` after `pause`; returns everything the proxy answered until it closed the
    /// connection. For what an HTTP client library would not send (dot-segments, repeated or
    /// proxy headers, trickled bodies).
    pub async fn raw_exchange(&self, head: &str, body: &[&[u8]], pause: Duration) -> String {
        self.raw_exchange_from([127, 0, 0, 1].into(), head, body, pause)
            .await
    }

    /// [`Edge::raw_exchange`] from the source address `from` (any 127.0.0.0/8 address is a
    /// different client of the same machine).
    pub async fn raw_exchange_from(
        &self,
        from: std::net::IpAddr,
        head: &str,
        body: &[&[u8]],
        pause: Duration,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = connect_from(from, self.http).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        for part in body {
            tokio::time::sleep(pause).await;
            // The proxy may answer (and close) before the body is all sent: a 413, say.
            if s.write_all(part).await.is_err() {
                break;
            }
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 8192];
            // Until the proxy closes (or resets) the connection.
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                out.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the proxy answers within 10 s");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The edge's standard output, when started with it piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Sends SIGHUP (reload).
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    /// Sends a signal (`-TERM`, `-HUP`...) with kill(1).
    pub fn signal(&self, sig: &str) {
        send_signal(&self.child, sig);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of the samples whose line starts with `prefix` (name and labels). A metric that
    /// is not exported fails the test: it is never read as 0.
    pub async fn metric(&self, prefix: &str) -> f64 {
        metric_value(&self.metrics_text().await, prefix)
    }

    /// Like [`Edge::metric`], but `None` while no sample matches (for waiting on a metric that
    /// appears later, or to show that something never happened).
    pub async fn try_metric(&self, prefix: &str) -> Option<f64> {
        try_metric_value(&self.metrics_text().await, prefix)
    }

    /// An HTTPS client trusting `roots`, resolving every name in `names` to this proxy.
    pub fn client(&self, roots: rustls::RootCertStore, names: &[&str]) -> reqwest::Client {
        https_client(roots, names, self.https)
    }

    /// Completes a TLS handshake with `sni` (None: no SNI) and returns the leaf the proxy
    /// presented, or the handshake error.
    pub async fn handshake(
        &self,
        sni: Option<&str>,
        roots: rustls::RootCertStore,
        alpn: &[&[u8]],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>, String), String> {
        tls_handshake(self.https, sni, roots, alpn).await
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `yaml` to `dir/check.yaml` and runs `mcp-edge check` on it: whether it passed, and
/// everything it printed.
pub fn run_check(dir: &Path, yaml: &str) -> (bool, String) {
    let p = dir.join("check.yaml");
    std::fs::write(&p, yaml).unwrap();
    outcome(Command::new(edge_bin()).args(["check", "--config"]).arg(&p))
}

/// Runs `cmd`: whether it succeeded, and what it printed (standard output, then error).
pub fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The status code of a raw HTTP/1.1 response (0 if there is none).
pub fn raw_status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw HTTP/1.1 response (after the blank line).
pub fn raw_json(raw: &str) -> serde_json::Value {
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw}"))
}

/// The value of header `name` in a raw HTTP/1.1 response.
pub fn raw_header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split_once("\r\n\r\n").map_or(raw, |(h, _)| h);
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An edge with `top` (top-level YAML) and one plain-HTTP host `h.test` whose remaining keys
/// (`upstream:`, `routes:`, `auth:`… indented for the host) are `host`.
pub async fn plain_host_edge(dir: &Path, top: &str, host: &str) -> Edge {
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\n{top}hosts:\n  h.test:\n    tls: none\n{host}",
        ports.yaml(),
        dir.join("certs").display(),
    );
    Edge::start(dir, &ports, &cfg).await
}

/// An edge with `top` (top-level YAML), a TLS host `a.test` (a certificate from the returned
/// CA) whose upstream is `upstream`, and `hosts` (more hosts, indented as entries of `hosts:`).
pub async fn tls_host_edge(dir: &Path, top: &str, upstream: &str, hosts: &str) -> (Edge, TestCa) {
    let ca = TestCa::new("a.test CA");
    let (cert, key) = ca.leaf(&["a.test"]);
    std::fs::write(dir.join("a.pem"), cert).unwrap();
    std::fs::write(dir.join("a.key"), key).unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\n{top}hosts:\n  a.test:\n    tls: {{ cert: {}, key: {} }}\n    upstream: \"{upstream}\"\n{hosts}",
        ports.yaml(),
        dir.join("certs").display(),
        dir.join("a.pem").display(),
        dir.join("a.key").display(),
    );
    (Edge::start(dir, &ports, &cfg).await, ca)
}

/// A raw HTTP/2 connection to `edge`'s TLS host `a.test` (the h2 crate's client: it sends what
/// reqwest will not, and shows 1xx responses).
pub async fn raw_h2(edge: &Edge, ca: &TestCa) -> h2::client::SendRequest<bytes::Bytes> {
    raw_h2_with_task(edge, ca).await.0
}

/// [`raw_h2`], and the task that drives the connection: aborting it drops the connection at once,
/// whatever its streams are doing.
pub async fn raw_h2_with_task(
    edge: &Edge,
    ca: &TestCa,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    install_crypto();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(ca.root_store())
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
    let name = ServerName::try_from("a.test").unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    // The connection's window large (a stream the client stops reading fills only its own);
    // each stream's the default 64 KiB.
    let (h2, conn) = h2::client::Builder::new()
        .initial_connection_window_size(16 << 20)
        .handshake(stream)
        .await
        .unwrap();
    (h2, tokio::spawn(conn))
}

/// An HTTP/2 response body read to its end, its window given back as it comes.
pub async fn h2_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    all
}

impl Edge {
    /// `GET path` to host `h.test` on the plain listener from address `from`, with `extra`
    /// header lines; the raw answer.
    pub async fn get_from(&self, from: &str, path: &str, extra: &str) -> String {
        self.raw_exchange_from(
            from.parse().unwrap(),
            &format!("GET {path} HTTP/1.1\r\nhost: h.test\r\n{extra}connection: close\r\n\r\n"),
            &[],
            Duration::ZERO,
        )
        .await
    }
}

/// A TCP connection to `to` from the local address `from` (port chosen by the system).
pub async fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// The sum of the samples in `text` whose line starts with `prefix`; panics when none does.
pub fn metric_value(text: &str, prefix: &str) -> f64 {
    try_metric_value(text, prefix).unwrap_or_else(|| {
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        names.dedup();
        panic!("no metric sample starts with {prefix}; exported: {names:?}")
    })
}

/// The sum of the samples in `text` whose line starts with `prefix`, or `None` when none does.
pub fn try_metric_value(text: &str, prefix: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {l}"))
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

pub fn https_client(
    roots: rustls::RootCertStore,
    names: &[&str],
    addr: SocketAddr,
) -> reqwest::Client {
    install_crypto();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    for n in names {
        b = b.resolve(n, addr);
    }
    b.build().unwrap()
}

/// Accepts any server certificate and records nothing: used only to look at what the server
/// presents when the test itself compares the certificate.
#[derive(Debug)]
struct Anything;

/// The leaf `edge` presents for `sni`, if the handshake verifies against `roots`.
pub async fn served(edge: &Edge, sni: &str, roots: rustls::RootCertStore) -> Option<Vec<u8>> {
    edge.handshake(Some(sni), roots, &[])
        .await
        .ok()
        .map(|(leaf, _, _)| leaf)
}

/// The subject alternative names of a certificate: DNS names and IPv4 addresses as written.
pub fn san_names(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(b) => match <[u8; 4]>::try_from(*b) {
                Ok(a) => std::net::Ipv4Addr::from(a).to_string(),
                Err(_) => format!("{b:?}"),
            },
            other => format!("{other:?}"),
        })
        .collect()
}

/// Connects `n` times in turn with one client configuration (so one session cache), each time
/// sending `GET /healthz` with `Connection: close` and reading the answer to its end (TLS 1.3
/// tickets arrive after the handshake); how each handshake went: `Full` or `Resumed`.
pub async fn handshake_kinds(
    addr: SocketAddr,
    sni: &str,
    config: rustls::ClientConfig,
    n: usize,
) -> Vec<rustls::HandshakeKind> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut kinds = Vec::new();
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind().unwrap());
        tls.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
    }
    kinds
}

/// An HTTPS client that accepts any server certificate (for self-signed IP hosts, where the
/// test checks which certificate was served by other means).
pub fn insecure_client() -> reqwest::Client {
    install_crypto();
    let tls = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

impl rustls::client::danger::ServerCertVerifier for Anything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ring_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// (leaf DER, negotiated ALPN, TLS version). With `sni: None` no SNI is sent (an IP literal).
pub async fn tls_handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> Result<(Vec<u8>, Option<Vec<u8>>, String), String> {
    install_crypto();
    let cfg = match sni {
        Some(_) => rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        None => rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Anything))
            .with_no_client_auth(),
    };
    let name = match sni {
        Some(s) => ServerName::try_from(s.to_string()).unwrap(),
        // rustls sends no SNI for an IP address.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    handshake_with(cfg, addr, name, alpn).await
}

/// A handshake that accepts whatever certificate the server presents for `sni` (a TLS-ALPN-01
/// challenge certificate is self-signed): the leaf, the negotiated ALPN protocol.
pub async fn tls_handshake_unverified(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    install_crypto();
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything))
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let (leaf, proto, _) = handshake_with(cfg, addr, name, alpn).await?;
    Ok((leaf, proto))
}

async fn handshake_with(
    mut cfg: rustls::ClientConfig,
    addr: SocketAddr,
    name: ServerName<'static>,
    alpn: &[&[u8]],
) -> Result<(Vec<u8>, Option<Vec<u8>>, String), String> {
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let version = format!("{:?}", conn.protocol_version());
    Ok((leaf, conn.alpn_protocol().map(|a| a.to_vec()), version))
}

/// Reads an SSE body chunk by chunk and yields complete events with their arrival time.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (text up to the blank line), or None at the end of the stream.
    pub async fn next_event(&mut self) -> Option<(String, Instant)> {
        loop {
            let norm = self.buf.replace("\r\n", "\n");
            if let Some(i) = norm.find("\n\n") {
                let ev = norm[..i].to_string();
                self.buf = norm[i + 2..].to_string();
                return Some((ev, Instant::now()));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("SSE stream stalled for 20 s")
                .ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// The `mcp-docs` binary (built with the rest of the workspace).
pub fn docs_bin() -> PathBuf {
    edge_bin().with_file_name("mcp-docs")
}

/// The Python of the venv holding the official MCP SDK (created by `./scripts/test`).
pub fn python() -> PathBuf {
    let p = std::env::var("MCP_EDGE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join(".venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/test, which creates .venv with the MCP Python SDK",
        p.display()
    );
    p
}

/// Waits until something accepts connections on 127.0.0.1:`port`, at most `limit`.
pub async fn wait_listening(port: u16, limit: Duration, what: &str) {
    wait_for(limit, what, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// `mcp-edge run --config CONFIG` when it must not start: what it wrote to stderr.
pub fn start_refused(config: &Path) -> String {
    let out = Command::new(edge_bin())
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success(), "mcp-edge started: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What `mcp-edge certs --config CONFIG` prints (it must succeed).
pub fn certs_report(config: &Path) -> String {
    let out = Command::new(edge_bin())
        .args(["certs", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `tests/python/mcp_check.py` (one full MCP session with the official Python SDK) and
/// returns what it printed.
pub async fn mcp_check(
    url: &str,
    transport: &str,
    query: &str,
    doc: &str,
    ca: Option<&Path>,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mcp_check.py");
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(script)
        .args([url, transport, "--query", query, "--doc", doc]);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("the MCP client finished within 60s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "mcp_check printed no JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && v.get("error").is_none(),
        "MCP session failed: {v}\n{stderr}"
    );
    // The session ends the way the SDK expects (its DELETE answered 200, not 202).
    assert!(!stderr.contains("Session termination failed"), "{stderr}");
    v
}

/// A running `mcp-docs`, killed on drop.
pub struct DocsServer {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl DocsServer {
    /// Starts `mcp-docs --docs <corpus>` on a free port with `extra` arguments and waits for
    /// `/healthz`.
    pub async fn start(dir: &Path, corpus: &Path, extra: &[&str]) -> Self {
        install_crypto();
        let port = free_port();
        let log = dir.join(format!("mcp-docs-{port}.log"));
        let child = Command::new(docs_bin())
            .args(["--listen", &format!("127.0.0.1:{port}"), "--docs"])
            .arg(corpus)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start mcp-docs");
        let mut s = Self {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.health().await.is_none() {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("mcp-docs exited with {st}:\n{}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "mcp-docs not ready:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        s
    }

    pub async fn health(&self) -> Option<serde_json::Value> {
        let r = reqwest::get(format!("http://{}/healthz", self.addr))
            .await
            .ok()?;
        r.json().await.ok()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        send_signal(&self.child, sig);
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, limit)
    }
}

impl Drop for DocsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tests/python/tool_server.py, killed on drop.
pub struct ToolServer {
    child: Child,
    pub port: u16,
}

impl Drop for ToolServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ToolServer {
    /// Starts the server; `json`: Streamable HTTP answers in JSON instead of SSE.
    pub async fn start(dir: &Path, json: bool) -> Self {
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tool_server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).args(["--port", &port.to_string()]);
        if json {
            cmd.arg("--json");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("tools-{port}.log"))).unwrap())
            .spawn()
            .expect("start the tool server");
        wait_listening(port, Duration::from_secs(30), "tool server").await;
        Self { child, port }
    }
}

/// Runs tests/python/mcp_tools_call.py against `url`.
pub async fn call_tools(url: &str, transport: &str, extra_tools: usize) -> serde_json::Value {
    call_tools_with(url, transport, &["--extra-tools", &extra_tools.to_string()]).await
}

/// Runs tests/python/mcp_tools_call.py against `url` with more arguments
/// (`--fresh-connections`: no keep-alive, so a balancer spreads every request).
pub async fn call_tools_with(url: &str, transport: &str, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/mcp_tools_call.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args([url, transport])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        v.get("error").is_none(),
        "{v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

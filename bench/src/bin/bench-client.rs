//! SSE measurements for bench/run, over raw HTTP/1.1 (TLS with the bench CA and SNI when the URL
//! is https), so that nothing but the proxy sits between the client and the upstream.
//!
//! bench-client sse-latency URL [--ca PEM] [--sni NAME]      per-event delay, JSON percentiles
//! bench-client hold URL COUNT [--ca PEM] [--sni NAME]       opens COUNT streams, prints
//!                                                           "ready N", holds until stdin closes
//! bench-client leave URL OPEN_URL [--ca PEM] [--sni NAME]   ms until the upstream sees the
//!                                                           stream closed after the client left
//! bench-client idle URL COUNT SECONDS [--ca PEM]            opens COUNT TLS connections that
//!                                                           send nothing, prints "ready N", then
//!                                                           after SECONDS how many the server
//!                                                           closed, and when (JSON)
#![forbid(unsafe_code)]

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Target {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse(url: &str) -> Target {
    let (https, rest) = match url.split_once("://") {
        Some(("https", r)) => (true, r),
        Some(("http", r)) => (false, r),
        _ => panic!("{url}: expected http:// or https://"),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (host, port) = authority.rsplit_once(':').expect("URL with a port");
    Target {
        https,
        host: host.to_string(),
        port: port.parse().unwrap(),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    }
}

struct Client {
    tls: Option<(tokio_rustls::TlsConnector, String)>,
}

impl Client {
    fn new(args: &[String]) -> Self {
        let arg = |n: &str| {
            args.iter()
                .position(|a| a == n)
                .and_then(|i| args.get(i + 1))
        };
        let tls = arg("--ca").map(|ca| {
            use rustls_pki_types::pem::PemObject;
            let _ = ring_provider().install_default();
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let mut cfg = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            cfg.resumption = rustls::client::Resumption::disabled();
            let sni = arg("--sni").cloned().unwrap_or_else(|| "localhost".into());
            (tokio_rustls::TlsConnector::from(Arc::new(cfg)), sni)
        });
        Self { tls }
    }

    /// Sends `GET path` and returns the stream positioned after the response headers.
    async fn get(&self, t: &Target) -> std::io::Result<BufReader<Box<dyn Io>>> {
        let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
        tcp.set_nodelay(true)?;
        let mut io: Box<dyn Io> = match (&self.tls, t.https) {
            (Some((c, sni)), true) => {
                let name = rustls_pki_types::ServerName::try_from(sni.clone()).unwrap();
                Box::new(c.connect(name, tcp).await?)
            }
            _ => Box::new(tcp),
        };
        let host = match &self.tls {
            Some((_, sni)) if t.https => sni.clone(),
            _ => t.host.clone(),
        };
        io.write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n",
                t.path
            )
            .as_bytes(),
        )
        .await?;
        let mut r = BufReader::new(io);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("closed before headers"));
            }
            if line == "\r\n" {
                return Ok(r);
            }
        }
    }
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Waits for the next `data:` line (chunked framing lines are skipped).
async fn next_data(r: &mut BufReader<Box<dyn Io>>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.ok()? == 0 || line == "0\r\n" {
            return None; // end of the connection, or of a chunked body
        }
        if let Some(d) = line.strip_prefix("data: ") {
            return Some(d.trim().to_string());
        }
    }
}

fn pct(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn sse_latency(args: &[String]) {
    let t = parse(&args[0]);
    let c = Client::new(args);
    let mut r = c.get(&t).await.expect("connect");
    let mut lat = Vec::new();
    while let Some(d) = next_data(&mut r).await {
        let now = now_us();
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        let sent = v["sent_us"].as_u64().unwrap() as u128;
        lat.push(now.saturating_sub(sent));
    }
    lat.sort();
    println!(
        "{}",
        serde_json::json!({"n": lat.len(), "p50_us": pct(&lat, 0.5), "p99_us": pct(&lat, 0.99), "max_us": lat.last()})
    );
}

async fn hold(args: &[String]) {
    let t = Arc::new(parse(&args[0]));
    let count: usize = args[1].parse().unwrap();
    let c = Arc::new(Client::new(args));
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (t, c, sem) = (t.clone(), c.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            // A connection that is refused or stalls is retried: this measures memory, not
            // the accept queue.
            for _ in 0..3 {
                let open = async {
                    let mut r = c.get(&t).await.ok()?;
                    next_data(&mut r).await?;
                    Some(r)
                };
                if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(20), open).await {
                    return Some(r);
                }
            }
            None
        }));
    }
    let mut open = Vec::new();
    for task in tasks {
        if let Ok(Some(r)) = task.await {
            open.push(r);
        }
    }
    println!("ready {}", open.len());
    // Hold until the orchestrator closes our stdin.
    tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        for _ in stdin.lock().lines() {}
    })
    .await
    .unwrap();
    drop(open);
}

/// A TLS connection that completes its handshake and then sends nothing; resolves, with the
/// time since `start`, when the server closes it.
async fn idle_connection(
    c: &Client,
    t: &Target,
    start: Instant,
) -> Option<impl std::future::Future<Output = Duration>> {
    let (connector, sni) = c.tls.as_ref()?;
    let tcp = TcpStream::connect((t.host.as_str(), t.port)).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(sni.clone()).ok()?;
    let mut tls = connector.connect(name, tcp).await.ok()?;
    Some(async move {
        let mut buf = [0u8; 512];
        while let Ok(1..) = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await {}
        start.elapsed()
    })
}

async fn idle(args: &[String]) {
    let t = Arc::new(parse(&args[0]));
    let count: usize = args[1].parse().unwrap();
    let hold = Duration::from_secs(args[2].parse().unwrap());
    let c = Arc::new(Client::new(args));
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let start = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..count {
        let (t, c, sem, ready_tx) = (t.clone(), c.clone(), sem.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.unwrap();
            // A handshake the server never completes counts as not opened.
            let closed =
                tokio::time::timeout(Duration::from_secs(30), idle_connection(&c, &t, start))
                    .await
                    .ok()
                    .flatten();
            drop(permit);
            let _ = ready_tx.send(closed.is_some());
            closed?.await.into()
        }));
    }
    drop(ready_tx);
    // One message per connection (the tasks live on, holding their connections).
    let mut ready = 0;
    for _ in 0..count {
        ready += usize::from(ready_rx.recv().await.unwrap_or(false));
    }
    println!("ready {ready}");
    let deadline = start + hold;
    let mut closed_s = Vec::new();
    for task in tasks {
        if let Ok(Ok(Some(at))) = tokio::time::timeout_at(deadline.into(), task).await {
            let at: Duration = at;
            closed_s.push(at.as_secs_f64());
        }
    }
    closed_s.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        closed_s
            .get(((closed_s.len() as f64 - 1.0) * p) as usize)
            .copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "ready": ready,
            "closed": closed_s.len(),
            "first_closed_s": closed_s.first(),
            "median_closed_s": pick(0.5),
            "last_closed_s": closed_s.last(),
        })
    );
}

async fn open_now(url: &str) -> u64 {
    let t = parse(url);
    let mut s = TcpStream::connect((t.host.as_str(), t.port)).await.unwrap();
    s.write_all(format!("GET {} HTTP/1.0\r\nHost: x\r\n\r\n", t.path).as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut body)
        .await
        .unwrap();
    let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str::<serde_json::Value>(json).unwrap()["open"]
        .as_u64()
        .unwrap()
}

async fn leave(args: &[String]) {
    let t = parse(&args[0]);
    let open_url = &args[1];
    let c = Client::new(args);
    let before = open_now(open_url).await;
    let mut r = c.get(&t).await.expect("connect");
    next_data(&mut r).await.expect("first event");
    assert_eq!(open_now(open_url).await, before + 1, "stream open upstream");
    drop(r);
    let left = Instant::now();
    let limit = Duration::from_secs(120);
    while open_now(open_url).await > before {
        if left.elapsed() > limit {
            println!("{}", serde_json::json!({"closed_after_ms": null}));
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "{}",
        serde_json::json!({"closed_after_ms": left.elapsed().as_secs_f64() * 1000.0})
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sse-latency") => sse_latency(&args[1..]).await,
        Some("hold") => hold(&args[1..]).await,
        Some("leave") => leave(&args[1..]).await,
        Some("idle") => idle(&args[1..]).await,
        _ => {
            eprintln!("usage: bench-client sse-latency|hold|leave|idle ...");
            std::process::exit(2);
        }
    }
}

/// ring, as the proxy uses it (rustls 0.23.48 deprecates it for want of post-quantum key
/// exchange; see mcp_edge's `pem::ring_provider`).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

//! The upstream every proxy in the benchmark forwards to (plain HTTP, or HTTPS with --tls-cert
//! and --tls-key for the pinned-upstream comparison).
//!
//! POST /mcp           a small JSON-RPC result (what an MCP tools/call answer looks like)
//! GET  /ticks?n&gap_ms SSE events stamped with their send time (µs since the Unix epoch)
//! GET  /idle          an SSE stream: one event, then quiet (a comment every 30 s)
//! GET  /open          {"open": N}: /idle streams still open here
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

fn sse(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap()
}

const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

async fn mcp(_body: Bytes) -> Response {
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(RESULT))
        .unwrap()
}

async fn ticks(Query(q): Query<BTreeMap<String, u64>>) -> Response {
    let n = q.get("n").copied().unwrap_or(100);
    let gap = Duration::from_millis(q.get("gap_ms").copied().unwrap_or(10));
    let s = futures::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let ev = format!("data: {{\"i\":{i},\"sent_us\":{}}}\n\n", now_us());
        Some((Ok::<_, std::io::Error>(Bytes::from(ev)), i + 1))
    });
    sse(Body::from_stream(s))
}

struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn idle(State(open): State<Arc<AtomicUsize>>) -> Response {
    open.fetch_add(1, Ordering::SeqCst);
    let guard = Open(open);
    let s = futures::stream::unfold(0u64, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let chunk = if i == 0 {
            "data: ready\n\n"
        } else {
            ": ping\n\n"
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
    })
    .map(move |x| {
        let _ = &guard;
        x
    });
    sse(Body::from_stream(s))
}

async fn open_count(State(open): State<Arc<AtomicUsize>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"open": open.load(Ordering::SeqCst)}))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:9000".into());
    let open = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/mcp", post(mcp))
        .route("/ticks", get(ticks))
        .route("/idle", get(idle))
        .route("/open", get(open_count))
        .with_state(open);
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    match (arg("--tls-cert"), arg("--tls-key")) {
        (Some(cert), Some(key)) => serve_tls(listener, app, &cert, &key).await,
        _ => axum::serve(listener, app).await.unwrap(),
    }
}

async fn serve_tls(listener: tokio::net::TcpListener, app: Router, cert: &str, key: &str) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = ring_provider().install_default();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}

/// ring, as the proxy uses it (rustls 0.23.48 deprecates it for want of post-quantum key
/// exchange; see mcp_edge's `pem::ring_provider`).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

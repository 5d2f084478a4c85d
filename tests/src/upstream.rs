//! A real HTTP upstream for the tests, shaped like an MCP server where it matters: Streamable
//! HTTP sessions on `/mcp`, the legacy `/sse` + `/message` pair, SSE streams with timestamps,
//! and an echo of what it received.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use futures::StreamExt;

#[derive(Clone)]
struct St {
    replica: String,
    sessions: Arc<Mutex<HashSet<String>>>,
    next: Arc<AtomicUsize>,
    open_streams: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

/// A running upstream; its server task ends when the test's runtime ends.
pub struct Upstream {
    pub addr: SocketAddr,
    pub replica: String,
    open_streams: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
}

impl Upstream {
    pub async fn start(replica: &str) -> Self {
        let st = St {
            replica: replica.to_string(),
            sessions: Arc::default(),
            next: Arc::default(),
            open_streams: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
        };
        let open_streams = st.open_streams.clone();
        let healthy = st.healthy.clone();
        let app = Router::new()
            .route("/ticks", get(ticks))
            .route("/forever", get(forever))
            .route("/flood", get(flood))
            .route("/silent", get(silent))
            .route("/healthz", get(healthz))
            .route("/mcp", post(mcp_post))
            .route("/sse", get(legacy_sse))
            .route("/message", post(legacy_message))
            .fallback(any(echo))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            replica: replica.to_string(),
            open_streams,
            healthy,
        }
    }

    /// What `/healthz` answers from now on: 200, or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SSE responses this upstream is still writing.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::SeqCst)
    }
}

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

pub fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn echo(
    State(st): State<St>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut h = BTreeMap::new();
    for (k, v) in &headers {
        h.insert(k.to_string(), v.to_str().unwrap_or("").to_string());
    }
    let json = serde_json::json!({
        "replica": st.replica,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        // Set when the request line carried an absolute-form target.
        "target_authority": uri.authority().map(|a| a.as_str()),
        "headers": h,
        "body_len": body.len(),
        "body_sha256": hex_sha256(&body),
    });
    let mut resp = (StatusCode::OK, axum::Json(json)).into_response();
    let rh = resp.headers_mut();
    rh.insert("mcp-protocol-version", "2025-06-18".parse().unwrap());
    rh.insert("mcp-session-id", "upstream-session-1".parse().unwrap());
    rh.insert("mcp-method", "tools/call".parse().unwrap());
    rh.insert("mcp-name", "search_docs".parse().unwrap());
    rh.insert("keep-alive", "timeout=5".parse().unwrap());
    resp
}

/// Never answers (an upstream that hangs before its response header).
async fn silent() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::OK.into_response()
}

/// 200 or 503, as set by [`Upstream::set_healthy`].
async fn healthz(State(st): State<St>) -> StatusCode {
    if st.healthy.load(Ordering::SeqCst) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `n` events `gap_ms` apart, each stamped with its send time in microseconds.
async fn ticks(Query(q): Query<BTreeMap<String, u64>>) -> Response {
    let n = q.get("n").copied().unwrap_or(5);
    let gap = Duration::from_millis(q.get("gap_ms").copied().unwrap_or(100));
    let stream = futures::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        let ev = format!("id: {i}\ndata: {{\"i\":{i},\"sent_us\":{}}}\n\n", now_us());
        Some((Ok::<_, std::io::Error>(Bytes::from(ev)), i + 1))
    });
    sse(Body::from_stream(stream))
}

struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An event every 50 ms until the client goes away.
async fn forever(State(st): State<St>) -> Response {
    st.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = Arc::new(Counted(st.open_streams.clone()));
    let stream = futures::stream::unfold(0u64, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n"))),
            i + 1,
        ))
    })
    .map(move |x| {
        let _keep = &guard;
        x
    });
    sse(Body::from_stream(stream))
}

/// An SSE stream that writes 64 KiB events as fast as it can, forever: a client that stops
/// reading it fills every buffer on the way. Counted in `open_streams` while it runs.
async fn flood(State(st): State<St>) -> Response {
    st.open_streams.fetch_add(1, Ordering::SeqCst);
    let guard = Arc::new(Counted(st.open_streams.clone()));
    let event = Bytes::from(format!("data: {}\n\n", "x".repeat(64 * 1024)));
    let stream = futures::stream::repeat(event).map(move |ev| {
        let _keep = &guard;
        Ok::<_, std::io::Error>(ev)
    });
    sse(Body::from_stream(stream))
}

fn new_session(st: &St) -> String {
    let id = format!("{}-{}", st.replica, st.next.fetch_add(1, Ordering::SeqCst));
    st.sessions.lock().unwrap().insert(id.clone());
    id
}

/// Streamable HTTP: `initialize` creates a session (answered as SSE); anything else needs a
/// session this replica created.
async fn mcp_post(State(st): State<St>, headers: HeaderMap, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    if text.contains("\"initialize\"") {
        let id = new_session(&st);
        let ev = format!(
            "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"replica\":\"{}\"}}}}\n\n",
            st.replica
        );
        let mut resp = sse(Body::from(ev));
        resp.headers_mut()
            .insert("mcp-session-id", id.parse().unwrap());
        return resp;
    }
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !st.sessions.lock().unwrap().contains(session) {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    }
    axum::Json(serde_json::json!({"replica": st.replica, "session": session})).into_response()
}

/// Legacy HTTP+SSE: the first event names the POST endpoint with the session id.
async fn legacy_sse(State(st): State<St>) -> Response {
    let id = new_session(&st);
    let first = format!("event: endpoint\ndata: /message?sessionId={id}\n\n");
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(first)) })
        .chain(futures::stream::unfold((), |_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((Ok(Bytes::from_static(b": ping\n\n")), ()))
        }));
    sse(Body::from_stream(stream))
}

async fn legacy_message(
    State(st): State<St>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let session = q.get("sessionId").cloned().unwrap_or_default();
    if !st.sessions.lock().unwrap().contains(&session) {
        return (StatusCode::NOT_FOUND, "unknown session").into_response();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"replica": st.replica, "session": session})),
    )
        .into_response()
}

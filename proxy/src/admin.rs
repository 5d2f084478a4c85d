//! The metrics and health listener: `/metrics`, `/healthz`, `/readyz`, and the status page
//! (`/status`).

use std::net::{SocketAddr, TcpListener};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use std::sync::Arc;

use crate::config::Listen;
use crate::live::Live;
use crate::metrics;
use crate::status::{self, Window};

/// The admin listener's app: the listen addresses (bound once, never reloaded) and, for the
/// status page, the live snapshot.
pub struct Admin {
    pub listen: Listen,
    pub live: Arc<Live>,
    pub window: Window,
}

/// Whether something listens on `addr` already: binding it must fail with "address in use".
/// (Connecting would do too, but each probe of the TLS port would log a handshake error.)
fn is_bound(addr: SocketAddr) -> bool {
    matches!(TcpListener::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => {
                self.window.note();
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics::render(),
                )
            }
            "/status" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status::render(&self.live, &self.window).into_bytes(),
            ),
            "/healthz" => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let addrs = [self.listen.http, Some(self.listen.https)];
                // Ready means: a configuration is loaded (it is, or we would not run) and every
                // proxy listener is bound (we checked at start that nobody else held them).
                if addrs.iter().flatten().all(|a| is_bound(*a)) {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"listeners not accepting yet\n".to_vec(),
                    )
                }
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

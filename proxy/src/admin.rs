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

/// Whether the request may read `/metrics` and `/status`: no token configured, or the bearer
/// token whose SHA-256 is configured (compared in constant time).
fn allowed(session: &ServerSession, token: Option<&[u8; 32]>) -> bool {
    let Some(hash) = token else {
        return true;
    };
    let presented = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| crate::pem::sha256(t.trim().as_bytes()));
    presented.is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(&p[..], &hash[..])))
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let guarded = matches!(path, "/metrics" | "/status");
        if guarded && !allowed(session, self.live.load().config.admin_token.as_ref()) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                b"a bearer token is required (admin.token)\n".to_vec(),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"mcp-edge admin\""),
            );
            return r;
        }
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

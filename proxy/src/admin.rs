//! The metrics and health listener: `/metrics`, `/healthz`, `/readyz`, and the status page
//! (`/status`); plain HTTP, or HTTPS with optional client certificates (`admin.tls`).

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

/// The admin listener's app: the listen addresses (bound once, never reloaded), whether
/// `/metrics` and `/status` need a client certificate (`admin.tls.client_ca`, read at start)
/// and, for the status page, the live snapshot.
pub struct Admin {
    pub listen: Listen,
    pub client_certificate: bool,
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

/// Whether the connection presented a client certificate: rustls keeps one only after it
/// chained to `admin.tls.client_ca`, so its presence is the verification.
fn has_client_certificate(session: &ServerSession) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some_and(|tls| !tls.cert_digest.is_empty())
}

/// The refusal of a guarded path: what is missing, and how to present it.
fn refused(missing_certificate: bool) -> Response<Vec<u8>> {
    if missing_certificate {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            b"a client certificate is required (admin.tls.client_ca)\n".to_vec(),
        );
    }
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        b"a bearer token is required (admin.token)\n".to_vec(),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"mcp-edge admin\""),
    );
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let guarded = matches!(path, "/metrics" | "/status");
        if guarded {
            let missing_certificate = self.client_certificate && !has_client_certificate(session);
            if missing_certificate
                || !allowed(session, self.live.load().config.admin.token.as_ref())
            {
                return refused(missing_certificate);
            }
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

/// Always the one certificate of `admin.tls`.
#[derive(Debug)]
struct OneCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OneCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The admin listener's TLS: its certificate and, with `client_ca`, client certificates that
/// must chain to it when presented (connections without one are accepted: probes of `/healthz`
/// and `/readyz` need none; `/metrics` and `/status` refuse them).
pub fn tls_settings(
    tls: &crate::config::AdminTls,
) -> Result<pingora::listeners::tls::TlsSettings, String> {
    let pair = crate::pem::load_key_pair(&tls.cert, &tls.key).map_err(|e| e.to_string())?;
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate(
        &tls.cert.to_string_lossy(),
        &tls.key.to_string_lossy(),
    )
    .map_err(|e| e.to_string())?;
    settings.set_cert_resolver(Arc::new(OneCertificate(pair.certified)));
    // Each connection shows its client certificate anew: one that expired, or whose CA was
    // replaced, does not live on in a resumed session.
    crate::pem::without_session_resumption(&mut settings);
    if let Some(ca) = &tls.client_ca {
        let roots = crate::config::client_roots(ca)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(crate::pem::ring_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
        settings.set_client_cert_verifier(verifier);
    }
    Ok(settings)
}

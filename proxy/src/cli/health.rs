//! `mcp-edge health`: the container health check. Asks the admin listener of the configuration
//! for `/readyz` (or `/healthz`) and succeeds on 200, so an image needs no shell, curl or
//! `/dev/tcp` to be checked.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::CertificateDer;

use crate::config::Config;

/// Where to reach a listener bound to `addr` from this machine: its own address, or loopback
/// when it is bound to every address.
pub fn local_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// GET `path` on the admin listener within `timeout` (over TLS when `admin.tls` is set,
/// trusting exactly the certificate configured there); the answer on 200, an error naming the
/// address otherwise.
pub fn probe(config: &Config, path: &str, timeout: Duration) -> Result<String, String> {
    let to = local_address(config.listen.metrics);
    let fail = |what: String| format!("{to}{path}: {what}");
    let stream =
        TcpStream::connect_timeout(&to, timeout).map_err(|e| fail(format!("connect: {e}")))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    let answer = match &config.admin.tls {
        None => exchange(stream, &request),
        Some(tls) => {
            let pinned =
                crate::pem::read_certificates(&tls.cert).map_err(|e| fail(e.to_string()))?;
            let client =
                rustls::ClientConfig::builder_with_provider(Arc::new(crate::pem::ring_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| fail(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned(pinned[0].clone())))
                    .with_no_client_auth();
            let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
            let conn = rustls::ClientConnection::new(Arc::new(client), name)
                .map_err(|e| fail(e.to_string()))?;
            exchange(rustls::StreamOwned::new(conn, stream), &request)
        }
    }
    .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
    match status.split(' ').nth(1) {
        Some("200") => Ok(format!("{to}{path}: {body}")),
        Some(code) => Err(fail(format!("{code} {body}"))),
        None => Err(fail("no HTTP answer".into())),
    }
}

/// Sends `request`, reads the answer until the listener closes (at most 4 KiB: the status
/// line and a short body are all a probe needs).
fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut answer = Vec::with_capacity(512);
    match stream.take(4096).read_to_end(&mut answer) {
        // rustls reports a peer that closes without close_notify; the answer is complete.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        other => {
            other?;
        }
    }
    Ok(answer)
}

/// Trusts exactly one certificate: the admin listener's own, read from `admin.tls.cert`
/// (a probe of this machine's listener needs no CA, and takes no other certificate).
#[derive(Debug)]
struct Pinned(CertificateDer<'static>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the certificate of admin.tls.cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &schemes())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &schemes())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        schemes().supported_schemes()
    }
}

fn schemes() -> rustls::crypto::WebPkiSupportedAlgorithms {
    crate::pem::ring_provider().signature_verification_algorithms
}

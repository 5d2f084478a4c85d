//! `mcp-edge health`: the container health check. Asks the admin listener for `/readyz` (or
//! `/healthz`) and succeeds on 200, so an image needs no shell, curl or `/dev/tcp` to be checked.
//!
//! Where to ask: `--address` (and `--tls-cert`), which need no file at all (the image's health
//! check: a file mid-edit, or one a reload would refuse while the process serves on, must not
//! make an orchestrator restart it), or else `listen.metrics` and `admin.tls.cert` of the
//! configuration file, read without validating the rest.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::CertificateDer;
use serde_yaml_ng::Value;

/// Where the probe goes: the admin address, and its certificate when it speaks TLS.
#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub tls_cert: Option<PathBuf>,
}

/// The probe's target, read from the configuration file `path` without validating the rest.
pub fn target(path: &Path) -> Result<Target, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("{}: not valid YAML: {e}", path.display()))?;
    let at = |keys: &[&str]| {
        keys.iter()
            .try_fold(&doc, |v, k| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let metrics =
        at(&["listen", "metrics"]).unwrap_or_else(|| crate::config::DEFAULT_METRICS.into());
    let addr = metrics
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            format!(
                "{}: listen.metrics {metrics:?} is not an address",
                path.display()
            )
        })?;
    let tls_cert = at(&["admin", "tls", "cert"]).map(|c| crate::config::base_dir(path).join(c));
    Ok(Target { addr, tls_cert })
}

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

/// GET `path` on the admin listener, all of it within `timeout` (over TLS when the
/// configuration names `admin.tls.cert`, trusting exactly that certificate); the answer on 200,
/// an error naming the address otherwise.
pub fn probe(target: &Target, path: &str, timeout: Duration) -> Result<String, String> {
    let to = local_address(target.addr);
    let fail = |what: String| format!("{to}{path}: {what}");
    let deadline = Instant::now() + timeout;
    let stream =
        TcpStream::connect_timeout(&to, timeout).map_err(|e| fail(format!("connect: {e}")))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n");
    let sock = stream.try_clone().map_err(|e| fail(e.to_string()))?;
    let answer = match &target.tls_cert {
        None => exchange(stream, &sock, &request, deadline),
        Some(cert) => {
            let pinned = crate::pem::read_certificates(cert).map_err(|e| fail(e.to_string()))?;
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
            exchange(
                rustls::StreamOwned::new(conn, stream),
                &sock,
                &request,
                deadline,
            )
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

/// The time left before `deadline` as a socket timeout (an error once it has passed).
fn left(deadline: Instant) -> std::io::Result<Option<Duration>> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer within the timeout",
        )),
    }
}

/// Sends `request` on `stream` and reads the answer until the listener closes, at most 4 KiB
/// (a status line and a short body are all a probe needs), every read and write bounded by
/// what is left of `deadline` (set on `sock`, the stream's socket).
fn exchange(
    mut stream: impl Read + Write,
    sock: &TcpStream,
    request: &str,
    deadline: Instant,
) -> std::io::Result<Vec<u8>> {
    // Over TLS the handshake happens inside this write, reading as well as writing.
    sock.set_write_timeout(left(deadline)?)?;
    sock.set_read_timeout(left(deadline)?)?;
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut answer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while answer.len() < 4096 {
        sock.set_read_timeout(left(deadline)?)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n.min(4096 - answer.len())]),
            // rustls reports a peer that closes without close_notify; the answer is complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(e),
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

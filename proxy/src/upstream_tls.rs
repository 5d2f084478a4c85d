//! HTTPS upstreams: exactly the trust the operator names, never verification switched off.
//!
//! pingora 0.9 has no per-peer certificate verifier, and rustls/webpki refuse the certificates
//! people actually have as trust anchors (`openssl req -x509` output is `CA:TRUE`; CN-only
//! certificates have no SAN). So the TLS connection to an HTTPS upstream is made here, with a
//! rustls client of our own, and handed to pingora as an already-secured stream (its `custom_l4`
//! hook); pingora then speaks HTTP/1.1 over it exactly as to a plain upstream.
//!
//! Trust per upstream, one of:
//! - `pin_sha256`: the leaf's SHA-256 must be one of the pins, and the handshake signature must
//!   verify with that leaf's public key (checked here with ring, so any X.509 version, `CA:TRUE`,
//!   CN-only or IP certificates work). Names and dates are not checked: the pin is the identity.
//! - `ca`: standard WebPKI verification against those CAs only (names from the SAN, dates).
//! - neither: the system's roots, standard verification.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls;

/// The `upstream:` keys about TLS, as written (paths resolved).
#[derive(Debug, Default)]
pub struct Settings {
    pub ca: Option<PathBuf>,
    pub pins: Vec<String>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How one upstream's TLS connections are made and verified.
pub struct UpstreamTls {
    pub server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    /// `pin`, `ca` or `system`.
    pub trust: &'static str,
    /// Keeps pooled connections of different trust settings apart.
    pub group_key: u64,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A pin as 32 bytes: hex (colons allowed) or base64.
pub fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let t = s.trim();
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
        }
        return Ok(out);
    }
    let b64 = base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.trim_end_matches('='))
        });
    match b64 {
        Ok(v) if v.len() == 32 => Ok(v.try_into().expect("checked length")),
        _ => Err(format!(
            "{t:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed, or base64 of 32 bytes)"
        )),
    }
}

pub fn sha256(der: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl UpstreamTls {
    /// Checks every file and value; errors are `(key, message)` for the config loader.
    pub fn build(url_host: &str, s: &Settings) -> Result<UpstreamTls, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        let name = s.server_name.as_deref().unwrap_or(url_host);
        // Never empty: pingora's own connector would skip verification on an empty SNI.
        let server_name = match ServerName::try_from(name.trim_matches(['[', ']']).to_string()) {
            Ok(n) if !name.is_empty() => Some(n),
            _ => {
                errors.push((
                    "server_name",
                    format!("{name:?} is not a DNS name or IP address"),
                ));
                None
            }
        };
        let mut pins = Vec::new();
        for p in &s.pins {
            match parse_pin(p) {
                Ok(p) => pins.push(p),
                Err(e) => errors.push(("pin_sha256", e)),
            }
        }
        if !s.pins.is_empty() && s.ca.is_some() {
            errors.push((
                "pin_sha256",
                "give either `ca` or `pin_sha256`, not both".to_string(),
            ));
        }
        let provider = provider();
        let verifier: Option<(Arc<dyn ServerCertVerifier>, &'static str)> = if !s.pins.is_empty() {
            Some((
                Arc::new(LeafVerifier {
                    accept: Accept::Pins(pins.clone()),
                    schemes: provider
                        .signature_verification_algorithms
                        .supported_schemes(),
                }),
                "pin",
            ))
        } else if let Some(ca) = &s.ca {
            match tls::read_certificates(ca) {
                Ok(certs) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let mut bad = None;
                    for c in certs {
                        if let Err(e) = roots.add(c) {
                            bad = Some(e);
                        }
                    }
                    match bad {
                        Some(e) => {
                            errors.push(("ca", format!("{}: not a usable CA: {e}", ca.display())));
                            None
                        }
                        None => rustls::client::WebPkiServerVerifier::builder_with_provider(
                            Arc::new(roots),
                            provider.clone(),
                        )
                        .build()
                        .map_err(|e| errors.push(("ca", e.to_string())))
                        .ok()
                        .map(|v| (v as Arc<dyn ServerCertVerifier>, "ca")),
                    }
                }
                Err(e) => {
                    errors.push(("ca", e.to_string()));
                    None
                }
            }
        } else {
            match rustls_platform_verifier::Verifier::new(provider.clone()) {
                Ok(v) => Some((Arc::new(v) as Arc<dyn ServerCertVerifier>, "system")),
                Err(e) => {
                    errors.push(("ca", format!("the system's roots cannot be used: {e}")));
                    None
                }
            }
        };
        let client = match (&s.client_cert, &s.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                errors.push(("client_key", "client_cert needs client_key".to_string()));
                None
            }
            (None, Some(_)) => {
                errors.push(("client_cert", "client_key needs client_cert".to_string()));
                None
            }
            (Some(cert), Some(key)) => match tls::load_key_pair(cert, key) {
                Ok(c) => Some(c.certified),
                Err(e) => {
                    let key = if e.is_about_key() {
                        "client_key"
                    } else {
                        "client_cert"
                    };
                    errors.push((key, e.to_string()));
                    None
                }
            },
        };
        let (Some(server_name), Some((verifier, trust)), true) =
            (server_name, verifier, errors.is_empty())
        else {
            return Err(errors);
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| vec![("server_name", e.to_string())])?
            .dangerous() // a verifier of ours: pins, the given CA, or the system's roots
            .with_custom_certificate_verifier(verifier);
        let mut config = match client {
            Some(ck) => builder.with_client_cert_resolver(Arc::new(ClientCert(ck))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (name, trust, &pins, &s.ca, &s.client_cert, &s.client_key).hash(&mut h);
            h.finish() | 1 // never 0, the key of plain upstreams
        };
        Ok(UpstreamTls {
            server_name,
            config: Arc::new(config),
            trust,
            group_key,
        })
    }

    /// pingora's hook that makes the TLS connection for this upstream.
    pub fn connector(self: &Arc<Self>, connect_timeout: Duration) -> Arc<TlsConnect> {
        Arc::new(TlsConnect {
            tls: self.clone(),
            connect_timeout,
        })
    }
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The presented leaf is not one of the pins.
#[derive(Debug)]
pub struct PinMismatch(pub String);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "certificate sha256 {} matches no pin", self.0)
    }
}

impl std::error::Error for PinMismatch {}

/// What a [`LeafVerifier`] accepts as the server's leaf.
#[derive(Debug)]
enum Accept {
    /// Exactly these SHA-256 fingerprints.
    Pins(Vec<[u8; 32]>),
    /// Any chain, recorded: for `upstream-cert`, which shows a certificate for a human to review
    /// and pin. Nothing is trusted or proxied on its word.
    Record(std::sync::Mutex<Vec<Vec<u8>>>),
}

/// Decides on the leaf alone, and always checks the handshake signature with that leaf's key
/// (so the server is shown to hold the key of the certificate it presents).
#[derive(Debug)]
struct LeafVerifier {
    accept: Accept,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for LeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.accept {
            Accept::Pins(pins) => {
                let got = sha256(end_entity);
                if pins.contains(&got) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        rustls::OtherError(Arc::new(PinMismatch(hex(&got)))),
                    )))
                }
            }
            Accept::Record(chain) => {
                let mut chain = chain.lock().unwrap_or_else(|e| e.into_inner());
                chain.push(end_entity.to_vec());
                chain.extend(intermediates.iter().map(|c| c.to_vec()));
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, true)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, false)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Checks a handshake signature with the public key of `cert` itself (which the pin already
/// matched), whatever the certificate's version or extensions.
fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    tls12: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    use ring::signature as sig;
    let alg: &dyn sig::VerificationAlgorithm = match dss.scheme {
        SignatureScheme::ECDSA_NISTP256_SHA256 => &sig::ECDSA_P256_SHA256_ASN1,
        SignatureScheme::ECDSA_NISTP384_SHA384 => &sig::ECDSA_P384_SHA384_ASN1,
        SignatureScheme::ED25519 => &sig::ED25519,
        SignatureScheme::RSA_PSS_SHA256 => &sig::RSA_PSS_2048_8192_SHA256,
        SignatureScheme::RSA_PSS_SHA384 => &sig::RSA_PSS_2048_8192_SHA384,
        SignatureScheme::RSA_PSS_SHA512 => &sig::RSA_PSS_2048_8192_SHA512,
        SignatureScheme::RSA_PKCS1_SHA256 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA256,
        SignatureScheme::RSA_PKCS1_SHA384 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA384,
        SignatureScheme::RSA_PKCS1_SHA512 if tls12 => &sig::RSA_PKCS1_2048_8192_SHA512,
        _ => {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoSignatureSchemesInCommon,
            ))
        }
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let key = parsed.public_key().subject_public_key.data.as_ref();
    sig::UnparsedPublicKey::new(alg, key)
        .verify(message, dss.signature())
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))
}

/// Short reason for a TLS failure towards an upstream, for metrics and logs.
pub fn reason_of(e: &rustls::Error) -> &'static str {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "tls_unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "tls_expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls_not_yet_valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "tls_name_mismatch"
            }
            CertificateError::Other(o) if o.0.downcast_ref::<PinMismatch>().is_some() => {
                "tls_pin_mismatch"
            }
            CertificateError::BadSignature => "tls_bad_signature",
            _ => "tls_bad_certificate",
        },
        rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::DecryptError,
        ) => "tls_client_cert_refused",
        _ => "tls_handshake",
    }
}

/// A reason in words for the log.
fn explain(reason: &str, trust: &str) -> &'static str {
    match (reason, trust) {
        ("tls_pin_mismatch", _) => "the certificate matches none of pin_sha256",
        ("tls_unknown_issuer", "ca") => "the certificate is not signed by the CA in `ca`",
        ("tls_unknown_issuer", _) => {
            "the certificate is not signed by a CA the system trusts (pin it, or give `ca`)"
        }
        ("tls_expired", _) => "the certificate has expired",
        ("tls_not_yet_valid", _) => "the certificate is not valid yet",
        ("tls_name_mismatch", _) => {
            "the certificate does not name server_name (set server_name, or pin it)"
        }
        ("tls_client_cert_refused", _) => {
            "the upstream refused the client certificate (or wants one: client_cert/client_key)"
        }
        ("tls_bad_signature", _) => "the handshake signature does not verify",
        _ => "TLS handshake failed",
    }
}

/// The TLS reason somewhere in an error's chain (a handshake failure, or the alert a server
/// sends after a TLS 1.3 handshake when it refuses the client certificate).
pub fn reason_in(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(reason_of(r));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(reason_of(r));
            }
        }
        cur = err.source();
    }
    None
}

/// The TLS stream handed to pingora.
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl VirtualSocket for TlsSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> std::io::Result<()> {
        let tcp = self.0.get_ref().0;
        match opt {
            VirtualSockOpt::NoDelay => tcp.set_nodelay(true),
            VirtualSockOpt::KeepAlive(k) => socket2::SockRef::from(tcp).set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(k.idle)
                    .with_interval(k.interval)
                    .with_retries(k.count as u32),
            ),
            _ => Ok(()),
        }
    }
}

/// pingora's `custom_l4` connector for one HTTPS upstream.
#[derive(Debug)]
pub struct TlsConnect {
    tls: Arc<UpstreamTls>,
    connect_timeout: Duration,
}

#[async_trait]
impl pingora::connectors::L4Connect for TlsConnect {
    async fn connect(&self, addr: &PeerAddr) -> pingora::Result<Stream> {
        let PeerAddr::Inet(addr) = addr else {
            return Err(Error::explain(
                ErrorType::ConnectError,
                "HTTPS upstreams are reached over TCP",
            ));
        };
        let connecting = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| {
                let etype = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => ErrorType::ConnectRefused,
                    _ => ErrorType::ConnectError,
                };
                Error::because(etype, format!("connecting to {addr}"), e)
            })?;
            let _ = tcp.set_nodelay(true);
            let connector = tokio_rustls::TlsConnector::from(self.tls.config.clone());
            connector
                .connect(self.tls.server_name.clone(), tcp)
                .await
                .map_err(|e| {
                    let reason = reason_in(&e).unwrap_or("tls_handshake");
                    Error::because(
                        ErrorType::Custom(reason),
                        format!(
                            "TLS to {addr} as {}: {}",
                            self.tls.server_name.to_str(),
                            explain(reason, self.tls.trust)
                        ),
                        e,
                    )
                })
        };
        let tls = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ConnectTimedout,
                    format!(
                        "TLS connection to {addr} not set up within {:?}",
                        self.connect_timeout
                    ),
                ))
            }
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(TlsSocket(
            tls,
        )))))
    }
}

/// A SAN entry as people write it: `example.com`, `192.168.1.20`, `::1`; others as x509-parser
/// shows them.
fn general_name(n: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    match n {
        GeneralName::DNSName(d) => d.to_string(),
        GeneralName::IPAddress(b) => match b.len() {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string(),
            16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")).to_string(),
            _ => format!("{n}"),
        },
        other => format!("{other}"),
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `mcp-edge upstream-cert`: connects to `url`, prints the presented chain and a YAML snippet
/// that pins the leaf, with warnings for an expired leaf or one that does not name the host.
pub async fn inspect(url: &str, server_name: Option<&str>) -> Result<String, String> {
    use std::fmt::Write;
    let u = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if u.scheme() != "https" {
        return Err(format!("{url}: expected an https:// URL"));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(format!("{url}: no host")),
    };
    let port = u.port_or_known_default().unwrap_or(443);
    let name = server_name.unwrap_or(&host);
    let sni = ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))?;
    let provider = provider();
    let recorder = Arc::new(LeafVerifier {
        accept: Accept::Record(Default::default()),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous() // inspection only: the chain is shown, not trusted
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let connect = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(sni, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| format!("{addr}: no TLS handshake within 10s"))??;
    let version = tls.get_ref().1.protocol_version();
    drop(tls);
    let Accept::Record(recorded) = &recorder.accept else {
        unreachable!("made as a recorder above")
    };
    let chain = recorded.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let leaf_der = chain.first().ok_or("the server presented no certificate")?;

    let now = crate::certs::unix_now();
    let mut out = String::new();
    let mut warnings = Vec::new();
    let _ = writeln!(out, "{url} ({version:?}, SNI {name})");
    for (i, der) in chain.iter().enumerate() {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {i} cannot be parsed: {e}"))?;
        let sans: Vec<String> = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| s.value.general_names.iter().map(general_name).collect())
            .unwrap_or_default();
        let ca = c
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|b| b.value.ca);
        let self_signed = c.subject() == c.issuer();
        let (nb, na) = (c.validity().not_before, c.validity().not_after);
        let _ = writeln!(out, "\n[{i}] {}", if i == 0 { "leaf" } else { "chain" });
        let _ = writeln!(out, "  subject:     {}", c.subject());
        let _ = writeln!(
            out,
            "  SAN:         {}",
            if sans.is_empty() {
                "(none)".into()
            } else {
                sans.join(", ")
            }
        );
        let _ = writeln!(out, "  issuer:      {}", c.issuer());
        let _ = writeln!(out, "  valid:       {nb} to {na}");
        let _ = writeln!(
            out,
            "  self-signed: {}{}",
            if self_signed { "yes" } else { "no" },
            if ca { " (CA:TRUE)" } else { "" }
        );
        let _ = writeln!(out, "  SHA-256:     {}", colon_hex(&sha256(der)));
        if i == 0 {
            if na.timestamp() <= now {
                warnings.push(format!("the certificate EXPIRED on {na}"));
            } else if nb.timestamp() > now {
                warnings.push(format!("the certificate is not valid before {nb}"));
            }
            let cn: Vec<String> = c
                .subject()
                .iter_common_name()
                .filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect();
            let named = sans
                .iter()
                .chain(cn.iter())
                .any(|n| n.eq_ignore_ascii_case(name.trim_matches(['[', ']'])));
            if !named {
                warnings.push(format!(
                    "the certificate does not name {name} (SAN: {}; CN: {}): a pin still works, `ca:` would not",
                    if sans.is_empty() { "none".into() } else { sans.join(", ") },
                    if cn.is_empty() { "none".into() } else { cn.join(", ") }
                ));
            }
        }
    }
    let _ = writeln!(out);
    for w in &warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    let _ = writeln!(
        out,
        "\n# Paste into the host's config after checking the fingerprint out of band:\nupstream:\n  urls: [\"https://{addr}\"]\n  pin_sha256: [\"{}\"]",
        hex(&sha256(leaf_der))
    );
    if server_name.is_some() {
        let _ = writeln!(out, "  server_name: {name}");
    }
    Ok(out)
}

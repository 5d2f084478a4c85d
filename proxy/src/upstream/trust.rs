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
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::config::{self, Trust};
use crate::pem::{hex, sha256};

/// Why the rustls client of an HTTPS upstream cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the CA certificates in `ca` cannot be used: {0}")]
    Ca(rustls::Error),
    #[error("the system's roots cannot be used: {0}")]
    SystemRoots(rustls::Error),
    #[error("the client key cannot be used: {0}")]
    ClientKey(rustls::Error),
    #[error("TLS versions: {0}")]
    Protocol(rustls::Error),
}

/// How one upstream's TLS connections are made and verified.
pub struct UpstreamTls {
    pub server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    /// `pin`, `ca` or `system`.
    pub trust: &'static str,
    /// Keeps pooled connections of different trust apart: derived from the contents of the
    /// trust (pins, CA and client certificates, key), not from file paths.
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
    Arc::new(crate::pem::ring_provider())
}

impl UpstreamTls {
    /// The rustls client for `settings` (read and checked by the configuration).
    pub fn build(settings: &config::UpstreamTls) -> Result<Self, TrustError> {
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = match &settings.trust {
            Trust::Pins(pins) => Arc::new(LeafVerifier {
                accept: Accept::Pins(pins.clone()),
                schemes: provider
                    .signature_verification_algorithms
                    .supported_schemes(),
            }),
            Trust::Ca(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone()).map_err(TrustError::Ca)?;
                }
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TrustError::Ca(rustls::Error::General(e.to_string())))?
            }
            Trust::System => Arc::new(
                rustls_platform_verifier::Verifier::new(provider.clone())
                    .map_err(TrustError::SystemRoots)?,
            ),
        };
        let client = match &settings.client {
            None => None,
            Some(id) => {
                let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(&id.key_pem)
                    .map_err(|e| TrustError::ClientKey(rustls::Error::General(e.to_string())))?;
                Some(Arc::new(
                    CertifiedKey::from_der(id.chain.clone(), key, &provider)
                        .map_err(TrustError::ClientKey)?,
                ))
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TrustError::Protocol)?
            .dangerous() // a verifier of ours: pins, the given CA, or the system's roots
            .with_custom_certificate_verifier(verifier);
        let mut config = match client {
            Some(ck) => builder.with_client_cert_resolver(Arc::new(ClientCert(ck))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let fp = settings.fingerprint();
        let mut first = [0u8; 8];
        first.copy_from_slice(&fp[..8]);
        Ok(Self {
            server_name: settings.server_name.clone(),
            config: Arc::new(config),
            trust: settings.trust.kind(),
            group_key: u64::from_be_bytes(first) | 1, // never 0, the key of plain upstreams
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
            // A socket this process cannot make (out of descriptors or memory) is a local
            // shortage, not the replica's fault: an internal error, as pingora's own
            // connector says for plain upstreams, which takes no healthy replica out.
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| {
                Error::because(ErrorType::InternalError, format!("a socket for {addr}"), e)
            })?;
            let tcp = socket.connect(*addr).await.map_err(|e| {
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

/// A client that accepts whatever chain a server presents and records it: for
/// `mcp-edge upstream-cert`, which shows a certificate for a human to review and pin. Nothing is
/// trusted or proxied on its word. The handshake signature is still checked against the leaf.
pub struct ChainRecorder {
    verifier: Arc<LeafVerifier>,
}

impl Default for ChainRecorder {
    fn default() -> Self {
        Self {
            verifier: Arc::new(LeafVerifier {
                accept: Accept::Record(Default::default()),
                schemes: provider()
                    .signature_verification_algorithms
                    .supported_schemes(),
            }),
        }
    }
}

impl ChainRecorder {
    /// A rustls client that records into this recorder.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, rustls::Error> {
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous() // inspection only: the chain is shown, not trusted
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_no_client_auth())
    }

    /// The chain presented, leaf first (DER).
    pub fn chain(&self) -> Vec<Vec<u8>> {
        match &self.verifier.accept {
            Accept::Record(chain) => chain.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Accept::Pins(_) => Vec::new(),
        }
    }
}

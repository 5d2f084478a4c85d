//! Key material from PEM: certificate chains and private keys read, parsed and checked to
//! belong together, and what the proxy needs to know of a certificate (names, issuer, dates).
//! Nothing reaches rustls or pingora without passing here: pingora panics on bad key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::names::HostName;
/// A problem with certificate or key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyPairError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        is_key: bool,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: certificate cannot be parsed: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{}: no PEM private key found (PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the key in {} does not belong to the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The process's rustls crypto provider: ring, the one pingora installs. rustls 0.23.48
/// deprecates it for its lack of post-quantum key exchange (ML-KEM); the alternative, aws-lc-rs,
/// would add a second crypto library with a C and cmake build, and two providers compiled in
/// make the first builder that runs before an install panic (NOTES.md). Kept on purpose, here
/// only; revisit when pingora offers aws-lc-rs under rustls.
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Turns TLS session resumption off on a listener: no session cache, no TLS 1.3 tickets, so
/// every connection makes a full handshake and its client certificate (if any) is verified
/// again, at that moment (a resumed session keeps the chain verified when it began).
pub fn without_session_resumption(settings: &mut pingora::listeners::tls::TlsSettings) {
    settings.set_server_config_adjust(Box::new(|config| {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }));
}

impl KeyPairError {
    /// Whether the problem is in the key file (else the certificate file).
    pub fn is_about_key(&self) -> bool {
        match self {
            Self::Read { is_key, .. } => *is_key,
            Self::NoKey { .. } | Self::BadKey { .. } => true,
            _ => false,
        }
    }
}

/// What the proxy knows of a certificate besides the key material.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// DNS names and IP addresses in the SAN.
    pub names: Vec<String>,
    pub issuer: String,
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// A certificate chain with its key, checked to belong together, ready for rustls.
#[derive(Clone)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl LoadedCert {
    /// Whether the certificate names every one of `names`.
    pub fn covers<'a>(&self, mut names: impl Iterator<Item = &'a HostName>) -> bool {
        names.all(|n| self.info.names.iter().any(|c| c == n.as_str()))
    }
}

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyPairError> {
    let pem = std::fs::read(path).map_err(|source| KeyPairError::Read {
        path: path.to_path_buf(),
        is_key: false,
        source,
    })?;
    parse_certificates(&pem, path)
}

pub fn parse_certificates(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, KeyPairError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| KeyPairError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(KeyPairError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads and checks a certificate chain and its key from two PEM files.
pub fn load_key_pair(cert: &Path, key: &Path) -> Result<LoadedCert, KeyPairError> {
    let (cert_pem, key_pem) = read_pair(cert, key)?;
    key_pair_from_pem(&cert_pem, cert, &key_pem, key)
}

/// The bytes of a certificate file and its key file, unchecked.
pub fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), KeyPairError> {
    let read = |path: &Path, is_key| {
        std::fs::read(path).map_err(|source| KeyPairError::Read {
            path: path.to_path_buf(),
            is_key,
            source,
        })
    };
    Ok((read(cert, false)?, read(key, true)?))
}

/// Checks a PEM chain and key: both parse, the key is usable by rustls, and it belongs to the
/// leaf. pingora panics on bad key material, so nothing reaches it without passing here.
pub fn key_pair_from_pem(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<LoadedCert, KeyPairError> {
    let chain = parse_certificates(cert_pem, cert_path)?;
    let info = cert_info(&chain[0]).map_err(|reason| KeyPairError::BadCertificate {
        path: cert_path.to_path_buf(),
        reason,
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => KeyPairError::NoKey {
            path: key_path.to_path_buf(),
        },
        other => KeyPairError::BadKey {
            path: key_path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    let provider = ring_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => KeyPairError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        },
        other => KeyPairError::BadKey {
            path: key_path.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    Ok(LoadedCert {
        certified: Arc::new(certified),
        info,
    })
}

/// Names, issuer and validity of a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, String> {
    use x509_parser::extensions::GeneralName;
    let (_, x) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => names.extend(san_ip(b).map(|ip| ip.to_string())),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        names,
        issuer: x.issuer().to_string(),
        not_before: x.validity().not_before.timestamp(),
        not_after: x.validity().not_after.timestamp(),
    })
}

/// The address in a SAN `iPAddress` entry (4 or 16 bytes), if it is one.
pub fn san_ip(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match (<[u8; 4]>::try_from(bytes), <[u8; 16]>::try_from(bytes)) {
        (Ok(v4), _) => Some(v4.into()),
        (_, Ok(v6)) => Some(v6.into()),
        _ => None,
    }
}

/// SHA-256 of `der` (certificate pins, trust fingerprints).
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    out
}

/// Lower-case hex, no separators.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Certificates: parsing and validating key material, the live certificate store, and the SNI
//! resolver rustls calls on every handshake.
//!
//! The store is swapped whole (`ArcSwap`): a new handshake sees either the old or the new
//! certificate of a host, never half of a change, and open connections keep what they have.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::HostName;
use crate::metrics;

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

impl KeyPairError {
    /// Whether the problem is in the key file (else the certificate file).
    pub fn is_about_key(&self) -> bool {
        match self {
            KeyPairError::Read { is_key, .. } => *is_key,
            KeyPairError::NoKey { .. } | KeyPairError::BadKey { .. } => true,
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

fn parse_certificates(
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
    let cert_pem = std::fs::read(cert).map_err(|source| KeyPairError::Read {
        path: cert.to_path_buf(),
        is_key: false,
        source,
    })?;
    let key_pem = std::fs::read(key).map_err(|source| KeyPairError::Read {
        path: key.to_path_buf(),
        is_key: true,
        source,
    })?;
    key_pair_from_pem(&cert_pem, cert, &key_pem, key)
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
    let provider = rustls::crypto::ring::default_provider();
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
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|ip| ip.to_string()));
                }
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

/// A certificate installed for a host.
pub struct Installed {
    pub host: HostName,
    pub cert: LoadedCert,
}

#[derive(Default)]
struct Snapshot {
    /// Host → (names it answers to, certificate).
    by_host: HashMap<HostName, (Vec<String>, Arc<Installed>)>,
    /// SNI name → certificate; derived from `by_host`.
    by_name: HashMap<String, Arc<Installed>>,
}

impl Snapshot {
    fn reindex(mut self) -> Snapshot {
        self.by_name = self
            .by_host
            .values()
            .flat_map(|(names, inst)| names.iter().map(move |n| (n.clone(), inst.clone())))
            .collect();
        self
    }
}

/// The live certificates, one per host, updated at run time.
#[derive(Default)]
pub struct CertStore {
    snap: ArcSwap<Snapshot>,
}

impl CertStore {
    /// Installs (or replaces) the certificate of `host`, answering to `names`.
    pub fn install(&self, host: &HostName, names: Vec<String>, cert: LoadedCert) {
        metrics::get()
            .cert_not_after
            .with_label_values(&[host.as_str()])
            .set(cert.info.not_after as f64);
        let inst = Arc::new(Installed {
            host: host.clone(),
            cert,
        });
        self.snap.rcu(|cur| {
            let mut by_host = cur.by_host.clone();
            by_host.insert(host.clone(), (names.clone(), inst.clone()));
            Snapshot {
                by_host,
                by_name: HashMap::new(),
            }
            .reindex()
        });
    }

    /// Keeps only the hosts `keep` says yes to, with the names it returns.
    pub fn retain(&self, keep: impl Fn(&HostName) -> Option<Vec<String>>) {
        let mut removed = Vec::new();
        self.snap.rcu(|cur| {
            removed.clear();
            let mut by_host = HashMap::new();
            for (h, (_, inst)) in &cur.by_host {
                match keep(h) {
                    Some(names) => {
                        by_host.insert(h.clone(), (names, inst.clone()));
                    }
                    None => removed.push(h.clone()),
                }
            }
            Snapshot {
                by_host,
                by_name: HashMap::new(),
            }
            .reindex()
        });
        for h in removed {
            let _ = metrics::get()
                .cert_not_after
                .remove_label_values(&[h.as_str()]);
        }
    }

    /// Stops serving `host` (its handshakes then fail) until a certificate is installed again.
    pub fn remove(&self, host: &HostName) {
        self.snap.rcu(|cur| {
            let mut by_host = cur.by_host.clone();
            by_host.remove(host);
            Snapshot {
                by_host,
                by_name: HashMap::new(),
            }
            .reindex()
        });
        let _ = metrics::get()
            .cert_not_after
            .remove_label_values(&[host.as_str()]);
    }

    /// The certificate of a host.
    pub fn for_host(&self, host: &HostName) -> Option<Arc<Installed>> {
        self.snap.load().by_host.get(host).map(|(_, i)| i.clone())
    }

    /// The certificate answering to an SNI name.
    pub fn for_name(&self, sni: &str) -> Option<Arc<Installed>> {
        self.snap.load().by_name.get(sni).cloned()
    }
}

/// Picks the certificate by SNI for rustls. No SNI or an unknown name: no certificate, and
/// rustls fails the handshake with an alert.
#[derive(Debug)]
pub struct SniResolver {
    store: Arc<CertStore>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("hosts", &self.snap.load().by_host.len())
            .finish()
    }
}

impl SniResolver {
    pub fn new(store: Arc<CertStore>) -> SniResolver {
        SniResolver { store }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            metrics::get()
                .tls_handshake_failures
                .with_label_values(&["no_sni"])
                .inc();
            return None;
        };
        // rustls hands over the SNI lower-cased already (DnsName is normalised).
        match self.store.for_name(sni.trim_end_matches('.')) {
            Some(inst) => Some(inst.cert.certified.clone()),
            None => {
                metrics::get()
                    .tls_handshake_failures
                    .with_label_values(&["unknown_name"])
                    .inc();
                None
            }
        }
    }
}

//! Certificate sources per host (`tls:`): operator files (watched for changes), self-signed
//! certificates generated once and persisted, and the ACME slot filled by the ACME manager.
//!
//! A configuration's certificates are prepared completely before anything is installed, so a
//! reload whose key material is bad changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{Config, Host, HostName, TlsSource};
use crate::storage;
use crate::tls::{self, CertStore, LoadedCert};

/// How long before expiry a self-signed certificate is regenerated.
const SELF_SIGNED_MIN_REMAINING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of a generated self-signed certificate.
const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("host {host}: {source}")]
    KeyPair {
        host: HostName,
        source: tls::KeyPairError,
    },
    #[error("host {host}: cannot generate a self-signed certificate: {reason}")]
    Generate { host: HostName, reason: String },
    #[error("host {host}: {source}")]
    Storage {
        host: HostName,
        source: storage::StorageError,
    },
}

/// Paths of a host's self-signed certificate and key in the storage directory.
pub fn self_signed_paths(storage: &Path, host: &HostName) -> (PathBuf, PathBuf) {
    (
        storage.join(format!("{host}.self-signed.cert.pem")),
        storage.join(format!("{host}.self-signed.key.pem")),
    )
}

fn names_of(host: &Host) -> Vec<String> {
    host.names().map(|n| n.as_str().to_string()).collect()
}

/// Loads the persisted self-signed certificate of `host` if it still fits, else makes one.
pub fn ensure_self_signed(storage: &Path, host: &Host) -> Result<LoadedCert, CertError> {
    let (cert_path, key_path) = self_signed_paths(storage, &host.name);
    if let Ok(existing) = tls::load_key_pair(&cert_path, &key_path) {
        let now = unix_now();
        let fresh = existing.info.not_after - now > SELF_SIGNED_MIN_REMAINING.as_secs() as i64;
        if fresh && existing.covers(host.names()) {
            return Ok(existing);
        }
    }
    let gen_err = |e: rcgen::Error| CertError::Generate {
        host: host.name.clone(),
        reason: e.to_string(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = rcgen::CertificateParams::new(names_of(host)).map_err(gen_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host.name.as_str());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mcp-edge self-signed");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + SELF_SIGNED_LIFETIME).into();
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let store_err = |source| CertError::Storage {
        host: host.name.clone(),
        source,
    };
    // Key first: a certificate on disk always has its key beside it.
    storage::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(store_err)?;
    storage::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644).map_err(store_err)?;
    tracing::info!(host = %host.name, path = %cert_path.display(), "generated self-signed certificate");
    tls::load_key_pair(&cert_path, &key_path).map_err(|source| CertError::KeyPair {
        host: host.name.clone(),
        source,
    })
}

pub fn unix_now() -> i64 {
    crate::acme::schedule::unix(SystemTime::now())
}

/// Identity of a file's current content, cheap to compare.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Stamp(Option<(SystemTime, u64)>);

impl Stamp {
    fn of(p: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len()))),
        )
    }
}

struct Watched {
    names: Vec<String>,
    cert: PathBuf,
    key: PathBuf,
    /// Stamps of the pair last tried (installed or refused).
    seen: (Stamp, Stamp),
}

/// Certificates of one configuration, ready to install.
pub struct Prepared {
    certs: Vec<(HostName, Vec<String>, LoadedCert)>,
    watched: HashMap<HostName, Watched>,
    hosts: HashMap<HostName, Vec<String>>,
}

/// Installs each configuration's certificates into the live store and keeps `files` sources
/// current.
pub struct CertSources {
    store: Arc<CertStore>,
    watched: Mutex<HashMap<HostName, Watched>>,
}

impl CertSources {
    pub fn new(store: Arc<CertStore>) -> CertSources {
        CertSources {
            store,
            watched: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    /// Loads or generates every certificate `config` needs, installing nothing.
    pub fn prepare(&self, config: &Config) -> Result<Prepared, Vec<CertError>> {
        let mut errors = Vec::new();
        let mut p = Prepared {
            certs: Vec::new(),
            watched: HashMap::new(),
            hosts: HashMap::new(),
        };
        for host in &config.hosts {
            let names = names_of(host);
            match &host.tls {
                TlsSource::None => continue,
                TlsSource::Acme => {}
                TlsSource::SelfSigned => match ensure_self_signed(&config.storage, host) {
                    Ok(c) => p.certs.push((host.name.clone(), names.clone(), c)),
                    Err(e) => errors.push(e),
                },
                TlsSource::Files { cert, key } => {
                    let seen = (Stamp::of(cert), Stamp::of(key));
                    match tls::load_key_pair(cert, key) {
                        Ok(c) => {
                            warn_uncovered(host, &c);
                            p.certs.push((host.name.clone(), names.clone(), c));
                            p.watched.insert(
                                host.name.clone(),
                                Watched {
                                    names: names.clone(),
                                    cert: cert.clone(),
                                    key: key.clone(),
                                    seen,
                                },
                            );
                        }
                        Err(source) => errors.push(CertError::KeyPair {
                            host: host.name.clone(),
                            source,
                        }),
                    }
                }
            }
            p.hosts.insert(host.name.clone(), names);
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    /// Makes a prepared set live in one step per host; hosts no longer configured lose their
    /// certificate. ACME hosts keep whatever certificate they already have.
    pub fn commit(&self, p: Prepared) {
        for (host, names, cert) in p.certs {
            self.store.install(&host, names, cert);
        }
        self.store.retain(|h| p.hosts.get(h).cloned());
        *self.watched.lock().unwrap_or_else(|e| e.into_inner()) = p.watched;
    }

    /// Re-reads `files` sources whose files changed on disk. A pair that does not load (for
    /// instance half-way through a copy) is logged once and the old certificate keeps serving.
    pub fn poll_files(&self) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for (host, w) in watched.iter_mut() {
            let now = (Stamp::of(&w.cert), Stamp::of(&w.key));
            if now == w.seen {
                continue;
            }
            w.seen = now;
            match tls::load_key_pair(&w.cert, &w.key) {
                Ok(c) => {
                    tracing::info!(host = %host, cert = %w.cert.display(), not_after = c.info.not_after, "certificate file changed: new certificate installed");
                    self.store.install(host, w.names.clone(), c);
                }
                Err(e) => {
                    tracing::warn!(host = %host, error = %e, "certificate file changed but cannot be used; the previous certificate keeps serving");
                }
            }
        }
    }
}

fn warn_uncovered(host: &Host, c: &LoadedCert) {
    if !c.covers(host.names()) {
        tracing::warn!(host = %host.name, cert_names = ?c.info.names, "certificate does not name every name of this host; clients will reject it for the others");
    }
}

fn rfc3339(unix: i64) -> String {
    humantime::format_rfc3339_seconds(crate::acme::schedule::from_unix(unix)).to_string()
}

/// What `mcp-edge certs` prints: each host's certificate on disk and, for ACME hosts, what the
/// running proxy last recorded (next renewal, failures, last error).
pub fn report(config: &Config) -> String {
    use std::fmt::Write;
    let status = crate::acme::schedule::StatusFile::read(&config.storage);
    let now = unix_now();
    let mut out = String::new();
    for host in &config.hosts {
        let _ = writeln!(out, "{} (tls: {})", host.name, host.tls.kind());
        let _ = writeln!(out, "  names:        {}", names_of(host).join(", "));
        let paths = match &host.tls {
            TlsSource::None => None,
            TlsSource::Acme => Some(crate::acme::cert_paths(&config.storage, &host.name)),
            TlsSource::SelfSigned => Some(self_signed_paths(&config.storage, &host.name)),
            TlsSource::Files { cert, key } => Some((cert.clone(), key.clone())),
        };
        let Some((cert, key)) = paths else {
            let _ = writeln!(out, "  certificate:  none (plain HTTP)");
            continue;
        };
        let _ = writeln!(out, "  certificate:  {}", cert.display());
        match tls::load_key_pair(&cert, &key) {
            Ok(c) => {
                let i = &c.info;
                let left = (i.not_after - now) / 86_400;
                let _ = writeln!(out, "  cert names:   {}", i.names.join(", "));
                let _ = writeln!(out, "  issuer:       {}", i.issuer);
                let _ = writeln!(
                    out,
                    "  not after:    {} ({})",
                    rfc3339(i.not_after),
                    if i.not_after <= now {
                        "EXPIRED".to_string()
                    } else {
                        format!("{left} days left")
                    }
                );
                if !c.covers(host.names()) {
                    let _ = writeln!(out, "  warning:      does not name every name of the host");
                }
            }
            Err(_) if !cert.exists() => {
                let _ = writeln!(out, "  not on disk yet");
            }
            Err(e) => {
                let _ = writeln!(out, "  unusable:     {e}");
            }
        }
        if host.tls != TlsSource::Acme {
            continue;
        }
        match status
            .as_ref()
            .and_then(|s| s.hosts.get(host.name.as_str()))
        {
            None => {
                let _ = writeln!(
                    out,
                    "  next renewal: unknown (no status from a running mcp-edge)"
                );
            }
            Some(st) => {
                let _ = match (st.next_renewal, &st.renewal_source) {
                    (Some(t), Some(src)) => writeln!(out, "  next renewal: {} ({src})", rfc3339(t)),
                    _ => writeln!(out, "  next renewal: as soon as possible"),
                };
                if let Some(t) = st.last_issued {
                    let _ = writeln!(out, "  last issued:  {}", rfc3339(t));
                }
                if let (Some(e), Some(t)) = (&st.last_error, st.last_error_at) {
                    let _ = writeln!(out, "  last error:   {} at {}", e, rfc3339(t));
                    let _ = writeln!(
                        out,
                        "  failures:     {} in a row{}",
                        st.consecutive_failures,
                        st.next_attempt
                            .map(|n| format!(", next attempt {}", rfc3339(n)))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    if let Some(s) = status {
        let _ = writeln!(out, "(ACME status as recorded at {})", rfc3339(s.written));
    }
    out
}

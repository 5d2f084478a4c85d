//! Certificate sources per host (`tls:`): operator files (watched for changes), self-signed
//! certificates generated once and persisted, and ACME certificates in storage (the ACME
//! manager obtains and renews them).
//!
//! A configuration's certificates are prepared completely before anything is installed, so a
//! reload whose key material is bad changes nothing; the prepared set then becomes part of the
//! reload's one snapshot.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::{Config, Host, TlsSource};
use crate::names::HostName;
use crate::pem::{self, LoadedCert};
use crate::storage::{Key, Storage, StorageError};
use crate::time::unix_now;
use crate::tls::{CertSet, CertStore};

/// How long before expiry a self-signed certificate is regenerated.
const SELF_SIGNED_MIN_REMAINING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime of a generated self-signed certificate.
const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("host {host}: {source}")]
    KeyPair {
        host: HostName,
        source: pem::KeyPairError,
    },
    #[error("host {host}: cannot generate a self-signed certificate: {reason}")]
    Generate { host: HostName, reason: String },
    #[error("host {host}: {source}")]
    Storage {
        host: HostName,
        source: StorageError,
    },
}

pub fn names_of(host: &Host) -> Vec<String> {
    host.names().map(|n| n.as_str().to_string()).collect()
}

/// A chain and key, as stored under `cert` and `key`, checked (errors name the keys).
pub fn pair_from_pem(
    cert: &Key,
    cert_pem: &[u8],
    key: &Key,
    key_pem: &[u8],
) -> Result<LoadedCert, pem::KeyPairError> {
    pem::key_pair_from_pem(
        cert_pem,
        Path::new(cert.as_str()),
        key_pem,
        Path::new(key.as_str()),
    )
}

/// A chain and key from storage, checked: None when either is absent.
pub async fn read_pair(
    storage: &Storage,
    cert: &Key,
    key: &Key,
) -> Result<Option<LoadedCert>, String> {
    let c = storage.get(cert).await.map_err(|e| e.to_string())?;
    let k = storage.get(key).await.map_err(|e| e.to_string())?;
    let (Some(c), Some(k)) = (c, k) else {
        return Ok(None);
    };
    pair_from_pem(cert, &c, key, &k)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Loads the persisted self-signed certificate of `host` if it still fits, else makes one and
/// stores it. Replicas sharing storage that start together agree on one: the first to store a
/// key wins and the others serve its pair. A store that cannot take it is logged: the
/// certificate serves all the same.
///
/// Runs under [`Storage::block_on`] (start, reload), where a short blocking wait is fine.
pub async fn ensure_self_signed(storage: &Storage, host: &Host) -> Result<LoadedCert, CertError> {
    let (cert_key, key_key) = (
        Key::self_signed_cert(&host.name),
        Key::self_signed_key(&host.name),
    );
    let existing = read_pair(storage, &cert_key, &key_key).await;
    if let Ok(Some(existing)) = &existing {
        let now = unix_now();
        let fresh = existing.info.not_after - now > SELF_SIGNED_MIN_REMAINING.as_secs() as i64;
        if fresh && existing.covers(host.names()) {
            return Ok(existing.clone());
        }
    }
    let gen_err = |e: rcgen::Error| CertError::Generate {
        host: host.name.clone(),
        reason: e.to_string(),
    };
    let store_err = |source| CertError::Storage {
        host: host.name.clone(),
        source,
    };
    let mut key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut store_key = true;
    if matches!(existing, Ok(None)) {
        match storage
            .put_new(&key_key, key.serialize_pem().as_bytes())
            .await
        {
            Ok(true) => store_key = false,
            Ok(false) => {
                // Another replica stored its key first: its certificate follows at once.
                for _ in 0..20 {
                    if let Ok(Some(theirs)) = read_pair(storage, &cert_key, &key_key).await {
                        return Ok(theirs);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // It did not (it died between the two): certify its key here.
                if let Ok(Some(pem)) = storage.get(&key_key).await {
                    let pem = String::from_utf8_lossy(&pem).into_owned();
                    key = rcgen::KeyPair::from_pem(&pem).map_err(gen_err)?;
                    store_key = false;
                }
            }
            Err(e) if e.is_unavailable() => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    let cert = self_signed_params(host)
        .and_then(|p| p.self_signed(&key))
        .map_err(gen_err)?;
    let (key_pem, cert_pem) = (key.serialize_pem(), cert.pem());
    let loaded = pair_from_pem(&cert_key, cert_pem.as_bytes(), &key_key, key_pem.as_bytes())
        .map_err(|source| CertError::KeyPair {
            host: host.name.clone(),
            source,
        })?;
    let mut items = vec![(&cert_key, cert_pem.as_bytes())];
    if store_key {
        // Key first: a stored certificate always has its key beside it.
        items.insert(0, (&key_key, key_pem.as_bytes()));
    }
    match storage.put(&items).await {
        Ok(()) => {
            tracing::info!(host = %host.name, key = %cert_key, "generated self-signed certificate")
        }
        Err(e) if e.is_unavailable() => {
            tracing::warn!(host = %host.name, error = %e, "generated a self-signed certificate that could not be stored; it serves until a restart")
        }
        Err(e) => return Err(store_err(e)),
    }
    Ok(loaded)
}

/// The self-signed certificate of `host`: its names, valid from an hour ago for
/// `SELF_SIGNED_LIFETIME`.
fn self_signed_params(host: &Host) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names_of(host))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, host.name.as_str());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "mcp-edge self-signed");
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + SELF_SIGNED_LIFETIME).into();
    Ok(params)
}

/// Loads an ACME host's certificate from storage if it can serve: it loads, its key matches, it
/// has not expired and it names the host. Logs why not otherwise.
pub async fn load_acme(storage: &Storage, host: &HostName) -> Option<LoadedCert> {
    let c = read_pair(storage, &Key::acme_cert(host), &Key::acme_key(host)).await;
    match c {
        Ok(None) => None,
        Ok(Some(c)) if c.info.not_after <= unix_now() => {
            tracing::warn!(host = %host, not_after = c.info.not_after, "stored certificate has expired; ordering a new one");
            None
        }
        Ok(Some(c)) if !c.covers(std::iter::once(host)) => {
            tracing::warn!(host = %host, cert_names = ?c.info.names, "stored certificate does not name this host; ordering a new one");
            None
        }
        Ok(Some(c)) => Some(c),
        Err(e) => {
            tracing::warn!(host = %host, error = %e, "stored certificate cannot be used; ordering a new one");
            None
        }
    }
}

/// Identity of a file's current content, cheap to compare.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Stamp(Option<(SystemTime, u64)>);

impl Stamp {
    fn of(p: &Path) -> Self {
        Self(
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len()))),
        )
    }
}

#[derive(Clone)]
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
    /// ACME hosts with no usable certificate on disk: nothing is served for them.
    pending: Vec<HostName>,
    watched: HashMap<HostName, Watched>,
    hosts: HashMap<HostName, Vec<String>>,
}

/// Loads or generates every certificate `config` needs, installing nothing.
pub fn prepare(config: &Config, storage: &Storage) -> Result<Prepared, Vec<CertError>> {
    Storage::block_on(prepare_async(config, storage))
}

async fn prepare_async(config: &Config, storage: &Storage) -> Result<Prepared, Vec<CertError>> {
    let mut errors = Vec::new();
    let mut p = Prepared {
        certs: Vec::new(),
        pending: Vec::new(),
        watched: HashMap::new(),
        hosts: HashMap::new(),
    };
    for host in &config.hosts {
        let names = names_of(host);
        match &host.tls {
            TlsSource::None => continue,
            TlsSource::Acme => match load_acme(storage, &host.name).await {
                Some(c) => p.certs.push((host.name.clone(), names.clone(), c)),
                // Never a stale or foreign certificate (say the self-signed one of before a
                // reload) for a host whose order is pending.
                None => p.pending.push(host.name.clone()),
            },
            TlsSource::SelfSigned => match ensure_self_signed(storage, host).await {
                Ok(c) => p.certs.push((host.name.clone(), names.clone(), c)),
                Err(e) => errors.push(e),
            },
            TlsSource::Files { cert, key } => {
                let seen = (Stamp::of(cert), Stamp::of(key));
                match pem::load_key_pair(cert, key) {
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

impl Prepared {
    /// What `current` becomes under this configuration: its certificates installed, hosts no
    /// longer configured (and ACME hosts without a usable certificate) gone.
    pub fn apply(&self, current: &CertSet) -> CertSet {
        let mut set = current.retain(|h| self.hosts.get(h).cloned());
        for (host, names, cert) in &self.certs {
            set = set.with(host, names.clone(), cert.clone());
        }
        for host in &self.pending {
            set = set.without(host);
        }
        set
    }
}

/// Keeps `tls: { cert, key }` certificates current when their files change.
#[derive(Default)]
pub struct FileWatch {
    watched: Mutex<HashMap<HostName, Watched>>,
}

impl FileWatch {
    /// Watches the files of a configuration that was just made live.
    pub fn follow(&self, p: &Prepared) {
        let watched = p
            .watched
            .iter()
            .map(|(h, w)| (h.clone(), w.clone()))
            .collect();
        *self.watched.lock().unwrap_or_else(|e| e.into_inner()) = watched;
    }

    /// Re-reads `files` sources whose files changed on disk. A pair that does not load (for
    /// instance half-way through a copy) is logged once and the old certificate keeps serving.
    pub fn poll(&self, store: &dyn CertStore) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for (host, w) in watched.iter_mut() {
            let now = (Stamp::of(&w.cert), Stamp::of(&w.key));
            if now == w.seen {
                continue;
            }
            w.seen = now;
            match pem::load_key_pair(&w.cert, &w.key) {
                Ok(c) => {
                    tracing::info!(host = %host, cert = %w.cert.display(), not_after = c.info.not_after, "certificate file changed: new certificate installed");
                    store.install(host, w.names.clone(), c);
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

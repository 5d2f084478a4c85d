//! The live certificates: one immutable set per moment (host → certificate), the narrow handle
//! through which certificate sources change it, and the lookup rustls calls on every handshake.
//!
//! A set is never changed in place: a change makes a new set, which the owner of the live
//! snapshot swaps in whole. A handshake sees the old set or the new one, never half of a change,
//! and open connections keep what they have.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::metrics;
use crate::names::HostName;
use crate::pem::LoadedCert;

/// A certificate installed for a host.
pub struct Installed {
    pub host: HostName,
    pub cert: LoadedCert,
}

/// The certificates in force, one per host.
#[derive(Clone, Default)]
pub struct CertSet {
    /// Host → (names it answers to, certificate). A handshake finds its host through the
    /// configuration (an exact name before a wildcard), then the host's certificate here.
    by_host: HashMap<HostName, (Vec<String>, Arc<Installed>)>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSet")
            .field("hosts", &self.by_host.len())
            .finish()
    }
}

impl CertSet {
    fn reindexed(by_host: HashMap<HostName, (Vec<String>, Arc<Installed>)>) -> Self {
        Self { by_host }
    }

    /// This set with `host`'s certificate installed (or replaced), answering to `names`.
    pub fn with(&self, host: &HostName, names: Vec<String>, cert: LoadedCert) -> Self {
        let mut by_host = self.by_host.clone();
        let inst = Arc::new(Installed {
            host: host.clone(),
            cert,
        });
        by_host.insert(host.clone(), (names, inst));
        Self::reindexed(by_host)
    }

    /// This set without `host`'s certificate (its handshakes then fail).
    pub fn without(&self, host: &HostName) -> Self {
        let mut by_host = self.by_host.clone();
        by_host.remove(host);
        Self::reindexed(by_host)
    }

    /// This set with only the hosts `keep` says yes to, answering to the names it returns.
    pub fn retain(&self, keep: impl Fn(&HostName) -> Option<Vec<String>>) -> Self {
        let by_host = self
            .by_host
            .iter()
            .filter_map(|(h, (_, inst))| Some((h.clone(), (keep(h)?, inst.clone()))))
            .collect();
        Self::reindexed(by_host)
    }

    /// The certificate of a host.
    pub fn for_host(&self, host: &HostName) -> Option<&Arc<Installed>> {
        self.by_host.get(host).map(|(_, i)| i)
    }

    /// The key rustls presents for a handshake served as `name`, the certificate of `host` (the
    /// host serving that name). No name, or no host or certificate for it: none, and rustls
    /// fails the handshake with an alert; both are counted.
    pub fn resolve(
        &self,
        name: Option<&str>,
        host: Option<&HostName>,
    ) -> Option<Arc<CertifiedKey>> {
        let failed = |why: &str| {
            metrics::get()
                .tls_handshake_failures
                .with_label_values(&[why])
                .inc();
            None
        };
        if name.is_none() {
            return failed("no_sni");
        }
        match host.and_then(|h| self.for_host(h)) {
            Some(inst) => Some(inst.cert.certified.clone()),
            None => failed("unknown_name"),
        }
    }

    /// Brings `mcp_edge_certificate_not_after_seconds` in line with this set, after it replaced
    /// `old`.
    pub fn publish_metrics(&self, old: &Self) {
        let m = &metrics::get().cert_not_after;
        for (host, (_, inst)) in &self.by_host {
            m.with_label_values(&[host.as_str()])
                .set(inst.cert.info.not_after as f64);
        }
        for host in old.by_host.keys() {
            if !self.by_host.contains_key(host) {
                let _ = m.remove_label_values(&[host.as_str()]);
            }
        }
    }
}

/// The handle certificate sources (the ACME manager, watched files) get: install, remove and
/// read one host's certificate in the live snapshot, nothing else of it.
pub trait CertStore: Send + Sync {
    /// Installs (or replaces) the certificate of `host`, answering to `names`.
    fn install(&self, host: &HostName, names: Vec<String>, cert: LoadedCert);
    /// Stops serving `host` until a certificate is installed again.
    fn remove(&self, host: &HostName);
    /// The certificate `host` serves now.
    fn get(&self, host: &HostName) -> Option<Arc<Installed>>;
}

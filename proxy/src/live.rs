//! The one snapshot in force: the configuration, the route table built from it and the
//! certificates. Readers (the SNI resolver, the request path) load it once and see one
//! consistent whole; a reload replaces it in one step, and a certificate source (ACME, a watched
//! file) replaces only its certificate set, through the narrow [`CertStore`] handle.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::Config;
use crate::names::HostName;
use crate::pem::LoadedCert;
use crate::routing::Table;
use crate::tls::{CertSet, CertStore, Installed};

/// Everything a handshake or a request reads, as of one moment.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub table: Arc<Table>,
    pub certs: Arc<CertSet>,
}

/// The live snapshot.
pub struct Live {
    snap: ArcSwap<Snapshot>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Self {
        snapshot.certs.publish_metrics(&CertSet::default());
        Self {
            snap: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The snapshot in force.
    pub fn load(&self) -> Arc<Snapshot> {
        self.snap.load_full()
    }

    /// Replaces the configuration and the route table, and the certificates with what
    /// `certs` makes of the certificates in force, in one step. `certs` may run more than
    /// once (when a certificate source changed the set meanwhile), so nothing installed by a
    /// source in between is lost.
    pub fn replace(
        &self,
        config: Arc<Config>,
        table: Arc<Table>,
        certs: impl Fn(&CertSet) -> CertSet,
    ) {
        self.swap(|cur| Snapshot {
            config: config.clone(),
            table: table.clone(),
            certs: Arc::new(certs(&cur.certs)),
        });
    }

    fn update_certs(&self, f: impl Fn(&CertSet) -> CertSet) {
        self.swap(|cur| Snapshot {
            config: cur.config.clone(),
            table: cur.table.clone(),
            certs: Arc::new(f(&cur.certs)),
        });
    }

    /// Replaces the snapshot with what `next` makes of the one in force (again, if another
    /// change won the race), then brings the certificate metrics in line.
    fn swap(&self, next: impl Fn(&Snapshot) -> Snapshot) {
        let old = self.snap.rcu(|cur| next(cur));
        self.load().certs.publish_metrics(&old.certs);
    }
}

impl CertStore for Live {
    fn install(&self, host: &HostName, names: Vec<String>, cert: LoadedCert) {
        self.update_certs(|set| set.with(host, names.clone(), cert.clone()));
    }

    fn remove(&self, host: &HostName) {
        self.update_certs(|set| set.without(host));
    }

    fn get(&self, host: &HostName) -> Option<Arc<Installed>> {
        self.snap.load().certs.for_host(host).cloned()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("certs", &self.snap.load().certs)
            .finish()
    }
}

/// rustls asks on every handshake: the certificate for the ClientHello's SNI in the snapshot
/// in force.
impl Snapshot {
    /// The name a TLS handshake is served as: its SNI; without one (a client dialling an IP
    /// address) the IP host named by the address it dialled, else the default host. The
    /// certificate and the requests of the connection both follow it.
    pub fn tls_name(&self, sni: Option<&str>) -> Option<String> {
        if let Some(s) = sni {
            return Some(s.to_ascii_lowercase());
        }
        let dialled = pingora::listeners::handshake_local_addr()
            .map(|a| a.ip().to_canonical().to_string())
            .filter(|ip| {
                self.config
                    .host(ip)
                    .is_some_and(|h| h.tls != crate::config::TlsSource::None)
            });
        dialled.or_else(|| self.config.tls_name(None).map(str::to_string))
    }
}

impl ResolvesServerCert for Live {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.snap.load();
        let name = snap.tls_name(hello.server_name());
        // The certificate of the host serving the name (an exact host wins over a wildcard, even
        // while its own certificate is missing): never another host's.
        let host = name.as_deref().and_then(|n| snap.config.host(n));
        snap.certs.resolve(name.as_deref(), host.map(|h| &h.name))
    }
}

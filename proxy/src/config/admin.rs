//! `admin:`: who may read `/metrics` and `/status` of the admin listener — a bearer token, a
//! client certificate over TLS, or both. `/healthz` and `/readyz` stay open to probes.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::resolve_path;
use super::{Collector, KeyPath};

/// The admin listener's access settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminConfig {
    /// SHA-256 of the bearer token `/metrics` and `/status` require.
    pub token: Option<[u8; 32]>,
    /// HTTPS instead of plain HTTP (read at start: a change needs a restart).
    pub tls: Option<AdminTls>,
}

/// `admin.tls`: the listener's certificate and, optionally, the CA its clients' certificates
/// must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With it, `/metrics` and `/status` need a client certificate issued by this CA.
    pub client_ca: Option<PathBuf>,
}

impl AdminConfig {
    /// Whether `/metrics` and `/status` are open to whoever reaches the listener.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none())
    }
}

/// `admin:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// `sha256:HEX` of the bearer token `/metrics` and `/status` require (from
    /// `mcp-edge api-key NAME`); `/healthz` and `/readyz` stay open.
    pub token: Option<String>,
    /// `{ cert: FILE, key: FILE, client_ca: FILE }`: serve HTTPS; with `client_ca`, `/metrics`
    /// and `/status` need a client certificate from that CA.
    pub tls: Option<RawAdminTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

pub(super) fn build_admin(
    raw: Option<RawAdmin>,
    base: &Path,
    at: &KeyPath,
    c: &mut Collector,
) -> AdminConfig {
    let Some(raw) = raw else {
        return AdminConfig::default();
    };
    let token = raw
        .token
        .and_then(|t| match super::auth::parse_key_hash(&t) {
            Ok(h) => Some(h),
            Err(e) => {
                c.err(&at.key("token"), e);
                None
            }
        });
    let tls = raw.tls.and_then(|t| build_tls(t, base, &at.key("tls"), c));
    AdminConfig { token, tls }
}

fn build_tls(raw: RawAdminTls, base: &Path, at: &KeyPath, c: &mut Collector) -> Option<AdminTls> {
    let cert = resolve_path(base, &raw.cert);
    let key = resolve_path(base, &raw.key);
    if let Err(e) = crate::pem::load_key_pair(&cert, &key) {
        let which = if e.is_about_key() { "key" } else { "cert" };
        c.err(&at.key(which), e.to_string());
        return None;
    }
    let client_ca = match raw.client_ca.map(|p| resolve_path(base, &p)) {
        Some(ca) => match client_roots(&ca) {
            Ok(_) => Some(ca),
            Err(e) => {
                c.err(&at.key("client_ca"), e);
                return None;
            }
        },
        None => None,
    };
    Some(AdminTls {
        cert,
        key,
        client_ca,
    })
}

/// The trust anchors of a client CA file: every certificate in it, each usable as a root.
pub fn client_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let certs = crate::pem::read_certificates(path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

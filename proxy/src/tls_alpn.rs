//! ACME TLS-ALPN-01 (RFC 8737) answers on the TLS listener. While an authorization is pending,
//! a handshake whose only ALPN protocol is `acme-tls/1` gets a self-signed certificate for the
//! name it asks (the SNI; the reverse-DNS name for an IP address, RFC 8738) carrying the
//! SHA-256 digest of the key authorization; every other handshake is resolved as usual. The
//! key authorization is published in storage like HTTP-01's, so with shared storage every
//! replica learns it (`learn`) and answers; the CA may connect several times, so the
//! certificate is made once per name and kept until withdrawn or expired.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics;
use crate::storage::{Key, Storage};

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long a challenge certificate learnt from storage is kept (a challenge response expires
/// there after as long).
const KEEP: Duration = Duration::from_secs(600);

/// Most challenge certificates held at once (one per name being validated).
const MAX_PENDING: usize = 1024;

/// With shared storage, how long other replicas get to learn a published challenge (a change
/// notification, one read, one certificate) before the CA is told to connect to any of them.
const PROPAGATION: Duration = Duration::from_millis(500);

/// Name → the challenge certificate. Its `Debug` shows how many, never which.
pub struct AlpnChallenges {
    map: RwLock<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
    storage: Storage,
}

impl std::fmt::Debug for AlpnChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.read().map_or(0, |m| m.len());
        f.debug_struct("AlpnChallenges")
            .field("pending", &n)
            .finish()
    }
}

/// The name a TLS-ALPN-01 validation of `identifier` sends as SNI: the name itself, or for an
/// IP address its reverse-DNS name (RFC 8738 §6).
pub fn sni_of(identifier: &str) -> String {
    match identifier.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            let o = ip.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        Ok(IpAddr::V6(ip)) => {
            let mut labels: Vec<String> = Vec::with_capacity(34);
            for b in ip.octets().iter().rev() {
                labels.push(format!("{:x}", b & 0x0f));
                labels.push(format!("{:x}", b >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
        Err(_) => identifier.to_ascii_lowercase(),
    }
}

/// The challenge certificate for `identifier`: self-signed, naming it (a DNS name or an IP
/// address), with the critical acmeIdentifier extension holding SHA-256(key authorization).
pub fn challenge_cert(
    identifier: &str,
    key_authorization: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let digest = crate::pem::sha256(key_authorization.as_bytes());
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(vec![identifier.trim_matches(['[', ']']).to_string()])
            .map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| e.to_string())?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension.
    let signing = crate::pem::ring_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

impl AlpnChallenges {
    pub fn new(storage: Storage) -> Self {
        Self {
            map: RwLock::default(),
            storage,
        }
    }

    /// Whether it was kept: a name already pending is replaced; a new one needs room.
    fn insert(&self, identifier: &str, cert: Arc<CertifiedKey>) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
        let name = sni_of(identifier);
        if map.len() >= MAX_PENDING && !map.contains_key(&name) {
            return false;
        }
        map.insert(name, (cert, now));
        true
    }

    /// Makes the challenge certificate answerable here and, once this returns, by every
    /// replica sharing the storage: call it before telling the CA the challenge is ready.
    pub async fn publish(&self, identifier: &str, key_authorization: &str) -> Result<(), String> {
        let cert = challenge_cert(identifier, key_authorization)?;
        if !self.insert(identifier, cert) {
            return Err(format!(
                "{MAX_PENDING} TLS-ALPN-01 challenges pending already"
            ));
        }
        let key = Key::alpn_challenge(identifier)
            .ok_or_else(|| format!("{identifier:?} cannot be a storage key"))?;
        self.storage
            .put(&[(&key, key_authorization.as_bytes())])
            .await
            .map_err(|e| e.to_string())?;
        if self.storage.changes().is_some() {
            tokio::time::sleep(PROPAGATION).await;
        }
        Ok(())
    }

    /// A challenge another replica published (a storage change named `key`): read and kept.
    pub async fn learn(&self, key: &Key) {
        let Some(identifier) = key.alpn_identifier() else {
            return;
        };
        let identifier = identifier.as_str();
        match self.storage.get(key).await {
            Ok(Some(v)) => {
                let Ok(ka) = String::from_utf8(v) else {
                    return;
                };
                match challenge_cert(identifier, &ka) {
                    Ok(cert) => {
                        if !self.insert(identifier, cert) {
                            tracing::warn!("{MAX_PENDING} TLS-ALPN-01 challenges pending: one more from another replica not kept");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot make a TLS-ALPN-01 certificate"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a TLS-ALPN-01 challenge from storage")
            }
        }
    }

    /// Withdraws a challenge (from storage in the background; it expires there anyway).
    pub fn withdraw(&self, identifier: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sni_of(identifier));
        if let (Some(key), Ok(rt)) = (
            Key::alpn_challenge(identifier),
            tokio::runtime::Handle::try_current(),
        ) {
            let storage = self.storage.clone();
            rt.spawn(async move {
                if let Err(e) = storage.delete(&key).await {
                    tracing::debug!(error = %e, "cannot delete a TLS-ALPN-01 challenge; it expires");
                }
            });
        }
    }

    /// The challenge certificate for an SNI name, while it is pending.
    pub fn get(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let (cert, at) = map.get(&sni.trim_end_matches('.').to_ascii_lowercase())?;
        (at.elapsed() < KEEP).then(|| cert.clone())
    }
}

/// Whether a ClientHello is a TLS-ALPN-01 validation: `acme-tls/1` its only ALPN protocol (a
/// client that also offers h2 or http/1.1 is served as usual).
pub fn is_validation(hello: &ClientHello<'_>) -> bool {
    let mut offered = match hello.alpn() {
        Some(it) => it,
        None => return false,
    };
    matches!((offered.next(), offered.next()), (Some(p), None) if p == ACME_TLS_ALPN)
}

/// The TLS listener's resolver: validations get their challenge certificate (or none, and the
/// handshake fails), everything else what `inner` resolves.
pub struct WithChallenges<R> {
    pub inner: Arc<R>,
    pub challenges: Arc<AlpnChallenges>,
}

impl<R> std::fmt::Debug for WithChallenges<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithChallenges")
            .field("challenges", &self.challenges)
            .finish()
    }
}

impl<R: ResolvesServerCert> ResolvesServerCert for WithChallenges<R> {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if !is_validation(&hello) {
            return self.inner.resolve(hello);
        }
        let found = hello.server_name().and_then(|n| self.challenges.get(n));
        if found.is_none() {
            metrics::get()
                .tls_handshake_failures
                .with_label_values(&["acme_tls_unknown"])
                .inc();
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_identifiers_are_validated_under_their_reverse_dns_name() {
        assert_eq!(sni_of("192.0.2.7"), "7.2.0.192.in-addr.arpa");
        assert_eq!(
            sni_of("2001:db8::1"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        assert_eq!(sni_of("[::1]"), format!("1{}.ip6.arpa", ".0".repeat(31)));
        assert_eq!(sni_of("Example.COM"), "example.com");
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_and_the_name() {
        let ka = "token.thumbprint";
        let cert = challenge_cert("a.example", ka).unwrap();
        let der = cert.cert[0].as_ref();
        let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // OCTET STRING (0x04, 32) wrapping the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &crate::pem::sha256(ka.as_bytes()));
        let info = crate::pem::cert_info(der).unwrap();
        assert_eq!(info.names, vec!["a.example".to_string()]);
        let ip = challenge_cert("127.0.0.1", ka).unwrap();
        let info = crate::pem::cert_info(ip.cert[0].as_ref()).unwrap();
        assert_eq!(info.names, vec!["127.0.0.1".to_string()]);
    }
}

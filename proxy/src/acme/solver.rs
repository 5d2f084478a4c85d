//! How a host proves control of a name to the CA: one interface per challenge type, so that the
//! order pipeline (`order`) never names one. HTTP-01 is the first implementation: the key
//! authorization goes into the challenge store (shared storage, so any replica answers on port
//! 80). TLS-ALPN-01 puts a challenge certificate on the TLS listener the same way.

use std::sync::Arc;

use async_trait::async_trait;
use instant_acme::ChallengeType;

use super::client::Failure;
use crate::config::{Challenge, DnsConfig};
use crate::http01::ChallengeStore;
use crate::tls_alpn::AlpnChallenges;

/// Where the listeners find the proofs the solvers put in place.
pub struct Proofs {
    /// HTTP-01 responses, answered on port 80.
    pub http: Arc<ChallengeStore>,
    /// TLS-ALPN-01 certificates, answered on the TLS listener.
    pub alpn: Arc<AlpnChallenges>,
}

impl Proofs {
    /// The solver of a challenge type (DNS-01 with the `acme.dns` provider); `None` when
    /// DNS-01 has no provider (`check` refuses that configuration).
    pub(super) fn solver(
        &self,
        challenge: Challenge,
        dns: Option<&DnsConfig>,
    ) -> Option<Box<dyn Solver + '_>> {
        Some(match challenge {
            Challenge::Http01 => Box::new(Http01 { store: &self.http }),
            Challenge::TlsAlpn01 => Box::new(TlsAlpn01 { store: &self.alpn }),
            Challenge::Dns01 => Box::new(super::dns::Dns01 {
                config: Arc::new(dns?.clone()),
                presented: Default::default(),
            }),
        })
    }
}

/// One challenge type's way of proving control.
#[async_trait]
pub(super) trait Solver: Send + Sync {
    /// The challenge type it answers.
    fn challenge_type(&self) -> ChallengeType;

    /// Its name in logs, configuration and errors (`http-01`).
    fn name(&self) -> &'static str;

    /// Whether it can prove control of `name` (HTTP-01 cannot for a wildcard).
    fn can_validate(&self, name: &str) -> bool;

    /// Puts the proof for `token` in place (the key authorization, for `name`) before the CA is
    /// told to look.
    async fn present(
        &self,
        name: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure>;

    /// Takes the proof away again, on every exit (success, failure, cancellation).
    fn cleanup(&self, name: &str, token: &str);
}

/// HTTP-01: `http://NAME/.well-known/acme-challenge/TOKEN` answers the key authorization.
pub(super) struct Http01<'a> {
    pub store: &'a ChallengeStore,
}

#[async_trait]
impl Solver for Http01<'_> {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::Http01
    }

    fn name(&self) -> &'static str {
        "http-01"
    }

    fn can_validate(&self, name: &str) -> bool {
        !name.starts_with("*.")
    }

    async fn present(
        &self,
        _name: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure> {
        self.store
            .publish(token, key_authorization)
            .await
            .map_err(|e| Failure::new(format!("cannot publish the challenge response: {e}")))
    }

    fn cleanup(&self, _name: &str, token: &str) {
        self.store.withdraw(token);
    }
}

/// TLS-ALPN-01: an `acme-tls/1` handshake for NAME gets a certificate holding the digest of
/// the key authorization (RFC 8737).
pub(super) struct TlsAlpn01<'a> {
    pub store: &'a AlpnChallenges,
}

#[async_trait]
impl Solver for TlsAlpn01<'_> {
    fn challenge_type(&self) -> ChallengeType {
        ChallengeType::TlsAlpn01
    }

    fn name(&self) -> &'static str {
        "tls-alpn-01"
    }

    fn can_validate(&self, name: &str) -> bool {
        !name.starts_with("*.")
    }

    async fn present(
        &self,
        name: &str,
        _token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure> {
        self.store
            .publish(name, key_authorization)
            .await
            .map_err(|e| Failure::new(format!("cannot publish the TLS-ALPN-01 certificate: {e}")))
    }

    fn cleanup(&self, name: &str, _token: &str) {
        self.store.withdraw(name);
    }
}

//! One ACME order for one host: every name proved by the host's challenge solver (`solver`), a
//! fresh key, the chain checked against the key and the names, then written (key 0600) before
//! anyone serves it.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, Identifier, NewOrder, OrderStatus,
    RetryPolicy,
};

use super::client::{describe_problem, Failure};
use super::solver::Solver;
use crate::config::{KeyType, OrderLimit};
use crate::names::HostName;
use crate::pem::LoadedCert;
use crate::storage::{Key, Storage};

/// Polling of the order while the CA validates and issues. It starts fast (a CA such as pebble
/// answers within milliseconds) and slows down; the CA's Retry-After wins when it sends one.
fn polling() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(20))
        .backoff(1.5)
        .timeout(Duration::from_secs(120))
}

/// Proofs presented for the duration of one order, cleaned up on every exit.
struct Presented<'a> {
    solver: &'a dyn Solver,
    /// (name, token)
    proofs: Vec<(String, String)>,
}

impl Presented<'_> {
    async fn add(
        &mut self,
        name: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), Failure> {
        self.proofs.push((name.to_string(), token.to_string()));
        self.solver.present(name, token, key_authorization).await
    }
}

impl Drop for Presented<'_> {
    fn drop(&mut self) {
        for (name, token) in &self.proofs {
            self.solver.cleanup(name, token);
        }
    }
}

pub(super) struct OrderRequest<'a> {
    pub host: &'a HostName,
    /// The runaway guard's limit, checked before the order is placed.
    pub limit: OrderLimit,
    pub names: &'a [String],
    pub key_type: KeyType,
    pub profile: Option<&'a str>,
    pub replaces: Option<CertificateIdentifier<'static>>,
    pub storage: &'a Storage,
}

/// Places the order and returns the certificate, already written to storage: the names
/// checked against the solver, the order placed, every name proved, the certificate issued for
/// a fresh key, then checked and stored.
pub(super) async fn order(
    account: &Account,
    solver: &dyn Solver,
    req: &OrderRequest<'_>,
) -> Result<LoadedCert, Failure> {
    if let Some(name) = req.names.iter().find(|n| !solver.can_validate(n)) {
        return Err(Failure::new(format!(
            "{} cannot prove control of {name}",
            solver.name()
        )));
    }
    let admitted = super::guard::admit(
        req.storage,
        req.host,
        req.limit,
        std::time::SystemTime::now(),
    )
    .await?;
    let mut order = place(account, req).await?;
    admitted.record(req.storage, req.host).await;
    prove(&mut order, solver).await?;
    let (chain, key_pem) = issue(&mut order, req).await?;
    store(req, &chain, &key_pem).await
}

/// A new order for the request's names (profile and `replaces` as asked).
async fn place(account: &Account, req: &OrderRequest<'_>) -> Result<instant_acme::Order, Failure> {
    let identifiers: Vec<Identifier> = req
        .names
        .iter()
        .map(
            |n| match n.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                // RFC 8738: an IP address is its own kind of identifier.
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(n.clone()),
            },
        )
        .collect();
    let mut new = NewOrder::new(&identifiers);
    if let Some(p) = req.profile {
        new = new.profile(p);
    }
    if let Some(r) = &req.replaces {
        new = new.replaces(r.clone());
    }
    account
        .new_order(&new)
        .await
        .map_err(|e| Failure::from(e).context("new order"))
}

/// Every pending authorization answered by the solver, until the CA says the order is ready;
/// the proofs are withdrawn on every exit.
async fn prove(order: &mut instant_acme::Order, solver: &dyn Solver) -> Result<(), Failure> {
    let mut presented = Presented {
        solver,
        proofs: Vec::new(),
    };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(|e| Failure::from(e).context("authorization"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(Failure::new(format!(
                    "authorization for {} is {other:?}",
                    authz.identifier()
                )))
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz.challenge(solver.challenge_type()).ok_or_else(|| {
            Failure::new(format!(
                "the CA offers no {} challenge for {name}",
                solver.name()
            ))
        })?;
        let (token, key_auth) = (
            challenge.token.clone(),
            challenge.key_authorization().as_str().to_string(),
        );
        presented.add(&name, &token, &key_auth).await?;
        challenge
            .set_ready()
            .await
            .map_err(|e| Failure::from(e).context("challenge"))?;
    }
    let status = order
        .poll_ready(&polling())
        .await
        .map_err(|e| Failure::from(e).context("validation"))?;
    drop(presented);
    if status != OrderStatus::Ready {
        return Err(validation_failure(order).await);
    }
    Ok(())
}

/// A fresh key, its CSR, the order finalized: the chain (PEM) and the key (PEM).
async fn issue(
    order: &mut instant_acme::Order,
    req: &OrderRequest<'_>,
) -> Result<(String, String), Failure> {
    let (alg, key_alg) = match req.key_type {
        KeyType::EcdsaP256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
        KeyType::EcdsaP384 => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
    };
    let key = rcgen::KeyPair::generate_for(alg)
        .map_err(|e| Failure::new(format!("generating an ECDSA {key_alg} key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(req.names.to_vec())
        .map_err(|e| Failure::new(format!("certificate request: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Failure::new(format!("certificate request: {e}")))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| Failure::from(e).context("finalize"))?;
    let chain = order
        .poll_certificate(&polling())
        .await
        .map_err(|e| Failure::from(e).context("certificate download"))?;
    Ok((chain, key.serialize_pem()))
}

/// The issued pair checked (it loads, the key matches, every name is on it), then written:
/// key and chain together, the key never readable by others, not even briefly.
async fn store(req: &OrderRequest<'_>, chain: &str, key_pem: &str) -> Result<LoadedCert, Failure> {
    let (cert_key, key_key) = (Key::acme_cert(req.host), Key::acme_key(req.host));
    let loaded =
        crate::certs::pair_from_pem(&cert_key, chain.as_bytes(), &key_key, key_pem.as_bytes())
            .map_err(|e| Failure::new(format!("the CA's certificate is unusable: {e}")))?;
    let missing: Vec<&String> = req
        .names
        .iter()
        .filter(|n| !loaded.info.names.contains(n))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::new(format!(
            "the CA's certificate does not name {missing:?}"
        )));
    }
    req.storage
        .put(&[
            (&key_key, key_pem.as_bytes()),
            (&cert_key, chain.as_bytes()),
        ])
        .await
        .map_err(|e| Failure::new(format!("cannot store the new certificate: {e}")))?;
    Ok(loaded)
}

/// The CA's reasons for an invalid order: each failed challenge's problem document.
async fn validation_failure(order: &mut instant_acme::Order) -> Failure {
    let mut reasons = Vec::new();
    if let Some(p) = &order.state().error {
        reasons.push(describe_problem(p));
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    reasons.push(format!("{name}: {}", describe_problem(p)));
                }
            }
        }
    }
    if reasons.is_empty() {
        reasons.push("no reason given by the CA".into());
    }
    Failure::new(format!("validation failed: {}", reasons.join("; ")))
}

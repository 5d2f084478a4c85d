//! One job for one host: is its certificate due (the threshold, or the CA's renewal window
//! through `schedule::decide`), and if so, the order under the host's lock with the host's
//! challenge solver.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use instant_acme::CertificateIdentifier;

use super::client::{Failure, FailureKind};
use super::schedule::{self, Verdict};
use super::solver::Proofs;
use super::{lock_name, newer, order, Ctx, Current, Job, Outcome, PROBE_RETRY};
use crate::certs;

pub(super) async fn run_job(ctx: &Ctx, proofs: &Proofs, job: &Job) -> Outcome {
    let mut replaces = None;
    if let (false, Some(cur)) = (job.must_order, &job.current) {
        match due(ctx, job, cur).await {
            Ok(r) => replaces = r,
            Err(outcome) => return outcome,
        }
    }
    // Due. Of replicas sharing storage one orders; the others wait for its certificate.
    let lock = match ctx.storage.lock(&lock_name(job.host.as_str())).await {
        Ok(Some(lock)) => lock,
        Ok(None) => return Outcome::Busy,
        Err(e) => {
            return Outcome::Failed {
                failure: Failure::new(format!("cannot take the ACME lock in storage: {e}")),
                ordered: true,
            }
        }
    };
    let outcome = match certs::load_acme(&ctx.storage, &job.host).await {
        Some(cert) if newer(&cert, job.current.as_ref(), &job.names) => Outcome::Adopted { cert },
        _ => order_now(ctx, proofs, job, replaces).await,
    };
    if lock.lost() {
        tracing::warn!(host = %job.host, "the ACME lock's lease ran out during the order (storage unreachable?); another replica may have ordered too");
    }
    lock.release().await;
    outcome
}

/// Whether a certificate that could serve on is due: Ok with the ARI identity to replace when
/// it is, else the outcome that says when to look again.
async fn due(
    ctx: &Ctx,
    job: &Job,
    cur: &Current,
) -> Result<Option<CertificateIdentifier<'static>>, Outcome> {
    let now = SystemTime::now();
    let by_threshold = Outcome::NotDue {
        at: job.threshold_due,
        renewal: job.threshold_due,
        source: "threshold",
        ari_pick: None,
    };
    let Some(id) = &cur.ari_id else {
        return if job.threshold_due > now {
            Err(by_threshold)
        } else {
            Ok(None)
        };
    };
    let account = match ctx.accounts[job.ari_ca].get().await {
        Ok(a) => a,
        // The CA that issued it cannot be asked: a certificate past its threshold is ordered
        // anyway (from the CA the order goes to, perhaps the next one), else look again later.
        Err(_) if job.threshold_due <= now => return Ok(None),
        Err(failure) => {
            return Err(Outcome::Failed {
                failure,
                ordered: false,
            })
        }
    };
    match account.renewal_info(id).await {
        Ok((info, recheck)) => {
            let window = (
                info.suggested_window.start.unix_timestamp(),
                info.suggested_window.end.unix_timestamp(),
            );
            let max_recheck = ctx.config.renewal_check;
            by_window(job, id, (window, recheck), max_recheck, now)
        }
        Err(instant_acme::Error::Unsupported(_)) if job.threshold_due > now => Err(by_threshold),
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) if job.threshold_due > now => {
            tracing::warn!(host = %job.host, error = %Failure::from(e).message, "cannot fetch the CA's renewal window; using the threshold");
            Err(Outcome::NotDue {
                at: job.threshold_due.min(now + PROBE_RETRY),
                renewal: job.threshold_due,
                source: "threshold",
                ari_pick: None,
            })
        }
        Err(_) => Ok(None),
    }
}

/// The verdict of the CA's renewal window: Ok (renew, with the identity to replace) or when
/// to look again.
fn by_window(
    job: &Job,
    id: &CertificateIdentifier<'static>,
    window: ((i64, i64), Duration),
    max_recheck: Duration,
    now: SystemTime,
) -> Result<Option<CertificateIdentifier<'static>>, Outcome> {
    let verdict = schedule::decide(
        job.threshold_due,
        Some(window),
        job.ari_pick,
        schedule::draw(),
        max_recheck,
        now,
    );
    match verdict {
        Verdict::Renew if job.fresh => {
            // A window already past for a certificate just issued: a CA in trouble (or one
            // that revoked it at once). Renewing at once could loop.
            let at = now + schedule::MIN_RENEW_SPACING;
            tracing::warn!(host = %job.host, retry = %humantime::format_rfc3339_seconds(at), "the CA's renewal window for the certificate just issued is already past; renewing no sooner than an hour after issuance");
            Err(Outcome::NotDue {
                at,
                renewal: at,
                source: "ari",
                ari_pick: None,
            })
        }
        Verdict::Renew => Ok((!job.no_replaces).then(|| id.clone())),
        Verdict::Wait {
            at,
            renewal,
            source,
            pick,
        } => Err(Outcome::NotDue {
            at,
            renewal,
            source,
            ari_pick: pick,
        }),
    }
}

/// Orders the certificate (holding the host's lock).
async fn order_now(
    ctx: &Ctx,
    proofs: &Proofs,
    job: &Job,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Outcome {
    let accounts = &ctx.accounts[job.order_ca];
    // `replaces` names a certificate of the CA that issued it; another CA would refuse it.
    let replaces = replaces.filter(|_| job.order_ca == job.ari_ca);
    let account = match accounts.get().await {
        Ok(a) => a,
        Err(failure) => {
            return Outcome::Failed {
                failure,
                ordered: true,
            }
        }
    };
    let started = Instant::now();
    let a = accounts.config();
    tracing::info!(host = %job.host, names = ?job.names, challenge = job.challenge.as_str(), ca = %a.directory, replaces = replaces.is_some(), "ordering certificate");
    let req = order::OrderRequest {
        host: &job.host,
        names: &job.names,
        key_type: a.key_type,
        limit: a.order_limit,
        profile: a.profile.as_deref(),
        replaces,
        storage: &ctx.storage,
    };
    let Some(solver) = proofs.solver(job.challenge, a.dns.as_ref()) else {
        return Outcome::Failed {
            failure: Failure::new("dns-01 needs `acme.dns`"),
            ordered: true,
        };
    };
    let mut result = order::order(&account, &*solver, &req).await;
    if let Err(f) = &result {
        if f.kind == FailureKind::AccountGone {
            accounts.forget(&account).await;
            result = match accounts.get().await {
                Ok(fresh) => order::order(&fresh, &*solver, &req).await,
                Err(f) => Err(f),
            };
        }
    }
    match result {
        Ok(cert) => Outcome::Issued {
            cert,
            took: started.elapsed(),
            ca: job.order_ca,
        },
        Err(failure) => Outcome::Failed {
            failure,
            ordered: true,
        },
    }
}

/// Waits until something accepts TCP connections on `addr`, at most `limit`; whether it did.
pub(super) async fn wait_listening(addr: SocketAddr, limit: Duration) -> bool {
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(target).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

//! What the manager knows about one ACME host between jobs: the certificate in force (dates,
//! ARI identity, issuing CA), the planned renewal, the failures so far and what they change
//! (backoff, the next CA).

use std::time::{Duration, SystemTime};

use instant_acme::CertificateIdentifier;

use super::client::{Failure, FailureKind};
use super::schedule::{self, AriPick, HostStatus};
use crate::config::Config;
use crate::metrics;
use crate::names::HostName;
use crate::pem::LoadedCert;
use crate::time::{from_unix, unix};

/// Dates and ARI identity of the certificate a host serves.
#[derive(Clone)]
pub(super) struct Current {
    pub(super) not_before: i64,
    pub(super) not_after: i64,
    pub(super) names: Vec<String>,
    pub(super) ari_id: Option<CertificateIdentifier<'static>>,
}

impl Current {
    pub(super) fn of(c: &LoadedCert) -> Self {
        Self {
            not_before: c.info.not_before,
            not_after: c.info.not_after,
            names: c.info.names.clone(),
            ari_id: c
                .certified
                .cert
                .first()
                .and_then(|leaf| CertificateIdentifier::try_from(leaf).ok())
                .map(CertificateIdentifier::into_owned),
        }
    }

    pub(super) fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }
}

/// Whether `stored` should replace `current` (what another replica wrote is newer).
pub(super) fn newer(stored: &LoadedCert, current: Option<&Current>, names: &[String]) -> bool {
    let covers = names.iter().all(|n| stored.info.names.contains(n));
    covers && current.is_none_or(|c| stored.info.not_before > c.not_before)
}

pub(super) struct Slot {
    pub(super) names: Vec<String>,
    pub(super) current: Option<Current>,
    /// When the next job runs.
    pub(super) next: SystemTime,
    pub(super) running: bool,
    /// The threshold's renewal moment for `current`, jittered once per certificate.
    pub(super) threshold_due: SystemTime,
    /// Planned renewal and where it comes from (`ari`, `threshold`), for metrics and status.
    pub(super) renewal: Option<(SystemTime, &'static str)>,
    /// The CA's window and the moment picked in it, kept while the window is unchanged.
    pub(super) ari_pick: Option<AriPick>,
    /// The last order with `replaces` failed: order the next one without it.
    pub(super) no_replaces: bool,
    /// The certificate in force was issued here and the CA not yet asked about it: a window
    /// already past at that first look waits `MIN_RENEW_SPACING` (no issue-renew loop).
    pub(super) fresh: bool,
    /// The CA the next order goes to; the next one after repeated failures.
    pub(super) ca: usize,
    /// The CA that issued the certificate in force, when this process ordered it.
    pub(super) issued_by: Option<usize>,
    /// Its directory, for the status.
    pub(super) issuer_ca: Option<String>,
    /// The labels `mcp_edge_acme_certificate_info` has for this host now.
    pub(super) info: Option<[String; 3]>,
    pub(super) failures: u32,
    pub(super) last_error: Option<(String, i64)>,
    pub(super) last_issued: Option<i64>,
    /// A certificate read back from storage while a job ran, considered after its outcome.
    pub(super) stored: Option<LoadedCert>,
}

impl Slot {
    pub(super) fn new(names: Vec<String>, current: Option<Current>, config: &Config) -> Self {
        let now = SystemTime::now();
        let mut s = Self {
            names,
            current,
            next: now,
            running: false,
            threshold_due: now,
            renewal: None,
            ari_pick: None,
            no_replaces: false,
            fresh: false,
            ca: 0,
            issued_by: None,
            issuer_ca: None,
            info: None,
            failures: 0,
            last_error: None,
            last_issued: None,
            stored: None,
        };
        s.recompute_threshold(config, now);
        s
    }

    /// Jittered threshold moment of the current certificate; `now` when there is none.
    pub(super) fn recompute_threshold(&mut self, config: &Config, now: SystemTime) {
        self.threshold_due = match (&self.current, &config.acme) {
            (Some(c), Some(a)) => schedule::jittered(
                schedule::threshold_due(c.not_before, c.not_after, a.renew_when_remaining),
                c.not_before,
                c.not_after,
                schedule::draw(),
                now,
            ),
            _ => now,
        };
    }

    /// Whether the host needs an order regardless of renewal windows.
    pub(super) fn must_order(&self, now: SystemTime) -> bool {
        match &self.current {
            None => true,
            Some(c) => !c.covers(&self.names) || from_unix(c.not_after) <= now,
        }
    }

    /// A new certificate is in force: failures forgotten, renewal planned from its dates.
    pub(super) fn took(
        &mut self,
        host: &HostName,
        cert: &LoadedCert,
        config: &Config,
        now: SystemTime,
    ) {
        self.current = Some(Current::of(cert));
        self.failures = 0;
        self.last_error = None;
        self.no_replaces = false;
        self.fresh = true;
        self.ari_pick = None;
        self.recompute_threshold(config, now);
        if self.threshold_due <= now {
            tracing::warn!(host = %host, "acme.renew_when_remaining is longer than the new certificate's whole lifetime; renewing again in 1h, not at once");
            self.threshold_due = now + schedule::MIN_RENEW_SPACING;
        }
        self.renewal = Some((self.threshold_due, "threshold"));
        // A CA with ARI is asked for the new certificate's window at once (then as its
        // Retry-After says); without, the threshold decides.
        self.next = if self.current.as_ref().is_some_and(|c| c.ari_id.is_some()) {
            now
        } else {
            self.threshold_due
        };
    }

    pub(super) fn status(&self) -> HostStatus {
        HostStatus {
            next_renewal: self.renewal.map(|(t, _)| unix(t)),
            renewal_source: self.renewal.map(|(_, s)| s.to_string()),
            next_attempt: (self.failures > 0).then(|| unix(self.next)),
            consecutive_failures: self.failures,
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: self.last_error.as_ref().map(|(_, t)| *t),
            last_issued: self.last_issued,
            ca: self.issuer_ca.clone(),
        }
    }
}

/// Failed orders in a row at one CA before the next CA of `acme.directory` is tried.
const FAILOVER_AFTER: u32 = 2;

/// An order that reached the CA failed: counted, backed off, and logged with what serves meanwhile.
pub(super) fn order_failed(
    slot: &mut Slot,
    host: &HostName,
    failure: &Failure,
    config: &Config,
    now: SystemTime,
) {
    let m = metrics::get();
    if failure.kind == FailureKind::OrderLimit {
        // Not an order: no failure counted, no backoff; the guard says when one may be placed.
        m.acme_orders
            .with_label_values(&[host.as_str(), "refused"])
            .inc();
        slot.next = failure
            .retry_after
            .unwrap_or(now + Duration::from_secs(3600));
        slot.last_error = Some((failure.message.clone(), unix(now)));
        tracing::error!(host = %host, error = %failure.message, "certificate order refused by the runaway guard");
        return;
    }
    m.acme_orders
        .with_label_values(&[host.as_str(), "error"])
        .inc();
    slot.failures += 1;
    if slot.current.as_ref().is_some_and(|c| c.ari_id.is_some()) {
        slot.no_replaces = true;
    }
    let (initial, max) = config.acme.as_ref().map_or(
        (Duration::from_secs(120), Duration::from_secs(21600)),
        |a| (a.retry_initial, a.retry_max),
    );
    slot.next = schedule::backoff(
        slot.failures,
        initial,
        max,
        failure.retry_after,
        schedule::draw(),
        now,
    );
    let cas = config.acme.as_ref().map_or(1, |a| a.ca_count());
    if cas > 1 && slot.failures.is_multiple_of(FAILOVER_AFTER) {
        // Orders keep failing at this CA: the next goes to the next one, soon.
        slot.ca = (slot.ca + 1) % cas;
        slot.next = now + initial;
        let next = config.acme.as_ref().and_then(|a| a.ca_directory(slot.ca));
        tracing::warn!(host = %host, ca = next.unwrap_or_default(), "orders keep failing at this CA; the next order goes to the next one in acme.directory");
    }
    slot.last_error = Some((failure.message.clone(), unix(now)));
    let serving = match &slot.current {
        Some(c) if from_unix(c.not_after) > now => "the current certificate keeps serving",
        _ => "no certificate is served for this host until an order succeeds",
    };
    tracing::error!(
        host = %host,
        error = %failure.message,
        failures = slot.failures,
        next_attempt = %humantime::format_rfc3339_seconds(slot.next),
        "certificate order failed; {serving}"
    );
}

/// The host's next look, the CA's window and how its certificate is obtained, as metrics.
pub(super) fn publish_details(host: &HostName, slot: &mut Slot, config: &Config) {
    let m = metrics::get();
    let h = host.as_str();
    if !slot.running {
        m.acme_next_check
            .with_label_values(&[h])
            .set(unix(slot.next) as f64);
    }
    match slot.ari_pick {
        Some(p) => {
            m.acme_renewal_window
                .with_label_values(&[h, "start"])
                .set(p.start as f64);
            m.acme_renewal_window
                .with_label_values(&[h, "end"])
                .set(p.end as f64);
        }
        None => {
            for edge in ["start", "end"] {
                let _ = m.acme_renewal_window.remove_label_values(&[h, edge]);
            }
        }
    }
    let Some(acme) = &config.acme else { return };
    let challenge = config
        .host(h)
        .map_or("", |x| config.challenge(x).as_str())
        .to_string();
    let ca = slot
        .issuer_ca
        .clone()
        .unwrap_or_else(|| acme.ca_directory(slot.ca).unwrap_or_default().to_string());
    let labels = [challenge, ca, acme.profile.clone().unwrap_or_default()];
    if slot.info.as_ref() != Some(&labels) {
        if let Some([c, ca, p]) = &slot.info {
            let _ = m.acme_certificate_info.remove_label_values(&[h, c, ca, p]);
        }
        let [c, ca, p] = &labels;
        m.acme_certificate_info
            .with_label_values(&[h, c, ca, p])
            .set(1);
        slot.info = Some(labels);
    }
}

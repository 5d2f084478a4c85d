//! When to renew and when to retry: pure functions of certificate dates, configuration and
//! failure count, plus the status file the `certs` command reads.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::config::RenewThreshold;
use crate::storage::{Key, Storage, StorageError};
use crate::time::from_unix;

/// Longest jitter before a renewal computed from the threshold.
const MAX_RENEW_JITTER: Duration = Duration::from_secs(12 * 3600);
/// A certificate that is due as soon as it is issued (a threshold longer than the CA's lifetime)
/// is renewed again no sooner than this, so a misconfiguration cannot hammer the CA.
pub const MIN_RENEW_SPACING: Duration = Duration::from_secs(3600);

/// The moment the threshold says a certificate valid from `not_before` to `not_after` (Unix
/// seconds) becomes due, without jitter.
pub fn threshold_due(not_before: i64, not_after: i64, threshold: RenewThreshold) -> SystemTime {
    let lifetime = (not_after - not_before).max(0) as f64;
    let remaining = match threshold {
        RenewThreshold::Fraction(f) => lifetime * f,
        RenewThreshold::Remaining(d) => d.as_secs_f64(),
    };
    from_unix(not_after - remaining.round() as i64)
}

/// `due` moved earlier by a random amount (up to 2 % of the lifetime, at most 12 h) so that many
/// proxies with certificates from the same moment do not all renew in the same second. Never
/// earlier than `now`.
pub fn jittered(due: SystemTime, not_before: i64, not_after: i64, now: SystemTime) -> SystemTime {
    if due <= now {
        return now;
    }
    let lifetime = Duration::from_secs((not_after - not_before).max(0) as u64);
    let span = (lifetime / 50).min(MAX_RENEW_JITTER);
    let jitter = span.mul_f64(rand::rng().random::<f64>());
    (due - jitter).max(now)
}

/// A random moment in the CA's suggested window, never before `now`.
pub fn in_window(start: SystemTime, end: SystemTime, now: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or_default();
    (start + span.mul_f64(rand::rng().random::<f64>())).max(now)
}

/// Wait before the next attempt after `failures` failed ones in a row: `initial` doubled per
/// failure, capped at `max`, with ±10 % jitter; and never before the CA's `retry_after`.
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<SystemTime>,
    now: SystemTime,
) -> SystemTime {
    let exp = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp.min(20)).min(max);
    let factor = 0.9 + 0.2 * rand::rng().random::<f64>();
    let at = now + base.mul_f64(factor).min(max);
    match retry_after {
        Some(ra) if ra > at => ra,
        _ => at,
    }
}

/// What the running proxy knows about one ACME host, persisted for `mcp-edge certs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    /// Unix seconds of the planned renewal (or first order).
    pub next_renewal: Option<i64>,
    /// Where `next_renewal` comes from: `ari` (the CA's window) or `threshold`.
    pub renewal_source: Option<String>,
    /// Unix seconds of the next attempt after a failure.
    pub next_attempt: Option<i64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Unix seconds of the last successful order.
    pub last_issued: Option<i64>,
}

/// `acme-status.json` in storage. With replicas sharing storage, the last one whose view
/// changed wrote it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StatusFile {
    /// Unix seconds when the proxy wrote this file.
    pub written: i64,
    /// The replica that wrote it (`HOSTNAME:PID`).
    #[serde(default)]
    pub replica: String,
    pub hosts: BTreeMap<String, HostStatus>,
}

impl StatusFile {
    pub async fn read(storage: &Storage) -> Option<Self> {
        let bytes = storage.get(&Key::acme_status()).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    pub async fn write(&self, storage: &Storage) -> Result<(), StorageError> {
        // Serializing plain integers, strings and maps cannot fail.
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        storage.put(&[(&Key::acme_status(), &json)]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::unix;

    const DAY: i64 = 86_400;

    #[test]
    fn threshold_by_share_and_by_duration() {
        let nb = 1_000_000;
        let na = nb + 90 * DAY;
        let third = threshold_due(nb, na, RenewThreshold::Fraction(1.0 / 3.0));
        assert_eq!(unix(third), na - 30 * DAY);
        let d = threshold_due(
            nb,
            na,
            RenewThreshold::Remaining(Duration::from_secs(10 * DAY as u64)),
        );
        assert_eq!(unix(d), na - 10 * DAY);
    }

    #[test]
    fn jitter_is_bounded_and_never_in_the_past() {
        let now = from_unix(1_000_000);
        let nb = 1_000_000;
        let na = nb + 90 * DAY;
        let due = from_unix(na - 30 * DAY);
        for _ in 0..200 {
            let j = jittered(due, nb, na, now);
            assert!(j <= due && j >= due - MAX_RENEW_JITTER, "{j:?}");
        }
        // Past due: now, not earlier.
        assert_eq!(jittered(from_unix(10), nb, na, now), now);
        // Short-lived (6 days): at most 2 % of the lifetime.
        let na = nb + 6 * DAY;
        let due = from_unix(na - 2 * DAY);
        for _ in 0..200 {
            let j = unix(jittered(due, nb, na, now));
            assert!(j >= unix(due) - (6 * DAY) / 50, "{j}");
        }
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let now = from_unix(0);
        let i = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let secs = |f| unix(backoff(f, i, m, None, now));
        assert!((54..=66).contains(&secs(1)), "{}", secs(1));
        assert!((108..=132).contains(&secs(2)), "{}", secs(2));
        assert!((216..=264).contains(&secs(3)), "{}", secs(3));
        assert!(secs(30) <= 3600 && secs(30) >= 3240, "{}", secs(30));
        assert!(secs(1000) <= 3600);
        let later = from_unix(7200);
        assert_eq!(backoff(1, i, m, Some(later), now), later);
        // A Retry-After sooner than the backoff does not shorten it.
        assert!(unix(backoff(3, i, m, Some(from_unix(1)), now)) >= 216);
    }

    #[test]
    fn window_pick_inside_window() {
        let s = from_unix(100);
        let e = from_unix(200);
        for _ in 0..100 {
            let p = in_window(s, e, from_unix(0));
            assert!(p >= s && p <= e);
        }
        assert_eq!(in_window(s, e, from_unix(500)), from_unix(500));
    }
}

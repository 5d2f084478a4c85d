//! When to renew and when to retry: pure functions of (certificate, renewal information,
//! failures, now) and a random draw in [0, 1) that the caller supplies (tests pass fixed ones, a
//! fake clock and fake windows), plus the status file the `certs` command reads.

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

/// Certificates shorter than this renew at half their life at the latest (a 6-day certificate
/// has 3 days left to recover from a failed renewal, not 2).
pub const SHORT_LIVED: Duration = Duration::from_secs(10 * 86_400);

/// The moment the threshold says a certificate valid from `not_before` to `not_after` (Unix
/// seconds) becomes due, without jitter.
pub fn threshold_due(not_before: i64, not_after: i64, threshold: RenewThreshold) -> SystemTime {
    let lifetime = (not_after - not_before).max(0) as f64;
    let mut remaining = match threshold {
        RenewThreshold::Fraction(f) => lifetime * f,
        RenewThreshold::Remaining(d) => d.as_secs_f64(),
    };
    if lifetime < SHORT_LIVED.as_secs_f64() {
        remaining = remaining.max(lifetime / 2.0);
    }
    from_unix(not_after - remaining.round() as i64)
}

/// A random draw in [0, 1), for the functions below.
pub fn draw() -> f64 {
    rand::rng().random::<f64>()
}

/// `due` moved earlier by `draw` of a span (2 % of the lifetime, at most 12 h) so that many
/// proxies with certificates from the same moment do not all renew in the same second. Never
/// earlier than `now`.
pub fn jittered(
    due: SystemTime,
    not_before: i64,
    not_after: i64,
    draw: f64,
    now: SystemTime,
) -> SystemTime {
    if due <= now {
        return now;
    }
    let lifetime = Duration::from_secs((not_after - not_before).max(0) as u64);
    let span = (lifetime / 50).min(MAX_RENEW_JITTER);
    (due - span.mul_f64(draw.clamp(0.0, 1.0))).max(now)
}

/// The moment `draw` of the way into the CA's suggested window, never before `now`.
pub fn in_window(start: SystemTime, end: SystemTime, draw: f64, now: SystemTime) -> SystemTime {
    let span = end.duration_since(start).unwrap_or_default();
    (start + span.mul_f64(draw.clamp(0.0, 1.0))).max(now)
}

/// The moment picked in a CA's renewal window (RFC 9773), kept while the window stays the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriPick {
    pub start: i64,
    pub end: i64,
    pub pick: SystemTime,
}

/// What the scheduler decides for a certificate that could serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Order now.
    Renew,
    /// Look again at `at`; the renewal is planned for `renewal`, by `source` (`ari` or
    /// `threshold`).
    Wait {
        at: SystemTime,
        renewal: SystemTime,
        source: &'static str,
        pick: Option<AriPick>,
    },
}

/// The renewal decision. `threshold_due`: the jittered threshold moment of the certificate;
/// `window`: the CA's suggested window (Unix seconds) and when to ask again, if it gave one;
/// `previous`: the moment picked in an earlier look. A window is followed over the threshold:
/// a moment is picked once per window (`draw` of the way in) and kept while the window stays
/// the same; a window moved into the past renews at once. Never looks again later than
/// `max_recheck`, nor sooner than a minute.
pub fn decide(
    threshold_due: SystemTime,
    window: Option<((i64, i64), Duration)>,
    previous: Option<AriPick>,
    draw: f64,
    max_recheck: Duration,
    now: SystemTime,
) -> Verdict {
    let Some(((start, end), recheck)) = window else {
        return if threshold_due > now {
            Verdict::Wait {
                at: threshold_due,
                renewal: threshold_due,
                source: "threshold",
                pick: None,
            }
        } else {
            Verdict::Renew
        };
    };
    let pick = match previous {
        Some(p) if p.start == start && p.end == end => p,
        _ => AriPick {
            start,
            end,
            pick: in_window(from_unix(start), from_unix(end), draw, now),
        },
    };
    if pick.pick <= now {
        return Verdict::Renew;
    }
    // The CA's Retry-After, capped by `acme.renewal_check`; at least a minute apart unless
    // that setting is shorter (tests).
    let floor = Duration::from_secs(60).min(max_recheck);
    let recheck = recheck.clamp(floor, max_recheck.max(floor));
    Verdict::Wait {
        at: pick.pick.min(now + recheck),
        renewal: pick.pick,
        source: "ari",
        pick: Some(pick),
    }
}

/// Wait before the next attempt after `failures` failed ones in a row: `initial` doubled per
/// failure, capped at `max`, with ±10 % jitter (`draw`); and never before the CA's `retry_after`.
pub fn backoff(
    failures: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<SystemTime>,
    draw: f64,
    now: SystemTime,
) -> SystemTime {
    let exp = failures.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp.min(20)).min(max);
    let factor = 0.9 + 0.2 * draw.clamp(0.0, 1.0);
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
    /// The directory of the CA that issued the certificate in force (when known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
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
        // Short-lived: half the life at the latest, whatever the threshold says.
        let na = nb + 6 * DAY;
        let third = threshold_due(nb, na, RenewThreshold::Fraction(1.0 / 3.0));
        assert_eq!(unix(third), nb + 3 * DAY);
        let day = threshold_due(
            nb,
            na,
            RenewThreshold::Remaining(Duration::from_secs(DAY as u64)),
        );
        assert_eq!(unix(day), nb + 3 * DAY);
        // A longer remaining share still wins.
        let most = threshold_due(nb, na, RenewThreshold::Fraction(0.75));
        assert_eq!(unix(most), nb + 6 * DAY / 4);
    }

    #[test]
    fn jitter_is_bounded_and_never_in_the_past() {
        let now = from_unix(1_000_000);
        let nb = 1_000_000;
        let na = nb + 90 * DAY;
        let due = from_unix(na - 30 * DAY);
        assert_eq!(jittered(due, nb, na, 0.0, now), due);
        assert_eq!(jittered(due, nb, na, 1.0, now), due - MAX_RENEW_JITTER);
        for d in [0.1, 0.5, 0.99] {
            let j = jittered(due, nb, na, d, now);
            assert!(j <= due && j >= due - MAX_RENEW_JITTER, "{j:?}");
        }
        // Past due: now, not earlier.
        assert_eq!(jittered(from_unix(10), nb, na, 0.5, now), now);
        // Short-lived (6 days): at most 2 % of the lifetime.
        let na = nb + 6 * DAY;
        let due = from_unix(na - 2 * DAY);
        assert_eq!(
            unix(jittered(due, nb, na, 1.0, now)),
            unix(due) - (6 * DAY) / 50
        );
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        let now = from_unix(0);
        let i = Duration::from_secs(60);
        let m = Duration::from_secs(3600);
        let secs = |f, d| unix(backoff(f, i, m, None, d, now));
        assert_eq!((secs(1, 0.0), secs(1, 0.5), secs(1, 1.0)), (54, 60, 66));
        assert_eq!(secs(2, 0.5), 120);
        assert_eq!(secs(3, 0.5), 240);
        assert_eq!(secs(30, 1.0), 3600, "capped, jitter included");
        assert_eq!(secs(1000, 0.0), 3240);
        let later = from_unix(7200);
        assert_eq!(backoff(1, i, m, Some(later), 0.5, now), later);
        // A Retry-After sooner than the backoff does not shorten it.
        assert_eq!(unix(backoff(3, i, m, Some(from_unix(1)), 0.5, now)), 240);
    }

    #[test]
    fn window_pick_inside_window() {
        let s = from_unix(100);
        let e = from_unix(200);
        assert_eq!(in_window(s, e, 0.0, from_unix(0)), s);
        assert_eq!(in_window(s, e, 0.5, from_unix(0)), from_unix(150));
        assert_eq!(in_window(s, e, 0.5, from_unix(500)), from_unix(500));
    }

    const H: u64 = 3600;

    #[test]
    fn without_a_window_the_threshold_decides() {
        let now = from_unix(1_000);
        let due = from_unix(5_000);
        let six_h = Duration::from_secs(6 * H);
        assert_eq!(
            decide(due, None, None, 0.5, six_h, now),
            Verdict::Wait {
                at: due,
                renewal: due,
                source: "threshold",
                pick: None
            }
        );
        assert_eq!(decide(now, None, None, 0.5, six_h, now), Verdict::Renew);
    }

    #[test]
    fn an_ari_window_is_followed_over_the_threshold_and_its_pick_kept() {
        let six_h = Duration::from_secs(6 * H);
        let now = from_unix(0);
        let far = from_unix(90 * DAY);
        let window = ((10 * DAY, 12 * DAY), Duration::from_secs(6 * H));
        let Verdict::Wait {
            at,
            renewal,
            source,
            pick,
        } = decide(far, Some(window), None, 0.5, six_h, now)
        else {
            panic!("not due yet")
        };
        assert_eq!(renewal, from_unix(11 * DAY), "half way into the window");
        assert_eq!(source, "ari");
        assert_eq!(at, from_unix(6 * H as i64), "looked at again within 6 h");
        // The next look (another draw) keeps the moment picked for the same window.
        let later = from_unix(6 * H as i64);
        let again = decide(far, Some(window), pick, 0.9, six_h, later);
        assert!(matches!(again, Verdict::Wait { renewal: r, .. } if r == renewal));
        // Retry-After beyond the cap is capped; below a minute raised to one.
        let long = ((10 * DAY, 12 * DAY), Duration::from_secs(48 * H));
        let Verdict::Wait { at, .. } = decide(far, Some(long), None, 0.5, six_h, now) else {
            panic!()
        };
        assert_eq!(at, from_unix(6 * H as i64));
        let short = ((10 * DAY, 12 * DAY), Duration::from_secs(1));
        let Verdict::Wait { at, .. } = decide(far, Some(short), None, 0.5, six_h, now) else {
            panic!()
        };
        assert_eq!(at, from_unix(60));
    }

    #[test]
    fn a_window_moved_into_the_past_renews_at_once() {
        // A mass-revocation drill: the CA moves the window to yesterday.
        let now = from_unix(30 * DAY);
        let six_h = Duration::from_secs(6 * H);
        let earlier = Some(AriPick {
            start: 40 * DAY,
            end: 42 * DAY,
            pick: from_unix(41 * DAY),
        });
        let moved = ((29 * DAY, 29 * DAY + 3600), Duration::from_secs(6 * H));
        assert_eq!(
            decide(from_unix(60 * DAY), Some(moved), earlier, 0.3, six_h, now),
            Verdict::Renew
        );
    }
}

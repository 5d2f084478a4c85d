//! The runaway guard: at most `acme.order_limit` orders per host in a sliding window, counted
//! in storage (so neither a restart nor another replica starts the count afresh) and checked
//! before every new order, whatever asked for it: first issuance, renewal, ARI, a retry. A CA's
//! duplicate-certificate limit (5 per week per name set at Let's Encrypt) locks a host out for a
//! week; a loop that fails after placing its order would otherwise reach it within minutes.
//! What counts is an order the CA accepted: an attempt that never reached it (the CA down)
//! costs nothing there, and must not lock the host out here once the CA is back.
//!
//! The record is read and written under the host's ordering lock, which every order holds.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::client::{Failure, FailureKind};
use crate::config::OrderLimit;
use crate::names::HostName;
use crate::storage::{Key, Storage};
use crate::time::{from_unix, unix};

/// What storage keeps per host: when its recent orders were placed (unix seconds).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    orders: Vec<i64>,
}

/// The verdict on one more order at `now`, given the times of earlier ones: the times to keep
/// (those inside the window, plus `now` when allowed), or the moment the oldest leaves the
/// window.
pub(super) fn decide(
    earlier: &[i64],
    limit: OrderLimit,
    now: SystemTime,
) -> Result<Vec<i64>, SystemTime> {
    let window = limit.window.as_secs() as i64;
    let now_s = unix(now);
    // A time ahead of this clock by less than a window (another replica's clock a little
    // off) counts as now; one further ahead is nonsense and dropped, so no clock can hold the
    // host out for longer than two windows.
    let mut kept: Vec<i64> = earlier
        .iter()
        .filter(|t| **t > now_s - window && **t <= now_s + window)
        .map(|t| (*t).min(now_s))
        .collect();
    kept.sort_unstable();
    if kept.len() >= limit.orders as usize {
        let frees = kept[kept.len() - limit.orders as usize] + window;
        return Err(from_unix(frees).max(now + Duration::from_secs(1)));
    }
    kept.push(now_s);
    Ok(kept)
}

/// Leave to place one order for `host`, to be recorded once the CA accepted it.
pub(super) struct Admitted {
    key: Key,
    orders: Vec<i64>,
}

impl Admitted {
    /// Counts the order (the CA accepted it). A count that cannot be written is logged: the
    /// order is placed already.
    pub(super) async fn record(self, storage: &Storage, host: &HostName) {
        let bytes = serde_json::to_vec(&Record {
            orders: self.orders,
        })
        .unwrap_or_default();
        if let Err(e) = storage.put(&[(&self.key, &bytes)]).await {
            tracing::warn!(host = %host, error = %e, "cannot record an ACME order for the runaway guard");
        }
    }
}

/// Leave for one more order for `host`, or a refusal (`FailureKind::OrderLimit`, retry when
/// the window frees a place). An unreadable record refuses too: the guard fails closed.
pub(super) async fn admit(
    storage: &Storage,
    host: &HostName,
    limit: OrderLimit,
    now: SystemTime,
) -> Result<Admitted, Failure> {
    let key = Key::acme_orders(host);
    let record: Record = match storage.get(&key).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Refusing on it would lock the host out for good (a refusal never rewrites it).
            tracing::warn!(host = %host, error = %e, "the runaway guard's order record is unreadable; counting from zero");
            Record::default()
        }),
        Ok(None) => Record::default(),
        Err(e) => {
            return Err(Failure::new(format!(
                "cannot read the order count of {host} ({e}); no order without it"
            )))
        }
    };
    match decide(&record.orders, limit, now) {
        Ok(orders) => Ok(Admitted { key, orders }),
        Err(frees) => Err(Failure {
            kind: FailureKind::OrderLimit,
            message: format!(
                "order limit reached: {} orders for {host} within {} (acme.order_limit); the next is allowed at {}",
                limit.orders,
                humantime::format_duration(limit.window),
                humantime::format_rfc3339_seconds(frees)
            ),
            retry_after: Some(frees),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn limit() -> OrderLimit {
        OrderLimit {
            orders: 3,
            window: Duration::from_secs(DAY as u64),
        }
    }

    #[test]
    fn three_orders_a_day_then_refused_until_the_oldest_leaves_the_window() {
        let t0 = from_unix(1_000_000);
        let mut times = Vec::new();
        for i in 0..3 {
            times = decide(&times, limit(), t0 + Duration::from_secs(i * 60)).unwrap();
        }
        assert_eq!(times.len(), 3);
        let refused = decide(&times, limit(), t0 + Duration::from_secs(3600)).unwrap_err();
        assert_eq!(refused, from_unix(1_000_000 + DAY));
        // Once the first order is a day old, one more is allowed, and the count stays 3.
        let later = decide(&times, limit(), from_unix(1_000_000 + DAY)).unwrap();
        assert_eq!(later.len(), 3);
        assert!(!later.contains(&1_000_000));
    }

    #[test]
    fn times_from_a_clock_ahead_count_and_nonsense_is_dropped() {
        // A replica whose clock is an hour ahead: its orders count (as now).
        let now = from_unix(1_000_000);
        let ahead = [1_000_000 + 3600; 3];
        assert_eq!(
            decide(&ahead, limit(), now),
            Err(from_unix(1_000_000 + DAY))
        );
        // Ten days ahead is a broken clock: it must not lock the host out for ten days.
        let broken = [1_000_000 + 10 * DAY; 3];
        assert!(decide(&broken, limit(), now).is_ok());
    }
}

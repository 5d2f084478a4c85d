//! Rate limits: GCRA (the generic cell rate algorithm; one instant per caller, no timers), in a
//! table of bounded size whatever the number of distinct callers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Rate;

/// Callers tracked at once. At the cap, callers back at full budget are forgotten first (they
/// are indistinguishable from new ones), then those closest to it.
const MAX_KEYS: usize = 100_000;

/// What a request may see of its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the burst after this one.
    pub remaining: u32,
    /// When the budget is full again (allowed) or the next request is allowed (refused).
    pub reset: Duration,
}

pub struct Limiter {
    /// Per key: the theoretical arrival time of the next request.
    tat: Mutex<HashMap<String, Instant>>,
    max_keys: usize,
}

impl Default for Limiter {
    fn default() -> Self {
        Self::with_capacity(MAX_KEYS)
    }
}

impl Limiter {
    pub fn with_capacity(max_keys: usize) -> Self {
        Self {
            tat: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Whether one request of `key` under `rate` would be allowed at `now`; spends nothing.
    pub fn peek(&self, key: &str, rate: Rate, now: Instant) -> Decision {
        self.decide(key, rate, now, false)
    }

    /// One request of `key` under `rate`, at `now`: spent if allowed.
    pub fn check(&self, key: &str, rate: Rate, now: Instant) -> Decision {
        self.decide(key, rate, now, true)
    }

    fn decide(&self, key: &str, rate: Rate, now: Instant, spend: bool) -> Decision {
        let interval = rate.per / rate.requests;
        let tolerance = interval * (rate.burst - 1);
        let mut map = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let tat = map.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > tolerance {
            return Decision {
                allowed: false,
                remaining: 0,
                reset: ahead - tolerance,
            };
        }
        let next = tat + interval;
        if spend {
            if !map.contains_key(key) && map.len() >= self.max_keys {
                evict(&mut map, now, self.max_keys);
            }
            map.insert(key.to_string(), next);
        }
        let used = next - now;
        let left = (tolerance + interval).saturating_sub(used);
        Decision {
            allowed: true,
            remaining: (left.as_nanos() / interval.as_nanos().max(1)) as u32,
            reset: used,
        }
    }

    pub fn len(&self) -> usize {
        self.tat.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room: forgets callers at full budget, then a quarter of the table, closest to full
/// budget first.
fn evict(map: &mut HashMap<String, Instant>, now: Instant, max: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() < max {
        return;
    }
    let mut by_tat: Vec<(Instant, String)> = map.iter().map(|(k, t)| (*t, k.clone())).collect();
    by_tat.sort_unstable();
    for (_, k) in by_tat.into_iter().take(max / 4 + 1) {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        requests: 2,
        per: Duration::from_secs(10),
        burst: 3,
    };

    #[test]
    fn a_burst_then_one_per_interval_and_others_unaffected() {
        let l = Limiter::default();
        let t0 = Instant::now();
        let seen: Vec<_> = (0..4).map(|_| l.check("a", RATE, t0)).collect();
        assert_eq!(
            seen.iter()
                .map(|d| (d.allowed, d.remaining))
                .collect::<Vec<_>>(),
            [(true, 2), (true, 1), (true, 0), (false, 0)]
        );
        assert_eq!(seen[3].reset, Duration::from_secs(5));
        assert!(l.check("b", RATE, t0).allowed);
        assert!(!l.check("a", RATE, t0 + Duration::from_secs(4)).allowed);
        assert!(l.check("a", RATE, t0 + Duration::from_secs(5)).allowed);
    }

    #[test]
    fn the_table_stays_bounded_whatever_the_number_of_callers() {
        let l = Limiter::with_capacity(100);
        let t0 = Instant::now();
        for i in 0..10_000 {
            l.check(&format!("caller-{i}"), RATE, t0);
        }
        assert!(l.len() <= 100, "{}", l.len());
        // The newest caller is still limited correctly.
        let last = "caller-9999";
        assert!(l.check(last, RATE, t0).allowed);
        assert!(l.check(last, RATE, t0).allowed);
        assert!(!l.check(last, RATE, t0).allowed);
    }
}

//! Rate limits: a caller's budgets on a route (`rate_limit`: the route's, and each tool's), kept
//! in one GCRA table (`gcra`). A refusal is an [`Answer`] (429 with `Retry-After` and the
//! RateLimit headers); the request path writes it.

pub mod gcra;

use std::time::Instant;

use http::header::{self, HeaderName};

use crate::config::{Rate, RateLimit};
use crate::metrics;
use crate::reply::Answer;
pub use gcra::Limiter;

/// The response headers that describe budget `name` after decision `d`
/// (draft-ietf-httpapi-ratelimit-headers).
fn rate_headers(name: &str, rate: Rate, d: gcra::Decision) -> Vec<(HeaderName, String)> {
    let reset = d.reset.as_secs_f64().ceil() as u64;
    vec![
        (
            HeaderName::from_static("ratelimit-policy"),
            format!(
                "\"{name}\";q={};w={}",
                rate.requests,
                rate.per.as_secs().max(1)
            ),
        ),
        (
            HeaderName::from_static("ratelimit"),
            format!("\"{name}\";r={};t={reset}", d.remaining),
        ),
    ]
}

/// The 429 of a request over a budget (CORS headers are the caller's to add).
fn refusal(headers: Vec<(HeaderName, String)>) -> Answer {
    Answer::json(
        429,
        &br#"{"error":"rate_limited","error_description":"too many requests; see Retry-After"}"#[..],
    )
    .with_headers(headers)
}

/// What a client address is counted by: IPv4 as itself (an IPv4-mapped IPv6 address too), IPv6
/// by its /64, which one host usually holds whole.
pub fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The budget name of refused credentials (metric label `limit`).
const CREDENTIALS: &str = "credentials";

/// A caller's budgets on one route.
pub struct Budget {
    /// Metric labels: host and route.
    pub labels: (String, String),
    /// Who is counted: `key:NAME`, `sub:SUBJECT` or `ip:ADDRESS`.
    pub caller: String,
    pub limit: RateLimit,
}

impl Budget {
    /// Whether the route has budgets for tools (decided from the body's calls).
    pub fn has_tools(&self) -> bool {
        !self.limit.tools.is_empty()
    }

    fn key(&self, name: &str) -> String {
        let (host, route) = (&self.labels.0, &self.labels.1);
        format!("{host}\u{0}{route}\u{0}{name}\u{0}{}", self.caller)
    }

    /// The 429 of budget `name`, counted.
    fn refuse(&self, name: &str, rate: Rate, d: gcra::Decision) -> Answer {
        metrics::get()
            .rate_limited
            .with_label_values(&[self.labels.0.as_str(), self.labels.1.as_str(), name])
            .inc();
        let mut headers = rate_headers(name, rate, d);
        headers.push((
            header::RETRY_AFTER,
            d.reset.as_secs_f64().ceil().max(1.0).to_string(),
        ));
        refusal(headers)
    }

    /// The budgets a request with these tool calls spends: the route's, and each called tool's
    /// that has one (once per call).
    fn budgets<'a>(&'a self, tools: &[&str]) -> Vec<(&'a str, Rate)> {
        let mut budgets = vec![("default", self.limit.default)];
        for t in tools {
            if let Some((name, rate)) = self.limit.tools.iter().find(|(n, _)| n == t) {
                budgets.push((name.as_str(), *rate));
            }
        }
        budgets
    }

    /// Checks the route's budget without spending it (a request whose tool calls are in its
    /// body spends it with them, in [`Budget::spend`]). `Err`: the 429 to answer.
    pub fn peek(&self, limiter: &Limiter) -> Result<(), Answer> {
        let d = limiter.peek(&self.key("default"), self.limit.default, Instant::now());
        if d.allowed {
            Ok(())
        } else {
            Err(self.refuse("default", self.limit.default, d))
        }
    }

    /// Checks (`spend: false`) or spends one unit of the address's budget of refused
    /// credentials (the route's rate, kept apart from its requests). `Err`: the budget is gone;
    /// the 429 to answer, before any credential is looked at.
    pub fn failures(&self, limiter: &Limiter, spend: bool) -> Result<(), Answer> {
        let (key, rate, now) = (self.key(CREDENTIALS), self.limit.default, Instant::now());
        let d = match spend {
            true => limiter.check(&key, rate, now),
            false => limiter.peek(&key, rate, now),
        };
        match d.allowed {
            true => Ok(()),
            false => Err(self.refuse(CREDENTIALS, rate, d)),
        }
    }

    /// Spends one request of the route's budget and one unit of each called tool's budget per
    /// call (a batch of fifty calls of a tool spends fifty). Every distinct budget must allow the
    /// request before any is spent, so a call refused by its tool's budget does not use up the
    /// route's. `Ok`: the RateLimit headers of the answer; `Err`: the 429 to answer.
    pub fn spend(
        &self,
        limiter: &Limiter,
        tools: &[&str],
    ) -> Result<Vec<(HeaderName, String)>, Answer> {
        let budgets = self.budgets(tools);
        let now = Instant::now();
        for (name, rate) in &budgets {
            let d = limiter.peek(&self.key(name), *rate, now);
            if !d.allowed {
                return Err(self.refuse(name, *rate, d));
            }
        }
        let mut headers = Vec::new();
        for (name, rate) in budgets {
            let d = limiter.check(&self.key(name), rate, now);
            if !d.allowed {
                // A batch calling one tool more often than its budget allows.
                return Err(self.refuse(name, rate, d));
            }
            headers = rate_headers(name, rate, d);
        }
        Ok(headers)
    }
}

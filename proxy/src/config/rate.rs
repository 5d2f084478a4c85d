//! `rate_limit:` of a host or a route: how often a caller may call. Data only: the budgets are
//! `limits`.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::opt_duration;
use super::{Collector, KeyPath};

/// How often a caller may call a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub default: Rate,
    /// `tools/call` of these tools (by `Mcp-Name`), each with its own budget.
    pub tools: Vec<(String, Rate)>,
}

/// `requests` per `per`, with up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    requests: u32,
    per: String,
    burst: Option<u32>,
    #[serde(default)]
    tools: serde_yaml_ng::Mapping,
}

/// `rate_limit:` of a host or route: `none`, or the map. `Some(None)` is `none`.
pub(super) fn build_rate_limit(
    v: Value,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Option<RateLimit>> {
    if matches!(&v, Value::String(s) if s == "none") {
        return Some(None);
    }
    let raw = c.deserialize::<RawRate>(v, p)?;
    let default = build_rate(raw.requests, &raw.per, raw.burst, p, c)?;
    let mut tools = Vec::new();
    for (name, v) in raw.tools {
        let Value::String(name) = name else {
            c.err(&p.key("tools"), "tool names must be strings");
            continue;
        };
        let tp = p.key("tools").key(&name);
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawToolRate {
            requests: u32,
            per: String,
            burst: Option<u32>,
        }
        if let Some(r) = c.deserialize::<RawToolRate>(v, &tp) {
            if let Some(rate) = build_rate(r.requests, &r.per, r.burst, &tp, c) {
                tools.push((name, rate));
            }
        }
    }
    Some(Some(RateLimit { default, tools }))
}

fn build_rate(
    requests: u32,
    per: &str,
    burst: Option<u32>,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Rate> {
    let per = opt_duration(c, &p.key("per"), Some(per), Duration::from_secs(60));
    if requests == 0 {
        c.err(&p.key("requests"), "must be at least 1");
        return None;
    }
    if per < Duration::from_millis(1) {
        c.err(&p.key("per"), "must be at least 1ms");
        return None;
    }
    let burst = burst.unwrap_or(requests);
    if burst == 0 {
        c.err(&p.key("burst"), "must be at least 1");
        return None;
    }
    Some(Rate {
        requests,
        per,
        burst,
    })
}

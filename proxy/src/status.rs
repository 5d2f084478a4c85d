//! The status page (`/status` on the admin listener): one server-rendered HTML page, no script,
//! no external asset. Hosts and their certificates, upstream replicas and their health, MCP
//! calls and p50/p99 latency per tool over the last minutes, open streams. Built from the live
//! snapshot and the metrics the proxy keeps anyway.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;

use crate::live::{Live, Snapshot};
use crate::metrics;

/// The window the per-tool figures cover.
const WINDOW: Duration = Duration::from_secs(300);

/// Per (host, route, method, tool): the latency histogram's cumulative buckets and count.
type Histograms = BTreeMap<[String; 4], (Vec<(f64, u64)>, u64)>;

/// Histogram snapshots taken when the page (or `/metrics`) is read, so the page can show the
/// last minutes rather than everything since start. The first is empty, taken at start.
pub struct Window {
    snapshots: Mutex<VecDeque<(Instant, Histograms)>>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            snapshots: Mutex::new(VecDeque::from([(Instant::now(), Histograms::new())])),
        }
    }
}

fn histograms() -> Histograms {
    let mut out = Histograms::new();
    for family in metrics::get().mcp_duration.collect() {
        for m in family.get_metric() {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map_or(String::new(), |l| l.value().to_string())
            };
            let h = m.get_histogram();
            let buckets = h
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect();
            let key = [
                label("host"),
                label("route"),
                label("method"),
                label("tool"),
            ];
            out.insert(key, (buckets, h.get_sample_count()));
        }
    }
    out
}

/// The `q` quantile of a histogram's counts (Prometheus' `histogram_quantile`: linear within
/// the bucket it falls in).
fn quantile(q: f64, buckets: &[(f64, u64)], total: u64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut prev = (0.0, 0u64);
    for &(upper, count) in buckets {
        if count as f64 >= rank {
            let in_bucket = (count - prev.1) as f64;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1 as f64) / in_bucket
            } else {
                0.0
            };
            return Some(prev.0 + (upper - prev.0) * frac);
        }
        prev = (upper, count);
    }
    Some(prev.0)
}

impl Window {
    /// Records the current histograms; returns them with the baseline to subtract (the newest
    /// snapshot at least `WINDOW` old, else the oldest kept) and how long ago it was taken.
    fn advance(&self) -> (Histograms, Histograms, Duration) {
        let now = Instant::now();
        let current = histograms();
        let mut snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        while snaps.len() > 1 && snaps[1].0 + WINDOW <= now {
            snaps.pop_front();
        }
        let (since, base) = snaps
            .front()
            .map_or((Duration::ZERO, Histograms::new()), |(t, h)| {
                (now.duration_since(*t), h.clone())
            });
        if snaps
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= Duration::from_secs(5))
        {
            snaps.push_back((now, current.clone()));
        }
        (current, base, since)
    }

    pub fn note(&self) {
        self.advance();
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |s| format!("{:.1} ms", s * 1000.0))
}

/// The values of a one-label gauge family by label, read without creating any series.
fn by_label(c: &dyn Collector) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for family in c.collect() {
        for m in family.get_metric() {
            if let Some(l) = m.get_label().first() {
                out.insert(l.value().to_string(), m.get_gauge().get_value());
            }
        }
    }
    out
}

fn when(unix: f64) -> String {
    let left = unix - crate::time::unix_now() as f64;
    let days = left / 86400.0;
    let at = crate::time::rfc3339(unix as i64);
    if left < 0.0 {
        format!("{at} (past)")
    } else {
        format!("{at} (in {days:.0} d)")
    }
}

/// The page.
pub fn render(live: &Live, window: &Window) -> String {
    let snap = live.load();
    let m = metrics::get();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=utf-8><title>mcp-edge status</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}}\
         h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}\
         table{{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;min-width:60%}}\
         th,td{{padding:6px 12px;border-bottom:1px solid #e3e6ea;text-align:left}}\
         th{{background:#eef1f5;font-weight:600}}.up{{color:#137333}}.down{{color:#b3261e;font-weight:600}}\
         .muted{{color:#69727d}}</style></head><body><h1>mcp-edge</h1>"
    );

    hosts_section(&mut h, &snap, m);
    upstreams_section(&mut h, &snap);
    calls_section(&mut h, window);
    h.push_str("</table><p class=muted>Refresh to update. Figures: the Prometheus metrics at <a href=/metrics>/metrics</a>.</p></body></html>");
    h
}

/// Hosts and their certificates: issuer, expiry, next renewal, ACME failures, open streams.
fn hosts_section(h: &mut String, snap: &Snapshot, m: &metrics::Metrics) {
    let renewals = by_label(&m.cert_next_renewal);
    let failures = by_label(&m.acme_failures);
    let streams = by_label(&m.open_streams);
    h.push_str("<h2>Hosts and certificates</h2><table><tr><th>host</th><th>TLS</th><th>ACME challenge</th><th>issuer</th><th>expires</th><th>next renewal</th><th>ACME failures in a row</th><th>open streams</th></tr>");
    for host in &snap.config.hosts {
        let name = host.name.as_str();
        let cert = snap.certs.for_host(&host.name);
        let issuer = cert.map_or("–".into(), |c| esc(&c.cert.info.issuer));
        let expires = cert.map_or("–".into(), |c| when(c.cert.info.not_after as f64));
        let renewal = renewals.get(name).map_or("–".into(), |t| when(*t));
        let failures = failures.get(name).copied().unwrap_or(0.0);
        let streams = streams.get(name).copied().unwrap_or(0.0);
        let aliases: Vec<&str> = host.aliases.iter().map(|a| a.as_str()).collect();
        let _ = write!(
            h,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{issuer}</td><td>{expires}</td><td>{renewal}</td><td>{failures}</td><td>{streams}</td></tr>",
            esc(name),
            if aliases.is_empty() { String::new() } else { format!(" <span class=muted>({})</span>", esc(&aliases.join(", "))) },
            host.tls.kind(),
            if host.tls == crate::config::TlsSource::Acme {
                snap.config.challenge(host).as_str()
            } else {
                "–"
            },
        );
    }
    h.push_str("</table>");
}

/// Every replica of every route, in or out of the round robin.
fn upstreams_section(h: &mut String, snap: &Snapshot) {
    h.push_str("<h2>Upstreams</h2><table><tr><th>host</th><th>route</th><th>replica</th><th>state</th></tr>");
    for entry in snap.table.hosts() {
        for route in &entry.routes {
            let pool = &route.pool;
            for i in 0..pool.upstream.urls.len() {
                let (class, state) = if pool.is_up(i) {
                    ("up", "up")
                } else {
                    ("down", "out of the round robin")
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class={class}>{state}</td></tr>",
                    esc(entry.host.name.as_str()),
                    esc(&route.path),
                    esc(&pool.url(i).url)
                );
            }
        }
    }
    h.push_str("</table>");
}

/// MCP calls in the window, by host, route, method and tool, with latency quantiles.
fn calls_section(h: &mut String, window: &Window) {
    let (current, base, since) = window.advance();
    let minutes = (since.as_secs_f64() / 60.0).ceil().max(1.0);
    let _ = write!(
        h,
        "<h2>MCP calls, last {minutes:.0} min</h2><table><tr><th>host</th><th>route</th><th>method</th><th>tool</th><th>calls</th><th>p50</th><th>p99</th></tr>"
    );
    let mut any = false;
    for (key, (buckets, count)) in &current {
        let (base_buckets, base_count) = base.get(key).cloned().unwrap_or_default();
        let delta: Vec<(f64, u64)> = buckets
            .iter()
            .enumerate()
            .map(|(i, (ub, c))| {
                (
                    *ub,
                    c.saturating_sub(base_buckets.get(i).map_or(0, |b| b.1)),
                )
            })
            .collect();
        let n = count.saturating_sub(base_count);
        if n == 0 {
            continue;
        }
        any = true;
        let [host, route, method, tool] = key;
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
            esc(host),
            esc(route),
            esc(method),
            esc(tool),
            ms(quantile(0.5, &delta, n)),
            ms(quantile(0.99, &delta, n))
        );
    }
    if !any {
        h.push_str("<tr><td colspan=7 class=muted>no calls in this window</td></tr>");
    }
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let buckets = [(0.1, 0), (0.25, 0), (0.5, 10), (1.0, 10)];
        assert_eq!(quantile(0.5, &buckets, 10), Some(0.375));
        assert_eq!(quantile(0.5, &buckets, 0), None);
    }
}

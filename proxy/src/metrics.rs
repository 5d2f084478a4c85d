//! Prometheus metrics. Label values come from the configuration (host names, route paths) or
//! from fixed sets (status class, reason), never from client input.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Host label for requests that matched no configured host.
pub const UNKNOWN_HOST: &str = "_unknown";
/// Route label for requests that matched no route (or never got that far).
pub const NO_ROUTE: &str = "_none";

pub struct Metrics {
    registry: Registry,
    /// Requests by host, route and status class (`2xx`...).
    pub requests: IntCounterVec,
    /// Request duration (until the response is complete) by host and route.
    pub duration: HistogramVec,
    /// Open `text/event-stream` responses by host.
    pub open_streams: IntGaugeVec,
    /// Failures talking to an upstream, by host, route and reason.
    pub upstream_errors: IntCounterVec,
    /// Completed TLS handshakes by host.
    pub tls_handshakes: IntCounterVec,
    /// TLS handshakes refused for want of a certificate, by reason.
    pub tls_handshake_failures: IntCounterVec,
    /// notAfter of the certificate served for a host (Unix seconds).
    pub cert_not_after: GaugeVec,
    /// Configuration reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// Requests refused at the edge before reaching an upstream, by host and reason
    /// (`bad_path`, `repeated_origin`, `body_too_large`).
    pub refused: IntCounterVec,
    /// Requests refused because their session id was not sealed by this proxy.
    pub session_rejected: IntCounterVec,
    /// Audit records written, by sink (`stdout`, `file`).
    pub audit_records: IntCounterVec,
    /// Audit records lost, by reason (`queue_full`: the sink was slower than the calls;
    /// `write_error`).
    pub audit_dropped: IntCounterVec,
    /// ACME orders by host and result (`ok`, `error`).
    pub acme_orders: IntCounterVec,
    /// Certificates another replica ordered, installed from shared storage, by host.
    pub acme_adopted: IntCounterVec,
    /// 1 while the storage answers, 0 after an operation found it unreachable (Redis).
    pub storage_available: IntGauge,
    /// When the certificate of an ACME host is next renewed (Unix seconds).
    pub cert_next_renewal: GaugeVec,
    /// Failed ACME orders in a row, by host (0 after a success).
    pub acme_failures: IntGaugeVec,
    /// When the ACME manager next looks at a host (its renewal window, or an order), Unix
    /// seconds.
    pub acme_next_check: GaugeVec,
    /// The CA's renewal window (ARI) of a host's certificate: `edge` start or end, Unix seconds.
    pub acme_renewal_window: GaugeVec,
    /// 1, labelled with how a host's certificate is obtained: challenge, CA, profile.
    pub acme_certificate_info: IntGaugeVec,
    /// 1 while an upstream replica takes new sessions, 0 while it is out of the round robin
    /// after a failed connection or probe; by host, route and replica URL.
    pub replica_up: IntGaugeVec,
    /// Client connections open now, both listeners.
    pub connections_open: IntGauge,
    /// Upstream connections requests hold now (idle pooled ones not counted).
    pub upstream_connections_in_use: IntGauge,
    /// Idle upstream connections closed because the replica wrote bytes nobody asked for.
    pub upstream_stray_bytes: prometheus::IntCounter,
    /// Client connections closed before their handshake by a cap, by reason (`connections`,
    /// `connections_per_address`).
    pub connections_refused: IntCounterVec,
    /// Active health probes by host, route and result (`ok`, `failed`).
    pub health_probes: IntCounterVec,
    /// Credential checks by host, route and result (`ok`, or why refused: `missing`,
    /// `expired`, `bad_audience`…).
    pub auth_results: IntCounterVec,
    /// Requests refused by a rate limit, by host, route and limit (`default` or a tool).
    pub rate_limited: IntCounterVec,
    /// JSON-RPC calls by host, route, method, tool and outcome (with the error's code class).
    pub mcp_calls: IntCounterVec,
    /// Time from a call's request to its response message, by host, route, method and tool.
    pub mcp_duration: HistogramVec,
    /// Requests by the MCP protocol version they declare.
    pub mcp_versions: IntCounterVec,
    /// MCP request bodies not read, by reason (`too_large`, `not_jsonrpc`).
    pub mcp_unparsed: IntCounterVec,
    /// How long SSE streams stayed open, by host and route.
    pub stream_duration: HistogramVec,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// A gauge without labels.
fn one_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help)).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// A counter without labels (exported from the start, at 0).
fn one_counter(r: &Registry, name: &str, help: &str) -> prometheus::IntCounter {
    let c =
        prometheus::IntCounter::with_opts(Opts::new(name, help)).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new_custom(Some("mcp_edge".into()), None).expect("static registry prefix");
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "request_duration_seconds",
            "Time from request to the end of the response, by host and route",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
            300.0, 3600.0,
        ]),
        &["host", "route"],
    )
    .expect("static metric definition");
    r.register(Box::new(duration.clone()))
        .expect("metric registered once");
    let mcp_duration = HistogramVec::new(
        HistogramOpts::new(
            "mcp_call_duration_seconds",
            "Time from a JSON-RPC call's request to its response message (not the end of a stream)",
        )
        .buckets(vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]),
        &["host", "route", "method", "tool"],
    )
    .expect("static metric definition");
    r.register(Box::new(mcp_duration.clone()))
        .expect("metric registered once");
    let stream_duration = HistogramVec::new(
        HistogramOpts::new(
            "stream_duration_seconds",
            "How long text/event-stream responses stayed open, by host and route",
        )
        .buckets(vec![
            1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0,
        ]),
        &["host", "route"],
    )
    .expect("static metric definition");
    r.register(Box::new(stream_duration.clone()))
        .expect("metric registered once");
    let connections_open = one_gauge(
        &r,
        "connections_open",
        "Client connections open now, both listeners",
    );
    let upstream_connections_in_use = one_gauge(
        &r,
        "upstream_connections_in_use",
        "Upstream connections requests hold now (idle pooled ones not counted)",
    );
    let upstream_stray_bytes = one_counter(
        &r,
        "upstream_stray_bytes_total",
        "Idle upstream connections closed because the replica wrote bytes nobody asked for",
    );
    Metrics {
        requests: counter(
            &r,
            "requests_total",
            "Requests by host, route and status class",
            &["host", "route", "status"],
        ),
        duration,
        open_streams: int_gauge(
            &r,
            "open_streams",
            "Open text/event-stream responses, by host",
            &["host"],
        ),
        upstream_errors: counter(
            &r,
            "upstream_errors_total",
            "Failures talking to an upstream, by host, route and reason",
            &["host", "route", "reason"],
        ),
        tls_handshakes: counter(
            &r,
            "tls_handshakes_total",
            "Completed TLS handshakes by host",
            &["host"],
        ),
        tls_handshake_failures: counter(
            &r,
            "tls_handshake_failures_total",
            "TLS handshakes refused for want of a certificate (no_sni, unknown_name; acme_tls_unknown: an acme-tls/1 validation with no challenge pending)",
            &["reason"],
        ),
        cert_not_after: gauge(
            &r,
            "certificate_not_after_seconds",
            "Expiry (notAfter, Unix seconds) of the certificate served for a host",
            &["host"],
        ),
        reloads: counter(
            &r,
            "config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        ),
        session_rejected: counter(
            &r,
            "session_rejected_total",
            "Requests refused because their MCP session id was forged, tampered or stale",
            &["host", "route"],
        ),
        acme_orders: counter(
            &r,
            "acme_orders_total",
            "ACME orders by host and result (ok, error; refused: not placed, acme.order_limit reached)",
            &["host", "result"],
        ),
        acme_adopted: counter(
            &r,
            "acme_certificates_adopted_total",
            "Certificates another replica ordered, installed from shared storage, by host",
            &["host"],
        ),
        storage_available: {
            let g = IntGauge::with_opts(Opts::new(
                "storage_available",
                "1 while the storage answers, 0 after an operation found it unreachable",
            ))
            .expect("static metric definition");
            r.register(Box::new(g.clone())).expect("metric registered once");
            g.set(1);
            g
        },
        cert_next_renewal: gauge(
            &r,
            "certificate_next_renewal_seconds",
            "When the certificate of an ACME host is next renewed (Unix seconds)",
            &["host"],
        ),
        acme_next_check: gauge(
            &r,
            "acme_next_check_seconds",
            "When the ACME manager next looks at a host: its renewal window or an order (Unix seconds)",
            &["host"],
        ),
        acme_renewal_window: gauge(
            &r,
            "acme_renewal_window_seconds",
            "The CA's suggested renewal window (ARI) of a host's certificate, edge start or end (Unix seconds)",
            &["host", "edge"],
        ),
        acme_certificate_info: int_gauge(
            &r,
            "acme_certificate_info",
            "1 per ACME host, labelled with its challenge, the CA that issued (or orders) its certificate and the profile",
            &["host", "challenge", "ca", "profile"],
        ),
        acme_failures: int_gauge(
            &r,
            "acme_consecutive_failures",
            "Failed ACME orders in a row, by host",
            &["host"],
        ),
        replica_up: int_gauge(
            &r,
            "upstream_replica_up",
            "1 while a replica takes new sessions, 0 while it is out after a failed connection or probe",
            &["host", "route", "replica"],
        ),
        connections_open,
        upstream_connections_in_use,
        upstream_stray_bytes,
        connections_refused: counter(
            &r,
            "connections_refused_total",
            "Client connections closed before their handshake by a cap, by reason",
            &["reason"],
        ),
        auth_results: counter(
            &r,
            "auth_results_total",
            "Credential checks by host, route and result (ok, or the reason of the refusal)",
            &["host", "route", "result"],
        ),
        rate_limited: counter(
            &r,
            "rate_limited_total",
            "Requests refused by a rate limit, by host, route and limit (default or a tool name)",
            &["host", "route", "limit"],
        ),
        mcp_calls: counter(
            &r,
            "mcp_calls_total",
            "JSON-RPC calls by host, route, method, tool and outcome (ok, tool_error, jsonrpc_error, http_error, cancelled)",
            &["host", "route", "method", "tool", "outcome", "error"],
        ),
        mcp_duration,
        mcp_versions: counter(
            &r,
            "mcp_protocol_version_requests_total",
            "Requests by the MCP-Protocol-Version they declare",
            &["host", "version"],
        ),
        mcp_unparsed: counter(
            &r,
            "mcp_unparsed_total",
            "MCP request bodies not read for their calls, by reason",
            &["host", "route", "reason"],
        ),
        stream_duration,
        health_probes: counter(
            &r,
            "health_probes_total",
            "Active health probes of upstream replicas, by host, route and result",
            &["host", "route", "result"],
        ),
        audit_records: counter(
            &r,
            "audit_records_total",
            "Audit records written, by sink",
            &["sink"],
        ),
        audit_dropped: counter(
            &r,
            "audit_dropped_total",
            "Audit records lost, by reason (queue_full, write_error)",
            &["reason"],
        ),
        refused: counter(
            &r,
            "requests_refused_total",
            "Requests refused at the edge before reaching an upstream, by host and reason",
            &["host", "reason"],
        ),
        registry: r,
    }
});

pub fn get() -> &'static Metrics {
    &METRICS
}

/// The Prometheus text exposition of every metric.
pub fn render() -> Vec<u8> {
    // pingora refuses these before any hook of ours runs, and counts them: a request header
    // over the limits (431), and an HTTP/2 stream refused while its connection has as many
    // requests running as it may (pingora-core patch 18). The counts are carried over here.
    refused_by_pingora(
        "header_too_large",
        pingora::protocols::http::v1::server::headers_too_large_total(),
    );
    refused_by_pingora(
        "h2_sessions",
        pingora::protocols::http::v2::server::sessions_refused_total(),
    );
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    out
}

/// `requests_refused_total{host="_unknown", reason}` brought up to pingora's own count `total`.
fn refused_by_pingora(reason: &str, total: u64) {
    let series = METRICS.refused.with_label_values(&[UNKNOWN_HOST, reason]);
    series.inc_by(total.saturating_sub(series.get()));
}

/// `2xx`, `4xx`...; `0` when no response was sent.
pub fn status_class(code: u16) -> &'static str {
    STATUS_CLASSES[status_index(code)]
}

/// Every value of the `status` label, in [`status_index`] order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// The index of `code`'s class in [`STATUS_CLASSES`].
pub fn status_index(code: u16) -> usize {
    match code {
        100..=599 => usize::from(code / 100) - 1,
        _ => 5,
    }
}

/// A route's per-request series, resolved once when the route table is built: a request
/// counts without hashing its labels.
pub struct RouteSeries {
    /// `requests_total` by status class, in [`STATUS_CLASSES`] order.
    pub requests: [prometheus::IntCounter; 6],
    pub duration: prometheus::Histogram,
}

impl RouteSeries {
    pub fn new(host: &str, route: &str) -> Self {
        let m = get();
        Self {
            requests: STATUS_CLASSES.map(|c| m.requests.with_label_values(&[host, route, c])),
            duration: m.duration.with_label_values(&[host, route]),
        }
    }
}

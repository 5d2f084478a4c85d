//! The state one request carries through the phases.

use std::sync::Arc;
use std::time::Instant;

use http::header::HeaderName;

use crate::access::lists::ListFilter;
use crate::access::policy::Verdict;
use crate::auth::Identity;
use crate::limits::Budget;
use crate::live::Snapshot;
use crate::mcp::request::Request as McpRequest;
use crate::metrics::{self, NO_ROUTE, UNKNOWN_HOST};
use crate::observe::Exchange;
use crate::reply::Answer;
use crate::routing::{HostEntry, RouteEntry};
use crate::upstream::affinity::EndpointRewriter;
use crate::upstream::Pool;

/// Where the request goes: its host, its route (an index into the host entry's routes, the one
/// list of route data) and the route's upstream pool.
pub struct Target {
    pub entry: Arc<HostEntry>,
    pub route: Option<usize>,
}

/// The backend's own session id, restored in the upstream request.
pub enum Restore {
    Header(String),
    Query { key: &'static str, value: String },
}

/// What the request path does with the body, decided once the request head is read.
#[derive(Default)]
pub struct BodyPlan {
    /// Bytes seen so far, and the route's limit.
    pub seen: u64,
    pub limit: u64,
    /// The body is held back until complete (header validation, tool budgets); otherwise a
    /// copy is read as it passes (observation).
    pub hold: bool,
    /// `mcp.validate`, and `mcp.strict` with it.
    pub validate: Option<bool>,
    /// The caller's budgets are spent with the body's tool calls, once it is read.
    pub charge: bool,
    /// The route's policy decides the body's calls before any of it is forwarded; the route's
    /// metadata URL, for a 403 `insufficient_scope`.
    pub policy: Option<String>,
}

/// Per-request state.
pub struct Ctx {
    pub start: Instant,
    /// The live snapshot, taken once per request: a reload in between never gives one request
    /// two configurations.
    pub snap: Option<Arc<Snapshot>>,
    pub tls: bool,
    pub target: Option<Target>,
    pub pool: Option<Arc<Pool>>,
    pub replica: Option<usize>,
    pub restore: Option<Restore>,
    /// The request's Host (or authority), as sent.
    pub client_host: String,
    pub origin: Option<String>,
    pub stream_open: bool,
    pub rewriter: Option<EndpointRewriter>,
    /// The request belongs to a sealed session: it must reach its replica or none.
    pub in_session: bool,
    /// Connection attempts moved to another replica.
    pub retried: usize,
    /// Interim (1xx) responses relayed, over all attempts.
    pub interim: usize,
    /// The whole request reached the upstream of this attempt: only then is a missing answer
    /// the replica's fault (a client that never finishes its body is not).
    pub request_sent: bool,
    pub body: BodyPlan,
    /// The client's address: the peer's, or the real client's behind `trusted_proxies`.
    pub client_ip: Option<std::net::IpAddr>,
    /// Who called, when the route checks credentials.
    pub identity: Option<Identity>,
    /// Rate-limit headers for the response.
    pub rate_headers: Vec<(HeaderName, String)>,
    /// The caller's budgets; tool budgets are spent from the body's calls.
    pub budget: Option<Budget>,
    /// The one MCP model of this request (headers and body), when anything reads it.
    pub mcp: Option<McpRequest>,
    /// The MCP calls of this request and their outcomes, as observed.
    pub exchange: Option<Exchange>,
    /// Under a policy: list answers filtered for the caller on their way out.
    pub lists: Option<ListFilter>,
    /// The policy's verdict on each message of the body, in order.
    pub verdicts: Vec<Verdict>,
    /// An answer decided once the body was read (the request is then failed, and
    /// `proxy_failed` writes it).
    pub late: Option<Answer>,
}

impl Ctx {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            snap: None,
            tls: false,
            target: None,
            pool: None,
            replica: None,
            restore: None,
            client_host: String::new(),
            origin: None,
            stream_open: false,
            rewriter: None,
            in_session: false,
            retried: 0,
            interim: 0,
            request_sent: false,
            body: BodyPlan {
                limit: u64::MAX,
                ..BodyPlan::default()
            },
            client_ip: None,
            identity: None,
            rate_headers: Vec::new(),
            budget: None,
            mcp: None,
            exchange: None,
            lists: None,
            verdicts: Vec::new(),
            late: None,
        }
    }

    /// Metric label: the configured host name, or `_unknown`.
    pub fn host_label(&self) -> &str {
        self.target
            .as_ref()
            .map_or(UNKNOWN_HOST, |t| t.entry.host.name.as_str())
    }

    /// Counts a request refused at the edge for `reason`.
    pub fn count_refused(&self, reason: &str) {
        metrics::get()
            .refused
            .with_label_values(&[self.host_label(), reason])
            .inc();
    }

    /// The matched route's entry in the route table.
    pub fn route_entry(&self) -> Option<&RouteEntry> {
        let t = self.target.as_ref()?;
        t.entry.routes.get(t.route?)
    }

    /// Metric label: the matched route's prefix, or `_none`.
    pub fn route_label(&self) -> &str {
        self.route_entry().map_or(NO_ROUTE, |r| r.path.as_str())
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

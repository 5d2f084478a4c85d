//! What the request path observes of one MCP exchange: the calls of a POST (from the one MCP
//! model of the request, `mcp::request`, or its headers when the body is not JSON-RPC) and when
//! and how each was answered (a JSON response, the
//! SSE stream's event with the same id, or for the legacy transport a `message` event of the
//! session's long-lived stream). Counted once per call, with bounded labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mcp::request::{Body as RequestBody, Request};
use crate::mcp::{self, Answer, Call, Outcome, SseScanner};
use crate::metrics;
use crate::routing::NameLabels;

enum Body {
    /// A JSON response read as it passes; `None` once it outgrew `MAX_PARSED_RESPONSE`.
    Json(Option<Vec<u8>>),
    Sse(SseScanner),
    Other,
}

/// The log fields of the first call.
#[derive(Default, Clone)]
pub struct LogFields {
    pub method: String,
    pub tool: String,
    pub id: String,
    pub error: String,
}

/// A legacy-transport call waiting for its answer on the session's stream.
struct Pending {
    start: Instant,
    host: Arc<str>,
    route: Arc<str>,
    method: String,
    /// The name it called (none past `MAX_NAME_LABEL`: such a name is never a label).
    name: Option<String>,
}

/// Legacy calls waiting for their answer, by (session, id). Bounded: the oldest are dropped
/// (counted as `cancelled` never, simply forgotten) past `MAX_PENDING` or `PENDING_FOR`.
#[derive(Default)]
pub struct LegacyCalls(Mutex<HashMap<(String, String), Pending>>);

const MAX_PENDING: usize = 10_000;
/// The longest JSON-RPC id a legacy call waits for its answer under (longer ones are counted as
/// unanswered): the table stays small whatever ids strangers send.
const MAX_ID: usize = 128;
const PENDING_FOR: Duration = Duration::from_secs(600);

impl LegacyCalls {
    fn insert(&self, key: (String, String), p: Pending) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| p.start.elapsed() < PENDING_FOR);
            if map.len() >= MAX_PENDING {
                map.clear();
            }
        }
        if let Some(earlier) = map.get_mut(&key) {
            // Two calls with one id in one session: which one an answer is for cannot be
            // told, so neither may vouch for a name.
            earlier.name = None;
            return;
        }
        map.insert(key, p);
    }

    fn take(&self, key: &(String, String)) -> Option<Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key)
    }
}

/// Counts one call's outcome and latency.
fn record(host: &str, route: &str, method: &str, tool: &str, outcome: Outcome, took: Duration) {
    let m = metrics::get();
    m.mcp_calls
        .with_label_values(&[
            host,
            route,
            method,
            tool,
            outcome.label(),
            outcome.code_class(),
        ])
        .inc();
    m.mcp_duration
        .with_label_values(&[host, route, method, tool])
        .observe(took.as_secs_f64());
}

/// The label of `name`, called by `method`. A successful result the upstream sent in answer to
/// the call's id (`answered`) vouches for a tool or prompt name; nothing else does (an error:
/// SDK servers answer an unknown tool with `isError`; a notification or an unanswered call:
/// the upstream said nothing about the name; a resource: templates accept any URI, only lists
/// vouch for those).
fn vouched_label(
    name: &str,
    method: &str,
    outcome: Outcome,
    answered: bool,
    names: &NameLabels,
) -> String {
    if answered && outcome == Outcome::Ok && matches!(method, "tools/call" | "prompts/get") {
        names.vouch(name);
    }
    names.label(name)
}

/// The names a list answer (`tools/list`, `prompts/list`, `resources/list`) vouches for.
fn vouch_listed(method: &str, answer: &Answer, names: &NameLabels) {
    if matches!(method, "tools/list" | "prompts/list" | "resources/list") {
        for n in &answer.listed {
            names.vouch(n);
        }
    }
}

/// The session id in a legacy `endpoint` event's URL or a `/message` request's query.
fn legacy_session(url_or_query: &str) -> Option<String> {
    let query = url_or_query
        .split_once('?')
        .map_or(url_or_query, |(_, q)| q);
    crate::upstream::affinity::query_session(query).map(|(_, v)| v)
}

pub struct Exchange {
    start: Instant,
    /// The legacy session this request or stream belongs to.
    session: Option<String>,
    host: Arc<str>,
    route: Arc<str>,
    /// From the `Mcp-Method`/`Mcp-Name` headers, when the client sent them.
    header_call: Option<(String, Option<String>)>,
    calls: Vec<(Call, bool)>,
    /// Two calls share an id: which one an answer is for cannot be told, so no answer vouches.
    ambiguous: bool,
    response: Option<Body>,
    status: u16,
    pub log: LogFields,
    /// How each call ended, in body order (`None`: not known here: a legacy call answered on
    /// its session's stream).
    pub outcomes: Vec<Option<Outcome>>,
}

impl Exchange {
    /// `query`: the request's query string (a legacy `/message` names its session there).
    pub fn new(
        host: Arc<str>,
        route: Arc<str>,
        query: Option<&str>,
        method: Option<String>,
        name: Option<String>,
    ) -> Self {
        Self {
            start: Instant::now(),
            session: query.and_then(legacy_session),
            host,
            route,
            header_call: method.map(|m| (m, name)),
            calls: Vec::new(),
            ambiguous: false,
            response: None,
            status: 0,
            log: LogFields::default(),
            outcomes: Vec::new(),
        }
    }

    /// The request body is complete: its calls, read from the request's one model.
    pub fn request_body(&mut self, request: &Request) {
        let reason = match request.body() {
            Some(RequestBody::TooLarge) => "too_large",
            _ => "not_jsonrpc",
        };
        self.take_calls(request.calls(), reason);
    }

    fn take_calls(&mut self, mut calls: Vec<Call>, reason: &str) {
        if calls.is_empty() {
            match self.header_call.take() {
                // The headers still say what was called (the id is not known).
                Some((method, name)) => calls.push(Call {
                    id: None,
                    method,
                    name,
                }),
                None => {
                    metrics::get()
                        .mcp_unparsed
                        .with_label_values(&[&self.host, &self.route, reason])
                        .inc();
                }
            }
        }
        if let Some(c) = calls.first() {
            self.log.method = c.method.clone();
            self.log.tool = mcp::bounded(c.name.as_deref().unwrap_or_default()).to_string();
            self.log.id = c.id.clone().unwrap_or_default();
        }
        let mut ids: Vec<&str> = calls.iter().filter_map(|c| c.id.as_deref()).collect();
        ids.sort_unstable();
        self.ambiguous = ids.windows(2).any(|w| w[0] == w[1]);
        self.outcomes = vec![None; calls.len()];
        self.calls = calls.into_iter().map(|c| (c, false)).collect();
    }

    /// The response header: its status and what kind of body follows. Only what can answer a
    /// call is read: an SSE stream (a POST's, or a legacy session's), or the JSON answer to a
    /// request that carried calls; anything else passes unread.
    pub fn response(&mut self, status: u16, content_type: &str) {
        self.status = status;
        let ct = content_type.trim_start().to_ascii_lowercase();
        let calls = !self.calls.is_empty() || self.header_call.is_some();
        self.response = Some(if ct.starts_with("text/event-stream") {
            Body::Sse(SseScanner::default())
        } else if calls && ct.starts_with("application/json") {
            Body::Json(Some(Vec::new()))
        } else {
            Body::Other
        });
    }

    /// A chunk of the response body: outcomes are counted as their messages pass.
    pub fn response_chunk(
        &mut self,
        chunk: &[u8],
        end: bool,
        names: &NameLabels,
        legacy: &LegacyCalls,
    ) {
        let mut found = Vec::new();
        match self.response.as_mut() {
            Some(Body::Json(slot)) => match slot {
                Some(buf) if end && buf.is_empty() => {
                    // The whole body in one chunk (the common case): read in place.
                    found = mcp::parse_response(chunk);
                }
                Some(buf) if buf.len() + chunk.len() <= mcp::MAX_PARSED_RESPONSE => {
                    buf.extend_from_slice(chunk);
                    if end {
                        found = mcp::parse_response(buf);
                    }
                }
                // Too large to read: none of it is (never a spliced body).
                _ => *slot = None,
            },
            Some(Body::Sse(scanner)) => {
                for event in scanner.events(chunk) {
                    if event.name.as_deref() == Some("endpoint") {
                        self.session = legacy_session(&String::from_utf8_lossy(&event.data));
                    } else if let Some(found_one) = event.answer() {
                        found.push(found_one);
                    }
                }
            }
            _ => {}
        }
        for answer in found {
            let id = answer.id.as_str();
            if let Some(i) = self
                .calls
                .iter()
                .position(|(c, done)| !done && c.id.as_deref() == Some(id))
            {
                if !self.ambiguous {
                    vouch_listed(&self.calls[i].0.method, &answer, names);
                }
                let answered = !self.ambiguous;
                self.count(i, answer.outcome, answered, names);
            } else if let Some(session) = &self.session {
                // An answer on a legacy session's stream to a call POSTed to `/message`.
                if let Some(p) = legacy.take(&(session.clone(), answer.id.clone())) {
                    vouch_listed(&p.method, &answer, names);
                    let tool = match &p.name {
                        Some(n) => vouched_label(n, &p.method, answer.outcome, true, names),
                        None => String::new(),
                    };
                    let method = mcp::method_label(&p.method);
                    let took = p.start.elapsed();
                    record(&p.host, &p.route, method, &tool, answer.outcome, took);
                }
            }
        }
    }

    /// Counts call `i` as ended with `outcome`.
    fn count(&mut self, i: usize, outcome: Outcome, answered: bool, names: &NameLabels) {
        self.calls[i].1 = true;
        if let Some(o) = self.outcomes.get_mut(i) {
            *o = Some(outcome);
        }
        let (method, tool) = self.labels(i, outcome, answered, names);
        record(
            &self.host,
            &self.route,
            method,
            &tool,
            outcome,
            self.start.elapsed(),
        );
        if i == 0 {
            if let Outcome::JsonRpcError(code) = outcome {
                self.log.error = code.to_string();
            } else if outcome != Outcome::Ok {
                self.log.error = outcome.label().to_string();
            }
        }
    }

    /// The method and tool labels of call `i`, answered with `outcome`.
    fn labels(
        &self,
        i: usize,
        outcome: Outcome,
        answered: bool,
        names: &NameLabels,
    ) -> (&'static str, String) {
        let call = &self.calls[i].0;
        let tool = match (&call.name, mcp::has_name(&call.method)) {
            (Some(n), true) => vouched_label(n, &call.method, outcome, answered, names),
            _ => String::new(),
        };
        (mcp::method_label(&call.method), tool)
    }

    /// The exchange is over: what was not answered is counted by how it ended; a legacy call
    /// (202) waits for its answer on the session's stream.
    pub fn finish(&mut self, failed: bool, names: &NameLabels, legacy: &LegacyCalls) {
        if self.calls.is_empty() && self.header_call.is_some() {
            // A request whose body never ended.
            self.take_calls(Vec::new(), "not_jsonrpc");
        }
        for i in 0..self.calls.len() {
            if self.calls[i].1 {
                continue;
            }
            let request = self.calls[i].0.id.is_some();
            let outcome = if self.status >= 400 {
                Outcome::HttpError
            } else if self.status == 202 && request {
                self.calls[i].1 = true;
                let id = self.calls[i].0.id.as_ref().filter(|id| id.len() <= MAX_ID);
                if let (Some(session), Some(id)) = (&self.session, id) {
                    let call = &self.calls[i].0;
                    let name = call.name.as_ref().filter(|_| mcp::has_name(&call.method));
                    let pending = Pending {
                        start: self.start,
                        host: self.host.clone(),
                        route: self.route.clone(),
                        method: mcp::method_label(&call.method).to_string(),
                        name: name.filter(|n| n.len() <= mcp::MAX_NAME_LABEL).cloned(),
                    };
                    legacy.insert((session.clone(), id.clone()), pending);
                }
                continue;
            } else if !request && !failed && self.status != 0 {
                Outcome::Ok
            } else {
                Outcome::Cancelled
            };
            self.count(i, outcome, false, names);
        }
    }
}

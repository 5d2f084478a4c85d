//! Reading MCP off the wire: the model of a request (`request`: its declared headers and its
//! body's calls, parsed once), and the outcomes of its calls in a JSON response or in the SSE
//! stream that answers them. Pure parsing; the request path decides what to do with it.

mod answers;
#[cfg(test)]
mod plain_tests;
pub mod request;
mod scan;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use scan::Bail;

/// The parts of a JSON-RPC response the edge reads; the rest (results) is skipped by the parser,
/// never built.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    result: Option<WireResult>,
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "isError", default)]
    is_error: bool,
    /// The entries of a `tools/list`, `prompts/list` or `resources/list` answer.
    tools: Option<Vec<WireListed>>,
    prompts: Option<Vec<WireListed>>,
    resources: Option<Vec<WireListed>>,
}

#[derive(Deserialize)]
struct WireListed {
    name: Option<String>,
    uri: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: i64,
}

/// The messages of a body: one, or a batch.
fn wire_messages(body: &[u8]) -> Vec<Wire<'_>> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        serde_json::from_slice::<Vec<Wire<'_>>>(body).unwrap_or_default()
    } else {
        serde_json::from_slice::<Wire<'_>>(body)
            .into_iter()
            .collect()
    }
}

impl Wire<'_> {
    fn answer(&self) -> Option<Answer> {
        answer(
            self.id.map(RawValue::get),
            self.result.as_ref(),
            self.error.as_ref(),
        )
    }
}

/// What a response message says: `id` is its id's JSON text, as the upstream wrote it.
fn answer(
    id: Option<&str>,
    result: Option<&WireResult>,
    error: Option<&WireError>,
) -> Option<Answer> {
    let id = id?.to_string();
    if let Some(e) = error {
        return Some(Answer {
            id,
            outcome: Outcome::JsonRpcError(e.code),
            listed: Vec::new(),
        });
    }
    let r = result?;
    let outcome = if r.is_error {
        Outcome::ToolError
    } else {
        Outcome::Ok
    };
    let tools_or_prompts = r.tools.iter().chain(&r.prompts).flatten();
    let listed = tools_or_prompts
        .filter_map(|t| t.name.clone())
        .chain(r.resources.iter().flatten().filter_map(|t| t.uri.clone()))
        .collect();
    Some(Answer {
        id,
        outcome,
        listed,
    })
}

/// A response message: the call it answers (its id as JSON text), how, and for a list
/// (`tools/list`, `prompts/list`, `resources/list`) the names it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: String,
    pub outcome: Outcome,
    pub listed: Vec<String>,
}

/// The longest tool, prompt or resource name counted under its own metric label (MCP tool
/// names are 1 to 128 characters); a longer one is `_other`.
pub const MAX_NAME_LABEL: usize = 128;

/// `name` cut to at most `MAX_NAME_LABEL` bytes (on a character boundary), for a log line.
pub fn bounded(name: &str) -> &str {
    if name.len() <= MAX_NAME_LABEL {
        return name;
    }
    let mut end = MAX_NAME_LABEL;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Bodies larger than this are not parsed (counted as `_unparsed`); MCP messages are small.
pub const MAX_PARSED: usize = 64 * 1024;
/// JSON responses larger than this are not parsed for their outcome (a big tool result).
pub const MAX_PARSED_RESPONSE: usize = 1024 * 1024;

/// The MCP methods counted by name; anything else is `_other` (a client cannot invent series).
const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
];

/// Protocol versions counted by name; anything else is `other`.
const KNOWN_VERSIONS: &[&str] = &[
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];

/// The metric label for a method.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("_other")
}

/// The metric label for a protocol version.
pub fn version_label(version: &str) -> &'static str {
    KNOWN_VERSIONS
        .iter()
        .find(|v| **v == version)
        .copied()
        .unwrap_or("other")
}

/// Whether `method` names a tool, prompt or resource (`Mcp-Name`).
pub fn has_name(method: &str) -> bool {
    matches!(method, "tools/call" | "prompts/get" | "resources/read")
}

/// Whether `key` is another spelling of `name` to a JSON reader that matches keys regardless of
/// case: Go's `encoding/json` (Unicode simple folding, so `ſ` is `s` and the Kelvin sign `k`;
/// mcp-go and go-sdk before CVE-2026-27896 read messages with it), .NET's and Jackson's
/// case-insensitive modes (`ı` and `İ` are `i` there). Such a reader binds `"Name"` as it binds
/// `"name"`, the last one written winning, where the edge reads only `"name"`. Conservative: a
/// character folds to the lowercase of the uppercase of its lowercase (`ẞ`, `ß` and `s` are
/// one; a few more letters are one than in Go).
pub fn case_variant(key: &str, name: &str) -> bool {
    key != name && key.chars().map(fold).eq(name.chars().map(fold))
}

/// `key` as [`case_variant`] folds it: two keys are one to a case-insensitive reader when their
/// folds are equal.
pub fn folded(key: &str) -> std::borrow::Cow<'_, str> {
    if key.chars().all(|c| fold(c) == c) {
        return key.into();
    }
    key.chars().map(fold).collect::<String>().into()
}

fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let lower = c.to_lowercase().next().unwrap_or(c);
    let upper = lower.to_uppercase().next().unwrap_or(lower);
    upper.to_lowercase().next().unwrap_or(upper)
}

/// One JSON-RPC message a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The id as JSON text (`1`, `"a"`); `None` for a notification.
    pub id: Option<String>,
    pub method: String,
    /// The tool, prompt or resource it names.
    pub name: Option<String>,
}

/// A header value in the 2026-07-28 form: plain, or `=?base64?…?=` for what is not plain ASCII.
pub fn header_text(raw: &str) -> Option<String> {
    let raw = raw.trim();
    match raw
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(raw.to_string()),
    }
}

/// The JSON-RPC error code of a request whose MCP headers disagree with its body (2026-07-28).
pub const HEADER_MISMATCH: i64 = -32020;

/// The first protocol version whose requests carry `Mcp-Method`/`Mcp-Name`.
pub const VALIDATED_SINCE: &str = "2026-07-28";

/// The body of a -32020 refusal.
pub fn mismatch_body(id: &str, header: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{HEADER_MISMATCH},"message":"the {header} header does not match the request body"}}}}"#
    )
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A result with `isError: true`.
    ToolError,
    /// A JSON-RPC error, with its code.
    JsonRpcError(i64),
    /// The HTTP response was an error (4xx/5xx).
    HttpError,
    /// No answer: the client or the upstream went away first.
    Cancelled,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ToolError => "tool_error",
            Self::JsonRpcError(_) => "jsonrpc_error",
            Self::HttpError => "http_error",
            Self::Cancelled => "cancelled",
        }
    }

    /// The JSON-RPC error code class: `parse`, `invalid_request`, `method_not_found`,
    /// `invalid_params`, `internal`, `server` (-32000..-32099), `application`.
    pub fn code_class(self) -> &'static str {
        match self {
            Self::JsonRpcError(c) => match c {
                -32700 => "parse",
                -32600 => "invalid_request",
                -32601 => "method_not_found",
                -32602 => "invalid_params",
                -32603 => "internal",
                -32099..=-32000 => "server",
                _ => "application",
            },
            _ => "",
        }
    }
}

/// The outcome a response message carries, by its id (as JSON text).
pub fn outcome_of(message: &Value) -> Option<(String, Outcome)> {
    let id = message.get("id")?.to_string();
    if let Some(e) = message.get("error") {
        return Some((id, Outcome::JsonRpcError(e["code"].as_i64().unwrap_or(0))));
    }
    let result = message.get("result")?;
    let outcome = if result["isError"] == Value::Bool(true) {
        Outcome::ToolError
    } else {
        Outcome::Ok
    };
    Some((id, outcome))
}

/// The answers in a JSON response body (one message or a batch). Plain JSON is read by
/// `answers::plain`; anything else by serde_json.
pub fn parse_response(body: &[u8]) -> Vec<Answer> {
    answers::plain(body).unwrap_or_else(|Bail| answers_by_serde(body))
}

/// The reading of record: serde_json's, into `Wire`.
fn answers_by_serde(body: &[u8]) -> Vec<Answer> {
    wire_messages(body)
        .iter()
        .filter_map(Wire::answer)
        .collect()
}

/// One event of an SSE stream: its `event` name (none: `message`) and its `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: Vec<u8>,
}

impl Event {
    /// The JSON-RPC message it carries, if any.
    pub fn message(&self) -> Option<Value> {
        serde_json::from_slice(&self.data).ok()
    }

    /// The JSON-RPC response it carries, if it carries one.
    pub fn answer(&self) -> Option<Answer> {
        answers::plain_one(&self.data).unwrap_or_else(|Bail| {
            serde_json::from_slice::<Wire<'_>>(&self.data)
                .ok()?
                .answer()
        })
    }
}

/// Finds the events of an SSE stream as it passes. Keeps at most one event's worth of text (an
/// event larger than `MAX_PARSED_RESPONSE` is skipped).
#[derive(Default)]
pub struct SseScanner {
    line: Vec<u8>,
    data: Vec<u8>,
    name: Option<String>,
    skipping: bool,
}

impl SseScanner {
    /// Feeds a chunk; returns the JSON-RPC messages of the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Value> {
        self.events(chunk)
            .iter()
            .filter_map(Event::message)
            .collect()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn events(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            if b != b'\n' {
                if self.line.len() < MAX_PARSED_RESPONSE {
                    self.line.push(b);
                } else {
                    self.skipping = true;
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                // The end of an event.
                if !self.skipping && !self.data.is_empty() {
                    out.push(Event {
                        name: self.name.take(),
                        data: std::mem::take(&mut self.data),
                    });
                }
                self.data.clear();
                self.name = None;
                self.skipping = false;
            } else if let Some(rest) = line.strip_prefix(b"event:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.name = Some(String::from_utf8_lossy(rest).into_owned());
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                if self.data.len() + rest.len() <= MAX_PARSED_RESPONSE {
                    self.data.extend_from_slice(rest);
                } else {
                    self.skipping = true;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_in_another_case_is_a_variant_as_case_insensitive_readers_fold_it() {
        for (key, name) in [
            ("Name", "name"),
            ("METHOD", "method"),
            ("paramſ", "params"),
            ("\u{212A}ind", "kind"),
            ("ıd", "id"),
            ("İD", "id"),
            ("protocolversion", "protocolVersion"),
            ("ΣIGMA", "ςigma"),
            ("STRAẞE", "straße"),
        ] {
            assert!(case_variant(key, name), "{key} {name}");
        }
        for (key, name) in [
            ("name", "name"),
            ("names", "name"),
            ("nаme", "name"),
            ("argument", "arguments"),
            ("", "id"),
        ] {
            assert!(!case_variant(key, name), "{key} {name}");
        }
        assert!(matches!(folded("name"), std::borrow::Cow::Borrowed("name")));
        assert_eq!(folded("PAT\u{212A}ſ"), "patks");
    }

    #[test]
    fn the_refusal_of_a_mismatch_is_json_rpc_32020() {
        let v: Value = serde_json::from_str(&mismatch_body("5", "Mcp-Name")).unwrap();
        assert_eq!(v["error"]["code"], HEADER_MISMATCH);
        assert_eq!(v["id"], 5);
    }

    #[test]
    fn header_values_in_base64() {
        assert_eq!(
            header_text("=?base64?c2VhcmNoX2RvY3M=?=").as_deref(),
            Some("search_docs")
        );
        assert_eq!(header_text(" get_doc ").as_deref(), Some("get_doc"));
        assert_eq!(header_text("=?base64?***?="), None);
    }

    #[test]
    fn names_for_logs_are_bounded_on_a_character_boundary() {
        assert_eq!(bounded("search"), "search");
        let long = "é".repeat(100);
        assert_eq!(bounded(&long).len(), MAX_NAME_LABEL);
        assert!(bounded(&format!("a{long}")).len() <= MAX_NAME_LABEL);
    }

    #[test]
    fn outcomes_in_json_and_in_an_sse_stream_split_anywhere() {
        assert_eq!(
            parse_response(br#"{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[]}}"#),
            [Answer {
                id: "1".into(),
                outcome: Outcome::ToolError,
                listed: vec![]
            }]
        );
        let list = br#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"a","inputSchema":{}},{"name":"b"}],"nextCursor":"c"}}"#;
        assert_eq!(parse_response(list)[0].listed, ["a", "b"]);
        let resources =
            br#"{"jsonrpc":"2.0","id":2,"result":{"resources":[{"uri":"docs://x","name":"X"}]}}"#;
        assert_eq!(parse_response(resources)[0].listed, ["docs://x"]);
        let stream = b"event: message\r\nid: 9\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":4,\"error\":{\"code\":-32602,\"message\":\"x\"}}\n\n";
        for split in 0..stream.len() {
            let mut s = SseScanner::default();
            let mut got = s.feed(&stream[..split]);
            got.extend(s.feed(&stream[split..]));
            let outcomes: Vec<_> = got.iter().filter_map(outcome_of).collect();
            assert_eq!(
                outcomes,
                [("4".to_string(), Outcome::JsonRpcError(-32602))],
                "{split}"
            );
        }
        assert_eq!(Outcome::JsonRpcError(-32602).code_class(), "invalid_params");
    }
}

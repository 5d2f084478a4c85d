//! One MCP request as the edge understands it: what its headers declare (`Mcp-Method`,
//! `Mcp-Name`, `MCP-Protocol-Version`, decoded once) and what its body says (parsed once, when it
//! is complete). Header validation, tool budgets and observation all read this one model, so
//! they cannot disagree about what was called: the body is what the upstream executes, and the
//! headers are only ever checked against it, never trusted instead of it.

use http::HeaderName;
use serde_json::Value;

use super::{header_text, Call, MAX_PARSED, VALIDATED_SINCE};

mod literal;
pub(super) mod parse;
use parse::Arguments;

/// The most of a body the request path holds back to read before forwarding it (header
/// validation, tool budgets): a larger one is refused (413), since its calls could not be
/// checked. Observation alone reads a copy of up to `MAX_PARSED`.
pub const MAX_HELD: usize = 1024 * 1024;

/// A header as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Header {
    #[default]
    Absent,
    Text(String),
    /// Present, but not a value (not ASCII, or a `=?base64?…?=` that does not decode): never
    /// taken as absent.
    Undecodable,
}

impl Header {
    /// Decodes a raw header value (plain, or the 2026-07-28 `=?base64?…?=` form).
    pub fn from_raw(raw: Option<&[u8]>) -> Self {
        match raw {
            None => Self::Absent,
            Some(bytes) => std::str::from_utf8(bytes)
                .ok()
                .and_then(header_text)
                .map_or(Self::Undecodable, Self::Text),
        }
    }

    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t),
            _ => None,
        }
    }

    fn is_present(&self) -> bool {
        *self != Self::Absent
    }
}

/// What the MCP headers of a request declare.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub method: Header,
    pub name: Header,
    pub version: Header,
}

/// The MCP request headers, as names parsed once (a `&str` name is parsed on every lookup).
const METHOD_HEADER: HeaderName = HeaderName::from_static("mcp-method");
const NAME_HEADER: HeaderName = HeaderName::from_static("mcp-name");
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("mcp-protocol-version");

impl Declared {
    /// From a request's headers (`get` returns a header's raw bytes).
    pub fn from_headers<'a>(get: impl Fn(&HeaderName) -> Option<&'a [u8]>) -> Self {
        Self {
            method: Header::from_raw(get(&METHOD_HEADER)),
            name: Header::from_raw(get(&NAME_HEADER)),
            version: Header::from_raw(get(&VERSION_HEADER)),
        }
    }
}

/// One JSON-RPC message of a request body: what the edge reads of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The id as JSON text (`1`, `"a"`); `None` for a notification.
    pub id: Option<String>,
    pub method: Option<String>,
    /// The tool or prompt (`params.name`) or resource (`params.uri`) it names.
    pub name: Option<String>,
    /// `params.protocolVersion` of an `initialize`.
    pub asked_version: Option<String>,
    /// `params.arguments` of a `tools/call` or `prompts/get`, when an object.
    pub arguments: Option<serde_json::Map<String, Value>>,
    /// A key of `arguments` is written twice (or in two spellings of one case-insensitive key),
    /// there or in an object inside: `arguments` holds the last value, but Go's reader keeps the
    /// first where the last is `null`, and merges two objects. Which value the server runs
    /// with cannot be told (the policy's conditions say so).
    pub repeated_argument: bool,
}

/// What the body turned out to be.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Body {
    /// JSON-RPC: one message (`batch: false`) or a batch.
    Messages { batch: bool, messages: Vec<Message> },
    /// Not JSON-RPC (or empty): the upstream answers that.
    #[default]
    NotJsonRpc,
    /// Over `MAX_PARSED`: not read.
    TooLarge,
}

#[cfg(test)]
thread_local! {
    /// Bodies parsed on this thread (tests prove a body is parsed at most once).
    pub static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses a complete body. Private: only [`Request::finish`] calls it, once.
fn parse(body: &[u8], arguments: Arguments) -> Body {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    // A UTF-8 byte-order mark, which Python's json.loads accepts on bytes.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    parse::read(body, arguments)
}

/// Which header disagrees with the body, and the id of the message it concerns (JSON text,
/// `null` when there is none): answered with JSON-RPC error -32020.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub id: String,
    pub header: &'static str,
}

/// A held body over `MAX_HELD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// One request's MCP model. The body is copied (up to `MAX_PARSED`) as it passes, or held by the
/// request path in the same buffer, and parsed once when it ends.
#[derive(Debug)]
pub struct Request {
    pub declared: Declared,
    buf: Vec<u8>,
    too_large: bool,
    body: Option<Body>,
    arguments: Arguments,
}

impl Default for Request {
    fn default() -> Self {
        Self::new(Declared::default())
    }
}

impl Request {
    /// A request whose calls' arguments are built ([`Message::arguments`]).
    pub fn new(declared: Declared) -> Self {
        Self {
            declared,
            buf: Vec::new(),
            too_large: false,
            body: None,
            arguments: Arguments::Built,
        }
    }

    /// The same, with calls' arguments left unbuilt ([`Message::arguments`] is `None`) unless
    /// `built`: only a policy and the audit log read them.
    #[must_use]
    pub fn with_arguments(mut self, built: bool) -> Self {
        self.arguments = if built {
            Arguments::Built
        } else {
            Arguments::Checked
        };
        self
    }

    /// A chunk of the body, kept while the whole stays within `MAX_PARSED`.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.too_large {
            return;
        }
        if self.buf.len() + chunk.len() > MAX_PARSED {
            self.too_large = true;
            self.buf = Vec::new();
        } else {
            self.buf.extend_from_slice(chunk);
        }
    }

    /// A chunk of a body the request path holds back until it is complete. `Err`: the body is
    /// over `MAX_HELD`; nothing more is kept.
    pub fn hold(&mut self, chunk: &[u8]) -> Result<(), TooLarge> {
        if !self.too_large && self.buf.len() + chunk.len() <= MAX_HELD {
            self.buf.extend_from_slice(chunk);
            return Ok(());
        }
        self.too_large = true;
        self.buf = Vec::new();
        Err(TooLarge)
    }

    /// Whether no byte of a body was seen.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && !self.too_large
    }

    /// Whether the body grew past `MAX_PARSED` (it will not be read).
    pub fn too_large(&self) -> bool {
        self.too_large
    }

    /// The complete held body, handed back after [`Request::finish`] read it.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The body is complete: parsed now, once; later calls return the same model.
    pub fn finish(&mut self) -> &Body {
        if self.body.is_none() {
            self.body = Some(if self.too_large {
                Body::TooLarge
            } else {
                parse(&self.buf, self.arguments)
            });
        }
        self.body.as_ref().unwrap_or(&Body::TooLarge)
    }

    /// The body, once finished.
    pub fn body(&self) -> Option<&Body> {
        self.body.as_ref()
    }

    /// The messages of the body, once finished (none unless it is JSON-RPC).
    pub fn messages(&self) -> &[Message] {
        match &self.body {
            Some(Body::Messages { messages, .. }) => messages,
            _ => &[],
        }
    }

    /// Every tool the body calls, once per `tools/call` (a batch may call one many times).
    pub fn tools_called(&self) -> impl Iterator<Item = &str> {
        self.messages()
            .iter()
            .filter(|m| m.method.as_deref() == Some("tools/call"))
            .filter_map(|m| m.name.as_deref())
    }

    /// The calls of the body, for observation.
    pub fn calls(&self) -> Vec<Call> {
        self.messages()
            .iter()
            .filter_map(|m| {
                Some(Call {
                    id: m.id.clone(),
                    method: m.method.clone()?,
                    name: m.name.clone(),
                })
            })
            .collect()
    }

    /// Whether the headers agree with the finished body (2026-07-28 header validation); `strict`
    /// also refuses an `initialize` asking for a version that predates it. A body that is not
    /// JSON-RPC, or too large to read, is the upstream's to answer.
    pub fn validate(&self, strict: bool) -> Result<(), Mismatch> {
        let d = &self.declared;
        let mismatch = |id: &Option<String>, header| Mismatch {
            id: id.clone().unwrap_or_else(|| "null".into()),
            header,
        };
        let Some(Body::Messages { batch, messages }) = &self.body else {
            return Ok(());
        };
        if *batch {
            // A batch cannot match one set of headers.
            return match d.method.is_present() || d.name.is_present() {
                true => Err(mismatch(&None, "Mcp-Method")),
                false => Ok(()),
            };
        }
        let Some(m) = messages.first() else {
            return Ok(());
        };
        let Some(method) = m.method.as_deref() else {
            return Ok(());
        };
        let agrees = |h: &Header, v: Option<&str>| match h {
            Header::Absent => true,
            Header::Text(t) => v == Some(t.as_str()),
            Header::Undecodable => false,
        };
        if !agrees(&d.method, Some(method)) {
            return Err(mismatch(&m.id, "Mcp-Method"));
        }
        if !agrees(&d.name, m.name.as_deref()) {
            return Err(mismatch(&m.id, "Mcp-Name"));
        }
        if method == "initialize" {
            let asked = m.asked_version.as_deref();
            if d.version == Header::Undecodable
                || (asked.is_some() && d.version.is_present() && d.version.text() != asked)
            {
                return Err(mismatch(&m.id, "MCP-Protocol-Version"));
            }
            if strict && asked.is_some_and(|a| a < VALIDATED_SINCE) {
                return Err(mismatch(&m.id, "MCP-Protocol-Version"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(method: Option<&str>, name: Option<&str>) -> Declared {
        Declared {
            method: Header::from_raw(method.map(str::as_bytes)),
            name: Header::from_raw(name.map(str::as_bytes)),
            version: Header::Absent,
        }
    }

    fn finished(d: Declared, body: &[u8]) -> Request {
        let mut r = Request::new(d);
        for piece in body.chunks(7) {
            r.feed(piece);
        }
        r.finish();
        r
    }

    const CALL: &[u8] =
        br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"search_docs"}}"#;

    #[test]
    fn the_body_is_parsed_once_whoever_reads_it() {
        PARSES.with(|p| p.set(0));
        let mut r = finished(declared(Some("tools/call"), Some("search_docs")), CALL);
        r.finish();
        assert!(r.validate(false).is_ok());
        assert_eq!(r.tools_called().collect::<Vec<_>>(), ["search_docs"]);
        assert_eq!(r.calls().len(), 1);
        r.finish();
        assert_eq!(PARSES.with(|p| p.get()), 1);
    }

    #[test]
    fn arguments_are_built_only_when_asked_and_the_rest_reads_the_same() {
        let bodies: [&[u8]; 3] = [
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"tls"}}}"#,
            // Left to serde_json either way (the escape where a string would be built).
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"\u00e9"}}}"#,
            // A number serde_json cannot build: not JSON-RPC the edge can read, either way.
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"search_docs","arguments":{"n":1e400}}}"#,
        ];
        for body in bodies {
            let built = finished(Declared::default(), body);
            let mut r = Request::new(Declared::default()).with_arguments(false);
            r.feed(body);
            r.finish();
            assert_eq!(
                r.tools_called().collect::<Vec<_>>(),
                built.tools_called().collect::<Vec<_>>()
            );
            assert_eq!(r.messages().len(), built.messages().len());
            for (m, b) in r.messages().iter().zip(built.messages()) {
                assert_eq!(m.arguments, None);
                assert_eq!((&m.id, &m.method, &m.name), (&b.id, &b.method, &b.name));
            }
        }
        let built = finished(Declared::default(), bodies[0]);
        let query = built.messages()[0]
            .arguments
            .as_ref()
            .map(|a| a["query"].clone());
        assert_eq!(query, Some(Value::from("tls")));
        let unreadable = finished(Declared::default(), bodies[2]);
        assert_eq!(unreadable.body(), Some(&Body::NotJsonRpc));
    }

    #[test]
    fn headers_that_disagree_with_the_body_are_named() {
        let check = |m, n| finished(declared(m, n), CALL).validate(false);
        assert!(check(Some("tools/call"), Some("search_docs")).is_ok());
        assert!(check(Some("tools/call"), Some("=?base64?c2VhcmNoX2RvY3M=?=")).is_ok());
        assert!(check(None, None).is_ok());
        let named = |header| {
            Err(Mismatch {
                id: "5".into(),
                header,
            })
        };
        assert_eq!(check(Some("tools/list"), None), named("Mcp-Method"));
        assert_eq!(check(Some("ping"), None), named("Mcp-Method"));
        assert_eq!(
            check(Some("tools/call"), Some("get_doc")),
            named("Mcp-Name")
        );
        // An undecodable name is not "absent": it cannot agree with any body.
        assert_eq!(
            check(Some("tools/call"), Some("=?base64?***?=")),
            named("Mcp-Name")
        );
        let r = finished(declared(None, None), b"\xff\xfe");
        assert_eq!(r.body(), Some(&Body::NotJsonRpc));
        assert!(r.validate(false).is_ok());
    }

    #[test]
    fn every_tool_call_of_a_batch_is_seen() {
        let batch: String = format!(
            "[{}]",
            (0..50)
                .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"expensive"}}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = finished(declared(None, None), batch.as_bytes());
        assert_eq!(r.tools_called().count(), 50);
        // One header pair cannot describe a batch.
        let r = finished(
            declared(Some("tools/call"), Some("expensive")),
            batch.as_bytes(),
        );
        assert_eq!(r.validate(false).unwrap_err().header, "Mcp-Method");
    }

    #[test]
    fn a_held_body_is_read_up_to_its_cap_and_refused_past_it() {
        let mut r = Request::new(Declared::default());
        let pad = " ".repeat(MAX_PARSED);
        assert_eq!(r.hold(pad.as_bytes()), Ok(()));
        assert_eq!(
            r.hold(CALL),
            Ok(()),
            "held bodies are read past the copy cap"
        );
        r.finish();
        assert_eq!(r.tools_called().collect::<Vec<_>>(), ["search_docs"]);
        let mut r = Request::new(Declared::default());
        assert_eq!(r.hold(&vec![b' '; MAX_HELD]), Ok(()));
        assert_eq!(r.hold(b"{}"), Err(TooLarge));
        assert_eq!(r.finish(), &Body::TooLarge);
        // Copied rather than held: the copy stops at `MAX_PARSED`.
        let mut r = Request::new(Declared::default());
        r.feed(&vec![b' '; MAX_PARSED]);
        assert!(!r.too_large());
        r.feed(b" ");
        assert!(r.too_large());
        assert_eq!(r.finish(), &Body::TooLarge);
    }

    #[test]
    fn the_body_is_read_as_leniently_as_the_upstream_reads_it() {
        // A mistyped sibling, a byte-order mark, a batch's odd member: the upstream runs
        // `expensive`, so the edge must see it.
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"expensive","uri":0}}"#[..],
            b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"expensive\"}}",
            br#"[7,{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"expensive"}}]"#,
        ] {
            let r = finished(Declared::default(), body);
            assert_eq!(
                r.tools_called().collect::<Vec<_>>(),
                ["expensive"],
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A read key written twice: the last to Python and Node, the first to Go where the
        // last is `null`. No reading is safe: the body is unreadable, refused where held.
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"cheap","name":"expensive"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"expensive","name":null}}"#,
        ] {
            let mut r = Request::new(Declared::default());
            assert_eq!(r.hold(body), Ok(()));
            assert_eq!(r.finish(), &Body::NotJsonRpc);
        }
    }

    #[test]
    fn initialize_versions_are_checked_against_the_header() {
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#;
        let with_version = |v: &str| Declared {
            version: Header::from_raw(Some(v.as_bytes())),
            ..Declared::default()
        };
        assert!(finished(with_version("2025-06-18"), init)
            .validate(false)
            .is_ok());
        assert_eq!(
            finished(with_version("2026-07-28"), init)
                .validate(false)
                .unwrap_err()
                .header,
            "MCP-Protocol-Version"
        );
        assert!(finished(Declared::default(), init).validate(true).is_err());
    }
}

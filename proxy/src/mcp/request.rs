//! One MCP request as the edge understands it: what its headers declare (`Mcp-Method`,
//! `Mcp-Name`, `MCP-Protocol-Version`, decoded once) and what its body says (parsed once, when it
//! is complete). Header validation, tool budgets and observation all read this one model, so
//! they cannot disagree about what was called: the body is what the upstream executes, and the
//! headers are only ever checked against it, never trusted instead of it.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{header_text, Call, MAX_PARSED, VALIDATED_SINCE};

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

impl Declared {
    /// From a request's headers (`get` returns a header's raw bytes).
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Self {
        Self {
            method: Header::from_raw(get("mcp-method")),
            name: Header::from_raw(get("mcp-name")),
            version: Header::from_raw(get("mcp-protocol-version")),
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

/// The top-level keys of a message the edge reads; the rest is skipped by the parser, never
/// built.
enum Key {
    Id,
    Method,
    Params,
    Other,
}

/// The keys of `params` the edge reads.
enum ParamKey {
    Name,
    Uri,
    ProtocolVersion,
    Arguments,
    Other,
}

/// Keys read by name, whatever their escapes (serde_json unescapes them first).
macro_rules! key_visitor {
    ($ty:ident { $($text:literal => $variant:ident),* }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("a key")
                    }
                    fn visit_str<E: de::Error>(self, k: &str) -> Result<$ty, E> {
                        Ok(match k {
                            $($text => $ty::$variant,)*
                            _ => $ty::Other,
                        })
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
key_visitor!(Key { "id" => Id, "method" => Method, "params" => Params });
key_visitor!(ParamKey {
    "name" => Name, "uri" => Uri, "protocolVersion" => ProtocolVersion, "arguments" => Arguments
});

/// A value that is not an object, read and dropped: `Default` (an object's visitor is the
/// caller's `visit_map`).
macro_rules! not_an_object {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// A string value, or `None` for a value of another type (read and dropped).
fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// What a message's `params` says, when it is an object.
#[derive(Default)]
struct Params {
    name: Option<String>,
    uri: Option<String>,
    protocol_version: Option<String>,
    arguments: Option<Value>,
}

/// `params`: `Some` for an object, `None` for any other value.
struct MaybeParams(Option<Params>);

impl<'de> Deserialize<'de> for MaybeParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Option<Params>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("params")
            }
            not_an_object!();
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // A repeated key's last value wins, mistyped or not.
                let mut p = Params::default();
                while let Some(key) = map.next_key::<ParamKey>()? {
                    match key {
                        ParamKey::Name => p.name = text(map.next_value()?),
                        ParamKey::Uri => p.uri = text(map.next_value()?),
                        ParamKey::ProtocolVersion => p.protocol_version = text(map.next_value()?),
                        ParamKey::Arguments => p.arguments = Some(map.next_value()?),
                        ParamKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Some(p))
            }
        }
        d.deserialize_any(V).map(MaybeParams)
    }
}

/// A message as the upstream will read it. Parsed leniently, the way the SDKs' JSON readers
/// do (a repeated key's last value wins, unknown and mistyped siblings are ignored): a body the
/// upstream would run must never be one the edge cannot read. What the edge reads (id, method,
/// params' name, uri, protocolVersion, arguments) is parsed whole; what it skips is only
/// scanned, so a lone surrogate, a number out of range or nesting past 128 there does not make
/// the body unreadable (a whole `Value` parse refused those; Python's reader runs the first
/// and the last). `None`: not an object.
struct MaybeMessage(Option<Message>);

impl<'de> Deserialize<'de> for MaybeMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MessageVisitor).map(MaybeMessage)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Option<Message>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    not_an_object!();
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut method, mut params) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => id = Some(map.next_value::<Value>()?.to_string()),
                Key::Method => method = text(map.next_value()?),
                Key::Params => params = map.next_value::<MaybeParams>()?.0,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(model(id, method, params.unwrap_or_default())))
    }
}

/// What the edge reads of a message, by its method.
fn model(id: Option<String>, method: Option<String>, params: Params) -> Message {
    let (name, asked_version, arguments) = match method.as_deref() {
        Some("tools/call" | "prompts/get") => {
            let arguments = match params.arguments {
                Some(Value::Object(map)) => Some(map),
                _ => None,
            };
            (params.name, None, arguments)
        }
        Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
            (params.uri, None, None)
        }
        Some("initialize") => (None, params.protocol_version, None),
        _ => (None, None, None),
    };
    Message {
        id,
        method,
        name,
        asked_version,
        arguments,
    }
}

/// A body: one message, a batch of them, or anything else (`Body::NotJsonRpc`).
struct Parsed(Body);

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC body")
            }
            not_an_object!();
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                // A batch's members that are no objects are the upstream's to answer.
                let mut messages = Vec::new();
                while let Some(m) = seq.next_element::<MaybeMessage>()? {
                    messages.extend(m.0);
                }
                Ok(Body::Messages {
                    batch: true,
                    messages,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
                let message = MessageVisitor.visit_map(map)?;
                Ok(Body::Messages {
                    batch: false,
                    messages: message.into_iter().collect(),
                })
            }
        }
        d.deserialize_any(V).map(Parsed)
    }
}

#[cfg(test)]
thread_local! {
    /// Bodies parsed on this thread (tests prove a body is parsed at most once).
    pub static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Parses a complete body. Private: only [`Request::finish`] calls it, once.
fn parse(body: &[u8]) -> Body {
    #[cfg(test)]
    PARSES.with(|p| p.set(p.get() + 1));
    // A UTF-8 byte-order mark, which Python's json.loads accepts on bytes.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice::<Parsed>(body).map_or(Body::NotJsonRpc, |p| p.0)
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
#[derive(Debug, Default)]
pub struct Request {
    pub declared: Declared,
    buf: Vec<u8>,
    too_large: bool,
    body: Option<Body>,
}

impl Request {
    pub fn new(declared: Declared) -> Self {
        Self {
            declared,
            ..Self::default()
        }
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
                parse(&self.buf)
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
        // A repeated key (the last wins, as in Python and Node), a mistyped sibling, a
        // byte-order mark: the upstream runs `expensive`, so the edge must see it.
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"cheap","name":"expensive"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"expensive","uri":0}}"#,
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
    }

    /// The reading the typed parser replaced (a whole `serde_json::Value`, then its keys): the
    /// reference the parser must agree with.
    fn by_value(body: &[u8]) -> Body {
        fn model(mut v: Value) -> Message {
            let text = |v: &Value| v.as_str().map(str::to_string);
            let method = v.get("method").and_then(Value::as_str).map(str::to_string);
            let params = v.get("params");
            let param = |key: &str| params.and_then(|p| p.get(key)).and_then(text);
            let name = match method.as_deref() {
                Some("tools/call" | "prompts/get") => param("name"),
                Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => {
                    param("uri")
                }
                _ => None,
            };
            let asked_version = match method.as_deref() {
                Some("initialize") => param("protocolVersion"),
                _ => None,
            };
            let id = v.get("id").map(Value::to_string);
            let arguments = match method.as_deref() {
                Some("tools/call" | "prompts/get") => v
                    .get_mut("params")
                    .and_then(|p| p.get_mut("arguments"))
                    .map(Value::take)
                    .and_then(|a| match a {
                        Value::Object(map) => Some(map),
                        _ => None,
                    }),
                _ => None,
            };
            Message {
                id,
                method,
                name,
                asked_version,
                arguments,
            }
        }
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => Body::Messages {
                batch: true,
                messages: items
                    .into_iter()
                    .filter(Value::is_object)
                    .map(model)
                    .collect(),
            },
            Ok(v) if v.is_object() => Body::Messages {
                batch: false,
                messages: vec![model(v)],
            },
            _ => Body::NotJsonRpc,
        }
    }

    #[test]
    fn the_typed_parser_reads_what_a_whole_json_value_reads() {
        let bodies: &[&[u8]] = &[
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"tls","n":[1,{"a":null}]}}}"#,
            br#"{"id":"a\u0062","method":"tools/call","params":{"name":"x","arguments":[1]}}"#,
            br#"{"id":1.50,"id":{"k":2},"method":"tools/call","method":7,"params":{"name":"x"}}"#,
            br#"{"method":"tools/call","params":{"name":"a"},"params":{"arguments":{"b":1}}}"#,
            br#"{"method":"tools/call","params":[{"name":"a"}]}"#,
            br#"{"method":"tools/call","params":"name"}"#,
            br#"{"method":"resources/read","params":{"uri":"file:///a","name":"n"}}"#,
            br#"{"method":"initialize","params":{"protocolVersion":"2026-07-28","protocolVersion":1}}"#,
            br#"{"me\u0074hod":"prompts/get","params":{"n\u0061me":"p","arguments":{}}}"#,
            br#"{"id":null,"method":null,"params":null}"#,
            br#"[]"#,
            br#"[1,"a",null,[{"method":"x"}],{"id":2,"method":"tools/list"},{}]"#,
            br#"  {"id":1}  "#,
            br#"{"id":1} x"#,
            br#"{"id":1"#,
            br#""tools/call""#,
            br#"null"#,
            b"",
            b"\xEF\xBB\xBF[{\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\"}}]",
            br#"{"method":"tools/call","params":{"name":"t","other":{"deep":[[[{"x":true}]]]}},"extra":[1,2]}"#,
        ];
        for body in bodies {
            assert_eq!(
                parse(body),
                by_value(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Where the two differ, on purpose: what the edge skips is only scanned. A lone
        // surrogate in a field it does not read (Python's reader runs such a body) no longer
        // makes the body unreadable; the call is read, and a policy decides it.
        let body = br#"{"id":1,"method":"tools/call","params":{"name":"t"},"x":"\ud800"}"#;
        assert_eq!(by_value(body), Body::NotJsonRpc);
        let Body::Messages { messages, .. } = parse(body) else {
            panic!("unread");
        };
        assert_eq!(messages[0].name.as_deref(), Some("t"));
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

//! The request body read as JSON-RPC messages: a typed lenient parser that builds only what the
//! edge reads (the id, the method, and params' name, uri, protocolVersion and arguments) and
//! skips the rest, rather than a whole `serde_json::Value`. A plain body (nearly every one) is
//! read first by `scan` in one pass, to the same result; what that cannot vouch for, serde_json
//! reads.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::super::scan::{self, Bail, Cursor};
use super::literal::Literal;
use super::{Body, Message};

/// A body (its byte-order mark already stripped): its messages, or `Body::NotJsonRpc`. Plain
/// JSON is read by `scan`; anything else by serde_json. Calls' `arguments` are built only when
/// `arguments` is [`Arguments::Built`]; the body reads the same either way otherwise.
pub(in crate::mcp) fn read(body: &[u8], arguments: Arguments) -> Body {
    plain(body, arguments).unwrap_or_else(|Bail| {
        let mut read = by_serde(body);
        if arguments == Arguments::Checked {
            drop_arguments(&mut read);
        }
        read
    })
}

/// Whether the calls' `arguments` are built (a policy or the audit log reads them) or only
/// checked as they would be built, which costs a pass over their bytes and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::mcp) enum Arguments {
    Built,
    Checked,
}

/// The body as read with [`Arguments::Checked`].
pub(in crate::mcp) fn drop_arguments(body: &mut Body) {
    if let Body::Messages { messages, .. } = body {
        for m in messages {
            m.arguments = None;
            m.repeated_argument = false;
        }
    }
}

/// The reading of record: serde_json's, through the typed visitors below.
pub(in crate::mcp) fn by_serde(body: &[u8]) -> Body {
    serde_json::from_slice::<Parsed>(body).map_or(Body::NotJsonRpc, |p| p.0)
}

/// The same reading of a plain body, in one pass; `Bail` for anything outside the plain subset.
pub(in crate::mcp) fn plain(body: &[u8], arguments: Arguments) -> scan::Read<Body> {
    let mut c = Cursor::new(body).ok_or(Bail)?;
    let body = match c.peek() {
        Ok(b'{') => Body::Messages {
            batch: false,
            messages: vec![plain_message(&mut c, arguments)?],
        },
        Ok(b'[') => {
            let mut messages = Vec::new();
            c.array(|c| match c.peek()? {
                b'{' => plain_message(c, arguments).map(|m| messages.push(m)),
                // A member that is no object is the upstream's to answer, as with serde_json.
                _ => plain_scalar(c),
            })?;
            Body::Messages {
                batch: true,
                messages,
            }
        }
        // Not an object or a list, valid or not: serde_json reads no messages in it either.
        _ => return Ok(Body::NotJsonRpc),
    };
    c.end()?;
    Ok(body)
}

/// A value that is no object, where serde_json's visitors read it and drop it (a batch member,
/// `params`): a list is only skipped there; a string or number is parsed, so only the plain
/// ones are read here.
fn plain_scalar(c: &mut Cursor) -> scan::Read<()> {
    match c.peek()? {
        b'[' => c.skip(),
        b'"' => c.plain_str().map(drop),
        b't' | b'f' | b'n' => c.literal().map(drop),
        _ => c.small_int().map(drop),
    }
}

/// A string where the edge reads one (`method`, `params.name`...): `None` for a plain value of
/// another type.
fn plain_text(c: &mut Cursor) -> scan::Read<Option<String>> {
    match c.peek()? {
        b'"' => c.plain_str().map(|s| Some(s.to_string())),
        // A whole value is parsed there, which this reader does not check.
        b'{' | b'[' => Err(Bail),
        _ => plain_scalar(c).map(|()| None),
    }
}

fn plain_message(c: &mut Cursor, arguments: Arguments) -> scan::Read<Message> {
    let (mut id, mut method, mut params) = (None, None, None);
    let mut seen = Seen::default();
    c.object(|c, key| {
        match key {
            "id" | "method" | "params" if seen.again(key) => return Err(Bail),
            "id" => {
                // The id as serde_json writes it back: the same text, for these plain values.
                id = Some(match c.peek()? {
                    b'"' => {
                        let text = c.plain_str()?;
                        format!("\"{text}\"")
                    }
                    b't' | b'f' | b'n' => c.literal()?.to_string(),
                    _ => c.small_int()?.to_string(),
                })
            }
            "method" => method = plain_text(c)?,
            "params" => {
                params = match c.peek()? {
                    b'{' => Some(plain_params(c, arguments)?),
                    _ => plain_scalar(c).map(|()| None)?,
                }
            }
            _ if case_variant(key, &MESSAGE_KEYS) => return Err(Bail),
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(model(id, method, params.unwrap_or_default()))
}

fn plain_params(c: &mut Cursor, arguments: Arguments) -> scan::Read<Params> {
    let mut p = Params::default();
    let mut seen = Seen::default();
    c.object(|c, key| {
        match key {
            "name" | "uri" | "protocolVersion" | "arguments" if seen.again(key) => {
                return Err(Bail)
            }
            "name" => p.name = plain_text(c)?,
            "uri" => p.uri = plain_text(c)?,
            "protocolVersion" => p.protocol_version = plain_text(c)?,
            // Read by serde_json, as a whole body would be: the edge's policies judge it.
            "arguments" if arguments == Arguments::Built => {
                let text = c.span()?;
                let read: Literal = serde_json::from_str(text).map_err(|_| Bail)?;
                p.arguments = Some(read);
            }
            // Nobody reads them: not built, but what building them would refuse is left to
            // serde_json as above, so that the body reads the same.
            "arguments" => c.skip_buildable()?,
            _ if case_variant(key, &PARAM_KEYS) => return Err(Bail),
            _ => c.skip()?,
        }
        Ok(())
    })?;
    Ok(p)
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

/// The keys of a message the edge reads, and of its `params`.
const MESSAGE_KEYS: [&str; 3] = ["id", "method", "params"];
const PARAM_KEYS: [&str; 4] = ["name", "uri", "protocolVersion", "arguments"];

/// Whether `key` is another spelling of one of `keys` to a case-insensitive reader: the body
/// then means one thing to the edge and another to a Go server, and is no JSON-RPC the edge
/// can read (`Body::NotJsonRpc`: refused on every route that holds bodies for checks).
fn case_variant(key: &str, keys: &[&str]) -> bool {
    keys.iter().any(|k| crate::mcp::case_variant(key, k))
}

/// The read keys of one object met so far. A read key written twice fails the body: the SDKs
/// disagree on which value counts (Python's and Node's readers the last, Go's the first where the
/// last is `null`), so the edge cannot know what the server runs.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    /// Whether `key` (a read key; any other is never "again") was met before; it is met now.
    fn again(&mut self, key: &str) -> bool {
        let Some(i) = MESSAGE_KEYS
            .iter()
            .chain(&PARAM_KEYS)
            .position(|k| *k == key)
        else {
            return false;
        };
        let before = self.0 & (1 << i) != 0;
        self.0 |= 1 << i;
        before
    }
}

/// A read key written twice, in the serde reading.
fn repeated<E: de::Error>() -> E {
    E::custom("a key written twice")
}

/// Keys read by name, whatever their escapes (serde_json unescapes them first); another
/// spelling of one of them (`case_variant`) fails the body.
macro_rules! key_visitor {
    ($ty:ident, $keys:ident { $($text:literal => $variant:ident),* }) => {
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
                            _ if case_variant(k, &$keys) => {
                                return Err(E::custom("a key that is another's in another case"))
                            }
                            _ => $ty::Other,
                        })
                    }
                }
                d.deserialize_str(V)
            }
        }
        impl $ty {
            /// The key as written (`""` for another).
            fn text(&self) -> &'static str {
                match self {
                    $($ty::$variant => $text,)*
                    $ty::Other => "",
                }
            }
        }
    };
}
key_visitor!(Key, MESSAGE_KEYS { "id" => Id, "method" => Method, "params" => Params });
key_visitor!(ParamKey, PARAM_KEYS {
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

/// A list where an object is read: read and dropped (`None`).
macro_rules! not_a_list {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    };
}

/// A string value, or `None` for a value of another type (read and dropped).
fn text(v: Literal) -> Option<String> {
    match v.value {
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
    arguments: Option<Literal>,
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
            not_a_list!();
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // A mistyped value is read as none; a read key written twice fails the body.
                let mut p = Params::default();
                let mut seen = Seen::default();
                while let Some(key) = map.next_key::<ParamKey>()? {
                    if seen.again(key.text()) {
                        return Err(repeated());
                    }
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
/// do (unknown and mistyped siblings are ignored): a body the upstream would run must never be
/// one the edge cannot read; where the SDKs disagree (a read key written twice, or in another
/// case), the edge reads none. What the edge reads (id, method,
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
    not_a_list!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut id, mut method, mut params) = (None, None, None);
        let mut seen = Seen::default();
        while let Some(key) = map.next_key::<Key>()? {
            if seen.again(key.text()) {
                return Err(repeated());
            }
            match key {
                Key::Id => id = Some(map.next_value::<Literal>()?.value.to_string()),
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
                Some(Literal {
                    value: Value::Object(map),
                    repeated,
                }) => Some((map, repeated)),
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
    let repeated_argument = arguments.as_ref().is_some_and(|a| a.1);
    Message {
        id,
        method,
        name,
        asked_version,
        arguments: arguments.map(|a| a.0),
        repeated_argument,
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
mod tests {
    use super::super::parse;
    use super::*;

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
                repeated_argument: false,
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
            br#"{"method":"tools/call","params":[{"name":"a"}]}"#,
            br#"{"method":"tools/call","params":"name"}"#,
            br#"{"method":"resources/read","params":{"uri":"file:///a","name":"n"}}"#,
            br#"{"me\u0074hod":"prompts/get","params":{"n\u0061me":"p","arguments":{}}}"#,
            br#"{"id":1.50,"method":7,"params":{"name":"x"}}"#,
            br#"{"method":"initialize","params":{"protocolVersion":1}}"#,
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
                parse(body, Arguments::Built),
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
        let Body::Messages { messages, .. } = parse(body, Arguments::Built) else {
            panic!("unread");
        };
        assert_eq!(messages[0].name.as_deref(), Some("t"));
        // And a key the edge reads written twice: a whole value keeps the last, which Go's
        // reader does not where it is `null`, so the edge reads no call in it.
        for body in [
            &br#"{"id":1,"method":"tools/call","params":{"name":"t"},"method":null}"#[..],
            br#"{"id":1.50,"id":{"k":2},"method":"tools/call","params":{"name":"x"}}"#,
            br#"{"method":"tools/call","params":{"name":"a"},"params":{"arguments":{"b":1}}}"#,
            br#"{"method":"tools/call","params":{"name":"delete","arguments":{},"name":null}}"#,
            br#"{"method":"initialize","params":{"protocolVersion":"2026-07-28","protocolVersion":1}}"#,
            br#"[{"id":1,"method":"ping"},{"id":2,"method":"x","params":{"uri":"a","uri":"b"}}]"#,
        ] {
            assert_ne!(by_value(body), Body::NotJsonRpc);
            assert_eq!(parse(body, Arguments::Built), Body::NotJsonRpc);
        }
    }
}

//! The fast readers (`scan`) against serde_json's, on the bodies clients and upstreams send and
//! on what a stranger makes of them: a reading of the fast path is the serde reading, or `Bail`.
//! A body the edge's policy reads one way and the upstream another is a bypass; so every body
//! here is checked, and enough of them must take the fast path for the check to mean anything.

use super::request::parse::{self, Arguments};
use super::request::Body;
use super::{answers, answers_by_serde, Wire};

/// Asserts the fast readers agree with serde_json on `body`. Returns how many messages each fast
/// reader read (request, response), `None` where it left the body to serde_json.
fn agrees(body: &[u8]) -> (Option<usize>, Option<usize>) {
    let text = String::from_utf8_lossy(body);
    let request = match parse::plain(body, Arguments::Built) {
        Ok(fast) => {
            assert_eq!(fast, parse::by_serde(body), "request {text}");
            Some(match fast {
                Body::Messages { messages, .. } => messages.len(),
                _ => 0,
            })
        }
        Err(_) => None,
    };
    // Arguments left unbuilt: the same reading without them, whichever reader reads it. A body
    // read otherwise when nobody reads its arguments would be counted, budgeted and validated
    // otherwise than with a policy on.
    let mut serde = parse::by_serde(body);
    parse::drop_arguments(&mut serde);
    if let Ok(fast) = parse::plain(body, Arguments::Checked) {
        assert_eq!(fast, serde, "request without arguments {text}");
    }
    assert_eq!(
        parse::read(body, Arguments::Checked),
        serde,
        "request read without arguments {text}"
    );
    let response = match answers::plain(body) {
        Ok(fast) => {
            assert_eq!(fast, answers_by_serde(body), "response {text}");
            Some(fast.len())
        }
        Err(_) => None,
    };
    if let Ok(fast) = answers::plain_one(body) {
        let serde = serde_json::from_slice::<Wire<'_>>(body)
            .ok()
            .and_then(|w| w.answer());
        assert_eq!(fast, serde, "event {text}");
    }
    (request, response)
}

#[test]
fn the_bodies_clients_and_upstreams_send_take_the_fast_path_and_read_the_same() {
    let requests: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"tls"}}}"#,
        r#"{"jsonrpc": "2.0", "id": "a-1", "method": "initialize", "params": {"protocolVersion": "2026-07-28", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}]"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"run","arguments":{"code":"print(\"hi\")\n","n":1.5,"deep":[[{"x":null}]]},"_meta":{"progressToken":7}}}"#,
        r#"{"id":-42,"method":"prompts/get","params":{"name":"p","arguments":{}}}"#,
        "\n {\"id\" : null ,\t\"method\":\"ping\"}\r\n",
        r#"{"id":"é","method":"tools/call","params":{"name":"検索"}}"#,
        r#"{"method":"tools/call","params":[{"name":"a"}]}"#,
        r#"[1,"a",null,[{"method":"x"}],{"id":2,"method":"tools/list"},{}]"#,
    ];
    let responses: &[&str] = &[
        r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#,
        r#"{"jsonrpc":"2.0","id":"a\u0062","result":{"content":[{"type":"text","text":"line\nline \"q\""}],"isError":true}}"#,
        r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no such method","data":{"x":[1.5e3]}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","inputSchema":{"type":"object"}},{"name":"b"}],"nextCursor":null}}"#,
        r#"[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{"resources":[{"uri":"file:///a","name":"a"}]}}]"#,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}"#,
    ];
    for body in requests.iter().chain(&["[]"]) {
        assert!(
            agrees(body.as_bytes()).0.is_some(),
            "request not read fast: {body}"
        );
        assert!(
            parse::plain(body.as_bytes(), Arguments::Checked).is_ok(),
            "request not read fast without its arguments: {body}"
        );
    }
    for body in responses {
        assert!(
            agrees(body.as_bytes()).1.is_some(),
            "response not read fast: {body}"
        );
    }
}

#[test]
fn what_the_fast_path_cannot_vouch_for_is_left_to_serde_json() {
    let bail: &[&[u8]] = &[
        // An escape in a key or a value the edge reads (serde_json unescapes it).
        br#"{"me\u0074hod":"tools/call","params":{"name":"t"}}"#,
        br#"{"method":"tools/call","params":{"name":"\u0074"}}"#,
        // A lone surrogate or a number out of range where a whole value is parsed.
        br#"{"method":"tools/call","params":{"name":"t","arguments":{"q":"\ud800"}}}"#,
        br#"{"method":"tools/call","params":{"name":"t","arguments":{"n":1e400}}}"#,
        // An id serde_json writes back otherwise.
        br#"{"id":1.50,"method":"ping"}"#,
        br#"{"id":-0,"method":"ping"}"#,
        br#"{"id":{"k":1},"method":"ping"}"#,
        // Not UTF-8, trailing bytes, unfinished.
        b"{\"method\":\"\xff\"}",
        br#"{"id":1} x"#,
        br#"{"id":1"#,
    ];
    for body in bail {
        let text = String::from_utf8_lossy(body);
        assert!(parse::plain(body, Arguments::Built).is_err(), "{text}");
        assert!(parse::plain(body, Arguments::Checked).is_err(), "{text}");
        agrees(body);
    }
    // serde's derived structs refuse a repeated field: the whole body has no answer there.
    for body in [
        r#"{"id":1,"id":2,"result":{}}"#,
        r#"{"id":1,"result":{"isError":true,"isError":false}}"#,
        r#"{"id":1,"result":{"tools":[{"name":"a","name":"b"}]}}"#,
        r#"{"id":1,"result":{"isError":null}}"#,
        r#"{"id":1,"error":{"code":1.0}}"#,
    ] {
        assert!(answers::plain(body.as_bytes()).is_err(), "{body}");
        assert_eq!(answers_by_serde(body.as_bytes()), Vec::new(), "{body}");
    }
}

/// A key that spells one the edge reads in another case (`"Method"`, `"paramſ"`, `"NAME"`) is
/// that key to Go's case-insensitive reader, the last one written winning; a read key written
/// twice is the last one to Python and Node, the first to Go where the last is `null`. Either
/// way the body means one thing to the edge and another to some server, and is no JSON-RPC the
/// edge can read (refused where bodies are held for checks), by both readers.
#[test]
fn a_read_key_spelled_in_another_case_or_twice_makes_the_body_unreadable() {
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"},"method":null}"#,
        r#"{"method":"tools/call","params":{"name":"a"},"params":{"arguments":{"b":1}}}"#,
        r#"{"id":1,"id":2,"method":"tools/call","method":"tools/list"}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"a","arguments":{},"arguments":null}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}"#,
        r#"{"id":1,"method":"tools/list","Method":"tools/call","params":{"name":"t"}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"fast","Name":"delete"}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"fast"},"paramſ":{"name":"delete"}}"#,
        r#"{"id":1,"method":"tools/call","params":{"name":"fast","ARGUMENTS":{}}}"#,
        r#"{"Id":2,"id":1,"method":"ping"}"#,
        r#"[{"id":1,"method":"ping"},{"id":2,"method":"tools/call","params":{"URI":"x"}}]"#,
        r#"{"id":1,"\u004dethod":"tools/call","method":"tools/list"}"#,
        r#"{"id":1,"method":"initialize","params":{"protocolversion":"2025-03-26"}}"#,
    ] {
        agrees(body.as_bytes());
        assert_eq!(parse::by_serde(body.as_bytes()), Body::NotJsonRpc, "{body}");
        let read = parse::read(body.as_bytes(), Arguments::Checked);
        assert_eq!(read, Body::NotJsonRpc, "{body}");
    }
    // A key of the arguments written twice (or in two spellings of one case-insensitive key),
    // at their top or inside: the call is read, said to have one (the policy's conditions then
    // take its value as unknown), by both readers.
    for (arguments, twice) in [
        (r#"{"path":"/etc/passwd","path":null}"#, true),
        (r#"{"o":[{"a":1,"a":2}]}"#, true),
        (r#"{"target":{"path":"/tmp/a","PATH":"/etc/passwd"}}"#, true),
        (r#"{"path":"/etc/passwd","Path":null}"#, true),
        (
            r#"{"path":"/etc/passwd","paths":null,"o":{"a":1},"p":{"a":1}}"#,
            false,
        ),
    ] {
        let body = format!(
            r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{arguments}}}}}"#
        );
        for reading in [
            parse::read(body.as_bytes(), Arguments::Built),
            parse::by_serde(body.as_bytes()),
        ] {
            let Body::Messages { messages, .. } = reading else {
                panic!("unread: {body}");
            };
            assert_eq!(messages[0].repeated_argument, twice, "{body}");
        }
        agrees(body.as_bytes());
    }
    // Keys that spell no read key are skipped as before, on the fast path.
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"argument":{"name":"a"},"names":1,"Jsonrpc":1}}"#;
    assert!(parse::plain(body.as_bytes(), Arguments::Built).is_ok());
    agrees(body.as_bytes());
}

/// serde_json's `Value` reader, built with `raw_value`, reads an object whose first key is its
/// private raw-value token as the JSON text in that key's string. Every other reader sees one
/// odd key: a policy judging the first reading is bypassed. Both of the edge's readers see the key.
#[test]
fn serde_jsons_raw_value_key_is_read_as_a_key_by_both_readers() {
    const KEY: &str = "$serde_json::private::RawValue";
    let hidden = format!(r#"{{"{KEY}":"{{\"path\":\"/public\"}}"}}"#);
    // The same call read fast, and by serde_json (an escape in `name` leaves it to serde_json).
    for name in [r#""read""#, r#""r\u0065ad""#] {
        for arguments in [hidden.clone(), format!(r#"{{"path":{hidden}}}"#)] {
            let body = format!(
                r#"{{"id":{hidden},"method":"tools/call","params":{{"name":{name},"arguments":{arguments}}}}}"#
            );
            agrees(body.as_bytes());
            let Body::Messages { messages, .. } = parse::read(body.as_bytes(), Arguments::Built)
            else {
                panic!("unread: {body}");
            };
            let m = &messages[0];
            assert_eq!(m.name.as_deref(), Some("read"), "{body}");
            let expected: serde_json::Map<String, serde_json::Value> =
                std::iter::once((KEY.to_string(), r#"{"path":"/public"}"#.into())).collect();
            let arguments = m.arguments.as_ref().expect("arguments");
            match arguments.get("path") {
                // Nested: an object with the one odd key, not the path it hides.
                Some(serde_json::Value::Object(inner)) => assert_eq!(inner, &expected),
                Some(other) => panic!("read as {other}: {body}"),
                None => assert_eq!(arguments, &expected, "{body}"),
            }
            // The id as written (an object), not the text inside it.
            assert!(m.id.as_deref().is_some_and(|id| id.contains(KEY)), "{body}");
        }
    }
    // serde_json's own `Value` reads it otherwise: the reason for `parse::Literal`.
    let v: serde_json::Value = serde_json::from_str(&hidden).unwrap();
    assert_eq!(v, serde_json::json!({"path": "/public"}));
}

#[test]
fn the_edges_of_the_plain_subset_read_the_same_both_ways() {
    let nested =
        |depth: usize, inner: &str| format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth));
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    // Depth: the fast path bails past 64 levels in all (serde_json refuses past 128 where it
    // parses a whole value, and skips any depth).
    for depth in [61, 62, 63, 64, 130] {
        let deep = nested(depth, "1");
        bodies.extend(
            [
                format!(r#"{{"id":1,"method":"tools/call","params":{{"name":"t","x":{deep}}}}}"#),
                format!(r#"{{"id":1,"method":"tools/call","params":{{"name":"t","arguments":{{"a":{deep}}}}}}}"#),
                format!(r#"{{"id":1,"result":{{"content":{deep}}}}}"#),
                format!(r#"{{"id":{deep},"result":{{}}}}"#),
            ]
            .map(String::into_bytes),
        );
    }
    // Structs in their sequence form, which serde's derived readers accept.
    for body in [
        r#"{"id":1,"result":[true,null,null,null]}"#,
        r#"{"id":1,"error":[7]}"#,
        r#"{"id":1,"result":{"tools":[["a",null]]}}"#,
        r#"[{"id":1,"result":{}},[1,{},null,null]]"#,
    ] {
        assert!(answers::plain(body.as_bytes()).is_err(), "{body}");
        bodies.push(body.into());
    }
    // Bytes that are not JSON whitespace, a byte-order mark, nothing at all.
    for prefix in ["\x0c", "\x0b", "\u{a0}", "\u{feff}", "", " "] {
        bodies.push(format!(r#"{prefix}{{"id":1,"result":{{}}}}"#).into());
        bodies.push(format!(r#"{prefix}[{{"id":1,"method":"ping"}}]"#).into());
        bodies.push(prefix.into());
    }
    // Ids and codes where writing them back or fitting them could differ.
    for id in [
        "\"\x7f\"",
        "\"\u{2028}\"",
        "\"\u{1f600}\"",
        r#""/""#,
        "123456789012345678",
        "1234567890123456789",
        "18446744073709551615",
        "-9223372036854775808",
        "-0",
        "0",
    ] {
        bodies
            .push(format!(r#"{{"id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#).into());
        bodies.push(format!(r#"{{"id":{id},"error":{{"code":{id}}}}}"#).into());
    }
    for body in &bodies {
        agrees(body);
    }
    // What must still be read fast: the deepest plain call, an 18-digit id, the plain ids.
    let fast = |b: &str| parse::plain(b.as_bytes(), Arguments::Built).is_ok();
    assert!(fast(&format!(
        r#"{{"id":1,"method":"tools/call","params":{{"x":{}}}}}"#,
        nested(62, "1")
    )));
    assert!(!fast(&format!(
        r#"{{"id":1,"method":"tools/call","params":{{"x":{}}}}}"#,
        nested(63, "1")
    )));
    assert!(fast(r#"{"id":123456789012345678,"method":"ping"}"#));
    assert!(fast(
        "{\"id\":\"\u{2028}\u{1f600}\x7f/\",\"method\":\"ping\"}"
    ));
}

/// The keys of a generated message, of its `params`, `result` or `error`, and odd ones.
const MESSAGE: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error", "x"];
#[rustfmt::skip]
const INNER: &[&str] = &[
    "name", "uri", "protocolVersion", "arguments", "isError", "tools", "prompts", "resources",
    "code", "content", "x", "_meta",
];
const ODD: &[&str] = &[
    "me\\u0074hod",
    "na\\u006de",
    "",
    "\\",
    // serde_json's private key for a raw value, which its `Value` reader treats apart.
    "$serde_json::private::RawValue",
    // Read keys in another case, which Go's reader takes for them.
    "Method",
    "nAme",
    "paramſ",
];

/// What generated values are made of: what clients send, and what serde_json refuses or reads
/// otherwise.
#[rustfmt::skip]
const STRINGS: &[&str] = &[
    r#""tools/call""#, r#""initialize""#, r#""resources/read""#, r#""prompts/get""#,
    r#""tools/list""#, r#""search""#, r#""2026-07-28""#, r#""é""#, r#""""#, r#""a\"b""#,
    r#""\u0074ools/call""#, r#""\ud800""#, r#""\n""#, r#""\x""#, "\"tab\there\"", r#""\u00e""#,
    "\"open",
];
#[rustfmt::skip]
const SCALARS: &[&str] = &[
    "1", "0", "-1", "-0", "1.5", "1e400", "01", "123456789012345678901", "-9223372036854775808",
    "9223372036854775808", "1.", "-", "2E-3", "true", "false", "null", "nul", "tru",
];

/// A small deterministic generator (xorshift): the same bodies on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn ws(&mut self, out: &mut String) {
        out.push_str(self.pick(&["", "", "", " ", "\n", " \t", "\r\n "]));
    }

    fn value(&mut self, depth: usize, out: &mut String) {
        match (self.below(10), depth) {
            (0..=2, _) | (_, 5..) => out.push_str(self.pick(STRINGS)),
            (3..=4, _) => out.push_str(self.pick(SCALARS)),
            (5..=7, _) => {
                let keys = [MESSAGE, INNER, ODD][self.below(3)];
                self.object(keys, depth, out)
            }
            _ => {
                out.push('[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    self.ws(out);
                    self.value(depth + 1, out);
                }
                out.push(']');
            }
        }
    }

    /// A value for `key`: mostly of the type the readers expect there, so that whole messages
    /// are made often enough.
    fn value_of(&mut self, key: &str, depth: usize, out: &mut String) {
        if self.below(4) == 0 || depth >= 5 {
            return self.value(depth, out);
        }
        match key {
            "params" | "result" | "error" | "arguments" => self.object(INNER, depth, out),
            "tools" | "prompts" | "resources" | "content" => {
                out.push('[');
                for i in 0..self.below(3) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(self.pick(&[
                        r#"{"name":"a"}"#,
                        r#"{"uri":"file:///b","name":"b"}"#,
                        r#"{"name":null}"#,
                        r#"{"type":"text","text":"x\ny"}"#,
                        r#"{}"#,
                        r#"{"name":"\u0061"}"#,
                    ]));
                }
                out.push(']');
            }
            "isError" => out.push_str(self.pick(&["true", "false"])),
            "code" | "id" => out.push_str(self.pick(&["-32601", "7", "0", r#""k""#])),
            _ => out.push_str(self.pick(&[r#""tools/call""#, r#""t""#, r#""2026-07-28""#])),
        }
    }

    /// An object of up to 4 members, their keys picked from `keys`.
    fn object(&mut self, keys: &[&str], depth: usize, out: &mut String) {
        out.push('{');
        for i in 0..self.below(5) {
            if i > 0 {
                out.push(',');
            }
            let key = self.pick(keys);
            self.ws(out);
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            self.ws(out);
            self.value_of(key, depth + 1, out);
        }
        out.push('}');
    }

    /// A body: a generated value, sometimes with one byte changed, inserted or removed.
    fn body(&mut self) -> Vec<u8> {
        let mut text = String::new();
        self.ws(&mut text);
        match self.below(3) {
            0 => self.value(0, &mut text),
            1 => self.object(MESSAGE, 0, &mut text),
            _ => {
                text.push('[');
                for i in 0..1 + self.below(3) {
                    if i > 0 {
                        text.push(',');
                    }
                    self.object(MESSAGE, 1, &mut text);
                }
                text.push(']');
            }
        }
        self.ws(&mut text);
        let mut bytes = text.into_bytes();
        if self.below(4) == 0 && !bytes.is_empty() {
            let at = self.below(bytes.len());
            const NOISE: &[u8] = b"{}[],:\"\\ 0-.eu\x01\x7f\xc3";
            match self.below(3) {
                0 => bytes[at] = NOISE[self.below(NOISE.len())],
                1 => bytes.insert(at, NOISE[self.below(NOISE.len())]),
                _ => _ = bytes.remove(at),
            }
        }
        bytes
    }
}

#[test]
fn generated_and_mangled_bodies_read_the_same_both_ways() {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let (mut requests, mut responses) = (0, 0);
    const BODIES: usize = 200_000;
    for _ in 0..BODIES {
        let (request, response) = agrees(&g.body());
        requests += usize::from(request.is_some_and(|n| n > 0));
        responses += usize::from(response.is_some_and(|n| n > 0));
    }
    // The comparison means something only where the fast path reads messages: thousands of
    // bodies each (a response must be whole to be answered; most generated ones are not).
    assert!(
        requests > BODIES / 5,
        "{requests} of {BODIES} requests read fast"
    );
    assert!(
        responses > BODIES / 50,
        "{responses} of {BODIES} responses read fast"
    );
}

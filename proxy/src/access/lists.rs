//! The lists a caller sees under a policy: `tools/list`, `prompts/list` and `resources/list`
//! answers have the entries removed that the caller may not call (with any arguments), in JSON
//! and in SSE-framed responses; paging cursors and every other field are kept. A response that
//! is not a list passes byte for byte: SSE events are rewritten only when they carry a list.
//! A list asked for that cannot be read (too large, not JSON, compressed) is replaced by a
//! JSON-RPC error rather than shown unfiltered.

use std::sync::Arc;

use serde_json::Value;

use super::policy;
use crate::auth::Identity;
use crate::config::Policy;
use crate::mcp::request::Message;

/// The largest JSON body or SSE event read for filtering. Past it, an answer to a list request
/// is replaced by an error (a list that cannot be checked is not shown); anything else passes
/// on unread.
pub const MAX_LIST: usize = 4 * 1024 * 1024;

/// What replaces a list answer that cannot be read.
const UNREADABLE: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"the list answer could not be read to filter it for this caller"}}"#;

/// Which call an entry of a list answer stands for: (array field, call method, name field).
const LISTS: [(&str, &str, &str); 3] = [
    ("tools", "tools/call", "name"),
    ("prompts", "prompts/get", "name"),
    ("resources", "resources/read", "uri"),
];

/// Removes from a JSON-RPC message (or batch) the list entries `id` may not call; `true` when
/// anything was a list answer (and so the text must be written anew).
pub fn filter_message(policy: &Policy, id: Option<&Identity>, msg: &mut Value) -> bool {
    if let Value::Array(items) = msg {
        let mut any = false;
        for m in items {
            any |= filter_message(policy, id, m);
        }
        return any;
    }
    let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    let mut any = false;
    for (field, method, key) in LISTS {
        let Some(Value::Array(entries)) = result.get_mut(field) else {
            continue;
        };
        any = true;
        entries.retain(|e| {
            let Some(name) = e.get(key).and_then(Value::as_str).map(str::to_string) else {
                // Not a list entry (an array of that name in some other answer).
                return true;
            };
            let name = Some(name);
            let call = Message {
                method: Some(method.to_string()),
                name,
                ..Message::default()
            };
            policy::may_call(policy, id, &call)
        });
    }
    any
}

/// A response of a policy route on its way out, filtered as it streams.
pub struct ListFilter {
    policy: Arc<Policy>,
    identity: Option<Identity>,
    /// SSE: the event being read (raw bytes); JSON: the whole body.
    buf: Vec<u8>,
    sse: bool,
    /// The request asked for a list: what cannot be read is refused, not passed on.
    asked_list: bool,
    /// Over `MAX_LIST` in a list answer: the rest of this event (or body) is dropped.
    overflow: bool,
    /// Over `MAX_LIST` in another answer: the rest of this event passes unread.
    passthrough: bool,
    /// List answers that could not be read, replaced or dropped.
    pub unreadable: usize,
    /// SSE: bytes of the current line so far, CR and LF aside.
    line_len: usize,
}

/// A line's bytes other than a final CR.
fn content_len(part: &[u8]) -> usize {
    part.strip_suffix(b"\r").unwrap_or(part).len()
}

impl ListFilter {
    /// `sse`: the response is an event stream; otherwise a JSON body, held until complete.
    /// `asked_list`: the request asked for a list.
    pub fn new(
        policy: Arc<Policy>,
        identity: Option<Identity>,
        sse: bool,
        asked_list: bool,
    ) -> Self {
        Self {
            policy,
            identity,
            buf: Vec::new(),
            sse,
            asked_list,
            overflow: false,
            passthrough: false,
            unreadable: 0,
            line_len: 0,
        }
    }

    /// A chunk in; what to send on.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        if self.sse {
            return self.feed_sse(chunk, end);
        }
        if !self.overflow && self.buf.len() + chunk.len() <= MAX_LIST {
            self.buf.extend_from_slice(chunk);
        } else {
            self.overflow = true;
            self.buf = Vec::new();
        }
        if !end {
            return Vec::new();
        }
        let body = std::mem::take(&mut self.buf);
        let parsed = match self.overflow {
            true => None,
            false => serde_json::from_slice::<Value>(&body).ok(),
        };
        let Some(mut v) = parsed else {
            self.unreadable += 1;
            return UNREADABLE.as_bytes().to_vec();
        };
        if filter_message(&self.policy, self.identity.as_ref(), &mut v) {
            v.to_string().into_bytes()
        } else {
            body
        }
    }

    /// Passes every complete event on, rewritten when it carries a list answer; holds the
    /// incomplete one.
    fn feed_sse(&mut self, chunk: &[u8], end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(i + 1);
            rest = tail;
            // The line's length across chunks, its CR and LF aside: 0 ends the event.
            self.line_len += content_len(&line[..i]);
            let blank = std::mem::take(&mut self.line_len) == 0;
            self.take_line(line, &mut out);
            if blank {
                if std::mem::take(&mut self.overflow) {
                    self.unreadable += 1;
                } else if !std::mem::take(&mut self.passthrough) {
                    let event = std::mem::take(&mut self.buf);
                    out.extend_from_slice(&self.event(event));
                }
            }
        }
        self.take_line(rest, &mut out);
        self.line_len += content_len(rest);
        if end && !self.buf.is_empty() {
            let event = std::mem::take(&mut self.buf);
            out.extend_from_slice(&self.event(event));
        }
        out
    }

    /// A piece of the current event: kept, passed on (an oversized answer that is no list), or
    /// dropped (an oversized answer to a list request).
    fn take_line(&mut self, part: &[u8], out: &mut Vec<u8>) {
        if self.passthrough {
            out.extend_from_slice(part);
        } else if self.overflow {
        } else if self.buf.len() + part.len() <= MAX_LIST {
            self.buf.extend_from_slice(part);
        } else if self.asked_list {
            self.overflow = true;
            self.buf = Vec::new();
        } else {
            self.passthrough = true;
            out.append(&mut self.buf);
            out.extend_from_slice(part);
        }
    }

    /// One complete event (its blank line included), as it goes out.
    fn event(&self, raw: Vec<u8>) -> Vec<u8> {
        let text = String::from_utf8_lossy(&raw);
        let mut data = String::new();
        for line in text.lines() {
            if let Some(d) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        let Ok(mut v) = serde_json::from_str::<Value>(&data) else {
            return raw;
        };
        if !filter_message(&self.policy, self.identity.as_ref(), &mut v) {
            return raw;
        }
        // The event's other fields (id, event, retry, comments) as they were, the data anew.
        let mut out = String::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("data:"))
        {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
        out.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Effect, Rule, What, Who};

    fn policy() -> Arc<Policy> {
        let rule = |name: &str, effect, tool: &str| Rule {
            name: name.into(),
            effect,
            who: Who::default(),
            what: What {
                pairs: vec![("tools/call".into(), Some(tool.into()))],
            },
            arguments: Vec::new(),
        };
        Arc::new(Policy {
            default: Effect::Deny,
            rules: vec![
                rule("a", Effect::Allow, "search*"),
                rule("b", Effect::Allow, "get"),
            ],
        })
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"search_docs"},{"name":"delete"},{"name":"get"}],"nextCursor":"p2"}}"#;

    #[test]
    fn a_json_list_keeps_what_may_be_called_and_its_cursor() {
        let mut f = ListFilter::new(policy(), None, false, true);
        let mut out = f.feed(&LIST.as_bytes()[..30], false);
        assert!(out.is_empty(), "held until complete");
        out.extend(f.feed(&LIST.as_bytes()[30..], true));
        let v: Value = serde_json::from_slice(&out).unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["search_docs", "get"]);
        assert_eq!(v["result"]["nextCursor"], "p2");
        // Unreadable (a BOM, a lone surrogate, gzip): an error, never the list unfiltered.
        let mut f = ListFilter::new(policy(), None, false, true);
        let out = f.feed(b"\x1f\x8b\x08\x00compressed", true);
        assert!(String::from_utf8_lossy(&out).contains("-32603"));
        assert_eq!(f.unreadable, 1);
        // Not a list: byte for byte.
        let call = br#"{"jsonrpc":"2.0","id":3,"result":{"content":[]} }"#;
        let mut f = ListFilter::new(policy(), None, false, true);
        assert_eq!(f.feed(call, true), call);
    }

    #[test]
    fn sse_events_are_rewritten_only_when_they_carry_a_list() {
        let stream = format!(
            ": ping\n\nid: 7\nevent: message\ndata: {LIST}\n\nevent: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/x\"}}\r\n\r\n"
        );
        for size in [1, 5, 64, stream.len()] {
            let mut f = ListFilter::new(policy(), None, true, true);
            let mut out = Vec::new();
            let bytes = stream.as_bytes();
            for (i, piece) in bytes.chunks(size).enumerate() {
                let end = (i + 1) * size >= bytes.len();
                out.extend(f.feed(piece, end));
            }
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with(": ping\n\nid: 7\nevent: message\ndata: {"),
                "{text}"
            );
            assert!(
                !text.contains("delete") && text.contains("search_docs"),
                "{text}"
            );
            assert!(text.ends_with("\"notifications/x\"}\r\n\r\n"), "{text}");
        }
    }

    #[test]
    fn an_oversized_event_passes_unless_it_answers_a_list_request() {
        let big = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{\"blob\":\"{}\"}}}}\n\n",
            "A".repeat(MAX_LIST)
        );
        let after = "data: {\"jsonrpc\":\"2.0\",\"method\":\"n\"}\n\n";
        let stream = format!("{big}{after}");
        for asked_list in [false, true] {
            let mut f = ListFilter::new(policy(), None, true, asked_list);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(64 * 1024) {
                out.extend(f.feed(piece, false));
            }
            out.extend(f.feed(b"", true));
            let expected = if asked_list {
                after.to_string()
            } else {
                stream.clone()
            };
            assert_eq!(out.len(), expected.len(), "asked_list: {asked_list}");
            assert!(out == expected.as_bytes(), "asked_list: {asked_list}");
        }
    }
}

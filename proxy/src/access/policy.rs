//! A route's policy applied to one request: each JSON-RPC message of the body against the rules
//! (first match wins), and, for a refusal, the answer a client knows how to handle: 403
//! `insufficient_scope` naming every scope the call needs when more scopes would allow it,
//! otherwise a JSON-RPC error naming what is not allowed. The body never reaches the upstream.

use std::sync::Arc;

use serde_json::Value;

use crate::auth::Identity;
use crate::config::{Condition, Effect, Policy, Rule, Who, NAMED_METHODS};
use crate::mcp::request::Message;

/// JSON-RPC error code of a call the policy refuses (in the implementation-defined range).
pub const NOT_ALLOWED: i64 = -32003;

/// What the policy said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The rule that decided (its name), or `default`; `None`: the protocol's own methods,
    /// which no rule named.
    pub rule: Option<String>,
}

/// Why a request is refused: the first refused message of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// JSON text of the message's id (`null` for a notification).
    pub id: String,
    pub method: String,
    pub name: Option<String>,
    /// Scopes that would allow it, beyond those the caller holds: answered 403 `insufficient_scope`.
    pub needs_scopes: Option<Vec<String>>,
}

fn who_matches(who: &Who, id: Option<&Identity>, scopes: &[String]) -> bool {
    if !who.needs_identity() {
        return true;
    }
    let Some(id) = id else {
        return false;
    };
    let claim_values = |name: &str| -> Vec<String> {
        let Some(v) = id.claims.as_deref().and_then(|c| c.get(name)) else {
            return Vec::new();
        };
        match v {
            Value::Array(items) => items.iter().filter_map(scalar).collect(),
            one => scalar(one).into_iter().collect(),
        }
    };
    who.scopes.iter().all(|s| scopes.contains(s))
        && (who.groups.is_empty() || who.groups.iter().any(|g| id.groups.contains(g)))
        && (who.keys.is_empty() || id.key_name.as_ref().is_some_and(|k| who.keys.contains(k)))
        && who
            .claims
            .iter()
            .all(|(name, allowed)| claim_values(name).iter().any(|v| allowed.contains(v)))
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether `rule`'s what (method and name globs) matches a call of `method` naming `name`.
fn what_matches(rule: &Rule, method: &str, name: Option<&str>) -> bool {
    rule.what.pairs.iter().any(|(mg, ng)| {
        crate::config::glob_match(mg, method)
            && ng
                .as_ref()
                .is_none_or(|g| name.is_some_and(|n| crate::config::glob_match(g, n)))
    })
}

/// Whether `rule`'s what and arguments match `m` (who aside).
fn call_matches(rule: &Rule, method: &str, m: &Message) -> bool {
    what_matches(rule, method, m.name.as_deref())
        && rule
            .arguments
            .iter()
            .all(|(arg, cond)| argument_holds(rule.effect, m, arg, cond))
}

/// Whether `cond` holds of `m`'s argument `arg`, for a rule of `effect`. Where the value the
/// server binds cannot be told, an allowing rule's condition fails and a denying rule's holds:
/// a key that spells `arg` in another case (`PATH` beside `path`, or instead of it: `arg` to
/// Go's and .NET's readers), or a key of the arguments written twice (Go's reader keeps the
/// first where the last is `null`, and merges two objects).
fn argument_holds(effect: Effect, m: &Message, arg: &str, cond: &Condition) -> bool {
    let Some(arguments) = m.arguments.as_ref() else {
        return false;
    };
    if m.repeated_argument || arguments.keys().any(|k| crate::mcp::case_variant(k, arg)) {
        return effect == Effect::Deny;
    }
    arguments.get(arg).is_some_and(|v| match effect {
        Effect::Allow => cond.holds(v),
        // `"true"` for `true`: a deny rule holds of what the server may coerce the value into.
        Effect::Deny => cond.may_hold(v),
    })
}

fn decide_with(policy: &Policy, id: Option<&Identity>, scopes: &[String], m: &Message) -> Verdict {
    let Some(method) = m.method.as_deref() else {
        // A response (to the server's own request): not a call.
        return Verdict {
            allowed: true,
            rule: None,
        };
    };
    for rule in &policy.rules {
        if call_matches(rule, method, m) && who_matches(&rule.who, id, scopes) {
            return Verdict {
                allowed: rule.effect == Effect::Allow,
                rule: Some(rule.name.clone()),
            };
        }
    }
    if NAMED_METHODS.contains(&method) {
        Verdict {
            allowed: policy.default == Effect::Allow,
            rule: Some("default".into()),
        }
    } else {
        Verdict {
            allowed: true,
            rule: None,
        }
    }
}

/// The policy's verdict on one message from `id`.
pub fn decide(policy: &Policy, id: Option<&Identity>, m: &Message) -> Verdict {
    let scopes = id.map_or(&[][..], |i| &i.scopes[..]);
    let raw = decide_with(policy, id, scopes, m);
    match normalized(m) {
        // The URI as a server's URL parser reads it (`..` resolved, `%2e`, scheme case):
        // allowed only when both spellings are.
        Some(n) if raw.allowed => decide_with(policy, id, scopes, &n),
        _ => raw,
    }
}

/// A resource call whose URI a URL parser reads differently from its text (the Python SDK
/// types it as a URL: `file:///public/../secret` is `file:///secret` there), as so read.
fn normalized(m: &Message) -> Option<Message> {
    if !m.method.as_deref()?.starts_with("resources/") {
        return None;
    }
    let uri = m.name.as_deref()?;
    let parsed = url::Url::parse(uri).ok()?.to_string();
    (parsed != uri).then(|| Message {
        name: Some(parsed),
        ..m.clone()
    })
}

/// Whether `id` may make the call `m` names with some arguments: what a list shows. A rule with
/// argument conditions decides only when it allows (some arguments would pass it); one without
/// decides either way; then `default`.
pub fn may_call(policy: &Policy, id: Option<&Identity>, m: &Message) -> bool {
    may_call_as(policy, id, m) && normalized(m).is_none_or(|n| may_call_as(policy, id, &n))
}

fn may_call_as(policy: &Policy, id: Option<&Identity>, m: &Message) -> bool {
    let Some(method) = m.method.as_deref() else {
        return true;
    };
    let scopes = id.map_or(&[][..], |i| &i.scopes[..]);
    for rule in &policy.rules {
        if !what_matches(rule, method, m.name.as_deref()) || !who_matches(&rule.who, id, scopes) {
            continue;
        }
        if rule.arguments.is_empty() || rule.effect == Effect::Allow {
            return rule.effect == Effect::Allow;
        }
    }
    policy.default == Effect::Allow || !NAMED_METHODS.contains(&method)
}

/// The scopes that would turn a refusal of `m` into an allow: those of an allowing rule whose
/// other conditions the caller meets, when holding them is enough (first match still wins).
fn missing_scopes(policy: &Policy, id: &Identity, m: &Message) -> Option<Vec<String>> {
    let method = m.method.as_deref()?;
    policy
        .rules
        .iter()
        .filter(|r| r.effect == Effect::Allow && !r.who.scopes.is_empty())
        .filter(|r| call_matches(r, method, m))
        .find_map(|r| {
            let mut with: Vec<String> = id.scopes.clone();
            with.extend(r.who.scopes.iter().cloned());
            let now = decide_with(policy, Some(id), &with, m);
            now.allowed.then(|| r.who.scopes.clone())
        })
}

/// Every message of a body: their verdicts, and the refusal of the first one refused.
pub fn check(
    policy: &Arc<Policy>,
    id: Option<&Identity>,
    messages: &[Message],
    oauth: bool,
) -> (Vec<Verdict>, Option<Refusal>) {
    let mut verdicts = Vec::with_capacity(messages.len());
    let mut refusal = None;
    for m in messages {
        let v = decide(policy, id, m);
        if !v.allowed && refusal.is_none() {
            let needs_scopes = match (oauth, id) {
                (true, Some(id)) => missing_scopes(policy, id, m),
                _ => None,
            };
            refusal = Some(Refusal {
                id: m.id.clone().unwrap_or_else(|| "null".into()),
                method: m.method.clone().unwrap_or_default(),
                name: m.name.clone(),
                needs_scopes,
            });
        }
        verdicts.push(v);
    }
    (verdicts, refusal)
}

/// The JSON-RPC error body of a refusal no scope would lift.
pub fn error_body(r: &Refusal) -> String {
    let what = match (&r.name, r.method.as_str()) {
        (Some(n), "tools/call") => format!("tool {n:?} is not allowed"),
        (Some(n), "prompts/get") => format!("prompt {n:?} is not allowed"),
        (Some(n), _) => format!("resource {n:?} is not allowed"),
        (None, m) => format!("method {m:?} is not allowed"),
    };
    let id: Value = serde_json::from_str(&r.id).unwrap_or(Value::Null);
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": NOT_ALLOWED, "message": what},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Condition, What};
    use serde_json::json;

    fn rule(name: &str, effect: Effect, who: Who, tool: &str) -> Rule {
        Rule {
            name: name.into(),
            effect,
            who,
            what: What {
                pairs: vec![("tools/call".into(), Some(tool.into()))],
            },
            arguments: Vec::new(),
        }
    }

    fn call(tool: &str, args: Value) -> Message {
        Message {
            id: Some("1".into()),
            method: Some("tools/call".into()),
            name: Some(tool.into()),
            arguments: args.as_object().cloned(),
            ..Message::default()
        }
    }

    fn caller(scopes: &[&str]) -> Identity {
        Identity {
            subject: Some("u".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Identity::default()
        }
    }

    #[test]
    fn an_argument_the_server_may_read_otherwise_fails_every_allow_and_meets_every_deny() {
        let mut no_etc = rule("no-etc", Effect::Deny, Who::default(), "delete_*");
        no_etc.arguments = vec![("path".into(), Condition::Prefix("/etc".into()))];
        let mut tmp = rule("tmp", Effect::Allow, Who::default(), "delete_*");
        tmp.arguments = vec![("path".into(), Condition::Prefix("/tmp/".into()))];
        let policy = Policy {
            default: Effect::Deny,
            rules: vec![no_etc, tmp.clone()],
        };
        let decided = |args: Value| {
            let v = decide(&policy, None, &call("delete_item", args));
            (v.allowed, v.rule)
        };
        assert_eq!(
            decided(json!({"path": "/tmp/a"})),
            (true, Some("tmp".into()))
        );
        // Go's reader binds the last of the spellings, .NET's the last too: the edge cannot
        // tell which value the server runs with.
        for args in [
            json!({"path": "/tmp/a", "PATH": "/etc/passwd"}),
            json!({"Path": "/etc/passwd", "path": "/tmp/a"}),
            json!({"pAth": "/etc/passwd"}),
            json!({"path": "/tmp/a", "PATH": "/tmp/b"}),
        ] {
            assert_eq!(
                decided(args.clone()),
                (false, Some("no-etc".into())),
                "{args}"
            );
        }
        // Without a deny rule, the allowing rule fails and the default decides.
        let allow_only = Policy {
            default: Effect::Deny,
            rules: vec![tmp],
        };
        let args = json!({"path": "/tmp/a", "pat\u{017f}h": "x", "PATH": "/etc"});
        let v = decide(&allow_only, None, &call("delete_item", args));
        assert_eq!((v.allowed, v.rule.as_deref()), (false, Some("default")));
        // A key of the arguments written twice (`{"path": "/etc/passwd", "path": null}` keeps
        // /etc/passwd in Go, `null` here): as unknown.
        let mut twice = call("delete_item", json!({"path": "/tmp/a"}));
        twice.repeated_argument = true;
        assert!(!decide(&allow_only, None, &twice).allowed);
        let v = decide(&policy, None, &twice);
        assert_eq!((v.allowed, v.rule.as_deref()), (false, Some("no-etc")));
        // Other keys, however near, are other arguments.
        let v = decide(
            &allow_only,
            None,
            &call(
                "delete_item",
                json!({"path": "/tmp/a", "paths": "/etc", "pаth": "/etc"}),
            ),
        );
        assert!(v.allowed);
    }

    #[test]
    fn the_first_matching_rule_decides_and_default_only_the_named_calls() {
        let scoped = Who {
            scopes: vec!["db.query".into()],
            ..Who::default()
        };
        let mut query = rule("query", Effect::Allow, scoped, "query");
        query.arguments = vec![("db".into(), Condition::OneOf(vec!["analytics".into()]))];
        let policy = Arc::new(Policy {
            default: Effect::Deny,
            rules: vec![
                rule("no-drop", Effect::Deny, Who::default(), "drop_*"),
                query,
                rule("all", Effect::Allow, Who::default(), "*"),
            ],
        });
        let id = caller(&["db.query"]);
        let v = decide(&policy, Some(&id), &call("drop_table", json!({})));
        assert_eq!((v.allowed, v.rule.as_deref()), (false, Some("no-drop")));
        let v = decide(
            &policy,
            Some(&id),
            &call("query", json!({"db": "analytics"})),
        );
        assert_eq!((v.allowed, v.rule.as_deref()), (true, Some("query")));
        // The argument twin falls through to the next rule, which allows any tool.
        let v = decide(&policy, Some(&id), &call("query", json!({"db": "prod"})));
        assert_eq!(v.rule.as_deref(), Some("all"));
        // The protocol's own methods: allowed, decided by no rule.
        let init = Message {
            method: Some("initialize".into()),
            ..Message::default()
        };
        assert_eq!(
            decide(&policy, None, &init),
            Verdict {
                allowed: true,
                rule: None
            }
        );
        let read = Message {
            method: Some("resources/read".into()),
            name: Some("docs://x".into()),
            ..Message::default()
        };
        assert_eq!(
            decide(&policy, None, &read).rule.as_deref(),
            Some("default")
        );
    }

    #[test]
    fn a_refusal_names_the_scopes_that_would_lift_it_only_when_they_would() {
        let needs = |scope: &str| Who {
            scopes: vec![scope.into()],
            ..Who::default()
        };
        let policy = Arc::new(Policy {
            default: Effect::Deny,
            rules: vec![
                rule("never-delete", Effect::Deny, needs("admin"), "delete"),
                rule("admins-delete", Effect::Allow, needs("admin"), "delete"),
                rule("writers-write", Effect::Allow, needs("write"), "write"),
            ],
        });
        let id = caller(&["read"]);
        let (_, r) = check(&policy, Some(&id), &[call("write", json!({}))], true);
        assert_eq!(r.unwrap().needs_scopes, Some(vec!["write".to_string()]));
        // `admin` would only reach the earlier deny: no scope lifts it.
        let (_, r) = check(&policy, Some(&id), &[call("delete", json!({}))], true);
        assert_eq!(r.unwrap().needs_scopes, None);
        // Without OAuth there are no scopes to ask for.
        let (_, r) = check(&policy, Some(&id), &[call("write", json!({}))], false);
        assert_eq!(r.unwrap().needs_scopes, None);
    }
}

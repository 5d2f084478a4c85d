//! The YAML of `policy:` and its checks: rules that can never match, and rules an earlier one
//! shadows, are refused with their key.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::auth::AuthConfig;
use super::policy::*;
use super::{Collector, KeyPath};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    /// `allow` or `deny`: what happens to a call no rule matches. Required: said explicitly.
    default: Option<String>,
    /// Tried in order; the first that matches decides.
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Named in the audit log and in `check`'s messages (default `rules[N]`).
    name: Option<String>,
    /// `allow` or `deny`.
    effect: String,
    /// `anyone` (default), `authenticated`, or `{ scopes, groups, keys, claims, authenticated }`.
    who: Option<Value>,
    /// JSON-RPC methods (globs: `tools/*`); default every method, or those of the names given.
    methods: Option<Vec<String>>,
    /// Tool names (globs) of `tools/call`.
    tools: Option<Vec<String>>,
    /// Prompt names (globs) of `prompts/get`.
    prompts: Option<Vec<String>>,
    /// Resource URIs (globs) of `resources/read`, `subscribe` and `unsubscribe`.
    resources: Option<Vec<String>>,
    /// `ARG: { equals | prefix | one_of | regex }`, on the call's `params.arguments`.
    arguments: Option<BTreeMap<String, RawCondition>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWho {
    /// Any authenticated caller.
    authenticated: Option<bool>,
    /// The caller's token holds every one of these scopes.
    scopes: Option<Vec<String>>,
    /// The caller is in one of these groups (`oauth.claims.groups`).
    groups: Option<Vec<String>>,
    /// The caller used one of these API keys (by name).
    keys: Option<Vec<String>>,
    /// Token claims and the values allowed (one value or a list).
    claims: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    /// The argument is exactly this (a string, number or boolean).
    equals: Option<Value>,
    /// The argument is a string starting with this.
    prefix: Option<String>,
    /// The argument is one of these.
    one_of: Option<Vec<Value>>,
    /// The argument is a string matching this regular expression (anchor it with `^…$`).
    regex: Option<String>,
}

/// Builds `policy:` for a route protected by `auth` (`None`: open to anyone).
pub(super) fn build_policy(
    v: Value,
    auth: Option<&AuthConfig>,
    p: &KeyPath,
    c: &mut Collector,
) -> Option<Option<Policy>> {
    if v.as_str() == Some("none") {
        return Some(None);
    }
    let raw: RawPolicy = c.deserialize(v, p)?;
    let default = match raw.default.as_deref().map(Effect::parse) {
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => {
            c.err(&p.key("default"), e);
            None
        }
        None => {
            c.err(
                p,
                "missing `default: allow` or `default: deny` (said explicitly)",
            );
            None
        }
    };
    let mut rules = Vec::new();
    let mut ok = true;
    for (i, r) in raw.rules.into_iter().enumerate() {
        let rp = p.key("rules").index(i);
        match build_rule(r, i, auth, &rp, c) {
            Some(rule) => {
                if let Some(j) = rules.iter().position(|e: &Rule| e.covers(&rule)) {
                    c.err(
                        &rp,
                        format!(
                            "never reached: every call it matches is decided earlier by {:?}",
                            rules[j].name
                        ),
                    );
                    ok = false;
                }
                rules.push(rule);
            }
            None => ok = false,
        }
    }
    match (default, ok) {
        (Some(default), true) => Some(Some(Policy { default, rules })),
        _ => None,
    }
}

fn build_rule(
    r: RawRule,
    i: usize,
    auth: Option<&AuthConfig>,
    rp: &KeyPath,
    c: &mut Collector,
) -> Option<Rule> {
    let name = r.name.unwrap_or_else(|| format!("rules[{i}]"));
    let effect = Effect::parse(&r.effect)
        .map_err(|e| c.err(&rp.key("effect"), e))
        .ok();
    let who = build_who(r.who, auth, &rp.key("who"), c);
    let has_args = r.arguments.is_some();
    let what = build_what(
        r.methods,
        [r.tools, r.prompts, r.resources],
        has_args,
        rp,
        c,
    );
    let mut arguments = Vec::new();
    for (arg, raw) in r.arguments.unwrap_or_default() {
        if let Some(cond) = build_condition(raw, &rp.key("arguments").key(&arg), c) {
            arguments.push((arg, cond));
        }
    }
    Some(Rule {
        name,
        effect: effect?,
        who: who?,
        what: what?,
        arguments,
    })
}

fn build_who(
    v: Option<Value>,
    auth: Option<&AuthConfig>,
    wp: &KeyPath,
    c: &mut Collector,
) -> Option<Who> {
    let raw = match v {
        None => return Some(Who::default()),
        Some(Value::String(s)) if s == "anyone" => return Some(Who::default()),
        Some(Value::String(s)) if s == "authenticated" => RawWho {
            authenticated: Some(true),
            ..RawWho::default()
        },
        Some(Value::String(s)) => {
            c.err(
                wp,
                format!(
                    "{s:?}: expected anyone, authenticated, or {{ scopes, groups, keys, claims }}"
                ),
            );
            return None;
        }
        Some(v) => c.deserialize::<RawWho>(v, wp)?,
    };
    let mut claims = Vec::new();
    for (name, v) in raw.claims.unwrap_or_default() {
        let values = match v {
            Value::Sequence(items) => items.into_iter().map(scalar_text).collect(),
            one => vec![scalar_text(one)],
        };
        match values.into_iter().collect::<Option<Vec<_>>>() {
            Some(vs) if !vs.is_empty() => claims.push((name, vs)),
            _ => c.err(
                &wp.key("claims").key(&name),
                "expected a value or a list of values",
            ),
        }
    }
    let who = Who {
        authenticated: raw.authenticated.unwrap_or(false),
        scopes: raw.scopes.unwrap_or_default(),
        groups: raw.groups.unwrap_or_default(),
        keys: raw.keys.unwrap_or_default(),
        claims,
    };
    never_matching_who(&who, auth, wp, c).then_some(who)
}

/// Refuses a `who` no caller of this route can ever be; `true`: it can match.
fn never_matching_who(
    who: &Who,
    auth: Option<&AuthConfig>,
    wp: &KeyPath,
    c: &mut Collector,
) -> bool {
    let before = c.error_count();
    let Some(auth) = auth else {
        if who.needs_identity() {
            c.err(
                wp,
                "never matches: the route has no `auth`, so no caller is identified",
            );
        }
        return c.error_count() == before;
    };
    let oauth = auth.oauth.is_some();
    for (key, set) in [
        ("scopes", !who.scopes.is_empty()),
        ("groups", !who.groups.is_empty()),
        ("claims", !who.claims.is_empty()),
    ] {
        if set && !oauth {
            c.err(&wp.key(key), "never matches: only OAuth tokens carry these, and the route's `auth` has no `oauth`");
        }
    }
    let known: Vec<&str> = auth
        .api_keys
        .as_ref()
        .map(|k| k.keys.iter().map(|(n, _)| n.as_str()).collect())
        .unwrap_or_default();
    for (i, k) in who.keys.iter().enumerate() {
        if !known.contains(&k.as_str()) {
            c.err(
                &wp.key("keys").index(i),
                format!("never matches: the route's `auth` has no API key named {k:?}"),
            );
        }
    }
    if !who.keys.is_empty()
        && (!who.scopes.is_empty() || !who.groups.is_empty() || !who.claims.is_empty())
    {
        c.err(
            wp,
            "never matches: a caller with an API key has no token scopes, groups or claims",
        );
    }
    c.error_count() == before
}

fn scalar_text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The (method, name) pairs of a rule; `None` (reported) when it can match nothing.
fn build_what(
    methods: Option<Vec<String>>,
    [tools, prompts, resources]: [Option<Vec<String>>; 3],
    has_args: bool,
    rp: &KeyPath,
    c: &mut Collector,
) -> Option<What> {
    let mut named: Vec<(&str, String, &str)> = Vec::new();
    let kinds = [
        ("tools", tools, &["tools/call"][..]),
        ("prompts", prompts, &["prompts/get"][..]),
        ("resources", resources, &NAMED_METHODS[2..]),
    ];
    let mut any_kind = false;
    let mut ok = true;
    for (key, list, kind_methods) in kinds {
        let Some(list) = list else { continue };
        any_kind = true;
        if list.is_empty() {
            c.err(&rp.key(key), "never matches: the list is empty");
            ok = false;
        }
        for g in list {
            for m in kind_methods {
                named.push((m, g.clone(), key));
            }
        }
    }
    if let Some(ms) = &methods {
        if ms.is_empty() {
            c.err(&rp.key("methods"), "never matches: the list is empty");
            ok = false;
        }
    }
    let method_ok = |m: &str| {
        methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|g| glob_match(g, m)))
    };
    let pairs: Vec<(String, Option<String>)> = if any_kind {
        named
            .iter()
            .filter(|(m, ..)| method_ok(m))
            .map(|(m, g, _)| (m.to_string(), Some(g.clone())))
            .collect()
    } else {
        methods
            .clone()
            .unwrap_or_else(|| vec!["*".into()])
            .into_iter()
            .map(|m| (m, None))
            .collect()
    };
    if any_kind && pairs.is_empty() && ok {
        c.err(&rp.key("methods"), "never matches: none of these methods is the method of the tools, prompts or resources named");
        ok = false;
    }
    if has_args
        && !pairs
            .iter()
            .any(|(m, _)| glob_match(m, "tools/call") || glob_match(m, "prompts/get"))
    {
        c.err(&rp.key("arguments"), "never matches: only tools/call and prompts/get carry arguments; name `tools` or `prompts`");
        ok = false;
    }
    ok.then_some(What { pairs })
}

fn build_condition(raw: RawCondition, cp: &KeyPath, c: &mut Collector) -> Option<Condition> {
    let json = |v: Value, c: &mut Collector| -> Option<serde_json::Value> {
        match v {
            Value::String(s) => Some(s.into()),
            Value::Bool(b) => Some(b.into()),
            // A float past 2^53 stands for many numbers (`values::same`: it equals none);
            // infinities and NaN are no JSON value. (YAML refuses integers past 64 bits.)
            Value::Number(n)
                if n.is_f64()
                    && n.as_f64()
                        .is_none_or(|f| !f.is_finite() || f.abs() >= super::values::EXACT) =>
            {
                c.err(cp, "never matches: a number past 2^53 written as a float (or not finite) equals no argument; write the integer, or quote it if the argument is a string");
                None
            }
            Value::Number(n) => serde_json::to_value(&n).ok(),
            _ => {
                c.err(cp, "expected a string, number or boolean");
                None
            }
        }
    };
    let given = [
        raw.equals.is_some(),
        raw.prefix.is_some(),
        raw.one_of.is_some(),
        raw.regex.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        c.err(cp, "give exactly one of equals, prefix, one_of, regex");
        return None;
    }
    if let Some(v) = raw.equals {
        return json(v, c).map(Condition::Equals);
    }
    if let Some(p) = raw.prefix {
        return Some(Condition::Prefix(p));
    }
    if let Some(vs) = raw.one_of {
        if vs.is_empty() {
            c.err(&cp.key("one_of"), "never matches: the list is empty");
            return None;
        }
        let vs: Option<Vec<_>> = vs.into_iter().map(|v| json(v, c)).collect();
        return vs.map(Condition::OneOf);
    }
    let r = raw.regex.unwrap_or_default();
    match regex::RegexBuilder::new(&r).size_limit(1 << 20).build() {
        Ok(re) => Some(Condition::Regex(re)),
        Err(e) => {
            c.err(&cp.key("regex"), format!("not a regular expression: {e}"));
            None
        }
    }
}

//! `policy:` of a host or a route: which caller may make which MCP call, with which arguments.
//! Rules are tried in order and the first that matches decides; `default` decides the calls
//! that name a tool, prompt or resource when no rule matches (the rest of the protocol, lists
//! included, is allowed unless a rule names its method). Data and checks only: evaluation is
//! `access::policy`.

use super::values::{lax_same, resolved_path, same};

/// Methods whose calls name something (a tool, a prompt, a resource): `default` decides them.
pub const NAMED_METHODS: [&str; 5] = [
    "tools/call",
    "prompts/get",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
];

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub(super) fn parse(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            other => Err(format!("{other:?}: expected allow or deny")),
        }
    }
}

/// A route's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default: Effect,
    pub rules: Vec<Rule>,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.default == other.default && self.rules == other.rules
    }
}

impl Eq for Policy {}

/// One rule: who, what, with which arguments; then allow or deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its `name`, or `rules[N]`: named in the audit log and in `check`'s messages.
    pub name: String,
    pub effect: Effect,
    pub who: Who,
    pub what: What,
    /// Conditions on `params.arguments`, all of which must hold.
    pub arguments: Vec<(String, Condition)>,
}

/// Who a rule is for; every condition given must hold (an empty `Who` is anyone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub authenticated: bool,
    /// The caller holds every one of these scopes.
    pub scopes: Vec<String>,
    /// The caller is in one of these groups.
    pub groups: Vec<String>,
    /// The caller used one of these API keys.
    pub keys: Vec<String>,
    /// Each claim has one of its values.
    pub claims: Vec<(String, Vec<String>)>,
}

impl Who {
    /// Whether only an authenticated caller can match.
    pub fn needs_identity(&self) -> bool {
        self.authenticated
            || !self.scopes.is_empty()
            || !self.groups.is_empty()
            || !self.keys.is_empty()
            || !self.claims.is_empty()
    }
}

/// What a rule is about: pairs of (method glob, name glob); a `None` name: any message of the
/// method, named or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct What {
    pub pairs: Vec<(String, Option<String>)>,
}

/// A condition on one string argument.
#[derive(Debug, Clone)]
pub enum Condition {
    Equals(serde_json::Value),
    Prefix(String),
    OneOf(Vec<serde_json::Value>),
    Regex(regex::Regex),
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Equals(a), Self::Equals(b)) => a == b,
            (Self::Prefix(a), Self::Prefix(b)) => a == b,
            (Self::OneOf(a), Self::OneOf(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Condition {}

impl Condition {
    /// Whether an argument's value meets the condition (a missing argument meets none).
    pub fn holds(&self, v: &serde_json::Value) -> bool {
        match self {
            Self::Equals(x) => same(v, x),
            Self::OneOf(xs) => xs.iter().any(|x| same(v, x)),
            Self::Prefix(p) => v.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Self::Regex(r) => v.as_str().is_some_and(|s| r.is_match(s)),
        }
    }

    /// Whether the condition may hold of what a server makes of `v`: `v` itself, or what a lax
    /// reader coerces it into (`"yes"` for `true`, `"1_000"` for `1000`; `values::lax_same`).
    /// A deny rule's conditions are read so, as the server runs with the coerced value.
    pub fn may_hold(&self, v: &serde_json::Value) -> bool {
        match self {
            Self::Equals(x) => lax_same(v, x),
            Self::OneOf(xs) => xs.iter().any(|x| lax_same(v, x)),
            // Strings only: no reader makes a string of a number or a boolean unasked. A
            // string a tool opens as a path is the path it resolves to (`/tmp/../etc/x`).
            Self::Prefix(_) | Self::Regex(_) => {
                self.holds(v)
                    || (v.as_str().and_then(resolved_path))
                        .is_some_and(|p| self.holds(&serde_json::Value::String(p)))
            }
        }
    }

    /// Whether the condition reads strings only (`prefix`, `regex`: `may_hold` adds resolved
    /// paths), not values (`equals`, `one_of`: it adds coerced spellings).
    fn reads_strings(&self) -> bool {
        matches!(self, Self::Prefix(_) | Self::Regex(_))
    }

    /// Whether every value meeting `self` meets `wider` too (conservative: `false` when unsure).
    pub(super) fn implies(&self, wider: &Self) -> bool {
        use Condition::*;
        match (self, wider) {
            _ if self == wider => true,
            (Equals(v), _) => wider.holds(v),
            (OneOf(vs), _) => vs.iter().all(|v| wider.holds(v)),
            (Prefix(p), Prefix(q)) => p.starts_with(q.as_str()),
            _ => false,
        }
    }
}

/// `*` matches any run of characters (including none); everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut t) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match t.find(part) {
            Some(i) => t = &t[i + part.len()..],
            None => return false,
        }
    }
    t.len() >= last.len() && t.ends_with(last)
}

/// Whether every text `narrow` matches is matched by `wide` (conservative).
fn glob_covers(wide: &str, narrow: &str) -> bool {
    if wide == narrow || wide == "*" {
        return true;
    }
    match wide.strip_suffix('*') {
        Some(prefix) if !prefix.contains('*') => {
            let fixed = narrow.split('*').next().unwrap_or("");
            fixed.starts_with(prefix)
        }
        _ => !narrow.contains('*') && glob_match(wide, narrow),
    }
}

impl Rule {
    /// Whether every call and caller `later` matches, `self` matches too.
    pub(super) fn covers(&self, later: &Self) -> bool {
        let (a, b) = (&self.who, &later.who);
        let who = (!a.authenticated || b.needs_identity())
            && a.scopes.iter().all(|s| b.scopes.contains(s))
            && (a.groups.is_empty()
                || (!b.groups.is_empty() && b.groups.iter().all(|g| a.groups.contains(g))))
            && (a.keys.is_empty()
                || (!b.keys.is_empty() && b.keys.iter().all(|k| a.keys.contains(k))))
            && a.claims.iter().all(|(name, values)| {
                b.claims
                    .iter()
                    .any(|(n, vs)| n == name && vs.iter().all(|v| values.contains(v)))
            });
        let what = later.what.pairs.iter().all(|(m, n)| {
            self.what.pairs.iter().any(|(wm, wn)| {
                glob_covers(wm, m)
                    && match (wn, n) {
                        (None, _) => true,
                        (Some(w), Some(n)) => glob_covers(w, n),
                        (Some(_), None) => false,
                    }
            })
        });
        // A deny rule's conditions hold of more than the value as sent (`may_hold`: coerced
        // spellings, resolved paths): only another deny rule's of the same kind are sure to
        // hold of all of it.
        let sure = |c: &Condition, cond: &Condition| {
            c.implies(cond)
                && (later.effect == Effect::Allow
                    || (self.effect == Effect::Deny && c.reads_strings() == cond.reads_strings()))
        };
        let arguments = self.arguments.iter().all(|(arg, cond)| {
            later
                .arguments
                .iter()
                .any(|(a, c)| a == arg && sure(c, cond))
        });
        who && what && arguments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_and_cover() {
        assert!(glob_match("delete_*", "delete_user"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXbY"));
        assert!(!glob_match("search", "search_docs"));
        assert!(glob_match("file:///public/*", "file:///public/a/b"));
        assert!(glob_covers("*", "x*"));
        assert!(glob_covers("delete_*", "delete_user"));
        assert!(glob_covers("delete_*", "delete_u*"));
        assert!(!glob_covers("delete_u*", "delete_*"));
        assert!(!glob_covers("search", "search*"));
    }

    #[test]
    fn conditions_hold_on_the_values_they_name() {
        let s = |x: &str| serde_json::Value::from(x);
        assert!(Condition::Equals(s("analytics")).holds(&s("analytics")));
        assert!(!Condition::Equals(s("analytics")).holds(&s("analytics ")));
        let n = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        for same_number in ["1000", "1000.0", "1e3"] {
            assert!(
                Condition::Equals(n("1000")).holds(&n(same_number)),
                "{same_number}"
            );
        }
        // Past 2^53 two integers are one f64, and two numbers to Python, Java or Go.
        let big = Condition::OneOf(vec![n("12345678901234568")]);
        assert!(big.holds(&n("12345678901234568")));
        assert!(!big.holds(&n("12345678901234567")));
        assert!(Condition::Equals(n("4096")).holds(&n("4.096e3")));
        // A float past 2^53 stands for many numbers: equal to none.
        assert!(!big.holds(&n("1.2345678901234568e16")));
        assert!(Condition::Equals(n("18446744073709551615")).holds(&n("18446744073709551615")));
        assert!(!Condition::Equals(n("-1")).holds(&n("18446744073709551615")));
        let past_u64 = Condition::Equals(n("18446744073709551616"));
        assert!(!past_u64.holds(&n("18446744073709551617")));
        assert!(!past_u64.holds(&n("18446744073709551616")));
        assert!(Condition::Prefix("/public/".into()).holds(&s("/public/a")));
        assert!(!Condition::Prefix("/public/".into()).holds(&serde_json::json!(["/public/a"])));
        let re = Condition::Regex(regex::Regex::new("^[a-z]+$").unwrap());
        assert!(
            re.holds(&s("abc")) && !re.holds(&s("abc;drop")) && !re.holds(&serde_json::json!(1))
        );
        assert!(Condition::Equals(s("/public/x")).implies(&Condition::Prefix("/public/".into())));
        assert!(
            Condition::Prefix("/public/x".into()).implies(&Condition::Prefix("/public/".into()))
        );
        assert!(!Condition::Prefix("/p".into()).implies(&Condition::Prefix("/public/".into())));
    }
}

//! The audit records of a request, written as it ends: one per JSON-RPC call of its body, with
//! the caller, the policy's decision and rule, and the call's outcome as observed.

use std::time::Duration;

use super::ctx::Ctx;
use super::EdgeProxy;
use crate::audit::{values_of, Caller, Record};
use crate::mcp::request::{Body as RequestBody, Message, Request as McpRequest};
use crate::mcp::Outcome;

/// The most argument names a record lists.
const MAX_ARGUMENTS: usize = 64;

/// How a call ended, as a record says it, with its JSON-RPC error code.
fn outcome_of(
    refused: bool,
    observed: Option<Outcome>,
    status: u16,
    request: bool,
) -> (&'static str, Option<i64>) {
    if refused {
        return ("refused", None);
    }
    match observed {
        Some(Outcome::JsonRpcError(code)) => ("jsonrpc_error", Some(code)),
        Some(o) => (o.label(), None),
        None if status == 202 && request => ("accepted", None),
        None if status == 202 || (200..300).contains(&status) => ("ok", None),
        None if status >= 400 => ("http_error", None),
        None => ("cancelled", None),
    }
}

/// A body the edge could not read (not JSON it reads, or too large to copy) still made a
/// request: one record says so, with what its headers declared.
fn unread_call(model: &McpRequest) -> Option<Message> {
    let unread = match model.body() {
        Some(RequestBody::TooLarge) => true,
        Some(RequestBody::NotJsonRpc) => !model.is_empty(),
        _ => false,
    };
    let method = model.declared.method.text().unwrap_or("_unread");
    unread.then(|| Message {
        method: Some(method.to_string()),
        name: model.declared.name.text().map(str::to_string),
        ..Message::default()
    })
}

/// The sorted argument names of a call, bounded.
fn argument_names(m: &Message) -> Vec<&str> {
    let mut names: Vec<&str> = m
        .arguments
        .iter()
        .flat_map(|a| a.keys().map(|k| crate::mcp::bounded(k)))
        .take(MAX_ARGUMENTS)
        .collect();
    names.sort_unstable();
    names
}

impl EdgeProxy {
    /// Queues the records of this request's calls (none unless the audit log is on and the
    /// body was read).
    pub(super) fn audit_calls(
        &self,
        ctx: &Ctx,
        status: u16,
        elapsed: Duration,
        outcomes: &[Option<Outcome>],
    ) {
        if !self.audit.enabled() {
            return;
        }
        let (Some(model), Some(snap)) = (ctx.mcp.as_ref(), ctx.snap.as_ref()) else {
            return;
        };
        let cfg = &snap.config.audit;
        if !cfg.enabled() {
            // Turned on by a reload after this request was planned: its calls' arguments were
            // not built for it. The next request is recorded.
            return;
        }
        let request_id = format!("{:016x}", rand::random::<u64>());
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let refused = ctx.verdicts.iter().any(|v| !v.allowed);
        let replica = match (&ctx.pool, ctx.replica) {
            (Some(p), Some(i)) => Some(p.url(i).url.as_str()),
            _ => None,
        };
        // Set by access control for every routed request (the real client's behind trusted
        // proxies); a request with a body model was routed.
        let address = ctx.client_ip.map(|ip| ip.to_string());
        let policy = ctx.route_entry().is_some_and(|r| r.config.policy.is_some());
        let declared = unread_call(model);
        let messages = match &declared {
            Some(d) => std::slice::from_ref(d),
            None => model.messages(),
        };
        let mut call = 0;
        for (i, m) in messages.iter().enumerate() {
            let Some(method) = m.method.as_deref() else {
                continue;
            };
            let verdict = ctx.verdicts.get(i);
            let observed = outcomes.get(call).copied().flatten();
            call += 1;
            let (outcome, error_code) = outcome_of(refused, observed, status, m.id.is_some());
            let record = Record {
                time: time.clone(),
                request_id: &request_id,
                host: ctx.host_label(),
                route: ctx.route_label(),
                caller: Caller::of(ctx.identity.as_ref(), address.clone()),
                // Methods are the client's text too: bounded like names.
                method: crate::mcp::bounded(method),
                id: m.id.as_deref().map(crate::mcp::bounded),
                name: m.name.as_deref().map(crate::mcp::bounded),
                arguments: argument_names(m),
                values: m
                    .arguments
                    .as_ref()
                    .and_then(|a| values_of(cfg, m.name.as_deref(), a)),
                repeated_argument: m.repeated_argument,
                decision: match verdict {
                    _ if !policy => "none",
                    Some(v) if !v.allowed => "deny",
                    Some(_) => "allow",
                    // Refused before the policy was asked (header validation, a budget).
                    None => "none",
                },
                rule: verdict.and_then(|v| v.rule.as_deref()),
                outcome,
                error_code,
                status,
                latency_ms: elapsed.as_secs_f64() * 1000.0,
                replica,
            };
            self.audit.send(record.line());
        }
    }
}

//! `body_phase`: the body against its limit, and, where the route reads it, into the
//! request's one MCP model. A body held back (header validation, tool budgets) is forwarded
//! whole once its checks pass; a refusal is the answer `proxy_failed` writes, and nothing of
//! the body reaches the upstream.

use bytes::Bytes;
use pingora::prelude::*;
use pingora::Error;

use super::ctx::Ctx;
use super::EdgeProxy;
use crate::access;
use crate::mcp::request::Body as RequestBody;
use crate::reply::Answer;

impl EdgeProxy {
    pub(super) fn body_phase(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked bodies declare no length: counted as they come.
        ctx.body.seen += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body.seen > ctx.body.limit {
            ctx.count_refused("body_too_large");
            return Err(Error::explain(HTTPStatus(413), "request body too large"));
        }
        let Some(model) = ctx.mcp.as_mut() else {
            return Ok(());
        };
        if ctx.body.hold {
            if let Some(chunk) = body.take() {
                if model.hold(&chunk).is_err() {
                    // Its calls could not be checked: refused, never forwarded unread.
                    let answer = Answer::text(
                        413,
                        "request body too large for the MCP checks of this route\n",
                    )
                    .refused("mcp_body_too_large");
                    return Err(late(ctx, answer));
                }
            }
            if !end_of_stream {
                // Held: an empty chunk, which the loop skips. `None` would tell it the body
                // ended (it then closed a chunked body empty, or left a Content-Length one
                // unwritten).
                *body = Some(Bytes::new());
                return Ok(());
            }
        } else if let Some(chunk) = body.as_deref() {
            model.feed(chunk);
        }
        if !end_of_stream {
            return Ok(());
        }
        model.finish();
        if let Some(x) = ctx.exchange.as_mut() {
            x.request_body(model);
        }
        if let Some(answer) = unreadable(ctx)
            .or_else(|| self.validate(ctx))
            .or_else(|| authorize(ctx))
        {
            // Refused, but it was a request: the route's budget pays for it.
            let _ = self.charge(ctx, false);
            return Err(late(ctx, answer));
        }
        self.charge(ctx, true)?;
        if ctx.body.hold {
            ctx.body.hold = false;
            let held = ctx.mcp.as_mut().map(|m| m.take_bytes()).unwrap_or_default();
            *body = Some(Bytes::from(held));
        }
        Ok(())
    }

    /// The MCP headers against the body's one model (-32020).
    fn validate(&self, ctx: &Ctx) -> Option<Answer> {
        let model = ctx.mcp.as_ref()?;
        let strict = ctx.body.validate?;
        let m = model.validate(strict).err()?;
        let body = crate::mcp::mismatch_body(&m.id, m.header);
        Some(Answer::json(400, body).refused("mcp_header_mismatch"))
    }

    /// Spends the caller's budgets held back for the body: the route's, and each tool call's
    /// (`read`: the body's calls are known). Also called when the request ends without its
    /// body completing, so that every request spends the route's budget.
    pub(super) fn charge(&self, ctx: &mut Ctx, read: bool) -> Result<()> {
        match self.spend_held(ctx, read) {
            Some(refused) => Err(late(ctx, refused)),
            None => Ok(()),
        }
    }

    /// [`EdgeProxy::charge`]'s spending: `Some`: the 429 to answer.
    pub(super) fn spend_held(&self, ctx: &mut Ctx, read: bool) -> Option<Answer> {
        if !std::mem::take(&mut ctx.body.charge) {
            return None;
        }
        let budget = ctx.budget.as_ref()?;
        let tools: Vec<&str> = match (read, ctx.mcp.as_ref()) {
            (true, Some(model)) => model.tools_called().collect(),
            _ => Vec::new(),
        };
        match budget.spend(&self.limiter, &tools) {
            Ok(headers) => {
                ctx.rate_headers = headers;
                None
            }
            Err(refused) => {
                let cors = access::cors_headers(ctx.origin.as_deref());
                Some(refused.with_headers(cors))
            }
        }
    }
}

/// A body held for checks (a policy, tool budgets, header validation) that the edge cannot read
/// as JSON-RPC: refused, never forwarded unchecked. It may still be one a server reads and runs
/// (NaN, UTF-16, a lone surrogate in an id, which JavaScript's `JSON.parse` takes), so forwarded
/// it would be a call no policy judged and no budget paid for.
fn unreadable(ctx: &Ctx) -> Option<Answer> {
    let model = ctx.mcp.as_ref()?;
    if !ctx.body.hold || !matches!(model.body(), Some(RequestBody::NotJsonRpc)) || model.is_empty()
    {
        return None;
    }
    let reason = if ctx.body.policy.is_some() {
        "policy_unreadable"
    } else {
        "mcp_unreadable"
    };
    let body = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: the body is not JSON-RPC the edge can read"}}"#;
    Some(Answer::json(400, body).refused(reason))
}

/// The route's policy on every message of the body; `Some`: the refusal to answer.
fn authorize(ctx: &mut Ctx) -> Option<Answer> {
    let metadata = ctx.body.policy.as_deref()?;
    let route = ctx.route_entry()?;
    let policy = route.config.policy.as_ref()?;
    let model = ctx.mcp.as_ref()?;
    let messages = model.messages();
    let oauth = route
        .config
        .auth
        .as_ref()
        .is_some_and(|a| a.oauth.is_some());
    let (verdicts, refusal) = access::policy::check(policy, ctx.identity.as_ref(), messages, oauth);
    let answer =
        refusal.map(|r| access::policy_refusal(&r, &route.config, metadata, ctx.origin.as_deref()));
    ctx.verdicts = verdicts;
    answer
}

/// A refusal decided once the body was read: the request fails, and `proxy_failed` writes
/// `answer`.
fn late(ctx: &mut Ctx, answer: Answer) -> Box<pingora::Error> {
    let status = answer.status;
    ctx.late = Some(answer);
    Error::explain(HTTPStatus(status), "refused once the body was read")
}

//! `response_head` and `response_chunk`: the upstream's answer on its way out. Hop-by-hop
//! headers dropped, rate-limit headers added, streams marked unbuffered, session ids sealed for
//! the replica that issued them (and rewritten in a legacy stream's `endpoint` event), and the
//! MCP outcomes observed as they pass.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession as Session;
use pingora::Error;

use super::ctx::Ctx;
use super::upstream::hop_by_hop;
use super::{EdgeProxy, SESSION_HEADER};
use crate::access::lists::ListFilter;
use crate::metrics;
use crate::upstream::affinity::EndpointRewriter;

fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        })
}

/// Under a policy, list answers lose the entries the caller may not call: every event stream is
/// read event by event, a JSON answer held when its request asked for a list.
fn filter_lists(resp: &mut ResponseHeader, ctx: &mut Ctx, is_stream: bool) {
    let Some(policy) = ctx.route_entry().and_then(|r| r.config.policy.clone()) else {
        return;
    };
    if !resp.status.is_success() {
        return;
    }
    let asked_list = ctx.mcp.as_ref().is_some_and(|m| {
        m.messages().iter().any(|m| {
            matches!(
                m.method.as_deref(),
                Some("tools/list" | "prompts/list" | "resources/list")
            )
        })
    });
    let coded = resp
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if !asked_list && (!is_stream || coded) {
        return;
    }
    // The length changes: the loop frames the body (chunked).
    resp.remove_header(&header::CONTENT_LENGTH);
    let sse = is_stream && !coded;
    if coded {
        // Compressed although it was asked not to be: the list cannot be read, and the error
        // that replaces it is not compressed.
        resp.remove_header(&header::CONTENT_ENCODING);
        let _ = resp.insert_header(header::CONTENT_TYPE, "application/json");
    }
    ctx.lists = Some(ListFilter::new(
        policy,
        ctx.identity.clone(),
        sse,
        asked_list,
    ));
}

/// An interim (1xx) response on its way out: no hop-by-hop headers, and no session id (one is
/// only ever given, sealed, on the final response).
pub(super) fn interim_head(resp: &mut ResponseHeader) {
    for h in hop_by_hop(&resp.headers) {
        resp.remove_header(&h);
    }
    resp.remove_header(SESSION_HEADER);
}

impl EdgeProxy {
    pub(super) fn response_head(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for h in hop_by_hop(&resp.headers) {
            resp.remove_header(&h);
        }
        for (name, value) in &ctx.rate_headers {
            resp.insert_header(name.clone(), value.as_str())?;
        }
        let is_stream = is_event_stream(resp);
        if let Some(x) = ctx.exchange.as_mut() {
            let ct = resp
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            x.response(resp.status.as_u16(), ct);
        }
        if is_stream {
            // Never buffered, cached or compressed on the way out, here or further down.
            resp.insert_header("x-accel-buffering", "no")?;
            if !resp.headers.contains_key(header::CACHE_CONTROL) {
                resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
            }
            if !ctx.stream_open {
                ctx.stream_open = true;
                metrics::get()
                    .open_streams
                    .with_label_values(&[ctx.host_label()])
                    .inc();
            }
        }
        self.seal_session(session, resp, ctx, is_stream)?;
        filter_lists(resp, ctx, is_stream);
        Ok(())
    }

    /// A replicated route's session ids name their replica, sealed so that no client can
    /// choose or read it.
    fn seal_session(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
        is_stream: bool,
    ) -> Result<()> {
        let (Some(pool), Some(i)) = (&ctx.pool, ctx.replica) else {
            return Ok(());
        };
        if !pool.is_replicated() {
            return Ok(());
        }
        let replica = pool.url(i).url.clone();
        if let Some(id) = resp
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            let sealed = self
                .sealer
                .seal(&replica, id)
                .ok_or_else(|| Error::explain(InternalError, "sealing session id"))?;
            resp.insert_header(
                SESSION_HEADER,
                HeaderValue::from_str(&sealed)
                    .map_err(|e| Error::because(InternalError, "session header", e))?,
            )?;
        }
        let legacy_stream = is_stream
            && session.req_header().method == http::Method::GET
            && !session.req_header().headers.contains_key(SESSION_HEADER);
        if legacy_stream {
            // The first event's length changes: the loop frames the body.
            resp.remove_header(&header::CONTENT_LENGTH);
            ctx.rewriter = Some(EndpointRewriter::new(replica));
        }
        Ok(())
    }

    pub(super) fn response_chunk(
        &self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) {
        if let Some(rw) = ctx.rewriter.as_mut() {
            let chunk = body.take().unwrap_or_default();
            let out = rw.feed(&self.sealer, &chunk, end_of_stream);
            *body = Some(Bytes::from(out));
        }
        if let Some(f) = ctx.lists.as_mut() {
            let chunk = body.take().unwrap_or_default();
            let before = f.unreadable;
            let out = f.feed(&chunk, end_of_stream);
            *body = Some(Bytes::from(out));
            if f.unreadable > before {
                tracing::warn!(host = %ctx.host_label(), "a list answer could not be read to filter it: not shown");
                ctx.count_refused("list_unreadable");
            }
        }
        // What the client sees (session ids as sealed for it, lists as filtered for it) is what
        // is observed.
        let Some(t) = ctx.target.as_ref() else {
            return;
        };
        if let (Some(x), Some(route)) = (ctx.exchange.as_mut(), t.route.map(|i| &t.entry.routes[i]))
        {
            let chunk = body.as_deref().unwrap_or_default();
            x.response_chunk(chunk, end_of_stream, &route.names, &self.legacy);
        }
    }
}

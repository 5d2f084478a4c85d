//! How a request ends: `connect_failed` and `proxy_error` (another replica, once, outside a
//! session), `proxy_failed` (the answer decided after the body, or the status of a failure), and
//! `log_request` (metrics, the access line, the MCP outcomes still open).

use pingora::prelude::*;
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorSource};

use super::ctx::Ctx;
use super::EdgeProxy;
use crate::auth::Identity;
use crate::mcp::Outcome;
use crate::metrics;
use crate::observe::LogFields;
use crate::upstream::trust;

fn upstream_reason(e: &Error) -> &'static str {
    // A TLS reason anywhere in the chain: a failed handshake, or the alert a TLS 1.3 server
    // sends on the first read when it refuses our client certificate.
    if let Some(r) = trust::reason_in(e.root_cause()) {
        return r;
    }
    match e.etype() {
        Custom(reason) => reason,
        ConnectTimedout => "connect_timeout",
        ConnectRefused => "connect_refused",
        ConnectNoRoute | ConnectError | SocketError => "connect_error",
        ReadTimedout => "read_timeout",
        WriteTimedout => "write_timeout",
        ConnectionClosed | ReadError | WriteError => "connection_closed",
        InvalidHTTPHeader | H1Error | H2Error | InvalidH2 => "protocol_error",
        TLSHandshakeFailure | InvalidCert | HandshakeError => "tls",
        _ => "other",
    }
}

/// The status a failed request is answered with (0: the client is gone).
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ConnectTimedout | ReadTimedout => 504,
                _ => 502,
            },
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                _ => 400,
            },
            _ => 500,
        },
    }
}

/// The request's series: by status class and duration (its route's, made once), and the
/// stream it held open.
fn count_request(ctx: &Ctx, status: u16, elapsed: std::time::Duration) {
    let m = metrics::get();
    let labels = [ctx.host_label(), ctx.route_label()];
    match ctx.route_entry() {
        Some(route) => {
            route.series.requests[metrics::status_index(status)].inc();
            route.series.duration.observe(elapsed.as_secs_f64());
        }
        None => {
            m.requests
                .with_label_values(&[labels[0], labels[1], metrics::status_class(status)])
                .inc();
            m.duration
                .with_label_values(&labels)
                .observe(elapsed.as_secs_f64());
        }
    }
    if ctx.stream_open {
        m.open_streams.with_label_values(&[labels[0]]).dec();
        m.stream_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Has the loop try the request once more, on another replica (a new pick), when it is outside
/// a session, tries remain and another replica is up.
fn retry_elsewhere(ctx: &mut Ctx, pool: &crate::upstream::Pool, e: &mut Error) {
    if !ctx.in_session && ctx.retried + 1 < pool.upstream.urls.len() && pool.up_count() > 0 {
        ctx.retried += 1;
        ctx.replica = None;
        e.set_retry(true);
    }
}

/// Takes replica `i` out of the round robin (once: one log line), for `why`.
fn take_out(ctx: &Ctx, pool: &crate::upstream::Pool, i: usize, why: &str, reason: &str) {
    if pool.mark_down(i) {
        metrics::get()
            .replica_up
            .with_label_values(&[ctx.host_label(), ctx.route_label(), &pool.url(i).url])
            .set(0);
        tracing::warn!(
            host = %ctx.host_label(),
            replica = %pool.url(i).url,
            reason,
            "replica out of the round robin for {}s: {why}",
            crate::upstream::DOWN_FOR.as_secs()
        );
    }
}

impl EdgeProxy {
    pub(super) fn connect_failed(&self, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let (Some(pool), Some(i)) = (ctx.pool.clone(), ctx.replica) else {
            return e;
        };
        let unreachable = matches!(
            e.etype(),
            ConnectRefused | ConnectTimedout | ConnectError | ConnectNoRoute
        );
        if !unreachable {
            return e;
        }
        take_out(ctx, &pool, i, "its connection failed", "connect");
        // Nothing was sent yet: a request outside a session may try another replica.
        retry_elsewhere(ctx, &pool, &mut e);
        e
    }

    /// An error once the upstream connection was made. A replica that took the whole request and
    /// then gave no response header (the response-header timeout) or dropped the connection
    /// leaves the round robin like one that refused it; a request whose replay is safe (an
    /// idempotent method, its body still in pingora's retry buffer, nothing answered yet,
    /// outside a session) is tried once more on another replica. A reused connection the
    /// upstream had closed is the loop's to retry, and no fault of the replica.
    pub(super) fn proxy_error(
        &self,
        session: &Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        let replayable = session.req_header().method.is_idempotent()
            && !session.retry_buffer_truncated()
            && session.response_written().is_none();
        // The pooled connection was closed under us: the upstream's side, not a client gone.
        let stale = reused
            && e.esource() == &ErrorSource::Upstream
            && matches!(e.etype(), ConnectionClosed | ReadError | WriteError);
        let fault = e.esource() == &ErrorSource::Upstream
            && !stale
            && (ctx.request_sent || e.etype() != &ReadTimedout)
            && session.response_written().is_none()
            && matches!(
                e.etype(),
                ReadTimedout
                    | ConnectionClosed
                    | ReadError
                    | WriteError
                    | H1Error
                    | InvalidHTTPHeader
            );
        if stale {
            e.retry.decide_reuse(reused);
            if !replayable {
                e.set_retry(false);
            }
            return e;
        }
        e.set_retry(false);
        let (Some(pool), Some(i)) = (ctx.pool.clone(), ctx.replica) else {
            return e;
        };
        if !fault || !pool.is_replicated() {
            return e;
        }
        let why = "it took a request and did not answer";
        take_out(ctx, &pool, i, why, upstream_reason(&e));
        if replayable {
            retry_elsewhere(ctx, &pool, &mut e);
        }
        e
    }

    /// The answer to a request that failed (unless a response was already under way). The
    /// connection is closed after it, and the answer says so: a client that reused it would see
    /// its next request reset.
    pub(super) async fn proxy_failed(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) {
        if let Some(answer) = ctx.late.take() {
            // Decided once the body was read (or while it came).
            if !super::answer::answered(session) {
                session.set_keepalive(None);
                let _ = super::answer::send(session, ctx, answer).await;
            }
        } else {
            super::answer::send_error(session, failure_status(e)).await;
        }
    }

    pub(super) fn log_request(&self, session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
        // A request whose body never completed (refused, too large, abandoned) still spends
        // the route's budget it was only checked against.
        let _ = self.charge(ctx, false);
        let m = metrics::get();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let (rpc, outcomes) = self.finish_exchange(e, ctx);
        self.audit_calls(ctx, status, elapsed, &outcomes);
        let labels = [ctx.host_label(), ctx.route_label()];
        count_request(ctx, status, elapsed);
        let error_reason = e
            .filter(|e| e.esource() == &ErrorSource::Upstream)
            .map(upstream_reason);
        if let Some(reason) = error_reason {
            m.upstream_errors
                .with_label_values(&[labels[0], labels[1], reason])
                .inc();
        }
        let upstream = match (&ctx.pool, ctx.replica) {
            (Some(p), Some(i)) => p.url(i).url.as_str(),
            _ => "-",
        };
        if let (None, Some(p), Some(i)) = (e, &ctx.pool, ctx.replica) {
            if p.is_replicated() {
                p.mark_up(i);
                m.replica_up
                    .with_label_values(&[labels[0], labels[1], &p.url(i).url])
                    .set(i64::from(p.is_up(i)));
            }
        }
        let req = session.req_header();
        if let (Some(e), Some(reason)) = (e, error_reason) {
            tracing::warn!(
                host = %labels[0],
                method = %req.method,
                path = %req.uri.path(),
                upstream,
                reason,
                error = %e,
                "upstream request failed"
            );
        }
        tracing::info!(
            target: "access",
            host = %labels[0],
            method = %req.method,
            // The path only: query strings can carry secrets (tokens, session ids).
            path = %req.uri.path(),
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream,
            bytes = session.body_bytes_sent(),
            client = session.client_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = ctx.tls,
            caller = ctx.identity.as_ref().and_then(Identity::caller).unwrap_or_default(),
            error = error_reason.unwrap_or(""),
            mcp_method = rpc.method,
            mcp_tool = rpc.tool,
            rpc_id = rpc.id,
            rpc_error = rpc.error,
        );
    }

    /// The MCP calls still unanswered are counted by how the exchange ended.
    fn finish_exchange(
        &self,
        e: Option<&Error>,
        ctx: &mut Ctx,
    ) -> (LogFields, Vec<Option<Outcome>>) {
        let Some(mut x) = ctx.exchange.take() else {
            return Default::default();
        };
        if let Some(route) = ctx.route_entry() {
            x.finish(e.is_some(), &route.names, &self.legacy);
        }
        (x.log, x.outcomes)
    }
}

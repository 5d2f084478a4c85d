//! The HTTP/1 proxy loop: one request to one upstream, in the connection's own task.
//!
//! pingora's server keeps what it does well: listeners, TLS, the connection gate, the header
//! parser and its limits and deadlines, keep-alive, the upstream connection pool. Each HTTP/1
//! request then runs here instead of in pingora-proxy's loop: the phases of this folder in
//! order, the request body and the response relayed by one `select!` (no task pipe between two
//! halves, no cache or module machinery per request). HTTP/2 connections stay pingora-proxy's.
//!
//! ```text
//! head      read_request (pingora: parse, limits, deadline)   400/431 as before, CONNECT 405
//! request   request_phase                                      answered here, or on
//! upstream  peer, pooled connection, upstream_head             another replica on a failed
//! relay     body → upstream, response → client, both ways      connection (connect_failed,
//! end       fail_to_proxy's answer, log, keep-alive            proxy_error)
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Method, Version};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::Error;

use super::{Ctx, EdgeProxy};

/// How long a connection parked between requests may still deliver one once the service
/// stops (pingora-proxy's value): a request already on its way is answered, with `close`.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// The proxy listeners' application: HTTP/1 here, HTTP/2 to pingora-proxy.
pub struct EdgeApp {
    edge: EdgeProxy,
    h2: Arc<HttpProxy<EdgeProxy>>,
    upstreams: Connector,
    max_retries: usize,
}

impl EdgeApp {
    /// `h2` carries the listeners' options (its `server_options`, `h2_options`).
    pub fn new(edge: EdgeProxy, h2: HttpProxy<EdgeProxy>, conf: &ServerConf) -> Self {
        Self {
            edge,
            h2: Arc::new(h2),
            upstreams: Connector::new(Some(ConnectorOptions::from_server_conf(conf))),
            max_retries: conf.max_retries,
        }
    }
}

#[async_trait]
impl HttpServerApp for EdgeApp {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if session.as_http1().is_none() {
            return self.h2.process_new_http(session, shutdown).await;
        }
        self.serve(session, shutdown).await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.h2.server_options.as_ref()
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.h2.h2_options.clone()
    }

    async fn http_cleanup(&self) {
        self.h2.http_cleanup().await;
    }
}

impl EdgeApp {
    /// One request of an HTTP/1 connection; `Some`: the connection for the next one.
    async fn serve(
        &self,
        mut ds: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !read_head(&mut ds, shutdown).await {
            return None;
        }
        if ds.req_header().method == Method::CONNECT {
            // Not proxied (its framing is not a request's): pingora's answer.
            let _ = ds.respond_error(405).await;
            ds.shutdown().await;
            return None;
        }
        if *shutdown.borrow() {
            ds.set_keepalive(None);
        }
        let mut ctx = Ctx::new();
        let (mut reuse, error) = match self.edge.request_phase(&mut ds, &mut ctx).await {
            Ok(true) => (true, None),
            Ok(false) => self.forward(&mut ds, &mut ctx).await,
            Err(e) => (false, Some(e)),
        };
        if let Some(e) = error.as_deref() {
            let failed = self.edge.proxy_failed(&mut ds, e, &mut ctx).await;
            reuse &= failed.can_reuse_downstream;
        }
        self.edge.log_request(&ds, error.as_deref(), &mut ctx);
        if !reuse {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&ds);
        let stream = ds.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }

    /// The request to its upstream, on another replica when the first one's connection fails
    /// (`connect_failed` and `proxy_error` decide). `(reuse the client connection, error)`.
    async fn forward(&self, ds: &mut ServerSession, ctx: &mut Ctx) -> (bool, Option<Box<Error>>) {
        // What a retry replays: the body read so far (up to pingora's buffer).
        ds.enable_retry_buffering();
        let mut last = (false, None);
        for _ in 0..self.max_retries.max(1) {
            last = self.attempt(ds, ctx).await;
            if !last.1.as_ref().is_some_and(|e| e.retry()) {
                break;
            }
        }
        last
    }

    async fn attempt(&self, ds: &mut ServerSession, ctx: &mut Ctx) -> (bool, Option<Box<Error>>) {
        let peer = match self.edge.peer(ctx).await {
            Ok(p) => p,
            Err(e) => return (false, Some(e)),
        };
        let (mut up, reused) = match self.upstreams.get_http_session(&*peer).await {
            Ok(s) => s,
            Err(mut e) => {
                e.as_up();
                return (false, Some(self.edge.connect_failed(ctx, e).into_up()));
            }
        };
        up.read_timeout = peer.options.read_timeout;
        up.write_timeout = peer.options.write_timeout;
        let (ds_reuse, up_reuse, error) = match self.relay(ds, &mut up, ctx).await {
            Ok((ds_reuse, up_reuse)) => (ds_reuse, up_reuse, None),
            Err(e) => (false, false, Some(e)),
        };
        if up_reuse {
            (self.upstreams)
                .release_http_session(up, &*peer, peer.idle_timeout())
                .await;
        }
        let error = error.map(|e| self.edge.proxy_error(ds, e, ctx, reused));
        (ds_reuse, error)
    }

    /// The request head, the body and the response, relayed both ways at once (an upstream
    /// may answer before the body ends). `Ok((client reusable, upstream reusable))`.
    async fn relay(
        &self,
        ds: &mut ServerSession,
        up: &mut Upstream,
        ctx: &mut Ctx,
    ) -> Result<(bool, bool)> {
        let head = self.upstream_head(ds, ctx)?;
        up.write_request_header(head)
            .await
            .map_err(|e| e.into_up())?;
        let mut request_done = false;
        let buffered = ds.get_retry_buffer();
        if buffered.is_some() || ds.is_body_empty() {
            let done = ds.is_body_done();
            request_done = self.body(ds, up, buffered, done, ctx).await?;
        }
        let mut response_done = false;
        while !request_done || !response_done {
            tokio::select! {
                // With the body read, an idle read: it notices a client that goes away.
                body = ds.read_body_or_idle(request_done) => {
                    let body = body.map_err(|e| e.into_down())?;
                    let done = ds.is_body_done();
                    request_done = self.body(ds, up, body, done, ctx).await?;
                }
                task = up.read_response_task(), if !response_done => {
                    let task = task.map_err(|e| e.into_up())?;
                    response_done = self.response(ds, task, ctx).await?;
                }
            }
        }
        // Both messages complete: the pool keeps the upstream connection if it may
        // (`release_http_session` asks it).
        Ok((true, true))
    }

    /// The upstream's request head: the client's, as the edge changes it (`upstream_head`),
    /// in HTTP/1.1 origin form.
    fn upstream_head(&self, ds: &ServerSession, ctx: &mut Ctx) -> Result<Box<RequestHeader>> {
        let mut req = Box::new(ds.req_header().clone());
        req.set_version(Version::HTTP_11);
        self.edge.upstream_head(ds.client_addr(), &mut req, ctx)?;
        if req.uri.authority().is_some() {
            // An absolute-form target: the upstream gets the path, and the Host just set.
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let uri = pq
                .parse::<http::Uri>()
                .map_err(|e| Error::because(InvalidHTTPHeader, "request target", e))?;
            req.set_uri(uri);
        }
        Ok(req)
    }

    /// One piece of the request body through `request_body_filter` to the upstream;
    /// `Ok(true)`: the body is complete.
    async fn body(
        &self,
        ds: &mut ServerSession,
        up: &mut Upstream,
        mut data: Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let end = end || data.is_none();
        if ds.was_upgraded() {
            return Error::e_explain(H1Error, "request body after an upgrade");
        }
        self.edge.body_phase(&mut data, end, ctx)?;
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            up.write_body(&d).await.map_err(|e| e.into_up())?;
        }
        if end {
            up.finish_body().await.map_err(|e| e.into_up())?;
        }
        Ok(end)
    }

    /// One piece of the response through the response filters to the client; `Ok(true)`: the
    /// response is complete.
    async fn response(&self, ds: &mut ServerSession, task: HttpTask, ctx: &mut Ctx) -> Result<bool> {
        match task {
            HttpTask::Header(mut resp, end) => {
                if resp.status == 101 {
                    // The request's Upgrade never reached the upstream (hop-by-hop).
                    return Err(Error::explain(InvalidHTTPHeader, "101 to a request that asked no upgrade").into_up());
                }
                if resp.status.is_informational() {
                    // 100 Continue (the client's Expect went through) and the like: passed on.
                    ds.write_response_header(resp).await.map_err(|e| e.into_down())?;
                    return Ok(false);
                }
                chunked_unless_framed(ds.req_header(), &mut resp, end);
                self.edge.response_head(ds, &mut resp, ctx)?;
                ds.write_response_header(resp).await.map_err(|e| e.into_down())?;
                if end {
                    ds.finish_body().await.map_err(|e| e.into_down())?;
                }
                Ok(end)
            }
            HttpTask::Body(mut data, end) => {
                self.edge.response_chunk(&mut data, end, ctx);
                let data = data.unwrap_or_default();
                ds.write_response_body(data, end).await.map_err(|e| e.into_down())?;
                Ok(end)
            }
            HttpTask::Done | HttpTask::Trailer(_) => {
                let mut none = None;
                self.edge.response_chunk(&mut none, true, ctx);
                let data = none.unwrap_or_default();
                ds.write_response_body(data, true).await.map_err(|e| e.into_down())?;
                Ok(true)
            }
            HttpTask::Failed(e) => Err(e),
            HttpTask::UpgradedBody(..) => {
                Err(Error::explain(H1Error, "upgraded body without an upgrade").into_up())
            }
        }
    }
}

/// A response without Content-Length or chunked framing (HTTP/1.0 style, read to the close) is
/// sent chunked, so the client's connection stays reusable; as pingora-proxy does.
fn chunked_unless_framed(req: &RequestHeader, resp: &mut ResponseHeader, end: bool) {
    let no_body = req.method == Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
    let framed = resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        || resp.headers.contains_key(http::header::CONTENT_LENGTH);
    if !no_body && !framed && !end {
        resp.set_version(Version::HTTP_11);
        let _ = resp.insert_header(http::header::TRANSFER_ENCODING, "chunked");
    }
}

/// Reads the request head. A connection parked between requests when the service stops gets
/// [`SHUTDOWN_LINGER`] more for a request already on its way. `false`: no request (closed,
/// refused with 400/431, or dropped at shutdown).
async fn read_head(ds: &mut ServerSession, shutdown: &ShutdownWatch) -> bool {
    let mut stop = shutdown.clone();
    let res = {
        let read = ds.read_request();
        tokio::pin!(read);
        tokio::select! {
            biased;
            res = &mut read => res,
            _ = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
                match tokio::time::timeout(SHUTDOWN_LINGER, &mut read).await {
                    Ok(res) => res,
                    Err(_) => return false,
                }
            }
        }
    };
    match res {
        Ok(true) => true,
        Ok(false) => false,
        Err(e) => {
            if matches!(e.etype(), InvalidHTTPHeader) {
                // 431 when the header went over the limits (pingora-core patch 7).
                let _ = ds.respond_error(400).await;
            }
            ds.shutdown().await;
            false
        }
    }
}

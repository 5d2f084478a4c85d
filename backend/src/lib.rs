//! mcp-docs: a documentation MCP server. Full-text search (tantivy) over a directory of Markdown
//! and text files, served over Streamable HTTP (`/mcp`, rmcp) and the legacy HTTP+SSE transport
//! (`/sse` + `/message`) on one port.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod index;
pub mod legacy;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::routing::{get, post};
use axum::Router;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::index::Docs;
use crate::legacy::Legacy;
use crate::server::DocsServer;

/// How the HTTP side behaves.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Host header values accepted on `/mcp` (DNS-rebinding protection); empty: any.
    pub allowed_hosts: Vec<String>,
    /// Comment keep-alive on SSE streams.
    pub keep_alive: Duration,
}

/// The whole HTTP app: `/mcp`, `/sse`, `/message`, `/healthz`.
pub fn app(docs: Arc<ArcSwap<Docs>>, opts: &HttpOptions, shutdown: CancellationToken) -> Router {
    let server = DocsServer::new(docs.clone());
    let mut config = StreamableHttpServerConfig::default()
        .with_sse_keep_alive(Some(opts.keep_alive))
        .with_cancellation_token(shutdown.child_token());
    config = if opts.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(opts.allowed_hosts.clone())
    };
    let for_mcp = server.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(for_mcp.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let legacy = Legacy::new(server, opts.keep_alive, shutdown);
    let sessions = legacy.clone();
    // rmcp answers a session DELETE with 202; the MCP Python SDK takes anything but 200/204
    // (or 405) as a failed termination and logs it. The session is gone either way: 200.
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::map_response(
            |method: axum::http::Method, mut rsp: axum::response::Response| async move {
                if method == axum::http::Method::DELETE
                    && rsp.status() == axum::http::StatusCode::ACCEPTED
                {
                    *rsp.status_mut() = axum::http::StatusCode::OK;
                }
                rsp
            },
        ));
    Router::new()
        .nest_service("/mcp", mcp)
        .route("/sse", get(legacy::sse))
        .route("/message", post(legacy::message))
        .with_state(legacy)
        .route(
            "/healthz",
            get(move || {
                let body = serde_json::json!({
                    "status": "ok",
                    "pages": docs.load().pages.len(),
                    "legacy_sessions": sessions.open_sessions(),
                });
                async move { axum::Json(body) }
            }),
        )
}

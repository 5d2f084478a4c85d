//! The MCP surface: tools `search_docs`, `get_doc`, `list_docs`, and every page as a resource.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListResourcesResult, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Resource, ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::index::{Docs, Hit, MAX_LIMIT};

const URI_PREFIX: &str = "docs://";

const INSTRUCTIONS: &str = "This server answers questions about a documentation set. \
Use `search_docs` with a few keywords to find relevant pages (ranked, with snippets), then \
`get_doc` with a hit's `path` to read the whole page before answering. `list_docs` lists pages, \
optionally under a path prefix. Every page is also a resource (`docs://PATH`). Quote the page \
path you relied on.";

/// The documentation server, shared by every session; the corpus behind it can be swapped.
#[derive(Clone)]
pub struct DocsServer {
    docs: Arc<ArcSwap<Docs>>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Keywords or a question; "quoted phrases", +required and -excluded words work.
    pub query: String,
    /// Most hits to return, 1 to 50 (default 10).
    #[schemars(range(min = 1, max = 50))]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetDocArgs {
    /// A page path as given by `search_docs` or `list_docs` (for example `guides/install.md`).
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    /// Only pages whose path starts with this (for example `guides/`).
    pub prefix: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchResult {
    pub query: String,
    pub hits: Vec<Hit>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Listed {
    pub path: String,
    pub title: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListResult {
    pub pages: Vec<Listed>,
}

/// A page path that cannot name anything in the corpus: absolute, or climbing out of it.
fn outside_corpus(path: &str) -> bool {
    path.starts_with('/')
        || path.starts_with('\\')
        || path.contains('\0')
        || path.split(['/', '\\']).any(|seg| seg == "..")
        || path.contains("://")
}

#[tool_router]
impl DocsServer {
    pub fn new(docs: Arc<ArcSwap<Docs>>) -> Self {
        Self {
            docs,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Full-text search over the documentation. Returns ranked hits (title, path, score, snippet); read a hit with get_doc.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_docs(
        &self,
        Parameters(args): Parameters<SearchArgs>,
    ) -> Result<Json<SearchResult>, ErrorData> {
        let query = args.query.trim();
        if query.is_empty() {
            return Err(ErrorData::invalid_params("query must not be empty", None));
        }
        let limit = match args.limit {
            None => 10,
            Some(n @ 1..=50) => n as usize,
            Some(n) => {
                return Err(ErrorData::invalid_params(
                    format!("limit must be between 1 and {MAX_LIMIT}, got {n}"),
                    None,
                ))
            }
        };
        let docs = self.docs.load();
        let hits = docs
            .search(query, limit)
            .map_err(|e| ErrorData::internal_error(format!("search failed: {e}"), None))?;
        Ok(Json(SearchResult {
            query: query.to_string(),
            hits,
        }))
    }

    #[tool(
        description = "The whole page at `path` (from search_docs or list_docs), as Markdown.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_doc(
        &self,
        Parameters(args): Parameters<GetDocArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let path = args.path.trim().trim_start_matches("./");
        if outside_corpus(path) {
            return Err(ErrorData::invalid_params(
                format!(
                    "{path:?} is outside the documentation set: paths are relative, without `..`"
                ),
                None,
            ));
        }
        let docs = self.docs.load();
        match docs.get(path) {
            Some(p) => {
                let heading = format!("# {}", p.title);
                let text = if p.body.starts_with(&heading) {
                    format!("path: {}\n\n{}", p.path, p.body)
                } else {
                    format!("{heading}\n\npath: {}\n\n{}", p.path, p.body)
                };
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
            }
            None => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "no page at {path:?}; find pages with search_docs or list_docs"
            ))])),
        }
    }

    #[tool(
        description = "List the pages (path and title), optionally only those under a path prefix.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn list_docs(
        &self,
        Parameters(args): Parameters<ListArgs>,
    ) -> Result<Json<ListResult>, ErrorData> {
        let prefix = args.prefix.unwrap_or_default();
        let docs = self.docs.load();
        Ok(Json(ListResult {
            pages: docs
                .pages
                .range(prefix.clone()..)
                .take_while(|(p, _)| p.starts_with(&prefix))
                .map(|(p, page)| Listed {
                    path: p.clone(),
                    title: page.title.clone(),
                })
                .collect(),
        }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for DocsServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("mcp-docs", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    /// Arguments that do not fit a tool's input schema are a JSON-RPC error (invalid params),
    /// checked here before the tool runs; the tool's own checks answer the same way.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = serde_json::Value::Object(request.arguments.clone().unwrap_or_default());
        let checked = match request.name.as_ref() {
            "search_docs" => serde_json::from_value::<SearchArgs>(args).map(drop),
            "get_doc" => serde_json::from_value::<GetDocArgs>(args).map(drop),
            "list_docs" => serde_json::from_value::<ListArgs>(args).map(drop),
            _ => Ok(()),
        };
        if let Err(e) = checked {
            return Err(ErrorData::invalid_params(
                format!("arguments of {}: {e}", request.name),
                None,
            ));
        }
        let tcc = ToolCallContext::new(self, request, context);
        self.tool_router.call(tcc).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let docs = self.docs.load();
        Ok(ListResourcesResult::with_all_items(
            docs.pages
                .values()
                .map(|p| {
                    Resource::new(format!("{URI_PREFIX}{}", p.path), p.path.clone())
                        .with_title(p.title.clone())
                        .with_mime_type("text/markdown")
                        .with_size(p.body.len() as u64)
                })
                .collect(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let Some(path) = request.uri.strip_prefix(URI_PREFIX) else {
            return Err(ErrorData::invalid_params(
                format!("resource URIs here start with {URI_PREFIX}"),
                None,
            ));
        };
        if outside_corpus(path) {
            return Err(ErrorData::invalid_params(
                format!("{path:?} is outside the documentation set"),
                None,
            ));
        }
        let docs = self.docs.load();
        match docs.get(path) {
            Some(p) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                p.body.clone(),
                request.uri.clone(),
            )
            .with_mime_type("text/markdown")])
            .into()),
            None => Err(ErrorData::resource_not_found(
                format!("no page {:?}", request.uri),
                None,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::outside_corpus;

    #[test]
    fn traversal_is_refused() {
        for p in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "..",
            "a\\..\\b",
            "file:///x",
        ] {
            assert!(outside_corpus(p), "{p}");
        }
        for p in ["guides/install.md", "a..b.md", "README.md"] {
            assert!(!outside_corpus(p), "{p}");
        }
    }
}

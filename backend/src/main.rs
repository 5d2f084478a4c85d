#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clap::Parser;
use mcp_docs::corpus::Source;
use mcp_docs::index::Docs;
use mcp_docs::HttpOptions;
use tokio_util::sync::CancellationToken;

/// Documentation MCP server: full-text search over Markdown, Streamable HTTP and legacy SSE.
#[derive(Parser)]
#[command(name = "mcp-docs", version)]
struct Cli {
    /// Address to listen on (plain HTTP).
    #[arg(long, env = "MCP_DOCS_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Directories (searched for .md, .markdown, .txt...) or single files; repeat for several.
    #[arg(
        long = "docs",
        env = "MCP_DOCS_DIR",
        value_delimiter = ',',
        required_unless_present = "index_json"
    )]
    docs: Vec<PathBuf>,
    /// A Hugo-style index.json (array of pages with title, url or path, content).
    #[arg(long, env = "MCP_DOCS_INDEX_JSON")]
    index_json: Option<PathBuf>,
    /// Host header values accepted on /mcp (DNS-rebinding protection), comma-separated; `*` accepts any.
    #[arg(
        long,
        env = "MCP_DOCS_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1,::1"
    )]
    allowed_hosts: Vec<String>,
    /// Comment keep-alive interval on SSE streams.
    #[arg(long, env = "MCP_DOCS_KEEP_ALIVE", default_value = "15s", value_parser = humantime::parse_duration)]
    keep_alive: Duration,
    /// How often the corpus is checked for changes (it is also re-read on SIGHUP).
    #[arg(long, env = "MCP_DOCS_WATCH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Log format: text or json.
    #[arg(long, env = "MCP_DOCS_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_DOCS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    if format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.init();
    }
}

fn build(source: &Source) -> anyhow::Result<Docs> {
    let started = Instant::now();
    let corpus = source.load()?;
    let n = corpus.pages.len();
    let docs = Docs::build(corpus)?;
    tracing::info!(
        pages = n,
        took_ms = started.elapsed().as_millis() as u64,
        "index built"
    );
    Ok(docs)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let source = Source {
        dirs: cli.docs.clone(),
        index_json: cli.index_json.clone(),
    };
    let docs = match build(&source) {
        Ok(d) => Arc::new(ArcSwap::from_pointee(d)),
        Err(e) => {
            eprintln!("mcp-docs: {e:#}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mcp-docs: cannot listen on {}: {e}", cli.listen);
            return ExitCode::from(1);
        }
    };
    let shutdown = CancellationToken::new();
    let hosts = if cli.allowed_hosts.iter().any(|h| h == "*") {
        Vec::new()
    } else {
        cli.allowed_hosts.clone()
    };
    let app = mcp_docs::app(
        docs.clone(),
        &HttpOptions {
            allowed_hosts: hosts,
            keep_alive: cli.keep_alive,
        },
        shutdown.clone(),
    );
    tokio::spawn(watch(source, docs, cli.watch_interval));
    tracing::info!(listen = %cli.listen, "mcp-docs serving /mcp, /sse, /message, /healthz");
    let stop = shutdown.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        terminated().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    tokio::select! {
        r = serve => if let Err(e) = r {
            eprintln!("mcp-docs: {e}");
            return ExitCode::from(1);
        },
        // Streams were told to end; do not wait for stragglers forever.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => {}
    }
    ExitCode::SUCCESS
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Rebuilds the index when the corpus changes (polled) or on SIGHUP; sessions keep running and
/// see the new corpus from their next call.
async fn watch(source: Source, docs: Arc<ArcSwap<Docs>>, every: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut seen = source.fingerprint();
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let src = source.clone();
        let now = tokio::task::spawn_blocking(move || src.fingerprint())
            .await
            .unwrap_or(seen);
        if now == seen && !forced {
            continue;
        }
        seen = now;
        let src = source.clone();
        match tokio::task::spawn_blocking(move || build(&src)).await {
            Ok(Ok(d)) => docs.store(Arc::new(d)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "corpus changed but cannot be indexed; the previous index keeps serving")
            }
            Err(e) => tracing::error!(error = %e, "index rebuild panicked"),
        }
    }
}

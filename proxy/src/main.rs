#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// glibc's allocator showed up at ~12% of a proxy core under load; mimalloc is the usual remedy.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version, or the whole version string a build was given in `MCP_EDGE_VERSION` (a
/// package's `0.4.0-1`, or a test's second build).
const VERSION: &str = match option_env!("MCP_EDGE_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Puts MCP servers on public HTTPS: TLS per host, automatic certificates, MCP-aware proxying.
#[derive(Parser)]
#[command(name = "mcp-edge", version = VERSION)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "MCP_EDGE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The YAML configuration file.
        #[arg(long, short, env = "MCP_EDGE_CONFIG")]
        config: PathBuf,
        /// Take the listening sockets over from the running mcp-edge with this process id (a
        /// new binary replacing it without dropping a connection): it is sent SIGQUIT, hands
        /// them over through `listen.upgrade_socket`, stops accepting and drains.
        #[arg(long, value_name = "PID")]
        upgrade_from: Option<u32>,
    },
    /// List each host's certificate: names, issuer, expiry, next renewal, last ACME error.
    Certs {
        /// The YAML configuration file.
        #[arg(long, short, env = "MCP_EDGE_CONFIG")]
        config: PathBuf,
    },
    /// Connect to an HTTPS upstream, show its certificate chain and a YAML snippet that pins it.
    UpstreamCert {
        /// https://HOST:PORT
        url: String,
        /// SNI to send (default: the URL's host).
        #[arg(long)]
        server_name: Option<String>,
    },
    /// Make a new API key: prints the key (give it to the client, once) and the line for the
    /// YAML (its hash; the key itself is stored nowhere).
    ApiKey {
        /// The key's name (shown in logs and sent upstream as the caller).
        name: String,
    },
    /// Copy everything stored (certificates, keys, ACME accounts, the session key) from one
    /// store to another: a directory or a redis:// / rediss:// URL, either way. Items the
    /// destination holds with other content are kept unless --overwrite.
    StorageCopy {
        /// A storage directory or a Redis URL.
        from: String,
        /// A storage directory or a Redis URL.
        to: String,
        /// Prefix of the Redis keys.
        #[arg(long, default_value = mcp_edge::config::DEFAULT_PREFIX)]
        prefix: String,
        /// Environment variable holding the Redis password (keeps it out of the command line).
        #[arg(long)]
        password_env: Option<String>,
        /// PEM file of the CA of Redis's TLS certificate (rediss://).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Replace items the destination holds with other content.
        #[arg(long)]
        overwrite: bool,
    },
    /// Check a configuration file, then have the running mcp-edge PID apply it (SIGHUP); a
    /// file with errors is reported and nothing is signalled (systemd's `ExecReload`).
    Reload {
        /// The YAML configuration file.
        #[arg(long, short, env = "MCP_EDGE_CONFIG")]
        config: PathBuf,
        /// The running mcp-edge's process id.
        #[arg(long)]
        pid: u32,
    },
    /// Ask the running mcp-edge's admin listener whether it is ready (`/readyz`; `--live`:
    /// `/healthz`): exits 0 on 200, 1 otherwise. The container image's health check
    /// (`--address`: no file read). From a file, only `listen.metrics` and `admin.tls.cert`.
    Health {
        /// The YAML configuration file (its `listen.metrics` is asked), unless --address.
        #[arg(
            long,
            short,
            env = "MCP_EDGE_CONFIG",
            required_unless_present = "address"
        )]
        config: Option<PathBuf>,
        /// The admin listener's address: no configuration file is read (--config and
        /// MCP_EDGE_CONFIG are ignored).
        #[arg(long)]
        address: Option<std::net::SocketAddr>,
        /// With --address: the listener speaks TLS with this certificate (PEM; trusted alone).
        #[arg(long, requires = "address")]
        tls_cert: Option<PathBuf>,
        /// Only whether the process answers (`/healthz`), not whether its listeners accept.
        #[arg(long)]
        live: bool,
        /// Seconds the whole probe may take (below the orchestrator's own probe timeout).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// Validate a configuration file without binding any port; exits non-zero on errors.
    Check {
        /// The YAML configuration file.
        #[arg(long, short, env = "MCP_EDGE_CONFIG")]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_EDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let layer = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        // What strangers can trigger at will (refused handshakes) is throttled.
        .with(tracing_subscriber::filter::filter_fn(mcp_edge::logs::allow))
        .with(layer)
        .init();
}

/// Prints a command's report and succeeds, or prints its error and fails with 1.
fn finish(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mcp-edge: {e}");
            ExitCode::from(1)
        }
    }
}

/// A checking command's answer: printed (with a newline) and success, or its error and 2.
fn answer(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `upstream-cert`: what an HTTPS upstream presents, on a runtime of its own.
fn upstream_cert(url: &str, server_name: Option<&str>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-edge: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    finish(
        rt.block_on(mcp_edge::cli::upstream_cert::inspect(url, server_name))
            .map_err(|e| e.to_string()),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // pingora installs ring as the process default too; doing it first means no other provider
    // can win the race.
    let _ = mcp_edge::pem::ring_provider().install_default();
    match cli.command {
        Command::ApiKey { name } => answer(mcp_edge::cli::api_key(&name)),
        Command::Check { config } => answer(mcp_edge::cli::check(&config)),
        Command::Reload { config, pid } => answer(mcp_edge::cli::check(&config).and_then(|ok| {
            mcp_edge::server::signal_running(pid, nix::sys::signal::Signal::SIGHUP)
                .map(|()| format!("{ok}\nreload sent to {pid}"))
                .map_err(|e| e.to_string())
        })),
        Command::Health {
            config,
            address,
            tls_cert,
            live,
            timeout,
        } => finish(
            match (address, config) {
                (Some(addr), _) => Ok(mcp_edge::cli::health::Target { addr, tls_cert }),
                (None, Some(config)) => mcp_edge::cli::health::target(&config),
                (None, None) => Err("--config or --address is needed".into()),
            }
            .and_then(|t| {
                let path = if live { "/healthz" } else { "/readyz" };
                mcp_edge::cli::health::probe(&t, path, Duration::from_secs(timeout))
            })
            .map(|ok| format!("{ok}\n")),
        ),
        Command::Certs { config } => match mcp_edge::config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|c| mcp_edge::cli::certs::report(&c))
        {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::StorageCopy {
            from,
            to,
            prefix,
            password_env,
            ca,
            overwrite,
        } => {
            let options = mcp_edge::cli::storage_copy::CopyOptions {
                prefix,
                password_env,
                ca,
                overwrite,
            };
            finish(mcp_edge::cli::storage_copy::copy(&from, &to, &options))
        }
        Command::UpstreamCert { url, server_name } => upstream_cert(&url, server_name.as_deref()),
        Command::Run {
            config,
            upgrade_from,
        } => {
            init_logging(cli.log_format);
            tracing::info!(version = VERSION, "mcp-edge starting");
            match mcp_edge::server::run(&config, upgrade_from) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("mcp-edge: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

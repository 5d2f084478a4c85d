//! Assembling and running the pingora server, and reloading the configuration while it runs.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TlsAccept};
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::affinity::{SealError, Sealer};
use crate::certs::{CertError, CertSources};
use crate::config::{self, Config, ConfigErrors};
use crate::http01::ChallengeStore;
use crate::proxy::{EdgeProxy, TlsInfo};
use crate::routing::Table;
use crate::tls::{CertStore, SniResolver};
use crate::{acme, metrics, storage, Edge};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("cannot listen on {addr} (listen.{which}): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS listener: {0}")]
    Tls(String),
    #[error("certificates: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Certs(Vec<CertError>),
}

/// Checks that each listen address can be bound, so a busy port stops the process at once with
/// a clear message (pingora would retry, then leave a half-dead process).
fn check_bind(config: &Config) -> Result<(), StartError> {
    let l = &config.listen;
    for (which, addr) in [("http", l.http), ("https", l.https), ("metrics", l.metrics)] {
        TcpListener::bind(addr).map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// Builds the shared state for `config`: storage checked, sealing key loaded, certificates
/// prepared and installed.
pub fn build_edge(config: Config) -> Result<Arc<Edge>, StartError> {
    storage::ensure_writable(&config.storage)?;
    let sealer = Sealer::load_or_create(&config.storage)?;
    let certs = CertSources::new(Arc::new(CertStore::default()));
    let prepared = certs.prepare(&config).map_err(StartError::Certs)?;
    certs.commit(prepared);
    acme::install_existing(&config, certs.store());
    Ok(Arc::new(Edge {
        table: ArcSwap::from_pointee(Table::new(Arc::new(config))),
        certs,
        challenges: Arc::new(ChallengeStore::default()),
        sealer,
        acme_wake: tokio::sync::Notify::new(),
    }))
}

/// Loads `path`, binds every listener and serves until SIGTERM/SIGINT. Returns only on a
/// start-up error; on shutdown the process exits.
pub fn run(path: &Path) -> Result<(), StartError> {
    let config = config::load(path)?;
    check_bind(&config)?;
    let listen = config.listen.clone();
    let grace = config.shutdown_grace;
    let threads = config.threads;
    let edge = build_edge(config)?;

    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        EdgeProxy { edge: edge.clone() },
        "mcp-edge proxy",
    );
    // No L4 read buffer under the client connections: pingora's default is 64 KiB per
    // connection, zero-filled and so resident, and rustls (or the HTTP parser) reads into its
    // own buffers anyway. An idle SSE stream costs ~65 KB less (BENCHMARKS.md).
    let l4 = L4BufferSettings::default().read(0);
    proxy.add_listener(ListenerConfig::tcp(listen.http.to_string()).l4_buffer(l4));
    let mut tls = TlsSettings::with_callbacks(Box::new(HandshakeHook { edge: edge.clone() }))
        .map_err(|e| StartError::Tls(e.to_string()))?;
    tls.set_cert_resolver(Arc::new(SniResolver::new(edge.certs.store().clone())));
    tls.enable_h2();
    proxy.add_listener(
        ListenerConfig::tcp(listen.https.to_string())
            .tls(tls)
            .l4_buffer(l4),
    );

    let mut admin = Service::new(
        "mcp-edge admin".to_string(),
        pingora::apps::http_app::HttpServer::new_app(Admin { edge: edge.clone() }),
    );
    admin.add_tcp(&listen.metrics.to_string());

    let reloader = background_service(
        "mcp-edge reload",
        Reloader {
            edge: edge.clone(),
            path: path.to_path_buf(),
        },
    );

    let acme = background_service("mcp-edge acme", acme::AcmeManager { edge: edge.clone() });

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(reloader);
    server.add_service(acme);
    tracing::info!(http = %listen.http, https = %listen.https, metrics = %listen.metrics, "mcp-edge started");
    server.run_forever()
}

/// Records the SNI of each TLS connection (for the Host/SNI check) and counts handshakes.
struct HandshakeHook {
    edge: Arc<Edge>,
}

#[async_trait]
impl TlsAccept for HandshakeHook {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let sni = tls.server_name().map(|s| s.to_ascii_lowercase());
        let table = self.edge.table.load();
        let host = sni
            .as_deref()
            .and_then(|s| table.host(s))
            .map_or(metrics::UNKNOWN_HOST, |e| e.host.name.as_str());
        metrics::get()
            .tls_handshakes
            .with_label_values(&[host])
            .inc();
        Some(Arc::new(TlsInfo { sni }))
    }
}

/// Reloads on SIGHUP or when the configuration file changes, and re-reads changed certificate
/// files.
struct Reloader {
    edge: Arc<Edge>,
    path: PathBuf,
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads the file at `path` and, if it is valid and its certificates load, makes it the one in
/// force. On any error the previous configuration keeps serving.
pub fn reload(edge: &Edge, path: &Path) -> Result<(), String> {
    let result = (|| {
        let mut new = config::load(path).map_err(|e| e.to_string())?;
        let prepared = edge.certs.prepare(&new).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let old = edge.table.load();
        if new.listen != old.config.listen {
            // The sockets are bound once; keep describing the ones that are really open.
            tracing::warn!("listen settings changed: they take effect only after a restart");
            new.listen = old.config.listen.clone();
        }
        edge.certs.commit(prepared);
        edge.table.store(Arc::new(Table::new(Arc::new(new))));
        edge.acme_wake.notify_one();
        Ok(())
    })();
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::get().reloads.with_label_values(&[label]).inc();
    result
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by signal is off");
                None
            }
        };
        let interval = self.edge.table.load().config.watch_interval;
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        let mut stamp = file_stamp(&self.path);
        loop {
            let why = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    self.edge.certs.poll_files();
                    let now = file_stamp(&self.path);
                    if now == stamp || now.is_none() {
                        continue;
                    }
                    "file changed"
                }
            };
            stamp = file_stamp(&self.path);
            let edge = self.edge.clone();
            let path = self.path.clone();
            // Reading files and generating keys is blocking work.
            let result = tokio::task::spawn_blocking(move || reload(&edge, &path))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(()) => tracing::info!(trigger = why, "configuration reloaded"),
                Err(e) => {
                    tracing::error!(trigger = why, error = %e, "reload refused; the previous configuration keeps serving")
                }
            }
        }
    }
}

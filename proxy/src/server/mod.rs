//! Assembly: the listeners, the services and the live snapshot they share, built from a
//! configuration; reloading it while it runs is `reload`.

mod lifecycle;
mod reload;

pub use lifecycle::{notify, signal_running, UpgradeError};
pub use reload::{ReloadError, Reloader};

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, TlsAccept};
use pingora::protocols::tls::TlsRef;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use tokio::sync::watch;

use crate::admin::Admin;
use crate::audit::Audit;
use crate::certs::{self, CertError, FileWatch};
use crate::config::{self, Config, ConfigErrors, Listen};
use crate::connections::{ConnectionGate, UpstreamGate};
use crate::health::HealthChecker;
use crate::http01::ChallengeStore;
use crate::live::{Live, Snapshot};
use crate::proxy::{EdgeApp, EdgeProxy, TlsInfo};
use crate::routing::{RouteError, Table};
use crate::storage::{self, Storage};
use crate::tls::CertStore;
use crate::tls_alpn::{AlpnChallenges, WithChallenges, ACME_TLS_ALPN};
use crate::upstream::affinity::{self, SealError, Sealer};
use crate::{acme, metrics};
use reload::{join, ReloadService};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CA refuses what `acme:` asks for (a profile it does not offer).
    #[error("{0}")]
    Acme(String),
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
    Tls(#[source] Box<pingora::Error>),
    #[error("admin.tls: {0}")]
    AdminTls(String),
    #[error("certificates: {}", join(.0))]
    Certs(Vec<CertError>),
    #[error("upstreams: {}", join(.0))]
    Routes(Vec<RouteError>),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

/// Checks that each listen address can be bound, so a busy port stops the process at once with
/// a clear message (pingora would retry, then leave a half-dead process).
fn check_bind(config: &Config) -> Result<(), StartError> {
    let l = &config.listen;
    let addrs = [
        ("http", l.http),
        ("https", Some(l.https)),
        ("metrics", Some(l.metrics)),
    ];
    for (which, addr) in addrs.into_iter().filter_map(|(w, a)| Some((w, a?))) {
        TcpListener::bind(addr).map_err(|source| StartError::Bind {
            which,
            addr,
            source,
        })?;
    }
    Ok(())
}

/// What the listeners and services share, built from a configuration: the live snapshot and
/// the stores each of them gets a handle to.
pub struct Parts {
    pub live: Arc<Live>,
    pub files: Arc<FileWatch>,
    pub challenges: Arc<ChallengeStore>,
    pub alpn: Arc<AlpnChallenges>,
    pub sealer: Arc<Sealer>,
    pub storage: Storage,
    /// The sealer uses a key of its own until the shared one can be read.
    pub sealer_temporary: bool,
    /// The audit log's writer, configured from `audit:` at start and on every reload.
    pub audit: Arc<Audit>,
}

/// Builds everything `config` needs before a port is bound: storage opened, sealing key
/// loaded, certificates prepared, route table with its upstream connectors.
///
/// Shared storage that cannot be reached does not stop the start: what the local copy holds
/// serves, and the rest follows when it is back. Storage that refuses (credentials) does.
pub fn build(config: Config) -> Result<Parts, StartError> {
    let storage = Storage::open(&config.storage)?;
    storage.watch_health();
    match Storage::block_on(storage.ping()) {
        Ok(()) => {}
        Err(e) if e.is_unavailable() => {
            tracing::error!(error = %e, "shared storage unreachable at start: serving the certificates and session key of the local copy; orders wait, and certificates other replicas renew arrive, once it is back")
        }
        Err(e) => return Err(e.into()),
    }
    let (sealer, sealer_temporary) = open_sealer(&storage)?;
    let prepared = certs::prepare(&config, &storage).map_err(StartError::Certs)?;
    let table = Table::build(&config).map_err(StartError::Routes)?;
    let files = Arc::new(FileWatch::default());
    files.follow(&prepared);
    let audit = Arc::new(Audit::default());
    audit.configure(&config.audit);
    let live = Arc::new(Live::new(Snapshot {
        config: Arc::new(config),
        table: Arc::new(table),
        certs: Arc::new(prepared.apply(&Default::default())),
    }));
    Ok(Parts {
        live,
        files,
        challenges: Arc::new(ChallengeStore::new(storage.clone())),
        alpn: Arc::new(AlpnChallenges::new(storage.clone())),
        sealer: Arc::new(sealer),
        storage,
        sealer_temporary,
        audit,
    })
}

/// The sealer on the shared key; on a key of its own (and `true`) when storage cannot be
/// reached and holds no local copy of it.
fn open_sealer(storage: &Storage) -> Result<(Sealer, bool), StartError> {
    match Storage::block_on(affinity::shared_key(storage)) {
        Ok(key) => Ok((
            Sealer::from_key(&key).ok_or(SealError::BadKey { len: key.len() })?,
            false,
        )),
        Err(SealError::Storage(e)) if e.is_unavailable() => {
            tracing::error!(error = %e, "the shared session key cannot be read: sealing with a temporary key until it can; sessions created meanwhile work on this replica only");
            let key = affinity::random_key()?;
            Ok((
                Sealer::from_key(&key).ok_or(SealError::BadKey { len: 32 })?,
                true,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the shared session key once storage answers, and seals with it from then on (ids
/// sealed with the temporary key keep opening here).
struct SealKeyFollow {
    storage: Storage,
    sealer: Arc<Sealer>,
}

#[async_trait]
impl BackgroundService for SealKeyFollow {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match affinity::shared_key(&self.storage).await {
                Ok(key) if self.sealer.adopt(&key) => {
                    tracing::info!("storage is back: sealing session ids with the shared key");
                    return;
                }
                Ok(_) => return,
                Err(_) => wait = (wait * 2).min(std::time::Duration::from_secs(10)),
            }
        }
    }
}

/// Client-side timeouts and limits of the proxy listeners, from the configuration at start;
/// and the gate of upstream connections, under the same descriptor budget.
fn server_options(
    config: &Config,
    live: &Arc<Live>,
) -> (
    pingora::apps::HttpServerOptions,
    pingora::protocols::http::v2::server::H2Options,
    UpstreamGate,
) {
    let t = &config.timeouts;
    let limits = &config.limits;
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h1_header_timeout = Some(t.header);
    options.h2_idle_timeout = Some(t.h2_idle);
    options.h2_handshake_timeout = Some(t.h2_handshake);
    options.tls_handshake_timeout = Some(t.tls_handshake);
    options.h1_max_header_size = Some(limits.header_size);
    options.h1_max_headers = Some(limits.header_count);
    let open_files = raise_open_files_limit();
    let (total, per_address) = limits.connection_caps(open_files);
    if let Some(w) = limits.caps_warning(open_files) {
        tracing::warn!("{w}");
    }
    warn_if_admin_open(config);
    tracing::info!(
        open_files,
        connections = total,
        connections_per_address = per_address,
        "connection caps"
    );
    options.connection_gate = Some(Arc::new(ConnectionGate::new(live.clone(), open_files)));
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(limits.h2_streams);
    // HTTP/2 requests get the header size limit HTTP/1 requests have (h2 refuses a larger list).
    h2.max_header_list_size(u32::try_from(limits.header_size).unwrap_or(u32::MAX));
    (options, h2, UpstreamGate::new(live.clone(), open_files))
}

/// Says so when `/metrics` and `/status` are open to whoever reaches a non-loopback admin
/// address (at start, and after each reload).
pub(super) fn warn_if_admin_open(config: &Config) {
    let at = config.listen.metrics;
    if !at.ip().is_loopback() && config.admin.is_open() {
        tracing::warn!(listen = %at, "the admin listener serves /metrics and /status to anyone who reaches it: bind it to loopback, or set admin.token or admin.tls.client_ca");
    }
}

/// Port 80 and the TLS listener, certificates chosen by SNI from `live`.
fn add_listeners(
    proxy: &mut Service<EdgeApp>,
    listen: &Listen,
    live: &Arc<Live>,
    alpn: &Arc<AlpnChallenges>,
) -> Result<(), StartError> {
    // No L4 read buffer under the client connections: pingora's default is 64 KiB per
    // connection, zero-filled and so resident, and rustls (or the HTTP parser) reads into its
    // own buffers anyway. An idle SSE stream costs ~65 KB less (BENCHMARKS.md).
    let l4 = L4BufferSettings::default().read(0);
    if let Some(http) = listen.http {
        proxy.add_listener(ListenerConfig::tcp(http.to_string()).l4_buffer(l4));
    }
    let mut tls = TlsSettings::with_callbacks(Box::new(HandshakeHook { live: live.clone() }))
        .map_err(StartError::Tls)?;
    if !listen.session_resumption {
        crate::pem::without_session_resumption(&mut tls);
    }
    tls.set_cert_resolver(Arc::new(WithChallenges {
        inner: live.clone(),
        challenges: alpn.clone(),
    }));
    // h2 preferred, then HTTP/1.1; acme-tls/1 only for the CA's TLS-ALPN-01 validations (a
    // handshake offering nothing else gets the challenge certificate, then the connection is
    // closed: pingora hands an unknown protocol to a custom app that has none).
    tls.set_alpn_protocols(vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        ACME_TLS_ALPN.to_vec(),
    ]);
    proxy.add_listener(
        ListenerConfig::tcp(listen.https.to_string())
            .tls(tls)
            .l4_buffer(l4),
    );
    Ok(())
}

/// The admin listener and the background services: reload, ACME, health checks, and the
/// seal-key follower when the key is not yet shared.
fn add_services(
    server: &mut Server,
    parts: &Parts,
    listen: &Listen,
    path: &Path,
    config_now: Arc<Config>,
    admin_tls: Option<TlsSettings>,
) {
    let mut app = pingora::apps::http_app::HttpServer::new_app(Admin {
        listen: listen.clone(),
        client_certificate: (config_now.admin.tls.as_ref()).is_some_and(|t| t.client_ca.is_some()),
        live: parts.live.clone(),
        window: Default::default(),
    });
    // The proxy listeners' header and handshake deadlines: a peer that connects and stalls
    // does not hold a socket for long.
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h1_header_timeout = Some(config_now.timeouts.header);
    options.tls_handshake_timeout = Some(config_now.timeouts.tls_handshake);
    app.server_options = Some(options);
    let mut admin = Service::new("mcp-edge admin".to_string(), app);
    match admin_tls {
        Some(tls) => admin.add_tls_with_settings(&listen.metrics.to_string(), None, tls),
        None => admin.add_tcp(&listen.metrics.to_string()),
    }

    let (config_tx, config_rx) = watch::channel(config_now);
    let reloader = background_service(
        "mcp-edge reload",
        ReloadService(Arc::new(Reloader {
            live: parts.live.clone(),
            files: parts.files.clone(),
            config_tx,
            path: path.to_path_buf(),
            storage: parts.storage.clone(),
            audit: parts.audit.clone(),
        })),
    );

    let acme = background_service(
        "mcp-edge acme",
        acme::AcmeManager {
            certs: parts.live.clone() as Arc<dyn CertStore>,
            proofs: Arc::new(acme::Proofs {
                http: parts.challenges.clone(),
                alpn: parts.alpn.clone(),
            }),
            config: config_rx,
            storage: parts.storage.clone(),
        },
    );

    let health = background_service(
        "mcp-edge health",
        HealthChecker {
            live: parts.live.clone(),
        },
    );

    server.add_service(admin);
    server.add_service(reloader);
    server.add_service(acme);
    server.add_service(health);
    if parts.sealer_temporary {
        server.add_service(background_service(
            "mcp-edge seal key",
            SealKeyFollow {
                storage: parts.storage.clone(),
                sealer: parts.sealer.clone(),
            },
        ));
    }
}

/// The proxy service on port 80 and the TLS listener, with the client-side options of `config`.
fn proxy_service(
    server: &Server,
    parts: &Parts,
    config: &Config,
) -> Result<Service<EdgeApp>, StartError> {
    let edge = EdgeProxy {
        live: parts.live.clone(),
        challenges: parts.challenges.clone(),
        sealer: parts.sealer.clone(),
        auth: Arc::default(),
        limiter: Arc::default(),
        legacy: Arc::default(),
        audit: parts.audit.clone(),
    };
    let (options, h2_options, upstream_gate) = server_options(config, &parts.live);
    let app = EdgeApp::new(
        edge,
        &server.configuration,
        options,
        h2_options,
        upstream_gate,
    );
    let mut proxy = Service::new("mcp-edge proxy".to_string(), app);
    add_listeners(&mut proxy, &config.listen, &parts.live, &parts.alpn)?;
    Ok(proxy)
}

/// Loads `path`, binds every listener (or takes them over from the running process
/// `upgrade_from`) and serves until a signal stops it (`lifecycle`). Returns only on a
/// start-up error; on shutdown the process exits.
pub fn run(path: &Path, upgrade_from: Option<u32>) -> Result<(), StartError> {
    let config = config::load(path)?;
    match acme::profile_offered(&config) {
        Ok(None) => {}
        Ok(Some(note)) => tracing::warn!("{note}; orders use it anyway"),
        Err(e) => return Err(StartError::Acme(e)),
    }
    if upgrade_from.is_none() {
        check_bind(&config)?;
    }
    let listen = config.listen.clone();
    let grace = config.shutdown_grace;
    let threads = config.threads;
    let parts = build(config)?;
    let config_now = parts.live.load().config.clone();

    let conf = ServerConf {
        threads,
        // `lifecycle::Drain` exits when drained or at the end of the grace period; pingora's
        // own timer is the fallback.
        grace_period_seconds: Some(grace.as_secs() + 3),
        graceful_shutdown_timeout_seconds: Some(1),
        // The proxy keeps its idle upstream connections itself (`upstream::idle`,
        // UPSTREAM_POOL_SIZE in all, as the descriptor budget reserves); pingora's own pool
        // goes unused.
        upstream_keepalive_pool_size: 1,
        upgrade_sock: listen.upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade: upgrade_from.is_some(),
        ..Default::default()
    };
    // Everything that can fail is done before the running process is asked for its sockets.
    let admin_tls = (config_now.admin.tls.as_ref())
        .map(crate::admin::tls_settings)
        .transpose()
        .map_err(StartError::AdminTls)?;
    if let Some(old) = upgrade_from {
        lifecycle::request_sockets(&listen.upgrade_socket, old)?;
    }
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    // Takes the listening sockets over when upgrading (exits if none arrive within 5 s; the
    // running process then keeps them and serves on).
    server.bootstrap();
    lifecycle::announce(&listen.upgrade_socket);

    let proxy = proxy_service(&server, &parts, &config_now)?;
    server.add_service(proxy);
    add_services(&mut server, &parts, &listen, path, config_now, admin_tls);
    server.add_service(background_service(
        "mcp-edge drain",
        lifecycle::Drain {
            grace,
            audit: parts.audit.clone(),
        },
    ));
    server.add_service(background_service(
        "mcp-edge ready",
        lifecycle::Ready {
            listen: listen.clone(),
            upgraded: upgrade_from.is_some(),
        },
    ));
    let http = listen.http.map_or("none".to_string(), |a| a.to_string());
    tracing::info!(%http, https = %listen.https, metrics = %listen.metrics, storage = %parts.storage.describe(), "mcp-edge started");
    server.run_forever()
}

/// Raises the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile` would
/// be set by hand) and returns it: the default connection caps are derived from it.
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
            tracing::warn!(error = %e, soft, "cannot raise the open-files limit");
            soft
        }
    }
}

/// Records the SNI of each TLS connection (for the Host/SNI check) and counts handshakes.
struct HandshakeHook {
    live: Arc<Live>,
}

#[async_trait]
impl TlsAccept for HandshakeHook {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let snap = self.live.load();
        let name = snap.tls_name(tls.server_name());
        let host = name
            .as_deref()
            .and_then(|s| snap.table.host(s))
            .map_or(metrics::UNKNOWN_HOST, |e| e.host.name.as_str());
        metrics::get()
            .tls_handshakes
            .with_label_values(&[host])
            .inc();
        Some(Arc::new(TlsInfo { server_name: name }))
    }
}

//! Reloading: on SIGHUP or when the configuration file changes, build one complete snapshot
//! (configuration, certificates, route table with its upstream connectors) and swap it in one
//! step. On any error the snapshot in force keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::watch;

use crate::audit::Audit;
use crate::certs::{self, CertError, FileWatch};
use crate::config::{self, Config, ConfigErrors};
use crate::live::Live;
use crate::metrics;
use crate::routing::{RouteError, Table};
use crate::storage::Storage;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("certificates: {}", join(.0))]
    Certs(Vec<CertError>),
    #[error("upstreams: {}", join(.0))]
    Routes(Vec<RouteError>),
    #[error("the reload task failed: {0}")]
    Task(String),
}

pub(super) fn join<E: std::fmt::Display>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a reload swaps in and who hears of it.
pub struct Reloader {
    pub live: Arc<Live>,
    pub files: Arc<FileWatch>,
    /// Tells the ACME manager about the configuration in force.
    pub config_tx: watch::Sender<Arc<Config>>,
    pub path: PathBuf,
    /// Opened at start; a changed `storage:` takes effect after a restart.
    pub storage: Storage,
    /// Reconfigured (and its file reopened: SIGHUP after logrotate) on every reload.
    pub audit: Arc<Audit>,
}

impl Reloader {
    /// Loads the file and, if it is valid and its certificates and upstreams can be set up,
    /// makes it the one in force. The outcome is logged before it is counted, so whoever
    /// waits for the counter finds the log line already there.
    pub fn reload(&self, trigger: &str) -> Result<(), ReloadError> {
        let result = self.build_and_swap();
        record(trigger, &result);
        result
    }

    fn build_and_swap(&self) -> Result<(), ReloadError> {
        let mut new = config::load(&self.path)?;
        let old = self.live.load();
        if new.listen != old.config.listen {
            // The sockets are bound once; keep describing the ones that are really open.
            tracing::warn!("listen settings changed: they take effect only after a restart");
            new.listen = old.config.listen.clone();
        }
        let (t, o) = (&new.timeouts, &old.config.timeouts);
        let on_listener =
            |t: &config::ClientTimeouts| (t.header, t.h2_idle, t.h2_handshake, t.tls_handshake);
        if on_listener(t) != on_listener(o) {
            // Set on the listener once; keepalive and write follow the reload.
            tracing::warn!(
                "timeouts.header, h2_idle, h2_handshake and tls_handshake changed: they take effect only after a restart"
            );
        }
        let (l, o) = (&new.limits, &old.config.limits);
        if (l.header_size, l.header_count, l.h2_streams)
            != (o.header_size, o.header_count, o.h2_streams)
        {
            // The connection caps follow the reload; these are set on the listener once.
            tracing::warn!(
                "limits.header_size, header_count and h2_streams changed: they take effect only after a restart"
            );
        }
        if new.storage != old.config.storage {
            tracing::warn!("storage changed: it takes effect only after a restart");
            new.storage = old.config.storage.clone();
        }
        if new.admin.tls != old.config.admin.tls {
            // The admin listener's TLS (and whether it asks for client certificates) is set
            // once; keep describing what is in force, so is_open() below tells the truth.
            tracing::warn!("admin.tls changed: it takes effect only after a restart");
            new.admin.tls = old.config.admin.tls.clone();
        }
        let prepared = certs::prepare(&new, &self.storage).map_err(ReloadError::Certs)?;
        let table = Table::build(&new).map_err(ReloadError::Routes)?;
        super::warn_if_admin_open(&new);
        let new = Arc::new(new);
        self.live
            .replace(new.clone(), Arc::new(table), |cur| prepared.apply(cur));
        self.files.follow(&prepared);
        self.audit.configure(&new.audit);
        self.config_tx.send_replace(new);
        Ok(())
    }
}

/// Logs a reload's outcome, then counts it.
fn record(trigger: &str, result: &Result<(), ReloadError>) {
    let label = match result {
        Ok(()) => {
            tracing::info!(trigger, "configuration reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "reload refused; the previous configuration keeps serving");
            "error"
        }
    };
    metrics::get().reloads.with_label_values(&[label]).inc();
}

fn file_stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The background service: watches the file and SIGHUP, and re-reads changed certificate files.
pub(super) struct ReloadService(pub Arc<Reloader>);

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let r = &self.0;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload by signal is off");
                None
            }
        };
        let interval = r.live.load().config.watch_interval;
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
        let mut stamp = file_stamp(&r.path);
        loop {
            let why = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    r.files.poll(&*r.live);
                    crate::logs::report_suppressed();
                    let now = file_stamp(&r.path);
                    if now == stamp || now.is_none() {
                        continue;
                    }
                    "file changed"
                }
            };
            stamp = file_stamp(&r.path);
            let reloader = r.clone();
            // Reading files and generating keys is blocking work.
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload(why)).await {
                record(why, &Err(ReloadError::Task(e.to_string())));
            }
        }
    }
}

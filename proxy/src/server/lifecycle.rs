//! The process's life around its listeners: telling a supervisor it is ready (systemd's notify
//! protocol), taking the listening sockets over from a running process (upgrade), and stopping
//! without dropping what is open (drain).
//!
//! Signals: SIGTERM stops gracefully (no new connections; open requests and streams get
//! `shutdown_grace`, then the process exits, sooner when nothing is left); SIGINT, or a second
//! SIGTERM, stops at once; SIGQUIT hands the listening sockets to a new process started with
//! `run --upgrade-from PID`, then drains like SIGTERM; SIGHUP reloads.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::audit::Audit;
use crate::config::Listen;
use crate::{acme, metrics};

/// Sends `state` to the supervisor (systemd's `sd_notify`): nothing without `NOTIFY_SOCKET`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        use std::os::unix::ffi::OsStrExt;
        match path.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            }
            None => sock.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify the service manager");
    }
}

/// Tells the supervisor the process is ready once its listeners accept connections (the
/// certificates are loaded before any listener starts). After an upgrade it also names this
/// process as the service's main one.
pub(super) struct Ready {
    pub listen: Listen,
    pub upgraded: bool,
}

#[async_trait]
impl BackgroundService for Ready {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let ports: Vec<u16> = [Some(self.listen.https), self.listen.http]
            .into_iter()
            .flatten()
            .map(|a| a.port())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ports.iter().all(|p| listening(*p)) {
            if Instant::now() > deadline {
                tracing::error!(?ports, "the listeners are not listening: not ready");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = if self.upgraded {
            format!("READY=1\nMAINPID={}", std::process::id())
        } else {
            "READY=1".to_string()
        };
        notify(&state);
        tracing::info!("ready: every listener accepts");
    }
}

/// Whether a TCP socket of this network namespace listens on `port` (read from the kernel's
/// table: a probe connection would show up as a failed TLS handshake).
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace().skip(1);
                let local = cols.next().unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                format!("{local} ").ends_with(&want) && state == "0A"
            })
        })
    })
}

/// Once a stop has begun (SIGTERM, or SIGQUIT after the hand-over): waits until the open
/// connections and certificate orders are done, at most the grace period, then exits; a
/// further SIGTERM or SIGINT exits at once. The audit log is written out first.
pub(super) struct Drain {
    pub grace: Duration,
    pub audit: Arc<Audit>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        notify("STOPPING=1");
        // Streams made now see only the signals that follow the one that began the stop.
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let open = || metrics::get().connections_open.get();
        tracing::info!(
            connections = open(),
            orders = acme::jobs_running(),
            grace = %humantime::format_duration(self.grace),
            "stopping: no new connections; open requests, streams and orders have the grace period"
        );
        let deadline = Instant::now() + self.grace;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM again: stopping at once"); break }
                _ = int.recv() => { tracing::info!("SIGINT: stopping at once"); break }
                _ = tick.tick() => {
                    if open() <= 0 && acme::jobs_running() == 0 {
                        tracing::info!("drained: every connection closed");
                        break;
                    }
                    if Instant::now() >= deadline {
                        tracing::warn!(connections = open(), orders = acme::jobs_running(), "grace period over: closing what is still open");
                        break;
                    }
                }
            }
        }
        self.audit.flush(Duration::from_secs(2));
        std::process::exit(0);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("listen.upgrade_socket {path}: its directory {dir} {why}")]
    UnsafeDirectory {
        path: String,
        dir: String,
        why: String,
    },
    #[error("--upgrade-from {pid}: {file} {why}; a running mcp-edge of this version with this listen.upgrade_socket names itself there")]
    NotAnnounced { pid: u32, file: String, why: String },
    #[error("process {pid}: {why}")]
    NotMcpEdge { pid: u32, why: String },
    #[error("process {pid}: cannot signal it: {source}")]
    Signal { pid: u32, source: nix::Error },
}

/// Checks that nobody but this user (or root) can reach the directory of `socket`: owned by
/// this user or root, no access for group or others. Anyone who could connect there could
/// hand the new process sockets of their own; anyone who could write there could receive
/// port 443's.
fn private_dir(socket: &Path) -> Result<(), UpgradeError> {
    let dir = socket.parent().unwrap_or(Path::new("/"));
    let unsafe_dir = |why: String| UpgradeError::UnsafeDirectory {
        path: socket.display().to_string(),
        dir: dir.display().to_string(),
        why,
    };
    let meta = std::fs::metadata(dir).map_err(|e| unsafe_dir(format!("cannot be read: {e}")))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "belongs to uid {}, not to this user ({me}) or root",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "is open to group or others (mode {:o}; 700 wanted)",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The file by which a running process names itself as the one serving at `socket`.
fn pid_file(socket: &Path) -> std::path::PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".pid");
    name.into()
}

/// Names this process in `socket`'s pid file (0600, replaced atomically) when its directory is
/// private, so a later `run --upgrade-from` can tell it is the one listening and using that
/// socket. Called once the listening sockets are this process's (after a take-over, too).
pub(super) fn announce(socket: &Path) {
    if let Err(e) = private_dir(socket) {
        tracing::info!(reason = %e, "upgrades by socket hand-over are off");
        return;
    }
    let file = pid_file(socket);
    let tmp = file.with_extension("pid.tmp");
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        std::fs::rename(&tmp, &file)
    })();
    match written {
        Ok(()) => {
            tracing::info!(file = %file.display(), "upgrades by socket hand-over: run --upgrade-from this process id")
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot name this process for upgrades")
        }
    }
}

/// Readies the take-over of the listening sockets of process `old`: checks that nobody else
/// could stand in at `socket` (`private_dir`) and that `old` named itself there (a build
/// without this, or with another socket, is never signalled), then asks it (SIGQUIT) to send
/// them. It retries for a few seconds while this process starts listening there; a hand-over
/// that fails leaves it serving.
pub(super) fn request_sockets(socket: &Path, old: u32) -> Result<(), UpgradeError> {
    private_dir(socket)?;
    let file = pid_file(socket);
    let named = std::fs::read_to_string(&file).map_err(|e| UpgradeError::NotAnnounced {
        pid: old,
        file: file.display().to_string(),
        why: format!("cannot be read ({e})"),
    })?;
    if named.trim().parse::<u32>().ok() != Some(old) {
        return Err(UpgradeError::NotAnnounced {
            pid: old,
            file: file.display().to_string(),
            why: format!("names process {:?}, not {old}", named.trim()),
        });
    }
    signal_running(old, nix::sys::signal::Signal::SIGQUIT)?;
    tracing::info!(
        pid = old,
        socket = %socket.display(),
        "asked the running process for its listening sockets"
    );
    Ok(())
}

/// Sends `signal` to process `pid` once it is known to be a running mcp-edge (never to a
/// stranger: SIGQUIT's default is to dump core).
pub fn signal_running(pid: u32, signal: nix::sys::signal::Signal) -> Result<(), UpgradeError> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| {
        UpgradeError::NotMcpEdge {
            pid,
            why: format!("no such process ({e})"),
        }
    })?;
    if !comm.trim_end().starts_with("mcp-edge") || pid == std::process::id() {
        return Err(UpgradeError::NotMcpEdge {
            pid,
            why: format!("process {:?} is not a running mcp-edge", comm.trim_end()),
        });
    }
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    nix::sys::signal::kill(target, signal).map_err(|source| UpgradeError::Signal { pid, source })
}

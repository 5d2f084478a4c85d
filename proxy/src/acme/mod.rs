//! Automatic certificates for `tls: acme` hosts.
//!
//! One background task (the manager) keeps a slot per ACME host: the certificate in force, when
//! to look at it next, and its failures. When a slot is due it runs a job, concurrently with
//! other hosts' jobs up to `acme.concurrency`. A job first asks whether renewal is really due
//! (the CA's ARI window when the directory offers one, else the configured threshold), then
//! takes the host's lock in storage, so that of replicas sharing it one orders and the others
//! wait; re-reads storage and stops if another replica renewed meanwhile; and orders. A new
//! certificate is written to storage, then swapped into the live store; a failure (the CA's, or
//! the store's) leaves the old certificate serving and schedules a retry with backoff.
//!
//! Certificates other replicas write are installed when storage announces them, and on a
//! periodic re-read of every host in case an announcement was lost.

mod client;
mod dns;
mod guard;
mod job;
mod order;
pub mod schedule;
mod slot;
mod solver;

pub use solver::Proofs;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, watch, Semaphore};

use client::{capturing_retry_after, Accounts, Failure};
use job::run_job;
use job::wait_listening;
use schedule::{AriPick, HostStatus, StatusFile};
use slot::{newer, order_failed, publish_details, Current, Slot};

use crate::certs::{self, names_of};
use crate::config::{AcmeConfig, Challenge, Config, Host, TlsSource};
use crate::metrics;
use crate::names::HostName;
use crate::pem::LoadedCert;
use crate::storage::{Change, Key, Storage};
use crate::time::{unix, unix_now};
use crate::tls::CertStore;

/// With ARI, how often the CA's window is looked at again at most: `acme.renewal_check`.
fn renewal_check(config: &Config) -> Duration {
    config
        .acme
        .as_ref()
        .map_or(Duration::from_secs(6 * 3600), |a| a.renewal_check)
}
/// Limit on one whole job (account, order, validation, issuance).
const JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// When the CA cannot be asked about a certificate that is not due, ask again after this.
const PROBE_RETRY: Duration = Duration::from_secs(900);
/// Longest wait before looking again at a host whose lock another replica holds.
const BUSY_RETRY: Duration = Duration::from_secs(10);

/// Whether the CA offers `acme.profile`, asked when a host orders from it: Err when it does
/// not (with the profiles it does offer), a note when it cannot be asked.
pub fn profile_offered(config: &Config) -> Result<Option<String>, String> {
    let Some(acme) = &config.acme else {
        return Ok(None);
    };
    if acme.profile.is_none() || !config.hosts.iter().any(|h| h.tls == TlsSource::Acme) {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(client::check_profile(acme))
}

/// The storage lock one replica holds while it orders `host`'s certificate.
/// How many certificate jobs (an order, or waiting for another replica's) are under way: a
/// stopping process lets them finish within its grace period, so no order is left half done.
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn jobs_running() -> usize {
    RUNNING.load(std::sync::atomic::Ordering::Acquire)
}

/// Counts one job in [`RUNNING`] while it is held.
struct Running;

impl Running {
    fn start() -> Self {
        RUNNING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub fn lock_name(host: &str) -> String {
    format!("issue_cert_{host}")
}

fn acme_hosts(config: &Config) -> impl Iterator<Item = &Arc<Host>> {
    config.hosts.iter().filter(|h| h.tls == TlsSource::Acme)
}

/// What a job needs, copied out of its slot.
struct Job {
    host: HostName,
    challenge: Challenge,
    names: Vec<String>,
    current: Option<Current>,
    must_order: bool,
    threshold_due: SystemTime,
    ari_pick: Option<AriPick>,
    no_replaces: bool,
    fresh: bool,
    /// The CA this order goes to (index into `Ctx::accounts`).
    order_ca: usize,
    /// The CA that issued the certificate in force, asked for its renewal window.
    ari_ca: usize,
}

enum Outcome {
    /// Not due yet: look again at `at`.
    NotDue {
        at: SystemTime,
        renewal: SystemTime,
        source: &'static str,
        ari_pick: Option<AriPick>,
    },
    Issued {
        cert: LoadedCert,
        took: Duration,
        /// The CA that issued it.
        ca: usize,
    },
    /// Another replica renewed while this one waited for the lock: its certificate.
    Adopted { cert: LoadedCert },
    /// Another replica holds the host's lock (it is ordering).
    Busy,
    Failed {
        failure: Failure,
        /// An order was attempted (as opposed to a look at a certificate that is not due).
        ordered: bool,
    },
}

/// Per ACME configuration: the account and the bound on concurrent orders.
struct Ctx {
    /// The `acme:` block these were made from.
    config: AcmeConfig,
    /// One account per CA, in order of preference.
    accounts: Vec<Arc<Accounts>>,
    permits: Arc<Semaphore>,
    storage: Storage,
}

/// The background service that keeps every ACME host's certificate current. It gets the
/// things it uses: the certificate store it installs into, the challenge store port 80 answers
/// from, the configuration in force (whose every change wakes it) and the storage.
pub struct AcmeManager {
    pub certs: Arc<dyn CertStore>,
    pub proofs: Arc<Proofs>,
    pub config: watch::Receiver<Arc<Config>>,
    pub storage: Storage,
}

struct State {
    certs: Arc<dyn CertStore>,
    proofs: Arc<Proofs>,
    ctx: Option<Arc<Ctx>>,
    slots: BTreeMap<HostName, Slot>,
    /// What the status file holds, to write it only when something changed.
    written: Option<BTreeMap<String, HostStatus>>,
    tx: mpsc::UnboundedSender<(HostName, Vec<String>, Outcome)>,
    storage: Storage,
    /// Certificates read back from storage (written by another replica, or re-read).
    stored_tx: mpsc::UnboundedSender<(HostName, LoadedCert)>,
}

#[async_trait]
impl BackgroundService for AcmeManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stored_tx, mut stored_rx) = mpsc::unbounded_channel();
        let mut config = self.config.clone();
        let mut st = State {
            certs: self.certs.clone(),
            proofs: self.proofs.clone(),
            ctx: None,
            slots: BTreeMap::new(),
            written: None,
            tx,
            storage: self.storage.clone(),
            stored_tx,
        };
        let mut changes = self.storage.changes();
        // Changes announced before `changes` subscribed are missed; challenges published by
        // then are in storage (the Resync that follows a fresh subscription reads them too).
        st.learn_challenges(&config.borrow().clone());
        let poll = config.borrow().storage.poll;
        let mut reread = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        // The CA validates at once (on port 80, or on the TLS listener without it): be sure it
        // accepts connections first.
        let listen = config.borrow().listen.clone();
        let first = listen.http.unwrap_or(listen.https);
        if !wait_listening(first, Duration::from_secs(10)).await {
            tracing::warn!(addr = %first, "the listener does not accept connections yet; ordering anyway");
        }
        loop {
            let current = config.borrow_and_update().clone();
            st.sync(&current);
            st.start_due_jobs(&current);
            st.publish(&current);
            let now = SystemTime::now();
            let wait = st
                .slots
                .values()
                .filter(|s| !s.running)
                .map(|s| s.next.duration_since(now).unwrap_or_default())
                .min()
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.changed() => return,
                Ok(()) = config.changed() => {}
                Some((host, names, outcome)) = rx.recv() => st.apply(host, names, outcome, &current),
                Some((host, cert)) = stored_rx.recv() => st.stored(host, cert, &current),
                change = next_change(&mut changes) => st.changed(change, &current),
                _ = reread.tick() => st.reread(&current, None),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl State {
    /// Follows the configuration in force: new ACME hosts get a slot (with their certificate
    /// from disk if usable), removed ones lose theirs, a changed `acme:` block re-evaluates all.
    fn sync(&mut self, config: &Config) {
        let now = SystemTime::now();
        let changed = match (&config.acme, &self.ctx) {
            (Some(a), Some(ctx)) => &ctx.config != a,
            (Some(_), None) => true,
            (None, _) => {
                self.ctx = None;
                false
            }
        };
        if let (true, Some(a)) = (changed, &config.acme) {
            self.written = None;
            self.ctx = Some(Arc::new(Ctx {
                config: a.clone(),
                accounts: a
                    .cas()
                    .into_iter()
                    .map(|ca| Arc::new(Accounts::new(ca, self.storage.clone())))
                    .collect(),
                permits: Arc::new(Semaphore::new(a.concurrency)),
                storage: self.storage.clone(),
            }));
            for slot in self.slots.values_mut() {
                slot.recompute_threshold(config, now);
                slot.ari_pick = None;
                slot.next = now;
            }
        }
        let wanted: HashMap<&HostName, &Arc<Host>> =
            acme_hosts(config).map(|h| (&h.name, h)).collect();
        self.slots.retain(|name, slot| {
            let keep = wanted.contains_key(name);
            if !keep {
                let m = metrics::get();
                let h = name.as_str();
                let _ = m.cert_next_renewal.remove_label_values(&[h]);
                let _ = m.acme_failures.remove_label_values(&[h]);
                let _ = m.acme_next_check.remove_label_values(&[h]);
                for edge in ["start", "end"] {
                    let _ = m.acme_renewal_window.remove_label_values(&[h, edge]);
                }
                if let Some([c, ca, p]) = &slot.info {
                    let _ = m.acme_certificate_info.remove_label_values(&[h, c, ca, p]);
                }
            }
            keep
        });
        for (name, host) in wanted {
            let names = names_of(host);
            match self.slots.get_mut(name) {
                Some(slot) if slot.names == names => {}
                Some(slot) => {
                    slot.names = names;
                    slot.next = now;
                }
                None => {
                    // The snapshot in force was built from this configuration
                    // (`certs::prepare`): it serves the host's certificate from storage if
                    // that one can serve, and nothing otherwise (never a stale or foreign one).
                    let current = self.certs.get(name).map(|i| Current::of(&i.cert));
                    self.slots
                        .insert(name.clone(), Slot::new(names, current, config));
                }
            }
        }
    }

    fn start_due_jobs(&mut self, config: &Config) {
        let Some(ctx) = self.ctx.clone() else { return };
        let now = SystemTime::now();
        for (host, slot) in self.slots.iter_mut() {
            if slot.running || slot.next > now {
                continue;
            }
            let Some(challenge) = config.host(host.as_str()).map(|h| config.challenge(h)) else {
                continue;
            };
            slot.running = true;
            let job = Job {
                host: host.clone(),
                challenge,
                names: slot.names.clone(),
                current: slot.current.clone(),
                must_order: slot.must_order(now),
                threshold_due: slot.threshold_due,
                ari_pick: slot.ari_pick,
                no_replaces: slot.no_replaces,
                fresh: slot.fresh,
                order_ca: slot.ca.min(ctx.accounts.len() - 1),
                ari_ca: slot.issued_by.unwrap_or(0).min(ctx.accounts.len() - 1),
            };
            let ctx = ctx.clone();
            let proofs = self.proofs.clone();
            let tx = self.tx.clone();
            let running = Running::start();
            tokio::spawn(async move {
                let _running = running;
                let _permit = ctx.permits.clone().acquire_owned().await;
                let (host, names) = (job.host.clone(), job.names.clone());
                let run = capturing_retry_after(run_job(&ctx, &proofs, &job));
                let outcome = match tokio::time::timeout(JOB_TIMEOUT, run).await {
                    Ok((
                        Outcome::Failed {
                            mut failure,
                            ordered,
                        },
                        seen,
                    )) => {
                        failure.retry_after = failure.retry_after.or(seen);
                        Outcome::Failed { failure, ordered }
                    }
                    Ok((o, _)) => o,
                    Err(_) => Outcome::Failed {
                        failure: Failure::new("the order did not complete within 10 minutes"),
                        ordered: true,
                    },
                };
                let _ = tx.send((host, names, outcome));
            });
        }
    }

    fn apply(&mut self, host: HostName, names: Vec<String>, outcome: Outcome, config: &Config) {
        let Some(slot) = self.slots.get_mut(&host) else {
            return; // the host left the configuration meanwhile
        };
        slot.running = false;
        let now = SystemTime::now();
        if slot.names != names {
            slot.next = now; // the names changed meanwhile: start over with the new ones
            return;
        }
        let m = metrics::get();
        match outcome {
            Outcome::NotDue {
                at,
                renewal,
                source,
                ari_pick,
            } => {
                slot.fresh = false;
                slot.next = at;
                slot.renewal = Some((renewal, source));
                slot.ari_pick = ari_pick;
            }
            Outcome::Issued { cert, took, ca } => {
                m.acme_orders
                    .with_label_values(&[host.as_str(), "ok"])
                    .inc();
                slot.took(&host, &cert, config, now);
                slot.last_issued = Some(unix(now));
                // The next order tries the first CA again.
                slot.issued_by = Some(ca);
                slot.ca = 0;
                let directory = config
                    .acme
                    .as_ref()
                    .and_then(|a| a.ca_directory(ca))
                    .unwrap_or_default()
                    .to_string();
                slot.issuer_ca = Some(directory.clone());
                let (not_after, next) = (cert.info.not_after, slot.threshold_due);
                self.certs.install(&host, names, cert);
                tracing::info!(host = %host, ca = %directory, not_after, took_ms = took.as_millis() as u64, next_renewal = %humantime::format_rfc3339_seconds(next), "certificate issued and serving");
            }
            Outcome::Adopted { cert } => {
                // Unless the announcement of the same certificate came first.
                if !adopt(slot, &*self.certs, &host, cert, config) {
                    slot.next = slot.threshold_due.min(now + renewal_check(config));
                }
            }
            Outcome::Busy => {
                let lease = config.storage.lock_lease;
                slot.next = now + lease.clamp(Duration::from_secs(1), BUSY_RETRY);
                tracing::info!(host = %host, "another replica is ordering this certificate; waiting for it");
            }
            Outcome::Failed {
                failure,
                ordered: false,
            } => {
                slot.next = slot.threshold_due.min(now + PROBE_RETRY);
                tracing::warn!(host = %host, error = %failure.message, retry = %humantime::format_rfc3339_seconds(slot.next), "could not check the certificate's renewal with the CA; it is not due yet");
            }
            Outcome::Failed {
                failure,
                ordered: true,
            } => order_failed(slot, &host, &failure, config, now),
        }
        if let Some(cert) = slot.stored.take() {
            adopt(slot, &*self.certs, &host, cert, config);
        }
    }

    /// Metrics and the status file for `mcp-edge certs`.
    fn publish(&mut self, config: &Config) {
        let m = metrics::get();
        let mut file = StatusFile {
            written: unix_now(),
            replica: String::new(),
            hosts: BTreeMap::new(),
        };
        for (host, slot) in &mut self.slots {
            let next = slot.renewal.map_or(slot.next, |(t, _)| t);
            m.cert_next_renewal
                .with_label_values(&[host.as_str()])
                .set(unix(next) as f64);
            m.acme_failures
                .with_label_values(&[host.as_str()])
                .set(slot.failures as i64);
            publish_details(host, slot, config);
            file.hosts.insert(host.to_string(), slot.status());
        }
        if self.ctx.is_none() || self.written.as_ref() == Some(&file.hosts) {
            return;
        }
        self.written = Some(file.hosts.clone());
        file.replica = self.storage.replica().to_string();
        let storage = self.storage.clone();
        // Written in the background: a store that does not answer must not hold up renewals.
        tokio::spawn(async move {
            if let Err(e) = file.write(&storage).await {
                tracing::warn!(error = %e, "cannot write the ACME status");
            }
        });
    }

    /// Re-reads from storage the certificate of `only`, or of every ACME host and the account
    /// (which keeps the local copy of a shared store complete for when it is unreachable).
    fn reread(&self, config: &Config, only: Option<&str>) {
        if let (None, Some(a)) = (only, &config.acme) {
            let (storage, key) = (self.storage.clone(), Key::acme_account(&a.directory));
            tokio::spawn(async move { storage.get(&key).await });
        }
        for host in acme_hosts(config).filter(|h| only.is_none_or(|o| o == h.name.as_str())) {
            let (storage, host, tx) = (self.storage.clone(), host.clone(), self.stored_tx.clone());
            tokio::spawn(async move {
                if let Some(cert) = certs::load_acme(&storage, &host.name).await {
                    let _ = tx.send((host.name.clone(), cert));
                }
            });
        }
    }

    fn changed(&self, change: Option<Change>, config: &Config) {
        match change {
            Some(Change::Put(key)) if key.alpn_identifier().is_some() => {
                // Another replica is being validated over TLS-ALPN-01: the CA may ask here.
                let alpn = self.proofs.alpn.clone();
                tokio::spawn(async move { alpn.learn(&key).await });
            }
            Some(Change::Put(key)) => {
                if let Some(host) = key.acme_cert_host() {
                    self.reread(config, Some(&host));
                }
            }
            Some(Change::Resync) => {
                self.reread(config, None);
                self.learn_challenges(config);
            }
            None => {}
        }
    }

    /// TLS-ALPN-01 challenges other replicas may have published while this one was not
    /// listening (at start, after Redis was away): read for every name validated that way.
    fn learn_challenges(&self, config: &Config) {
        let keys: Vec<Key> = acme_hosts(config)
            .filter(|h| config.challenge(h) == Challenge::TlsAlpn01)
            .flat_map(|h| h.names())
            .filter_map(|n| Key::alpn_challenge(n.as_str()))
            .collect();
        if keys.is_empty() {
            return;
        }
        let alpn = self.proofs.alpn.clone();
        tokio::spawn(async move {
            for key in keys {
                alpn.learn(&key).await;
            }
        });
    }

    /// A certificate read back from storage: installed if another replica made a newer one.
    /// While a job of this replica runs for the host (it may be this job's own certificate,
    /// announced before the job reports), it waits for the job's outcome.
    fn stored(&mut self, host: HostName, cert: LoadedCert, config: &Config) {
        let Some(slot) = self.slots.get_mut(&host) else {
            return;
        };
        if slot.running {
            if slot
                .stored
                .as_ref()
                .is_none_or(|s| newer(&cert, Some(&Current::of(s)), &[]))
            {
                slot.stored = Some(cert);
            }
            return;
        }
        adopt(slot, &*self.certs, &host, cert, config);
    }
}

/// Installs a certificate another replica stored if it is newer than the slot's; whether it was.
fn adopt(
    slot: &mut Slot,
    certs: &dyn CertStore,
    host: &HostName,
    cert: LoadedCert,
    config: &Config,
) -> bool {
    if !newer(&cert, slot.current.as_ref(), &slot.names) {
        return false;
    }
    metrics::get()
        .acme_adopted
        .with_label_values(&[host.as_str()])
        .inc();
    slot.took(host, &cert, config, SystemTime::now());
    tracing::info!(host = %host, not_after = cert.info.not_after, "installed the certificate another replica stored");
    certs.install(host, slot.names.clone(), cert);
    true
}

/// The next change announced by shared storage; never, without one.
async fn next_change(
    changes: &mut Option<tokio::sync::broadcast::Receiver<Change>>,
) -> Option<Change> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(c) => Some(c),
        Err(RecvError::Lagged(_)) => Some(Change::Resync),
        Err(RecvError::Closed) => {
            *changes = None;
            None
        }
    }
}

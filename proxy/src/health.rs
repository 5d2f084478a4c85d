//! The active health checker: a background service that probes the replicas of every upstream
//! with a `health_check` in the live route table, takes a replica that fails out of the round
//! robin and brings it back when a probe passes. A reload brings new pools, probed afresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::live::Live;
use crate::metrics;

/// How often the table is looked at for pools due a probe.
const TICK: Duration = Duration::from_millis(250);

pub struct HealthChecker {
    pub live: Arc<Live>,
}

impl HealthChecker {
    /// Starts the probes of every pool that is due, each replica in its own task.
    fn probe_due(&self, now: Instant) {
        let snap = self.live.load();
        for entry in snap.table.hosts() {
            for route in &entry.routes {
                let pool = &route.pool;
                let Some(check) = pool.upstream.health_check.clone() else {
                    continue;
                };
                if !pool.probe_due(&check, now) {
                    continue;
                }
                for i in 0..pool.upstream.urls.len() {
                    let (pool, check) = (pool.clone(), check.clone());
                    let (host, path) = (entry.host.name.to_string(), route.path.clone());
                    tokio::spawn(async move {
                        let result = pool.probe(i, &check).await;
                        let replica = &pool.url(i).url;
                        let m = metrics::get();
                        let outcome = if result.is_ok() { "ok" } else { "failed" };
                        m.health_probes
                            .with_label_values(&[&host, &path, outcome])
                            .inc();
                        let changed = pool.record_probe(i, result.is_ok());
                        m.replica_up
                            .with_label_values(&[&host, &path, replica])
                            .set(i64::from(pool.is_up(i)));
                        if !changed {
                            return;
                        }
                        match result {
                            Ok(()) => tracing::info!(
                                host,
                                route = path,
                                replica,
                                "replica back in the round robin: its health check passed"
                            ),
                            Err(e) => {
                                tracing::warn!(host, route = path, replica, error = %e, "replica out of the round robin: its health check failed")
                            }
                        }
                    });
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => self.probe_due(Instant::now()),
            }
        }
    }
}

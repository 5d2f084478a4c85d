//! Active health checks: `GET <path>` to each replica of an upstream with a `health_check`,
//! through the same connector (and so the same TLS trust) as the requests it stands for.

use std::sync::LazyLock;
use std::time::Instant;

use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;

use super::Pool;
use crate::config::HealthCheck;

/// Probes have their own connector: their connections are never pooled (`Connection: close`)
/// nor taken from the requests' pool, so a probe tests a fresh connection.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// Why a probe failed, for the log line.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("{0}")]
    Http(Box<pingora::Error>),
    #[error("answered {0}")]
    Status(u16),
}

impl Pool {
    /// Whether the replicas are due for a probe; if so, the next one is scheduled.
    pub fn probe_due(&self, check: &HealthCheck, now: Instant) -> bool {
        let mut next = self.next_probe.lock().unwrap_or_else(|e| e.into_inner());
        if next.is_some_and(|at| now < at) {
            return false;
        }
        *next = Some(now + check.interval);
        true
    }

    /// One probe of replica `i`: a 2xx or 3xx answer to `GET check.path` within the timeout.
    pub async fn probe(&self, i: usize, check: &HealthCheck) -> Result<(), ProbeError> {
        let attempt = async {
            let addr = self.address(i).await.map_err(ProbeError::Resolve)?;
            let mut peer = self.peer(addr);
            peer.options.read_timeout = Some(check.timeout);
            let (mut session, _) = CONNECTOR
                .get_http_session(&peer)
                .await
                .map_err(ProbeError::Http)?;
            let mut req = RequestHeader::build("GET", check.path.as_bytes(), Some(3))
                .map_err(ProbeError::Http)?;
            let headers = [
                ("host", self.url(i).authority.as_str()),
                ("user-agent", "mcp-edge health check"),
                ("connection", "close"),
            ];
            for (name, value) in headers {
                req.insert_header(name, value).map_err(ProbeError::Http)?;
            }
            session
                .write_request_header(Box::new(req))
                .await
                .map_err(ProbeError::Http)?;
            session.read_response().await.map_err(ProbeError::Http)?;
            let status = session.resp_header().map_or(0, |h| h.status.as_u16());
            match status {
                200..=399 => Ok(()),
                s => Err(ProbeError::Status(s)),
            }
        };
        tokio::time::timeout(check.timeout, attempt)
            .await
            .unwrap_or(Err(ProbeError::TimedOut(check.timeout)))
    }

    /// Records a probe's result for replica `i`; returns whether the replica's state changed.
    pub fn record_probe(&self, i: usize, passed: bool) -> bool {
        let (before, after) = self.update_health(i, |h| {
            h.probe_failed = !passed;
            if passed {
                h.down_until = None;
            }
        });
        before != after
    }
}

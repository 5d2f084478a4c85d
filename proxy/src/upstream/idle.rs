//! Connections to the replicas: new ones made by pingora's transport connector (TCP, and TLS
//! for HTTPS upstreams), idle ones kept here for the next request to the same replica.
//!
//! pingora's own pool spawns a task per connection it takes back (to notice a close while it
//! is idle) and wakes it again on each reuse: two task switches and a lock per request. Here an
//! idle connection is only parked: whether it is still usable is asked when it is taken (a
//! read that must not be ready: the reactor already knows of a close or of stray bytes), and
//! one sweeper per pool closes, once a second, the ones past their idle timeout or closed by
//! the replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use tokio::io::AsyncReadExt;

/// How often the sweeper looks at the idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The connector of the proxy's upstream requests.
pub struct Upstreams {
    transport: TransportConnector,
    idle: Arc<Mutex<Idle>>,
}

/// The idle connections, by replica (its pool key and address), the most recently parked last.
struct Idle {
    by_peer: HashMap<(u64, SocketAddr), Vec<Parked>>,
    count: usize,
    max: usize,
    sweeping: bool,
}

struct Parked {
    stream: Stream,
    until: Instant,
}

impl Upstreams {
    /// `max` idle connections in all (the descriptor budget reserves them).
    pub fn new(options: ConnectorOptions, max: usize) -> Self {
        Self {
            transport: TransportConnector::new(Some(options)),
            idle: Arc::new(Mutex::new(Idle {
                by_peer: HashMap::new(),
                count: 0,
                max,
                sweeping: false,
            })),
        }
    }

    /// An HTTP/1 session to `peer`: on an idle connection if one is still usable (`true`), or
    /// on a new one.
    pub async fn get<P: Peer + Send + Sync + 'static>(
        &self,
        peer: &P,
    ) -> Result<(HttpSession, bool)> {
        let (stream, reused) = match self.take(peer) {
            Some(stream) => (stream, true),
            None => (self.transport.new_stream(peer).await?, false),
        };
        Ok((HttpSession::new_with_options(stream, peer), reused))
    }

    /// The most recently parked usable connection to `peer`; the unusable ones met on the way
    /// are closed.
    fn take<P: Peer>(&self, peer: &P) -> Option<Stream> {
        let key = (peer.reuse_hash(), peer.address().clone());
        let now = Instant::now();
        loop {
            let mut parked = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let parked = idle.by_peer.get_mut(&key)?.pop()?;
                idle.count -= 1;
                parked
            };
            if parked.until > now && usable(&mut parked.stream) {
                return Some(parked.stream);
            }
        }
    }

    /// The session's connection, kept for the next request if it may be reused (its response
    /// read whole, keep-alive on both sides).
    pub async fn release<P: Peer>(&self, mut session: HttpSession, peer: &P) {
        session.respect_keepalive();
        let Some(stream) = session.reuse().await else {
            return;
        };
        let Some(timeout) = peer.idle_timeout() else {
            return;
        };
        let key = (peer.reuse_hash(), peer.address().clone());
        let parked = Parked {
            stream,
            until: Instant::now() + timeout,
        };
        let start_sweeper = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.count >= idle.max {
                // Full: the connection idle longest makes room.
                idle.evict_oldest();
            }
            idle.by_peer.entry(key).or_default().push(parked);
            idle.count += 1;
            !std::mem::replace(&mut idle.sweeping, true)
        };
        if start_sweeper {
            tokio::spawn(sweep(Arc::downgrade(&self.idle)));
        }
    }
}

impl Idle {
    fn evict_oldest(&mut self) {
        let oldest = (self.by_peer.iter())
            .filter_map(|(key, list)| Some((key, list.first()?.until)))
            .min_by_key(|(_, until)| *until)
            .map(|(key, _)| key.clone());
        if let Some(list) = oldest.and_then(|key| self.by_peer.get_mut(&key)) {
            list.remove(0);
            self.count -= 1;
        }
    }

    /// Closes what is past its idle timeout or no longer usable.
    fn sweep(&mut self, now: Instant) {
        let mut count = 0;
        self.by_peer.retain(|_, list| {
            list.retain_mut(|p| p.until > now && usable(&mut p.stream));
            count += list.len();
            !list.is_empty()
        });
        self.count = count;
    }
}

/// Sweeps the pool once a second for as long as it exists.
async fn sweep(idle: Weak<Mutex<Idle>>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.sweep(Instant::now());
    }
}

/// Whether an idle connection may carry a request: nothing to read yet. A replica that closed
/// it, or sent bytes nobody asked for, made it readable (the reactor knows without a system
/// call when it does not).
fn usable(stream: &mut Stream) -> bool {
    let mut byte = [0; 1];
    // Unconstrained: tokio's budget must not make a ready read look pending.
    let read = tokio::task::unconstrained(stream.read(&mut byte)).now_or_never();
    read.is_none()
}

//! Connections to the replicas: new ones made by pingora's transport connector (TCP, and TLS
//! for HTTPS upstreams), idle ones kept here for the next request to the same replica.
//!
//! pingora's own pool spawns a task per connection it takes back (to notice a close while it
//! is idle) and wakes it again on each reuse: two task switches and a lock per request. Here an
//! idle connection is only parked: whether it is still usable is asked when it is parked and
//! when it is taken (a read that must not be ready: the reactor already knows of a close or of
//! stray bytes), and one sweeper per pool closes, once a second, the ones past their idle
//! timeout or closed by the replica. Streams are closed after the lock is let go.

use rustc_hash::FxHashMap;
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

/// Which connections may serve a peer: its address, its trust (`group_key`: 0 for plain
/// upstreams, a digest of pins, CA and client certificate for HTTPS ones) and pingora's hash
/// of the rest of its settings. Exact in what separates trust: no hash collision can join two.
/// Made once per request ([`PeerKey::of`]), for taking a connection and parking it again.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerKey(SocketAddr, u64, u64);

impl PeerKey {
    pub fn of(peer: &HttpPeer) -> Self {
        Self(peer.address().clone(), peer.group_key, peer.reuse_hash())
    }
}

/// The idle connections, by peer, the most recently parked last.
struct Idle {
    by_peer: FxHashMap<PeerKey, Vec<Parked>>,
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
            idle: Arc::new(Mutex::new(Idle::new(max))),
        }
    }

    /// An HTTP/1 session to `peer`: on an idle connection if one is still usable (`true`), or
    /// on a new one.
    /// The session is boxed: it is moved several times per request, and is several hundred
    /// bytes.
    pub async fn get(&self, peer: &HttpPeer, key: &PeerKey) -> Result<(Box<HttpSession>, bool)> {
        let (stream, reused) = match self.take(peer, key) {
            Some(stream) => (stream, true),
            None => (self.transport.new_stream(peer).await?, false),
        };
        Ok((
            Box::new(HttpSession::new_with_options(stream, peer)),
            reused,
        ))
    }

    /// The most recently parked usable connection to `peer`; the unusable ones met on the way
    /// are closed.
    fn take(&self, peer: &HttpPeer, key: &PeerKey) -> Option<Stream> {
        let now = Instant::now();
        loop {
            let mut parked = lock(&self.idle).take(key)?;
            if parked.until > now && usable(&mut parked.stream, peer) {
                return Some(parked.stream);
            }
        }
    }

    /// The session's connection, kept for the next request if it may be reused (its response
    /// read whole, keep-alive on both sides, nothing more to read), for the peer's idle timeout
    /// or less if the replica said it closes sooner.
    pub async fn release(&self, mut session: Box<HttpSession>, peer: &HttpPeer, key: PeerKey) {
        session.respect_keepalive();
        let told = told_timeout(&session);
        let Some(mut stream) = session.reuse().await else {
            return;
        };
        let Some(timeout) = keep_for(peer.idle_timeout(), told) else {
            return;
        };
        if !usable(&mut stream, peer) {
            return;
        }
        let parked = Parked {
            stream,
            until: Instant::now() + timeout,
        };
        let (evicted, start_sweeper) = {
            let mut idle = lock(&self.idle);
            let evicted = idle.park(key, parked);
            (evicted, !std::mem::replace(&mut idle.sweeping, true))
        };
        drop(evicted);
        if start_sweeper {
            tokio::spawn(sweep(Arc::downgrade(&self.idle)));
        }
    }
}

/// How long the replica said it keeps an idle connection: `Keep-Alive: timeout=N` (Node's
/// servers send 5 s and close then).
fn told_timeout(session: &HttpSession) -> Option<Duration> {
    let value = session.get_header("keep-alive")?.to_str().ok()?;
    value.split(',').find_map(|param| {
        let (name, secs) = param.split_once('=')?;
        let secs = secs.trim().trim_matches('"').parse().ok()?;
        name.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| Duration::from_secs(secs))
    })
}

/// How long a connection stays parked: the peer's idle timeout, but a second short of what
/// the replica said, so that no request is sent as the replica closes (a POST is not sent
/// again). `None`: not parked.
fn keep_for(idle: Option<Duration>, told: Option<Duration>) -> Option<Duration> {
    let idle = idle?;
    let keep = match told {
        Some(told) => idle.min(told.checked_sub(Duration::from_secs(1))?),
        None => idle,
    };
    (!keep.is_zero()).then_some(keep)
}

fn lock(idle: &Mutex<Idle>) -> std::sync::MutexGuard<'_, Idle> {
    idle.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Idle {
    fn new(max: usize) -> Self {
        Self {
            by_peer: FxHashMap::default(),
            count: 0,
            max,
            sweeping: false,
        }
    }

    fn take(&mut self, key: &PeerKey) -> Option<Parked> {
        let parked = self.by_peer.get_mut(key)?.pop()?;
        self.count -= 1;
        Some(parked)
    }

    /// Parks a connection; when full, the one due to be closed soonest (the one idle longest,
    /// when the replicas keep them equally long) makes room: returned, to be closed once the
    /// lock is let go.
    fn park(&mut self, key: PeerKey, parked: Parked) -> Option<Parked> {
        let evicted = if self.count >= self.max {
            self.evict_soonest_due()
        } else {
            None
        };
        if self.max > 0 {
            self.by_peer.entry(key).or_default().push(parked);
            self.count += 1;
        }
        evicted
    }

    fn evict_soonest_due(&mut self) -> Option<Parked> {
        // A peer's list is in parking order, and one replica says one timeout: its first is
        // its soonest due.
        let soonest = (self.by_peer.iter())
            .filter_map(|(key, list)| Some((key, list.first()?.until)))
            .min_by_key(|(_, until)| *until)
            .map(|(key, _)| key.clone())?;
        let list = self.by_peer.get_mut(&soonest)?;
        let parked = list.remove(0);
        if list.is_empty() {
            self.by_peer.remove(&soonest);
        }
        self.count -= 1;
        Some(parked)
    }

    /// Takes out what is past its idle timeout or no longer usable (to be closed once the lock
    /// is let go).
    fn sweep(&mut self, now: Instant) -> Vec<Parked> {
        let mut gone = Vec::new();
        self.by_peer.retain(|PeerKey(addr, ..), list| {
            let spent = |p: &mut Parked| p.until <= now || !usable_at(&mut p.stream, addr);
            gone.extend(list.extract_if(.., spent));
            !list.is_empty()
        });
        self.count -= gone.len();
        gone
    }
}

/// Sweeps the pool once a second for as long as it exists; a new sweeper starts with the next
/// connection parked if this one ends (its runtime stopped).
async fn sweep(idle: Weak<Mutex<Idle>>) {
    struct Ended(Weak<Mutex<Idle>>);
    impl Drop for Ended {
        fn drop(&mut self) {
            if let Some(idle) = self.0.upgrade() {
                lock(&idle).sweeping = false;
            }
        }
    }
    let _ended = Ended(idle.clone());
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let gone = lock(&idle).sweep(Instant::now());
        drop(gone);
    }
}

fn usable(stream: &mut Stream, peer: &HttpPeer) -> bool {
    usable_at(stream, peer.address())
}

/// Whether an idle connection may carry a request: nothing to read yet. A replica that closed
/// it, or sent bytes nobody asked for, made it readable (the reactor knows without a system
/// call when it did not). Stray bytes mean the edge and the replica disagree on where a
/// response ended: logged and counted. (Over TLS, stray bytes short of a whole record are not
/// seen yet; the next response read fails on them instead.)
fn usable_at(stream: &mut Stream, addr: &SocketAddr) -> bool {
    let mut byte = [0; 1];
    // Unconstrained: tokio's budget must not make a ready read look pending.
    match tokio::task::unconstrained(stream.read(&mut byte)).now_or_never() {
        None => true,
        Some(Ok(1..)) => {
            tracing::warn!(replica = %addr, "an idle upstream connection had bytes nobody asked for; closed");
            crate::metrics::get().upstream_stray_bytes.inc();
            false
        }
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected stream and the replica's end of it.
    async fn pair(listener: &tokio::net::TcpListener) -> (Stream, tokio::net::TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let ours = pingora::protocols::l4::stream::Stream::from(ours.unwrap());
        (Box::new(ours), theirs.unwrap().0)
    }

    fn parked(stream: Stream, secs: u64) -> Parked {
        Parked {
            stream,
            until: Instant::now() + Duration::from_secs(secs),
        }
    }

    fn key_of(port: u16, group: u64) -> PeerKey {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        PeerKey(SocketAddr::Inet(addr), group, 0)
    }

    #[test]
    fn a_replica_that_closes_sooner_is_believed() {
        let s = Duration::from_secs;
        assert_eq!(keep_for(Some(s(60)), None), Some(s(60)));
        assert_eq!(keep_for(Some(s(60)), Some(s(5))), Some(s(4)), "Node's 5 s");
        assert_eq!(
            keep_for(Some(s(60)), Some(s(600))),
            Some(s(60)),
            "never longer"
        );
        assert_eq!(keep_for(Some(s(60)), Some(s(1))), None, "too short to keep");
        assert_eq!(keep_for(Some(s(60)), Some(s(0))), None);
        assert_eq!(keep_for(None, Some(s(5))), None);
    }

    #[tokio::test]
    async fn the_pool_counts_evicts_and_sweeps_what_it_holds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut replicas = Vec::new();
        let mut idle = Idle::new(2);
        for (i, key) in [key_of(1, 0), key_of(1, 7), key_of(2, 0)]
            .into_iter()
            .enumerate()
        {
            let (stream, theirs) = pair(&listener).await;
            replicas.push(theirs);
            let evicted = idle.park(key, parked(stream, 10));
            // The third makes room: the one due soonest goes (all keep 10 s: the first).
            assert_eq!(evicted.is_some(), i == 2, "parking #{i}");
            assert_eq!(idle.count, (i + 1).min(2));
        }
        assert!(idle.take(&key_of(1, 0)).is_none(), "evicted");
        assert!(idle.take(&key_of(9, 0)).is_none(), "never parked");
        // The same address under another trust is another key, and each is taken once.
        assert!(idle.take(&key_of(1, 7)).is_some());
        assert!(idle.take(&key_of(1, 7)).is_none());
        assert_eq!(idle.count, 1);

        // Swept: the one past its idle timeout and the one its replica closed; the live one
        // stays.
        let mut idle = Idle::new(10);
        let (stream, _live) = pair(&listener).await;
        idle.park(key_of(3, 0), parked(stream, 10));
        let (stream, _late) = pair(&listener).await;
        let late = Parked {
            stream,
            until: Instant::now(),
        };
        idle.park(key_of(4, 0), late);
        let (stream, mut closed) = pair(&listener).await;
        idle.park(key_of(5, 0), parked(stream, 10));
        closed.shutdown().await.unwrap();
        drop(closed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let gone = idle.sweep(Instant::now());
        assert_eq!(gone.len(), 2);
        assert_eq!(idle.count, 1);
        assert!(idle.take(&key_of(3, 0)).is_some(), "the live one");
        assert_eq!(idle.count, 0);
        assert_eq!(idle.by_peer.values().map(Vec::len).sum::<usize>(), 0);
    }
}

//! Log hygiene for what strangers can trigger at will: pingora's line per refused TLS handshake
//! is let through a few times per interval, the rest counted and reported in one line, so that a
//! client cannot flood the log (or the disk behind it) on demand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::Metadata;

/// Lines of one kind let through per window.
const BURST: u64 = 5;
const WINDOW: Duration = Duration::from_secs(10);

/// pingora's module that logs each failed downstream TLS handshake (at ERROR, with the
/// client's address).
const HANDSHAKE_TARGET: &str = "pingora_core::services::listening";

struct Window {
    started: Option<Instant>,
    passed: u64,
}

static WINDOW_STATE: Mutex<Window> = Mutex::new(Window {
    started: None,
    passed: 0,
});
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Whether an event may be logged: everything but refused-handshake lines past the burst.
pub fn allow(meta: &Metadata<'_>) -> bool {
    if !meta.is_event() || meta.target() != HANDSHAKE_TARGET || *meta.level() > tracing::Level::WARN
    {
        return true;
    }
    let mut w = WINDOW_STATE.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if w.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
        w.started = Some(now);
        w.passed = 0;
    }
    if w.passed < BURST {
        w.passed += 1;
        true
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        false
    }
}

/// Logs, once, how many refused-handshake lines were held back since the last call.
pub fn report_suppressed() {
    let n = SUPPRESSED.swap(0, Ordering::Relaxed);
    if n > 0 {
        tracing::warn!(
            suppressed = n,
            "downstream handshake errors not logged (at most {BURST} every {}s are)",
            WINDOW.as_secs()
        );
    }
}

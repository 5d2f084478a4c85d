//! Unix seconds and `SystemTime`, both ways: certificates, the status file and the schedule
//! count in Unix seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `t` in Unix seconds (negative before 1970).
pub fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// The moment `secs` Unix seconds name.
pub fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    unix(SystemTime::now())
}

/// `secs` as RFC 3339 (UTC, whole seconds), for reports and logs.
pub fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(from_unix(secs)).to_string()
}

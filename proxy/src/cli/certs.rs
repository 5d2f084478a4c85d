//! `mcp-edge certs`: each host's certificate (from its files, or from storage: the directory
//! or Redis) and, for ACME hosts, what the running proxies last recorded (next renewal,
//! failures, last error) and which replica holds the host's ordering lock.

use std::fmt::Write;

use crate::acme::lock_name;
use crate::acme::schedule::{HostStatus, StatusFile};
use crate::certs::names_of;
use crate::config::{Config, Host, TlsSource};
use crate::pem;
use crate::storage::{Key, Storage};
use crate::time::{rfc3339, unix_now};

/// What `mcp-edge certs` prints.
pub fn report(config: &Config) -> Result<String, String> {
    let storage = Storage::open_for_reading(&config.storage).map_err(|e| e.to_string())?;
    Ok(Storage::block_on(report_from(config, &storage)))
}

/// Where a host's certificate comes from, and its bytes.
enum Source {
    Files(std::path::PathBuf, std::path::PathBuf),
    Stored(Key, Key),
}

async fn report_from(config: &Config, storage: &Storage) -> String {
    let status = StatusFile::read(storage).await;
    let now = unix_now();
    let mut out = String::new();
    for host in &config.hosts {
        let _ = writeln!(out, "{} (tls: {})", host.name, host.tls.kind());
        let _ = writeln!(out, "  names:        {}", names_of(host).join(", "));
        if !certificate(host, storage, now, &mut out).await || host.tls != TlsSource::Acme {
            continue;
        }
        let acme = config.acme.as_ref();
        let _ = writeln!(
            out,
            "  acme:         {} from {}{}",
            config.challenge(host).as_str(),
            acme.map_or("-", |a| a.directory.as_str()),
            acme.and_then(|a| a.profile.as_deref())
                .map(|p| format!(", profile {p}"))
                .unwrap_or_default()
        );
        let _ = match storage.lock_holder(&lock_name(host.name.as_str())).await {
            Ok(Some(h)) => writeln!(
                out,
                "  lock:         held by {} (lease {}s left): ordering",
                h.replica,
                h.expires_in.as_secs()
            ),
            Ok(None) => writeln!(out, "  lock:         free"),
            Err(e) => writeln!(out, "  lock:         unknown ({e})"),
        };
        let host_status = status
            .as_ref()
            .and_then(|s| s.hosts.get(host.name.as_str()));
        renewal(host_status, &mut out);
    }
    if let Some(s) = status {
        let by = if s.replica.is_empty() {
            String::new()
        } else {
            format!(" by {}", s.replica)
        };
        let _ = writeln!(
            out,
            "(ACME status as recorded{by} at {})",
            rfc3339(s.written)
        );
    }
    out
}

/// The host's certificate: where it is kept, its names, issuer and expiry. False for a host
/// without TLS.
async fn certificate(host: &Host, storage: &Storage, now: i64, out: &mut String) -> bool {
    let source = match &host.tls {
        TlsSource::None => None,
        TlsSource::Acme => Some(Source::Stored(
            Key::acme_cert(&host.name),
            Key::acme_key(&host.name),
        )),
        TlsSource::SelfSigned => Some(Source::Stored(
            Key::self_signed_cert(&host.name),
            Key::self_signed_key(&host.name),
        )),
        TlsSource::Files { cert, key } => Some(Source::Files(cert.clone(), key.clone())),
    };
    let loaded = match &source {
        None => {
            let _ = writeln!(out, "  certificate:  none (plain HTTP)");
            return false;
        }
        Some(Source::Files(cert, key)) => {
            let _ = writeln!(out, "  certificate:  {}", cert.display());
            match pem::load_key_pair(cert, key) {
                Ok(c) => Ok(Some(c)),
                Err(_) if !cert.exists() => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        }
        Some(Source::Stored(cert, key)) => {
            let _ = writeln!(out, "  certificate:  {cert} in {}", storage.describe());
            crate::certs::read_pair(storage, cert, key).await
        }
    };
    match loaded {
        Ok(Some(c)) => {
            let i = &c.info;
            let left = (i.not_after - now) / 86_400;
            let _ = writeln!(out, "  cert names:   {}", i.names.join(", "));
            let _ = writeln!(out, "  issuer:       {}", i.issuer);
            let _ = writeln!(
                out,
                "  not after:    {} ({})",
                rfc3339(i.not_after),
                if i.not_after <= now {
                    "EXPIRED".to_string()
                } else {
                    format!("{left} days left")
                }
            );
            if !c.covers(host.names()) {
                let _ = writeln!(out, "  warning:      does not name every name of the host");
            }
        }
        Ok(None) => {
            let _ = writeln!(out, "  not stored yet");
        }
        Err(e) => {
            let _ = writeln!(out, "  unusable:     {e}");
        }
    }
    true
}

/// What the running proxies last recorded about an ACME host's renewal.
fn renewal(status: Option<&HostStatus>, out: &mut String) {
    let Some(st) = status else {
        let _ = writeln!(
            out,
            "  next renewal: unknown (no status from a running mcp-edge)"
        );
        return;
    };
    let _ = match (st.next_renewal, &st.renewal_source) {
        (Some(t), Some(src)) => writeln!(out, "  next renewal: {} ({src})", rfc3339(t)),
        _ => writeln!(out, "  next renewal: as soon as possible"),
    };
    if let Some(t) = st.last_issued {
        let _ = writeln!(out, "  last issued:  {}", rfc3339(t));
    }
    if let Some(ca) = &st.ca {
        let _ = writeln!(out, "  issued by:    {ca}");
    }
    if let (Some(e), Some(t)) = (&st.last_error, st.last_error_at) {
        let _ = writeln!(out, "  last error:   {} at {}", e, rfc3339(t));
        let _ = writeln!(
            out,
            "  failures:     {} in a row{}",
            st.consecutive_failures,
            st.next_attempt
                .map(|n| format!(", next attempt {}", rfc3339(n)))
                .unwrap_or_default()
        );
    }
}

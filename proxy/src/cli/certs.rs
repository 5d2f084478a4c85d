//! `mcp-edge certs`: each host's certificate on disk and, for ACME hosts, what the running proxy
//! last recorded (next renewal, failures, last error).

use std::fmt::Write;

use crate::acme::schedule::StatusFile;
use crate::certs::names_of;
use crate::config::{Config, TlsSource};
use crate::pem;
use crate::storage::{Layout, PairPaths};
use crate::time::{rfc3339, unix_now};

/// What `mcp-edge certs` prints.
pub fn report(config: &Config) -> String {
    let layout = Layout::new(&config.storage);
    let status = StatusFile::read(&layout);
    let now = unix_now();
    let mut out = String::new();
    for host in &config.hosts {
        let _ = writeln!(out, "{} (tls: {})", host.name, host.tls.kind());
        let _ = writeln!(out, "  names:        {}", names_of(host).join(", "));
        let paths = match &host.tls {
            TlsSource::None => None,
            TlsSource::Acme => Some(layout.acme_cert(&host.name)),
            TlsSource::SelfSigned => Some(layout.self_signed(&host.name)),
            TlsSource::Files { cert, key } => Some(PairPaths {
                cert: cert.clone(),
                key: key.clone(),
            }),
        };
        let Some(PairPaths { cert, key }) = paths else {
            let _ = writeln!(out, "  certificate:  none (plain HTTP)");
            continue;
        };
        let _ = writeln!(out, "  certificate:  {}", cert.display());
        match pem::load_key_pair(&cert, &key) {
            Ok(c) => {
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
            Err(_) if !cert.exists() => {
                let _ = writeln!(out, "  not on disk yet");
            }
            Err(e) => {
                let _ = writeln!(out, "  unusable:     {e}");
            }
        }
        if host.tls != TlsSource::Acme {
            continue;
        }
        match status
            .as_ref()
            .and_then(|s| s.hosts.get(host.name.as_str()))
        {
            None => {
                let _ = writeln!(
                    out,
                    "  next renewal: unknown (no status from a running mcp-edge)"
                );
            }
            Some(st) => {
                let _ = match (st.next_renewal, &st.renewal_source) {
                    (Some(t), Some(src)) => writeln!(out, "  next renewal: {} ({src})", rfc3339(t)),
                    _ => writeln!(out, "  next renewal: as soon as possible"),
                };
                if let Some(t) = st.last_issued {
                    let _ = writeln!(out, "  last issued:  {}", rfc3339(t));
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
        }
    }
    if let Some(s) = status {
        let _ = writeln!(out, "(ACME status as recorded at {})", rfc3339(s.written));
    }
    out
}

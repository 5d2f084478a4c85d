//! `mcp-edge upstream-cert`: connects to an HTTPS upstream, prints the presented chain and a
//! YAML snippet that pins the leaf, with warnings for an expired leaf or one that does not name
//! the host.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pem::{hex, sha256};
use crate::time::unix_now;
use crate::upstream::trust::ChainRecorder;

/// Why the upstream's certificate could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("{url:?} is not a URL: {source}")]
    Url {
        url: String,
        source: url::ParseError,
    },
    #[error("{0}: expected an https:// URL with a host")]
    NotHttps(String),
    #[error("{0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}: no TLS handshake within 10s")]
    Timeout(String),
    #[error("TLS client: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the server presented no certificate")]
    NoCertificate,
    #[error("certificate {index} cannot be parsed: {reason}")]
    Parse { index: usize, reason: String },
}

/// A SAN entry as people write it: `example.com`, `192.168.1.20`, `::1`; others as x509-parser
/// shows them.
fn general_name(n: &x509_parser::extensions::GeneralName<'_>) -> String {
    use x509_parser::extensions::GeneralName;
    match n {
        GeneralName::DNSName(d) => d.to_string(),
        GeneralName::IPAddress(b) => {
            crate::pem::san_ip(b).map_or_else(|| format!("{n}"), |ip| ip.to_string())
        }
        other => format!("{other}"),
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Connects to `url` (TLS, SNI `server_name` or the URL's host) and records the chain it sends.
async fn fetch_chain(
    url: &str,
    server_name: Option<&str>,
) -> Result<(Fetched, Vec<Vec<u8>>), InspectError> {
    let u = url::Url::parse(url).map_err(|source| InspectError::Url {
        url: url.to_string(),
        source,
    })?;
    if u.scheme() != "https" {
        return Err(InspectError::NotHttps(url.to_string()));
    }
    let host = match u.host() {
        Some(url::Host::Ipv6(a)) => a.to_string(),
        Some(h) => h.to_string(),
        None => return Err(InspectError::NotHttps(url.to_string())),
    };
    let port = u.port_or_known_default().unwrap_or(443);
    let name = server_name.unwrap_or(&host).to_string();
    let sni =
        ServerName::try_from(name.clone()).map_err(|_| InspectError::ServerName(name.clone()))?;
    let recorder = ChainRecorder::default();
    let config = recorder.client_config()?;
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let connect = async {
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|source| InspectError::Connect {
                addr: addr.clone(),
                source,
            })?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(sni, tcp)
            .await
            .map_err(|source| InspectError::Handshake {
                addr: addr.clone(),
                source,
            })
    };
    let tls = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| InspectError::Timeout(addr.clone()))??;
    let version = format!("{:?}", tls.get_ref().1.protocol_version());
    drop(tls);
    Ok((
        Fetched {
            addr,
            name,
            version,
        },
        recorder.chain(),
    ))
}

/// One certificate of the chain into `out`; what is wrong with the leaf into `warnings`.
fn describe(
    i: usize,
    der: &[u8],
    name: &str,
    now: i64,
    out: &mut String,
    warnings: &mut Vec<String>,
) -> Result<(), InspectError> {
    use std::fmt::Write;
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| InspectError::Parse {
        index: i,
        reason: e.to_string(),
    })?;
    let sans: Vec<String> = c
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| s.value.general_names.iter().map(general_name).collect())
        .unwrap_or_default();
    let ca = c
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|b| b.value.ca);
    let self_signed = c.subject() == c.issuer();
    let (nb, na) = (c.validity().not_before, c.validity().not_after);
    let _ = writeln!(out, "\n[{i}] {}", if i == 0 { "leaf" } else { "chain" });
    let _ = writeln!(out, "  subject:     {}", c.subject());
    let _ = writeln!(
        out,
        "  SAN:         {}",
        if sans.is_empty() {
            "(none)".into()
        } else {
            sans.join(", ")
        }
    );
    let _ = writeln!(out, "  issuer:      {}", c.issuer());
    let _ = writeln!(out, "  valid:       {nb} to {na}");
    let _ = writeln!(
        out,
        "  self-signed: {}{}",
        if self_signed { "yes" } else { "no" },
        if ca { " (CA:TRUE)" } else { "" }
    );
    let _ = writeln!(out, "  SHA-256:     {}", colon_hex(&sha256(der)));
    if i == 0 {
        if na.timestamp() <= now {
            warnings.push(format!("the certificate EXPIRED on {na}"));
        } else if nb.timestamp() > now {
            warnings.push(format!("the certificate is not valid before {nb}"));
        }
        let cn: Vec<String> = c
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect();
        let named = sans
            .iter()
            .chain(cn.iter())
            .any(|n| n.eq_ignore_ascii_case(name.trim_matches(['[', ']'])));
        if !named {
            warnings.push(format!(
                "the certificate does not name {name} (SAN: {}; CN: {}): a pin still works, `ca:` would not",
                if sans.is_empty() { "none".into() } else { sans.join(", ") },
                if cn.is_empty() { "none".into() } else { cn.join(", ") }
            ));
        }
    }
    Ok(())
}

/// Where a chain came from.
struct Fetched {
    addr: String,
    name: String,
    version: String,
}

/// The report for the HTTPS server at `url`.
pub async fn inspect(url: &str, server_name: Option<&str>) -> Result<String, InspectError> {
    use std::fmt::Write;
    let (
        Fetched {
            addr,
            name,
            version,
        },
        chain,
    ) = fetch_chain(url, server_name).await?;
    let name = name.as_str();
    let leaf_der = chain.first().ok_or(InspectError::NoCertificate)?;

    let now = unix_now();
    let mut out = String::new();
    let mut warnings = Vec::new();
    let _ = writeln!(out, "{url} ({version}, SNI {name})");
    for (i, der) in chain.iter().enumerate() {
        describe(i, der, name, now, &mut out, &mut warnings)?;
    }
    let _ = writeln!(out);
    for w in &warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    let _ = writeln!(
        out,
        "\n# Paste into the host's config after checking the fingerprint out of band:\nupstream:\n  urls: [\"https://{addr}\"]\n  pin_sha256: [\"{}\"]",
        hex(&sha256(leaf_der))
    );
    if server_name.is_some() {
        let _ = writeln!(out, "  server_name: {name}");
    }
    Ok(out)
}

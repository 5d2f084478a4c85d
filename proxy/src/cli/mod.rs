//! The reports of the command line: `check`, `certs`, `upstream-cert`. Nothing on the request
//! path uses this module.

pub mod certs;
pub mod upstream_cert;

use crate::config::{self, Config, TlsSource};

/// `mcp-edge check`: the configuration loads and every upstream it names can be set up.
/// Binds nothing, writes nothing. On success, the line to print.
pub fn check(path: &std::path::Path) -> Result<String, String> {
    let config: Config = config::load(path).map_err(|e| e.to_string())?;
    if let Err(errors) = crate::routing::Table::build(&config) {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        return Err(format!("{}:\n{}", path.display(), lines.join("\n")));
    }
    let n = config.hosts.len();
    let mut out = format!(
        "{}: ok ({n} host{})",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for h in config.hosts.iter().filter(|h| h.tls_auto) {
        let why = match h.tls {
            TlsSource::Acme => "a public name: a certificate from the ACME CA",
            _ => "not a public name: a self-signed certificate",
        };
        out.push_str(&format!(
            "\n  {}: tls: auto is {} ({why})",
            h.name,
            h.tls.kind()
        ));
    }
    Ok(out)
}

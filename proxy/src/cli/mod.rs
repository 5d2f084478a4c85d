//! The reports of the command line: `check`, `certs`, `upstream-cert`. Nothing on the request
//! path uses this module.

pub mod certs;
pub mod upstream_cert;

use crate::config::{self, Config};

/// `mcp-edge check`: the configuration loads and every upstream it names can be set up.
/// Binds nothing, writes nothing. On success, the line to print.
pub fn check(path: &std::path::Path) -> Result<String, String> {
    let config: Config = config::load(path).map_err(|e| e.to_string())?;
    if let Err(errors) = crate::routing::Table::build(&config) {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        return Err(format!("{}:\n{}", path.display(), lines.join("\n")));
    }
    let n = config.hosts.len();
    Ok(format!(
        "{}: ok ({n} host{})",
        path.display(),
        if n == 1 { "" } else { "s" }
    ))
}

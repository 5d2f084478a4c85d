//! The reports of the command line: `check`, `certs`, `health`, `upstream-cert`, `storage-copy`. Nothing
//! on the request path uses this module.

pub mod certs;
pub mod health;
pub mod storage_copy;
pub mod upstream_cert;

use crate::config::{self, Config, TlsSource};

/// `mcp-edge api-key NAME`: a new random key and the `api_keys.keys` line that admits it.
pub fn api_key(name: &str) -> Result<String, String> {
    use base64::Engine;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!("{name:?}: a key name is letters, digits, - _ ."));
    }
    let mut raw = [0u8; 32];
    rand::RngExt::fill(&mut rand::rng(), &mut raw);
    let key = format!(
        "mcpe_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = crate::pem::hex(&crate::pem::sha256(key.as_bytes()));
    Ok(format!(
        "key (give it to the client; it is not stored anywhere): {key}\n\
         line for auth.api_keys.keys in the YAML:\n  {name}: sha256:{hash}"
    ))
}

/// `mcp-edge check`: the configuration loads and every upstream it names can be set up.
/// Binds nothing, writes nothing. On success, the line to print.
pub fn check(path: &std::path::Path) -> Result<String, String> {
    let config: Config = config::load(path).map_err(|e| e.to_string())?;
    if let Err(errors) = crate::routing::Table::build(&config) {
        let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
        return Err(format!("{}:\n{}", path.display(), lines.join("\n")));
    }
    let mut notes = Vec::new();
    if let Some(note) = crate::acme::profile_offered(&config)? {
        notes.push(note);
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
    for note in notes {
        out.push_str(&format!("\n  {note}"));
    }
    Ok(out)
}

//! A real authoritative DNS server for DNS-01 tests: BIND 9 (Debian package `bind9`) on an
//! ephemeral loopback port, primary for one zone, taking RFC 2136 updates signed with a TSIG
//! key (and nothing else). pebble resolves through it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_listening};

pub struct Bind {
    pub addr: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// The TSIG secret, base64 (as `tsig-keygen` prints it).
    pub secret: String,
    dir: PathBuf,
    child: Child,
}

impl Bind {
    /// Starts `named` for `zone` (whose `ns` is 127.0.0.1) and waits until it answers.
    pub async fn start(dir: &Path, zone: &str) -> Self {
        use base64::Engine;
        let dir = dir.join("bind");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let secret = base64::engine::general_purpose::STANDARD.encode(rand_bytes());
        let key_name = "mcp-edge-test".to_string();
        let d = dir.display();
        let conf = format!(
            r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
  allow-query {{ any; }};
}};
controls {{ }};
key "{key_name}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{zone}" {{ type primary; file "{d}/zone.db"; allow-update {{ key "{key_name}"; }}; }};
"#
        );
        std::fs::write(dir.join("named.conf"), conf).unwrap();
        std::fs::write(
            dir.join("zone.db"),
            format!("$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"),
        )
        .unwrap();
        let child = Command::new("named")
            .args(["-g", "-c"])
            .arg(dir.join("named.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("named.log")).unwrap())
            .spawn()
            .expect("start named (Debian package bind9)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_listening(port, Duration::from_secs(20), "named listening").await;
        Self {
            addr,
            zone: zone.to_string(),
            key_name,
            secret,
            dir,
            child,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("named.log")).unwrap_or_default()
    }

    /// The TXT values of `name` as the server answers them now (`dig`, Debian `bind9-dnsutils`).
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args([
                "+short",
                "+tcp",
                "-p",
                &self.addr.port().to_string(),
                "@127.0.0.1",
                "TXT",
                name,
            ])
            .output()
            .expect("dig (Debian package bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Writes the TSIG secret to `path` (what `acme.dns.key_file` reads).
    pub fn write_secret(&self, path: &Path) {
        std::fs::write(path, format!("{}\n", self.secret)).unwrap();
    }
}

fn rand_bytes() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos(),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

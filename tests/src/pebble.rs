//! A real ACME CA for tests: pebble and pebble-challtestsrv on ephemeral loopback ports, with
//! real HTTP-01 and TLS-ALPN-01 validation against the proxy's listeners and pebble's random
//! nonce rejection left on. The pebble is 2.10 from Debian's unstable suite (ARI with
//! `/set-renewal-info/`, profiles, IP identifiers) from `$MCP_EDGE_PEBBLE_DIR` (the test
//! command fetches it with `scripts/pebble-unstable`), else whatever `pebble` is on the PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, install_crypto, TestCa};

pub struct Pebble {
    dir: PathBuf,
    pub port: u16,
    pub mgmt_port: u16,
    dns_port: u16,
    dns_mgmt_port: u16,
    /// The port pebble validates HTTP-01 on: the proxy's HTTP listener.
    pub http_port: u16,
    /// The port pebble validates TLS-ALPN-01 on: the proxy's TLS listener, when a test uses it.
    pub tls_port: u16,
    /// CA of pebble's own listener certificate: what `acme.directory_root` points at.
    pub listener_ca: TestCa,
    pebble: Option<Child>,
    dns: Option<Child>,
    /// A DNS server of the test's own (BIND for DNS-01) instead of challtestsrv.
    external_dns: Option<std::net::SocketAddr>,
}

impl Pebble {
    /// Prepares pebble's configuration in `dir` (nothing is started yet).
    pub fn new(dir: &Path, http_port: u16) -> Self {
        Self::with_ports(dir, http_port, free_port())
    }

    /// [`Pebble::new`], validating TLS-ALPN-01 on `tls_port`.
    pub fn with_ports(dir: &Path, http_port: u16, tls_port: u16) -> Self {
        let dir = dir.join("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        let listener_ca = TestCa::new("pebble listener test CA");
        let (cert, key) = listener_ca.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("listener.pem"), cert).unwrap();
        std::fs::write(dir.join("listener.key"), key).unwrap();
        std::fs::write(dir.join("listener-ca.pem"), listener_ca.pem()).unwrap();
        let p = Self {
            port: free_port(),
            mgmt_port: free_port(),
            dns_port: free_port(),
            dns_mgmt_port: free_port(),
            http_port,
            tls_port,
            listener_ca,
            pebble: None,
            dns: None,
            external_dns: None,
            dir,
        };
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", p.port),
            "managementListenAddress": format!("127.0.0.1:{}", p.mgmt_port),
            "certificate": p.dir.join("listener.pem"),
            "privateKey": p.dir.join("listener.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "profiles": {
                "default": {"description": "90 days", "validityPeriod": 7_776_000},
                "shortlived": {"description": "6 days", "validityPeriod": 518_400},
            },
        }});
        std::fs::write(p.dir.join("pebble.json"), config.to_string()).unwrap();
        p
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The file to use as `acme.directory_root`.
    pub fn directory_root(&self) -> PathBuf {
        self.dir.join("listener-ca.pem")
    }

    /// The `acme:` block of a proxy configuration for this pebble.
    pub fn acme_yaml(&self, extra: &str) -> String {
        format!(
            "acme:\n  directory: {}\n  directory_root: {}\n  contact: [ops@example.com]\n  accept_terms: true\n  retry_initial: 500ms\n  retry_max: 2s\n{extra}",
            self.directory(),
            self.directory_root().display()
        )
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .unwrap()
    }

    /// Starts challtestsrv (once) and pebble, and waits until the directory answers.
    pub async fn start(&mut self) {
        if self.dns.is_none() && self.external_dns.is_none() {
            let child = Command::new(bin("pebble-challtestsrv"))
                .args([
                    "-dnsserver",
                    &format!("127.0.0.1:{}", self.dns_port),
                    "-doh",
                    "",
                    "-management",
                    &format!("127.0.0.1:{}", self.dns_mgmt_port),
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-defaultIPv6",
                    "",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .stdout(self.log_file("challtestsrv.log"))
                .stderr(self.log_file("challtestsrv.log"))
                .spawn()
                .expect("start pebble-challtestsrv (Debian package pebble)");
            self.dns = Some(child);
        }
        let child = Command::new(bin("pebble"))
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(match self.external_dns {
                Some(a) => a.to_string(),
                None => format!("127.0.0.1:{}", self.dns_port),
            })
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env_remove("PEBBLE_WFE_NONCEREJECT")
            .stdout(self.log_file("pebble.log"))
            .stderr(self.log_file("pebble.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start pebble (Debian package pebble)");
        self.pebble = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = match client.get(self.directory()).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => r.status().to_string(),
                Err(e) => format!("{e:?}"),
            };
            assert!(
                Instant::now() < deadline,
                "pebble did not start ({last}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.external_dns.is_some() {
            return;
        }
        // challtestsrv answers DNS as soon as its management port does.
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("http://127.0.0.1:{}/", self.dns_mgmt_port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "challtestsrv did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes pebble resolve through `dns` (call before `start`): names then resolve as that
    /// server says, and DNS-01 TXT records are looked up there.
    pub fn use_dns(&mut self, dns: std::net::SocketAddr) {
        self.external_dns = Some(dns);
    }

    /// Stops pebble (challtestsrv stays); every account and order it knew is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// A client trusting pebble's listener certificate.
    pub fn client(&self) -> reqwest::Client {
        install_crypto();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.listener_ca.root_store())
            .with_no_client_auth();
        // pebble 2.10 refuses requests without one, as RFC 8555 §6.1 asks.
        reqwest::Client::builder()
            .user_agent("mcp-edge-tests")
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    /// The root that issues this pebble run's certificates (it changes on every start).
    pub async fn issuing_root(&self) -> rustls::RootCertStore {
        let pem = self
            .client()
            .get(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        crate::roots_from_pem(&pem)
    }

    /// The leaf `edge` serves for `sni` once it verifies against this CA's issuing root, at
    /// most `secs` from now.
    pub async fn wait_served(&self, edge: &crate::Edge, sni: &str, secs: u64) -> Vec<u8> {
        crate::wait_for(
            Duration::from_secs(secs),
            &format!("a certificate for {sni}"),
            || async { crate::served(edge, sni, self.issuing_root().await).await },
        )
        .await
    }

    /// Makes the CA answer renewal-information queries about `leaf_pem` with the window
    /// `start`..`end` (Unix seconds; in the past: what a mass-revocation drill does).
    pub async fn set_renewal_window(&self, leaf_pem: &str, start: i64, end: i64) {
        let ari =
            serde_json::json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}});
        let r = self
            .client()
            .post(format!(
                "https://127.0.0.1:{}/set-renewal-info/",
                self.mgmt_port
            ))
            .json(&serde_json::json!({"Certificate": leaf_pem, "ARIResponse": ari.to_string()}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "set-renewal-info: {}", r.status());
    }

    /// A mass-revocation drill for one certificate: the CA's renewal window of the leaf stored
    /// in `chain_file` (PEM) moved an hour into the past.
    pub async fn move_window_to_past(&self, chain_file: &Path) {
        let chain = std::fs::read_to_string(chain_file).unwrap();
        let end = "-----END CERTIFICATE-----";
        let leaf_pem = format!("{}{end}\n", &chain[..chain.find(end).unwrap()]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        self.set_renewal_window(&leaf_pem, now - 7200, now - 3600)
            .await;
    }

    /// Makes DNS answer `host` with `ip` (other names get 127.0.0.1).
    pub async fn add_a(&self, host: &str, ip: &str) {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/add-a", self.dns_mgmt_port))
            .json(&serde_json::json!({"host": host, "addresses": [ip]}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "add-a: {}", r.status());
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds (days to a civil date: H. Hinnant's algorithm).
fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A pebble binary: from `$MCP_EDGE_PEBBLE_DIR` when set (2.10), else from the PATH.
fn bin(name: &str) -> PathBuf {
    match std::env::var_os("MCP_EDGE_PEBBLE_DIR") {
        Some(d) => Path::new(&d).join(name),
        None => PathBuf::from(name),
    }
}

#[test]
fn rfc3339_formats_unix_seconds() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

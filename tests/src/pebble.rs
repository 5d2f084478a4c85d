//! A real ACME CA for tests: pebble and pebble-challtestsrv (Debian package `pebble`) on
//! ephemeral loopback ports, with real HTTP-01 validation against the proxy's HTTP listener and
//! pebble's random nonce rejection left on.

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
    /// CA of pebble's own listener certificate: what `acme.directory_root` points at.
    pub listener_ca: TestCa,
    pebble: Option<Child>,
    dns: Option<Child>,
}

impl Pebble {
    /// Prepares pebble's configuration in `dir` (nothing is started yet).
    pub fn new(dir: &Path, http_port: u16) -> Self {
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
            listener_ca,
            pebble: None,
            dns: None,
            dir,
        };
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", p.port),
            "managementListenAddress": format!("127.0.0.1:{}", p.mgmt_port),
            "certificate": p.dir.join("listener.pem"),
            "privateKey": p.dir.join("listener.key"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
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
        if self.dns.is_none() {
            let child = Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{}", self.dns_port),
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
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", self.dns_port))
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
            if let Ok(r) = client.get(self.directory()).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
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
        reqwest::Client::builder()
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

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

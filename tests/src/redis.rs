//! A real Redis for tests: Debian's `redis-server` on an ephemeral loopback port, one per test,
//! with an append-only file fsynced on every write (what the README asks of production), so a
//! `kill -9` and a restart lose nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_for, TestCa};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    password: Option<String>,
    /// With TLS only (no plain port): the CA file clients trust.
    tls_ca: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server keeping its data in `dir/redis`, requiring `password` if given.
    pub async fn start(dir: &Path, password: Option<&str>) -> Self {
        Self::start_with(dir, password, None).await
    }

    /// Starts a server that speaks TLS only, with a certificate for 127.0.0.1 from `ca`.
    pub async fn start_tls(dir: &Path, ca: &TestCa) -> Self {
        Self::start_with(dir, None, Some(ca)).await
    }

    async fn start_with(dir: &Path, password: Option<&str>, ca: Option<&TestCa>) -> Self {
        let dir = dir.join(format!("redis-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls_ca = ca.map(|ca| {
            let (cert, key) = ca.leaf(&["127.0.0.1"]);
            std::fs::write(dir.join("tls.pem"), cert).unwrap();
            std::fs::write(dir.join("tls.key"), key).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            dir.join("ca.pem")
        });
        let mut r = Self {
            port: free_port(),
            dir,
            password: password.map(str::to_string),
            tls_ca,
            child: None,
        };
        r.restart().await;
        r
    }

    /// `redis://127.0.0.1:PORT/0`, or `rediss://…` with TLS (no password in it).
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The CA file of a TLS server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// Starts the server again (same port, same data) and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls_ca {
            None => cmd.args(["--port", &port]),
            Some(ca) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(self.dir.join("tls.pem"))
                .arg("--tls-key-file")
                .arg(self.dir.join("tls.key"))
                .arg("--tls-ca-cert-file")
                .arg(ca),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--protected-mode", "no"]);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        self.child = Some(
            cmd.stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server (Debian package redis-server)"),
        );
        wait_for(
            Duration::from_secs(10),
            "redis-server answering",
            || async { (self.cli(&["PING"]) == "PONG").then_some(()) },
        )
        .await;
    }

    /// `kill -9`: Redis gone at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One `redis-cli` command; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "--no-auth-warning",
        ]);
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some(p) = &self.password {
            cmd.args(["-a", p]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

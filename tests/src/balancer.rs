//! An L4 round robin in front of replicas: HAProxy (Debian package `haproxy`) in TCP mode, one
//! frontend per listener kind. A connection that a replica refuses (it is down) is dispatched
//! to another, as a production balancer would.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, wait_listening, Ports};

pub struct Balancer {
    /// The plain-HTTP front (what pebble validates on).
    pub http: u16,
    /// The HTTPS front.
    pub https: u16,
    child: Child,
}

impl Balancer {
    pub async fn start(dir: &Path, replicas: &[&Ports]) -> Self {
        let (http, https) = (free_port(), free_port());
        let mut cfg = String::from(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 120s\n  timeout server 120s\n  retries 2\n  option redispatch 1\n",
        );
        for (name, front, port_of) in [
            ("http", http, (|p: &Ports| p.http) as fn(&Ports) -> u16),
            ("https", https, |p: &Ports| p.https),
        ] {
            cfg.push_str(&format!(
                "frontend {name}\n  bind 127.0.0.1:{front}\n  default_backend {name}\nbackend {name}\n  balance roundrobin\n"
            ));
            for (i, p) in replicas.iter().enumerate() {
                cfg.push_str(&format!("  server r{i} 127.0.0.1:{}\n", port_of(p)));
            }
        }
        let path = dir.join(format!("haproxy-{http}.cfg"));
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("haproxy-{http}.log"))).unwrap())
            .spawn()
            .expect("start haproxy (Debian package haproxy)");
        wait_listening(http, Duration::from_secs(10), "haproxy listening").await;
        Self { http, https, child }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

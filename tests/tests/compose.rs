//! `docker compose up`, for real: the shipped compose.yaml and Dockerfile, with images built
//! here. This machine has no image registry, so the base image is made with debootstrap
//! (`scripts/docker-base-image`) and the binaries are built on the host and copied into the
//! runtime stage (`BINARIES=prebuilt`); an override file changes only which image each service
//! runs. Then: the official MCP Python SDK over https through the proxy on both transports, the
//! certificate surviving `down`/`up`, and the acme-demo profile serving a pebble certificate.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mcp_edge_tests::*;

/// `docker compose` (v2) or `docker-compose` (v1).
fn compose_cmd() -> Vec<String> {
    if Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

struct Stack {
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    images: Vec<String>,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let c = compose_cmd();
        let mut cmd = Command::new(&c[0]);
        cmd.args(&c[1..]).current_dir(project_root());
        cmd.args([
            "--profile",
            "acme-demo",
            "--profile",
            "monitoring",
            "--profile",
            "ha",
        ]);
        cmd.args(["-p", &self.project]);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// A text file from a service's container (`docker cp`: the proxy's image has no `cat`).
    fn exec_cat(&self, service: &str, path: &str) -> Option<String> {
        let id = self.container(service)?;
        let dir = tempfile::tempdir().ok()?;
        let to = dir.path().join("file");
        let copied = Command::new("docker")
            .args(["cp", &format!("{id}:{path}")])
            .arg(&to)
            .output()
            .ok()?;
        if !copied.status.success() {
            return None;
        }
        std::fs::read_to_string(&to)
            .ok()
            .filter(|s| s.contains("BEGIN CERTIFICATE"))
    }

    fn container(&self, service: &str) -> Option<String> {
        let out = self.compose(&["ps", "-q", service]).output().ok()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!id.is_empty()).then_some(id)
    }

    /// What docker's health check says of a service: `healthy`, `starting`, `unhealthy`.
    fn health(&self, service: &str) -> String {
        let Some(id) = self.container(service) else {
            return "no container".into();
        };
        run_ok(Command::new("docker").args([
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}no health check{{end}}",
            &id,
        ]))
        .trim()
        .to_string()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "--timeout", "5"])
            .output();
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

async fn served_leaf(port: u16, sni: &str, roots: rustls::RootCertStore) -> Option<Vec<u8>> {
    tls_handshake(([127, 0, 0, 1], port).into(), Some(sni), roots, &[])
        .await
        .ok()
        .map(|(leaf, _, _)| leaf)
}

#[tokio::test]
async fn docker_compose_up_serves_docs_over_tls_survives_restart_and_runs_the_acme_demo() {
    install_crypto();
    let root = project_root();
    run_ok(&mut Command::new(root.join("scripts/docker-base-image")));

    docker_bins();

    let project = format!("mcpedgetest{}", std::process::id());
    let docker = buildkit_docker();
    let mut images = Vec::new();
    for target in ["proxy", "backend", "pebble", "prometheus", "ha-tools"] {
        let tag = format!("{project}-{target}:test");
        run_ok(
            Command::new(&docker)
                .current_dir(&root)
                .env("DOCKER_BUILDKIT", "1")
                .args([
                    "build",
                    "-q",
                    "--target",
                    target,
                    "--build-arg",
                    "BINARIES=prebuilt",
                    "-t",
                    &tag,
                    ".",
                ]),
        );
        images.push(tag);
    }
    let tmp = tempfile::tempdir().unwrap();
    let override_file = tmp.path().join("override.yaml");
    std::fs::write(
        &override_file,
        format!(
            "services:\n  proxy: {{ image: \"{p}\" }}\n  proxy-acme: {{ image: \"{p}\" }}\n  backend: {{ image: \"{b}\" }}\n  pebble: {{ image: \"{e}\" }}\n  challtestsrv: {{ image: \"{e}\" }}\n  prometheus: {{ image: \"{m}\" }}\n  proxy-ha-1: {{ image: \"{p}\" }}\n  proxy-ha-2: {{ image: \"{p}\" }}\n  redis: {{ image: \"{h}\" }}\n  balancer: {{ image: \"{h}\" }}\n",
            p = images[0],
            b = images[1],
            e = images[2],
            m = images[3],
            h = images[4]
        ),
    )
    .unwrap();
    let (http, https, acme_https, pebble_mgmt, prometheus, ha_http, ha_https) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let stack = Stack {
        project,
        files: vec![root.join("compose.yaml"), override_file],
        env: vec![
            ("MCP_EDGE_HTTP_PORT".into(), http.to_string()),
            ("MCP_EDGE_HTTPS_PORT".into(), https.to_string()),
            ("MCP_EDGE_ACME_HTTPS_PORT".into(), acme_https.to_string()),
            ("PEBBLE_MGMT_PORT".into(), pebble_mgmt.to_string()),
            ("PROMETHEUS_PORT".into(), prometheus.to_string()),
            ("MCP_EDGE_HA_HTTP_PORT".into(), ha_http.to_string()),
            ("MCP_EDGE_HA_HTTPS_PORT".into(), ha_https.to_string()),
            ("MCP_EDGE_REDIS_PASSWORD".into(), "compose-test-pw".into()),
        ],
        images,
    };
    run_ok(&mut stack.compose(&["up", "-d", "--no-build"]));

    // The proxy's generated certificate, read from its volume; then served on the published port.
    let cert_path = "/var/lib/mcp-edge/certs/localhost.self-signed.cert.pem";
    let deadline = Instant::now() + Duration::from_secs(120);
    let (cert_pem, leaf) = loop {
        if let Some(pem) = stack.exec_cat("proxy", cert_path) {
            if let Some(leaf) = served_leaf(https, "localhost", roots_from_pem(&pem)).await {
                break (pem, leaf);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the stack did not come up:\n{}",
            run_ok(&mut stack.compose(&["logs", "--no-color", "--tail", "50"]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The image's own health check (the binary asking its admin listener; no shell in it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = stack.health("proxy");
        if health == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy's health check says {health}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ca = tmp.path().join("localhost.pem");
    std::fs::write(&ca, &cert_pem).unwrap();

    // The official MCP Python SDK, through the proxy, on both transports, over the project's
    // own documentation (the backend image's default corpus).
    for (path, transport) in [("/mcp", "streamable"), ("/sse", "sse")] {
        let v = mcp_check(
            &format!("https://localhost:{https}{path}"),
            transport,
            "pin_sha256 self-signed upstream",
            "README.md",
            Some(&ca),
        )
        .await;
        assert!(
            v["hits"].as_array().is_some_and(|h| !h.is_empty()),
            "{transport}: {v}"
        );
        assert_eq!(v["doc_is_error"], false, "{v}");
    }
    // http://localhost redirects to https.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{http}/mcp"))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);

    // The acme-demo profile: a certificate from pebble for docs.acme-demo.test.
    let deadline = Instant::now() + Duration::from_secs(120);
    let acme_leaf = loop {
        if let Some(ca_pem) = stack.exec_cat("pebble", "/pebble-ca/ca.pem") {
            let client = reqwest::Client::builder()
                .use_preconfigured_tls(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots_from_pem(&ca_pem))
                        .with_no_client_auth(),
                )
                .build()
                .unwrap();
            if let Ok(r) = client
                .get(format!("https://localhost:{pebble_mgmt}/roots/0"))
                .send()
                .await
            {
                if let Ok(pem) = r.text().await {
                    if pem.contains("BEGIN CERTIFICATE") {
                        if let Some(leaf) =
                            served_leaf(acme_https, "docs.acme-demo.test", roots_from_pem(&pem))
                                .await
                        {
                            break leaf;
                        }
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no pebble certificate served:\n{}",
            run_ok(&mut stack.compose(&[
                "logs",
                "--no-color",
                "--tail",
                "80",
                "proxy-acme",
                "pebble"
            ]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!acme_leaf.is_empty());

    // The monitoring profile: Prometheus scrapes the proxy and has the shipped rules loaded.
    let api = |path: &str| format!("http://127.0.0.1:{prometheus}/api/v1/{path}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = api("query?query=sum(mcp_edge_requests_total%7Bjob%3D%22mcp-edge%22%7D)");
        let scraped = match reqwest::get(&q).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok(),
            Err(_) => None,
        };
        let value = scraped
            .as_ref()
            .and_then(|v| v["data"]["result"][0]["value"][1].as_str())
            .and_then(|s| s.parse::<f64>().ok());
        if value.is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the proxy: {scraped:?}\n{}",
            run_ok(&mut stack.compose(&["logs", "--no-color", "--tail", "30", "prometheus"]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rules: serde_json::Value = reqwest::get(api("rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = rules.to_string();
    for alert in ["McpEdgeCertificateExpiresSoon", "McpEdgeToolErrorRatio"] {
        assert!(names.contains(alert), "{alert} not loaded: {names}");
    }

    // The ha profile: two replicas on one Redis behind HAProxy serve one certificate (generated
    // by whichever started first) on every connection, and the docs over MCP.
    let ha_cert = "/var/lib/mcp-edge/certs/localhost.self-signed.cert.pem";
    let deadline = Instant::now() + Duration::from_secs(120);
    let ha_pem = loop {
        if let (Some(one), Some(two)) = (
            stack.exec_cat("proxy-ha-1", ha_cert),
            stack.exec_cat("proxy-ha-2", ha_cert),
        ) {
            if one == two
                && served_leaf(ha_https, "localhost", roots_from_pem(&one))
                    .await
                    .is_some()
            {
                break one;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the ha profile did not come up:\n{}",
            run_ok(&mut stack.compose(&[
                "logs",
                "--no-color",
                "--tail",
                "40",
                "proxy-ha-1",
                "proxy-ha-2",
                "redis",
                "balancer"
            ]))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for _ in 0..4 {
        let leaf = served_leaf(ha_https, "localhost", roots_from_pem(&ha_pem)).await;
        assert!(
            leaf.is_some(),
            "a connection through the balancer got another certificate"
        );
    }
    let ha_ca = tmp.path().join("ha.pem");
    std::fs::write(&ha_ca, &ha_pem).unwrap();
    let v = mcp_check(
        &format!("https://localhost:{ha_https}/mcp"),
        "streamable",
        "replicas redis",
        "README.md",
        Some(&ha_ca),
    )
    .await;
    assert_eq!(v["doc_is_error"], false, "{v}");

    // down (volumes kept) and up: the same certificate is served.
    run_ok(&mut stack.compose(&["down", "--timeout", "5"]));
    run_ok(&mut stack.compose(&["up", "-d", "--no-build"]));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(again) = served_leaf(https, "localhost", roots_from_pem(&cert_pem)).await {
            assert_eq!(again, leaf, "the certificate survived down/up");
            break;
        }
        assert!(Instant::now() < deadline, "the stack did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! What ships: the static musl build of mcp-edge (`scripts/static-build`) needs no libc and
//! carries its own dependency list (cargo auditable), which `cargo audit bin` scans offline and
//! which agrees with the CycloneDX SBOM written beside it; the container image is that binary,
//! the CA roots and the SBOM on `scratch`, and serves MCP over TLS with its health check
//! (the binary itself) saying healthy.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use mcp_edge_tests::*;

/// `name@version` of every component of a CycloneDX SBOM.
fn sbom_components(sbom: &serde_json::Value) -> BTreeSet<String> {
    sbom["components"]
        .as_array()
        .expect("the SBOM lists components")
        .iter()
        .map(|c| {
            format!(
                "{}@{}",
                c["name"].as_str().unwrap(),
                c["version"].as_str().unwrap()
            )
        })
        .collect()
}

/// The version Cargo.lock resolves `name` to (the first, if several).
fn locked_version(name: &str) -> String {
    let lock = std::fs::read_to_string(project_root().join("Cargo.lock")).unwrap();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            let v = lines.next().unwrap();
            return v
                .trim_start_matches("version = \"")
                .trim_end_matches('"')
                .into();
        }
    }
    panic!("{name} is not in Cargo.lock");
}

#[test]
fn the_static_build_needs_no_libc_and_carries_a_dependency_list_its_sbom_agrees_with() {
    let bin = static_bin();

    // Static: no program interpreter (ld.so) and no shared library needed.
    let headers = run_ok(Command::new("readelf").args(["-lW"]).arg(&bin));
    assert!(!headers.contains("INTERP"), "{headers}");
    let dynamic = run_ok(Command::new("readelf").args(["-dW"]).arg(&bin));
    assert!(!dynamic.contains("(NEEDED)"), "{dynamic}");

    // The dependency list inside the stripped binary (cargo auditable's .dep-v0 section).
    let info = auditable_info::audit_info_from_file(&bin, Default::default())
        .expect("the static build carries its dependency list");
    let embedded: BTreeSet<String> = info
        .packages
        .iter()
        .filter(|p| !p.root && p.kind == auditable_serde::DependencyKind::Runtime)
        .map(|p| format!("{}@{}", p.name, p.version))
        .collect();
    for name in [
        "pingora-core",
        "rustls",
        "ring",
        "tokio",
        "instant-acme",
        "mimalloc",
    ] {
        let want = format!("{name}@{}", locked_version(name));
        assert!(embedded.contains(&want), "{want} not in the binary's list");
    }
    // The reject twin: a build without cargo auditable has no list to read.
    assert!(
        auditable_info::audit_info_from_file(&edge_bin(), Default::default()).is_err(),
        "the plain debug build has no dependency list"
    );

    // Nothing compiled in is missing from it: every package cargo resolves for this build
    // (`cargo tree`, the same feature resolution as the build) is listed. (The list may name a
    // few more: cargo auditable reads `cargo metadata`, whose features are the workspace's.)
    let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    let tree = run_ok(
        Command::new("cargo")
            .current_dir(project_root())
            .args([
                "tree",
                "-p",
                "mcp-edge",
                "--target",
                &triple,
                "-e",
                "normal,build",
            ])
            .args(["--prefix", "none", "--format", "{p}"]),
    );
    let all: BTreeSet<String> = info
        .packages
        .iter()
        .map(|p| format!("{}@{}", p.name, p.version))
        .collect();
    let resolved: BTreeSet<String> = tree
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some(format!(
                "{}@{}",
                words.next()?,
                words.next()?.trim_start_matches('v')
            ))
        })
        .collect();
    assert!(resolved.len() > 100, "{tree}");
    let unlisted: Vec<&String> = resolved.difference(&all).collect();
    assert!(unlisted.is_empty(), "compiled in, not listed: {unlisted:?}");

    // The SBOM names mcp-edge, exactly the binary's packages at their versions, and musl.
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bin.with_file_name("mcp-edge.cdx.json")).unwrap())
            .unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX", "{sbom:.200}");
    assert_eq!(sbom["metadata"]["component"]["name"], "mcp-edge");
    let mut listed = sbom_components(&sbom);
    // musl: the one rustc bundles (1.2.5 here: it has statx), not Debian's 1.2.3.
    assert!(
        listed.contains("musl@1.2.5"),
        "musl not in the SBOM as 1.2.5"
    );
    listed.retain(|c| !c.starts_with("musl@"));
    let in_binary: BTreeSet<String> = info
        .packages
        .iter()
        .filter(|p| !p.root)
        .map(|p| format!("{}@{}", p.name, p.version))
        .collect();
    assert_eq!(listed, in_binary, "the SBOM and the binary's list differ");

    // `cargo audit bin` reads the list offline against the advisory snapshot and passes.
    let scan = Command::new(project_root().join("scripts/audit"))
        .arg(&bin)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&scan.stderr);
    assert!(scan.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "Found 'cargo auditable' data in {} ({} dependencies)",
            bin.display(),
            info.packages.len()
        )),
        "{said}"
    );
}

/// The `proxy` image of the Dockerfile, built from `target/docker-bins`; removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A container, removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        run_ok(Command::new("docker").args(["inspect", "--format", format, &self.0]))
            .trim()
            .to_string()
    }
}

#[tokio::test]
async fn the_image_is_the_static_binary_alone_and_serves_mcp_with_its_health_check() {
    let root = project_root();
    run_ok(&mut Command::new(root.join("scripts/docker-base-image")));
    docker_bins();
    let image = Image(format!("mcp-edge-shipped-{}:test", std::process::id()));
    run_ok(
        Command::new(buildkit_docker())
            .current_dir(&root)
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "-q", "--target", "proxy"])
            .args(["--build-arg", "BINARIES=prebuilt", "-t", &image.0, "."]),
    );

    // Nothing but the binary, the CA roots and the SBOM: its size is the binary's, plus little.
    let size: u64 = run_ok(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        &image.0,
    ]))
    .trim()
    .parse()
    .unwrap();
    let binary = std::fs::metadata(static_bin()).unwrap().len();
    eprintln!("image {size} bytes, binary {binary} bytes");
    assert!(
        size < binary + 2_000_000,
        "image {size} bytes, binary {binary}"
    );
    // No shell to run anything else with.
    let shell = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/sh",
            &image.0,
            "-c",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!shell.status.success(), "the image has a shell");
    let version = run_ok(Command::new("docker").args(["run", "--rm", &image.0, "--version"]));
    assert!(version.starts_with("mcp-edge "), "{version}");

    // The SBOM in the image is the build's.
    let created = run_ok(Command::new("docker").args(["create", &image.0]));
    let copy = Container(created.trim().to_string());
    let tmp = tempfile::tempdir().unwrap();
    let sbom = tmp.path().join("sbom.json");
    run_ok(
        Command::new("docker")
            .args([
                "cp",
                &format!("{}:/usr/share/mcp-edge/sbom.cdx.json", copy.0),
            ])
            .arg(&sbom),
    );
    assert_eq!(
        std::fs::read(&sbom).unwrap(),
        std::fs::read(static_bin().with_file_name("mcp-edge.cdx.json")).unwrap()
    );
    drop(copy);

    // Serving: the host's network, this user, the configuration and storage from a folder.
    let docs = DocsServer::start(tmp.path(), &root.join("docs"), &[]).await;
    let ports = Ports::new();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        work.join("edge.yaml"),
        format!(
            "{}storage: /work/certs\nhosts:\n  localhost:\n    tls: self-signed\n    upstream: {}\n",
            ports.yaml(),
            docs.url()
        ),
    )
    .unwrap();
    let user = format!(
        "{}:{}",
        run_ok(Command::new("id").arg("-u")).trim(),
        run_ok(Command::new("id").arg("-g")).trim()
    );
    // The image's health check asks 127.0.0.1:9100 (the default admin address); on the host's
    // network this edge's admin port is another: the same check, pointed at it.
    let probed = Image(format!("{}-probe", image.0.trim_end_matches(":test")));
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", &probed.0, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        build.stdin.as_mut().unwrap(),
        format!(
            "FROM {}\nHEALTHCHECK --interval=1s --start-period=1s CMD [\"/usr/local/bin/mcp-edge\", \"health\", \"--address\", \"127.0.0.1:{}\"]\n",
            image.0, ports.metrics
        )
        .as_bytes(),
    )
    .unwrap();
    drop(build.stdin.take());
    assert!(build.wait().unwrap().success());
    let started = run_ok(
        Command::new("docker")
            .args([
                "run",
                "-d",
                "--network",
                "host",
                "--user",
                &user,
                "--read-only",
            ])
            .arg("-v")
            .arg(format!("{}:/work", work.display()))
            .args(["-e", "MCP_EDGE_CONFIG=/work/edge.yaml"])
            .arg(&probed.0),
    );
    let edge = Container(started.trim().to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = edge.inspect("{{.State.Health.Status}}");
        if health == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline && edge.inspect("{{.State.Running}}") == "true",
            "health {health} ({}):\n{}",
            edge.inspect("{{json .State.Health.Log}}"),
            String::from_utf8_lossy(
                &Command::new("docker")
                    .args(["logs", &edge.0])
                    .output()
                    .unwrap()
                    .stderr
            )
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ca = work.join("certs/localhost.self-signed.cert.pem");
    let v = mcp_check(
        &format!("https://localhost:{}/mcp", ports.https),
        "streamable",
        "upgrade",
        "operations.md",
        Some(&ca),
    )
    .await;
    assert!(v["hits"].as_array().is_some_and(|h| !h.is_empty()), "{v}");
    assert_eq!(v["doc_is_error"], false, "{v}");

    // The reject twin of the health check: nothing answers at the configured admin address.
    let nobody = Ports::new();
    let cfg = tmp.path().join("nobody.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{}storage: {}\nhosts:\n  localhost:\n    tls: self-signed\n    upstream: {}\n",
            nobody.yaml(),
            tmp.path().join("unused").display(),
            docs.url()
        ),
    )
    .unwrap();
    let out = Command::new(static_bin())
        .args(["health", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{}/readyz: connect", nobody.metrics)),
        "{err}"
    );
}

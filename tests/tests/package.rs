//! The Debian packages (`scripts/package-deb`): what they hold, that `systemd-analyze verify`
//! accepts their units, and that they install into a fresh Debian 12 root (the debootstrapped
//! base image of `scripts/docker-base-image`, run with no network) where the installed
//! mcp-edge runs with the example configuration as its own unprivileged user, binding ports 80
//! and 443 with CAP_NET_BIND_SERVICE alone, and mcp-docs serves.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

use mcp_edge_tests::*;

/// Builds both packages: mcp-edge from the static build the image ships, mcp-docs from the
/// debug build (its release build would take a clean build of its own).
fn packages() -> (PathBuf, PathBuf) {
    edge_bin();
    static_bin();
    let out = run_ok(Command::new(project_root().join("scripts/package-deb")).arg("--debug"));
    let debs: Vec<PathBuf> = out.lines().map(|l| project_root().join(l.trim())).collect();
    let find = |name: &str| {
        debs.iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}_"))
            })
            .unwrap_or_else(|| panic!("no {name} package in {out}"))
            .clone()
    };
    (find("mcp-edge"), find("mcp-docs"))
}

#[test]
fn the_packages_hold_hardened_units_and_install_into_a_fresh_debian_project_root() {
    let (edge, docs) = packages();

    // What the package holds: the binary, the unit, the example configuration as a conffile
    // readable by root and the service's group only.
    let contents = run_ok(Command::new("dpkg-deb").arg("-c").arg(&edge));
    for path in [
        "./usr/bin/mcp-edge",
        "./lib/systemd/system/mcp-edge.service",
        "./etc/mcp-edge/mcp-edge.yaml",
        "./usr/share/mcp-edge/sbom.cdx.json",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    // The static build (no libc6 dependency; it runs on any Debian of this CPU).
    let control = run_ok(Command::new("dpkg-deb").arg("-f").arg(&edge).arg("Depends"));
    assert_eq!(control.trim(), "passwd");
    let yaml_line = contents
        .lines()
        .find(|l| l.ends_with("./etc/mcp-edge/mcp-edge.yaml"))
        .unwrap();
    assert!(yaml_line.starts_with("-rw-r-----"), "{yaml_line}");
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&edge)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/mcp-edge/mcp-edge.yaml");

    // The units, unpacked into a root of their own (with this machine's systemd units, as a
    // Debian system has them), pass systemd-analyze verify; the hardening a reviewer looks for
    // is there, and nothing grants more than binding low ports.
    let unpacked = tempfile::tempdir().unwrap();
    let units = unpacked.path().join("lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg("/lib/systemd/system/.")
            .arg(&units),
    );
    for deb in [&edge, &docs] {
        run_ok(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(unpacked.path()),
        );
    }
    for unit in ["mcp-edge.service", "mcp-docs.service"] {
        let path = unpacked.path().join("lib/systemd/system").join(unit);
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", unpacked.path().display()))
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !said.contains(unit),
            "{unit}: {said}"
        );
    }
    let unit = std::fs::read_to_string(unpacked.path().join("lib/systemd/system/mcp-edge.service"))
        .unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/usr/bin/mcp-edge reload --config /etc/mcp-edge/mcp-edge.yaml --pid $MAINPID",
        "User=mcp-edge",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "NoNewPrivileges=yes",
        "StateDirectory=mcp-edge",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        "TimeoutStopSec=30",
    ] {
        assert!(unit.contains(line), "{line} missing:\n{unit}");
    }

    // Installed into a fresh Debian 12 root, offline: the user is made, the configuration
    // belongs to root:mcp-edge, and the installed binary runs from it with the example
    // configuration as that user (ports 80 and 443 through the one capability): port 80
    // redirects to https, the admin listener answers, `check` accepts the example.
    run_ok(&mut Command::new(
        project_root().join("scripts/docker-base-image"),
    ));
    let pkgs = tempfile::tempdir().unwrap();
    for deb in [&edge, &docs] {
        std::fs::copy(deb, pkgs.path().join(deb.file_name().unwrap())).unwrap();
    }
    let script = r#"
set -eu
dpkg -i /pkgs/*.deb >/dev/null
getent passwd mcp-edge
stat -c 'conf %a %U:%G' /etc/mcp-edge/mcp-edge.yaml
mcp-edge --version
mcp-edge check --config /etc/mcp-edge/mcp-edge.yaml >/dev/null && echo 'check: ok'
# what systemd's StateDirectory= would make
install -d -o mcp-edge -g mcp-edge -m 0700 /var/lib/mcp-edge
setpriv --reuid=mcp-edge --regid=mcp-edge --init-groups --inh-caps=-all,+net_bind_service \
  --ambient-caps=-all,+net_bind_service --bounding-set=-all,+net_bind_service \
  mcp-edge run --config /etc/mcp-edge/mcp-edge.yaml 2>/tmp/edge.log &
MCP_DOCS_DIR=/usr/share/mcp-docs/docs setpriv --reuid=nobody --regid=nogroup --clear-groups \
  mcp-docs 2>/tmp/docs.log &
get() { # PORT HOST PATH
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$3" "$2" >&3
  timeout 5 cat <&3 | head -1
  exec 3<&-
}
for i in $(seq 100); do get 9100 localhost /readyz 2>/dev/null | grep -q 200 && break; sleep 0.1; done
echo "readyz: $(get 9100 localhost /readyz)"
echo "port 80: $(get 80 mcp.example.com /mcp)"
for i in $(seq 100); do get 8080 localhost /healthz 2>/dev/null | grep -q 200 && break; sleep 0.1; done
echo "docs: $(get 8080 localhost /healthz)"
echo "corpus: $(ls /usr/share/mcp-docs/docs | grep -c '\.md$') pages"
for p in /proc/[0-9]*; do
  [ "$(cat "$p/comm" 2>/dev/null)" = mcp-edge ] && echo "edge user: $(stat -c %U "$p")"
done
grep -o 'mcp-edge started' /tmp/edge.log
# systemd's ExecReload: checked, then applied; a broken file or a stranger's pid is refused.
pid=$(for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = mcp-edge ] && basename "$p"; done | head -1)
mcp-edge reload --config /etc/mcp-edge/mcp-edge.yaml --pid "$pid" >/dev/null && echo 'reload: sent'
for i in $(seq 50); do grep -q 'configuration reloaded' /tmp/edge.log && break; sleep 0.1; done
grep -o 'configuration reloaded' /tmp/edge.log
{ cat /etc/mcp-edge/mcp-edge.yaml; echo 'nonsense: ['; } > /tmp/bad.yaml
mcp-edge reload --config /tmp/bad.yaml --pid "$pid" 2>/dev/null || echo 'bad file: refused'
mcp-edge reload --config /etc/mcp-edge/mcp-edge.yaml --pid 1 2>&1 | grep -o 'is not a running mcp-edge'
echo "reloads: $(grep -c 'configuration reloaded' /tmp/edge.log)"
"#;
    let out = run_ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/pkgs:ro", pkgs.path().display()),
        "debian:bookworm-slim",
        "bash",
        "-c",
        script,
    ]));
    for expect in [
        "mcp-edge:x:",
        "conf 640 root:mcp-edge",
        "check: ok",
        "readyz: HTTP/1.1 200",
        "port 80: HTTP/1.1 308",
        "docs: HTTP/1.1 200",
        "edge user: mcp-edge",
        "mcp-edge started",
        "reload: sent",
        "bad file: refused",
        "is not a running mcp-edge",
        "reloads: 1",
    ] {
        assert!(out.contains(expect), "{expect} missing:\n{out}");
    }
    let pages: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("corpus: "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(pages >= 3, "mcp-docs ships its corpus:\n{out}");
}

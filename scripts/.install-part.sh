set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)      # pingora builds zlib-ng with cmake
command -v openssl >/dev/null || need_apt+=(openssl)  # makes the certificates people have, for upstream TLS tests
command -v curl >/dev/null || need_apt+=(curl)        # fetches the published pingora crates for scripts/check-vendor
command -v patch >/dev/null || need_apt+=(patch)      # applies vendor/*.patch to them
command -v testssl >/dev/null || need_apt+=(testssl.sh) # scans the TLS listener (tests/tests/tls_scan.rs)
command -v promtool >/dev/null || need_apt+=(prometheus) # checks and tests the alert rules (tests/tests/alerts.rs)
command -v chromium >/dev/null || need_apt+=(chromium)   # loads the status page (tests/tests/status_page.rs)
command -v redis-server >/dev/null || need_apt+=(redis-server) # shared storage of the replica tests (tests/tests/replicas.rs)
command -v haproxy >/dev/null || need_apt+=(haproxy)      # the L4 round robin in front of the replicas
command -v named >/dev/null || need_apt+=(bind9)          # the authoritative DNS server DNS-01 updates (RFC 2136)
command -v nsupdate >/dev/null || need_apt+=(bind9-dnsutils) # dig and nsupdate, for the DNS-01 tests' checks and exec hook
command -v systemd-analyze >/dev/null || need_apt+=(systemd) # verifies the package's units (tests/tests/package.rs)
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)         # builds the packages (scripts/package-deb)
python3 -m venv --help >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  echo "installing: ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi

# The ACME CA of the certificate tests: pebble 2.10 (ARI, profiles, IP identifiers, TLS-ALPN-01)
# from Debian's unstable suite, unpacked into a cache without touching the machine's apt setup.
pebble_dir="${XDG_CACHE_HOME:-$HOME/.cache}/mcp-edge/pebble-2.10"
scripts/pebble-unstable "$pebble_dir" >/dev/null
export MCP_EDGE_PEBBLE_DIR="$pebble_dir/bin"

# The official MCP Python SDK (the client of the MCP tests) and the authorization server's
# libraries, pinned in tests/python/requirements.txt; installed again unless every pin is there.
pins=$(grep -v '^#' tests/python/requirements.txt)
have=$(.venv/bin/pip freeze 2>/dev/null | grep -cxF "$pins" || true)
if ! .venv/bin/python -c "import mcp" >/dev/null 2>&1 || [ "$have" -ne "$(grep -c . <<<"$pins")" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt
fi
export MCP_EDGE_PYTHON="$PWD/.venv/bin/python"

# Unused dependencies (cargo-machete) and known vulnerabilities (cargo-audit), from crates.io;
# built once into ~/.cargo/bin.
command -v cargo-machete >/dev/null || cargo install --locked --quiet cargo-machete@0.9.2
command -v cargo-audit >/dev/null || cargo install --locked --quiet cargo-audit@0.22.2

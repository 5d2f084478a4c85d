"""Time from process start to the first ACME certificate served: mcp-edge with each challenge
(HTTP-01, TLS-ALPN-01 with port 80 closed, DNS-01 through RFC 2136 to BIND) vs Caddy's HTTP-01,
against pebble 2.10 (real validation; pebble's nonce rejection left on); and three mcp-edge
replicas on one Redis behind HAProxy (until all three serve it) against one replica on files."""

import base64
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import run as bench

NAME = "bench.acme.test"


def _listener_ca(work):
    d = work / "pebble"
    d.mkdir(exist_ok=True)
    o = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    o("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
      "/CN=pebble listener CA", "-days", "30", "-keyout", "ca.key", "-out", "ca.pem")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    o("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=pebble",
      "-keyout", "listener.key", "-out", "listener.csr")
    o("x509", "-req", "-in", "listener.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "30", "-extfile", "ext", "-out", "listener.pem")
    return d


def _served(port, root_pem):
    ctx = ssl.create_default_context(cadata=root_pem)
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5) as s:
            with ctx.wrap_socket(s, server_hostname=NAME):
                return True
    except (OSError, ssl.SSLError):
        return False


def _edge_yaml(ports, storage, directory, ca, upstream, acme_extra="", http_none=False):
    """An mcp-edge configuration with the one ACME host, on (http, https, metrics) ports."""
    http, https, metrics = ports
    http = "none" if http_none else f'"127.0.0.1:{http}"'
    return f"""
listen: {{ http: {http}, https: "127.0.0.1:{https}", metrics: "127.0.0.1:{metrics}" }}
storage: {storage}
threads: 1
acme: {{ directory: "{directory}", directory_root: {ca}, contact: [bench@acme.test], accept_terms: true, retry_initial: 1s, retry_max: 2s {acme_extra}}}
hosts:
  {NAME}:
    tls: acme
    upstream: http://127.0.0.1:{upstream}
"""


def pebble_bin(name):
    """pebble 2.10 (ARI, profiles, TLS-ALPN-01, DNS-01) as the test command fetches it."""
    d = os.environ.get("MCP_EDGE_PEBBLE_DIR")
    if not d:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mcp-edge" / "pebble-2.10"
        subprocess.run([bench.ROOT / "scripts" / "pebble-unstable", cache], check=True,
                       capture_output=True)
        d = cache / "bin"
    return str(Path(d) / name)


def _pebble(d, name, http_port, https_port, dns_server):
    """A pebble resolving through `dns_server`; its directory URL and issuing root."""
    port, mgmt = bench.free_port(), bench.free_port()
    (d / f"{name}.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(d / "listener.pem"), "privateKey": str(d / "listener.key"),
        "httpPort": http_port, "tlsPort": https_port, "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
        "profiles": {"default": {"description": "90 days", "validityPeriod": 7776000}}}}))
    env = {k: v for k, v in os.environ.items() if k != "PEBBLE_VA_ALWAYS_VALID"}
    env["PEBBLE_VA_NOSLEEP"] = "1"
    bench.spawn([pebble_bin("pebble"), "-config", d / f"{name}.json", "-dnsserver", dns_server],
                bench.LOAD_CPU, name, env=env)
    bench.wait_port(port)
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    root = urllib.request.urlopen(f"https://127.0.0.1:{mgmt}/roots/0", context=ctx).read().decode()
    return f"https://127.0.0.1:{port}/dir", root


def _bind(work):
    """BIND, primary for `acme.test.` and taking TSIG-signed updates: (address, key yaml)."""
    d = work / "bind"
    d.mkdir(exist_ok=True)
    port = bench.free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    (d / "named.conf").write_text(f"""options {{ directory "{d}"; pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; dnssec-validation no; allow-query {{ any; }}; }};
controls {{ }};
key "bench" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "acme.test" {{ type primary; file "{d}/zone.db"; allow-update {{ key "bench"; }}; }};
""")
    (d / "zone.db").write_text("$TTL 60\n@ IN SOA ns.acme.test. admin.acme.test. 1 60 60 600 60\n"
                               "@ IN NS ns.acme.test.\nns IN A 127.0.0.1\nbench IN A 127.0.0.1\n")
    (d / "tsig.key").write_text(secret + "\n")
    bench.spawn(["named", "-g", "-c", d / "named.conf"], bench.LOAD_CPU, "named")
    bench.wait_port(port)
    dns = (f", dns: {{ provider: rfc2136, server: \"127.0.0.1:{port}\", zone: acme.test, "
           f"key_name: bench, key_file: {d / 'tsig.key'} }}")
    return f"127.0.0.1:{port}", dns


def measure(results, work, runs, log):
    d = _listener_ca(work)
    http_port, https_port = bench.free_port(), bench.free_port()
    dns, dns_mgmt = bench.free_port(), bench.free_port()
    bench.spawn([pebble_bin("pebble-challtestsrv"), "-dnsserver", f"127.0.0.1:{dns}", "-doh", "",
                 "-management", f"127.0.0.1:{dns_mgmt}", "-defaultIPv4", "127.0.0.1",
                 "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""],
                bench.LOAD_CPU, "challtestsrv")
    bench.wait_port(dns_mgmt)
    directory, root = _pebble(d, "pebble", http_port, https_port, f"127.0.0.1:{dns}")
    bind_addr, dns_yaml = _bind(work)
    dns_directory, dns_root = _pebble(d, "pebble-dns", http_port, https_port, bind_addr)

    for i in range(runs):
        for proxy in ("mcp-edge", "tls-alpn-01", "dns-01", "caddy"):
            run_dir = work / f"acme-{proxy}-{i}"
            run_dir.mkdir()
            served_root = dns_root if proxy == "dns-01" else root
            if proxy != "caddy":
                extra = {"mcp-edge": "", "tls-alpn-01": ", challenge: tls-alpn-01",
                         "dns-01": ", challenge: dns-01" + dns_yaml}[proxy]
                (run_dir / "edge.yaml").write_text(_edge_yaml(
                    (http_port, https_port, bench.free_port()), run_dir / "store",
                    dns_directory if proxy == "dns-01" else directory,
                    d / "ca.pem", results["_upstream"], extra, http_none=proxy == "tls-alpn-01"))
                cmd = [bench.EDGE_BIN, "run", "-c", run_dir / "edge.yaml"]
                penv = None
            else:
                (run_dir / "Caddyfile").write_text(f"""
{{
  admin off
  http_port {http_port}
  https_port {https_port}
  acme_ca {directory}
  acme_ca_root {d / 'ca.pem'}
  email bench@acme.test
  storage file_system {run_dir / 'data'}
  ocsp_stapling off
}}
{NAME}:{https_port} {{
  bind 127.0.0.1
  reverse_proxy 127.0.0.1:{results['_upstream']}
}}
""")
                cmd = ["caddy", "run", "--config", run_dir / "Caddyfile", "--adapter", "caddyfile"]
                penv = {**os.environ, "HOME": str(run_dir), "XDG_DATA_HOME": str(run_dir),
                        "XDG_CONFIG_HOME": str(run_dir)}
            t0 = time.monotonic()
            p = bench.spawn(cmd, bench.PROXY_CPU, f"acme-{proxy}", env=penv)
            ms = None
            while time.monotonic() - t0 < 30:
                if _served(https_port, served_root):
                    ms = (time.monotonic() - t0) * 1000
                    break
                time.sleep(0.002)
            bench.stop(p)
            r = {"ms": ms} if ms is not None else {"error": "no certificate within 30 s"}
            if proxy in ("tls-alpn-01", "dns-01"):
                results.setdefault("acme_challenges", {}).setdefault(proxy, []).append(r)
            else:
                results.setdefault(proxy, {}).setdefault("acme", []).append(r)
            log(f"  acme {proxy} run {i + 1}: {r}")
            time.sleep(0.3)

    measure_replicas(results, work, runs, log, http_port, directory, d, root)


def _orders(metrics_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("mcp_edge_acme_orders_total{") and 'result="ok"' in l)


def measure_replicas(results, work, runs, log, http_port, directory, d, root):
    """Three replicas on one Redis (a fresh key prefix per run) behind HAProxy on the port
    pebble validates: ms from their start until all three serve the certificate, and the
    orders they placed between them."""
    redis_port = bench.free_port()
    (work / "redis").mkdir(exist_ok=True)
    bench.spawn(["redis-server", "--port", redis_port, "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", work / "redis"], bench.LOAD_CPU, "redis")
    bench.wait_port(redis_port)
    for i in range(runs):
        run_dir = work / f"acme-replicas-{i}"
        run_dir.mkdir()
        ports = [(bench.free_port(), bench.free_port(), bench.free_port()) for _ in range(3)]
        servers = "".join(f"  server r{n} 127.0.0.1:{h}\n" for n, (h, _, _) in enumerate(ports))
        (run_dir / "haproxy.cfg").write_text(
            "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n"
            f"frontend http\n  bind 127.0.0.1:{http_port}\n  default_backend r\n"
            f"backend r\n  balance roundrobin\n{servers}")
        lb = bench.spawn(["haproxy", "-db", "-f", run_dir / "haproxy.cfg"], bench.LOAD_CPU, "haproxy")
        bench.wait_port(http_port)
        procs = []
        t0 = time.monotonic()
        for n, (h, s, m) in enumerate(ports):
            storage = (f'{{ dir: {run_dir / f"r{n}"}, redis: "redis://127.0.0.1:{redis_port}/0", '
                       f'prefix: "bench{i}:" }}')
            (run_dir / f"r{n}.yaml").write_text(_edge_yaml(
                (h, s, m), storage, directory, d / "ca.pem", results["_upstream"]))
            procs.append(bench.spawn([bench.EDGE_BIN, "run", "-c", run_dir / f"r{n}.yaml"],
                                     bench.PROXY_CPU, f"acme-replica-{n}"))
        ms = None
        while time.monotonic() - t0 < 30:
            if all(_served(s, root) for _, s, _ in ports):
                ms = (time.monotonic() - t0) * 1000
                break
            time.sleep(0.002)
        r = {"ms": ms, "orders": sum(_orders(m) for _, _, m in ports)} if ms is not None \
            else {"error": "not all three served a certificate within 30 s"}
        for p in procs + [lb]:
            bench.stop(p)
        results.setdefault("acme_replicas", []).append(r)
        log(f"  acme three replicas on Redis, run {i + 1}: {r}")
        time.sleep(0.3)

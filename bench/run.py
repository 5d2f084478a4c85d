"""mcp-edge next to nginx, Caddy and HAProxy, on this machine, in one run. Entry point: bench/run.

Every proxy terminates TLS (the same ECDSA P-256 certificate, keep-alive on) in front of the same
upstream (bench-upstream), pinned to core 0; the load generators, the upstream and the clients
share core 1. Each figure is measured BENCH_RUNS times (default 3), on every proxy back to back
within a run (the order rotated from run to run); the report gives the median and the spread
(min-max), and the ratios mcp-edge/nginx, /Caddy and /HAProxy as the median of each run's ratio
(with their spread): this machine's neighbours move whole minutes, less so the seconds between
two proxies' turns at one figure.
Results: bench/results/<UTC time>.md, and the section between the markers in BENCHMARKS.md.
"""

import base64
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
# The mcp-edge measured: the release build optimised with the committed profile, as the shipped
# one is (bench/run makes it with scripts/pgo-use; BENCH_PGO=0 bench/run: the build without).
# Another build in its place, to compare two builds on this machine:
# BENCH_EDGE_BIN=/tmp/mcp-edge-before BENCH_ONLY=mem BENCH_PROXIES=mcp-edge,nginx bench/run
EDGE_BIN = Path(os.environ.get("BENCH_EDGE_BIN", ROOT / "target" / "pgo" / "release" / "mcp-edge"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
# 10,000 streams would need 20,000+ descriptors in the proxy (client + upstream side); this
# machine's hard RLIMIT_NOFILE is 20,000 and cannot be raised, hence 9,000 by default.
STREAMS = [int(n) for n in os.environ.get("BENCH_STREAMS", "1000,9000").split(",")]
CHURN = int(os.environ.get("BENCH_CHURN", "200"))
# Idle TLS connections (handshake done, nothing sent): one side each, so 10,000 fit.
IDLE = int(os.environ.get("BENCH_IDLE", "10000"))
IDLE_HOLD = int(os.environ.get("BENCH_IDLE_SECONDS", "90"))
# A partial run (while working on one figure): BENCH_ONLY=h1,mem and/or BENCH_PROXIES=mcp-edge,nginx.
# Figures: h1 h1get h2 h2few handshakes sse leave mem idle swap upstream auth mcp acme churn, and cost (the
# per-request cost model, bench/bench_cost.py: only when named). A partial run writes
# bench/results/partial/ (not committed), never BENCHMARKS.md.
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
ONLY_PROXIES = set(filter(None, os.environ.get("BENCH_PROXIES", "").split(",")))
PARTIAL = bool(ONLY or ONLY_PROXIES or os.environ.get("BENCH_CORES"))


def wanted(figure):
    return not ONLY or figure in ONLY
# BENCH_CORES=2: the scaling run, every proxy on both cores (mcp-edge `threads: 2`, nginx two
# workers, Caddy unpinned) with the load generator sharing them.
CORES = int(os.environ.get("BENCH_CORES", "1"))
if CORES > 1:
    PROXY_CPU = LOAD_CPU = ",".join(str(c) for c in range(min(CORES, os.cpu_count())))
else:
    PROXY_CPU, LOAD_CPU = ("0", "1") if os.cpu_count() >= 2 else ("0", "0")
WORK = None  # set by entry()
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(cmd, cpu, name, **kw):
    out = open(WORK / f"{name}.log", "ab")
    p = subprocess.Popen(["taskset", "-c", cpu, *map(str, cmd)], stdout=out, stderr=out, **kw)
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(cmd, cpu=LOAD_CPU, timeout=600, **kw):
    r = subprocess.run(["taskset", "-c", cpu, *map(str, cmd)], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {r.stderr[-500:]}")
    return r.stdout


def tree_rss_kb(pid):
    """RSS of a process and its children (nginx: master + worker)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
            for t in Path(f"/proc/{p}/task").iterdir():
                kids = (t / "children").read_text().split()
                todo += [int(k) for k in kids]
        except (OSError, AttributeError):
            pass
    return total


def tree_cpu(pid):
    """(user, kernel) CPU seconds of a process and its children so far."""
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / tick
            kernel += int(fields[12]) / tick
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (t / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            pass
    return user, kernel


# ---- certificates ---------------------------------------------------------------------------

def make_certs():
    d = WORK / "pki"
    d.mkdir()
    ossl = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=bench CA", "-days", "30", "-keyout", "ca.key", "-out", "ca.pem")
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    for name in ("leaf", "leaf2"):
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=localhost", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "30", "-extfile", "ext", "-out", f"{name}.pem")
    return d


# ---- the three proxies ----------------------------------------------------------------------

class Proxy:
    name = ""

    def __init__(self, pki, upstream):
        self.pki, self.upstream = pki, upstream
        self.port, self.http_port = free_port(), free_port()
        # A port can come back in one long run: the directory is per instance, not per port.
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-{self.port}-", dir=WORK))
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        shutil.copy(pki / "leaf.pem", self.cert)
        shutil.copy(pki / "leaf.key", self.key)
        self.proc = None

    def url(self, path):
        return f"https://localhost:{self.port}{path}"

    def start(self):
        self.proc = spawn(self.command(), PROXY_CPU, self.name)
        wait_port(self.port)
        # One request through, so lazily set up state does not count as per-stream memory.
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        for _ in range(100):
            try:
                urllib.request.urlopen(urllib.request.Request(self.url("/mcp"), data=b"{}"),
                                       context=ctx, timeout=2).read()
                return self
            except urllib.error.HTTPError:
                return self  # the upstream answered, whatever it thought of "{}"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} does not proxy")

    def stop(self):
        if self.proc:
            stop(self.proc)

    def rss_kb(self):
        return tree_rss_kb(self.proc.pid)

    def swap_cert(self, src):
        shutil.copy(src.with_suffix(".key"), self.key)
        shutil.copy(src, self.cert)


class McpEdge(Proxy):
    name = "mcp-edge"

    def __init__(self, pki, upstream, upstream_yaml=None, host_yaml=""):
        """`upstream_yaml`: the `upstream:` value, when it is not the plain upstream's URL;
        `host_yaml`: more keys of the host (`auth:`…), indented for it."""
        super().__init__(pki, upstream)
        self.upstream_yaml = upstream_yaml
        self.host_yaml = host_yaml
        # Top-level keys (`audit:`…), unindented.
        self.top_yaml = ""

    def command(self):
        metrics = free_port()
        up = self.upstream_yaml or f"http://127.0.0.1:{self.upstream}"
        (self.dir / "edge.yaml").write_text(f"""
# No TLS session resumption, as nginx (tickets off, no session cache), Caddy and HAProxy below:
# the handshake figure is full handshakes for all four.
listen: {{ http: "127.0.0.1:{self.http_port}", https: "127.0.0.1:{self.port}", metrics: "127.0.0.1:{metrics}", session_resumption: false }}
storage: {self.dir / 'store'}
threads: {CORES}
watch_interval: 100ms
# As nginx's worker_connections below: the caps are not what is measured.
limits: {{ connections: 19000, connections_per_address: 19000 }}
{self.top_yaml}hosts:
  localhost:
    tls: {{ cert: {self.cert}, key: {self.key} }}
    upstream: {up}
{self.host_yaml}""")
        env_log = "MCP_EDGE_LOG=warn"
        return ["env", env_log, EDGE_BIN, "run", "-c", self.dir / "edge.yaml"]


class Nginx(Proxy):
    name = "nginx"

    def command(self):
        (self.dir / "nginx.conf").write_text(f"""
worker_processes {CORES};
worker_rlimit_nofile 20000;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{self.upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{self.port} ssl http2;
    server_name localhost;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    ssl_session_tickets off;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
""")
        return ["nginx", "-c", self.dir / "nginx.conf", "-p", self.dir, "-g", "daemon off;"]

    def swap_cert(self, src):
        super().swap_cert(src)
        self.proc.send_signal(signal.SIGHUP)


class Caddy(Proxy):
    name = "caddy"

    def command(self):
        self.admin = free_port()
        (self.dir / "Caddyfile").write_text(f"""
{{
  admin 127.0.0.1:{self.admin}
  auto_https off
  http_port {self.http_port}
  https_port {self.port}
  storage file_system {self.dir / 'data'}
}}
https://localhost:{self.port} {{
  bind 127.0.0.1
  tls {self.cert} {self.key}
  reverse_proxy 127.0.0.1:{self.upstream} {{
    flush_interval -1
  }}
}}
""")
        # The Caddyfile has no switch for TLS session tickets; its JSON form does (Go's TLS server
        # keeps no session cache, so with tickets off every handshake is a full one).
        adapted = subprocess.run(["caddy", "adapt", "--config", self.dir / "Caddyfile", "--adapter",
                                  "caddyfile"], capture_output=True, text=True, check=True,
                                 env={**os.environ, "HOME": str(self.dir)})
        config = json.loads(adapted.stdout)
        config.setdefault("apps", {}).setdefault("tls", {})["session_tickets"] = {"disabled": True}
        (self.dir / "caddy.json").write_text(json.dumps(config))
        return ["env", f"HOME={self.dir}", f"XDG_DATA_HOME={self.dir}", f"XDG_CONFIG_HOME={self.dir}",
                "caddy", "run", "--config", self.dir / "caddy.json"]

    def swap_cert(self, src):
        super().swap_cert(src)
        # Caddy caches certificates loaded from files; a config reload re-reads them.
        subprocess.run(["caddy", "reload", "--force", "--config", self.dir / "caddy.json",
                        "--address", f"127.0.0.1:{self.admin}"],
                       capture_output=True, env={**os.environ, "HOME": str(self.dir)})


class HAProxy(Proxy):
    """Debian's HAProxy (master-worker, so a certificate swap is a SIGUSR2 reload), one thread
    per core, no TLS tickets and no session cache."""
    name = "haproxy"

    def command(self):
        self.pem = self.dir / "combined.pem"
        self.pem.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        (self.dir / "haproxy.cfg").write_text(f"""
global
  nbthread {CORES}
  # Two descriptors per proxied connection within this machine's hard limit of 20,000.
  maxconn 9900
  ssl-default-bind-options no-tls-tickets
  tune.ssl.cachesize 0
  pidfile {self.dir}/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout http-keep-alive 1h
frontend fe
  bind 127.0.0.1:{self.port} ssl crt {self.pem} alpn h2,http/1.1
  default_backend up
backend up
  http-reuse always
  server up 127.0.0.1:{self.upstream}
""")
        return ["haproxy", "-W", "-db", "-f", self.dir / "haproxy.cfg"]

    def swap_cert(self, src):
        super().swap_cert(src)
        self.pem.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        self.proc.send_signal(signal.SIGUSR2)


PROXIES = [McpEdge, Nginx, Caddy, HAProxy]


# ---- measurements ---------------------------------------------------------------------------

def wrk(url, conns, extra=(), get=False):
    """wrk on one thread: an MCP `tools/call` POST per request, or (`get`) a small GET."""
    lua = WORK / "post.lua"
    lua.write_text('wrk.method = "POST"\nwrk.body = \'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
                   '"params":{"name":"search_docs","arguments":{"query":"tls"}}}\'\n'
                   'wrk.headers["Content-Type"] = "application/json"\n')
    script = [] if get else ["-s", lua]
    out = run(["wrk", "-t1", f"-c{conns}", f"-d{SECONDS}s", "--latency", *script, *extra, url])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "errors": errors, "requests": reqs}


def h2load(url, conns=64, streams=10):
    """h2load: `conns` connections × `streams` concurrent streams of MCP-shaped POSTs."""
    body = WORK / "body.json"
    body.write_text('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}')
    logf = WORK / "h2load.log"
    if logf.exists():
        logf.unlink()
    out = run(["h2load", "-c", str(conns), "-m", str(streams), "-D", str(SECONDS), "-d", body,
               "-H", "content-type: application/json", "--log-file", logf, url])
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    lat = sorted(int(line.split()[2]) for line in logf.read_text().splitlines() if line.strip())
    pct = lambda p: lat[round((len(lat) - 1) * p)] / 1000
    failed = int(re.search(r"(\d+) failed", out).group(1))
    return {"rps": rps, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": failed}


def handshakes(px):
    """Full handshakes/s, and the proxy's CPU per handshake: on this machine the rate is set by
    the load generator's core (wrk's own handshakes and the upstream: busy the whole run for
    every proxy, where the proxy's core is not), so the cost is the figure that tells proxies
    apart (bench/cpu_per_request.py --handshakes shows both cores)."""
    before = sum(tree_cpu(px.proc.pid))
    r = wrk(px.url("/mcp"), 32, ["-H", "Connection: close"])
    cpu = sum(tree_cpu(px.proc.pid)) - before
    return {"hs": r["rps"], "hs_cpu_us": cpu * 1e6 / max(r["requests"], 1), "errors": r["errors"]}


def client(*args):
    return [REL / "bench-client", *map(str, args)]


def sse_latency(px):
    ca = px.pki / "ca.pem"
    through = json.loads(run(client("sse-latency", px.url("/ticks?n=400&gap_ms=5"), "--ca", ca)))
    direct = json.loads(run(client("sse-latency", f"http://127.0.0.1:{px.upstream}/ticks?n=400&gap_ms=5")))
    return {"added_p50_us": through["p50_us"] - direct["p50_us"],
            "added_p99_us": through["p99_us"] - direct["p99_us"]}


def memory(px, n):
    time.sleep(0.5)
    base = px.rss_kb()
    holder = subprocess.Popen(["taskset", "-c", LOAD_CPU, *map(str, client("hold", px.url("/idle"), n,
                              "--ca", px.pki / "ca.pem"))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    import select
    ready = 0
    if select.select([holder.stdout], [], [], 300)[0]:
        line = holder.stdout.readline().split()
        ready = int(line[1]) if len(line) == 2 else 0
    time.sleep(2)
    rss = px.rss_kb()
    holder.stdin.close()
    try:
        holder.wait(60)
    except subprocess.TimeoutExpired:
        holder.kill()
    if ready < n:
        raise RuntimeError(f"only {ready} of {n} streams opened")
    return {"kb_per_stream": (rss - base) / ready, "rss_mb": rss / 1024, "streams": ready}


def idle(px, n):
    """RSS with `n` idle TLS connections held, and how many the proxy closed within IDLE_HOLD s
    (each proxy with its default timeouts)."""
    time.sleep(0.5)
    base = px.rss_kb()
    holder = subprocess.Popen(["taskset", "-c", LOAD_CPU, *map(str, client("idle", px.url("/"), n, IDLE_HOLD,
                              "--ca", px.pki / "ca.pem"))], stdout=subprocess.PIPE, text=True)
    first = holder.stdout.readline().split()
    ready = int(first[1]) if len(first) == 2 else 0
    time.sleep(2)
    rss = px.rss_kb()
    out, _ = holder.communicate(timeout=IDLE_HOLD + 120)
    closed = json.loads(out)
    if ready < n:
        raise RuntimeError(f"only {ready} of {n} connections opened")
    return {"kb_per_conn": (rss - base) / ready, "rss_mb": rss / 1024, "ready": ready, **closed}


def leave(px):
    out = run(client("leave", px.url("/idle"), f"http://127.0.0.1:{px.upstream}/open",
                     "--ca", px.pki / "ca.pem"), timeout=200)
    return json.loads(out)


def swap_under_load(px):
    stop_flag = threading.Event()
    swaps = [0]

    def swapper():
        certs = [px.pki / "leaf2.pem", px.pki / "leaf.pem"]
        while not stop_flag.wait(0.2):
            px.swap_cert(certs[swaps[0] % 2])
            swaps[0] += 1

    t = threading.Thread(target=swapper)
    t.start()
    try:
        r = wrk(px.url("/mcp"), 16, ["-H", "Connection: close"])
    finally:
        stop_flag.set()
        t.join()
    return {"failed": r["errors"], "requests": r["requests"], "swaps": swaps[0]}


# ---- the run --------------------------------------------------------------------------------

def median_spread(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


# The load figures, each measured on every proxy back to back.
FIGURES = [("h1", lambda px: wrk(px.url("/mcp"), 64)),
           ("h1get", lambda px: wrk(px.url("/open"), 64, get=True)),
           ("h2", lambda px: h2load(px.url("/mcp"))),
           ("h2few", lambda px: h2load(px.url("/mcp"), 8, 8)),
           ("handshakes", lambda px: handshakes(px)),
           ("sse", lambda px: sse_latency(px)),
           ("leave", lambda px: leave(px))]


def measure_all(pki, upstream, results):
    """Run i starts every proxy (each idle while another is measured) and measures each figure
    on all of them back to back, in an order rotated from run to run: this machine's neighbours
    move requests/s by a third within a minute, so a figure pairs with nginx's measured seconds
    later, not a whole proxy's run later (the ratio column: the median of the runs' ratios).
    Every figure appends one result per run, an error included, so that run i of two proxies
    pair."""
    classes = [c for c in PROXIES if not ONLY_PROXIES or c.name in ONLY_PROXIES]
    if not classes:
        raise SystemExit(f"BENCH_PROXIES={','.join(sorted(ONLY_PROXIES))}: no such proxy "
                         f"({', '.join(c.name for c in PROXIES)})")
    for i in range(RUNS):
        k = i % len(classes)
        order = classes[k:] + classes[:k]
        log(f"== run {i + 1}: " + ", ".join(c.name for c in order))
        running = []
        try:
            for cls in order:
                running.append(cls(pki, upstream).start())
            for key, fn in FIGURES:
                for px in running if wanted(key) else []:
                    try:
                        r = fn(px)
                    except Exception as e:  # a failed figure is reported, the run goes on
                        r = {"error": str(e)}
                    results.setdefault(px.name, {}).setdefault(key, []).append(r)
                    log(f"  run {i + 1} {px.name} {key}: {r}")
        finally:
            for px in running:
                px.stop()
        for cls in order:
            for n in STREAMS if wanted("mem") else []:
                r = on_fresh(cls, pki, upstream, lambda px: memory(px, n))
                results.setdefault(cls.name, {}).setdefault(f"mem{n}", []).append(r)
                log(f"  run {i + 1} {cls.name} mem{n}: {r}")
    # Once each: long (idle holds IDLE_HOLD s) or not a rate (swap).
    for cls in classes:
        for key, fn in [("idle", lambda px: idle(px, IDLE)), ("swap", swap_under_load)]:
            if wanted(key):
                r = on_fresh(cls, pki, upstream, fn)
                results.setdefault(cls.name, {})[key] = [r]
                log(f"  {cls.name} {key}: {r}")


def on_fresh(cls, pki, upstream, fn):
    """`fn` on a freshly started proxy of class `cls`; its result, or the error it raised."""
    return on_fresh_proxy(cls(pki, upstream), fn)


def on_fresh_proxy(px, fn):
    """`fn` on `px`, started for it and stopped after; its result, or the error it raised."""
    try:
        px.start()
        return fn(px)
    except Exception as e:  # a failed figure is reported, the run goes on
        return {"error": str(e)}
    finally:
        px.stop()


def https_upstream(pki, results):
    """mcp-edge to a plain upstream vs to an HTTPS upstream pinned by fingerprint."""
    import hashlib
    tls_port = free_port()
    up = spawn([REL / "bench-upstream", "--listen", f"127.0.0.1:{tls_port}", "--tls-cert",
                pki / "leaf.pem", "--tls-key", pki / "leaf.key"], LOAD_CPU, "upstream-tls")
    wait_port(tls_port)
    der = ssl.PEM_cert_to_DER_cert((pki / "leaf.pem").read_text())
    pin = hashlib.sha256(der).hexdigest()
    for i in range(RUNS):
        for kind in ("plain", "pinned"):
            pinned = (f"\n      urls: [https://127.0.0.1:{tls_port}]\n      pin_sha256: [\"{pin}\"]"
                      "\n      server_name: localhost")
            px = McpEdge(pki, results["_upstream"], pinned if kind == "pinned" else None)
            px.start()
            try:
                r = wrk(px.url("/mcp"), 64)
            except Exception as e:
                r = {"error": str(e)}
            finally:
                px.stop()
            results.setdefault("upstream", {}).setdefault(kind, []).append(r)
            log(f"  upstream {kind} run {i + 1}: {r}")
    stop(up)


def auth_overhead(pki, results):
    """mcp-edge without auth, with an API key and with a JWT access token (ES256, checked
    against the JWKS of tests/python/auth_server.py, an Authlib authorization server)."""
    as_port = free_port()
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", pki / "signing.pem"], check=True, capture_output=True)
    auth_server = spawn([ROOT / ".venv/bin/python", ROOT / "tests/python/auth_server.py", "--port", as_port,
                         "--cert", pki / "leaf.pem", "--key", pki / "leaf.key",
                         "--signing-key", pki / "signing.pem", "--kid", "k1"], LOAD_CPU, "auth-server")
    wait_port(as_port)
    issuer = f"https://127.0.0.1:{as_port}"
    key = "mcpe_bench-key"
    kinds = {
        "none": "",
        "api_key": f"    auth:\n      api_keys:\n        keys: {{ bench: \"sha256:{hashlib.sha256(key.encode()).hexdigest()}\" }}\n",
        "jwt": f"    auth:\n      oauth:\n        issuer: {issuer}\n        ca: {pki / 'ca.pem'}\n        scopes: [mcp:tools]\n",
    }
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    try:
        for i in range(RUNS):
            for kind, host_yaml in kinds.items():
                px = McpEdge(pki, results["_upstream"], None, host_yaml)
                header = []
                if kind == "api_key":
                    header = ["-H", f"Authorization: Bearer {key}"]
                elif kind == "jwt":
                    form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                                   "resource": px.url("/")}).encode()
                    req = urllib.request.Request(f"{issuer}/token", data=form)
                    req.add_header("Authorization", "Basic " + base64.b64encode(b"machine:machine-secret").decode())
                    token = json.loads(urllib.request.urlopen(req, context=ctx, timeout=10).read())["access_token"]
                    header = ["-H", f"Authorization: Bearer {token}"]
                r = on_fresh_proxy(px, lambda p: wrk(p.url("/mcp"), 64, header))
                results.setdefault("auth", {}).setdefault(kind, []).append(r)
                log(f"  auth {kind} run {i + 1}: {r}")
    finally:
        stop(auth_server)


def mcp_parsing(pki, results):
    """mcp-edge reading every JSON-RPC call and outcome (the default) against not (`mcp: {
    observe: false }`), HTTP/1.1 keep-alive with the h1 figure's tools/call POST."""
    for i in range(RUNS):
        for kind, host_yaml in (("on", ""), ("off", "    mcp: { observe: false }\n")):
            px = McpEdge(pki, results["_upstream"], None, host_yaml)
            r = on_fresh_proxy(px, lambda p: wrk(p.url("/mcp"), 64))
            results.setdefault("mcp_parsing", {}).setdefault(kind, []).append(r)
            log(f"  mcp parsing {kind} run {i + 1}: {r}")


def policy_and_audit(pki, results):
    """mcp-edge with an API key (the baseline), the same with a policy of 20 rules (the call is
    allowed by the last: every rule is tried), and with the audit log on (a file), HTTP/1.1
    keep-alive with the h1 figure's tools/call POST."""
    key = "mcpe_bench-key"
    auth = (f"    auth:\n      api_keys:\n        keys: {{ bench: \"sha256:"
            f"{hashlib.sha256(key.encode()).hexdigest()}\" }}\n")
    rules = "".join(
        f"        - {{ name: r{i}, effect: allow, who: {{ keys: [bench] }}, tools: [tool_{i}_*],"
        f" arguments: {{ q: {{ regex: \"^[a-z]+$\" }} }} }}\n" for i in range(19))
    rules += "        - { name: last, effect: allow, who: authenticated, tools: [search_docs] }\n"
    kinds = {
        "none": auth,
        "rules20": auth + "    policy:\n      default: deny\n      rules:\n" + rules,
        "audit": auth,
    }
    header = ["-H", f"Authorization: Bearer {key}"]
    for i in range(RUNS):
        for kind, host_yaml in kinds.items():
            px = McpEdge(pki, results["_upstream"], None, host_yaml)
            if kind == "audit":
                px.top_yaml = f"audit: {{ file: {px.dir / 'audit.jsonl'} }}\n"
            r = on_fresh_proxy(px, lambda p: wrk(p.url("/mcp"), 64, header))
            results.setdefault("policy", {}).setdefault(kind, []).append(r)
            log(f"  policy/audit {kind} run {i + 1}: {r}")


def prepare():
    """The descriptor limit, the certificates and the upstream every proxy forwards to:
    (pki, upstream port)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 200000), hard))
    pki = make_certs()
    upstream = free_port()
    spawn([REL / "bench-upstream", "--listen", f"127.0.0.1:{upstream}"], LOAD_CPU, "upstream")
    wait_port(upstream)
    return pki, upstream


def main():
    pki, upstream = prepare()
    results = {"_upstream": upstream}
    measure_all(pki, upstream, results)
    if wanted("upstream"):
        https_upstream(pki, results)
    if wanted("auth"):
        auth_overhead(pki, results)
    if wanted("mcp"):
        mcp_parsing(pki, results)
    if wanted("policy"):
        policy_and_audit(pki, results)
    import bench_acme
    import bench_churn
    if wanted("acme"):
        bench_acme.measure(results, WORK, RUNS, log)
    if "cost" in ONLY:  # asked for by name only: it profiles rather than compares
        import bench_cost
        bench_cost.measure(results, WORK, pki, upstream, log)
    if wanted("churn"):
        bench_churn.measure(results, WORK, pki, log, CHURN,
                            [p for p in PROXIES if not ONLY_PROXIES or p.name in ONLY_PROXIES])
    report(results)


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        v = f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v}{unit}"


def cell(results, proxy, key, field):
    s = median_spread([r.get(field) for r in results.get(proxy, {}).get(key, [])])
    if s is None:
        errs = [r.get("error") for r in results.get(proxy, {}).get(key, []) if "error" in r]
        return ("error: " + errs[0][:60]) if errs else "–"
    spread = f" ({fmt(s['min'])}–{fmt(s['max'])})" if s["n"] > 1 else ""
    return fmt(s["median"]) + spread


def paired_ratio(results, other, key, field):
    """mcp-edge / `other` for one figure: the median of each run's ratio (run i of both was
    measured back to back), with their spread."""
    mine = results.get("mcp-edge", {}).get(key, [])
    theirs = results.get(other, {}).get(key, [])
    ratios = [a.get(field) / b.get(field) for a, b in zip(mine, theirs)
              if isinstance(a.get(field), (int, float)) and isinstance(b.get(field), (int, float))
              and b.get(field)]
    if not ratios:
        return "–"
    m = statistics.median(ratios)
    return f"{m:.2f}×" + (f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else "")


def report(results):
    rows = [
        ("HTTP/1.1 keep-alive requests/s (wrk, 64 conns, MCP POST)", "h1", "rps"),
        ("HTTP/1.1 p50 latency ms", "h1", "p50_ms"),
        ("HTTP/1.1 p99 latency ms", "h1", "p99_ms"),
        ("HTTP/1.1 keep-alive requests/s (wrk, 64 conns, small GET of a JSON object)", "h1get", "rps"),
        ("HTTP/1.1 GET p99 latency ms", "h1get", "p99_ms"),
        ("HTTP/2 requests/s (h2load, 64 conns × 10 streams)", "h2", "rps"),
        ("HTTP/2 p50 latency ms", "h2", "p50_ms"),
        ("HTTP/2 p99 latency ms", "h2", "p99_ms"),
        ("HTTP/2 requests/s (h2load, 8 conns × 8 streams)", "h2few", "rps"),
        ("HTTP/2 8×8 p99 latency ms", "h2few", "p99_ms"),
        ("Full TLS handshakes/s (new connection per request, resumption off everywhere)", "handshakes", "hs"),
        ("Proxy CPU µs per full handshake (lower is better)", "handshakes", "hs_cpu_us"),
    ] + [(f"Memory per idle SSE stream, KB ({n:,} streams)", f"mem{n}", "kb_per_stream")
         for n in STREAMS] + [
        (f"Memory per idle TLS connection, KB ({IDLE:,} connections)", "idle", "kb_per_conn"),
        (f"RSS with {IDLE:,} idle TLS connections, MB", "idle", "rss_mb"),
        (f"Idle TLS connections closed by the proxy within {IDLE_HOLD} s", "idle", "closed"),
        ("Median time to close an idle TLS connection, s", "idle", "median_closed_s"),
        ("Added SSE latency p50 µs", "sse", "added_p50_us"),
        ("Added SSE latency p99 µs", "sse", "added_p99_us"),
        ("Upstream closed after SSE client left, ms", "leave", "closed_after_ms"),
        ("Failed requests during certificate swaps", "swap", "failed"),
        ("First ACME certificate served, ms after start", "acme", "ms"),
        ("Failed MCP sessions, Streamable HTTP", "churn_streamable", "failed"),
        ("Failed MCP sessions, legacy SSE", "churn_sse", "failed"),
    ]
    names = [p.name for p in PROXIES]
    lines = ["| figure | " + " | ".join(names) + " | mcp-edge / nginx | mcp-edge / Caddy | mcp-edge / HAProxy |",
             "|---|" + "---|" * (len(names) + 3)]
    for label, key, field in rows:
        cells = [cell(results, n, key, field) for n in names]
        ratio = lambda b: paired_ratio(results, b, key, field)
        lines.append(f"| {label} | " + " | ".join(cells)
                     + f" | {ratio('nginx')} | {ratio('caddy')} | {ratio('haproxy')} |")
    up = results.get("upstream", {})
    plain = median_spread([r.get("rps") for r in up.get("plain", [])])
    pinned = median_spread([r.get("rps") for r in up.get("pinned", [])])
    extra = []
    if plain and pinned:
        extra.append(f"HTTPS (pinned) upstream vs plain, mcp-edge, HTTP/1.1 requests/s: pinned "
                     f"{fmt(pinned['median'])} vs plain {fmt(plain['median'])} "
                     f"({pinned['median'] / plain['median']:.2f}×).")
    auth = results.get("auth", {})
    kinds = ("none", "api_key", "jwt")
    rps = {k: median_spread([r.get("rps") for r in auth.get(k, [])]) for k in kinds}
    p99 = {k: median_spread([r.get("p99_ms") for r in auth.get(k, [])]) for k in kinds}
    if all(rps.values()) and all(p99.values()):
        base = rps["none"]["median"]
        extra.append("Access control, mcp-edge, HTTP/1.1 requests/s (p99 ms): "
                     + ", ".join(f"{k} {fmt(rps[k]['median'])} ({p99[k]['median']:.2f}) "
                                 f"{rps[k]['median'] / base:.2f}×" for k in kinds)
                     + " (jwt: an ES256 access token, its signature verified once a minute per token, its claims on every request).")
    parsing = results.get("mcp_parsing", {})
    on = median_spread([r.get("rps") for r in parsing.get("on", [])])
    off = median_spread([r.get("rps") for r in parsing.get("off", [])])
    if on and off:
        extra.append(f"MCP parsing, mcp-edge, HTTP/1.1 requests/s: on {fmt(on['median'])} vs off "
                     f"{fmt(off['median'])} ({on['median'] / off['median']:.2f}×).")
    policy = {k: median_spread([r.get("rps") for r in v]) for k, v in results.get("policy", {}).items()}
    if all(policy.get(k) for k in ("none", "rules20", "audit")):
        base = policy["none"]["median"]
        extra.append("Policy and audit, mcp-edge with an API key, HTTP/1.1 requests/s: "
                     + ", ".join(f"{k} {fmt(policy[k]['median'])} ({policy[k]['median'] / base:.3f}×)"
                                 for k in ("none", "rules20", "audit"))
                     + " (rules20: 20 rules, the call allowed by the last, so every rule is tried "
                       "and the body held; audit: one JSON line per call to a file).")
    replicas = results.get("acme_replicas", [])
    three = median_spread([r.get("ms") for r in replicas])
    one = median_spread([r.get("ms") for r in results.get("mcp-edge", {}).get("acme", [])])
    if three and one:
        orders = sorted({r.get("orders") for r in replicas if "orders" in r})
        extra.append(f"First ACME certificate, mcp-edge: three replicas on one Redis behind HAProxy, "
                     f"until all three serve it, {fmt(three['median'])} ms ({fmt(three['min'])}–"
                     f"{fmt(three['max'])}) vs one replica on files {fmt(one['median'])} ms; orders "
                     f"placed by the three together per run: {orders}.")
    by_challenge = results.get("acme_challenges", {})
    caddy = median_spread([r.get("ms") for r in results.get("caddy", {}).get("acme", [])])
    tls_alpn = median_spread([r.get("ms") for r in by_challenge.get("tls-alpn-01", [])])
    dns01 = median_spread([r.get("ms") for r in by_challenge.get("dns-01", [])])
    if one and tls_alpn and dns01:
        span = lambda m: f"{fmt(m['median'])} ms ({fmt(m['min'])}–{fmt(m['max'])})"
        extra.append(f"First ACME certificate by challenge, mcp-edge: HTTP-01 {span(one)}, "
                     f"TLS-ALPN-01 (port 80 closed) {span(tls_alpn)}, DNS-01 over RFC 2136 to BIND "
                     f"{span(dns01)}" + (f"; Caddy HTTP-01 {span(caddy)}." if caddy else "."))
    swap = results.get("mcp-edge", {}).get("swap", [{}])[0]
    if "requests" in swap:
        extra.append(f"Certificate swaps: {swap.get('swaps')} swaps during {swap.get('requests')} "
                     f"requests on new connections, {swap.get('failed')} failed (mcp-edge).")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_model()}), {mem_gb():.0f} GiB, {platform.platform()}"
    versions = {
        "nginx": tool_version(["nginx", "-v"]),
        "caddy": tool_version(["caddy", "version"]),
        "haproxy": tool_version(["haproxy", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "h2load": tool_version(["h2load", "--version"]),
    }
    md = "\n".join([
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine}.",
        f"Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"{RUNS} runs per figure, {SECONDS} s each for load figures, every proxy back to back in "
        "each run; median (min–max); ratios: the median (min–max) of the runs' ratios.",
        "", *lines, "", *extra, "",
    ])
    out = ROOT / "bench" / "results" / ("partial" if PARTIAL else "")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"{stamp}.md").write_text(md)
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=1, default=str))
    bm = ROOT / "BENCHMARKS.md"
    text = bm.read_text()
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    if PARTIAL:
        log(f"partial run (BENCH_ONLY/BENCH_PROXIES): BENCHMARKS.md left as it is; {out / stamp}.md")
    elif begin in text and end in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + md + "\n" + text[text.index(end):]
        bm.write_text(text)
    print(md)


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def mem_gb():
    kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return kb / 1024 / 1024


def tool_version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip().splitlines()[0]
        m = re.search(r"v?(\d+\.\d+(\.\d+)?)", text)
        return m.group(1) if m else text[:30]
    except (OSError, IndexError):
        return "?"


def entry(body=None):
    """Runs `body` (default: every figure) in a scratch directory; stops what it started."""
    global WORK
    WORK = Path(tempfile.mkdtemp(prefix="mcp-edge-bench-"))
    try:
        (body or main)()
    finally:
        for p in PROCS:
            stop(p)
        if os.environ.get("BENCH_KEEP"):
            log(f"logs kept in {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    # One module instance (`run`) for the entry point and the helper modules that import it.
    sys.path.insert(0, str(Path(__file__).parent))
    import run

    run.entry()

"""Instructions per proxied request, mcp-edge beside nginx, counted by valgrind's callgrind: a
figure that does not move with the neighbours' load (this machine has no CPU counters, and the
timings of `bench/cpu_per_request.py` spread by a third between runs). Each proxy runs under
callgrind; after a warm-up the counters are zeroed, a fixed number of HTTP/1.1 keep-alive
requests (TLS, the MCP POST or the small GET of `bench/run`) go through it, and the count is
divided by them. With `--h2`, the requests go as HTTP/2 streams instead (8 connections, 8 streams
in flight on each: `bench/run`'s few-connections shape). With `--top N`, the N functions of mcp-edge with the most inclusive
instructions per request, for finding where they go.

    python3 bench/instructions_per_request.py [--top 40] [--h2] [--cache-sim]   # BENCH_EDGE_BIN=... for another build

Needs valgrind, h2load and the release builds `bench/run` installs and makes.

Instructions are not time (a cache miss costs more than an add), but two builds' counts differ
only by what the code does, so a cut shows however busy the machine is.
"""

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402
import bench_cost  # noqa: E402

REQUESTS = 4000
CONNS = 4
H2_CONNS, H2_STREAMS = 8, 8
# --cache-sim: callgrind simulates the first-level caches too (slower).
CACHE_SIM = False


def under_callgrind(cls, out):
    """`cls` with its command run under callgrind, counting from zero on demand."""

    class Counted(cls):
        def command(self):
            cmd = super().command()
            if cls is bench.Nginx:
                # One worker, so the whole count is one process's.
                conf = self.dir / "nginx.conf"
                # As root: callgrind_control cannot reach a worker running as nobody.
                conf.write_text(conf.read_text().replace(f"worker_processes {bench.CORES};",
                                                         "worker_processes 1;\nuser root;"))
            sim = ["--cache-sim=yes"] if CACHE_SIM else []
            return ["valgrind", "--tool=callgrind", *sim, "--trace-children=yes",
                    f"--callgrind-out-file={out}/cg.%p", *cmd]

        def start(self):
            # Valgrind reads the binary's debug information first: minutes, not milliseconds.
            self.proc = bench.spawn(self.command(), bench.PROXY_CPU, self.name)
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    return self
                except OSError:
                    time.sleep(0.5)
            raise RuntimeError(f"{self.name} does not listen under valgrind")

    return Counted


def load(px, path, get, requests, h2=False):
    """`requests` requests over CONNS keep-alive connections (h2load speaks HTTP/1.1 too), or as
    HTTP/2 streams, H2_STREAMS at a time on each of H2_CONNS connections."""
    body = []
    if not get:
        f = bench.WORK / "post.json"
        f.write_text('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
                     '"search_docs","arguments":{"query":"tls"}}}')
        body = ["-d", f, "-H", "content-type: application/json"]
    shape = ["-c", H2_CONNS, "-m", H2_STREAMS] if h2 else ["--h1", "-c", CONNS]
    out = bench.run(["h2load", "-n", requests, *shape, *body, px.url(path)], timeout=1800)
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    if ok != requests:
        raise RuntimeError(f"{px.name}: {ok} of {requests} answered 2xx:\n{out[-800:]}")
    return done


def control(*args):
    subprocess.run(["callgrind_control", *args], capture_output=True, check=True)


def total(files):
    """The dumps' counts summed, by event (`Ir`; with --cache-sim also `I1mr`, `D1mr`...)."""
    sums = {}
    for f in files:
        text = f.read_text()
        events = re.search(r"^events:\s+(.+)$", text, re.M)
        summary = re.search(r"^summary:\s+([\d ]+)$", text, re.M)
        if events and summary:
            for e, v in zip(events.group(1).split(), summary.group(1).split()):
                sums[e] = sums.get(e, 0) + int(v)
    return sums


def measure(cls, path, get, top, h2):
    out = Path(tempfile.mkdtemp(prefix="cg-", dir=bench.WORK))
    px = under_callgrind(cls, out)(*bench.prepared).start()
    try:
        load(px, path, get, 200, h2)  # warm-up: pools, lazily made state, the allocator
        for pid in bench_cost.pids(px.proc.pid):
            control("-z", str(pid))
        t = time.time()
        n = load(px, path, get, REQUESTS, h2)
        for pid in bench_cost.pids(px.proc.pid):
            control("-d", str(pid))
        dumps = sorted(out.glob("cg.*.*"))
        sums = total(dumps)
        misses = ""
        if CACHE_SIM:
            l1d = sums.get("D1mr", 0) + sums.get("D1mw", 0)
            misses = f" {sums.get('I1mr', 0) / n:,.0f} | {l1d / n:,.0f} |"
        print(f"| {cls.name} | {'HTTP/2' if h2 else 'HTTP/1.1'} | {path} | {n} | {sums.get('Ir', 0) / n:,.0f} |{misses} {time.time() - t:.0f} s |", flush=True)
        if top and cls is bench.McpEdge:
            annotate(dumps, n, top)
    finally:
        px.stop()


def annotate(dumps, n, top):
    """The `top` functions by inclusive instructions per request."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                        *map(str, dumps)], capture_output=True, text=True, check=True)
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
        if m and ":" in m.group(2):
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    rows.sort(reverse=True)
    print(f"\ninclusive instructions per request, top {top}:")
    for count, name in rows[:top]:
        print(f"{count / n:10,.0f}  {name[:150]}")
    print()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--top", type=int, default=0)
    p.add_argument("--proxies", default="mcp-edge,nginx")
    p.add_argument("--paths", default="/mcp,/open")
    p.add_argument("--h2", action="store_true", help="HTTP/2, 8 connections x 8 streams")
    p.add_argument("--cache-sim", action="store_true",
                   help="also first-level cache misses per request (callgrind's simulation)")
    a = p.parse_args()
    global CACHE_SIM
    CACHE_SIM = a.cache_sim
    bench.prepared = bench.prepare()
    sim = (" L1i misses/request | L1d misses/request |", "---|---|") if CACHE_SIM else ("", "")
    print(f"| proxy | protocol | path | requests | instructions/request |{sim[0]} wall |")
    print(f"|---|---|---|---|---|{sim[1]}---|")
    for cls in [bench.McpEdge, bench.Nginx]:
        if cls.name not in a.proxies.split(","):
            continue
        for path in a.paths.split(","):
            measure(cls, path, path != "/mcp", a.top, a.h2)


if __name__ == "__main__":
    bench.entry(main)

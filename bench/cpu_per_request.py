"""CPU per proxied request, mcp-edge beside nginx, for both HTTP/1.1 shapes of `bench/run` (the MCP
POST and the small GET): requests/s, user and kernel µs per request (the proxy's utime/stime over
the run) and, per request, syscalls, context switches, migrations and page faults (`perf stat`
over 6 s of the run). Each proxy alone on its core, wrk on the other, as in `bench/run`.
With --handshakes, bench/run's full-handshake figure instead (a new TLS connection per request,
32 connections, resumption off): the same columns per handshake, and how busy each core was,
which says whether the proxy or the load generator set the rate.

    python3 bench/cpu_per_request.py [--handshakes]     # BENCH_EDGE_BIN=... for another build

Nothing else may run on the machine meanwhile.
"""

import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402
import bench_cost  # noqa: E402

EVENTS = "raw_syscalls:sys_enter,context-switches,cpu-migrations,page-faults"


def busy():
    """Per core: (busy, total) jiffies so far (/proc/stat)."""
    cores = {}
    for line in open("/proc/stat"):
        f = line.split()
        if f[0].startswith("cpu") and f[0] != "cpu":
            n = list(map(int, f[1:]))
            cores[f[0]] = (sum(n) - n[3] - n[4], sum(n))
    return cores


def measure(px, path, get, seconds=6, conns=64, extra=()):
    box = {}
    load = threading.Thread(
        target=lambda: box.update(r=bench.wrk(px.url(path), conns, extra, get=get)))
    before = bench_cost.tree_cpu(px.proc.pid)
    cores_before = busy()
    load.start()
    time.sleep(1)
    out = subprocess.run(["perf", "stat", "-x,", "-e", EVENTS, "-p",
                          ",".join(map(str, bench_cost.pids(px.proc.pid))), "--", "sleep",
                          str(seconds)], capture_output=True, text=True).stderr
    load.join()
    after = bench_cost.tree_cpu(px.proc.pid)
    cores = " ".join(f"{c}={(b - b0) * 100 / max(t - t0, 1):.0f}%"
                     for c, ((b, t), (b0, t0)) in
                     ((c, (v, cores_before[c])) for c, v in busy().items()))
    r = box["r"]
    user, kernel = ((a - b) * 1e6 / r["requests"] for a, b in zip(after, before))
    per_request = {}
    for line in out.strip().splitlines():
        f = line.split(",")
        try:
            per_request[f[2]] = int(f[0]) / (r["rps"] * seconds)
        except (ValueError, IndexError):
            pass
    counts = " ".join(f"{k}={v:.2f}" for k, v in per_request.items())
    print(f"| {px.name} | {path} | {r['rps']:,.0f} | {user:.1f} | {kernel:.1f} | {counts} "
          f"| {cores} |", flush=True)


def main():
    pki, upstream = bench.prepare()
    handshakes = "--handshakes" in sys.argv[1:]
    print("| proxy | path | req/s | user µs/req | kernel µs/req | per request | cores busy |")
    print("|---|---|---|---|---|---|---|")
    for cls in [bench.McpEdge, bench.Nginx]:
        px = cls(pki, upstream).start()
        try:
            if handshakes:
                measure(px, "/mcp", False, conns=32, extra=["-H", "Connection: close"])
                continue
            for path, get in [("/mcp", False), ("/open", True)]:
                measure(px, path, get)
        finally:
            px.stop()


if __name__ == "__main__":
    bench.entry(main)

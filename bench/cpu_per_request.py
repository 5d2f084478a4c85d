"""CPU per proxied request, mcp-edge beside nginx, for both HTTP/1.1 shapes of `bench/run` (the MCP
POST and the small GET): requests/s, user and kernel µs per request (the proxy's utime/stime over
the run) and, per request, syscalls, context switches, migrations and page faults (`perf stat`
over 6 s of the run). Each proxy alone on its core, wrk on the other, as in `bench/run`.

    python3 bench/cpu_per_request.py      # BENCH_EDGE_BIN=... for another build

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


def measure(px, path, get, seconds=6):
    box = {}
    load = threading.Thread(target=lambda: box.update(r=bench.wrk(px.url(path), 64, get=get)))
    before = bench_cost.tree_cpu(px.proc.pid)
    load.start()
    time.sleep(1)
    out = subprocess.run(["perf", "stat", "-x,", "-e", EVENTS, "-p",
                          ",".join(map(str, bench_cost.pids(px.proc.pid))), "--", "sleep",
                          str(seconds)], capture_output=True, text=True).stderr
    load.join()
    after = bench_cost.tree_cpu(px.proc.pid)
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
    print(f"| {px.name} | {path} | {r['rps']:,.0f} | {user:.1f} | {kernel:.1f} | {counts} |",
          flush=True)


def main():
    pki, upstream = bench.prepare()
    print("| proxy | path | req/s | user µs/req | kernel µs/req | per request |")
    print("|---|---|---|---|---|---|")
    for cls in [bench.McpEdge, bench.Nginx]:
        px = cls(pki, upstream).start()
        try:
            for path, get in [("/mcp", False), ("/open", True)]:
                measure(px, path, get)
        finally:
            px.stop()


if __name__ == "__main__":
    bench.entry(main)

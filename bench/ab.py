"""Two mcp-edge builds side by side (`bench/ab BUILD_A BUILD_B`): CPU per proxied request, user
and kernel, under the cost model's load (wrk, HTTP/1.1 keep-alive, 64 connections, the proxy
pinned to one core), the builds alternating for BENCH_RUNS rounds (default 4) so that the
machine's drift falls on both. CPU time per request moves less with the neighbours than
requests/s does; use it to decide whether a change to the request path pays.
"""

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402
import bench_cost  # noqa: E402


def main():
    builds = [Path(b).resolve() for b in sys.argv[1:]]
    if len(builds) != 2 or not all(b.is_file() for b in builds):
        sys.exit("usage: bench/ab BUILD_A BUILD_B (two mcp-edge binaries)")
    pki, upstream = bench.prepare()
    rows = {b: [] for b in builds}
    for i in range(int(os.environ.get("BENCH_RUNS", "4"))):
        for b in builds:
            bench.EDGE_BIN = b
            r = bench.on_fresh(bench.McpEdge, pki, upstream,
                               lambda px: bench_cost.cpu_and_syscalls(px, 2))
            rows[b].append(r)
            print(f"round {i + 1} {b}: {r['rps']:,.0f} req/s, user {r['user_us']:.2f} µs, "
                  f"kernel {r['kernel_us']:.2f} µs", flush=True)
    print()
    print("| build | requests/s | user µs/req | kernel µs/req |")
    print("|---|---|---|---|")
    for b, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "user_us", "kernel_us")}
        print(f"| {b} | {med['rps']:,.0f} | {med['user_us']:.2f} | {med['kernel_us']:.2f} |")


if __name__ == "__main__":
    bench.entry(main)

"""The per-request cost model (`BENCH_ONLY=cost bench/run`): for mcp-edge and nginx under the same
wrk load (HTTP/1.1 keep-alive, 64 connections, the proxy pinned to one core):

- CPU per proxied request, user and kernel (utime/stime of the proxy's processes over the run);
- syscalls per request (perf's raw_syscalls:sys_enter tracepoint, counted for the proxy);
- for mcp-edge, a flame graph (perf record with DWARF unwinding, folded by inferno) and the
  functions with the most self time;
- for mcp-edge built with the system allocator, allocations and bytes per request and the call
  sites that allocate most (heaptrack).

Writes bench/results/cost-<time>/ (report.md, flamegraph.svg, folded stacks, heaptrack output).
"""

import collections
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import run as bench

tree_cpu = bench.tree_cpu


def pids(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(k) for k in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def under_load(px, during, seconds=None):
    """Runs wrk against `px` and `during(pid)` alongside it; (wrk result, during's result)."""
    box = {}
    t = threading.Thread(target=lambda: box.update(r=bench.wrk(px.url("/mcp"), 64)))
    t.start()
    time.sleep(0.5)
    got = during(px.proc.pid)
    t.join()
    return box["r"], got


def cpu_and_syscalls(px, seconds):
    before = tree_cpu(px.proc.pid)
    r = bench.wrk(px.url("/mcp"), 64)
    after = tree_cpu(px.proc.pid)
    n = r["requests"]
    user, kernel = ((a - b) * 1e6 / n for a, b in zip(after, before))

    def count_syscalls(pid):
        out = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                              ",".join(map(str, pids(pid))), "--", "sleep", str(seconds)],
                             capture_output=True, text=True).stderr
        return int(out.strip().splitlines()[-1].split(",")[0])

    r2, calls = under_load(px, count_syscalls)
    # The syscalls were counted over `seconds` of a longer run: scale by its rate.
    per_req = calls / (r2["rps"] * seconds)
    return {"rps": r["rps"], "user_us": user, "kernel_us": kernel, "syscalls": per_req}


def flame(px, out, seconds):
    def record(pid):
        subprocess.run(["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,16384",
                        "-o", out / "perf.data", "-p", str(pid), "--", "sleep", str(seconds)],
                       capture_output=True)
    under_load(px, record)
    script = subprocess.run(["perf", "script", "-i", out / "perf.data"], capture_output=True,
                            text=True).stdout
    folded = subprocess.run(["inferno-collapse-perf"], input=script, capture_output=True,
                            text=True).stdout
    (out / "folded.txt").write_text(folded)
    with open(out / "flamegraph.svg", "w") as f:
        # Frames narrower than 2 px left out: the file stays small enough to keep in git.
        subprocess.run(["inferno-flamegraph", "--minwidth", "2", "--title",
                        "mcp-edge, HTTP/1.1 keep-alive under wrk"],
                       input=folded, stdout=f, text=True)
    (out / "perf.data").unlink()
    selfs, total = collections.Counter(), 0
    groups = collections.Counter()
    for line in folded.splitlines():
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        frames = stack.split(";")
        selfs[frames[-1]] += n
        total += n
        groups[classify(frames)] += n
    top = [(f, n * 100 / total) for f, n in selfs.most_common(25)]
    return top, {g: n * 100 / total for g, n in groups.most_common()}, total


# Where a sample's time goes, by the innermost frame that names an owner.
OWNERS = [
    ("kernel: network and syscalls", lambda f: f.startswith(("[unknown]", "entry_SYSCALL", "__x64_sys", "do_syscall", "tcp_", "__sys_", "ksys_", "sock_", "__libc_send", "__libc_recv", "__GI___")) or f.endswith("_[k]")),
    ("rustls (TLS records)", lambda f: f.startswith(("rustls::", "<rustls::")) or "ring::" in f or f.startswith(("ring_core", "aes_", "gcm_", "ecp_nistz", "ChaCha20"))),
    ("allocator", lambda f: "mi_" in f or "mimalloc" in f or f.startswith(("malloc", "free", "__libc_malloc", "cfree", "realloc"))),
    ("metrics (prometheus)", lambda f: "prometheus::" in f),
    ("mcp-edge request path", lambda f: "mcp_edge::" in f),
    ("pingora HTTP/1 and proxy", lambda f: "pingora_core::protocols::http" in f or "pingora_proxy::" in f),
    ("tokio runtime and I/O driver", lambda f: "tokio::" in f or "mio::" in f),
    ("http/httparse/bytes", lambda f: f.startswith(("httparse::", "http::", "<http::", "bytes::", "<bytes::"))),
]


def classify(frames):
    for f in reversed(frames):
        for name, test in OWNERS:
            if test(f):
                return name
    return "other"


def allocations(pki, upstream, out, log):
    binary = bench.REL / "mcp-edge-sysalloc"
    if not binary.exists():
        return {"error": f"{binary} missing (cargo build --release -p mcp-edge --features system-alloc)"}

    px = traced_edge(pki, upstream, out).start()
    r = bench.wrk(px.url("/mcp"), 64)
    stop_traced(px)
    files = sorted(out.glob("heaptrack*.zst")) or sorted(out.glob("heaptrack*.gz"))
    if not files:
        return {"error": "heaptrack wrote nothing"}
    text = subprocess.run(["heaptrack_print", "-f", files[-1], "-n", "25", "-p", "0", "-a", "1",
                           "-T", "0", "-l", "0", "-s", "3", "-F", out / "alloc-stacks.txt",
                           "--flamegraph-cost-type", "allocations"],
                          capture_output=True, text=True).stdout
    with open(out / "alloc-flamegraph.svg", "w") as f:
        subprocess.run(["inferno-flamegraph", "--minwidth", "2", "--countname", "allocations", "--title",
                        "mcp-edge allocations by call site, HTTP/1.1 under wrk"],
                       stdin=open(out / "alloc-stacks.txt"), stdout=f)
    (out / "heaptrack.txt").write_text(text)
    calls = int(re.search(r"calls to allocation functions: (\d+)", text).group(1))
    m = re.search(r"bytes allocated in total \(ignoring deallocations\): ([\d.]+)([KMG]?B)", text)
    scale = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    total_bytes = float(m.group(1)) * scale[m.group(2)] if m else None
    # Requests through the proxy: wrk's, plus the one `start` sends.
    n = r["requests"] + 1
    top, _ = sites(out / "alloc-stacks.txt", n, 1)
    return {"requests": n, "allocs_per_req": calls / n,
            "bytes_per_req": total_bytes / n if total_bytes else None,
            "rps_under_heaptrack": r["rps"], "sites": top}


def traced_edge(pki, upstream, out):
    """mcp-edge built with the system allocator, run under heaptrack."""
    binary = bench.REL / "mcp-edge-sysalloc"

    class Traced(bench.McpEdge):
        def command(self):
            cmd = super().command()
            i = cmd.index(bench.EDGE_BIN)
            cmd[i:i + 1] = ["heaptrack", "-o", out / "heaptrack", binary]
            return cmd

    return Traced(pki, upstream)


def stop_traced(px):
    """heaptrack runs the proxy as its child: stop the proxy itself, then let heaptrack finish."""
    for p in pids(px.proc.pid):
        try:
            if Path(f"/proc/{p}/comm").read_text().startswith("mcp-edge"):
                os.kill(p, signal.SIGTERM)
        except OSError:
            pass
    px.proc.wait(60)


def sites(stacks_file, per, unit_div, top=25):
    """The innermost frames outside std/core/alloc of folded heaptrack stacks, by cost."""
    demangled = subprocess.run(["rustfilt"], stdin=open(stacks_file), capture_output=True,
                               text=True).stdout
    skip = re.compile(r"\((raw_vec|vec|alloc|boxed|string|slice|mod|map|bytes_mut|bytes|rc|sync|arc|"
                      r"spec_from_iter_nested|spec_from_iter|spec_extend|iterator|function|option|"
                      r"result|collect|clone|vec_deque|spec_from_elem|maybe_uninit)\.rs\)|^0x|\?\?")
    c, total = collections.Counter(), 0
    for line in demangled.splitlines():
        stack, n = line.rstrip().rsplit(" ", 1)
        n = int(n)
        total += n
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        site = next((f for f in reversed(frames) if "(" in f and not skip.search(f)), "?")
        c[site] += n
    return [(site, n / per / unit_div) for site, n in c.most_common(top)], total / per / unit_div


def stream_memory(pki, upstream, out, log, n=1000):
    """What an idle SSE stream keeps allocated, by call site: heaptrack's peak while `n` are
    held (the system allocator: what mimalloc adds on top is in the RSS figure)."""
    out = out / "streams"
    out.mkdir()
    px = traced_edge(pki, upstream, out)
    try:
        px.start()
        held = bench.memory(px, n)
    finally:
        stop_traced(px)
    time.sleep(1)
    data = (sorted(out.glob("heaptrack*.zst")) or sorted(out.glob("heaptrack*.gz")))[-1]
    subprocess.run(["heaptrack_print", "-f", data, "-p", "0", "-a", "0", "-T", "0", "-l", "0",
                    "-F", out / "peak-stacks.txt", "--flamegraph-cost-type", "peak"],
                   capture_output=True)
    top, total = sites(out / "peak-stacks.txt", held["streams"], 1024)
    return {"rss_kb_per_stream_sysalloc": held["kb_per_stream"], "heap_kb_per_stream": total,
            "sites": top}


def measure(results, work, pki, upstream, log):
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = bench.ROOT / "bench" / "results" / f"cost-{stamp}"
    out.mkdir(parents=True)
    seconds = max(3, bench.SECONDS - 2)
    rows = {}
    for cls in (bench.McpEdge, bench.Nginx):
        rows[cls.name] = bench.on_fresh(cls, pki, upstream, lambda px: cpu_and_syscalls(px, seconds))
        log(f"  cost {cls.name}: {rows[cls.name]}")
    top, groups, samples = bench.on_fresh(bench.McpEdge, pki, upstream, lambda px: flame(px, out, seconds))
    alloc = allocations(pki, upstream, out, log)
    log(f"  cost allocations: {alloc}")
    streams = stream_memory(pki, upstream, out, log)
    log(f"  cost streams: {streams}")
    lines = [f"Per-request cost model, {stamp}, HTTP/1.1 keep-alive (wrk -c64), proxy on one core.", "",
             "| | requests/s | user µs/req | kernel µs/req | syscalls/req |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | |")
            continue
        lines.append(f"| {name} | {r['rps']:,.0f} | {r['user_us']:.1f} | {r['kernel_us']:.1f} | {r['syscalls']:.2f} |")
    lines += ["", "mcp-edge flame graph (perf at 499 Hz, DWARF stacks; flamegraph.svg): time by owner "
              "(innermost frame that names one):", ""]
    lines += [f"- {g}: {p:.1f} %" for g, p in groups.items()]
    lines += ["", "Functions with the most self time:", ""]
    lines += [f"- {p:.1f} % `{f[:140]}`" for f, p in top]
    lines += ["", "Allocations (system allocator build under heaptrack): "
              f"{alloc.get('allocs_per_req', 0):.1f} per request, by call site (innermost frame "
              "outside std):", ""]
    lines += [f"- {k:.1f} `{site[:150]}`" for site, k in alloc.get("sites", [])]
    lines += [""]
    lines += [f"Idle SSE stream (1,000 held, system allocator, heaptrack peak): RSS "
              f"{streams['rss_kb_per_stream_sysalloc']:.1f} KB per stream, heap "
              f"{streams['heap_kb_per_stream']:.1f} KB per stream, by call site:", ""]
    lines += [f"- {kb:.2f} KB `{site[:150]}`" for site, kb in streams["sites"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    results["cost"] = {"rows": rows, "groups": groups, "alloc": alloc, "dir": str(out)}
    log(f"cost model written to {out}/report.md")

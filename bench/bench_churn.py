"""Complete MCP sessions under churn through each proxy, with the official MCP Python SDK, on
both transports, to mcp-docs: initialize, list tools, call a tool. Failures are counted."""

import json
import subprocess
from pathlib import Path

import run as bench


def measure(results, work, pki, log, n, proxies):
    docs = bench.free_port()
    bench.spawn([bench.REL / "mcp-docs", "--listen", f"127.0.0.1:{docs}", "--docs",
                 bench.ROOT / "docs", "--docs", bench.ROOT / "README.md", "--allowed-hosts", "*"],
                bench.LOAD_CPU, "mcp-docs")
    bench.wait_port(docs)
    python = bench.ROOT / ".venv" / "bin" / "python"
    for cls in proxies:
        px = cls(pki, docs).start()
        try:
            for transport, path in (("streamable", "/mcp"), ("sse", "/sse")):
                out = subprocess.run(
                    ["taskset", "-c", bench.LOAD_CPU, python, Path(__file__).parent / "churn.py",
                     px.url(path), transport, str(n), str(pki / "ca.pem")],
                    capture_output=True, text=True, timeout=900)
                try:
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                except (IndexError, json.JSONDecodeError):
                    r = {"error": (out.stderr or out.stdout)[-300:]}
                results.setdefault(cls.name, {})[f"churn_{transport}"] = [r]
                log(f"  churn {cls.name} {transport}: {r}")
        finally:
            px.stop()

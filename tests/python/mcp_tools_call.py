"""Calls the tools of tests/python/tool_server.py through a URL with the official MCP Python SDK:
lists the tools, then fast x3, slow(0.3 s) x1, fail x1, a tool that does not exist x1, then extra tools named
--extra-tools (each called with no arguments, whatever the answer).

usage: mcp_tools_call.py URL {streamable,sse} [--extra-tools N] [--fresh-connections]
(--fresh-connections: no keep-alive, a new connection per request, so that an L4 balancer in
front of several proxies spreads the session's requests over them)
Prints {"fast": ..., "slow": ..., "fail_is_error": ..., "unknown": ...} or {"error": ...}.
"""

import argparse
import json

from mcp.shared.exceptions import MCPError
from sdk_session import client_factory, run, session


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def calls(s, extra):
    out = {}
    await s.initialize()
    # As real clients do: the list is what makes a tool's name a metric label at the edge.
    out["listed"] = sorted(t.name for t in (await s.list_tools()).tools)
    for i in range(3):
        out["fast"] = text(await s.call_tool("fast", {"text": f"hello {i}"}))
    out["slow"] = text(await s.call_tool("slow", {"seconds": 0.3}))
    out["fail_is_error"] = (await s.call_tool("fail", {})).is_error
    try:
        r = await s.call_tool("no_such_tool", {})
        out["unknown"] = {"is_error": r.is_error}
    except MCPError as e:
        out["unknown"] = {"rpc_error": e.error.code}
    for i in range(extra):
        try:
            await s.call_tool(f"invented_{i}", {})
        except MCPError:
            pass
    return out


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("transport", choices=["streamable", "sse"])
    p.add_argument("--extra-tools", type=int, default=0)
    p.add_argument("--fresh-connections", action="store_true")
    a = p.parse_args()
    factory = client_factory(default_timeout=30, keepalive=not a.fresh_connections)
    async with session(a.url, a.transport, factory) as s:
        out = await calls(s, a.extra_tools)
    print(json.dumps(out))


if __name__ == "__main__":
    run(main)

"""Runs MCP steps through a URL with the official MCP Python SDK, as one caller (a bearer token or
an API key in a header), and reports what each step got: the policy tests' client.

usage: mcp_policy_check.py URL {streamable,sse} STEPS_JSON [--header NAME:VALUE]
STEPS_JSON: a list of ["tools"] | ["prompts"] | ["resources"] (list names, every page) |
["call", TOOL, ARGS] | ["prompt", NAME, ARGS] | ["read", URI].
Prints a list with, per step: {"ok": names or text} or {"rpc": code, "message": ...}.
"""

import argparse
import json

from mcp import types
from mcp.shared.exceptions import MCPError
from sdk_session import client_factory, run, session


def text(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def listing(fetch, field, key):
    names, cursor = [], None
    while True:
        page = await fetch(types.PaginatedRequestParams(cursor=cursor) if cursor else None)
        names += [getattr(item, key) for item in getattr(page, field)]
        cursor = page.next_cursor
        if not cursor:
            return names


async def step(s, st):
    kind = st[0]
    if kind == "tools":
        return await listing(lambda p: s.list_tools(params=p), "tools", "name")
    if kind == "prompts":
        return await listing(lambda p: s.list_prompts(params=p), "prompts", "name")
    if kind == "resources":
        return [str(u) for u in await listing(lambda p: s.list_resources(params=p), "resources", "uri")]
    if kind == "call":
        r = await s.call_tool(st[1], st[2])
        return {"is_error": True, "text": text(r)} if r.is_error else text(r)
    if kind == "prompt":
        r = await s.get_prompt(st[1], st[2])
        return "".join(getattr(m.content, "text", "") for m in r.messages)
    if kind == "read":
        r = await s.read_resource(st[1])
        return "".join(getattr(c, "text", "") for c in r.contents)
    raise ValueError(kind)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("transport", choices=["streamable", "sse"])
    p.add_argument("steps")
    p.add_argument("--header", action="append", default=[])
    a = p.parse_args()
    extra = dict(h.split(":", 1) for h in a.header)
    factory = client_factory(verify=False)

    def with_headers(headers=None, timeout=None, auth=None):
        return factory(headers={**(headers or {}), **extra}, timeout=timeout, auth=auth)

    out = []
    async with session(a.url, a.transport, with_headers) as s:
        await s.initialize()
        for st in json.loads(a.steps):
            try:
                out.append({"ok": await step(s, st)})
            except MCPError as e:
                out.append({"rpc": e.error.code, "message": e.error.message})
    print(json.dumps(out))


run(main)

"""N complete MCP sessions (initialize, list tools, call search_docs), 8 at a time, with the
official MCP Python SDK. Prints {"ok": N, "failed": N, "errors": [...]}.

usage: churn.py URL {streamable,sse} N CA.pem
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


async def one(url, transport, verify):
    async def checks(read, write):
        async with ClientSession(read, write) as s:
            await s.initialize()
            tools = await s.list_tools()
            assert any(t.name == "search_docs" for t in tools.tools)
            r = await s.call_tool("search_docs", {"query": "certificate renewal", "limit": 3})
            assert not r.is_error

    if transport == "streamable":
        client = httpx2.AsyncClient(verify=verify, timeout=httpx2.Timeout(30, read=60))
        async with client, streamable_http_client(url, http_client=client) as st:
            await checks(st[0], st[1])
    else:
        def factory(headers=None, timeout=None, auth=None):
            return httpx2.AsyncClient(verify=verify, headers=headers, auth=auth,
                                      timeout=timeout or httpx2.Timeout(30, read=60))
        async with sse_client(url, httpx_client_factory=factory) as st:
            await checks(st[0], st[1])


async def main():
    url, transport, n, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    verify = ssl.create_default_context(cafile=ca)
    sem = asyncio.Semaphore(8)
    ok, errors = 0, []

    async def guarded():
        nonlocal ok
        async with sem:
            try:
                await asyncio.wait_for(one(url, transport, verify), 60)
                ok += 1
            except BaseException as e:  # every failure counts, whatever its kind
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                errors.append(repr(e)[:200])

    await asyncio.gather(*(guarded() for _ in range(n)))
    print(json.dumps({"ok": ok, "failed": len(errors), "errors": errors[:5]}))


asyncio.run(main())

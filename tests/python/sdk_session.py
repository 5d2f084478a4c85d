"""What the MCP client scripts of the tests share: one official-SDK session over either
transport, and reporting (never hiding) what the SDK raised, as JSON with exit status 1."""

import asyncio
import contextlib
import json
import sys

import httpx2
from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


def client_factory(verify=True, auth=None, event_hooks=None,
                   default_timeout=httpx2.Timeout(30, read=300), keepalive=True):
    """An httpx client factory in the shape the SDK's SSE transport calls (it passes its own
    timeout); the Streamable HTTP session calls it with no arguments. Without `keepalive`
    every request opens a new connection."""
    limits = httpx2.Limits() if keepalive else httpx2.Limits(max_keepalive_connections=0)

    def factory(headers=None, timeout=None, auth=auth):
        return httpx2.AsyncClient(verify=verify, headers=headers, auth=auth,
                                  timeout=timeout or default_timeout,
                                  event_hooks=event_hooks or {}, limits=limits)

    return factory


@contextlib.asynccontextmanager
async def session(url, transport, factory, auth=None):
    """An initialized-to-be `ClientSession` on `url` over `transport` (`streamable` or `sse`)."""
    if transport == "streamable":
        async with factory() as c, streamable_http_client(url, http_client=c) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                yield s
    else:
        async with sse_client(url, httpx_client_factory=factory, auth=auth) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                yield s


def run(main):
    """Runs `main()`; what it raised is printed as {"error": ...} and the exit status is 1."""
    try:
        asyncio.run(main())
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        print(json.dumps({"error": repr(e)}))
        sys.exit(1)

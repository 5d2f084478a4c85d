"""An MCP server for the MCP-awareness tests (official MCP Python SDK, MCPServer): a fast tool,
a slow one and a failing one, over Streamable HTTP (`/mcp`, SSE answers, or JSON answers with
--json) and the legacy SSE transport (`/sse` + `/messages/`), one port.

usage: tool_server.py --port P [--json]
"""

import argparse
import asyncio
import contextlib

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.routing import Mount

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--json", action="store_true")
a = p.parse_args()

server = MCPServer("tool-server")


@server.tool()
def fast(text: str) -> str:
    """Echoes its argument."""
    return text


@server.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`."""
    await asyncio.sleep(seconds)
    return "done"


@server.tool()
def fail() -> str:
    """Always fails."""
    raise RuntimeError("this tool always fails")


streamable = server.streamable_http_app(json_response=a.json)
legacy = server.sse_app()


@contextlib.asynccontextmanager
async def lifespan(app):
    async with streamable.router.lifespan_context(app):
        yield


app = Starlette(routes=[Mount("/legacy", app=legacy), Mount("/", app=streamable)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")

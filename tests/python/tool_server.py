"""An MCP server for the MCP-awareness and policy tests (official MCP Python SDK, MCPServer): a
fast tool, a slow one and a failing one, a query and a delete (each call of these two logged to
stderr, so a test can see what reached the server), a prompt and a resource, over Streamable HTTP (`/mcp`, SSE answers, or JSON answers with
--json) and the legacy SSE transport (`/sse` + `/messages/`), one port.

usage: tool_server.py --port P [--json]
"""

import argparse
import asyncio
import contextlib
import sys

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


@server.tool()
def query(db: str, sql: str) -> str:
    """Runs `sql` against `db` (pretends to)."""
    print(f"CALLED query db={db!r}", file=sys.stderr, flush=True)
    return f"{db}: {sql}"


@server.tool()
def delete_item(path: str, force: bool = False) -> str:
    """Deletes `path` (pretends to), even if in use with `force`."""
    print(f"CALLED delete_item path={path!r} force={force!r}", file=sys.stderr, flush=True)
    return f"deleted {path}"


@server.prompt()
def summary(topic: str) -> str:
    """A prompt about `topic`."""
    return f"Summarise {topic}."


@server.resource("docs://public/readme")
def readme() -> str:
    """A public document."""
    return "readme"


@server.resource("docs://private/salaries")
def salaries() -> str:
    """A private document."""
    return "salaries"


streamable = server.streamable_http_app(json_response=a.json)
legacy = server.sse_app()


@contextlib.asynccontextmanager
async def lifespan(app):
    async with streamable.router.lifespan_context(app):
        yield


app = Starlette(routes=[Mount("/legacy", app=legacy), Mount("/", app=streamable)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")

"""One complete MCP session with the official MCP Python SDK, printed as JSON for the Rust tests.

usage: mcp_check.py URL {streamable,sse} --query Q --doc PATH [--ca CA.pem]

Initializes, lists tools, calls search_docs(Q), get_doc(PATH), get_doc on an unknown page and
on a path outside the corpus, lists and reads a resource. Any failure of the SDK itself is
reported as {"error": ...} with exit status 1.
"""

import argparse
import json
import ssl

from mcp.shared.exceptions import MCPError
from sdk_session import client_factory, run, session


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def session_checks(session, query, doc):
    out = {}
    init = await session.initialize()
    out["server_name"] = init.server_info.name
    out["instructions"] = init.instructions or ""
    tools = await session.list_tools()
    out["tools"] = sorted(t.name for t in tools.tools)
    out["search_schema"] = next(t.input_schema for t in tools.tools if t.name == "search_docs")

    found = await session.call_tool("search_docs", {"query": query, "limit": 5})
    structured = found.structured_content or json.loads(text_of(found))
    out["hits"] = [h["path"] for h in structured["hits"]]
    out["top_snippet"] = structured["hits"][0]["snippet"] if structured["hits"] else ""

    page = await session.call_tool("get_doc", {"path": doc})
    out["doc_is_error"] = page.is_error
    out["doc_text"] = text_of(page)[:400]

    missing = await session.call_tool("get_doc", {"path": "no/such/page.md"})
    out["missing_is_error"] = missing.is_error
    out["missing_text"] = text_of(missing)

    try:
        outside = await session.call_tool("get_doc", {"path": "../../etc/passwd"})
        out["traversal"] = {"is_error": outside.is_error, "text": text_of(outside)}
    except MCPError as e:
        out["traversal"] = {"rpc_error": str(e)}

    try:
        bad = await session.call_tool("search_docs", {"query": 42})
        out["bad_args"] = {"is_error": bad.is_error, "text": text_of(bad)}
    except MCPError as e:
        out["bad_args"] = {"rpc_error": str(e)}

    resources = await session.list_resources()
    uris = [r.uri for r in resources.resources]
    out["resources"] = len(uris)
    target = next((u for u in uris if str(u).endswith(doc)), None)
    if target is not None:
        read = await session.read_resource(target)
        out["resource_text"] = read.contents[0].text[:200]
    return out


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("transport", choices=["streamable", "sse"])
    p.add_argument("--query", required=True)
    p.add_argument("--doc", required=True)
    p.add_argument("--ca")
    a = p.parse_args()
    verify = ssl.create_default_context(cafile=a.ca) if a.ca else True
    async with session(a.url, a.transport, client_factory(verify=verify)) as s:
        out = await session_checks(s, a.query, a.doc)
    print(json.dumps(out))


if __name__ == "__main__":
    run(main)

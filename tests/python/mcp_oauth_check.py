"""An MCP session through an OAuth-protected edge with the official MCP Python SDK's OAuth
clients, told nothing but the MCP URL (and, for machine clients, their credentials).

usage: mcp_oauth_check.py URL {streamable,sse} {client_credentials,authorization_code} --ca CA.pem
       [--client-id ID --client-secret SECRET] [--scope S]

client_credentials: ClientCredentialsOAuthProvider. authorization_code: OAuthClientProvider,
registering itself (RFC 7591) and following the authorization redirect without a browser (the
test authorization server approves at once; the redirect is read, not followed).
Prints {"tools": [...], "search_hits": N, "flow": [...requests the SDK made...]} or {"error": ...}.
"""

import argparse
import json
import ssl
from urllib.parse import parse_qs, urlparse

import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.shared.auth import OAuthClientMetadata
from sdk_session import client_factory, run, session


class Memory:
    def __init__(self):
        self.tokens, self.client = None, None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info):
        self.client = info


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("transport", choices=["streamable", "sse"])
    p.add_argument("flow", choices=["client_credentials", "authorization_code"])
    p.add_argument("--ca", required=True)
    p.add_argument("--client-id")
    p.add_argument("--client-secret")
    p.add_argument("--scope")
    a = p.parse_args()
    verify = ssl.create_default_context(cafile=a.ca)
    seen = []

    async def log_request(req):
        seen.append(f"{req.method} {req.url.copy_with(query=None)}")

    if a.flow == "client_credentials":
        auth = ClientCredentialsOAuthProvider(a.url, Memory(), a.client_id, a.client_secret, scope=a.scope)
    else:
        redirect = {}

        async def redirect_handler(url):
            # The user's browser: the authorization server answers with a redirect to us.
            async with httpx2.AsyncClient(verify=verify) as c:
                r = await c.get(url, follow_redirects=False)
            q = parse_qs(urlparse(r.headers["location"]).query)
            redirect["code"], redirect["state"] = q["code"][0], q.get("state", [None])[0]

        async def callback_handler():
            return AuthorizationCodeResult(code=redirect["code"], state=redirect["state"])

        meta = OAuthClientMetadata(
            redirect_uris=["http://127.0.0.1:9/callback"], grant_types=["authorization_code"],
            response_types=["code"], token_endpoint_auth_method="none", scope=a.scope,
            client_name="mcp-edge test")
        auth = OAuthClientProvider(a.url, meta, Memory(), redirect_handler, callback_handler)

    factory = client_factory(verify=verify, auth=auth, event_hooks={"request": [log_request]})

    async with session(a.url, a.transport, factory, auth=auth) as s:
        await s.initialize()
        tools = await s.list_tools()
        found = await s.call_tool("search_docs", {"query": "tls", "limit": 3})
        hits = (found.structured_content or {}).get("hits", [])
        out = {"tools": sorted(t.name for t in tools.tools), "search_hits": len(hits)}
    out["flow"] = seen
    print(json.dumps(out))


if __name__ == "__main__":
    run(main)

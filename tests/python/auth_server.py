"""An OAuth 2.1 authorization server for the tests, built from Authlib's server components
(PyPI `authlib`, on Flask); nothing here issues or checks a token by hand.

usage: auth_server.py --port P --cert CERT --key KEY --signing-key EC.pem --kid K
                      [--signing-key2 EC2.pem --kid2 K2]

Serves over HTTPS (issuer https://127.0.0.1:P):
- RFC 8414 metadata (/.well-known/oauth-authorization-server), JWKS (/jwks)
- /token: client_credentials and authorization_code + PKCE (S256 required), RFC 9068 JWT
  access tokens signed with ES256 (audience: the RFC 8707 `resource` parameter); the client
  `opaque` gets opaque tokens instead
- /authorize: approves the fixed user `alice` at once (no consent page)
- /register: RFC 7591 dynamic client registration
- /introspect (RFC 7662, for the client `edge`), /revoke (RFC 7009)
- POST /test/rotate: signs with the second key from now on, and publishes both
Pre-registered clients: machine/machine-secret (client_credentials, scope mcp:tools mcp:admin),
narrow/narrow-secret (client_credentials, scope mcp:read), opaque/opaque-secret, edge/edge-secret.
"""

import argparse
import hmac
import secrets
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7591 import ClientRegistrationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify, request
from joserfc.jwk import ECKey, KeySet

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--cert", required=True)
p.add_argument("--key", required=True)
p.add_argument("--signing-key", required=True)
p.add_argument("--kid", required=True)
p.add_argument("--signing-key2")
p.add_argument("--kid2")
a = p.parse_args()

ISSUER = f"https://127.0.0.1:{a.port}"


def load_key(path, kid):
    with open(path, "rb") as f:
        return ECKey.import_key(f.read(), {"kid": kid, "use": "sig", "alg": "ES256"})


KEYS = [load_key(a.signing_key, a.kid)]
if a.signing_key2:
    NEXT_KEY = load_key(a.signing_key2, a.kid2)
else:
    NEXT_KEY = None


class Client(ClientMixin):
    def __init__(self, client_id, secret, grant_types, scope, auth_method="client_secret_basic",
                 redirect_uris=(), response_types=()):
        self.client_id, self.secret, self.grant_types = client_id, secret, list(grant_types)
        self.scope, self.auth_method = scope, auth_method
        self.redirect_uris, self.response_types = list(redirect_uris), list(response_types)

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        allowed = set(self.scope.split())
        if not scope:
            return self.scope
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        return self.secret is not None and hmac.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method, endpoint):
        if endpoint == "token":
            return method == self.auth_method
        return method in ("client_secret_basic", "client_secret_post") and self.secret is not None

    def check_response_type(self, response_type):
        return response_type in self.response_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


CLIENTS = {
    "machine": Client("machine", "machine-secret", ["client_credentials"], "mcp:tools mcp:admin"),
    "narrow": Client("narrow", "narrow-secret", ["client_credentials"], "mcp:read"),
    "opaque": Client("opaque", "opaque-secret", ["client_credentials"], "mcp:tools"),
    "edge": Client("edge", "edge-secret", [], ""),
}
TOKENS = {}  # access_token -> claims, for introspection and revocation
CODES = {}


class User:
    def get_user_id(self):
        return "alice"


ALICE = User()


class Token:
    def __init__(self, access_token, claims):
        self.access_token, self.claims, self.revoked = access_token, claims, False

    def check_client(self, client):
        return self.claims["client_id"] == client.get_client_id()

    def is_expired(self):
        return self.claims["exp"] <= time.time()

    def is_revoked(self):
        return self.revoked


class AuthCode:
    def __init__(self, code, client_id, redirect_uri, scope, challenge, method, resource):
        self.code, self.client_id, self.redirect_uri, self.scope = code, client_id, redirect_uri, scope
        self.code_challenge, self.code_challenge_method = challenge, method
        self.resource, self.at = resource, time.time()

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_code_challenge(self):
        return self.code_challenge

    def get_code_challenge_method(self):
        return self.code_challenge_method

    def is_expired(self):
        return time.time() - self.at > 300


def resource_of(client):
    """The RFC 8707 resource the client asked for: the audience of its token."""
    return request.values.get("resource") or client.get_client_id()


class Generator(JWTBearerTokenGenerator):
    def get_jwks(self):
        return KeySet([KEYS[-1]]).as_dict(private=True)

    def get_audiences(self, client, user, scope):
        return resource_of(client)

    def access_token_generator(self, client, grant_type, user, scope):
        if client.get_client_id() == "opaque":
            return secrets.token_urlsafe(32)
        return super().access_token_generator(client, grant_type, user, scope)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code, req):
        CODES[code] = AuthCode(code, req.client.get_client_id(), req.payload.redirect_uri,
                               req.payload.scope, req.payload.data.get("code_challenge"),
                               req.payload.data.get("code_challenge_method"),
                               req.payload.data.get("resource"))

    def query_authorization_code(self, code, client):
        c = CODES.get(code)
        if c and c.client_id == client.get_client_id() and not c.is_expired():
            return c

    def delete_authorization_code(self, authorization_code):
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return ALICE


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string, token_type_hint):
        return TOKENS.get(token_string)

    def introspect_token(self, token):
        # Called for active tokens only: Authlib answers {"active": false} for the others.
        return {"active": True, "iss": ISSUER, **token.claims}

    def check_permission(self, token, client, req):
        return client.get_client_id() == "edge"


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string, token_type_hint):
        return TOKENS.get(token_string)

    def revoke_token(self, token, req):
        token.revoked = True


class Registration(ClientRegistrationEndpoint):
    def authenticate_token(self, req):
        return True  # open registration, as MCP clients expect

    def save_client(self, client_info, client_metadata, req):
        method = client_metadata.get("token_endpoint_auth_method", "client_secret_basic")
        client = Client(client_info["client_id"],
                        None if method == "none" else client_info["client_secret"],
                        client_metadata.get("grant_types", ["authorization_code"]),
                        client_metadata.get("scope", "mcp:tools"), method,
                        client_metadata.get("redirect_uris", []),
                        client_metadata.get("response_types", ["code"]))
        CLIENTS[client.client_id] = client
        return client

    def get_server_metadata(self):
        return metadata()


def save_token(token, req):
    client = req.client
    user = req.user
    TOKENS[token["access_token"]] = Token(token["access_token"], {
        "client_id": client.get_client_id(),
        "sub": user.get_user_id() if user else client.get_client_id(),
        "scope": token.get("scope", ""),
        "aud": resource_of(client),
        "exp": int(time.time()) + int(token.get("expires_in", 3600)),
        "token_type": "Bearer",
    })


app = Flask(__name__)
server = AuthorizationServer(app, query_client=CLIENTS.get, save_token=save_token)
server.register_token_generator("default", Generator(issuer=ISSUER, alg="ES256"))
server.register_grant(AuthorizationCodeGrant, [CodeChallenge(required=True)])
server.register_grant(ClientCredentialsGrant)
server.register_endpoint(Introspection)
server.register_endpoint(Revocation)
server.register_endpoint(Registration)


def metadata():
    return {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "registration_endpoint": f"{ISSUER}/register",
        "introspection_endpoint": f"{ISSUER}/introspect",
        "revocation_endpoint": f"{ISSUER}/revoke",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": ["mcp:tools", "mcp:admin", "mcp:read"],
    }


# Test controls: which documents fail (500), and how often each was asked for.
FAILING = set()
COUNTS = {"metadata": 0, "jwks": 0}


@app.get("/.well-known/oauth-authorization-server")
def well_known():
    COUNTS["metadata"] += 1
    if "metadata" in FAILING:
        return jsonify({"error": "down"}), 500
    return jsonify(metadata())


@app.get("/jwks")
def jwks():
    COUNTS["jwks"] += 1
    if "jwks" in FAILING:
        return jsonify({"error": "down"}), 500
    return jsonify(KeySet(KEYS).as_dict(private=False))


@app.post("/test/fail")
def fail():
    what, on = request.form["what"], request.form["on"] == "1"
    (FAILING.add if on else FAILING.discard)(what)
    return jsonify({"failing": sorted(FAILING)})


@app.get("/test/counts")
def counts():
    return jsonify(COUNTS)


@app.route("/authorize", methods=["GET"])
def authorize():
    return server.create_authorization_response(grant_user=ALICE)


@app.post("/token")
def token():
    return server.create_token_response()


@app.post("/introspect")
def introspect():
    return server.create_endpoint_response(Introspection.ENDPOINT_NAME)


@app.post("/revoke")
def revoke():
    return server.create_endpoint_response(Revocation.ENDPOINT_NAME)


@app.post("/register")
def register():
    return server.create_endpoint_response(Registration.ENDPOINT_NAME)


@app.post("/test/rotate")
def rotate():
    KEYS.append(NEXT_KEY)
    return jsonify({"kids": [k.kid for k in KEYS]})


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=a.port, ssl_context=(a.cert, a.key), threaded=True)

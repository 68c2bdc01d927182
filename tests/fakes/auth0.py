"""A local Auth0 tenant: the token endpoint and JWKS, over TLS, with RS256 id_tokens
signed by a key made for the test."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"
# Pass as a claim's value to leave that claim out of the token.
OMIT = object()


def new_signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeAuth0:
    server: HTTPServer
    signing_key: object = field(default_factory=new_signing_key)
    # A fresh key id per tenant: social-auth caches JWKS per URL and refreshes on a new kid.
    kid: str = field(default_factory=lambda: f"test-key-{uuid.uuid4().hex[:8]}")
    next_id_token: str | None = None
    token_requests: list[dict] = field(default_factory=list)

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def issuer(self) -> str:
        return f"https://{self.domain}/"

    def install(self) -> None:
        self.server.expect_request("/.well-known/jwks.json").respond_with_handler(self._jwks)
        self.server.expect_request("/oauth/token", method="POST").respond_with_handler(self._token)

    def _jwks(self, request: Request) -> Response:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.signing_key.public_key()))
        public.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return Response(json.dumps({"keys": [public]}), content_type="application/json")

    def _token(self, request: Request) -> Response:
        self.token_requests.append(dict(request.form))
        body = {
            "access_token": "access-token",
            "id_token": self.next_id_token,
            "token_type": "Bearer",
            "expires_in": 86400,
            "scope": "openid profile email",
        }
        return Response(json.dumps(body), content_type="application/json")

    def id_token(
        self,
        *,
        sub: str,
        email: str,
        name: str = "Test User",
        key=None,
        kid: str | None = None,
        **overrides,
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": sub,
            "email": email,
            "email_verified": True,
            "name": name,
            "nickname": email.split("@")[0],
            "iat": now,
            "exp": now + 3600,
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not OMIT}
        return jwt.encode(
            claims,
            key or self.signing_key,
            algorithm="RS256",
            headers={"kid": kid or self.kid},
        )


# Log streams: what a Custom Webhook stream (content format "JSON Array") POSTs to us.


LOG_STREAM_TOKEN = "test-log-stream-token-0123456789abcdef"


def log_event(
    event_type: str, user_id: str | None, *, log_id: str | None = None, date: str | None = None
) -> dict:
    """One tenant log entry as a stream delivers it: the log id beside the log itself. A user
    deletion ("sdu") names the deleted user in `data.user_id` (and in `data.details`)."""
    log_id = log_id or f"9002026{uuid.uuid4().int % 10**50:050d}"
    data = {
        "date": date or time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "type": event_type,
        "description": "User deleted" if event_type == "sdu" else "",
        "client_id": CLIENT_ID,
        "client_name": "Platform Console",
        "ip": "203.0.113.7",
        "user_agent": "Auth0 Dashboard",
        "details": {"request": {"method": "delete", "path": f"/api/v2/users/{user_id}"}},
        "log_id": log_id,
    }
    if user_id is not None:
        data["user_id"] = user_id
        data["details"]["user_id"] = user_id
    return {"log_id": log_id, "data": data}

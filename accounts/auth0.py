"""Auth0: the only module that knows how Auth0 is spoken to.

Login itself is social-auth-app-django's Auth0 backend (authorization code flow; the
id_token is verified against the tenant's JWKS: RS256 signature, audience = our client id,
issuer = the tenant, expiry). Its `sub` claim becomes our user's primary key.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from social_core.backends.auth0 import Auth0OAuth2


class Auth0Backend(Auth0OAuth2):
    """social-auth's Auth0 backend under our name, so settings and templates refer to ours."""

    name = "auth0"
    # Auth0 returns `state` itself and matches callback URLs exactly: no extra query string.
    REDIRECT_STATE = False


def is_configured() -> bool:
    return bool(settings.AUTH0_DOMAIN and settings.AUTH0_CLIENT_ID and settings.AUTH0_CLIENT_SECRET)


def logout_url(*, return_to: str) -> str:
    """Auth0's logout endpoint, which also ends the Auth0 session and comes back to us."""
    query = urlencode({"client_id": settings.AUTH0_CLIENT_ID, "returnTo": return_to})
    return f"https://{settings.AUTH0_DOMAIN}/v2/logout?{query}"

"""Auth0: the only module that knows how Auth0 is spoken to.

Login itself is social-auth-app-django's Auth0 backend (authorization code flow; the
id_token is verified against the tenant's JWKS: RS256 signature, audience = our client id,
issuer = the tenant, expiry). On top of that we check the authorized party (`azp`) and
refuse claims that no database column can hold (NUL characters). Its `sub` claim becomes
our user's primary key.
"""

from __future__ import annotations

from urllib.parse import urlencode

import requests
from django.conf import settings
from social_core.backends import base as social_base
from social_core.backends.auth0 import Auth0OAuth2
from social_core.exceptions import AuthResponseError

from plumbing import outbound


class Auth0Backend(Auth0OAuth2):
    """social-auth's Auth0 backend under our name, so settings and templates refer to ours."""

    name = "auth0"
    # Auth0 returns `state` itself and matches callback URLs exactly: no extra query string.
    REDIRECT_STATE = False

    def extra_data(self, user, uid, response, details, pipeline_kwargs):
        # social-auth keeps the access token (and any refresh or id token) in the social
        # link's `extra_data`, in plain text. Nothing here calls Auth0 on the user's behalf
        # after the login: none is kept.
        data = super().extra_data(user, uid, response, details, pipeline_kwargs)
        for token in ("access_token", "refresh_token", "id_token"):
            data.pop(token, None)
        return data

    def _decode_id_token(self, id_token: str, keys) -> dict:
        # social-auth has verified signature, audience, issuer and expiry when this returns.
        claims = super()._decode_id_token(id_token, keys)
        problem = id_token_problem(claims, client_id=self.setting("KEY"))
        if problem:
            raise AuthResponseError(self, problem, code="invalid_claim", stage="token_validation")
        return claims


class _GuardedRequests:
    """What social-auth's base backend calls `requests`: the real module, except that its
    one call, `requests.request`, goes through a guarded session (the address rule, no
    proxy, and the login request's one total deadline, set by the login view, instead of a
    timeout per read). A new session per call, so concurrent logins share nothing."""

    def __getattr__(self, name):  # exceptions and the rest, as requests has them
        return getattr(requests, name)

    @staticmethod
    def request(method, url, **kwargs):
        # No redirect is followed: the token exchange posts the client secret, and a 307 or
        # 308 would have requests post it again to wherever the answer points.
        kwargs["allow_redirects"] = False
        with outbound.guarded_session() as session:
            response = session.request(method, url, **kwargs)
        if response.is_redirect:
            raise requests.exceptions.TooManyRedirects(
                f"Auth0 answered {response.status_code} (a redirect), which is not followed",
                response=response,
            )
        return response


# social-auth makes every request to Auth0 (token exchange, keys) through this name.
social_base.requests = _GuardedRequests()


def id_token_problem(claims: dict, *, client_id: str) -> str | None:
    """What is wrong with verified id_token claims beyond what PyJWT checks, or None.

    OpenID Connect Core 3.1.3.7: a token for several audiences must name the party it was
    issued to (`azp`), and an `azp` must be us; otherwise another application's token
    that merely lists us could log someone in here.
    """
    audience = claims.get("aud")
    authorized_party = claims.get("azp")
    if isinstance(audience, list) and len(audience) > 1 and authorized_party is None:
        return "the token is for several audiences and does not say which one it was issued to"
    if authorized_party is not None and authorized_party != client_id:
        return "the token was issued to another application (azp)"
    if _contains_nul(claims):
        return "the token contains a NUL character"
    return None


def _contains_nul(value) -> bool:
    # PostgreSQL text and jsonb cannot hold NUL, and no honest identity contains one.
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def subject_max_length() -> int:
    """The longest `sub` we can keep: the social link's uid column (users.id is TEXT)."""
    from social_django.models import UserSocialAuth

    return UserSocialAuth._meta.get_field("uid").max_length


def is_configured() -> bool:
    return bool(settings.AUTH0_DOMAIN and settings.AUTH0_CLIENT_ID and settings.AUTH0_CLIENT_SECRET)


def logout_url(*, return_to: str) -> str:
    """Auth0's logout endpoint, which also ends the Auth0 session and comes back to us."""
    query = urlencode({"client_id": settings.AUTH0_CLIENT_ID, "returnTo": return_to})
    return f"https://{settings.AUTH0_DOMAIN}/v2/logout?{query}"

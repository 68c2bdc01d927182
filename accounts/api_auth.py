"""API-key authentication (what DRF's settings name; kept light on imports: DRF imports
it while its own views module is still loading). A key is an identity, like a login, so it
lives with the users."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from accounts.models import ApiKey

KEYWORD = "Api-Key"


class ScriptPrincipal:
    """Who a request made with an API key is: the key, not a person."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, api_key: ApiKey):
        self.api_key = api_key

    def __str__(self) -> str:
        return f"API key {self.api_key.prefix} ({self.api_key.name})"


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Api-Key <prefix>.<secret>`. Unknown, revoked or expired keys get 401."""

    def authenticate(self, request):
        header = get_authorization_header(request).decode("latin-1")
        if not header.startswith(f"{KEYWORD} "):
            return None
        key = header[len(KEYWORD) + 1 :].strip()
        prefix = key.partition(".")[0]
        api_key = ApiKey.objects.filter(prefix=prefix).first() if prefix else None
        if api_key is None or not api_key.is_valid(key):
            raise exceptions.AuthenticationFailed("Unknown API key.")
        if api_key.revoked:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        now = timezone.now()
        if api_key.last_used_at is None or now - api_key.last_used_at > dt.timedelta(minutes=1):
            ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
        return ScriptPrincipal(api_key), api_key

    def authenticate_header(self, request):
        return KEYWORD

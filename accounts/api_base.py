"""What Django REST Framework's settings name (authentication, parser, throttle,
pagination, error handler). Kept apart from the rest of the API code and light on imports:
DRF imports these while its own views module is still loading."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone
from rest_framework import exceptions, parsers
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.pagination import PageNumberPagination
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import ApiKey, User

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


class StrictJSONParser(parsers.JSONParser):
    """JSON numbers become Decimal (0.1 arrives as exactly 0.1), and text that is not
    valid Unicode (a lone UTF-16 surrogate) is a 400 before it can reach the database."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(stream.read().decode(encoding), parse_float=Decimal)
            json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
        except (ValueError, UnicodeError) as error:
            raise exceptions.ParseError(f"The body is not valid JSON text: {error}") from None
        return data


class PerKeyThrottle(SimpleRateThrottle):
    scope = "per_key"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey):
            ident = f"key:{request.auth.pk}"
        elif isinstance(request.user, User) and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class Pagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def error_handler(exc, context):
    """One error format: {"error": {"status", "code", "message", "details"}}."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    from rest_framework.views import exception_handler  # not at import: DRF loads us early

    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = response.data
    if isinstance(exc, exceptions.ValidationError):
        message, details = "The request is not valid; see details.", detail
    else:
        message = str(detail.get("detail", detail)) if isinstance(detail, dict) else str(detail)
        details = None
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        if isinstance(codes, str):
            code = codes
    response.data = {
        "error": {
            "status": response.status_code,
            "code": code,
            "message": message,
            "details": details,
        }
    }
    return response

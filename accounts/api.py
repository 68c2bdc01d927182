"""What every endpoint of the API shares: API-key authentication, scopes, throttling per
key, pagination and one error format. The endpoints live in each app's api.py."""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, parsers, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import exception_handler

from accounts.api_auth import ScriptPrincipal  # noqa: F401 - part of this module's surface
from accounts.models import ApiKey, User


class ApiKeySchema(OpenApiAuthenticationExtension):
    target_class = "accounts.api_auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`",
        }


def _is_person(user) -> bool:
    return isinstance(user, User) and user.is_authenticated


class HasScope(BasePermission):
    """An API key needs the view's scope for the method; a logged-in operator (admin)
    may use operator endpoints from the browser too. Other people may not."""

    message = "This needs the scope {scope}."

    def has_permission(self, request, view):
        if not (request.user and request.user.is_authenticated):
            return False  # DRF answers 401: who is asking comes before what they may do
        scope = view.scopes.get(request.method if request.method != "HEAD" else "GET")
        if scope is None:
            return False
        if isinstance(request.auth, ApiKey):
            if request.auth.has_scope(scope):
                return True
            raise exceptions.PermissionDenied(f"This API key lacks the scope {scope}.")
        user = request.user
        if _is_person(user) and user.is_staff:
            return True
        raise exceptions.PermissionDenied("Only operators and API keys with the scope may.")


class IsPerson(BasePermission):
    """/me endpoints: a logged-in person, about themselves. An API key is not a person."""

    def has_permission(self, request, view):
        if isinstance(request.auth, ApiKey):
            raise exceptions.PermissionDenied(
                "An API key has no /me: these endpoints are for a logged-in user."
            )
        return _is_person(request.user)


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
        elif _is_person(request.user):
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


ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorBody",
            fields={
                "status": serializers.IntegerField(),
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "details": serializers.JSONField(allow_null=True),
            },
        )
    },
)


def error_responses(*codes: int) -> dict:
    """Document the error answers an endpoint can give, in the one error format."""
    text = {
        400: "The request is not valid (details say what to fix).",
        401: "No credentials, or an unknown, revoked or expired API key.",
        403: "Authenticated, but not allowed (a missing scope, or another user's data).",
        404: "No such object.",
        405: "Method not allowed.",
        406: "Not acceptable.",
        409: "Conflicts with the current state (no room, cluster not taking users).",
        415: "Unsupported media type.",
        429: "Too many requests for this key; retry after the time given.",
    }
    return {code: OpenApiResponse(ErrorSerializer, description=text[code]) for code in codes}


COMMON_ERRORS = (400, 401, 403, 405, 406, 429)

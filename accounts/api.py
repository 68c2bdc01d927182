"""What every endpoint of the API shares: API-key authentication, scopes, throttling per
key, pagination and one error format. The endpoints live in each app's api.py."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey, User


class ApiKeySchema(OpenApiAuthenticationExtension):
    target_class = "accounts.api_base.ApiKeyAuthentication"
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

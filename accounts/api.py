"""Who may call the API: scopes for keys, people for /me. The endpoints live in each app's
api.py; authentication is in accounts/api_auth.py, the rest of what every endpoint shares
(parser, throttling, pagination, the error format) in plumbing/api.py."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.permissions import BasePermission

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

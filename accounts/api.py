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


# The one map from a scope to the Django permissions an operator's session needs for it
# (all of them), so the browser can do exactly what the admin lets that operator do.
SCOPE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    "users:read": ("accounts.view_user",),
    "clusters:read": ("clusters.view_hopsworkscluster",),
    "usage:read": ("billing.view_usagedaily",),
    "usage:write": ("billing.add_usagedaily", "billing.change_usagedaily"),
    "assignments:write": (
        "clusters.add_userhopsworksassignment",
        "clusters.change_userhopsworksassignment",
        "clusters.delete_userhopsworksassignment",
    ),
}


def _is_person(user) -> bool:
    return isinstance(user, User) and user.is_authenticated


def session_may(user, scope: str) -> bool:
    """Whether a logged-in operator holds every permission the scope maps to."""
    return _is_person(user) and user.is_staff and user.has_perms(SCOPE_PERMISSIONS[scope])


class HasScope(BasePermission):
    """An API key needs the view's scope for the method; a logged-in operator needs the
    Django permissions the scope maps to (SCOPE_PERMISSIONS). Nobody else may."""

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
        if session_may(request.user, scope):
            return True
        raise exceptions.PermissionDenied(
            f"This needs the permission(s) {', '.join(SCOPE_PERMISSIONS[scope])} "
            f"(or an API key with the scope {scope})."
        )


class IsPerson(BasePermission):
    """/me endpoints: a logged-in person, about themselves. An API key is not a person."""

    def has_permission(self, request, view):
        if isinstance(request.auth, ApiKey):
            raise exceptions.PermissionDenied(
                "An API key has no /me: these endpoints are for a logged-in user."
            )
        return _is_person(request.user)

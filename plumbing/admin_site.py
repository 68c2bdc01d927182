"""The console's admin site: Django's, with the app list worked out once per permission set.

Every admin page puts the app list in its context (`each_context` -> `get_app_list`: the nav
sidebar, the index, the dashboard): for each registered model, the admin's module, add,
change, delete and view permission answers and up to three reversed URLs. That answer is
the same for every request whose user holds the same permissions, so it is kept per
process, keyed on everything it depends on:

- whether the user is an active superuser, else the set of permissions the authentication
  backends grant them (a permission granted or taken away changes the key; the user is
  loaded afresh by each request, so a change shows on the next page);
- the active language (the names are sorted by their translation), the script prefix and
  the URL configuration (the URLs), the registry (which admins, which models).

This holds while every admin's `has_*_permission(request)` answers from the user's flags
and permissions only (all of ours do). An admin whose answer depended on anything else
(the request's path, the time, a row) would be answered from the cache: keep such a rule
out of the module and model permissions, where Django's app list reads them. A backend that
answers `has_perm` without listing `get_all_permissions` leaves the key blind to its
answers, so with one installed nothing is cached.
"""

from __future__ import annotations

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig
from django.contrib.auth import get_backends
from django.urls import get_script_prefix, get_urlconf
from django.utils.translation import get_language

# Distinct permission sets seen by one process: a handful of personas in practice. Past
# this many the cache starts again rather than grow without end.
CACHE_LIMIT = 256


class ConsoleAdminSite(AdminSite):
    def __init__(self, name="admin"):
        super().__init__(name)
        self._app_lists = {}

    def get_app_list(self, request, app_label=None):
        key = self._app_list_key(request, app_label)
        if key is None:
            return super().get_app_list(request, app_label)
        built = self._app_lists.get(key)
        if built is None:
            # Sorted too: the names are lazy translations, slow to compare (the language
            # is in the key).
            built = super().get_app_list(request, app_label)
            if len(self._app_lists) >= CACHE_LIMIT:
                self._app_lists.clear()
            self._app_lists[key] = built
        # A copy the caller may change; the values themselves (names, URLs) are immutable.
        return [
            {
                **app,
                "models": [{**model, "perms": dict(model["perms"])} for model in app["models"]],
            }
            for app in built
        ]

    def _app_list_key(self, request, label):
        user = request.user
        if not _permissions_are_listable():
            return None
        if user.is_active and user.is_superuser:
            permissions = None  # every permission (Django's has_perm asks no backend)
        else:
            permissions = frozenset(user.get_all_permissions())
        return (
            label,
            user.is_active,
            user.is_superuser,
            user.is_staff,
            permissions,
            get_language(),
            get_script_prefix(),
            get_urlconf(),
            tuple(self._registry.items()),
        )


def _permissions_are_listable() -> bool:
    """Whether every backend that answers permission questions also lists what it grants."""
    return all(
        hasattr(backend, "get_all_permissions")
        for backend in get_backends()
        if hasattr(backend, "has_perm") or hasattr(backend, "has_module_perms")
    )


class ConsoleAdminConfig(AdminConfig):
    """django.contrib.admin, with `admin.site` a ConsoleAdminSite."""

    default_site = "plumbing.admin_site.ConsoleAdminSite"

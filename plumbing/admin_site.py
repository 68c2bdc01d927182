"""The console's admin site: Django's, with the app list worked out once per permission set,
and every registered admin (ours, and those of auth, axes and Procrastinate) refusing
malformed input with a message instead of an exception (`CheckedInputAdminMixin`).

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

from django.contrib import messages
from django.contrib.admin import AdminSite, ModelAdmin, helpers
from django.contrib.admin.apps import AdminConfig
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_backends
from django.core.exceptions import ValidationError
from django.http import Http404
from django.urls import URLPattern, get_script_prefix, get_urlconf
from django.utils.translation import get_language

# Distinct permission sets seen by one process: a handful of personas in practice. Past
# this many the cache starts again rather than grow without end.
CACHE_LIMIT = 256


class CheckedInputAdminMixin:
    """What Django's admin lets through to an exception (a 500), refused as bad input:

    - an action's selection (`_selected_action`, posted by the browser) that is not a
      primary key of the model (text for a numeric or UUID key, a number out of range, a
      NUL): Django filters `pk__in` with it and fails converting or in the database. Now a
      message, nothing done, the list again (Django's way for an action that failed);
    - a date hierarchy's year or month too large for a date (`?started_at__year=9999999999`:
      Django catches ValueError, not OverflowError): the admin's "?e=1";
    - `?_to_field=` naming a many-to-many relation (Django's check reads `primary_key` off
      the relation): refused as a field that may not be used (400).

    Mixed into every registered admin by `ConsoleAdminSite.register`."""

    def response_action(self, request, queryset):
        field = self.model._meta.pk
        try:
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                if "\x00" in value:
                    raise ValidationError("NUL")
                field.run_validators(field.to_python(value))
        except ValidationError:
            self.message_user(
                request,
                f"The selection is not a list of {self.model._meta.verbose_name_plural} "
                "(select them with the boxes of the list). Nothing was changed.",
                messages.ERROR,
            )
            return None
        return super().response_action(request, queryset)

    def get_changelist_instance(self, request):
        try:
            return super().get_changelist_instance(request)
        except OverflowError as error:
            raise IncorrectLookupParameters(error) from error

    def to_field_allowed(self, request, to_field):
        try:
            return super().to_field_allowed(request, to_field)
        except AttributeError:
            return False


def view_on_site(request, content_type_id, object_id):
    """Django's "view on site" redirect (`admin/r/<type>/<id>/`), with an id that is not a key
    of the model (text for a UUID key) a 404, as an unknown one is."""
    from django.contrib.contenttypes import views  # not at import: the app registry's

    try:
        return views.shortcut(request, content_type_id, object_id)
    except ValidationError:
        raise Http404("No such object.") from None


class ConsoleAdminSite(AdminSite):
    def __init__(self, name="admin"):
        super().__init__(name)
        self._app_lists = {}

    def register(self, model_or_iterable, admin_class=None, **options):
        admin_class = admin_class or ModelAdmin
        if not issubclass(admin_class, CheckedInputAdminMixin):
            admin_class = type(
                admin_class.__name__,
                (CheckedInputAdminMixin, admin_class),
                {"__module__": admin_class.__module__, "__doc__": admin_class.__doc__},
            )
        super().register(model_or_iterable, admin_class, **options)

    def get_urls(self):
        urls = super().get_urls()
        for i, pattern in enumerate(urls):
            if getattr(pattern, "name", None) == "view_on_site":
                urls[i] = URLPattern(
                    pattern.pattern,
                    self.admin_view(view_on_site),
                    pattern.default_args,
                    pattern.name,
                )
        return urls

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

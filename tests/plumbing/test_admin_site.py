"""The console's admin site (plumbing.admin_site): the app list (the nav sidebar and the
index of every admin page) worked out once per permission set, never shown to someone
it does not belong to."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin import AdminSite
from django.contrib.auth.models import Permission
from django.test import RequestFactory
from django.urls import clear_script_prefix, set_script_prefix
from django.utils import translation

from accounts.models import User
from plumbing.admin_site import ConsoleAdminSite
from tests.factories import AdminFactory, StaffFactory

pytestmark = pytest.mark.django_db


def request_as(user, path="/admin/"):
    request = RequestFactory().get(path)
    request.user = User.objects.get(pk=user.pk)  # as a request loads it: no permission cache
    return request


def djangos_app_list(request, app_label=None):
    """What Django's own AdminSite answers for the same registry, uncached."""
    return AdminSite.get_app_list(admin.site, request, app_label)


def shown_models(app_list) -> set[str]:
    return {m["model"]._meta.label for app in app_list for m in app["models"]}


def test_the_console_runs_on_the_caching_admin_site():
    assert isinstance(admin.site, ConsoleAdminSite)


@pytest.mark.parametrize(
    "permissions",
    [
        None,  # a superuser
        [],
        ["billing.view_usagedaily"],
        ["accounts.view_user", "accounts.change_user", "billing.view_creditledgerentry"],
        ["clusters.add_hopsworkscluster", "clusters.view_hopsworkscluster"],
    ],
)
def test_the_app_list_is_djangos_for_each_permission_set(permissions):
    user = AdminFactory() if permissions is None else StaffFactory(permissions=permissions)
    for _ in range(2):  # built, then from the cache
        assert admin.site.get_app_list(request_as(user)) == djangos_app_list(request_as(user))
    for label in ("billing", "accounts"):
        ours = admin.site.get_app_list(request_as(user), label)
        assert ours == djangos_app_list(request_as(user), label)


def test_a_cached_app_list_never_shows_a_model_to_someone_without_its_permission():
    superuser = AdminFactory()
    admin.site.get_app_list(request_as(superuser))  # the superuser's list, cached first
    viewer = StaffFactory(permissions=["billing.view_usagedaily"])
    assert shown_models(admin.site.get_app_list(request_as(viewer))) == {"billing.UsageDaily"}
    nobody = StaffFactory(permissions=[])
    assert admin.site.get_app_list(request_as(nobody)) == []


def test_a_permission_granted_or_taken_away_shows_on_the_next_page():
    operator = StaffFactory(permissions=["billing.view_usagedaily"])
    assert shown_models(admin.site.get_app_list(request_as(operator))) == {"billing.UsageDaily"}

    operator.user_permissions.add(Permission.objects.get(codename="view_creditledgerentry"))
    assert shown_models(admin.site.get_app_list(request_as(operator))) == {
        "billing.UsageDaily",
        "billing.CreditLedgerEntry",
    }
    operator.user_permissions.clear()
    assert admin.site.get_app_list(request_as(operator)) == []


def test_a_superuser_made_inactive_sees_nothing():
    superuser = AdminFactory()
    assert admin.site.get_app_list(request_as(superuser))
    User.objects.filter(pk=superuser.pk).update(status=User.Status.SUSPENDED)
    assert admin.site.get_app_list(request_as(superuser)) == []


def test_the_app_list_is_worked_out_once_per_permission_set(monkeypatch):
    model_admin = admin.site._registry[User]
    asked = []
    original = type(model_admin).get_model_perms

    def counting(self, request):
        asked.append(request.user.pk)
        return original(self, request)

    monkeypatch.setattr(type(model_admin), "get_model_perms", counting)
    first, second = (StaffFactory(permissions=["accounts.view_user"]) for _ in range(2))
    for user in (first, first, second, first):
        admin.site.get_app_list(request_as(user))
    assert asked == [first.pk]  # one build for the permission set, whoever holds it

    other = StaffFactory(permissions=["accounts.view_user", "accounts.change_user"])
    admin.site.get_app_list(request_as(other))
    assert asked == [first.pk, other.pk]


def test_a_list_changed_by_its_caller_does_not_change_the_next_one():
    user = AdminFactory()
    app_list = admin.site.get_app_list(request_as(user))
    app_list[0]["models"].clear()
    app_list[0]["name"] = "changed"
    app_list.pop()
    assert admin.site.get_app_list(request_as(user)) == djangos_app_list(request_as(user))


def test_the_urls_follow_the_script_prefix_and_the_names_the_language():
    user = AdminFactory()
    admin.site.get_app_list(request_as(user))
    try:
        set_script_prefix("/console/")
        app_list = admin.site.get_app_list(request_as(user))
        assert app_list[0]["app_url"].startswith("/console/admin/")
        assert app_list == djangos_app_list(request_as(user))
    finally:
        clear_script_prefix()
    with translation.override("de"):
        app_list = admin.site.get_app_list(request_as(user))
        assert [str(app["name"]) for app in app_list] == [
            str(app["name"]) for app in djangos_app_list(request_as(user))
        ]
